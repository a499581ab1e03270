//! Key lifecycle (issue #16 item 4): `authority rotate-keys` under load loses nothing.
//!
//! A real authority and agent; while a workload fetches its SVID from the Workload API in a
//! loop (each fetch validated against the bundle it came with) and an admin client calls the
//! API in a loop with a capability minted at bootstrap, the authority rotates all four of its
//! keys. No fetch fails, no call is refused; afterwards new SVIDs chain to the new CA only, new
//! tokens name the new Biscuit key, the old token still works, the audit log verifies across the
//! change, and all of it survives a restart. Hostile cases: a second rotation while one is in
//! flight is refused; a non-admin is denied and the denial is audited.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use ringzero_policy::TrustDomain;
use ringzero_policy::svid::{TrustBundle, Usage, validate_svid};
use ringzero_proto::pb;
use ringzero_tests::agent::my_uid;
use ringzero_tests::jobs::{add_user, start_node_agent};
use ringzero_tests::*;
use rustls_pki_types::CertificateDer;

const TD: &str = "rot.example.org";

async fn bundle(a: &SoloAuthority) -> pb::Bundle {
    admin_client(a)
        .call(|mut c| async move { c.get_bundle(pb::GetBundleRequest {}).await })
        .await
        .expect("bundle")
}

fn keys_of<'a>(b: &'a pb::Bundle, kind: &str, status: &str) -> Vec<&'a pb::BundleKey> {
    b.keys
        .iter()
        .filter(|k| k.kind == kind && k.status == status)
        .collect()
}

fn rotate(a: &SoloAuthority, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["authority", "rotate-keys", "--json"];
    args.extend_from_slice(extra);
    a.cli(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_of_every_key_under_load_loses_nothing() {
    let a = SoloAuthority::start("keyrot", TD);
    let (_agent, _dir, _log) = start_node_agent(&a, "n1", &[]);
    let out = a.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://{TD}/ns/test/me"),
        "--node",
        "n1",
        "--selector",
        &format!("unix:uid:{}", my_uid()),
    ]);
    assert!(out.status.success(), "entry create: {}", show(&out));
    let socket = a.root.path().join("n1.sock");
    let td = TrustDomain::new(TD).unwrap();
    let fetch = {
        let socket = socket.clone();
        let td = td.clone();
        move || {
            let socket = socket.clone();
            let td = td.clone();
            async move {
                let svids = ringzero_agent::fetch_x509(&socket, Duration::from_secs(5))
                    .await
                    .map_err(|e| e.to_string())?;
                let s = svids.first().ok_or("no SVID")?;
                let b = TrustBundle::new(td, s.bundle.clone()).map_err(|e| e.to_string())?;
                validate_svid(&s.chain, &b, SystemTime::now(), Usage::Client)
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(s.chain.clone())
            }
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fetch().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "no first SVID");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = bundle(&a).await;
    let old_ca = keys_of(&before, "x509-ca", "active")[0].clone();

    // Continuous Workload API fetches and authorized calls (the admin's capability was
    // minted at bootstrap, before the rotation).
    let stop = Arc::new(AtomicBool::new(false));
    let fetcher = ringzero_tests::load::repeat(stop.clone(), "fetch", fetch.clone());
    let caller = ringzero_tests::load::repeat(
        stop.clone(),
        "call",
        ringzero_tests::load::list_entries(admin_client(&a)),
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let out = tokio::task::block_in_place(|| rotate(&a, &["--propagation", "3s"]));
    let took = started.elapsed();
    assert!(out.status.success(), "rotate-keys: {}", show(&out));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    for kind in ["ca", "biscuit", "jwt", "audit"] {
        for step in ["published", "activated", "retired", "done"] {
            assert!(
                events
                    .iter()
                    .any(|e| e["kind"] == kind && e["step"] == step),
                "{kind} {step} missing: {events:?}"
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let ((f, fetch_failed), (c, call_failed)) = (fetcher.finish().await, caller.finish().await);
    let (fb, cb) = (fetch_failed.len(), call_failed.len());
    eprintln!("rotation took {took:?}; {f} fetches ({fb} failed), {c} calls ({cb} failed)");
    assert_eq!(
        (fb, cb),
        (0, 0),
        "failures: {fetch_failed:?} {call_failed:?}"
    );
    assert!(f > 20 && c > 20, "too little load: {f} fetches, {c} calls");

    // Every kind: one new active key, the old one retired and still in the bundle.
    let after = bundle(&a).await;
    for kind in ["x509-ca", "biscuit", "jwt", "audit"] {
        let active = keys_of(&after, kind, "active");
        assert_eq!(active.len(), 1, "{kind}: {:?}", after.keys);
        assert!(
            !before.keys.iter().any(|k| k.key_id == active[0].key_id),
            "{kind} did not change"
        );
        assert_eq!(keys_of(&after, kind, "retired").len(), 1, "{kind}");
    }
    let new_ca = keys_of(&after, "x509-ca", "active")[0].clone();
    assert_ne!(new_ca.public_key, old_ca.public_key);

    // A new SVID (a new entry) chains to the new CA alone, not to the old one.
    let out = a.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://{TD}/ns/test/after"),
        "--node",
        "n1",
        "--selector",
        &format!("unix:uid:{}", my_uid()),
    ]);
    assert!(out.status.success(), "entry create: {}", show(&out));
    let only = |ca: &pb::BundleKey| {
        TrustBundle::new(
            td.clone(),
            vec![CertificateDer::from(ca.public_key.clone())],
        )
        .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let svid = loop {
        let svids = ringzero_agent::fetch_x509(&socket, Duration::from_secs(5))
            .await
            .unwrap();
        if let Some(s) = svids
            .into_iter()
            .find(|s| s.spiffe_id.to_string().ends_with("/after"))
        {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no SVID for the new entry"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    validate_svid(
        &svid.chain,
        &only(&new_ca),
        SystemTime::now(),
        Usage::Client,
    )
    .expect("a new SVID chains to the new CA");
    assert!(
        validate_svid(
            &svid.chain,
            &only(&old_ca),
            SystemTime::now(),
            Usage::Client
        )
        .is_err()
    );

    // A new token names the new Biscuit key; the token minted before still works.
    let new_biscuit = keys_of(&after, "biscuit", "active")[0].key_id;
    let admin_id = format!("spiffe://{TD}/user/admin");
    let out = a.cli(&[
        "token",
        "mint",
        "--for",
        &admin_id,
        "--operation",
        "logs:read",
    ]);
    assert!(out.status.success(), "token mint: {}", show(&out));
    let token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let out = a.cli(&["token", "inspect", "--json", &token]);
    assert!(out.status.success(), "token inspect: {}", show(&out));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        view["root_key_id"],
        serde_json::json!(new_biscuit),
        "{view}"
    );
    let out = a.cli(&["entry", "list"]);
    assert!(out.status.success(), "old token: {}", show(&out));

    // The audit log verifies across the audit key change.
    let out = a.cli(&["audit", "verify"]);
    assert!(out.status.success(), "audit verify: {}", show(&out));

    // A restart comes back with the new keys (nothing staged, nothing half-promoted).
    let keys_dir = a.root.path().join("n1").join("keys");
    assert!(!keys_dir.join("old").join("ca.key").exists());
    assert!(!keys_dir.join("next").join("ca.key").exists());
    let mut a = a;
    a.restart_with(|_| {});
    let out = a.cli(&["entry", "list"]);
    assert!(out.status.success(), "after restart: {}", show(&out));
    let out = a.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "audit verify after restart: {}",
        show(&out)
    );
    let again = bundle(&a).await;
    assert_eq!(
        keys_of(&again, "x509-ca", "active")[0].key_id,
        new_ca.key_id
    );
}

#[test]
fn a_second_rotation_in_flight_and_a_non_admin_are_refused() {
    let a = SoloAuthority::start("keyrot-hostile", TD);
    // A non-admin: denied, and the denial is in the audit log.
    let dev = add_user(&a, "dev", "developer", Some("default"));
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile")
        .arg(&dev)
        .args(["authority", "rotate-keys", "--propagation", "1s"]);
    let out = run_timeout(cmd, Duration::from_secs(30));
    assert!(!out.status.success(), "a developer rotated keys");
    let denied = audit(&a, &["--decision", "deny", "--operation", "cluster:admin"]);
    assert!(!denied.is_empty(), "denial not audited");

    // A rotation in flight refuses a second one.
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile").arg(&a.profile).args([
        "authority",
        "rotate-keys",
        "--kind",
        "jwt",
        "--propagation",
        "5s",
    ]);
    let mut first = Proc::spawn("rotate-1", cmd, &a.root.path().join("rotate-1.log"));
    // The first holds the node's rotation lock once its stream is open (it says so).
    wait_until(
        "the first rotation to be in flight",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || first.log().contains("rotating keys").then_some(()),
    );
    let second = rotate(&a, &["--kind", "audit", "--propagation", "1s"]);
    assert!(!second.status.success(), "a second rotation ran in flight");
    assert!(
        show(&second).contains("already in flight"),
        "{}",
        show(&second)
    );
    let status = first.child_mut().wait().unwrap();
    assert!(status.success(), "first rotation: {}", first.log());
    let out = a.cli(&["audit", "verify"]);
    assert!(out.status.success(), "audit verify: {}", show(&out));
}
