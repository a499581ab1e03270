//! gRPC over real mTLS on loopback: `transport::incoming` feeding a tonic server, and
//! `transport::channel` as the client, with the SPIFFE verifiers of `ringzero_policy::tls`.
//!
//! The test server implements `Raft` and answers every call with what it saw of the caller
//! (`peer(&req)`), so each test checks the identity that reached the handler. Every call and
//! every wait is bounded by a timeout so that a hang fails instead of blocking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ringzero_policy::tls::{PeerMatch, SpiffeClientVerifier};
use ringzero_proto::pb::RaftPayload;
use ringzero_proto::transport::{PeerInfo, ServerLimits, TransportError, channel, peer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tonic::Request;
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
    let config = me.server_config(verifier);
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
        max_handshakes: 16,
        handshake_timeout,
        ..ServerLimits::default()
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
async fn handshakes_beyond_the_limit_are_closed_at_once() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let limits = ServerLimits {
        max_handshakes: 2,
        // Long enough that the held connections keep their slots for the whole test.
        handshake_timeout: Duration::from_secs(120),
        ..ServerLimits::default()
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
