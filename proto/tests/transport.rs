//! gRPC over real mTLS on loopback: `transport::incoming` feeding a tonic server, and
//! `transport::channel` as the client, with the SPIFFE verifiers of `ringzero_policy::tls`.
//!
//! The test server implements `Raft` and answers every call with what it saw of the caller
//! (`peer(&req)`), so each test checks the identity that reached the handler. Every call and
//! every wait is bounded by a timeout so that a hang fails instead of blocking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use ringzero_policy::svid::{LeafKey, LeafRequest, SigningCa, TrustBundle, csr_for, generate_key};
use ringzero_policy::tls::{
    BundleSource, PeerMatch, SpiffeClientVerifier, SpiffeServerVerifier, client_config,
    server_config,
};
use ringzero_policy::{SpiffeId, SpiffeIdPattern, TrustDomain};
use ringzero_proto::pb::RaftPayload;
use ringzero_proto::pb::raft_client::RaftClient;
use ringzero_proto::pb::raft_server::{Raft, RaftServer};
use ringzero_proto::transport::{PeerInfo, ServerLimits, TransportError, channel, incoming, peer};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

const SERVER_ID: &str = "spiffe://td/ringzero/authority/a1";
const CLIENT_ID: &str = "spiffe://td/ringzero/node/n1";
const CA_TTL: Duration = Duration::from_secs(24 * 3600);
const LEAF_TTL: Duration = Duration::from_secs(3600);
/// Bound on any single call or wait; generous for a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(20);

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn ca(td: &TrustDomain, cn: &str) -> SigningCa {
    let since = SystemTime::now() - Duration::from_secs(3600);
    SigningCa::self_signed(td, cn, CA_TTL, since, None).unwrap()
}

/// An SVID chain and its private key.
struct Svid {
    chain: Vec<CertificateDer<'static>>,
    key_pkcs8: Vec<u8>,
}

impl Svid {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_pkcs8.clone().into())
    }
}

fn svid(ca: &SigningCa, spiffe_id: &str) -> Svid {
    let key = generate_key().unwrap();
    let spiffe_id = id(spiffe_id);
    let csr = csr_for(&key, &spiffe_id).unwrap();
    let issued = ca
        .issue(&LeafRequest {
            id: &spiffe_id,
            key: LeafKey::Csr(&csr),
            ttl: LEAF_TTL,
            dns_names: &[],
            now: SystemTime::now(),
        })
        .unwrap();
    Svid {
        chain: issued.chain,
        key_pkcs8: key.serialize_der(),
    }
}

fn bundle(ca: &SigningCa) -> BundleSource {
    BundleSource::new(
        TrustBundle::new(ca.trust_domain().clone(), vec![ca.cert_der().clone()]).unwrap(),
    )
}

fn one_of(patterns: &[&str]) -> PeerMatch {
    PeerMatch::OneOf(
        patterns
            .iter()
            .map(|p| SpiffeIdPattern::parse(p).unwrap())
            .collect(),
    )
}

/// A server that requires a client SVID of the CA's trust domain.
fn mandatory_server(ca: &SigningCa) -> Arc<rustls::ServerConfig> {
    let me = svid(ca, SERVER_ID);
    let verifier = SpiffeClientVerifier::new(bundle(ca), PeerMatch::AnyInTrustDomain);
    Arc::new(server_config(me.chain.clone(), me.key(), verifier).unwrap())
}

/// A server that lets clients without a certificate through.
fn optional_server(ca: &SigningCa) -> Arc<rustls::ServerConfig> {
    let me = svid(ca, SERVER_ID);
    let verifier = SpiffeClientVerifier::optional(bundle(ca), PeerMatch::AnyInTrustDomain);
    Arc::new(server_config(me.chain.clone(), me.key(), verifier).unwrap())
}

/// A client presenting `me`, trusting servers of `trusted` that match `peers`.
fn client(me: &Svid, trusted: &SigningCa, peers: PeerMatch) -> Arc<rustls::ClientConfig> {
    let verifier = SpiffeServerVerifier::new(bundle(trusted), peers);
    Arc::new(client_config(me.chain.clone(), me.key(), verifier).unwrap())
}

/// A client without a certificate, trusting any server of `trusted`.
fn anonymous_client(trusted: &SigningCa) -> Arc<rustls::ClientConfig> {
    let verifier = SpiffeServerVerifier::new(bundle(trusted), PeerMatch::AnyInTrustDomain);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    Arc::new(config)
}

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/// Answers every call with the caller as the handler saw it: `"<spiffe id or ->|<addr>"`.
#[derive(Debug, Default)]
struct Echo {
    calls: Arc<AtomicUsize>,
}

impl Echo {
    fn reply(&self, req: &Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let PeerInfo {
            addr, spiffe_id, ..
        } = peer(req);
        let who = spiffe_id.map_or_else(|| "-".to_owned(), |id| id.to_string());
        let addr = addr.map_or_else(|| "-".to_owned(), |a| a.to_string());
        Ok(Response::new(RaftPayload {
            data: format!("{who}|{addr}").into_bytes(),
        }))
    }
}

#[tonic::async_trait]
impl Raft for Echo {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.reply(&req)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.reply(&req)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.reply(&req)
    }
}

struct TestServer {
    addr: SocketAddr,
    /// Calls that reached a handler.
    calls: Arc<AtomicUsize>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start(config: Arc<rustls::ServerConfig>, limits: ServerLimits) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = Echo::default();
        let calls = Arc::clone(&echo.calls);
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(echo))
                .serve_with_incoming_shutdown(incoming(listener, config, limits), async {
                    let _ = stop.await;
                }),
        );
        Self {
            addr,
            calls,
            shutdown,
            task,
        }
    }

    fn channel(&self, config: Arc<rustls::ClientConfig>) -> tonic::transport::Channel {
        channel(&self.addr.to_string(), config, Duration::from_secs(5)).unwrap()
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Shuts the server down gracefully; its clients must be gone.
    async fn stop(self) {
        self.shutdown.send(()).unwrap();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the server did not shut down")
            .unwrap()
            .unwrap();
    }
}

/// One `Vote` call: the caller as the server saw it, as `(spiffe id or "-", addr)`.
async fn whoami(channel: tonic::transport::Channel) -> Result<(String, String), Status> {
    let reply = tokio::time::timeout(
        PATIENCE,
        RaftClient::new(channel).vote(RaftPayload { data: Vec::new() }),
    )
    .await
    .expect("the call hung")?;
    let text = String::from_utf8(reply.into_inner().data).unwrap();
    let (who, addr) = text.split_once('|').unwrap();
    Ok((who.to_owned(), addr.to_owned()))
}

/// Reads from a raw connection until the server closes it (EOF or reset), or `within` passes.
async fn closed_by_server(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // TLS alerts the server may send before closing.
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Still open: nothing to read and no EOF for a short while.
async fn still_open(conn: &mut TcpStream) -> bool {
    !closed_by_server(conn, Duration::from_millis(300)).await
}

// ---------------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_with_an_svid_is_seen_as_its_spiffe_id() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let server = TestServer::start(mandatory_server(&authority), ServerLimits::default()).await;
    let me = svid(&authority, CLIENT_ID);
    let channel = server.channel(client(&me, &authority, PeerMatch::AnyInTrustDomain));

    let (who, addr) = whoami(channel.clone()).await.unwrap();
    assert_eq!(who, CLIENT_ID);
    let addr: SocketAddr = addr.parse().unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");

    // The same connection serves every call, with the same identity and address.
    for _ in 0..3 {
        assert_eq!(
            whoami(channel.clone()).await.unwrap(),
            (who.clone(), addr.to_string())
        );
    }
    assert_eq!(server.calls(), 4);
    drop(channel);
    server.stop().await;
}

#[tokio::test]
async fn server_expecting_a_client_svid_in_its_pattern_sees_exactly_that_id() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let me = svid(&authority, SERVER_ID);
    let verifier = SpiffeClientVerifier::new(
        bundle(&authority),
        one_of(&["spiffe://td/ringzero/authority/*"]),
    );
    let config = Arc::new(server_config(me.chain.clone(), me.key(), verifier).unwrap());
    let server = TestServer::start(config, ServerLimits::default()).await;

    let peer_authority = svid(&authority, "spiffe://td/ringzero/authority/a2");
    let channel = server.channel(client(
        &peer_authority,
        &authority,
        PeerMatch::AnyInTrustDomain,
    ));
    let (who, _) = whoami(channel.clone()).await.unwrap();
    assert_eq!(who, "spiffe://td/ringzero/authority/a2");

    let node = svid(&authority, CLIENT_ID);
    let refused = server.channel(client(&node, &authority, PeerMatch::AnyInTrustDomain));
    whoami(refused.clone()).await.unwrap_err();
    assert_eq!(server.calls(), 1);

    drop((channel, refused));
    server.stop().await;
}

#[tokio::test]
async fn optional_verifier_lets_an_anonymous_client_in_without_an_identity() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let server = TestServer::start(optional_server(&authority), ServerLimits::default()).await;

    let anonymous = server.channel(anonymous_client(&authority));
    let (who, addr) = whoami(anonymous.clone()).await.unwrap();
    assert_eq!(who, "-");
    assert_ne!(addr, "-", "the address is known even without a certificate");

    // A client that does present an SVID is still identified.
    let me = svid(&authority, CLIENT_ID);
    let identified = server.channel(client(&me, &authority, PeerMatch::AnyInTrustDomain));
    assert_eq!(whoami(identified.clone()).await.unwrap().0, CLIENT_ID);

    drop((anonymous, identified));
    server.stop().await;
}

#[tokio::test]
async fn mandatory_verifier_refuses_an_anonymous_client() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let server = TestServer::start(mandatory_server(&authority), ServerLimits::default()).await;

    let anonymous = server.channel(anonymous_client(&authority));
    let status = whoami(anonymous.clone()).await.unwrap_err();
    assert_eq!(server.calls(), 0, "refused before any handler: {status:?}");

    // The refusal did not disturb the server.
    let me = svid(&authority, CLIENT_ID);
    let identified = server.channel(client(&me, &authority, PeerMatch::AnyInTrustDomain));
    assert_eq!(whoami(identified.clone()).await.unwrap().0, CLIENT_ID);

    drop((anonymous, identified));
    server.stop().await;
}

#[tokio::test]
async fn client_from_another_trust_domain_is_refused() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let server = TestServer::start(mandatory_server(&authority), ServerLimits::default()).await;

    let foreign_ca = ca(&td("other"), "ringzero authority a1");
    let foreign = svid(&foreign_ca, "spiffe://other/ringzero/node/n1");
    // The foreign client itself trusts the server: only the server's check refuses it.
    let channel = server.channel(client(&foreign, &authority, PeerMatch::AnyInTrustDomain));
    let status = whoami(channel.clone()).await.unwrap_err();
    assert_eq!(server.calls(), 0, "{status:?}");

    drop(channel);
    server.stop().await;
}

#[tokio::test]
async fn client_expecting_another_server_id_fails() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let server = TestServer::start(mandatory_server(&authority), ServerLimits::default()).await;
    let me = svid(&authority, CLIENT_ID);

    let wrong = server.channel(client(
        &me,
        &authority,
        one_of(&["spiffe://td/ringzero/authority/a2"]),
    ));
    let status = whoami(wrong.clone()).await.unwrap_err();
    assert_eq!(server.calls(), 0, "{status:?}");

    let right = server.channel(client(
        &me,
        &authority,
        one_of(&["spiffe://td/ringzero/authority/a2", SERVER_ID]),
    ));
    assert_eq!(whoami(right.clone()).await.unwrap().0, CLIENT_ID);

    drop((wrong, right));
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Concurrency and hostile connections
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_share_one_connection() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let server = TestServer::start(mandatory_server(&authority), ServerLimits::default()).await;
    let me = svid(&authority, CLIENT_ID);
    let channel = server.channel(client(&me, &authority, PeerMatch::AnyInTrustDomain));

    let calls: Vec<_> = (0..50)
        .map(|_| tokio::spawn(whoami(channel.clone())))
        .collect();
    let mut addrs = std::collections::BTreeSet::new();
    for call in calls {
        let (who, addr) = call.await.unwrap().unwrap();
        assert_eq!(who, CLIENT_ID);
        addrs.insert(addr);
    }
    assert_eq!(addrs.len(), 1, "one connection for all calls: {addrs:?}");
    assert_eq!(server.calls(), 50);

    drop(channel);
    server.stop().await;
}

#[tokio::test]
async fn garbage_and_silent_connections_do_not_block_a_real_client() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let handshake_timeout = Duration::from_secs(5);
    let limits = ServerLimits {
        max_connections: 16,
        handshake_timeout,
    };
    let server = TestServer::start(mandatory_server(&authority), limits).await;

    // Never sends a ClientHello.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // Sends something that is not TLS, then waits.
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03\x01\xff\xff")
        .await
        .unwrap();

    // Served at once, while the silent connection is still waiting in its handshake.
    let me = svid(&authority, CLIENT_ID);
    let channel = server.channel(client(&me, &authority, PeerMatch::AnyInTrustDomain));
    assert_eq!(whoami(channel.clone()).await.unwrap().0, CLIENT_ID);
    assert!(
        still_open(&mut silent).await,
        "the silent connection was dropped before its handshake timeout"
    );

    // The garbage was refused; the silent client is cut off at its handshake deadline.
    assert!(closed_by_server(&mut garbage, PATIENCE).await);
    assert!(closed_by_server(&mut silent, handshake_timeout + PATIENCE).await);

    // And the server still serves.
    assert_eq!(whoami(channel.clone()).await.unwrap().0, CLIENT_ID);
    drop(channel);
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let limits = ServerLimits {
        max_connections: 2,
        // Long enough that the held connections keep their slots for the whole test.
        handshake_timeout: Duration::from_secs(120),
    };
    let server = TestServer::start(mandatory_server(&authority), limits).await;

    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    // Let the server accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_by_server(&mut third, Duration::from_secs(5)).await,
        "the third connection was not closed"
    );
    assert!(still_open(&mut first).await);
    assert!(still_open(&mut second).await);

    // Closing one held connection frees its slot for a real client.
    drop(first);
    let me = svid(&authority, CLIENT_ID);
    let config = client(&me, &authority, PeerMatch::AnyInTrustDomain);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let who = loop {
        // The server may not have seen the close yet: retry on a fresh channel.
        match whoami(server.channel(Arc::clone(&config))).await {
            Ok((who, _)) => break who,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("no slot was freed: {status:?}"),
        }
    };
    assert_eq!(who, CLIENT_ID);
    assert!(still_open(&mut second).await);

    drop(second);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Channel construction
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn channel_rejects_addresses_that_are_not_host_port() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let config = anonymous_client(&authority);
    for bad in [
        "",
        "127.0.0.1",
        "host:",
        "https://host:1",
        "user@host:1",
        "host:1/x",
        ":1",
    ] {
        match channel(bad, Arc::clone(&config), Duration::from_secs(1)) {
            Err(TransportError::InvalidAddress { addr, .. }) => assert_eq!(addr, bad),
            other => panic!("{bad:?} accepted: {other:?}"),
        }
    }
    for good in ["127.0.0.1:1", "[::1]:1", "authority-1.example.org:7000"] {
        channel(good, Arc::clone(&config), Duration::from_secs(1)).unwrap();
    }
}

#[test]
fn channel_outside_a_runtime_is_an_error_not_a_panic() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let result = channel(
        "127.0.0.1:1",
        anonymous_client(&authority),
        Duration::from_secs(1),
    );
    assert!(
        matches!(result, Err(TransportError::NoRuntime)),
        "{result:?}"
    );
}

#[tokio::test]
async fn unreachable_server_fails_the_call_within_the_connect_timeout() {
    // A bound listener that never accepts would still complete TCP; use a closed port instead.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let authority = ca(&td("td"), "ringzero authority a1");
    let channel = channel(
        &format!("127.0.0.1:{port}"),
        anonymous_client(&authority),
        Duration::from_secs(2),
    )
    .unwrap();
    let status = whoami(channel).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn server_that_never_completes_the_handshake_fails_the_call_at_the_connect_timeout() {
    // Accepts TCP connections and holds them without ever answering the ClientHello.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            conns.push(conn);
        }
    });
    let authority = ca(&td("td"), "ringzero authority a1");
    let connect_timeout = Duration::from_millis(500);
    let channel = channel(
        &addr.to_string(),
        anonymous_client(&authority),
        connect_timeout,
    )
    .unwrap();
    let started = tokio::time::Instant::now();
    let status = whoami(channel).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= connect_timeout,
        "failed too early ({took:?}): {status:?}"
    );
    assert!(took < connect_timeout + Duration::from_secs(10), "{took:?}");
    held.abort();
}

#[tokio::test]
async fn peer_of_a_request_without_connection_info_is_empty() {
    let req = Request::new(RaftPayload::default());
    assert_eq!(peer(&req), PeerInfo::default());
    assert_eq!(
        peer(&req),
        PeerInfo {
            addr: None,
            spiffe_id: None,
            serial: None,
            not_after: None,
            issuer_authority: None,
        }
    );
}
