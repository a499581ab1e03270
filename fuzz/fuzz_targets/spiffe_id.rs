//! Fuzz target: `ringzero_policy::fuzzing::spiffe_id`. Run with `cargo +nightly fuzz run spiffe_id`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringzero_policy::fuzzing::spiffe_id(data));
