//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) through the same entry points the
//! cargo-fuzz targets call, on stable, in every `cargo test`. Each input must run without a panic.
//!
//! `cargo test -p ringzero-policy --test fuzz_corpus -- --ignored` regenerates the seeds of
//! `token_shape` (and the whitelist seeds of `token_authorize`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};

use ringzero_policy::fuzzing;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Feeds every file of `fuzz/corpus/<target>/` to `run`, and fails naming every input that
/// panicked. Refuses a corpus smaller than `min_files`, so that a lost or misplaced corpus cannot
/// pass silently.
fn replay(target: &str, min_files: usize, run: fn(&[u8])) {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= min_files,
        "corpus {} holds {} files; expected at least {min_files}",
        dir.display(),
        files.len()
    );

    let mut panicked = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panicked.push(path.display().to_string());
        }
    }
    assert!(
        panicked.is_empty(),
        "{} of {} {target} inputs panicked: {panicked:#?}",
        panicked.len(),
        files.len()
    );
}

#[test]
fn spiffe_id_corpus() {
    replay("spiffe_id", 25, fuzzing::spiffe_id);
}

#[test]
fn token_authorize_corpus() {
    replay("token_authorize", 15, fuzzing::token_authorize);
}

#[test]
fn token_shape_corpus() {
    replay("token_shape", 40, fuzzing::token_shape);
}

/// A stable stand-in for a fuzzing run: random mutations of the `token_shape` seeds (mostly
/// of the raw block payloads, which are signed as they are and so reach the whitelist and
/// evaluation) keep every invariant the target asserts.
mod mutated_token_shape_seeds {
    use proptest::prelude::*;

    use super::*;

    fn seeds() -> &'static [Vec<u8>] {
        static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        SEEDS.get_or_init(|| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir("token_shape"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            files.iter().map(|p| std::fs::read(p).unwrap()).collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn keep_the_invariants(
            pick in any::<prop::sample::Index>(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        ) {
            let mut data = pick.get(seeds()).clone();
            for (at, byte, kind) in edits {
                // Byte 0 picks the mode: keep it, so edits land in the payload.
                let len = data.len().max(2);
                let i = 1 + at.index(len - 1);
                match kind {
                    0 if i < data.len() => data[i] = byte,
                    1 => data.insert(i.min(data.len()), byte),
                    _ if i < data.len() => {
                        data.remove(i);
                    }
                    _ => {}
                }
            }
            fuzzing::token_shape(&data);
        }
    }
}

#[test]
fn svid_chain_corpus() {
    replay("svid_chain", 10, fuzzing::svid_chain);
}

#[test]
fn svid_key_corpus() {
    replay("svid_key", 8, fuzzing::svid_key);
}

/// Appended blocks, whitelisted or not, for the `token_shape` seeds: (name, Datalog).
fn appended_blocks() -> Vec<(&'static str, String)> {
    let mut attack = String::new();
    for i in 0..18 {
        attack.push_str(&format!("f({i});\n"));
    }
    attack.push_str(
        "check if f($a), f($b), f($c), f($d), f($e), f($g), $a + $b + $c + $d + $e + $g == -1;",
    );
    let ops65: Vec<String> = (0..65).map(|i| format!("\"op{i}\"")).collect();
    vec![
        ("ok_expiry_lt", "check if time($time), $time < 2030-01-01T00:00:00Z;".into()),
        ("ok_expiry_le", "check if time($t), $t <= 2030-01-01T00:00:00Z;".into()),
        ("ok_expired", "check if time($t), $t < 2020-01-01T00:00:00Z;".into()),
        ("ok_operations", "check if operation($op), {\"logs:read\", \"sched:read\"}.contains($op);".into()),
        ("ok_resource", "check if resource_within(\"ns/default\");".into()),
        ("ok_peer", "check if peer(\"spiffe://example.org/user/alice\");".into()),
        ("ok_node", "check if node(\"n1\");".into()),
        ("ok_all_five", "check if time($t), $t < 2030-01-01T00:00:00Z;\ncheck if operation($op), {\"logs:read\"}.contains($op);\ncheck if resource_within(\"ns\");\ncheck if peer(\"spiffe://example.org/user/alice\");\ncheck if node(\"n1\");".into()),
        ("ok_empty", String::new()),
        ("attack_18_facts_join_6", attack),
        ("fact", "right(\"cluster\", \"cluster:admin\", \"\");".into()),
        ("rule", "p($t) <- time($t);\ncheck if p($t);".into()),
        ("rule_chain", (1..40).map(|i| format!("p{i}($x) <- p{}($x);\n", i - 1)).collect::<String>() + "p0(1);"),
        ("trusting_previous", "check if peer(\"spiffe://example.org/user/alice\") trusting previous;".into()),
        ("or_true", "check if time($t), $t < 2030-01-01T00:00:00Z or true;".into()),
        ("expr_or_true", "check if time($t), $t < 2030-01-01T00:00:00Z || true;".into()),
        ("time_gt", "check if time($t), $t > 2020-01-01T00:00:00Z;".into()),
        ("check_all", "check all time($t), $t < 2030-01-01T00:00:00Z;".into()),
        ("reject_if", "reject if peer(\"spiffe://example.org/user/bob\");".into()),
        ("check_true", "check if true;".into()),
        ("join_2", "check if peer($p), node($n);".into()),
        ("array_not_set", "check if operation($op), [\"logs:read\"].contains($op);".into()),
        ("set_65", format!("check if operation($op), {{{}}}.contains($op);", ops65.join(", "))),
        ("checks_17", "check if node(\"n1\");\n".repeat(17)),
        ("quote_in_string", r#"check if peer("x\"); check if peer(\"y");"#.into()),
    ]
}

/// Authority blocks for the `token_shape` seeds: (name, Datalog).
fn authority_blocks() -> Vec<(&'static str, String)> {
    let head =
        "subject(\"spiffe://example.org/user/alice\");\nright(\"logs\", \"logs:read\", \"\");\n";
    let rights: String = (0..257)
        .map(|i| format!("right(\"logs\", \"logs:read\", \"n{i}\");\n"))
        .collect();
    vec![
        (
            "ok_minted_shape",
            format!(
                "{head}check if time($time), $time < 2030-01-01T00:00:00Z;\ncheck if peer(\"spiffe://example.org/user/alice\");\ncheck if node(\"n1\");"
            ),
        ),
        (
            "ok_le",
            format!("{head}check if time($time), $time <= 2030-01-01T00:00:00Z;"),
        ),
        ("ok_no_expiry", head.to_owned()),
        ("rule", format!("{head}p($x) <- right($a, $x, $b);")),
        ("request_fact", format!("{head}operation(\"logs:read\");")),
        ("no_subject", "right(\"logs\", \"logs:read\", \"\");".into()),
        (
            "resource_check",
            format!("{head}check if resource_within(\"ns\");"),
        ),
        (
            "rights_257",
            format!("subject(\"spiffe://example.org/user/alice\");\n{rights}"),
        ),
    ]
}

#[test]
#[ignore = "regenerates fuzz/corpus/token_shape; run by hand"]
fn regenerate_token_shape_corpus() {
    use biscuit_prost::Message;

    let dir = corpus_dir("token_shape");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: String, mode: u8, body: &[u8]| {
        let mut data = vec![mode];
        data.extend_from_slice(body);
        std::fs::write(dir.join(name), data).unwrap();
    };
    for (name, source) in appended_blocks() {
        write(format!("source_{name}"), 1, source.as_bytes());
        // The same block as the raw payload biscuit signs.
        let token = fuzzing::append_block_source(&source).unwrap();
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE, &token).unwrap();
        let proto = biscuit_auth::format::schema::Biscuit::decode(bytes.as_slice()).unwrap();
        write(
            format!("raw_{name}"),
            0,
            &proto.blocks.last().unwrap().block,
        );
        write(format!("token_{name}"), 3, token.as_bytes());
    }
    for (name, source) in authority_blocks() {
        write(format!("authority_{name}"), 2, source.as_bytes());
    }
    write("raw_not_protobuf".into(), 0, b"\xff\xff\xff\xff");
    write("raw_empty".into(), 0, b"");
    // A third-party block, signed by a key of its own.
    let base = biscuit_auth::UnverifiedBiscuit::from_base64(fuzzing::corpus_base_token().unwrap())
        .unwrap();
    let external = biscuit_auth::KeyPair::new();
    let block = base
        .third_party_request()
        .unwrap()
        .create_block(
            &external.private(),
            biscuit_auth::builder::BlockBuilder::new()
                .code("check if peer(\"spiffe://example.org/user/alice\");")
                .unwrap(),
        )
        .unwrap();
    let third = base
        .append_third_party(&block.serialize().unwrap())
        .unwrap()
        .to_base64()
        .unwrap();
    write("token_third_party".into(), 3, third.as_bytes());
    // The reported attack, as text, for the `token_authorize` target too.
    let attack = appended_blocks()
        .into_iter()
        .find(|(n, _)| *n == "attack_18_facts_join_6")
        .unwrap()
        .1;
    std::fs::write(
        corpus_dir("token_authorize").join("unsupported_attack_18_facts_join_6"),
        fuzzing::append_block_source(&attack).unwrap(),
    )
    .unwrap();
    std::fs::write(
        corpus_dir("token_authorize").join("unsupported_third_party_block"),
        third,
    )
    .unwrap();
}

#[test]
fn jwt_validate_corpus() {
    replay("jwt_validate", 20, fuzzing::jwt_validate);
}
