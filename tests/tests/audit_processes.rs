//! `ringzero audit …` against a real authority process: denials from the gating paths are
//! found by `audit query --decision deny`; the live log verifies and is remembered; an export
//! with an edited, dropped, reordered or truncated record is refused naming the record, and so
//! is one re-signed with a key the profile does not pin; a live log restored from a backup (an
//! older head after a newer one was seen, then a fork) is refused as a rollback; sealing keeps
//! the chain verifiable; no token, key or join secret appears in the log; a profile without
//! audit keys learns them on its next call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;
use ringzero_policy::audit::{AuditEntry, ExportOptions, Frontier, write_export};
use ringzero_proto::client::{AuthorityClient, Profile};
use ringzero_proto::pb;
use ringzero_tests::{SoloAuthority, cp_a, ringzero, run_timeout_stdin, show};

const TD: &str = "audit.test";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what}: {}", show(&out));
    out
}

/// Exit 1 with every `needle` in stderr.
fn fails_with(out: &Output, needles: &[&str], what: &str) {
    assert_eq!(out.status.code(), Some(1), "{what}: {}", show(out));
    let err = stderr(out);
    for n in needles {
        assert!(err.contains(n), "{what}: no {n:?} in: {}", show(out));
    }
}

fn profile(a: &SoloAuthority) -> Profile {
    Profile::from_toml(&std::fs::read_to_string(&a.profile).unwrap()).unwrap()
}

fn admin_id() -> String {
    format!("spiffe://{TD}/user/admin")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn remembered(a: &SoloAuthority) -> PathBuf {
    let mut p = a.profile.as_os_str().to_owned();
    p.push(".audit-head");
    PathBuf::from(p)
}

fn remembered_size(a: &SoloAuthority) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(remembered(a)).unwrap()).unwrap();
    v["size"].as_u64().unwrap()
}

/// `ringzero --profile P audit verify --file F…`.
fn verify_files(a: &SoloAuthority, files: &[&Path]) -> Output {
    let mut args = vec!["audit".to_owned(), "verify".to_owned()];
    for f in files {
        args.push("--file".into());
        args.push(f.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    a.cli(&args)
}

/// Attenuates the admin token with `args` (offline).
fn attenuate(a: &SoloAuthority, args: &[&str]) -> String {
    let mut cmd = ringzero(a.root.path());
    cmd.args(["token", "attenuate", "-"]).args(args);
    let token = profile(a).token;
    let out = run_timeout_stdin(&mut cmd, Some(token.as_bytes()), Duration::from_secs(30));
    stdout(&ok(out, "attenuate")).trim().to_owned()
}

/// A few allowed calls, each of which adds a record.
fn allowed_calls(a: &SoloAuthority, n: usize) {
    for _ in 0..n {
        ok(a.cli(&["authority", "status"]), "status");
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn denials_are_found_the_live_log_verifies_and_no_secret_is_recorded() {
    let a = SoloAuthority::start("audit-deny", TD);
    let p = profile(&a);
    let expiring = attenuate(&a, &["--ttl", "1s"]);
    let stolen = attenuate(&a, &["--bind-peer", &format!("spiffe://{TD}/user/mallory")]);
    let window = ringzero_authority::DENIAL_WINDOW + Duration::from_millis(500);

    // Denials from one peer within a window are folded into one record: one per window here.
    // 1. No capability at all (the CLI always sends one: through the library client).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut creds = p.credentials().unwrap();
    creds.token = None;
    let mut client = AuthorityClient::new(creds, vec![a.addr.clone()]);
    let r = rt.block_on(client.call(|mut g| async move { g.status(pb::StatusRequest {}).await }));
    let e = r.expect_err("a call without a capability");
    assert_eq!(e.code(), Some(tonic::Code::Unauthenticated), "{e}");
    let mut last_denial = Instant::now();

    // Allowed calls meanwhile, among them a join token whose secret must never be recorded.
    let out = ok(a.cli(&["node", "token", "--name", "n7"]), "node token");
    let join_token = stdout(&out).lines().last().unwrap().trim().to_owned();
    let join_secret = join_token.split('.').nth(1).unwrap().to_owned();
    allowed_calls(&a, 3);

    // 2. A capability bound to another peer. 3. An expired one. 4. Garbage.
    for (token, what) in [
        (stolen.as_str(), "bound to another peer"),
        (expiring.as_str(), "expired"),
        ("garbage", "garbage"),
    ] {
        std::thread::sleep((last_denial + window).saturating_duration_since(Instant::now()));
        let out = a.cli(&["--token", token, "authority", "status"]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", show(&out));
        last_denial = Instant::now();
    }

    // Every denial is found through the deny index.
    let out = ok(
        a.cli(&["audit", "query", "--decision", "deny", "--json"]),
        "query deny",
    );
    let denials: Vec<AuditEntry> = stdout(&out)
        .lines()
        .map(|l| AuditEntry::from_leaf_bytes(l.as_bytes()).unwrap())
        .collect();
    for cause in ["no capability", "peer_mismatch", "expired"] {
        assert!(
            denials
                .iter()
                .any(|d| d.actor == admin_id()
                    && d.reason.as_deref().is_some_and(|r| r.contains(cause))),
            "no denial naming {cause:?}: {denials:#?}"
        );
    }
    assert!(denials.len() >= 4, "{denials:#?}");
    let table = ok(a.cli(&["audit", "query", "--decision", "deny"]), "table");
    let lines: Vec<String> = stdout(&table).lines().map(str::to_owned).collect();
    assert!(
        lines[0].starts_with("SEQ")
            && lines[0].contains("DECISION")
            && lines[0].ends_with("REASON"),
        "{lines:#?}"
    );
    assert_eq!(lines.len(), denials.len() + 1, "{lines:#?}");
    assert!(
        lines[1..].iter().all(|l| l.contains(" deny ")),
        "{lines:#?}"
    );
    // Filters combine: the admin's allowed calls of the last 10 minutes, at most 3.
    let out = ok(
        a.cli(&[
            "audit",
            "query",
            "--actor",
            &admin_id(),
            "--decision",
            "allow",
            "--since",
            "10m",
            "--limit",
            "3",
            "--json",
        ]),
        "query allow",
    );
    let allowed: Vec<AuditEntry> = stdout(&out)
        .lines()
        .map(|l| AuditEntry::from_leaf_bytes(l.as_bytes()).unwrap())
        .collect();
    assert_eq!(allowed.len(), 3, "{allowed:#?}");
    assert!(allowed.windows(2).all(|w| w[0].seq < w[1].seq));
    let out = ok(
        a.cli(&[
            "audit",
            "query",
            "--since",
            "2000-01-01T00:00:00Z",
            "--until",
            "1h",
        ]),
        "query long ago",
    );
    assert_eq!(stdout(&out).lines().count(), 1, "{}", show(&out));

    // The live log verifies; the second run extends the remembered head.
    let out = ok(a.cli(&["audit", "verify"]), "verify");
    assert!(stdout(&out).contains("verified"), "{}", show(&out));
    assert_eq!(mode(&remembered(&a)), 0o600);
    let first = remembered_size(&a);
    let out = ok(a.cli(&["audit", "verify", "--json"]), "verify again");
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["previous_size"].as_u64(), Some(first), "{v}");
    assert!(v["size"].as_u64().unwrap() > first, "{v}");
    assert_eq!(v["records_verified"], v["size"], "{v}");

    // Prove a denial's inclusion.
    let seq = denials[0].seq.to_string();
    let out = ok(a.cli(&["audit", "prove", &seq]), "prove");
    let text = stdout(&out);
    assert!(text.contains("included in tree of size"), "{text}");
    assert!(text.contains("decision    deny"), "{text}");
    let out = a.cli(&["audit", "prove", "99999999"]);
    fails_with(&out, &["not in the log"], "prove beyond the log");

    // Tail: the header and at least the last 5 records.
    let out = ok(a.cli(&["audit", "tail", "-n", "5"]), "tail");
    let text = stdout(&out);
    assert!(text.starts_with("SEQ"), "{text}");
    assert!(text.lines().count() >= 6, "{text}");

    // No secret in any record.
    let export = a.root.path().join("all.jsonl");
    ok(
        a.cli(&["audit", "export", "--out", export.to_str().unwrap()]),
        "export",
    );
    assert_eq!(mode(&export), 0o600);
    ok(verify_files(&a, &[&export]), "verify the export");
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(
        text.contains("\"decision\":\"deny\""),
        "the export has no denial"
    );
    let key_body: Vec<&str> = p
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    assert!(!key_body.is_empty());
    let mut secrets = vec![
        ("the admin token", p.token.clone()),
        (
            "a slice of the admin token",
            p.token[p.token.len() / 2..][..40].to_owned(),
        ),
        ("an attenuated token", expiring.clone()),
        ("the bound token", stolen.clone()),
        ("the join token", join_token.clone()),
        ("the join secret", join_secret.clone()),
    ];
    for l in key_body {
        secrets.push(("the profile key", l.to_owned()));
    }
    for (what, s) in secrets {
        assert!(!text.contains(&s), "{what} is in the audit export");
    }
}

// ---------------------------------------------------------------------------------------------

/// The export's lines, and the index of the line of record `seq`.
fn record_line(lines: &[String], seq: u64) -> usize {
    lines
        .iter()
        .position(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["type"] == "ringzero.audit.record" && v["seq"].as_u64() == Some(seq)
        })
        .unwrap_or_else(|| panic!("no record {seq}"))
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn fresh_key() -> Ed25519KeyPair {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

#[test]
fn altered_dropped_reordered_truncated_and_foreign_signed_exports_are_named() {
    let a = SoloAuthority::start("audit-tamper", TD);
    allowed_calls(&a, 8);
    let export = a.root.path().join("good.jsonl");
    ok(
        a.cli(&["audit", "export", "--out", export.to_str().unwrap()]),
        "export",
    );
    ok(verify_files(&a, &[&export]), "the untouched export");
    let lines: Vec<String> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let size = lines.len() as u64 - 1;
    assert!(size >= 10, "{size} records");
    let k = 5u64;
    let at = record_line(&lines, k);
    let bad = a.root.path().join("bad.jsonl");

    // An edited field.
    let mut edited = lines.clone();
    let mut v: serde_json::Value = serde_json::from_str(&edited[at]).unwrap();
    v["resource"] = "ns/somewhere-else".into();
    edited[at] = v.to_string();
    write_lines(&bad, &edited);
    fails_with(
        &verify_files(&a, &[&bad]),
        &[&format!("record {k} was altered")],
        "edit",
    );

    // A deleted line.
    let mut dropped = lines.clone();
    dropped.remove(at);
    write_lines(&bad, &dropped);
    fails_with(
        &verify_files(&a, &[&bad]),
        &[&format!("record {k} was dropped")],
        "delete",
    );

    // Two records swapped.
    let mut swapped = lines.clone();
    swapped.swap(at, at + 1);
    write_lines(&bad, &swapped);
    fails_with(
        &verify_files(&a, &[&bad]),
        &[&format!("record {k} is out of order")],
        "swap",
    );

    // Records cut before the signed head, and the file cut short.
    let mut cut = lines[..at].to_vec();
    cut.push(lines.last().unwrap().clone());
    write_lines(&bad, &cut);
    fails_with(
        &verify_files(&a, &[&bad]),
        &[&format!("covers {size} records but only {k} precede it")],
        "truncated before the head",
    );
    write_lines(&bad, &lines[..at]);
    fails_with(&verify_files(&a, &[&bad]), &["no tree head"], "cut short");

    // Re-signed with a key the profile does not pin, under the pinned key's id and another.
    let records: Vec<AuditEntry> = lines
        .iter()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut o = v.as_object()?.clone();
            if o.remove("type")? != "ringzero.audit.record" {
                return None;
            }
            o.remove("v");
            Some(serde_json::from_value(serde_json::Value::Object(o)).unwrap())
        })
        .collect();
    assert_eq!(records.len() as u64, size);
    let pinned_id = profile(&a).audit_keys[0].id;
    let forger = fresh_key();
    for (key_id, needle) in [
        (
            pinned_id,
            format!("bad tree-head signature (key {pinned_id})"),
        ),
        (4242, "unknown audit key 4242".to_owned()),
    ] {
        let mut out = Vec::new();
        write_export(
            &mut out,
            &Frontier::new(),
            &records,
            &forger,
            key_id,
            1_800_000_000_000,
            &ExportOptions::default(),
        )
        .unwrap();
        std::fs::write(&bad, out).unwrap();
        fails_with(&verify_files(&a, &[&bad]), &[&needle], "re-signed");
    }

    // A part of the log exports and verifies on its own (noting where it starts).
    let part = a.root.path().join("part.jsonl");
    ok(
        a.cli(&[
            "audit",
            "export",
            "--since",
            "4",
            "--out",
            part.to_str().unwrap(),
        ]),
        "export --since",
    );
    let out = ok(verify_files(&a, &[&part]), "the partial export");
    assert!(
        stderr(&out).contains("starts at record 4"),
        "{}",
        show(&out)
    );
    // An existing file is not replaced without --force.
    let out = a.cli(&["audit", "export", "--out", part.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

// ---------------------------------------------------------------------------------------------

#[test]
fn a_live_log_restored_from_a_backup_is_a_rollback() {
    let mut a = SoloAuthority::start("audit-rollback", TD);
    ok(a.cli(&["audit", "verify"]), "first verify");

    // A backup of the node's data, then the log grows and is verified (and remembered).
    let backup = a.root.path().join("n1.bak");
    a.restart_with(|dir| cp_a(dir, &backup));
    allowed_calls(&a, 20);
    ok(a.cli(&["audit", "verify"]), "verify after growth");
    let seen = remembered_size(&a);

    // A hand-made remembered head beyond the log: the log looks rolled back.
    let later = std::fs::read_to_string(remembered(&a)).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&later).unwrap();
    v["size"] = (seen + 1000).into();
    // The digest of the records is of the real size: a hand-made head goes without one.
    v.as_object_mut().unwrap().remove("digest");
    std::fs::write(remembered(&a), v.to_string()).unwrap();
    fails_with(
        &a.cli(&["audit", "verify"]),
        &["rollback", &format!("a head of {} records", seen + 1000)],
        "hand-made later head",
    );
    std::fs::write(remembered(&a), &later).unwrap();

    // The node restored from the backup: an older head after a newer one was seen.
    // (The admin profile lives in the data directory: the verifier keeps its memory.)
    let memory = remembered(&a);
    a.restart_with(|dir| {
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::rename(&backup, dir).unwrap();
        std::fs::write(&memory, &later).unwrap();
    });
    fails_with(
        &a.cli(&["audit", "verify"]),
        &[
            "rollback",
            &format!("a head of {seen} records was accepted before"),
        ],
        "restored backup",
    );
    // It grows past the seen size with other records: a fork, caught by the consistency proof.
    allowed_calls(&a, 25);
    fails_with(
        &a.cli(&["audit", "verify"]),
        &[
            "rollback",
            "does not extend",
            &format!("the tree of {seen} records"),
        ],
        "forked log",
    );
    assert_eq!(remembered_size(&a), seen, "a refused head was remembered");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn sealed_segments_and_the_live_log_verify_as_a_chain() {
    let a = SoloAuthority::start("audit-seal", TD);
    allowed_calls(&a, 5);

    // A profile written before audit keys existed learns them on its next authenticated call.
    let mut bare = profile(&a);
    let pins = std::mem::take(&mut bare.audit_keys);
    assert!(!pins.is_empty(), "bootstrap pins the audit key");
    let bare_path = a.root.path().join("bare.profile");
    std::fs::write(&bare_path, bare.to_toml().unwrap()).unwrap();
    std::fs::set_permissions(&bare_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile")
        .arg(&bare_path)
        .args(["authority", "status"]);
    ok(
        ringzero_tests::run_timeout(cmd, Duration::from_secs(60)),
        "status with the bare profile",
    );
    let learned = Profile::from_toml(&std::fs::read_to_string(&bare_path).unwrap()).unwrap();
    assert_eq!(learned.audit_keys, pins);

    ok(a.cli(&["audit", "verify"]), "verify before sealing");
    let seen = remembered_size(&a);
    allowed_calls(&a, 5);

    // Seal past the remembered head: the next live verify links them with a proof.
    let up_to = seen + 3;
    let seg1 = a.root.path().join("seg-1.jsonl");
    let out = ok(
        a.cli(&[
            "audit",
            "seal",
            "--out",
            seg1.to_str().unwrap(),
            "--up-to",
            &up_to.to_string(),
        ]),
        "seal",
    );
    assert!(
        stdout(&out).contains(&format!("sealed records 0..{up_to}")),
        "{}",
        show(&out)
    );
    assert_eq!(mode(&seg1), 0o600);
    let out = ok(
        a.cli(&["audit", "verify", "--json"]),
        "live verify after the seal",
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["first_seq"].as_u64(), Some(up_to), "{v}");
    fails_with(
        &a.cli(&["audit", "prove", "1"]),
        &["sealed"],
        "prove a sealed record",
    );
    let out = a.cli(&["audit", "seal", "--out", "x.jsonl", "--up-to", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));

    // The chain: the segment, then an export of the live log.
    let live = a.root.path().join("live.jsonl");
    ok(
        a.cli(&["audit", "export", "--out", live.to_str().unwrap()]),
        "export live",
    );
    let out = ok(verify_files(&a, &[&seg1, &live]), "segment + live");
    assert!(
        stdout(&out).contains("seg-1.jsonl: records 0.."),
        "{}",
        show(&out)
    );
    fails_with(
        &verify_files(&a, &[&live, &seg1]),
        &["seg-1.jsonl: ends at record", "oldest first"],
        "wrong order",
    );

    // A second seal with the default point (fewer than 1000 records: all of them).
    let seg2 = a.root.path().join("seg-2.jsonl");
    ok(
        a.cli(&["audit", "seal", "--out", seg2.to_str().unwrap()]),
        "seal all",
    );
    ok(
        a.cli(&["audit", "verify"]),
        "live verify after the second seal",
    );
    let live2 = a.root.path().join("live-2.jsonl");
    ok(
        a.cli(&["audit", "export", "--out", live2.to_str().unwrap()]),
        "export live 2",
    );
    ok(
        verify_files(&a, &[&seg1, &seg2, &live2]),
        "two segments + live",
    );
    fails_with(
        &verify_files(&a, &[&seg1, &live2]),
        &["are missing"],
        "a segment left out",
    );
    ok(a.cli(&["audit", "tail", "-n", "3"]), "tail after sealing");
}
