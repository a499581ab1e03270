//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) through the same entry points the
//! cargo-fuzz targets call, on stable, in every `cargo test`. Each input must run without a panic.
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
fn svid_chain_corpus() {
    replay("svid_chain", 10, fuzzing::svid_chain);
}
