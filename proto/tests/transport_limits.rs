//! The bounds of `transport::incoming` and `ServerPolicy` over real TLS on loopback
//! (connection classes, per-IP caps, idle and maximum age, certificate expiry), and the layers
//! that refuse calls from what a connection's `PeerInfo` says.
//!
//! Sources other than 127.0.0.1 (any 127.0.0.0/8 address reaches a server on 127.0.0.1 on
//! Linux) stand for distinct client IPs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use ringzero_policy::tls::PeerMatch;
use ringzero_proto::pb::RaftPayload;
use ringzero_proto::pb::raft_client::RaftClient;
use ringzero_proto::pb::raft_server::RaftServer;
use ringzero_proto::transport::{
    ANONYMOUS_MESSAGE, AnonymousAllowListLayer, ConnectionClass, EXPIRED_MESSAGE,
    MEMBERS_ONLY_MESSAGE, MembersOnlyLayer, PeerInfo, RefuseExpiredLayer, ServerLimits,
};
use tokio::net::TcpStream;
use tower::{Layer, ServiceExt};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A CA whose SVIDs name member 1 as their issuer (its CN is a member CA's).
fn member_ca() -> ringzero_policy::svid::SigningCa {
    ca(&td("td"), "ringzero authority 1")
}

const MEMBER_ID: &str = "spiffe://td/ringzero/authority/1";

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

#[test]
fn connection_class_follows_the_certificate_and_its_issuer() {
    let peer = |spiffe: Option<&str>, issuer: Option<u64>| PeerInfo {
        spiffe_id: spiffe.map(id),
        issuer_authority: issuer,
        ..PeerInfo::default()
    };
    assert_eq!(
        ConnectionClass::of(&peer(None, None)),
        ConnectionClass::Anonymous
    );
    assert_eq!(
        ConnectionClass::of(&peer(Some(MEMBER_ID), Some(1))),
        ConnectionClass::Member(1)
    );
    // A member's ID signed by another member's CA, or by no member's CA, is no member.
    for (spiffe, issuer) in [
        (MEMBER_ID, Some(2)),
        (MEMBER_ID, None),
        ("spiffe://td/ringzero/authority/x", Some(1)),
        ("spiffe://td/ringzero/joining/1", Some(1)),
        ("spiffe://td/ringzero/authority/1/extra", Some(1)),
        (CLIENT_ID, Some(1)),
        ("spiffe://td/user/admin", Some(1)),
    ] {
        assert_eq!(
            ConnectionClass::of(&peer(Some(spiffe), issuer)),
            ConnectionClass::Authenticated,
            "{spiffe} issued by {issuer:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The layers, called directly with a request's connection info
// ---------------------------------------------------------------------------------------------

/// A `Raft` server behind `layer`, and how many calls reached its handlers.
fn guarded<L>(layer: L) -> (L::Service, Arc<AtomicUsize>)
where
    L: Layer<RaftServer<Echo>>,
{
    let echo = Echo::default();
    let calls = Arc::clone(&echo.calls);
    (layer.layer(RaftServer::new(echo)), calls)
}

/// A gRPC request for `path` with an empty message, from `peer` (none: no connection info).
fn request(path: &str, peer: Option<PeerInfo>) -> http::Request<tonic::body::Body> {
    // One gRPC frame: uncompressed, length 0 (an empty RaftPayload).
    let body = tonic::body::Body::new(String::from_utf8(vec![0; 5]).unwrap());
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://server{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    if let Some(p) = peer {
        req.extensions_mut().insert(p);
    }
    req
}

/// The refusal in a response's headers, if any (a served call has its status in trailers).
fn refusal(resp: &http::Response<tonic::body::Body>) -> Option<tonic::Status> {
    tonic::Status::from_header_map(resp.headers())
}

fn anonymous() -> PeerInfo {
    PeerInfo {
        addr: Some("127.0.0.1:5".parse().unwrap()),
        ..PeerInfo::default()
    }
}

fn authenticated(not_after: SystemTime) -> PeerInfo {
    PeerInfo {
        addr: Some("127.0.0.1:5".parse().unwrap()),
        spiffe_id: Some(id(CLIENT_ID)),
        serial: Some(vec![1]),
        not_after: Some(not_after),
        issuer_authority: Some(1),
    }
}

#[tokio::test]
async fn expired_certificate_is_refused_before_the_handler() {
    let (svc, calls) = guarded(RefuseExpiredLayer);
    let past = SystemTime::now() - Duration::from_secs(1);
    let resp = svc
        .clone()
        .oneshot(request(VOTE, Some(authenticated(past))))
        .await
        .unwrap();
    let status = refusal(&resp).expect("a refusal");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), EXPIRED_MESSAGE);
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // Valid, anonymous (nothing expires) and no connection info at all: served.
    let future = SystemTime::now() + Duration::from_secs(60);
    for peer in [Some(authenticated(future)), Some(anonymous()), None] {
        let resp = svc
            .clone()
            .oneshot(request(VOTE, peer.clone()))
            .await
            .unwrap();
        assert!(refusal(&resp).is_none(), "{peer:?}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn anonymous_callers_reach_only_the_allowed_methods() {
    let (svc, calls) = guarded(AnonymousAllowListLayer::new([VOTE]));
    for path in [
        "/ringzero.v1.Raft/AppendEntries",
        INSTALL_SNAPSHOT,
        // Near misses of the allowed path.
        "/ringzero.v1.Raft/Vote/",
        "/ringzero.v1.Raft/vote",
        "/ringzero.v1.Raft/VoteX",
        "/x/ringzero.v1.Raft/Vote",
    ] {
        let resp = svc
            .clone()
            .oneshot(request(path, Some(anonymous())))
            .await
            .unwrap();
        let status = refusal(&resp).unwrap_or_else(|| panic!("{path}: served"));
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{path}");
        assert_eq!(status.message(), ANONYMOUS_MESSAGE);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let resp = svc
        .clone()
        .oneshot(request(VOTE, Some(anonymous())))
        .await
        .unwrap();
    assert!(refusal(&resp).is_none());
    // A caller with a certificate is not this layer's business.
    let future = SystemTime::now() + Duration::from_secs(60);
    let resp = svc
        .clone()
        .oneshot(request(
            "/ringzero.v1.Raft/AppendEntries",
            Some(authenticated(future)),
        ))
        .await
        .unwrap();
    assert!(refusal(&resp).is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn members_only_methods_refuse_everyone_else_before_the_handler() {
    let (svc, calls) = guarded(MembersOnlyLayer::new([INSTALL_SNAPSHOT]));
    let future = SystemTime::now() + Duration::from_secs(60);
    let member = PeerInfo {
        spiffe_id: Some(id(MEMBER_ID)),
        issuer_authority: Some(1),
        ..authenticated(future)
    };
    let impostor = PeerInfo {
        issuer_authority: Some(2),
        ..member.clone()
    };
    for (peer, code) in [
        (anonymous(), tonic::Code::Unauthenticated),
        (authenticated(future), tonic::Code::PermissionDenied),
        (impostor, tonic::Code::PermissionDenied),
    ] {
        let resp = svc
            .clone()
            .oneshot(request(INSTALL_SNAPSHOT, Some(peer.clone())))
            .await
            .unwrap();
        let status = refusal(&resp).unwrap_or_else(|| panic!("{peer:?}: served"));
        assert_eq!(status.code(), code, "{peer:?}");
        assert_eq!(status.message(), MEMBERS_ONLY_MESSAGE);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let resp = svc
        .clone()
        .oneshot(request(INSTALL_SNAPSHOT, Some(member)))
        .await
        .unwrap();
    assert!(refusal(&resp).is_none());
    // Other methods are open to anyone the other checks let through.
    let resp = svc
        .clone()
        .oneshot(request(VOTE, Some(anonymous())))
        .await
        .unwrap();
    assert!(refusal(&resp).is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn first_contact_and_raft_paths_name_the_generated_services() {
    let authority = ringzero_proto::pb::authority_server::SERVICE_NAME;
    for path in ringzero_proto::AUTHORITY_FIRST_CONTACT {
        assert!(
            path.starts_with(&format!("/{authority}/")),
            "{path} is not a method of {authority}"
        );
    }
    assert_eq!(
        ringzero_proto::RAFT_METHODS,
        format!("/{}/", ringzero_proto::pb::raft_server::SERVICE_NAME)
    );
}

// ---------------------------------------------------------------------------------------------
// The layers on a real server
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn anonymous_call_outside_the_allow_list_is_unauthenticated_on_the_wire() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let server =
        TestServer::start_guarded(optional_server(&authority), ServerLimits::default()).await;
    let mut raft = RaftClient::new(server.channel(anonymous_client(&authority)));
    let status = raft
        .append_entries(RaftPayload::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), ANONYMOUS_MESSAGE);
    let status = raft
        .install_snapshot(RaftPayload::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_eq!(server.calls(), 0);
    // The allowed method, on the same connection.
    raft.vote(RaftPayload::default()).await.unwrap();
    assert_eq!(server.calls(), 1);
    drop(raft);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Connection classes and per-IP caps
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn anonymous_connections_beyond_the_per_ip_cap_are_closed_after_the_handshake() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let limits = ServerLimits {
        max_anonymous_per_ip: 2,
        ..ServerLimits::default()
    };
    let server = TestServer::start_guarded(optional_server(&authority), limits).await;
    let anon = anonymous_client(&authority);
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            tls_from(ip("127.0.0.2"), server.addr, anon.clone())
                .await
                .unwrap(),
        );
    }
    // The third from the same source: closed (its handshake may complete on the client first).
    match tls_from(ip("127.0.0.2"), server.addr, anon.clone()).await {
        None => {}
        Some(mut third) => assert!(
            tls_closed(&mut third, PATIENCE).await,
            "a third anonymous connection from one IP stayed open"
        ),
    }
    for c in &mut held {
        assert!(!tls_closed(c, Duration::from_millis(300)).await);
    }
    // Another source, and an authenticated client from the same source, still get in.
    let mut other = tls_from(ip("127.0.0.3"), server.addr, anon.clone())
        .await
        .unwrap();
    assert!(!tls_closed(&mut other, Duration::from_millis(300)).await);
    let me = svid(&authority, CLIENT_ID);
    let mine = client(&me, &authority, PeerMatch::AnyInTrustDomain);
    let mut authed = tls_from(ip("127.0.0.2"), server.addr, mine).await.unwrap();
    assert!(!tls_closed(&mut authed, Duration::from_millis(300)).await);
    drop((held, other, authed));
    server.stop().await;
}

#[tokio::test]
async fn a_full_general_pool_leaves_the_members_reserved_pool() {
    let authority = member_ca();
    let limits = ServerLimits {
        max_connections: 1,
        max_member_connections: 1,
        max_anonymous_connections: 1,
        ..ServerLimits::default()
    };
    let server = TestServer::start_guarded(optional_server(&authority), limits).await;
    let src = ip("127.0.0.1");
    let node = client(
        &svid(&authority, CLIENT_ID),
        &authority,
        PeerMatch::AnyInTrustDomain,
    );
    let member = client(
        &svid(&authority, MEMBER_ID),
        &authority,
        PeerMatch::AnyInTrustDomain,
    );
    let anon = anonymous_client(&authority);

    // Fill the anonymous and the general pool.
    let mut a1 = tls_from(src, server.addr, anon.clone()).await.unwrap();
    let mut n1 = tls_from(src, server.addr, node.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (what, config) in [("anonymous", anon.clone()), ("authenticated", node.clone())] {
        if let Some(mut c) = tls_from(src, server.addr, config).await {
            assert!(tls_closed(&mut c, PATIENCE).await, "a second {what} got in");
        }
    }
    // A member still gets its reserved slot, and calls on it.
    let (who, _) = whoami(server.channel(member.clone())).await.unwrap();
    assert_eq!(who, MEMBER_ID);
    assert!(!tls_closed(&mut a1, Duration::from_millis(100)).await);
    assert!(!tls_closed(&mut n1, Duration::from_millis(100)).await);
    drop((a1, n1));
    server.stop().await;
}

#[tokio::test]
async fn handshakes_per_ip_are_capped_without_blocking_other_sources() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let limits = ServerLimits {
        max_handshakes_per_ip: 2,
        handshake_timeout: Duration::from_secs(60),
        ..ServerLimits::default()
    };
    let server = TestServer::start_guarded(optional_server(&authority), limits).await;
    let connect_from = |src: &str| {
        let src = ip(src);
        let addr = server.addr;
        async move {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(std::net::SocketAddr::new(src, 0)).unwrap();
            s.connect(addr).await.unwrap()
        }
    };
    // Two silent connections take 127.0.0.2's handshake slots; a third is closed at once.
    let mut silent: Vec<TcpStream> = vec![
        connect_from("127.0.0.2").await,
        connect_from("127.0.0.2").await,
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = connect_from("127.0.0.2").await;
    assert!(closed_by_server(&mut third, Duration::from_secs(5)).await);
    for s in &mut silent {
        assert!(still_open(s).await);
    }
    // Another source completes its handshake and calls.
    let me = svid(&authority, CLIENT_ID);
    let mine = client(&me, &authority, PeerMatch::AnyInTrustDomain);
    assert!(whoami(server.channel(mine)).await.is_ok());
    drop(silent);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Lifetimes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn idle_anonymous_connection_is_closed_after_its_idle_timeout() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let idle = Duration::from_millis(800);
    let limits = ServerLimits {
        anonymous_idle_timeout: idle,
        ..ServerLimits::default()
    };
    let server = TestServer::start_guarded(optional_server(&authority), limits).await;
    let started = Instant::now();
    let mut conn = tls_from(ip("127.0.0.1"), server.addr, anonymous_client(&authority))
        .await
        .unwrap();
    assert!(tls_closed(&mut conn, PATIENCE).await, "never closed");
    let took = started.elapsed();
    assert!(
        took >= idle,
        "closed after {took:?}, before the idle timeout"
    );
    assert!(
        took < idle + Duration::from_secs(5),
        "closed after {took:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn busy_anonymous_connection_is_closed_at_its_maximum_age() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let age = Duration::from_millis(1500);
    let limits = ServerLimits {
        anonymous_max_age: age,
        ..ServerLimits::default()
    };
    let server = TestServer::start_guarded(optional_server(&authority), limits).await;
    let channel = server.channel(anonymous_client(&authority));
    let (_, first) = whoami(channel.clone()).await.unwrap();
    let started = Instant::now();
    // Calls every 100 ms keep it busy; the server still ends it at its age, and the channel
    // reconnects (another source port).
    let moved = loop {
        if let Ok((_, addr)) = whoami(channel.clone()).await
            && addr != first
        {
            break started.elapsed();
        }
        assert!(started.elapsed() < age + PATIENCE, "never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        moved + Duration::from_millis(200) >= age,
        "ended after {moved:?}"
    );
    assert!(
        moved < age + Duration::from_secs(5),
        "ended after {moved:?}"
    );
    drop(channel);
    server.stop().await;
}

#[tokio::test]
async fn connection_is_cut_when_its_client_certificate_expires() {
    let authority = ca(&td("td"), "ringzero authority a1");
    let server =
        TestServer::start_guarded(mandatory_server(&authority), ServerLimits::default()).await;
    let me = svid_for(&authority, CLIENT_ID, Duration::from_secs(3));
    let config = client(&me, &authority, PeerMatch::AnyInTrustDomain);
    let channel = server.channel(config.clone());
    assert_eq!(whoami(channel.clone()).await.unwrap().0, CLIENT_ID);
    let mut raw = tls_from(ip("127.0.0.1"), server.addr, config.clone())
        .await
        .unwrap();
    let started = Instant::now();
    assert!(tls_closed(&mut raw, PATIENCE).await, "never cut");
    // X.509 times are whole seconds: the certificate expires 2 to 3 s from its issue.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "cut after {took:?}");
    assert!(took < Duration::from_secs(6), "cut after {took:?}");
    // Afterwards the same channel gets nothing with that certificate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = server.calls();
    whoami(channel.clone()).await.unwrap_err();
    assert_eq!(server.calls(), calls);
    drop(channel);
    server.stop().await;
}

#[tokio::test]
async fn a_resumed_tls_session_cannot_skip_the_client_certificate_check() {
    // Two CAs in the bundle; the client's SVID is from the second.
    let first = ca(&td("td"), "ringzero authority a1");
    let second = ca(&td("td"), "ringzero authority a2");
    let both = ringzero_policy::testing::trust_bundle(&td("td"), &[&first, &second]);
    let bundle = ringzero_policy::tls::BundleSource::new(both);
    let me = svid(&first, SERVER_ID);
    let verifier = ringzero_policy::tls::SpiffeClientVerifier::new(
        bundle.clone(),
        PeerMatch::AnyInTrustDomain,
    );
    let config = me.server_config(verifier);
    let server = TestServer::start_guarded(config, ServerLimits::default()).await;
    // One client configuration, as a long-running client keeps: it caches TLS sessions.
    let mine = client(
        &svid(&second, CLIENT_ID),
        &first,
        PeerMatch::AnyInTrustDomain,
    );
    assert_eq!(
        whoami(server.channel(mine.clone())).await.unwrap().0,
        CLIENT_ID
    );

    // The second CA leaves the bundle (compromised): a new connection must verify the
    // certificate again, not resume the session it had.
    bundle.replace(ringzero_policy::testing::trust_bundle(&td("td"), &[&first]));
    let calls = server.calls();
    let status = whoami(server.channel(mine.clone())).await.unwrap_err();
    assert_eq!(
        server.calls(),
        calls,
        "served after its CA left: {status:?}"
    );
    let mut raw = tls_from(ip("127.0.0.1"), server.addr, mine).await.unwrap();
    assert!(tls_closed(&mut raw, PATIENCE).await);
    server.stop().await;
}
