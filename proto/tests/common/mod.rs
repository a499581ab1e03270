//! What the transport tests share: certificates, a test server that echoes the caller, raw
//! connection probes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unused_imports,
    unreachable_pub
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ringzero_policy::svid::SigningCa;
use ringzero_policy::testing::{SvidBuilder, anonymous_client_config};
// Every test binary takes what it needs of these (hence `unused_imports` above).
pub use ringzero_policy::testing::{
    TestSvid as Svid, bundle_source as bundle, ca, one_of, spiffe_id as id, svid,
    trust_domain as td,
};
use ringzero_policy::tls::{PeerMatch, SpiffeClientVerifier, SpiffeServerVerifier};
use ringzero_proto::pb::RaftPayload;
use ringzero_proto::pb::raft_client::RaftClient;
use ringzero_proto::pb::raft_server::{Raft, RaftServer};
use ringzero_proto::transport::{
    AnonymousAllowListLayer, MembersOnlyLayer, PeerInfo, RefuseExpiredLayer, ServerLimits,
    ServerPolicy, incoming, peer,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

pub const SERVER_ID: &str = "spiffe://td/ringzero/authority/a1";
pub const CLIENT_ID: &str = "spiffe://td/ringzero/node/n1";
/// Bound on any single call or wait; generous for a loaded 2-core machine.
pub const VOTE: &str = "/ringzero.v1.Raft/Vote";
pub const INSTALL_SNAPSHOT: &str = "/ringzero.v1.Raft/InstallSnapshot";
pub const PATIENCE: Duration = Duration::from_secs(20);

/// An SVID for `spiffe_id` that expires `ttl` from now (to the second, as X.509 times go).
pub fn svid_for(ca: &SigningCa, spiffe_id: &str, ttl: Duration) -> Svid {
    SvidBuilder::new(ca, &id(spiffe_id)).ttl(ttl).issue()
}

/// A server that requires a client SVID of the CA's trust domain.
pub fn mandatory_server(ca: &SigningCa) -> Arc<rustls::ServerConfig> {
    let verifier = SpiffeClientVerifier::new(bundle(ca), PeerMatch::AnyInTrustDomain);
    svid(ca, SERVER_ID).server_config(verifier)
}

/// A server that lets clients without a certificate through.
pub fn optional_server(ca: &SigningCa) -> Arc<rustls::ServerConfig> {
    let verifier = SpiffeClientVerifier::optional(bundle(ca), PeerMatch::AnyInTrustDomain);
    svid(ca, SERVER_ID).server_config(verifier)
}

/// A client presenting `me`, trusting servers of `trusted` that match `peers`.
pub fn client(me: &Svid, trusted: &SigningCa, peers: PeerMatch) -> Arc<rustls::ClientConfig> {
    me.client_config(SpiffeServerVerifier::new(bundle(trusted), peers))
}

/// A client without a certificate, trusting any server of `trusted`.
pub fn anonymous_client(trusted: &SigningCa) -> Arc<rustls::ClientConfig> {
    anonymous_client_config(SpiffeServerVerifier::new(
        bundle(trusted),
        PeerMatch::AnyInTrustDomain,
    ))
}

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/// Answers every call with the caller as the handler saw it: `"<spiffe id or ->|<addr>"`.
#[derive(Debug, Default)]
pub struct Echo {
    pub calls: Arc<AtomicUsize>,
}

impl Echo {
    pub fn reply(&self, req: &Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
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

pub struct TestServer {
    pub addr: SocketAddr,
    /// Calls that reached a handler.
    pub calls: Arc<AtomicUsize>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    /// A plain tonic server fed by `incoming` with `limits`.
    pub async fn start(config: Arc<rustls::ServerConfig>, limits: ServerLimits) -> Self {
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

    /// A server built like the authority's: [`ServerPolicy`] with `limits`, expired
    /// certificates refused, anonymous clients allowed `Vote` only, `InstallSnapshot` for
    /// members only.
    pub async fn start_guarded(config: Arc<rustls::ServerConfig>, limits: ServerLimits) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = Echo::default();
        let calls = Arc::clone(&echo.calls);
        let (shutdown, stop) = oneshot::channel::<()>();
        let policy = ServerPolicy {
            connections: limits,
            ..Default::default()
        };
        let task = tokio::spawn(
            policy
                .server()
                .layer(RefuseExpiredLayer)
                .layer(AnonymousAllowListLayer::new([VOTE]))
                .layer(MembersOnlyLayer::new([INSTALL_SNAPSHOT]))
                .add_service(RaftServer::new(echo))
                .serve_with_incoming_shutdown(policy.incoming(listener, config), async {
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

    pub fn channel(&self, config: Arc<rustls::ClientConfig>) -> tonic::transport::Channel {
        ringzero_proto::transport::channel(&self.addr.to_string(), config, Duration::from_secs(5))
            .unwrap()
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Shuts the server down gracefully; its clients must be gone.
    pub async fn stop(self) {
        self.shutdown.send(()).unwrap();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the server did not shut down")
            .unwrap()
            .unwrap();
    }
}

/// One `Vote` call: the caller as the server saw it, as `(spiffe id or "-", addr)`.
pub async fn whoami(channel: tonic::transport::Channel) -> Result<(String, String), Status> {
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
pub async fn closed_by_server(conn: &mut TcpStream, within: Duration) -> bool {
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
pub async fn still_open(conn: &mut TcpStream) -> bool {
    !closed_by_server(conn, Duration::from_millis(300)).await
}

/// A TLS connection to `addr` from `source` (any 127.0.0.0/8 address) with `config`; `None`
/// if the server closed it during the handshake.
pub async fn tls_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("ringzero.invalid").unwrap();
    tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
        .await
        .expect("the handshake hung")
        .ok()
}

/// Reads from a TLS connection until the server closes it, or `within` passes: whether it was
/// closed. (TLS 1.3: a client whose certificate or slot the server refused learns it here.)
pub async fn tls_closed<S: tokio::io::AsyncRead + Unpin>(conn: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}
