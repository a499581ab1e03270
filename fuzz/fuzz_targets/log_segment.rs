//! Fuzz target: `ringzero_authority::fuzzing::log_segment` (a Raft log segment file as opening
//! the log reads it). Run with `cargo +nightly fuzz run log_segment`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringzero_authority::fuzzing::log_segment(data));
