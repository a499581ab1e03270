//! Fuzz target: `ringzero_policy::fuzzing::token_authorize`. Run with `cargo +nightly fuzz run token_authorize`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringzero_policy::fuzzing::token_authorize(data));
