//! Replays the checked-in fuzz corpora of the mesh targets (`fuzz/corpus/mesh_*/`) through the
//! entry points the cargo-fuzz targets call, on stable, in every `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn replay(target: &str, min_files: usize, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read corpus {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= min_files,
        "corpus {} is too small",
        dir.display()
    );
    for file in files {
        let data = std::fs::read(&file).unwrap();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!("{} panicked", file.display());
        }
    }
}

#[test]
fn mesh_config_corpus() {
    replay("mesh_config", 10, ringzero_mesh::fuzzing::config);
}

#[test]
fn mesh_proxy_protocol_corpus() {
    replay(
        "mesh_proxy_protocol",
        5,
        ringzero_mesh::fuzzing::proxy_protocol,
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// Strings over the alphabet of the config syntax, so that near-valid specs are common.
    #[test]
    fn config_parsers_never_panic(s in "[0-9a-z.:=@/*\\[\\]\\- _\"\\n]{0,80}") {
        ringzero_mesh::fuzzing::config(s.as_bytes());
        ringzero_mesh::fuzzing::config(format!("127.0.0.1:1={s}").as_bytes());
        ringzero_mesh::fuzzing::config(format!("127.0.0.1:1=h:2@spiffe://{s}").as_bytes());
        ringzero_mesh::fuzzing::config(format!("inbound = [\"{s}\"]").as_bytes());
    }

    #[test]
    fn proxy_protocol_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        ringzero_mesh::fuzzing::proxy_protocol(&data);
        let mut framed = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
        framed.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(&data);
        ringzero_mesh::fuzzing::proxy_protocol(&framed);
    }
}
