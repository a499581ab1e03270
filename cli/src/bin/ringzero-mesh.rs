//! `ringzero-mesh`: the mesh sidecar alone, with the flags of `ringzero mesh sidecar`.
//!
//! One sidecar runs beside every workload, so its footprint is paid per workload. The
//! `ringzero` binary carries the authority, the agent and every command (about 24 MB of code);
//! the pages a process touches at start-up stay mapped, so a sidecar started from it shows
//! several MB more resident memory than the same code linked alone. This binary links only the
//! sidecar, for deployments that count megabytes per workload; `ringzero mesh sidecar` is the
//! same code.
//!
//! Exit codes: 0 on a clean shutdown, 1 when the sidecar failed, 2 on invalid flags or
//! configuration.
#![forbid(unsafe_code)]

#[allow(dead_code)] // `bind` serves the other daemons of the `ringzero` binary.
#[path = "../daemon.rs"]
mod daemon;
#[allow(dead_code)] // Some constructors serve only the `ringzero` binary.
#[path = "../failure.rs"]
mod failure;
#[path = "../sidecar.rs"]
mod sidecar;

use std::process::ExitCode;

use clap::Parser;

/// The same allocator as `ringzero` (see its `main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run a mesh sidecar: mTLS in (terminate, check the caller's SPIFFE ID, forward to the local
/// app) and out (originate, require the peer's SPIFFE ID), identity from the Workload API.
#[derive(Debug, Parser)]
#[command(
    name = "ringzero-mesh",
    version,
    after_help = "\
The same sidecar as `ringzero mesh sidecar` (see its --help for the whole story), in a binary
that links nothing else.

Examples:
  ringzero-mesh --inbound 0.0.0.0:8443=127.0.0.1:5432 --allow spiffe://example.org/ns/shop/web
  ringzero-mesh --config /etc/ringzero/mesh.toml --admin 127.0.0.1:9901"
)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    #[command(flatten)]
    sidecar: ringzero_mesh::config::Args,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match sidecar::run(cli.sidecar, cli.log_json) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {:#}", e.error);
            ExitCode::from(e.code)
        }
    }
}
