//! Fuzz target: `ringzero_mesh::fuzzing::config` (the sidecar's flag and file parsers). Run with
//! `cargo +nightly fuzz run mesh_config`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringzero_mesh::fuzzing::config(data));
