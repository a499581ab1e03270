//! `ringzero`: the one binary of the ringzero security subsystem.
//!
//! # Layout
//!
//! - `main.rs`: parses the command line, runs the command, maps its failure to an exit code.
//! - `cli.rs`: the top-level parser: the global flags (`--profile`, `--authority`, `--token`,
//!   `--log-json`) and the list of subcommands.
//! - `args.rs`: flags and value parsers several subcommands share (`--json`, durations,
//!   join-token and user-credential lifetimes).
//! - `failure.rs`: [`failure::Failure`], the exit codes, `failed` (1) and `bad_input` (2).
//! - `daemon.rs`: what the long-running commands share: logging, the SIGTERM/SIGINT shutdown
//!   signal, binding the listen address.
//! - `input.rs`: reading secrets (value, `-` or `@FILE`) and writing secret files.
//! - `sidecar.rs`: the mesh sidecar process (`mesh sidecar`), also the whole of the
//!   `ringzero-mesh` binary (`bin/ringzero-mesh.rs`, which includes `daemon.rs`, `failure.rs`
//!   and `sidecar.rs` by path).
//! - `cmd/`: one module per subcommand, each owning its clap types (flags, long help) and its
//!   code; `cmd/mod.rs` only dispatches.
//!   - `keygen.rs`, `token.rs`, `authority.rs`, `bundle.rs`, `node.rs`, `entry.rs`,
//!     `agent.rs`, `mesh.rs` (`mesh sidecar`), `dev.rs`, `user.rs`, `login.rs`, `role.rs`,
//!     `blast.rs` (`blast-radius`), `sched.rs` (`sched run`).
//!   - `bench.rs` with `bench/write.rs`: `bench write`, a closed-loop load generator of real
//!     writes (the driver and statistics are `ringzero_telemetry::load`).
//!   - `audit.rs` with `audit/`: `args.rs` (its flags), `files.rs`, `memory.rs`, `review.rs`,
//!     `stream.rs`, `tests.rs`.
//!   - shared by several commands: `session.rs` (profile, client, runtime, error wording,
//!     tables), `profile.rs` (writing user profiles), `keyfile.rs` (root key files).
//!
//! # Exit codes
//!
//! Every command:
//! - 0: success (for `token verify`: allowed)
//! - 1: the operation failed or was denied (for `token verify`: denied)
//! - 2: invalid input or usage (bad flags, malformed token, unreadable key file)
//! - 3, 4: only `entry create|update --wait`: written, but not servable in time (3) or
//!   reported unservable by the node's agent (4)
#![forbid(unsafe_code)]

mod args;
mod cli;
mod cmd;
mod daemon;
mod failure;
mod input;
mod sidecar;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the system allocator: every request and every applied command allocates,
/// and glibc's malloc was a tenth of an authority node's CPU under write load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
