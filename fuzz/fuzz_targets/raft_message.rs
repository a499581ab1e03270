//! Fuzz target: `ringzero_authority::fuzzing::raft_message` (a Raft message as the service
//! decodes and checks it). Run with `cargo +nightly fuzz run raft_message`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringzero_authority::fuzzing::raft_message(data));
