//! `ringzero`: the one binary of the ringzero security subsystem.
//!
//! Exit codes (every command):
//! - 0: success (for `token verify`: allowed)
//! - 1: the operation failed or was denied (for `token verify`: denied)
//! - 2: invalid input or usage (bad flags, malformed token, unreadable key file)
#![forbid(unsafe_code)]

mod args;
mod cli;
mod cmd;
mod daemon;
mod failure;
mod input;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cmd::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {:#}", e.error);
            ExitCode::from(e.code)
        }
    }
}
