//! The mesh sidecar process, shared by `ringzero mesh sidecar` and the `ringzero-mesh`
//! binary (the same flags in a binary a fifth the size, for one sidecar per workload): reads
//! the flags, sets up logging, runs `ringzero_mesh` on one thread until SIGTERM.

use anyhow::anyhow;

use crate::daemon::{init_logging, shutdown_signal};
use crate::failure::{Failure, Outcome, bad_input, failed};

/// Runs a sidecar from its flags until SIGTERM or SIGINT (then drains).
pub(crate) fn run(args: ringzero_mesh::config::Args, log_json: bool) -> Outcome {
    // Flags, file and environment are checked before anything is bound: every mistake at
    // once, exit code 2.
    let config = args.load().map_err(|e| bad_input(anyhow!("{e}")))?;
    init_logging(log_json);
    if let Some(limit) = ringzero_mesh::raise_fd_limit() {
        tracing::debug!(limit, "open-file limit");
    }
    sidecar_runtime()?.block_on(sidecar(config))
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
