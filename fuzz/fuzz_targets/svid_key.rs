//! Fuzz target: `ringzero_policy::fuzzing::svid_key`. Run with `cargo +nightly fuzz run svid_key`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringzero_policy::fuzzing::svid_key(data));
