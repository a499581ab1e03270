//! Background tasks of a running node: bundle refresh, revocation watch and purge.

use std::sync::Arc;
use std::time::Duration;

use ringzero_policy::svid::TrustBundle;
use rustls_pki_types::CertificateDer;

use crate::command::{AuditRecord, KeyKind, KeyStatus, Op};
use crate::gate::{Gate, now_ms};
use crate::store::StateMachineStore;
use crate::{NodeId, Raft};

use super::*;

pub(super) async fn wait_leader(raft: &Raft, timeout: Duration) -> Result<NodeId, NodeError> {
    let mut rx = raft.metrics();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(l) = rx.borrow().current_leader {
            return Ok(l);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(NodeError::Raft("no leader elected".into()));
        }
        let _ = tokio::time::timeout(left, rx.changed()).await;
    }
}

/// Keeps the TLS bundle and the capability key set in step with the replicated trust bundle.
pub(super) fn spawn_bundle_refresher(parts: &Parts) {
    let (sm, bundle, trusted, td, current) = (
        parts.sm.clone(),
        parts.bundle.clone(),
        parts.trusted.clone(),
        parts.td.clone(),
        parts.keys.clone(),
    );
    let mut rx = parts.sm.watch_trust();
    tokio::spawn(async move {
        let mut last: Vec<crate::KeyRecord> = Vec::new();
        loop {
            if let Ok(keys) = sm.reader().and_then(|r| r.keys())
                && keys != last
            {
                trusted.update(&keys);
                let mut cas: Vec<CertificateDer<'static>> = keys
                    .iter()
                    .filter(|k| k.kind == KeyKind::X509Ca && k.status != KeyStatus::Compromised)
                    .map(|k| CertificateDer::from(k.public_der.clone()))
                    .collect();
                let own = current.load().ca.cert_der().clone();
                if !cas.contains(&own) {
                    cas.push(own);
                }
                if let Ok(b) = TrustBundle::new(td.clone(), cas) {
                    bundle.replace(b);
                }
                last = keys;
            }
            // Read on every apply that may change a key record: a key marked compromised
            // must stop verifying as soon as that is applied.
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Makes the gate forget cached tokens as soon as an applied revocation covers them, on every
/// node (the revocation set itself is read from the state on every decision).
pub(super) fn spawn_revocation_watch(sm: StateMachineStore, gate: Arc<Gate>) {
    let mut applied = sm.watch_trust();
    tokio::spawn(async move {
        let mut last: Vec<Vec<u8>> = Vec::new();
        loop {
            if let Ok(now) = sm.reader().and_then(|r| r.revocations()) {
                let ids: Vec<Vec<u8>> = now.into_iter().map(|(id, _)| id).collect();
                if ids != last {
                    gate.forget_revoked();
                    last = ids;
                }
            }
            if applied.changed().await.is_err() {
                return;
            }
        }
    });
}

/// How often the leader looks for revocations past the expiry of the tokens they name.
pub(super) const PURGE_EVERY: Duration = Duration::from_secs(60);

/// On the leader, drops revocations (with expired join tokens and idempotency records) once the
/// tokens they name would have expired anyway, so the revocation set stays as small as the
/// tokens still alive. Proposes only when a revocation or a join token has expired: no audit
/// noise otherwise. (Join tokens count on their own: a cluster that issues many — enrolments,
/// `ringzero bench write` — and revokes nothing would otherwise keep every one.)
pub(super) fn spawn_revocation_purger(sm: StateMachineStore, raft: Raft, node_id: NodeId) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PURGE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if raft.metrics().borrow().current_leader != Some(node_id) {
                continue;
            }
            let now = now_ms();
            let Ok(reader) = sm.reader() else {
                continue;
            };
            let expired = reader
                .revocations()
                .map(|all| all.iter().filter(|(_, until)| *until <= now).count())
                .unwrap_or(0);
            let join_tokens = reader.any_join_token_expired(now).unwrap_or(false);
            drop(reader);
            if expired == 0 && !join_tokens {
                continue;
            }
            let audit = AuditRecord {
                actor: "local:purge".into(),
                details: vec![
                    ("expired_revocations".into(), expired.to_string()),
                    ("expired_join_tokens".into(), join_tokens.to_string()),
                ],
                ..local_audit(node_id, "token:revoke", "token", Vec::new())
            };
            if let Err(e) = propose(&raft, audit, Op::PurgeExpired).await {
                tracing::warn!(error = %e, "could not purge expired revocations");
            }
        }
    });
}
