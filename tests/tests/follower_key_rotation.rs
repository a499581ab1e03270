//! Key lifecycle (issue #16 item 4): the leader rotates a *follower's* keys.
//!
//! A 3-node cluster; an agent enrolled through the follower keeps fetching its SVID from the
//! Workload API (each fetch validated against the bundle it came with) and an admin client
//! keeps making authorized calls, while the admin asks the leader to rotate all four keys of
//! a follower (`rotate-keys --node N`). The follower generates and stages its keys itself
//! (`PrepareKeys`), the leader publishes and activates them, the follower swaps when it applies
//! the activation. No fetch fails, no call is refused; afterwards the follower's new keys are
//! active and its old ones retired in the bundle, the follower presents a certificate that
//! chains to its new CA, its key files are the new ones with nothing left in `keys/next/` or
//! `keys/old/`, and after a restart it comes back on the new keys.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ringzero_policy::svid::{TrustBundle, Usage, validate_svid};
use ringzero_policy::testing::{anonymous_client_config, one_of};
use ringzero_policy::tls::{BundleSource, SpiffeServerVerifier};
use ringzero_proto::pb;
use ringzero_tests::agent::{agent_cmd, my_uid, spawn_ready_agent};
use ringzero_tests::cluster::{Cluster, Svid, TD, ca_of_keys, channel, mtls, stdout, td};
use ringzero_tests::*;
use rustls_pki_types::CertificateDer;

async fn bundle(c: &Cluster) -> pb::Bundle {
    client_of(&c.profile)
        .call(|mut g| async move { g.get_bundle(pb::GetBundleRequest {}).await })
        .await
        .expect("bundle")
}

fn keys_of<'a>(b: &'a pb::Bundle, node: u64, kind: &str, status: &str) -> Vec<&'a pb::BundleKey> {
    b.keys
        .iter()
        .filter(|k| k.authority == node && k.kind == kind && k.status == status)
        .collect()
}

/// Calls `GetBundle` on `addr` over TLS that trusts `ca` alone and expects the server to be
/// authority node `node`: succeeds only if the certificate it presents chains to `ca`.
async fn presents_chain_to(addr: &str, node: u64, ca: &[u8]) -> Result<(), String> {
    let bundle = TrustBundle::new(td(), vec![CertificateDer::from(ca.to_vec())]).unwrap();
    let verifier = SpiffeServerVerifier::new(
        BundleSource::new(bundle),
        one_of(&[&format!("spiffe://{TD}/ringzero/authority/{node}")]),
    );
    let ch = channel(addr, anonymous_client_config(verifier));
    pb::authority_client::AuthorityClient::new(ch)
        .get_bundle(pb::GetBundleRequest {})
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn key_files_clean(keys: &Path) -> Result<(), String> {
    for sub in ["next", "old"] {
        if let Ok(rd) = std::fs::read_dir(keys.join(sub)) {
            let left: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
            if !left.is_empty() {
                return Err(format!("keys/{sub}/ holds {left:?}"));
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_followers_keys_rotate_under_load_and_survive_its_restart() {
    let mut c = tokio::task::block_in_place(|| Cluster::with_voters("follower-keyrot", 3));
    tokio::task::block_in_place(|| c.wait_replicated(Duration::from_secs(20)));
    let leader = tokio::task::block_in_place(|| c.leader());
    let f = (0..3).find(|i| *i != leader).unwrap();
    let fid = c.nodes[f].node_id();
    let faddr = c.nodes[f].addr.clone();

    // An agent enrolled through the follower, with one entry.
    let out = c.cli(&["node", "token", "--name", "w1", "--ttl", "10m"]);
    assert!(out.status.success(), "node token: {}", show(&out));
    let token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let token_file = c.path().join("w1.token");
    std::fs::write(&token_file, &token).unwrap();
    let socket = c.path().join("w1.sock");
    let cmd = agent_cmd(
        c.path(),
        &faddr,
        Some(&format!("@{}", token_file.display())),
        &c.path().join("agent-w1"),
        &socket,
    );
    let _agent = tokio::task::block_in_place(|| {
        spawn_ready_agent(
            "agent-w1",
            cmd,
            &c.path().join("agent-w1.log"),
            Duration::from_secs(20),
        )
    });
    let out = c.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://{TD}/ns/test/me"),
        "--node",
        "w1",
        "--selector",
        &format!("unix:uid:{}", my_uid()),
    ]);
    assert!(out.status.success(), "entry create: {}", show(&out));
    let fetch = {
        let socket = socket.clone();
        move || {
            let socket = socket.clone();
            async move {
                let svids = ringzero_agent::fetch_x509(&socket, Duration::from_secs(5))
                    .await
                    .map_err(|e| e.to_string())?;
                let s = svids.first().ok_or("no SVID")?;
                let b = TrustBundle::new(td(), s.bundle.clone()).map_err(|e| e.to_string())?;
                validate_svid(&s.chain, &b, SystemTime::now(), Usage::Client)
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while fetch().await.is_err() {
        assert!(Instant::now() < deadline, "no first SVID");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = bundle(&c).await;
    // A joined member's keys are published (trusted) at its join; never activated before.
    let signing = |b: &pb::Bundle, kind: &str| {
        let mut k = keys_of(b, fid, kind, "active");
        k.extend(keys_of(b, fid, kind, "published"));
        k.into_iter().cloned().collect::<Vec<_>>()
    };
    let old_ca = signing(&before, "x509-ca")[0].clone();
    assert!(
        presents_chain_to(&faddr, fid, &old_ca.public_key)
            .await
            .is_ok()
    );
    let old_ca_key = std::fs::read(c.nodes[f].dir.join("keys").join("ca.key")).unwrap();

    // Continuous fetches and authorized calls (a capability minted before the rotation).
    let stop = Arc::new(AtomicBool::new(false));
    let fetcher = ringzero_tests::load::repeat(stop.clone(), "fetch", fetch.clone());
    let caller = ringzero_tests::load::repeat(
        stop.clone(),
        "call",
        ringzero_tests::load::list_entries(client_of(&c.profile)),
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let node = fid.to_string();
    let out = tokio::task::block_in_place(|| {
        c.cli(&[
            "authority",
            "rotate-keys",
            "--json",
            "--node",
            &node,
            "--propagation",
            "2s",
        ])
    });
    let took = started.elapsed();
    assert!(out.status.success(), "rotate-keys --node: {}", show(&out));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    for kind in ["ca", "biscuit", "jwt", "audit"] {
        for step in ["published", "window", "activated", "retired", "done"] {
            assert!(
                events
                    .iter()
                    .any(|e| e["kind"] == kind && e["step"] == step && e["node"] == fid),
                "{kind} {step} on node {fid} missing: {events:?}"
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let ((nf, fetch_failed), (nc, call_failed)) = (fetcher.finish().await, caller.finish().await);
    let nb = fetch_failed.len() + call_failed.len();
    eprintln!("follower rotation took {took:?}; {nf} fetches, {nc} calls, {nb} failed");
    assert_eq!(nb, 0, "failures: {fetch_failed:?} {call_failed:?}");
    assert!(
        nf > 20 && nc > 20,
        "too little load: {nf} fetches, {nc} calls"
    );

    // The follower's new keys active, its old ones retired; the leader's untouched.
    let after = bundle(&c).await;
    let lid = c.nodes[leader].node_id();
    for kind in ["x509-ca", "biscuit", "jwt", "audit"] {
        let active = keys_of(&after, fid, kind, "active");
        assert_eq!(active.len(), 1, "{kind}: {:?}", after.keys);
        assert!(
            !before.keys.iter().any(|k| k.key_id == active[0].key_id),
            "{kind} did not change"
        );
        assert_eq!(keys_of(&after, fid, kind, "published").len(), 0, "{kind}");
        let retired = keys_of(&after, fid, kind, "retired");
        assert_eq!(retired.len(), 1, "{kind}");
        assert_eq!(
            retired[0].key_id,
            signing(&before, kind)[0].key_id,
            "{kind}"
        );
        assert_eq!(
            keys_of(&after, lid, kind, "active")[0].key_id,
            keys_of(&before, lid, kind, "active")[0].key_id,
            "{kind}: the leader's key changed"
        );
    }
    let new_ca = keys_of(&after, fid, "x509-ca", "active")[0].clone();

    // The follower presents a certificate from its new CA, not from the old one.
    presents_chain_to(&faddr, fid, &new_ca.public_key)
        .await
        .expect("the follower's certificate chains to its new CA");
    assert!(
        presents_chain_to(&faddr, fid, &old_ca.public_key)
            .await
            .is_err()
    );

    // Its files: the new CA is current; nothing staged or kept (the old key destroyed).
    let keys = c.nodes[f].dir.join("keys");
    wait_until(
        "the follower to destroy its retired keys",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || key_files_clean(&keys).ok(),
    );
    assert_eq!(
        ca_of_keys(&keys).cert_der().as_ref(),
        &new_ca.public_key[..]
    );
    assert_ne!(std::fs::read(keys.join("ca.key")).unwrap(), old_ca_key);

    // A restart: the follower comes back on its new keys.
    tokio::task::block_in_place(|| {
        c.nodes[f].stop();
        c.nodes[f].start();
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = presents_chain_to(&faddr, fid, &new_ca.public_key).await {
        assert!(Instant::now() < deadline, "after restart: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::block_in_place(|| c.wait_replicated(Duration::from_secs(20)));
    let again = bundle(&c).await;
    assert_eq!(
        keys_of(&again, fid, "x509-ca", "active")[0].key_id,
        new_ca.key_id
    );
    assert!(key_files_clean(&keys).is_ok());
    let out = c.cli(&["audit", "verify"]);
    assert!(out.status.success(), "audit verify: {}", show(&out));
}

/// A member that is not the leader, or anyone not a member, cannot make a member stage keys;
/// the refusal is reported to the leader and audited. A rotation of a non-member is refused.
#[test]
fn only_the_leader_makes_a_member_prepare_keys() {
    let c = Cluster::with_voters("follower-prepare-hostile", 3);
    c.wait_replicated(Duration::from_secs(20));
    let leader = c.leader();
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (a, b) = (others[0], others[1]);
    let (aid, bid) = (c.nodes[a].node_id(), c.nodes[b].node_id());
    let profile = c.profile();
    let rt = ringzero_tests::cluster::runtime();
    let prepare = |svid: &Svid| {
        rt.block_on(async {
            pb::raft_client::RaftClient::new(channel(&c.nodes[a].addr, mtls(&profile, svid)))
                .prepare_keys(pb::RaftPayload { data: vec![1, 3] })
                .await
        })
    };
    // Member b, with its own genuine member certificate: a member, not the leader.
    let member_b = Svid::forge(
        &c.node_ca(b),
        &format!("spiffe://{TD}/ringzero/authority/{bid}"),
    );
    let refused = prepare(&member_b).expect_err("a non-leader made a member prepare keys");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("not the leader"), "{refused:?}");
    // The admin's certificate: not a member at all.
    let admin = Svid::of_profile(&profile);
    let refused = prepare(&admin).expect_err("a non-member made a member prepare keys");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // Nothing was staged on a.
    let next = c.nodes[a].dir.join("keys").join("next");
    assert!(
        std::fs::read_dir(&next).map_or(true, |mut d| d.next().is_none()),
        "keys staged on node {aid}"
    );
    // The member's refusal reached the leader's audit log.
    wait_until(
        "the refused PrepareKeys in the audit log",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let out = c.cli(&["audit", "query", "--json", "--decision", "deny"]);
            stdout(&out).contains("PrepareKeys").then_some(())
        },
    );
    // Not a member: refused by the leader before anything is asked of anyone.
    let out = c.cli(&[
        "authority",
        "rotate-keys",
        "--node",
        "9",
        "--propagation",
        "1s",
    ]);
    assert!(!out.status.success(), "rotated a non-member's keys");
    assert!(show(&out).contains("not a member"), "{}", show(&out));
}
