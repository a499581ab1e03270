//! Fuzz target: `ringzero_policy::fuzzing::jwt_validate`, the JWT-SVID parser and validator.
//! Run with `cargo +nightly fuzz run jwt_validate`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringzero_policy::fuzzing::jwt_validate(data));
