//! What the long-running commands share (`authority run`, `authority join`, `agent run`,
//! `dev`): logging, the shutdown signal, and binding the listen address.

use anyhow::Context;

use crate::failure::{Failure, failed};

/// Logs to stderr (`RINGZERO_LOG` filters; `--log-json` for JSON lines). Colours only when
/// stderr is a terminal, so that a log file holds plain text.
pub(crate) fn init_logging(log_json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RINGZERO_LOG").unwrap_or_else(|_| {
        // openraft's replication logs every retry of an unreachable peer (several lines, a few
        // times a second); `net::Contacts` logs a peer going and coming back once each.
        tracing_subscriber::EnvFilter::new(
            "info,openraft=warn,openraft::replication=off,\
             openraft::engine::handler::replication_handler=error,h2=warn,tower=warn",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A subscriber already set (a second daemon in the same process) keeps logging.
    if log_json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM; on Ctrl-C alone when SIGTERM cannot be watched.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

/// Listens on `addr` (host:port; port 0 picks a free port).
pub(crate) async fn bind(addr: &str) -> Result<tokio::net::TcpListener, Failure> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
        .map_err(failed)
}
