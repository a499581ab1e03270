//! Serving a node: the gRPC server (Raft and the Authority API), and its shutdown.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use ringzero_policy::tls::{PeerMatch, SpiffeClientVerifier};
use ringzero_proto::pb;

use crate::gate::Gate;
use crate::net::{RaftService, raft_server};
use crate::service::AuthorityService;

use super::*;

/// The address a node in `dir` listens on (from its `node.toml`).
pub fn listen_address(dir: &Path) -> Result<String, NodeError> {
    Ok(NodeConfig::load(&Layout(dir.to_path_buf()).config())?.listen)
}

/// Serves a node from `dir` on `listener` until `shutdown` completes.
pub async fn run(
    dir: &Path,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    run_with_metrics(dir, listener, None, shutdown).await
}

/// [`run`], also serving `/live`, `/ready` and `/metrics` on `metrics` when given.
pub async fn run_with_metrics(
    dir: &Path,
    listener: tokio::net::TcpListener,
    metrics: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let parts = open(dir).await?;
    if let Some(l) = metrics {
        let health = crate::metrics::AuthorityHealth {
            node_id: parts.config.node_id,
            raft: parts.raft.clone(),
            sm: parts.sm.clone(),
        };
        tokio::spawn(ringzero_telemetry::serve(l, Arc::new(health)));
    }
    serve(parts, listener, shutdown).await
}

pub(super) async fn serve(
    parts: Parts,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    spawn_bundle_refresher(&parts);
    let verifier =
        SpiffeClientVerifier::optional(parts.bundle.clone(), PeerMatch::AnyInTrustDomain);
    let tls = ringzero_policy::tls::rotating_server_config(Arc::clone(&parts.cert), verifier)?;
    let proposer = crate::Proposer::new(parts.raft.clone());
    let gate = Arc::new(Gate::new(
        proposer.clone(),
        parts.sm.clone(),
        parts.config.node_id,
        parts.td.clone(),
        parts.trusted.clone(),
    ));
    spawn_revocation_watch(parts.sm.clone(), Arc::clone(&gate));
    let key_sync = crate::key_sync::KeySync {
        files: crate::keys::KeyFiles::new(Layout(parts.dir.clone()).keys()),
        td: parts.td.clone(),
        node_id: parts.config.node_id,
        cert: Arc::clone(&parts.cert),
        keys: parts.keys.clone(),
        sm: parts.sm.clone(),
        lock: Arc::default(),
    };
    let raft_service = RaftService::new(parts.raft.clone(), parts.td.clone())
        .guarded(
            parts.config.node_id,
            parts.log.clone(),
            parts.sm.clone(),
            Arc::clone(&gate),
            parts.peer_creds.clone(),
        )
        .with_key_sync(key_sync.clone())
        .with_takeover(crate::takeover::Takeover::new(
            parts.raft.clone(),
            parts.config.node_id,
            std::time::Duration::from_millis(parts.config.raft.election_timeout_max_ms),
        ));
    spawn_revocation_purger(parts.sm.clone(), parts.raft.clone(), parts.config.node_id);
    let (removed_tx, mut removed_rx) = tokio::sync::watch::channel(false);
    crate::removal::spawn_watch(
        parts.raft.clone(),
        parts.config.node_id,
        parts.contacts.clone(),
        parts.dir.clone(),
        Layout(parts.dir.clone()).keys(),
        removed_tx,
    );
    let was_removed = removed_rx.clone();
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let raft_service = raft_service.with_shutdown(stopping.clone());
    // Swaps to a staged key once the replicated state activates it, whoever led the rotation.
    crate::key_sync::spawn_watch(key_sync.clone(), stopping.clone());
    spawn_own_svid_renewal(
        parts.keys.clone(),
        parts.td.clone(),
        parts.config.node_id,
        Arc::clone(&parts.cert),
        NODE_SVID_TTL / 2,
        stopping.clone(),
    );
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            _ = removed_rx.wait_for(|r| *r) => {}
        }
        // Long-lived streams (entry feeds, audit tails, Raft append streams) end first, so the
        // graceful shutdown below does not wait on them.
        let _ = stopping_tx.send(true);
    };
    crate::admin_socket::spawn(
        &parts.dir,
        crate::admin_socket::Issuer {
            raft: parts.raft.clone(),
            keys: parts.keys.clone(),
            td: parts.td.clone(),
            node_id: parts.config.node_id,
            listen: parts.config.listen.clone(),
            sm: parts.sm.clone(),
        },
        stopping.clone(),
    )?;
    let service = AuthorityService::new(
        proposer,
        parts.sm.clone(),
        gate,
        parts.keys.clone(),
        parts.contacts.clone(),
    )
    .with_shutdown(stopping)
    .with_rotator(crate::service::Rotator {
        sync: key_sync,
        peers: parts.peer_creds.clone(),
        in_flight: Arc::default(),
    })
    .with_jwt_ttl(parts.config.jwt_svid_ttl());
    // Connections bounded per class and per source IP, streams and HTTP/2 memory per
    // connection, one deadline per call (proto::transport::ServerPolicy). In front of every
    // handler: expired certificates authenticate nothing, anonymous clients reach only the
    // first-contact methods, and only members may send the Raft service a body to decode.
    let policy = ringzero_proto::transport::ServerPolicy::default();
    let incoming = policy.incoming(listener, Arc::new(tls));
    let raft = parts.raft.clone();
    let sm = parts.sm.clone();
    let result = policy
        .server()
        .layer(ringzero_proto::transport::RefuseExpiredLayer)
        .layer(ringzero_proto::transport::AnonymousAllowListLayer::new(
            ringzero_proto::AUTHORITY_FIRST_CONTACT,
        ))
        .layer(ringzero_proto::transport::MembersOnlyLayer::new([
            ringzero_proto::RAFT_METHODS,
        ]))
        .add_service(raft_server(raft_service))
        .add_service(
            pb::authority_server::AuthorityServer::new(service)
                .max_decoding_message_size(256 * 1024)
                .max_encoding_message_size(4 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = raft.shutdown().await;
    if let Err(e) = sm.flush() {
        tracing::warn!(error = %e, "could not flush the state database at shutdown");
    }
    if *was_removed.borrow() {
        return Err(NodeError::Removed(parts.dir.display().to_string()));
    }
    result.map_err(NodeError::from)
}

/// Re-issues this node's own SVID from its current CA every `every` (half its lifetime), so a
/// node that runs longer than [`NODE_SVID_TTL`] never presents an expired certificate to
/// agents, CLIs or its Raft peers; presented from the next handshake on, without a restart.
/// A failed renewal is retried a minute later.
fn spawn_own_svid_renewal(
    keys: crate::keys::CurrentKeys,
    td: ringzero_policy::TrustDomain,
    node_id: crate::NodeId,
    cert: Arc<ringzero_policy::tls::RotatingCert>,
    every: std::time::Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut wait = every;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            let renewed = own_svid(&keys.load(), &td, node_id)
                .map_err(|e| e.to_string())
                .and_then(|(chain, key)| cert.replace(chain, key).map_err(|e| e.to_string()));
            wait = match renewed {
                Ok(()) => {
                    tracing::info!(node_id, "own SVID renewed");
                    every
                }
                Err(e) => {
                    tracing::warn!(node_id, error = %e, "own SVID renewal failed; retrying in 1 min");
                    std::time::Duration::from_secs(60)
                }
            };
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn the_own_svid_is_renewed_without_a_restart() {
        let td = ringzero_policy::TrustDomain::new("renew.test").unwrap();
        let keys = crate::keys::NodeKeys::generate(&td, 1, std::time::SystemTime::now()).unwrap();
        let (chain, key) = own_svid(&keys, &td, 1).unwrap();
        let first = chain[0].clone();
        let cert = ringzero_policy::tls::RotatingCert::new(chain, key).unwrap();
        let presented = |c: &ringzero_policy::tls::RotatingCert| {
            use rustls::client::ResolvesClientCert;
            c.resolve(&[], &[]).unwrap().cert[0].clone()
        };
        assert_eq!(presented(&cert), first);
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        spawn_own_svid_renewal(
            crate::keys::CurrentKeys::new(keys),
            td,
            1,
            Arc::clone(&cert),
            std::time::Duration::from_millis(50),
            stop,
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_ne!(presented(&cert), first, "a fresh SVID is presented");
    }
}
