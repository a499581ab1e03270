//! `ringzero mesh sidecar`: the mesh sidecar beside one workload (the data plane is
//! `ringzero_mesh`; this file only reads the flags and runs it until SIGTERM).

use anyhow::anyhow;
use clap::Subcommand;

use crate::cli::GlobalArgs;
use crate::daemon::{init_logging, shutdown_signal};
use crate::failure::{Failure, Outcome, bad_input, failed};

#[derive(Debug, Subcommand)]
pub(crate) enum MeshCommand {
    /// Run a sidecar: mTLS in (terminate, check the caller's SPIFFE ID, forward to the local
    /// app) and out (originate, require the peer's SPIFFE ID), identity from the Workload API.
    #[command(after_help = SIDECAR_HELP)]
    Sidecar(ringzero_mesh::config::Args),
}

const SIDECAR_HELP: &str = "\
Runs under the workload's uid, beside it: the sidecar gets that uid's SVID and bundle from the
local agent and follows their rotation; new certificates apply to new handshakes, live
connections are kept. Deny by default: an inbound listener needs an --allow rule (or an
explicit --allow-trust-domain), and its target must be a loopback address (or --unsafe-target).
A connection ends at --max-conn-age, at its peer certificate's expiry, or when the peer's
serial is revoked. SIGTERM drains: listeners close, live connections get --drain-timeout.
Prints `mesh ready: SPIFFE-ID, inbound A…, outbound B…, admin C` on stderr once the first SVID
is held and the listeners serve.

Examples:
  # web's sidecar: its app calls 127.0.0.1:9000 to reach db as spiffe://TD/ns/shop/db
  ringzero mesh sidecar --outbound 127.0.0.1:9000=10.0.0.7:8443@spiffe://TD/ns/shop/db
  # db's sidecar: admit only web, forward to the database on localhost
  ringzero mesh sidecar --inbound 0.0.0.0:8443=127.0.0.1:5432 \\
      --allow spiffe://TD/ns/shop/web --admin 127.0.0.1:9901
  ringzero mesh sidecar --config /etc/ringzero/mesh.toml --proxy-protocol";

pub(crate) fn run(global: &GlobalArgs, cmd: MeshCommand) -> Outcome {
    match cmd {
        MeshCommand::Sidecar(args) => {
            // Flags, file and environment are checked before anything is bound: every mistake
            // at once, exit code 2.
            let config = args.load().map_err(|e| bad_input(anyhow!("{e}")))?;
            init_logging(global.log_json);
            sidecar_runtime()?.block_on(sidecar(config))
        }
    }
}

/// One thread, as linkerd2-proxy by default: a sidecar serves one workload, a connection's
/// bytes are copied by one task anyway, and a single thread saves the cross-thread wake-ups
/// of every relayed message (round-trip latency), the worker threads and malloc arenas.
fn sidecar_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed)
}

async fn sidecar(config: ringzero_mesh::Config) -> Outcome {
    let sidecar = ringzero_mesh::Sidecar::bind(config)
        .await
        .map_err(mesh_failed)?;
    let list = |addrs: Vec<std::net::SocketAddr>| {
        let parts: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(" ")
        }
    };
    let line = format!(
        "inbound {}, outbound {}, admin {}",
        list(sidecar.inbound_addrs()),
        list(sidecar.outbound_addrs()),
        sidecar
            .admin_addr()
            .map_or_else(|| "none".to_owned(), |a| a.to_string())
    );
    sidecar
        .run_with_ready(shutdown_signal(), |id| {
            eprintln!("mesh ready: {id}, {line}");
        })
        .await
        .map_err(mesh_failed)?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn mesh_failed(e: ringzero_mesh::MeshError) -> Failure {
    match e {
        ringzero_mesh::MeshError::Config(_) => bad_input(anyhow::Error::from(e)),
        other => failed(anyhow::Error::from(other)),
    }
}
