//! Fuzz target: `ringzero_policy::audit::fuzzing::audit_export` (the export verifier on
//! arbitrary bytes). Run with `cargo +nightly fuzz run audit_export`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringzero_policy::audit::fuzzing::audit_export(data));
