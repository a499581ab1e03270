//! The sidecar end to end: real TCP on 127.0.0.1, real rustls, SVIDs streamed by a Workload
//! API server on a unix socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use ringzero_mesh::config::Settings;
use ringzero_mesh::{Direction, Refusal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WEB: &str = "/ns/shop/web";
const DB: &str = "/ns/shop/db";

fn inbound_settings(agent: &Agent, target: std::net::SocketAddr) -> Settings {
    Settings {
        workload_api: Some(agent.endpoint()),
        inbound: vec![format!("127.0.0.1:0={target}")],
        allow: vec![format!("spiffe://{TD}{WEB}")],
        admin: Some("127.0.0.1:0".into()),
        ..Settings::default()
    }
}

fn outbound_settings(agent: &Agent, target: std::net::SocketAddr, expect: &str) -> Settings {
    Settings {
        workload_api: Some(agent.endpoint()),
        outbound: vec![format!("127.0.0.1:0={target}@spiffe://{TD}{expect}")],
        admin: Some("127.0.0.1:0".into()),
        ..Settings::default()
    }
}

/// web's app → web's outbound sidecar → mTLS → db's inbound sidecar → db's app (echo).
struct Pair {
    ca: Ca,
    web_agent: Agent,
    db_agent: Agent,
    echo: Echo,
    db: Running,
    web: Running,
}

impl Pair {
    async fn start() -> Self {
        let ca = Ca::new(TD);
        let web_agent = Agent::start(Some(&ca.svid(WEB)));
        let db_agent = Agent::start(Some(&ca.svid(DB)));
        let echo = Echo::start().await;
        let db = Running::start(inbound_settings(&db_agent, echo.addr)).await;
        let web = Running::start(outbound_settings(&web_agent, db.inbound[0], DB)).await;
        Self {
            ca,
            web_agent,
            db_agent,
            echo,
            db,
            web,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_flow_both_ways_intact_through_an_outbound_inbound_pair() {
    let pair = Pair::start().await;
    for (len, seed) in [(8 * 1024 * 1024, 1), (1, 2), (100_000, 3)] {
        let app = TcpStream::connect(pair.web.outbound[0]).await.unwrap();
        let data = payload(len, seed);
        let back = round_trip(app, data.clone()).await;
        assert!(back == data, "{len} bytes came back altered");
    }
    assert_eq!(pair.echo.accepted(), 3);
    let m = &pair.db.metrics;
    assert!(
        m.render(None, SystemTime::now())
            .contains("ringzero_mesh_handshakes_total{direction=\"inbound\"} 3")
    );
    let (status, body) = get(pair.web.admin.unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("ringzero_mesh_handshakes_total{direction=\"outbound\"} 3"),
        "{body}"
    );
    assert!(
        body.contains("ringzero_mesh_bytes_to_peer_total{direction=\"outbound\"} 8488609"),
        "{body}"
    );
}

/// Connects to the db sidecar's inbound listener with `connector` and checks the refusal.
async fn assert_refused(pair: &Pair, connector: &tokio_rustls::TlsConnector, why: Refusal) {
    let before = pair.echo.accepted();
    let refused = match tls_connect(connector, pair.db.inbound[0]).await {
        Ok(tls) => is_refused(tls).await,
        Err(_) => true,
    };
    assert!(refused, "{why:?}: the connection was let through");
    let metrics = pair.db.metrics.clone();
    eventually(&format!("a {} refusal counted", why.as_str()), || {
        let metrics = metrics.clone();
        async move { metrics.refusals(Direction::Inbound, why) == 1 }
    })
    .await;
    assert_eq!(
        pair.echo.accepted(),
        before,
        "{why:?}: the target was reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_refuses_each_bad_peer_for_its_reason() {
    let pair = Pair::start().await;
    let ca = &pair.ca;

    // The allowed workload gets through (the baseline).
    let web = ca.svid(WEB).client(ca);
    let tls = tls_connect(&web, pair.db.inbound[0]).await.unwrap();
    assert_eq!(round_trip(tls, b"ping".to_vec()).await, b"ping");

    // A valid SVID of the trust domain, but no rule allows its ID (and the prefix is
    // segment-aware: `/ns/shop/web-admin` is not `/ns/shop/web`).
    assert_refused(
        &pair,
        &ca.svid("/ns/shop/web-admin").client(ca),
        Refusal::NotAllowed,
    )
    .await;
    // A workload of another trust domain.
    let foreign = Ca::new("other.org");
    assert_refused(
        &pair,
        &foreign.svid(WEB).client(ca),
        Refusal::WrongTrustDomain,
    )
    .await;
    // The right ID from a CA outside the bundle.
    let rogue = Ca::named(TD, "rogue ca");
    assert_refused(&pair, &rogue.svid(WEB).client(ca), Refusal::UntrustedCa).await;
    // No client certificate at all.
    assert_refused(&pair, &anonymous_client(ca), Refusal::NoCertificate).await;
    // An expired SVID.
    let old = ca.svid_at(
        WEB,
        SystemTime::now() - Duration::from_secs(7200),
        Duration::from_secs(3600),
    );
    assert_refused(&pair, &old.client(ca), Refusal::Expired).await;
    // A revoked serial: refused from the next handshake on.
    let revoked = ca.svid(WEB);
    let tls = tls_connect(&revoked.client(ca), pair.db.inbound[0])
        .await
        .unwrap();
    assert_eq!(round_trip(tls, b"before".to_vec()).await, b"before");
    pair.db.revoked.insert(revoked.serial.clone());
    assert_refused(&pair, &revoked.client(ca), Refusal::Revoked).await;

    let (_, body) = get(pair.db.admin.unwrap(), "/metrics").await;
    for reason in [
        "id_not_allowed",
        "wrong_trust_domain",
        "untrusted_ca",
        "no_certificate",
        "expired",
        "revoked",
    ] {
        let line =
            format!("ringzero_mesh_refusals_total{{direction=\"inbound\",reason=\"{reason}\"}} 1");
        assert!(body.contains(&line), "{line} missing from\n{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_a_server_with_another_id() {
    let ca = Ca::new(TD);
    let web_agent = Agent::start(Some(&ca.svid(WEB)));
    // A server that presents a valid SVID of the trust domain, but not the expected one.
    let impostor = ca.svid("/ns/shop/impostor").server(&ca);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = impostor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"secrets").await;
                }
            });
        }
    });
    let _server = AbortOnDrop(server);
    let web = Running::start(outbound_settings(&web_agent, addr, DB)).await;
    let app = TcpStream::connect(web.outbound[0]).await.unwrap();
    assert!(is_refused(app).await);
    let metrics = web.metrics.clone();
    eventually("an outbound id_not_allowed refusal", || {
        let m = metrics.clone();
        async move { m.refusals(Direction::Outbound, Refusal::NotAllowed) == 1 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_live_streams_and_new_handshakes_use_the_new_svid() {
    let pair = Pair::start().await;
    let ca = &pair.ca;

    // A long stream through the pair.
    let app = TcpStream::connect(pair.web.outbound[0]).await.unwrap();
    let (mut r, mut w) = app.into_split();
    let chunk = payload(256 * 1024, 7);
    w.write_all(&chunk).await.unwrap();
    let mut back = vec![0u8; chunk.len()];
    r.read_exact(&mut back).await.unwrap();
    assert!(back == chunk);

    // Both sides rotate.
    let new_db = ca.svid(DB);
    let new_web = ca.svid(WEB);
    pair.db_agent.publish(&new_db);
    pair.web_agent.publish(&new_web);
    let admin = pair.db.admin.unwrap();
    let serial = hex(&new_db.serial);
    eventually("the db sidecar to take its new SVID", || {
        let serial = serial.clone();
        async move { get(admin, "/status").await.1.contains(&serial) }
    })
    .await;

    // The live stream carries on.
    for seed in 8..12 {
        let chunk = payload(256 * 1024, seed);
        w.write_all(&chunk).await.unwrap();
        r.read_exact(&mut back).await.unwrap();
        assert!(back == chunk, "the stream was altered after rotation");
    }

    // A new handshake sees the new server certificate.
    let tls = tls_connect(&ca.svid(WEB).client(ca), pair.db.inbound[0])
        .await
        .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(presented, new_db.chain[0]);
    // And a new connection through the pair works.
    let app = TcpStream::connect(pair.web.outbound[0]).await.unwrap();
    assert_eq!(round_trip(app, b"after".to_vec()).await, b"after");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_svid_and_the_target_and_metrics_answer() {
    let ca = Ca::new(TD);
    let agent = Agent::start(None);
    let echo = Echo::start().await;
    let db = Running::start(inbound_settings(&agent, echo.addr)).await;
    let admin = db.admin.unwrap();

    assert_eq!(get(admin, "/live").await.0, 200);
    let (status, body) = get(admin, "/ready").await;
    assert_eq!((status, body.as_str()), (503, "not ready: no SVID yet\n"));

    agent.publish(&ca.svid(DB));
    eventually("/ready to answer 200", || async move {
        get(admin, "/ready").await.0 == 200
    })
    .await;

    let (status, body) = get(admin, "/status").await;
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["svid"]["spiffe_id"], format!("spiffe://{TD}{DB}"));
    assert_eq!(status["inbound"][0]["target"], echo.addr.to_string());

    let (status, body) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for family in [
        "ringzero_mesh_refusals_total",
        "ringzero_mesh_open_connections",
        "ringzero_mesh_handshakes_total",
        "ringzero_mesh_handshake_seconds_bucket",
        "ringzero_mesh_bytes_from_peer_total",
        "ringzero_mesh_svid_expiry_seconds",
    ] {
        assert!(body.contains(family), "{family} missing");
    }
    let expiry: i64 = body
        .lines()
        .find_map(|l| l.strip_prefix("ringzero_mesh_svid_expiry_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&expiry), "{expiry}");

    assert_eq!(get(admin, "/nope").await.0, 404);

    // The target goes away: not ready.
    drop(echo);
    eventually("/ready to answer 503", || async move {
        get(admin, "/ready").await.0 == 503
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_svid_within_the_timeout_is_an_error() {
    let agent = Agent::start(None);
    let echo = Echo::start().await;
    let mut db = Running::start(Settings {
        svid_timeout: Some("300ms".into()),
        ..inbound_settings(&agent, echo.addr)
    })
    .await;
    let err = db.finished().await.unwrap_err();
    assert!(
        matches!(err, ringzero_mesh::MeshError::NoSvid { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_listeners_and_drains_live_connections() {
    let mut pair = Pair::start().await;
    let ca = &pair.ca;
    let web = ca.svid(WEB).client(ca);
    let tls = tls_connect(&web, pair.db.inbound[0]).await.unwrap();
    let (mut r, mut w) = tokio::io::split(tls);
    w.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    r.read_exact(&mut buf).await.unwrap();

    pair.db.shutdown();
    let admin = pair.db.admin.unwrap();
    eventually("the listener to close", || {
        let inbound = pair.db.inbound[0];
        async move { TcpStream::connect(inbound).await.is_err() }
    })
    .await;
    assert_eq!(
        get(admin, "/ready").await,
        (503, "not ready: draining\n".into())
    );

    // The live connection still works during the drain.
    w.write_all(b"two").await.unwrap();
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"two");
    // It ends; the sidecar stops well before the drain timeout (10 s).
    let started = std::time::Instant::now();
    w.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest).await;
    pair.db.finished().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_and_the_max_age_close_connections() {
    let ca = Ca::new(TD);
    let agent = Agent::start(Some(&ca.svid(DB)));
    let echo = Echo::start().await;
    let web = ca.svid(WEB).client(&ca);

    // Max age: a connection is closed once it is 300 ms old.
    let db = Running::start(Settings {
        max_conn_age: Some("300ms".into()),
        ..inbound_settings(&agent, echo.addr)
    })
    .await;
    let mut tls = tls_connect(&web, db.inbound[0]).await.unwrap();
    tls.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 1];
    tls.read_exact(&mut buf).await.unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest))
        .await
        .expect("the connection outlived its maximum age");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Drain timeout: an idle connection is closed 300 ms after shutdown.
    let mut db = Running::start(Settings {
        drain_timeout: Some("300ms".into()),
        ..inbound_settings(&agent, echo.addr)
    })
    .await;
    let mut tls = tls_connect(&web, db.inbound[0]).await.unwrap();
    tls.write_all(b"x").await.unwrap();
    tls.read_exact(&mut buf).await.unwrap();
    db.shutdown();
    let started = std::time::Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest))
        .await
        .expect("the connection outlived the drain");
    db.finished().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_header_names_the_caller() {
    let ca = Ca::new(TD);
    let agent = Agent::start(Some(&ca.svid(DB)));
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let db = Running::start(Settings {
        proxy_protocol: Some(true),
        ..inbound_settings(&agent, target_addr)
    })
    .await;
    let web_svid = ca.svid(WEB);
    let mut tls = tls_connect(&web_svid.client(&ca), db.inbound[0])
        .await
        .unwrap();
    tls.write_all(b"payload").await.unwrap();
    let (mut app, _) = target.accept().await.unwrap();
    let mut got = Vec::new();
    let header = loop {
        let mut chunk = [0u8; 4096];
        let n = app.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the target got no header");
        got.extend_from_slice(&chunk[..n]);
        match ringzero_mesh::proxy_protocol::decode(&got) {
            Ok(h) if got.len() >= h.len + 7 => break h,
            _ => continue,
        }
    };
    assert_eq!(header.spiffe_id.as_deref(), Some(web_svid.id.as_str()));
    assert_eq!(
        header.client_cert.as_deref(),
        Some(web_svid.chain[0].as_ref())
    );
    assert_eq!(header.destination, db.inbound[0]);
    assert_eq!(&got[header.len..], b"payload");
}

async fn status_serial(admin: std::net::SocketAddr) -> String {
    let (_, body) = get(admin, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["svid"]["serial"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_workload_api_message_keeps_the_current_svid_and_a_restart_is_survived() {
    let ca = Ca::new(TD);
    let first = ca.svid(DB);
    let mut agent = Agent::start(Some(&first));
    let echo = Echo::start().await;
    let db = Running::start(inbound_settings(&agent, echo.addr)).await;
    let admin = db.admin.unwrap();
    let want = hex(&first.serial);
    eventually("the first SVID", || {
        let want = want.clone();
        async move { status_serial(admin).await == want }
    })
    .await;

    // Hostile answers: a key that is not the certificate's, garbage DER, an ID that differs
    // from the certificate's, no SVID at all. Each is refused and the SVID in force stays.
    let other = ca.svid(DB);
    let mut wrong_key = first.response();
    wrong_key.svids[0].x509_svid_key = other.key.clone();
    let mut garbage = first.response();
    garbage.svids[0].x509_svid = vec![0x30, 0x82, 0xff];
    let mut wrong_id = first.response();
    wrong_id.svids[0].spiffe_id = format!("spiffe://{TD}/ns/shop/admin");
    let mut empty = first.response();
    empty.svids.clear();
    for bad in [wrong_key, garbage, wrong_id, empty] {
        agent.publish_raw(bad);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(status_serial(admin).await, want);
        let tls = tls_connect(&ca.svid(WEB).client(&ca), db.inbound[0])
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.peer_certificates().unwrap()[0],
            first.chain[0]
        );
    }

    // The agent goes away for a while and comes back with a new SVID: the sidecar reconnects.
    agent.restart(Duration::from_millis(300)).await;
    let next = ca.svid(DB);
    agent.publish(&next);
    let want = hex(&next.serial);
    eventually("the SVID from the restarted agent", || {
        let want = want.clone();
        async move { status_serial(admin).await == want }
    })
    .await;
    let tls = tls_connect(&ca.svid(WEB).client(&ca), db.inbound[0])
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0],
        next.chain[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_or_the_peer_expiry_closes_live_connections() {
    let ca = Ca::new(TD);
    let agent = Agent::start(Some(&ca.svid(DB)));
    let echo = Echo::start().await;
    let db = Running::start(inbound_settings(&agent, echo.addr)).await;

    let web = ca.svid(WEB);
    let mut tls = tls_connect(&web.client(&ca), db.inbound[0]).await.unwrap();
    tls.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 1];
    tls.read_exact(&mut buf).await.unwrap();
    db.revoked.insert(web.serial.clone());
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest))
        .await
        .expect("a revoked peer's live connection stayed open")
        .ok();

    // A client SVID that expires in two seconds: its connection ends then.
    let short = ca.svid_at(WEB, SystemTime::now(), Duration::from_secs(2));
    let mut tls = tls_connect(&short.client(&ca), db.inbound[0])
        .await
        .unwrap();
    tls.write_all(b"x").await.unwrap();
    tls.read_exact(&mut buf).await.unwrap();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(6), tls.read_to_end(&mut rest))
        .await
        .expect("a connection outlived its peer's certificate")
        .ok();
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_rotation_applies_to_the_next_handshake() {
    let old_ca = Ca::named(TD, "old ca");
    let new_ca = Ca::named(TD, "new ca");
    let agent = Agent::start(Some(&old_ca.svid(DB)));
    let echo = Echo::start().await;
    let db = Running::start(inbound_settings(&agent, echo.addr)).await;
    let admin = db.admin.unwrap();
    // A client of the new CA, trusting both CAs' servers during the overlap.
    let old_client = old_ca.svid(WEB);
    let new_client = new_ca.svid(WEB);
    let tls = tls_connect(&old_client.client(&old_ca), db.inbound[0])
        .await
        .unwrap();
    assert_eq!(round_trip(tls, b"old".to_vec()).await, b"old");
    let tls = tls_connect(&new_client.client(&old_ca), db.inbound[0])
        .await
        .unwrap();
    assert!(is_refused(tls).await, "a CA outside the bundle was trusted");

    // Overlap: an SVID of the new CA, both CAs in the bundle.
    let mut overlap = new_ca.svid(DB);
    overlap.bundle.push(old_ca.ca.cert_der().clone());
    agent.publish(&overlap);
    let serial = hex(&overlap.serial);
    eventually("the overlap bundle", || {
        let serial = serial.clone();
        async move { status_serial(admin).await == serial }
    })
    .await;
    for (client, label) in [(&old_client, "old"), (&new_client, "new")] {
        let tls = tls_connect(&client.client(&new_ca), db.inbound[0])
            .await
            .unwrap();
        assert_eq!(
            round_trip(tls, label.as_bytes().to_vec()).await,
            label.as_bytes()
        );
    }

    // The old CA leaves the bundle: its SVIDs are refused from the next handshake on.
    let after = new_ca.svid(DB);
    agent.publish(&after);
    let serial = hex(&after.serial);
    eventually("the new bundle alone", || {
        let serial = serial.clone();
        async move { status_serial(admin).await == serial }
    })
    .await;
    let before = db
        .metrics
        .refusals(Direction::Inbound, Refusal::UntrustedCa);
    let tls = tls_connect(&old_client.client(&new_ca), db.inbound[0])
        .await
        .unwrap();
    assert!(
        is_refused(tls).await,
        "a CA that left the bundle is still trusted"
    );
    assert_eq!(
        db.metrics
            .refusals(Direction::Inbound, Refusal::UntrustedCa),
        before + 1
    );
    let tls = tls_connect(&new_client.client(&new_ca), db.inbound[0])
        .await
        .unwrap();
    assert_eq!(round_trip(tls, b"new".to_vec()).await, b"new");
}

/// A TLS connection to `addr` from the local address `source` (another loopback address).
async fn tls_connect_from(
    connector: &tokio_rustls::TlsConnector,
    source: std::net::IpAddr,
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    let tcp = socket.connect(addr).await?;
    connector
        .connect(
            rustls_pki_types::ServerName::try_from("mesh.test").unwrap(),
            tcp,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holds_at_most_16_handshakes_and_others_still_get_in() {
    let pair = Pair::start().await;
    let inbound = pair.db.inbound[0];
    // 16 connections that never say a word hold 127.0.0.1's share of handshakes.
    let mut silent = Vec::new();
    for _ in 0..16 {
        silent.push(TcpStream::connect(inbound).await.unwrap());
    }
    // The 17th is closed at once: no handshake, well before the 2 s ClientHello deadline.
    let metrics = pair.db.metrics.clone();
    let mut extra = TcpStream::connect(inbound).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(1500), extra.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the 17th silent connection of one source was kept: {read:?}"
    );
    eventually("an overloaded refusal counted", || {
        let metrics = metrics.clone();
        async move { metrics.refusals(Direction::Inbound, Refusal::Overloaded) >= 1 }
    })
    .await;
    // Another source still gets through while 127.0.0.1's share is taken.
    let web = pair.ca.svid(WEB).client(&pair.ca);
    let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let tls = tls_connect_from(&web, other, inbound).await.unwrap();
    assert_eq!(round_trip(tls, b"ping".to_vec()).await, b"ping");
    // Once the silent ones go, 127.0.0.1 is served again.
    drop(silent);
    eventually("127.0.0.1 admitted again", || {
        let web = web.clone();
        async move {
            match tls_connect(&web, inbound).await {
                Ok(tls) => round_trip(tls, b"ping".to_vec()).await == b"ping",
                Err(_) => false,
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_a_whole_client_hello_loses_its_slot_after_2_s() {
    let pair = Pair::start().await;
    let inbound = pair.db.inbound[0];
    // A TLS record header promising a ClientHello that never comes.
    let mut slow = TcpStream::connect(inbound).await.unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    let took = started.elapsed();
    assert!(read.is_ok(), "the trickling caller was kept past 8 s");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "closed after {took:?}, not at the 2 s ClientHello deadline"
    );
    let metrics = pair.db.metrics.clone();
    assert!(metrics.refusals(Direction::Inbound, Refusal::Handshake) >= 1);
}
