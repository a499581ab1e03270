//! `RotateKeys`: a node replaces its own CA, Biscuit, JWT and audit keys without a restart.
//!
//! SPIRE's prepared → active → old, on the replicated key records: for each kind the node
//! generates the new key itself (private halves never leave it) and stages its files
//! (`keys::staging`), proposes `PublishKey` (status published: every verifier trusts it from
//! now on, nothing is signed with it yet), waits one propagation window so every agent feed and
//! every profile that refreshes has carried the new bundle, then proposes `SetKeyStatus`
//! active, promotes the files, swaps the in-memory signer (and, for the CA, re-issues and swaps
//! the node's own SVID), and proposes `SetKeyStatus` retired for the old key, whose files are
//! then destroyed. A retired key stays in the bundle and verifies what it signed before its
//! retirement. Each proposal carries the caller's audit record.

use std::sync::Arc;
use std::time::Duration;

use ringzero_policy::tls::RotatingCert;
use ringzero_policy::{Operation, TrustDomain};
use ringzero_proto::pb;
use tokio::sync::mpsc;

use super::{AuthorityService, res, status_of};
use crate::command::{KeyKind, KeyStatus, Op, Outcome};
use crate::gate::{Allowed, now_ms};
use crate::keys::{KeyFiles, NodeKeys, kind_name};
use crate::{KeyRecord, NodeId};

/// The default propagation window: twice the agents' 10 s feed heartbeat, plus margin.
pub(crate) const DEFAULT_PROPAGATION: Duration = Duration::from_secs(30);
/// The bounds of a requested window.
pub(crate) const MIN_PROPAGATION: Duration = Duration::from_secs(1);
pub(crate) const MAX_PROPAGATION: Duration = Duration::from_secs(3600);

pub(crate) type RotateStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::RotateKeysEvent, tonic::Status>> + Send>,
>;

/// What a node needs to rotate its own keys: its key files, its trust domain, the SVID it
/// presents (re-issued when its CA rotates), and the one-rotation-at-a-time lock.
#[derive(Debug, Clone)]
pub(crate) struct Rotator {
    pub(crate) files: KeyFiles,
    pub(crate) td: TrustDomain,
    pub(crate) cert: Arc<RotatingCert>,
    pub(crate) in_flight: Arc<tokio::sync::Mutex<()>>,
}

/// Parses `--kind` names; none means all four.
pub(crate) fn parse_kinds(names: &[String]) -> Result<Vec<KeyKind>, String> {
    if names.is_empty() {
        return Ok(crate::keys::ALL_KINDS.to_vec());
    }
    let mut kinds = Vec::new();
    for n in names {
        let kind = crate::keys::ALL_KINDS
            .into_iter()
            .find(|k| kind_name(*k) == n.as_str())
            .ok_or_else(|| format!("unknown key kind {n:?} (ca, biscuit, jwt or audit)"))?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

/// The propagation window asked for, within bounds.
pub(crate) fn propagation(ms: u64) -> Result<Duration, String> {
    if ms == 0 {
        return Ok(DEFAULT_PROPAGATION);
    }
    let d = Duration::from_millis(ms);
    if !(MIN_PROPAGATION..=MAX_PROPAGATION).contains(&d) {
        return Err(format!(
            "the propagation window must be between {}s and {}s",
            MIN_PROPAGATION.as_secs(),
            MAX_PROPAGATION.as_secs()
        ));
    }
    Ok(d)
}

/// One kind's rotation in progress.
struct Step {
    kind: KeyKind,
    old: Option<u64>,
    new: u64,
    published_ms: u64,
    /// This node's other unretired keys of the kind (left by an interrupted rotation).
    stale: Vec<u64>,
}

impl AuthorityService {
    pub(crate) async fn rotate_keys_impl(
        &self,
        req: tonic::Request<pb::RotateKeysRequest>,
    ) -> Result<tonic::Response<RotateStream>, tonic::Status> {
        self.require_leader()?;
        let allowed = self
            .gate
            .check(&req, Operation::ClusterAdmin, &res("cluster")?, None)
            .await?;
        self.gate.record(&allowed).await?;
        let r = req.into_inner();
        let me = self.gate.node_id();
        if r.node_id != 0 && r.node_id != me {
            return Err(tonic::Status::failed_precondition(format!(
                "node {} generates its own keys and proposes them only while it leads; this is \
                 node {me}: ask node {} when it leads",
                r.node_id, r.node_id
            )));
        }
        let kinds = parse_kinds(&r.kinds).map_err(super::status::invalid)?;
        let window = propagation(r.propagation_ms).map_err(super::status::invalid)?;
        let Some(rotator) = self.rotator.clone() else {
            return Err(tonic::Status::unimplemented(
                "this node cannot rotate its keys",
            ));
        };
        let Ok(guard) = Arc::clone(&rotator.in_flight).try_lock_owned() else {
            return Err(tonic::Status::failed_precondition(
                "a key rotation is already in flight on this node",
            ));
        };
        let (tx, rx) = mpsc::channel(32);
        let this = self.rotation_handle();
        tokio::spawn(async move {
            let _guard = guard;
            let result = this.run(&rotator, &allowed, &kinds, window, &tx).await;
            if let Err(status) = result {
                tracing::warn!(error = %status.message(), "key rotation stopped");
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    fn rotation_handle(&self) -> RotationHandle {
        RotationHandle {
            proposer: self.proposer.clone(),
            sm: self.sm.clone(),
            keys: self.keys.clone(),
            node_id: self.gate.node_id(),
        }
    }
}

/// What the rotation task holds (it outlives the call).
struct RotationHandle {
    proposer: crate::Proposer,
    sm: crate::store::StateMachineStore,
    keys: crate::keys::CurrentKeys,
    node_id: NodeId,
}

type Events = mpsc::Sender<Result<pb::RotateKeysEvent, tonic::Status>>;

fn internal(e: impl std::fmt::Display) -> tonic::Status {
    super::status::internal(e.to_string())
}

impl RotationHandle {
    async fn propose(&self, allowed: &Allowed, op: Op) -> Result<Outcome, tonic::Status> {
        let response = self
            .proposer
            .propose(allowed.command(op))
            .await
            .map_err(|e| tonic::Status::unavailable(format!("not committed: {e}")))?;
        match response.outcome {
            Outcome::Rejected(why) => Err(tonic::Status::failed_precondition(format!(
                "refused: {why}"
            ))),
            other => Ok(other),
        }
    }

    fn records(&self) -> Result<Vec<KeyRecord>, tonic::Status> {
        self.sm.reader().and_then(|r| r.keys()).map_err(status_of)
    }

    async fn emit(&self, tx: &Events, step: &Step, name: &str, detail: String) {
        let _ = tx
            .send(Ok(pb::RotateKeysEvent {
                kind: kind_name(step.kind).into(),
                step: name.into(),
                old_key_id: step.old.unwrap_or(0),
                new_key_id: step.new,
                at_ms: now_ms(),
                node_id: self.node_id,
                detail,
            }))
            .await;
    }

    /// Stages and publishes the new key of `kind`, or resumes with one an interrupted
    /// rotation staged and published.
    async fn prepare(
        &self,
        rotator: &Rotator,
        allowed: &Allowed,
        kind: KeyKind,
        tx: &Events,
    ) -> Result<Step, tonic::Status> {
        let current = self.keys.load();
        let own = current.public_of(kind).map_err(internal)?;
        let records = self.records()?;
        let mine = |k: &&KeyRecord| k.authority == self.node_id && k.kind == kind;
        let old = records
            .iter()
            .filter(mine)
            .find(|k| k.public_der == own)
            .map(|k| k.id);
        let mut resumed = None;
        if rotator.files.is_staged(kind) {
            let staged = rotator
                .files
                .load_staged(kind, 0)
                .and_then(|k| k.public_of(kind))
                .map_err(internal)?;
            resumed = records
                .iter()
                .filter(mine)
                .find(|k| {
                    k.public_der == staged
                        && matches!(k.status, KeyStatus::Published | KeyStatus::Active)
                })
                .map(|k| (k.id, k.published_ms));
            if resumed.is_none() {
                rotator.files.discard_staged(kind);
            }
        }
        let (new, published_ms, how) = match resumed {
            Some((id, at)) => (id, at, "resumed"),
            None => {
                let fresh =
                    NodeKeys::generate(&rotator.td, self.node_id, std::time::SystemTime::now())
                        .map_err(internal)?;
                // Durable on this node before anyone learns of it.
                rotator.files.stage(&fresh, kind).map_err(internal)?;
                let not_after_ms = fresh
                    .ca
                    .not_after()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let outcome = self
                    .propose(
                        allowed,
                        Op::PublishKey {
                            authority: self.node_id,
                            kind,
                            public_der: fresh.public_of(kind).map_err(internal)?,
                            not_after_ms,
                        },
                    )
                    .await?;
                let Outcome::KeyId(id) = outcome else {
                    return Err(internal("publishing the key returned no key id"));
                };
                (id, now_ms(), "published")
            }
        };
        let stale = records
            .iter()
            .filter(mine)
            .filter(|k| {
                Some(k.id) != old
                    && k.id != new
                    && matches!(k.status, KeyStatus::Published | KeyStatus::Active)
            })
            .map(|k| k.id)
            .collect();
        let step = Step {
            kind,
            old,
            new,
            published_ms,
            stale,
        };
        self.emit(tx, &step, how, "in the bundle; not signing yet".into())
            .await;
        Ok(step)
    }

    /// Activates the new key, makes it the one this node signs with, retires the old one.
    async fn activate(
        &self,
        rotator: &Rotator,
        allowed: &Allowed,
        step: &Step,
        tx: &Events,
    ) -> Result<(), tonic::Status> {
        self.propose(
            allowed,
            Op::SetKeyStatus {
                key_id: step.new,
                status: KeyStatus::Active,
            },
        )
        .await?;
        // A key file left in old/ by an interrupted rotation signs nothing: make room.
        rotator.files.destroy_old(step.kind);
        rotator.files.promote(step.kind).map_err(internal)?;
        let mut keys = rotator.files.load(0).map_err(internal)?;
        let biscuit = keys.biscuit.public().key.to_bytes().to_vec();
        if let Some(id) = self
            .records()?
            .iter()
            .find(|k| k.kind == KeyKind::Biscuit && k.public_der == biscuit)
            .and_then(|k| u32::try_from(k.id).ok())
        {
            keys.set_biscuit_key_id(id).map_err(internal)?;
        }
        if step.kind == KeyKind::X509Ca {
            // The node's own SVID, from the new CA, presented from the next handshake on
            // (server and Raft client alike); open connections keep the old one, still valid.
            let (chain, key) =
                crate::node::own_svid(&keys, &rotator.td, self.node_id).map_err(internal)?;
            rotator.cert.replace(chain, key).map_err(internal)?;
        }
        self.keys.replace(keys);
        self.emit(tx, step, "activated", "signing with the new key".into())
            .await;
        for key_id in step.old.iter().chain(&step.stale) {
            self.propose(
                allowed,
                Op::SetKeyStatus {
                    key_id: *key_id,
                    status: KeyStatus::Retired,
                },
            )
            .await?;
        }
        rotator.files.destroy_old(step.kind);
        self.emit(
            tx,
            step,
            "retired",
            "old key verifies only what it signed before; its private key is destroyed".into(),
        )
        .await;
        Ok(())
    }

    async fn run(
        &self,
        rotator: &Rotator,
        allowed: &Allowed,
        kinds: &[KeyKind],
        window: Duration,
        tx: &Events,
    ) -> Result<(), tonic::Status> {
        let mut steps = Vec::with_capacity(kinds.len());
        for kind in kinds {
            steps.push(self.prepare(rotator, allowed, *kind, tx).await?);
        }
        // One window for all kinds, counted from the latest publication.
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let until = steps
            .iter()
            .map(|s| s.published_ms.saturating_add(window_ms))
            .max()
            .unwrap_or(0);
        let wait = until.saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        for step in &steps {
            self.activate(rotator, allowed, step, tx).await?;
        }
        for step in &steps {
            self.emit(tx, step, "done", String::new()).await;
        }
        tracing::info!(
            node_id = self.node_id,
            kinds = ?kinds.iter().map(|k| kind_name(*k)).collect::<Vec<_>>(),
            "keys rotated"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_default_to_all_four() {
        assert_eq!(parse_kinds(&[]).unwrap().len(), 4);
        assert_eq!(
            parse_kinds(&["ca".into(), "ca".into(), "audit".into()]).unwrap(),
            vec![KeyKind::X509Ca, KeyKind::Audit]
        );
        assert!(parse_kinds(&["x509".into()]).is_err());
    }

    #[test]
    fn the_window_is_bounded() {
        assert_eq!(propagation(0).unwrap(), DEFAULT_PROPAGATION);
        assert_eq!(propagation(2_000).unwrap(), Duration::from_secs(2));
        assert!(propagation(10).is_err());
        assert!(propagation(7_200_000).is_err());
    }
}
