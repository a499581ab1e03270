//! What an auditor's profile keeps trusting, against real authority processes: an export of a
//! log forked after the profile accepted a head is refused offline (`audit verify --file`)
//! naming the first diverging record, exactly as the live check refuses it; and a node removed
//! as compromised loses its audit key, CA and JWKS entries in every profile that refreshes —
//! also one that was offline during the removal — so that nothing it signs verifies afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ring::signature::{Ed25519KeyPair, KeyPair};
use ringzero_policy::audit::{AuditEntry, ExportOptions, Frontier, write_export};
use ringzero_proto::client::{AuthorityClient, Profile};
use ringzero_proto::pb;
use ringzero_tests::cluster::Cluster;
use ringzero_tests::{SoloAuthority, ringzero, run_timeout, show};

/// One real cluster at a time: these tests start processes and wait on them.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what}: {}", show(&out));
    out
}

/// Exit 1 with every `needle` in stderr.
fn fails_with(out: &Output, needles: &[&str], what: &str) {
    assert_eq!(out.status.code(), Some(1), "{what}: {}", show(out));
    let err = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "{what}: no {n:?} in: {}", show(out));
    }
}

/// `ringzero --profile PROFILE ARGS…` in `cwd`.
fn cli_as(cwd: &Path, profile: &Path, args: &[&str]) -> Output {
    let mut cmd = ringzero(cwd);
    cmd.arg("--profile").arg(profile).args(args);
    run_timeout(cmd, Duration::from_secs(60))
}

/// A copy of `from` (0600) at `dir/name`: another verifier, with its own remembered head.
fn copy_profile(from: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(from, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    to
}

fn read_profile(path: &Path) -> Profile {
    Profile::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn remembered_size(profile: &Path) -> u64 {
    let mut p = profile.as_os_str().to_owned();
    p.push(".audit-head");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["size"].as_u64().unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The record lines of an export, by seq.
fn records(export: &Path) -> BTreeMap<u64, serde_json::Value> {
    std::fs::read_to_string(export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "ringzero.audit.record")
        .map(|v| (v["seq"].as_u64().unwrap(), v))
        .collect()
}

// ---------------------------------------------------------------------------------------------

/// `n` allowed calls, each of which adds a record.
fn allowed_calls(a: &SoloAuthority, n: usize) {
    for _ in 0..n {
        ok(a.cli(&["authority", "status"]), "status");
    }
}

#[test]
fn a_forked_log_exported_and_verified_offline_is_refused_naming_the_first_diverging_record() {
    let _g = serial();
    let mut a = SoloAuthority::start("audit-fork-file", "fork.test");
    let root = a.root.path().to_path_buf();
    // The auditor's profile lives outside the data directory, so a restore does not touch its
    // memory (the admin profile inside it is what the attacker restores).
    let auditor = copy_profile(&a.profile, &root, "auditor.profile");
    let export_as = |profile: &Path, name: &str| {
        let out = root.join(name);
        ok(
            cli_as(
                &root,
                profile,
                &["audit", "export", "--out", path_str(&out)],
            ),
            name,
        );
        out
    };
    let verify_as = |profile: &Path, extra: &[&str], file: &Path| {
        let mut args = vec!["audit", "verify"];
        args.extend_from_slice(extra);
        args.extend(["--file", path_str(file)]);
        cli_as(&root, profile, &args)
    };

    // A copy of the data directory; then the log grows, and the auditor accepts it offline.
    allowed_calls(&a, 3);
    let backup = root.join("n1.bak");
    a.restart_with(|dir| {
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(dir)
            .arg(&backup)
            .status()
            .unwrap();
        assert!(st.success());
    });
    allowed_calls(&a, 10);
    let honest = export_as(&auditor, "honest.jsonl");
    let out = ok(verify_as(&auditor, &[], &honest), "the honest export");
    assert!(stdout(&out).contains("verified"), "{}", show(&out));
    let seen = remembered_size(&auditor);

    // The data directory restored from the copy, grown past the seen size without its records.
    let honest_dir = root.join("n1.honest");
    a.restart_with(|dir| {
        std::fs::rename(dir, &honest_dir).unwrap();
        std::fs::rename(&backup, dir).unwrap();
    });
    allowed_calls(&a, 25);
    let fork = export_as(&auditor, "fork.jsonl");
    let (h, f) = (records(&honest), records(&fork));
    let first_diff = (0..seen)
        .find(|s| h.get(s) != f.get(s))
        .expect("the fork differs below the seen size");
    assert!(f.len() as u64 > seen, "the fork grew past the seen size");

    // Validly signed: a verifier that never saw the log accepts it…
    let fresh = copy_profile(&a.profile, &root, "fresh.profile");
    ok(
        verify_as(&fresh, &[], &fork),
        "the fork, to a fresh verifier",
    );
    // …the auditor, which remembers the head it accepted, refuses it, offline as live.
    for extra in [&[][..], &["--no-remember"]] {
        fails_with(
            &verify_as(&auditor, extra, &fork),
            &[
                "fork.jsonl: rollback",
                &format!("the head of {seen} records accepted before"),
                "auditor.profile.audit-head",
                &format!("record {first_diff} is the first that differs"),
            ],
            "the forked export",
        );
    }
    assert_eq!(
        remembered_size(&auditor),
        seen,
        "a refused head was remembered"
    );
    fails_with(
        &cli_as(&root, &auditor, &["audit", "verify"]),
        &["rollback", "does not extend"],
        "the forked live log",
    );
    // A part of the fork that starts after the remembered head cannot be linked to it.
    let late = root.join("late.jsonl");
    let since = (seen + 2).to_string();
    ok(
        cli_as(
            &root,
            &auditor,
            &[
                "audit",
                "export",
                "--since",
                &since,
                "--out",
                path_str(&late),
            ],
        ),
        "export --since",
    );
    fails_with(
        &verify_as(&auditor, &[], &late),
        &[&format!(
            "cannot prove consistency with the remembered head at size {seen}"
        )],
        "a late part",
    );

    // Back to the honest history: a later export verifies; --no-remember leaves the memory.
    a.restart_with(|dir| {
        std::fs::rename(dir, root.join("n1.fork")).unwrap();
        std::fs::rename(&honest_dir, dir).unwrap();
    });
    allowed_calls(&a, 3);
    let later = export_as(&auditor, "later.jsonl");
    let out = ok(
        verify_as(&auditor, &["--no-remember", "--json"], &later),
        "--no-remember",
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["previous_size"].as_u64(), Some(seen), "{v}");
    assert_eq!(remembered_size(&auditor), seen, "--no-remember remembered");
    ok(verify_as(&auditor, &[], &later), "the honest later export");
    let now = remembered_size(&auditor);
    assert!(now > seen, "remembered {now}, not past {seen}");
    ok(
        cli_as(&root, &auditor, &["audit", "verify"]),
        "the honest live log",
    );
}

// ---------------------------------------------------------------------------------------------

/// The bundle as the cluster serves it.
fn get_bundle(c: &Cluster) -> pb::Bundle {
    let p = c.profile();
    let rt = ringzero_tests::cluster::runtime();
    let mut client = AuthorityClient::new(p.credentials().unwrap(), p.authorities.clone());
    rt.block_on(client.call(|mut g| async move { g.get_bundle(pb::GetBundleRequest {}).await }))
        .unwrap()
}

/// The live log's records, re-signed by `key` (pinned as `key_id`) into `out`.
fn forge(records_from: &Path, key: &Ed25519KeyPair, key_id: u64, out: &Path) {
    let entries: Vec<AuditEntry> = records(records_from)
        .into_values()
        .map(|v| {
            let mut o = v.as_object().unwrap().clone();
            o.remove("type");
            o.remove("v");
            serde_json::from_value(serde_json::Value::Object(o)).unwrap()
        })
        .collect();
    assert!(!entries.is_empty());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut data = Vec::new();
    write_export(
        &mut data,
        &Frontier::new(),
        &entries,
        key,
        key_id,
        now,
        &ExportOptions::default(),
    )
    .unwrap();
    std::fs::write(out, data).unwrap();
}

#[test]
fn a_node_removed_as_compromised_is_trusted_by_no_profile_that_refreshes() {
    let _g = serial();
    let mut c = Cluster::with_voters("audit-compromised", 3);
    c.wait_replicated(Duration::from_secs(15));
    let root = c.path().to_path_buf();
    let victim = 1usize;
    let victim_id = c.nodes[victim].node_id();

    // An auditor's profile, refreshed: it pins the three audit keys.
    let auditor = copy_profile(&c.profile, &root, "auditor.profile");
    ok(
        cli_as(&root, &auditor, &["authority", "status"]),
        "auditor refresh",
    );
    let pins = read_profile(&auditor).audit_keys;
    assert_eq!(pins.len(), 3, "{pins:?}");
    assert!(pins.iter().all(|p| p.status != "compromised"), "{pins:?}");

    // Node 2's keys as the cluster publishes them, and its audit key from its data directory.
    let theirs: Vec<pb::BundleKey> = get_bundle(&c)
        .keys
        .into_iter()
        .filter(|k| k.authority == victim_id)
        .collect();
    let mut kinds: Vec<&str> = theirs.iter().map(|k| k.kind.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["audit", "biscuit", "jwt", "x509-ca"], "{theirs:?}");
    let key_of = |kind: &str| theirs.iter().find(|k| k.kind == kind).unwrap().clone();
    let (audit_key, ca_key, jwt_key) = (key_of("audit"), key_of("x509-ca"), key_of("jwt"));
    let dir = c.nodes[victim].dir.clone();
    let stolen =
        Ed25519KeyPair::from_pkcs8(&std::fs::read(dir.join("keys/audit.key")).unwrap()).unwrap();
    let pin = pins.iter().find(|p| p.id == audit_key.key_id).unwrap();
    assert_eq!(pin.public_key, hex::encode(stolen.public_key().as_ref()));
    let ca_der = std::fs::read(dir.join("keys/ca.der")).unwrap();
    assert_eq!(ca_key.public_key, ca_der);

    // What node 2's audit key signs verifies while it is trusted.
    let live = root.join("live.jsonl");
    ok(
        c.cli(&["audit", "export", "--out", path_str(&live)]),
        "export",
    );
    let forged = root.join("forged.jsonl");
    forge(&live, &stolen, audit_key.key_id, &forged);
    let verify_forged = |profile: &Path| {
        cli_as(
            &root,
            profile,
            &[
                "audit",
                "verify",
                "--no-remember",
                "--file",
                path_str(&forged),
            ],
        )
    };
    ok(verify_forged(&auditor), "signed by a trusted node");
    // A second auditor copies the profile now and stays offline during the removal.
    let offline = copy_profile(&auditor, &root, "offline.profile");

    // Node 2 is compromised: it is stopped and removed as such.
    c.nodes[victim].kill9();
    c.wait_writable(Duration::from_secs(20));
    ok(
        c.cli(&[
            "authority",
            "remove",
            &victim_id.to_string(),
            "--compromised",
        ]),
        "remove --compromised",
    );

    // Its keys are published as compromised, every kind of them — not left out.
    let after = get_bundle(&c);
    for k in &theirs {
        let now = after
            .keys
            .iter()
            .find(|a| a.key_id == k.key_id)
            .unwrap_or_else(|| panic!("key {} ({}) left the bundle", k.key_id, k.kind));
        assert_eq!(now.status, "compromised", "{now:?}");
        assert_eq!(now.public_key, k.public_key);
    }

    // Every profile that refreshes (the offline one only now) stops trusting them for good.
    for profile in [&auditor, &offline] {
        let name = profile.file_name().unwrap().to_string_lossy().into_owned();
        ok(cli_as(&root, profile, &["authority", "status"]), &name);
        let p = read_profile(profile);
        let pin = p
            .audit_keys
            .iter()
            .find(|k| k.id == audit_key.key_id)
            .unwrap();
        assert_eq!(pin.status, "compromised", "{name}: {pin:?}");
        assert_eq!(p.audit_keys.len(), 3, "{name}: pins are never dropped");
        let cas = p.bundle_certs().unwrap();
        assert_eq!(cas.len(), 2, "{name}");
        assert!(
            cas.iter().all(|c| c.as_ref() != ca_der),
            "{name}: node 2's CA"
        );
        fails_with(
            &verify_forged(profile),
            &[&format!("audit key {} is compromised", audit_key.key_id)],
            &name,
        );
        // The honest log (heads signed by the remaining nodes) still verifies.
        ok(cli_as(&root, profile, &["audit", "verify"]), &name);
    }

    // The SPIFFE bundle lists only usable keys: none of node 2's.
    let out = ok(
        c.cli(&["bundle", "show", "--format", "jwks"]),
        "bundle show",
    );
    let jwks: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let listed = jwks["keys"].as_array().unwrap();
    let kids: Vec<&str> = listed.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    for k in [&ca_key, &jwt_key] {
        assert!(
            !kids.contains(&k.key_id.to_string().as_str()),
            "{} key {} in {jwks}",
            k.kind,
            k.key_id
        );
    }
    assert_eq!(
        listed.iter().filter(|k| k["use"] == "x509-svid").count(),
        2,
        "{jwks}"
    );
    let out = ok(c.cli(&["bundle", "show"]), "bundle show pem");
    assert_eq!(stdout(&out).matches("BEGIN CERTIFICATE").count(), 2);
}
