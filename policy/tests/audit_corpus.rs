//! Replays the checked-in `fuzz/corpus/audit_export/` through the entry point the cargo-fuzz
//! target calls, on stable, in every `cargo test`: each input must run without a panic.
//!
//! `cargo test -p ringzero-policy --test audit_corpus -- --ignored` regenerates the corpus.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};

use ringzero_policy::audit::fuzzing::{self, CORPUS_KEY_ID};
use ringzero_policy::audit::{
    AuditEntry, AuditKeys, Decision, ExportOptions, Frontier, KeyStatus, public_key_of,
    verify_export, write_export,
};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/audit_export")
}

#[test]
fn audit_export_corpus() {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read corpus {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 20, "corpus holds only {} files", files.len());
    let mut panicked = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap();
        if std::panic::catch_unwind(|| fuzzing::audit_export(&data)).is_err() {
            panicked.push(path.display().to_string());
        }
    }
    assert!(panicked.is_empty(), "inputs panicked: {panicked:#?}");

    // The corpus means what its names say: `valid_*` verifies, nothing else does.
    let key = fuzzing::corpus_key().unwrap();
    let keys = AuditKeys::new().with(CORPUS_KEY_ID, public_key_of(&key), KeyStatus::Active);
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        let result = verify_export(&data[..], &keys, None);
        assert_eq!(
            result.is_ok(),
            name.starts_with("valid_"),
            "{name}: {result:?}"
        );
    }
}

fn entry(seq: u64) -> AuditEntry {
    AuditEntry {
        seq,
        time_ms: 1_767_225_600_000 + seq,
        log_index: seq + 3,
        authority: 1,
        actor: "spiffe://example.org/user/alice".to_owned(),
        revocation_ids: vec![format!("{seq:064x}")],
        operation: "entry:write".to_owned(),
        resource: "ns/default/web".to_owned(),
        decision: if seq % 3 == 2 {
            Decision::Deny
        } else {
            Decision::Allow
        },
        reason: (seq % 3 == 2).then(|| "resource_not_allowed".to_owned()),
        request_id: format!("req-{seq}"),
        outcome: "done".to_owned(),
        details: vec![("serial".to_owned(), format!("{seq:032x}"))],
    }
}

fn export(prior: &Frontier, seqs: std::ops::Range<u64>, every: u64, leaf_hashes: bool) -> String {
    let key = fuzzing::corpus_key().unwrap();
    let records: Vec<AuditEntry> = seqs.map(entry).collect();
    let mut out = Vec::new();
    let opts = ExportOptions {
        checkpoint_every: every,
        leaf_hashes,
    };
    write_export(
        &mut out,
        prior,
        &records,
        &key,
        CORPUS_KEY_ID,
        1_767_225_700_000,
        &opts,
    )
    .unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
#[ignore = "regenerates the checked-in corpus"]
fn regenerate_audit_export_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let valid = export(&Frontier::new(), 0..6, 2, true);
    let lines: Vec<&str> = valid.lines().collect();
    let join = |ls: &[&str]| ls.join("\n") + "\n";
    let mut prior = Frontier::new();
    (0..6).for_each(|s| prior.push(entry(s).leaf_hash()));
    let segment = export(&prior, 6..10, 3, true);

    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("valid_small", valid.clone().into_bytes()),
        (
            "valid_no_leaf_hashes",
            export(&Frontier::new(), 0..6, 4, false).into_bytes(),
        ),
        ("valid_segment", segment.clone().into_bytes()),
        (
            "valid_empty_tree",
            export(&Frontier::new(), 0..0, 1, true).into_bytes(),
        ),
        (
            "valid_crlf_blank_lines",
            valid.replace('\n', "\r\n\r\n").into_bytes(),
        ),
        ("empty", Vec::new()),
        ("not_json", b"hello\n".to_vec()),
        (
            "invalid_utf8",
            b"{\"type\":\"\xff\xfe\",\"v\":1}\n".to_vec(),
        ),
        ("deep_nesting", "[".repeat(100_000).into_bytes()),
        ("overlong_line", vec![b'{'; (1 << 20) + 1]),
        (
            "unknown_type",
            b"{\"type\":\"ringzero.audit.other\",\"v\":1}\n".to_vec(),
        ),
        (
            "wrong_version",
            valid.replace("\"v\":1", "\"v\":2").into_bytes(),
        ),
        (
            "huge_numbers",
            valid
                .replace("\"seq\":0", "\"seq\":18446744073709551615")
                .into_bytes(),
        ),
        (
            "head_size_max",
            valid
                .replace("\"size\":2", "\"size\":18446744073709551615")
                .into_bytes(),
        ),
        (
            "edited_record",
            valid.replace("req-3", "req-X").into_bytes(),
        ),
        (
            "edited_record_no_leaves",
            export(&Frontier::new(), 0..6, 4, false)
                .replace("req-1", "req-X")
                .into_bytes(),
        ),
        (
            "dropped_record",
            join(&[
                lines[0], lines[1], lines[2], lines[4], lines[5], lines[6], lines[7], lines[8],
            ])
            .into_bytes(),
        ),
        (
            "swapped_records",
            join(&[
                lines[0], lines[1], lines[2], lines[4], lines[3], lines[5], lines[6], lines[7],
                lines[8],
            ])
            .into_bytes(),
        ),
        ("truncated_tail", join(&lines[..7]).into_bytes()),
        (
            "truncated_mid_line",
            valid.as_bytes()[..valid.len() - 40].to_vec(),
        ),
        (
            "inserted_record",
            join(&[lines[0], lines[1], lines[1], lines[2]]).into_bytes(),
        ),
        (
            "forked_heads",
            join(&[
                lines[0],
                lines[1],
                lines[2],
                &lines[2].replace("\"root\":\"", "\"root\":\"0")[..],
            ])
            .into_bytes(),
        ),
        (
            "unknown_key",
            valid.replace("\"key_id\":1", "\"key_id\":2").into_bytes(),
        ),
        (
            "bad_signature",
            valid
                .replace("\"signature\":\"", "\"signature\":\"AAAA")
                .into_bytes(),
        ),
        (
            "valid_leaves_garbage_hint",
            valid
                .replace("\"leaves\":\"", "\"leaves\":\"%%")
                .into_bytes(),
        ),
        ("segment_not_first", {
            let s: Vec<&str> = segment.lines().collect();
            join(&[s[1], s[0], s[2]]).into_bytes()
        }),
        (
            "segment_bad_frontier",
            segment
                .replacen("\"prior_frontier\":[\"", "\"prior_frontier\":[\"00", 1)
                .into_bytes(),
        ),
        (
            "segment_only",
            segment.lines().next().unwrap().as_bytes().to_vec(),
        ),
        (
            "extra_field",
            valid
                .replacen("\"v\":1,", "\"v\":1,\"x\":null,", 1)
                .into_bytes(),
        ),
        (
            "duplicate_field",
            valid
                .replacen("\"v\":1,", "\"v\":1,\"v\":1,", 1)
                .into_bytes(),
        ),
    ];
    files.sort_by_key(|(n, _)| *n);
    for (name, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
    }
}
