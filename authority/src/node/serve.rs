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
    let parts = open(dir, crate::raft_config("ringzero").map_err(raft_err)?).await?;
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
    let raft_service = RaftService::new(parts.raft.clone(), parts.td.clone()).guarded(
        parts.config.node_id,
        parts.log.clone(),
        parts.sm.clone(),
        Arc::clone(&gate),
        parts.peer_creds.clone(),
    );
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
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            _ = removed_rx.wait_for(|r| *r) => {}
        }
        // Long-lived streams (entry feeds, audit tails) end first, so the graceful shutdown
        // below does not wait on them.
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
        files: crate::keys::KeyFiles::new(Layout(parts.dir.clone()).keys()),
        td: parts.td.clone(),
        cert: Arc::clone(&parts.cert),
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
