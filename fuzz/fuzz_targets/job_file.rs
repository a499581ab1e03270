//! Fuzz target: `ringzero_authority::fuzzing::job_file` (the `ringzero job run` TOML file, read
//! into a job and checked as the authority checks one). Run with
//! `cargo +nightly fuzz run job_file`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringzero_authority::fuzzing::job_file(data));
