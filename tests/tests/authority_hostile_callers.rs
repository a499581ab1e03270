//! Hostile callers of an authority node run as a real `ringzero` process: only members speak
//! Raft and only enrolled authorities join, hostile bytes and half-open connections do not take
//! the node down, and calls without a valid capability are denied and audited with the cause.
//!
//! Each test runs its own cluster on loopback ports in its own temporary directory (see
//! [`ringzero_tests::cluster`]); set `RINGZERO_KEEP_TMP=1` to keep it, and run with
//! `--nocapture` to see how each refusal looked on the wire.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringzero_authority::command::AuditDecision;
use ringzero_policy::testing::{ca as test_ca, trust_domain};
use ringzero_proto::client::Profile;
use ringzero_proto::pb;
use ringzero_tests::cluster::*;
use ringzero_tests::probe::{connect_from, send_and_expect_close};
use ringzero_tests::{ringzero, run_timeout, run_timeout_stdin, show};

// ---------------------------------------------------------------------------------------------
// Only members speak Raft
// ---------------------------------------------------------------------------------------------

#[test]
fn only_members_speak_raft_and_only_enrolled_authorities_join() {
    let c = Cluster::new("raft-gate");
    let profile = c.profile();
    let addr = c.nodes[0].addr.clone();
    let ca = c.node_ca(0);
    let term_before = c.status_json()["term"].as_u64().unwrap();
    let rt = runtime();

    let raft_call = |tls: Arc<rustls::ClientConfig>, append: bool, data: Vec<u8>| {
        rt.block_on(async {
            let mut client = pb::raft_client::RaftClient::new(channel(&addr, tls));
            let req = with_bearer(pb::RaftPayload { data }, None);
            if append {
                client.append_entries(req).await
            } else {
                client.vote(req).await
            }
        })
    };
    let denied = |what: &str,
                  r: Result<tonic::Response<pb::RaftPayload>, tonic::Status>,
                  msg: &str| match r {
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{what}: {s:?}");
            assert!(s.message().contains(msg), "{what}: {s:?}");
        }
        Ok(_) => panic!("{what}: a Raft RPC was accepted"),
    };

    // A heartbeat at term 1000 from "node 99" would depose the leader if it got through.
    let admin = Svid::of_profile(&profile);
    denied(
        "the admin SVID",
        raft_call(mtls(&profile, &admin), true, forged_append_entries(1000, 1)),
        "not an authority node",
    );
    denied(
        "the admin SVID (Vote)",
        raft_call(mtls(&profile, &admin), false, forged_vote(1000, 1)),
        "not an authority node",
    );
    // Without a certificate the call is refused before the Raft service sees it.
    match raft_call(
        anonymous_tls(&profile),
        true,
        forged_append_entries(1000, 99),
    ) {
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
            assert_eq!(s.message(), ringzero_proto::transport::ANONYMOUS_MESSAGE);
        }
        Ok(_) => panic!("no client certificate: a Raft RPC was accepted"),
    }

    // SVIDs from CAs outside the bundle do not even complete the TLS handshake: another trust
    // domain, and a rogue CA claiming this trust domain and a member's ID.
    let other_ca = test_ca(&trust_domain("other.org"), "other");
    let rogue_ca = test_ca(&td(), "rogue");
    // And a member's ID signed by a CA in the bundle that is not that member's own: node 1's
    // CA vouching for "authority/99", or for "authority/2".
    for (what, svid) in [
        (
            "another trust domain",
            Svid::forge(&other_ca, "spiffe://other.org/ringzero/authority/1"),
        ),
        (
            "a rogue CA of this trust domain",
            Svid::forge(&rogue_ca, &format!("spiffe://{TD}/ringzero/authority/1")),
        ),
        (
            "authority/99 signed by member 1's CA",
            Svid::forge(&ca, &format!("spiffe://{TD}/ringzero/authority/99")),
        ),
        (
            "authority/2 signed by member 1's CA",
            Svid::forge(&ca, &format!("spiffe://{TD}/ringzero/authority/2")),
        ),
    ] {
        match raft_call(mtls(&profile, &svid), true, forged_append_entries(1000, 1)) {
            Ok(_) => panic!("{what}: a Raft RPC was accepted"),
            Err(s) => {
                // The server rejects the certificate during the handshake; the call fails in
                // the transport (how depends on when the client notices: TLS 1.3 clients
                // finish their side first), never with a status from a handler.
                assert!(
                    matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                    ),
                    "{what}: {s:?}"
                );
                eprintln!("raft-gate: {what}: {:?}: {}", s.code(), s.message());
            }
        }
        // On the wire: the server answers the client certificate with a fatal alert.
        let alert = rt.block_on(tls_alert(&addr, mtls(&profile, &svid)));
        assert!(alert.contains("alert"), "{what}: {alert}");
        eprintln!("raft-gate: {what}: {alert}");
    }

    // JoinCluster: only an authority node with a redeemed join token.
    let join_call = |svid: &Svid, token: Option<&str>| {
        rt.block_on(async {
            let mut client =
                pb::authority_client::AuthorityClient::new(channel(&addr, mtls(&profile, svid)));
            client
                .join_cluster(with_bearer(
                    pb::JoinClusterRequest {
                        address: "127.0.0.1:1".into(),
                        keys: vec![],
                    },
                    token,
                ))
                .await
        })
    };
    for (what, svid, token, msg) in [
        (
            "the admin SVID with the admin capability",
            &admin,
            Some(profile.token.as_str()),
            "not an enrolled authority node",
        ),
        (
            "a non-authority SVID",
            &Svid::forge(&ca, &format!("spiffe://{TD}/ringzero/node/n1")),
            None,
            "not an enrolled authority node",
        ),
        (
            "joining/99 without a redeemed token",
            &Svid::forge(&ca, &format!("spiffe://{TD}/ringzero/joining/99")),
            None,
            "no redeemed join token",
        ),
    ] {
        match join_call(svid, token) {
            Ok(_) => panic!("{what}: JoinCluster was accepted"),
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::PermissionDenied, "{what}: {s:?}");
                assert!(s.message().contains(msg), "{what}: {s:?}");
            }
        }
    }

    // Nothing changed: one member, same term, still writable.
    let ms = c.members();
    assert_eq!(ms.len(), 1, "{ms:?}");
    let status = c.status_json();
    assert_eq!(status["term"].as_u64(), Some(term_before));
    assert_eq!(status["writable"], serde_json::Value::Bool(true));
}

// ---------------------------------------------------------------------------------------------
// Hostile bytes on the port
// ---------------------------------------------------------------------------------------------

#[test]
fn garbage_half_open_connections_and_oversized_messages_do_not_take_a_node_down() {
    let c = Cluster::new("garbage");
    let addr = c.nodes[0].addr.clone();
    let profile = c.profile();

    // Garbage, plain HTTP/1.1, a plaintext HTTP/2 preface, a TLS record header claiming 16 KiB
    // followed by junk.
    let mut junk = vec![0u8; 64 * 1024];
    for (i, b) in junk.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    send_and_expect_close(&addr, "garbage", &junk);
    send_and_expect_close(&addr, "HTTP/1.1", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    send_and_expect_close(
        &addr,
        "h2 preface",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    );
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    record.extend_from_slice(&junk[..16 * 1024]);
    send_and_expect_close(&addr, "bogus TLS record", &record);

    // Half-open connections: 100 that never send a byte and one stuck in the middle of a
    // ClientHello, held while a client works normally. They come from another source than the
    // client (127.0.0.2): handshakes in progress are capped per source IP.
    let mut idle: Vec<std::net::TcpStream> = (0..100)
        .map(|_| connect_from(Ipv4Addr::new(127, 0, 0, 2), &addr))
        .collect();
    let mut partial = connect_from(Ipv4Addr::new(127, 0, 0, 2), &addr);
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    idle.push(partial);
    let t = Instant::now();
    assert!(c.status_ok(), "status with 101 half-open connections");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "status took {:?} with half-open connections",
        t.elapsed()
    );

    let rt = runtime();
    rt.block_on(async {
        // TLS completed, then garbage instead of HTTP/2.
        let connector = tokio_rustls::TlsConnector::from({
            let mut cfg = Arc::unwrap_or_clone(anonymous_tls(&profile));
            cfg.alpn_protocols = vec![b"h2".to_vec()];
            Arc::new(cfg)
        });
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("ringzero.invalid").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tls.write_all(&junk[..8192]).await;
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "garbage after TLS: the connection stayed open"
        );

        // Oversized messages: a 1 MiB CSR (the Authority service decodes at most 256 KiB), a
        // 17 MiB Raft payload (over the 16 MiB Raft limit), both without a client certificate.
        let mut client =
            pb::authority_client::AuthorityClient::new(channel(&addr, anonymous_tls(&profile)));
        let r = client
            .redeem_join_token(with_bearer(
                pb::RedeemJoinTokenRequest {
                    token_id: "00".repeat(16),
                    secret: vec![0; 32],
                    node_name: String::new(),
                    csr: vec![0x30; 1024 * 1024],
                },
                None,
            ))
            .await;
        let s = r.expect_err("a 1 MiB CSR was accepted");
        assert!(
            matches!(
                s.code(),
                tonic::Code::OutOfRange
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::InvalidArgument
            ),
            "1 MiB CSR: {s:?}"
        );
        eprintln!("garbage: 1 MiB CSR: {:?}: {}", s.code(), s.message());
        let mut raft = pb::raft_client::RaftClient::new(channel(&addr, anonymous_tls(&profile)))
            .max_encoding_message_size(usize::MAX);
        let r = raft
            .append_entries(with_bearer(
                pb::RaftPayload {
                    data: vec![0; 17 * 1024 * 1024],
                },
                None,
            ))
            .await;
        let s = r.expect_err("a 17 MiB Raft payload was accepted");
        assert_ne!(s.code(), tonic::Code::Ok);
        eprintln!(
            "garbage: 17 MiB Raft payload: {:?}: {}",
            s.code(),
            s.message()
        );
    });
    drop(idle);

    let mut c = c;
    assert!(
        c.nodes[0].is_running(),
        "the node died:\n{}",
        c.nodes[0].log_text()
    );
    assert!(c.status_ok(), "status after the abuse");
    c.join_token("10m");
}

// ---------------------------------------------------------------------------------------------
// Calls without a valid capability are denied and audited
// ---------------------------------------------------------------------------------------------

#[test]
fn calls_without_a_valid_capability_are_denied_and_audited_with_the_cause() {
    let mut c = Cluster::new("denied");
    let addr = c.nodes[0].addr.clone();
    let profile = c.profile();
    let admin = Svid::of_profile(&profile);
    let mallory = Svid::forge(&c.node_ca(0), &format!("spiffe://{TD}/user/mallory"));

    // An admin capability that expires in a second.
    let mut cmd = ringzero(c.path());
    cmd.args(["token", "attenuate", "-", "--ttl", "1s"]);
    let out = run_timeout_stdin(&mut cmd, Some(profile.token.as_bytes()), CLI_TIMEOUT);
    assert!(out.status.success(), "attenuate: {}", show(&out));
    let short = stdout(&out).trim().to_owned();
    let short_issued = Instant::now();

    let rt = runtime();
    let status_call = |svid: &Svid, token: Option<&str>| {
        rt.block_on(async {
            let mut client =
                pb::authority_client::AuthorityClient::new(channel(&addr, mtls(&profile, svid)));
            client
                .status(with_bearer(pb::StatusRequest {}, token))
                .await
        })
    };

    // No capability at all. This opens the admin peer's denial window.
    let first_admin_denial = Instant::now();
    let s = status_call(&admin, None).expect_err("a call without a capability");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("capability is required"), "{s:?}");

    // The admin capability over another identity of the trust domain (it is bound to admin).
    let s = status_call(&mallory, Some(&profile.token)).expect_err("a stolen capability");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("bound to another peer"), "{s:?}");
    // …and through the CLI, with a profile holding mallory's SVID and the admin token.
    let (svid_pem, key_pem) = mallory.pem();
    let stolen = Profile {
        svid_pem,
        key_pem,
        ..profile.clone()
    };
    let stolen_path = c.path().join("mallory.profile");
    std::fs::write(&stolen_path, stolen.to_toml().unwrap()).unwrap();
    for args in [
        &["authority", "status"][..],
        &["authority", "join-token"],
        &["authority", "members"],
    ] {
        let mut cmd = ringzero(c.path());
        cmd.arg("--profile").arg(&stolen_path).args(args);
        let out = run_timeout(cmd, CLI_TIMEOUT);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", show(&out));
        assert!(stderr(&out).contains("PermissionDenied"), "{}", show(&out));
    }

    // The expired capability, through the CLI's --token and directly.
    let wait = Duration::from_secs(2).saturating_sub(short_issued.elapsed());
    std::thread::sleep(wait);
    for args in [&["authority", "status"][..], &["authority", "join-token"]] {
        let mut cmd = c.cli_cmd(&["--token", &short]);
        cmd.args(args);
        let out = run_timeout(cmd, CLI_TIMEOUT);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", show(&out));
        let err = stderr(&out);
        assert!(
            err.contains("PermissionDenied") && err.contains("expired"),
            "{err}"
        );
    }
    let s = status_call(&admin, Some(&short)).expect_err("an expired capability");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("expired"), "{s:?}");

    // The profile itself still works.
    assert!(c.status_ok());

    // Denials from one peer within `DENIAL_WINDOW` (5 s) of its first are folded into one
    // summary record, committed when the window closes: wait for that (there is no audit API to
    // poll yet), then read the audit log. Mallory's window opened after admin's.
    let closed = first_admin_denial + ringzero_authority::DENIAL_WINDOW;
    std::thread::sleep((closed + Duration::from_secs(1)).saturating_duration_since(Instant::now()));
    c.stop_all();
    let st = c.nodes[0].state();
    let denials: Vec<(&str, &str)> = st
        .audit
        .iter()
        .filter(|a| a.record.decision == AuditDecision::Deny)
        .map(|a| {
            (
                a.record.actor.as_str(),
                a.record.reason.as_deref().unwrap_or(""),
            )
        })
        .collect();
    let admin_id = format!("spiffe://{TD}/user/admin");
    let mallory_id = format!("spiffe://{TD}/user/mallory");
    for (actor, cause) in [
        (admin_id.as_str(), "no capability"),
        (mallory_id.as_str(), "peer_mismatch"),
        (admin_id.as_str(), "expired"),
    ] {
        assert!(
            denials
                .iter()
                .any(|(a, r)| *a == actor && r.contains(cause)),
            "no Deny record by {actor} naming {cause:?}; denials: {denials:#?}"
        );
    }
    // Per peer and window, each distinct (operation, resource, failed check) is committed once
    // at once, and its repeats are counted into one summary record when the window closes.
    let firsts: Vec<(&str, &str, &str, &str)> = st
        .audit
        .iter()
        .filter(|a| a.record.decision == AuditDecision::Deny)
        .filter(|a| {
            !a.record
                .details
                .iter()
                .any(|(k, _)| k == "suppressed_denials")
        })
        .map(|a| {
            (
                a.record.actor.as_str(),
                a.record.operation.as_str(),
                a.record.resource.as_str(),
                a.record.reason.as_deref().unwrap_or(""),
            )
        })
        .collect();
    let distinct: BTreeSet<_> = firsts.iter().collect();
    assert_eq!(
        distinct.len(),
        firsts.len(),
        "a distinct denial was committed twice: {firsts:#?}"
    );
    // Mallory's stolen token was denied on the same read more than once (direct `status`,
    // then the CLI's reads): one record, and one summary counting the repeats.
    let summaries: Vec<(&str, &str, &str)> = st
        .audit
        .iter()
        .filter(|a| a.record.decision == AuditDecision::Deny)
        .filter_map(|a| {
            let (_, n) = a
                .record
                .details
                .iter()
                .find(|(k, _)| k == "suppressed_denials")?;
            Some((
                a.record.actor.as_str(),
                n.as_str(),
                a.record.reason.as_deref().unwrap_or(""),
            ))
        })
        .collect();
    assert!(
        summaries.iter().any(|(a, n, r)| *a == mallory_id
            && n.parse::<u64>().is_ok_and(|n| n >= 1)
            && r.starts_with("peer_mismatch")),
        "{summaries:#?}"
    );
    // Every distinct denial of the admin peer is there: no capability, and the expired token
    // on `status` and on `join-token`.
    let admin_causes: BTreeSet<(&str, &str)> = firsts
        .iter()
        .filter(|(a, ..)| *a == admin_id)
        .map(|(_, op, _, r)| (*op, r.split(':').next().unwrap_or("")))
        .collect();
    assert!(admin_causes.len() >= 3, "{admin_causes:#?}");
}
