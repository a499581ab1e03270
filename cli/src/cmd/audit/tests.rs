#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use clap::Parser;
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;
use ringzero_policy::audit::{
    AuditEntry, Decision, ExportOptions, Frontier, public_key_of, write_export,
};
use ringzero_proto::client::AuditKeyPin;

use super::args::{AuditTime, parse_audit_time};
use super::files::verify_files;
use super::memory::{Remembered, load_remembered, remembered_path, save_remembered};
use super::review::{resolve, row, truncate};
use super::*;
use crate::cli::{Cli, Command};
use crate::cmd::session::render_table;

fn key() -> Ed25519KeyPair {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

fn entry(seq: u64) -> AuditEntry {
    AuditEntry {
        seq,
        time_ms: 1_800_000_000_000 + seq,
        log_index: seq + 3,
        authority: 1,
        actor: format!("spiffe://example.org/user/u{}", seq % 3),
        revocation_ids: vec!["ab".repeat(16)],
        operation: "entry:write".into(),
        resource: format!("ns/default/w{seq}"),
        decision: if seq.is_multiple_of(5) {
            Decision::Deny
        } else {
            Decision::Allow
        },
        reason: (seq.is_multiple_of(5)).then(|| "expired".to_owned()),
        request_id: format!("r-{seq}"),
        outcome: "done".into(),
        details: vec![],
    }
}

/// Exports of records `0..n`, cut at the given points: one file per part (segments after the
/// first), all signed by `key` as key 7.
fn chain(dir: &Path, key: &Ed25519KeyPair, cuts: &[u64], n: u64) -> Vec<PathBuf> {
    let records: Vec<AuditEntry> = (0..n).map(entry).collect();
    let mut frontier = Frontier::new();
    let mut files = Vec::new();
    let mut start = 0u64;
    let opts = ExportOptions {
        checkpoint_every: 16,
        leaf_hashes: true,
    };
    for (i, end) in cuts.iter().copied().chain(std::iter::once(n)).enumerate() {
        let mut out = Vec::new();
        let part = &records[start as usize..end as usize];
        write_export(&mut out, &frontier, part, key, 7, 1_800_000_100_000, &opts).unwrap();
        for e in part {
            frontier.push(e.leaf_hash());
        }
        let path = dir.join(format!("part-{i}.jsonl"));
        std::fs::write(&path, out).unwrap();
        files.push(path);
        start = end;
    }
    files
}

fn keys_of(key: &Ed25519KeyPair) -> AuditKeys {
    AuditKeys::new().with(7, public_key_of(key), KeyStatus::Active)
}

fn message(f: Failure) -> (u8, String) {
    (f.code, format!("{:#}", f.error))
}

#[test]
fn a_chain_of_segments_verifies_and_a_gap_or_an_edit_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let files = chain(dir.path(), &k, &[40, 70], 100);
    let s = verify_files(&files, &keys_of(&k), None).unwrap().summary;
    assert_eq!((s.first_seq, s.size, s.records_verified), (0, 100, 100));
    assert_eq!(s.files.len(), 3);
    assert_eq!((s.files[1].first_seq, s.files[1].size), (40, 70));

    // The middle segment left out: the chain has a hole.
    let (code, m) = message(
        verify_files(&[files[0].clone(), files[2].clone()], &keys_of(&k), None).unwrap_err(),
    );
    assert_eq!(code, 1);
    assert!(m.contains("records 40..70 are missing"), "{m}");

    // An edited record in the last file is named.
    let text = std::fs::read_to_string(&files[2]).unwrap();
    let edited = text.replace("\"ns/default/w83\"", "\"ns/default/w83x\"");
    assert_ne!(text, edited);
    std::fs::write(&files[2], edited).unwrap();
    let (code, m) = message(verify_files(&files, &keys_of(&k), None).unwrap_err());
    assert_eq!(code, 1);
    assert!(
        m.contains("part-2.jsonl") && m.contains("record 83 was altered"),
        "{m}"
    );
}

#[test]
fn a_chain_signed_by_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (k, other) = (key(), key());
    let files = chain(dir.path(), &other, &[], 20);
    let (code, m) = message(verify_files(&files, &keys_of(&k), None).unwrap_err());
    assert_eq!(code, 1);
    assert!(m.contains("bad tree-head signature"), "{m}");
    let (_, m) = message(verify_files(&files, &AuditKeys::new(), None).unwrap_err());
    assert!(m.contains("unknown audit key 7"), "{m}");
}

#[test]
fn pinned_keys_follow_the_pin_status() {
    let k = key();
    let public = hex::encode(public_key_of(&k));
    let pin = |id, status: &str, retired_ms| AuditKeyPin {
        id,
        public_key: public.clone(),
        status: status.into(),
        retired_ms,
    };
    let mut profile = Profile {
        trust_domain: "example.org".into(),
        authorities: vec![],
        bundle_pem: String::new(),
        svid_pem: String::new(),
        key_pem: String::new(),
        token: String::new(),
        audit_keys: vec![],
        compromised_keys: vec![],
    };
    let path = Path::new("p.profile");
    assert_eq!(pinned_keys(&profile, path).unwrap_err().code, 1);
    profile.audit_keys = vec![
        pin(1, "active", None),
        pin(2, "published", None),
        pin(3, "retired", Some(5)),
        pin(4, "retired", None),
        pin(5, "compromised", None),
        pin(6, "lost", None),
        AuditKeyPin {
            id: 9,
            public_key: "zz".into(),
            status: "active".into(),
            retired_ms: None,
        },
    ];
    let keys = pinned_keys(&profile, path).unwrap();
    let status = |id| keys.get(id).map(|k| k.status);
    assert_eq!(status(1), Some(KeyStatus::Active));
    assert_eq!(status(2), Some(KeyStatus::Active));
    assert_eq!(status(3), Some(KeyStatus::Retired { since_ms: 5 }));
    assert_eq!(status(4), Some(KeyStatus::Retired { since_ms: u64::MAX }));
    assert_eq!(status(5), Some(KeyStatus::Compromised));
    assert_eq!(status(6), Some(KeyStatus::Compromised));
    assert_eq!(status(9), None);
}

#[test]
fn the_remembered_head_round_trips_beside_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("admin.profile");
    let file = remembered_path(&profile);
    assert_eq!(file, dir.path().join("admin.profile.audit-head"));
    assert_eq!(load_remembered(&file).unwrap(), None);
    let k = key();
    let sth = SignedTreeHead::sign(
        &k,
        TreeHead {
            size: 12,
            root: [9; 32],
            time_ms: 1_800_000_000_000,
            key_id: 7,
        },
    );
    save_remembered(&file, &sth, None).unwrap();
    assert_eq!(
        load_remembered(&file).unwrap().map(|r| r.head),
        Some(sth.head)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    std::fs::write(&file, "{\"size\":1}").unwrap();
    let (code, m) = message(load_remembered(&file).unwrap_err());
    assert_eq!(code, 1);
    assert!(m.contains("unreadable"), "{m}");
}

/// One export file of `records`, continuing the tree of `prior`, signed as key 7.
fn export_file(
    dir: &Path,
    name: &str,
    key: &Ed25519KeyPair,
    prior: &[AuditEntry],
    records: &[AuditEntry],
) -> PathBuf {
    let mut frontier = Frontier::new();
    prior.iter().for_each(|r| frontier.push(r.leaf_hash()));
    let mut out = Vec::new();
    let opts = ExportOptions {
        checkpoint_every: 16,
        leaf_hashes: true,
    };
    write_export(
        &mut out,
        &frontier,
        records,
        key,
        7,
        1_800_000_100_000,
        &opts,
    )
    .unwrap();
    let path = dir.join(name);
    std::fs::write(&path, out).unwrap();
    path
}

/// Records `0..n`, another history's from `fork_at` on.
fn history(n: u64, fork_at: u64) -> Vec<AuditEntry> {
    (0..n)
        .map(|s| {
            let mut e = entry(s);
            if s >= fork_at {
                e.request_id = format!("forked-{s}");
            }
            e
        })
        .collect()
}

#[test]
fn files_are_held_to_the_remembered_head_and_a_fork_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let keys = keys_of(&k);
    let memory = dir.path().join("p.profile.audit-head");
    let honest = history(45, u64::MAX);
    let first = export_file(dir.path(), "first.jsonl", &k, &[], &honest[..30]);
    let accepted = verify_files(&[first], &keys, None).unwrap();
    save_remembered(&memory, &accepted.head, accepted.digest.as_ref()).unwrap();
    let remembered = load_remembered(&memory).unwrap().unwrap();
    let seen = &remembered;
    assert_eq!(seen.head.size, 30);
    assert!(
        seen.digest.is_some(),
        "an export from record 0 leaves a digest"
    );
    let bare = Remembered {
        digest: None,
        ..remembered.clone()
    };
    let seen = Some((seen, memory.as_path()));

    // The data directory restored from its copy at 20 and grown to 39 without what was seen.
    let fork = export_file(dir.path(), "fork.jsonl", &k, &[], &history(39, 20));
    verify_files(std::slice::from_ref(&fork), &keys, None).unwrap();
    let (code, m) = message(verify_files(std::slice::from_ref(&fork), &keys, seen).unwrap_err());
    assert_eq!(code, 1);
    for needle in [
        "fork.jsonl: rollback",
        "forked or rewritten after the head of 30 records",
        "p.profile.audit-head",
        "record 20 is the first that differs",
    ] {
        assert!(m.contains(needle), "{needle:?} in {m}");
    }
    // A remembered head without a digest still refuses it, without naming the record.
    let (code, m) = message(
        verify_files(std::slice::from_ref(&fork), &keys, Some((&bare, &memory))).unwrap_err(),
    );
    assert_eq!(code, 1);
    assert!(m.contains("keeps no record digest"), "{m}");

    // An honest, longer export verifies and extends it; a partial one keeps the digest.
    let longer = export_file(dir.path(), "longer.jsonl", &k, &[], &honest);
    let c = verify_files(&[longer], &keys, seen).unwrap();
    assert_eq!(c.summary.previous_size, Some(30));
    assert_eq!(c.digest.as_ref().map(|d| d.size()), Some(45));
    let partial = export_file(
        dir.path(),
        "partial.jsonl",
        &k,
        &honest[..12],
        &honest[12..],
    );
    let c = verify_files(&[partial], &keys, seen).unwrap();
    assert_eq!(c.digest.as_ref().map(|d| d.root()), Some(c.head.head.root));

    // An export starting after the remembered head cannot be linked to it…
    let late = export_file(dir.path(), "late.jsonl", &k, &honest[..35], &honest[35..]);
    let (code, m) = message(verify_files(&[late], &keys, seen).unwrap_err());
    assert_eq!(code, 1);
    assert!(
        m.contains("cannot prove consistency with the remembered head at size 30"),
        "{m}"
    );
    // …and one ending before it cannot show the log still extends it.
    let short = export_file(dir.path(), "short.jsonl", &k, &[], &honest[..20]);
    let (code, m) = message(verify_files(&[short], &keys, seen).unwrap_err());
    assert_eq!(code, 1);
    assert!(
        m.contains("the files end at record 20, but a head of 30"),
        "{m}"
    );
}

#[test]
fn a_remembered_digest_round_trips_and_a_corrupt_one_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.profile.audit-head");
    let k = key();
    let records = history(1500, u64::MAX);
    let path = export_file(dir.path(), "all.jsonl", &k, &[], &records);
    let c = verify_files(&[path], &keys_of(&k), None).unwrap();
    let digest = c.digest.clone().unwrap();
    assert_eq!(digest.level(), 1, "1500 records: blocks of two");
    save_remembered(&file, &c.head, Some(&digest)).unwrap();
    let back = load_remembered(&file).unwrap().unwrap();
    assert_eq!(back.digest, Some(digest));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.len() < 64 * 1024, "{} bytes", text.len());

    // A digest of another tree is not saved (it would blame the wrong records).
    let other = history(1500, 3);
    let mut wrong = ringzero_policy::audit::LeafDigest::new();
    other.iter().for_each(|r| wrong.push(r.leaf_hash()));
    save_remembered(&file, &c.head, Some(&wrong)).unwrap();
    assert_eq!(load_remembered(&file).unwrap().unwrap().digest, None);

    // Edited on disk: refused as unreadable, not silently ignored.
    save_remembered(&file, &c.head, c.digest.as_ref()).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let blocks = v["digest"]["blocks"].as_str().unwrap().to_owned();
    v["digest"]["blocks"] = format!("AAAA{}", &blocks[4..]).into();
    std::fs::write(&file, v.to_string()).unwrap();
    let (code, m) = message(load_remembered(&file).unwrap_err());
    assert_eq!(code, 1);
    assert!(m.contains("does not hash to the remembered root"), "{m}");
}

#[test]
fn seal_keeps_the_last_thousand_records_live() {
    assert_eq!(default_seal_point(0), 0);
    assert_eq!(default_seal_point(999), 999);
    assert_eq!(default_seal_point(1000), 1000);
    assert_eq!(default_seal_point(1001), 1);
    assert_eq!(default_seal_point(250_000), 249_000);
}

#[test]
fn times_are_rfc3339_or_durations_ago() {
    assert_eq!(
        parse_audit_time("2027-01-15T08:00:00Z").unwrap(),
        AuditTime::At(1_800_000_000_000)
    );
    assert_eq!(
        parse_audit_time("2027-01-15T09:00:00.5+01:00").unwrap(),
        AuditTime::At(1_800_000_000_500)
    );
    assert_eq!(
        parse_audit_time("1h").unwrap(),
        AuditTime::Ago(Duration::from_secs(3600))
    );
    assert!(parse_audit_time("yesterday").is_err());
    assert!(parse_audit_time("1969-12-31T23:59:59Z").is_err());
    assert_eq!(
        resolve(AuditTime::Ago(Duration::from_secs(60)), 100_000),
        40_000
    );
    assert_eq!(
        resolve(AuditTime::Ago(Duration::from_secs(600)), 100_000),
        0
    );
    assert_eq!(resolve(AuditTime::At(5), 100_000), 5);
}

fn parse(args: &[&str]) -> Result<AuditCommand, clap::Error> {
    let cli = Cli::try_parse_from(std::iter::once("ringzero").chain(args.iter().copied()))?;
    match cli.command {
        Command::Audit(c) => Ok(c),
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn flags_parse_and_bad_ones_exit_2() {
    let AuditCommand::Query(q) = parse(&[
        "audit",
        "query",
        "--decision",
        "deny",
        "--since",
        "1h",
        "--limit",
        "5",
    ])
    .unwrap() else {
        panic!("not query")
    };
    assert_eq!(q.decision, Some(super::args::AuditDecisionArg::Deny));
    assert_eq!(q.limit, 5);
    let AuditCommand::Tail(t) = parse(&["audit", "tail", "-f", "-n", "3"]).unwrap() else {
        panic!("not tail")
    };
    assert!(t.follow);
    assert_eq!(t.lines, 3);
    let AuditCommand::Verify(v) =
        parse(&["audit", "verify", "--file", "a", "--file", "b"]).unwrap()
    else {
        panic!("not verify")
    };
    assert_eq!(v.files.len(), 2);
    for bad in [
        vec!["audit", "query", "--decision", "maybe"],
        vec!["audit", "query", "--limit", "0"],
        vec!["audit", "query", "--limit", "1000001"],
        vec!["audit", "query", "--since", "soon"],
        vec!["audit", "query", "--actor", ""],
        vec!["audit", "export", "--format", "csv"],
        vec!["audit", "prove", "x"],
        vec!["audit", "seal"],
    ] {
        let e = parse(&bad).expect_err(&format!("{bad:?} accepted"));
        assert_eq!(e.exit_code(), 2, "{bad:?}");
    }
}

#[test]
fn the_table_is_aligned_cut_and_escaped() {
    assert_eq!(truncate("abcdef", 4), "abc…");
    assert_eq!(truncate("abc", 4), "abc");
    let mut e = entry(5);
    e.actor = format!("spiffe://example.org/{}", "x".repeat(80));
    e.resource = "ns/a\u{1b}[2J".into();
    let rows = vec![
        super::review::HEADER.map(str::to_owned),
        row(&entry(1)),
        row(&e),
    ];
    let lines = render_table(&rows);
    assert!(
        lines[0].starts_with("SEQ  TIME                  ACTOR"),
        "{lines:#?}"
    );
    assert!(lines[1].contains("2027-01-15T08:00:00Z"), "{lines:#?}");
    assert!(lines[1].ends_with("allow     -"), "{lines:#?}");
    assert!(lines[2].contains('…'), "{lines:#?}");
    assert!(!lines[2].contains('\u{1b}'), "{lines:#?}");
    assert!(lines[2].ends_with("deny      expired"), "{lines:#?}");
}

#[test]
fn every_audit_command_has_examples_in_its_help() {
    for sub in ["verify", "query", "tail", "export", "prove", "seal"] {
        let e = Cli::try_parse_from(["ringzero", "audit", sub, "--help"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{sub}");
        let help = e.to_string();
        assert!(help.contains("Examples:\n  ringzero"), "{sub}: {help}");
        assert!(help.contains(&format!("audit {sub}")), "{sub}: {help}");
    }
}

#[test]
fn a_missing_file_is_bad_input_and_an_empty_one_fails() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_of(&key());
    let (code, m) =
        message(verify_files(&[dir.path().join("nope.jsonl")], &keys, None).unwrap_err());
    assert_eq!(code, 2, "{m}");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let (code, m) = message(verify_files(&[empty], &keys, None).unwrap_err());
    assert_eq!(code, 1, "{m}");
    assert!(m.contains("no tree head"), "{m}");
}
