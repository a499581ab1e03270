//! Fuzz target: `ringzero_mesh::fuzzing::proxy_protocol` (the PROXY v2 header writer and reader).
//! Run with `cargo +nightly fuzz run mesh_proxy_protocol`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringzero_mesh::fuzzing::proxy_protocol(data));
