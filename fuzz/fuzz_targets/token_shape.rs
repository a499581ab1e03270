//! Fuzz target: `ringzero_policy::fuzzing::token_shape` — the token block whitelist, fed signed
//! tokens whose blocks come from the input. Run with `cargo +nightly fuzz run token_shape`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringzero_policy::fuzzing::token_shape(data));
