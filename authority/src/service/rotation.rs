//! `RotateKeys`: the leader replaces a member's CA, Biscuit, JWT and audit keys (its own or
//! another member's) without a restart.
//!
//! SPIRE's prepared → active → old, on the replicated key records. The caller asks the leader,
//! which gates and audits the call; for each kind the member whose key it is generates the new
//! key itself and stages its files (`key_sync`: the leader's own directly, another member's
//! over the member-only `PrepareKeys` RPC; private halves never leave that member). The leader
//! proposes `PublishKey` (status published: every verifier trusts it from now on, nothing is
//! signed with it yet), waits one propagation window so every agent feed and every profile
//! that refreshes has carried the new bundle, then proposes `SetKeyStatus` active. The member
//! swaps when it applies that (`key_sync::spawn_watch`): it promotes the files, swaps its
//! in-memory signer and, for the CA, re-issues its own SVID. Once the member says it signs with
//! the new key (`SigningKeys`), the leader proposes `SetKeyStatus` retired for the old key,
//! whose files the member then destroys. A retired key stays in the bundle and verifies what it
//! signed before its retirement. Each proposal carries the caller's audit record.

use std::sync::Arc;
use std::time::Duration;

use ringzero_policy::Operation;
use ringzero_proto::pb;
use tokio::sync::mpsc;

use super::{AuthorityService, res, status_of};
use crate::command::{KeyKind, KeyStatus, Op, Outcome};
use crate::gate::{Allowed, now_ms};
use crate::key_sync::{KeySync, Prepared};
use crate::keys::kind_name;
use crate::net::PeerCredentials;
use crate::{KeyRecord, NodeId};

/// The default propagation window: twice the agents' 10 s feed heartbeat, plus margin.
pub(crate) const DEFAULT_PROPAGATION: Duration = Duration::from_secs(30);
/// The bounds of a requested window.
pub(crate) const MIN_PROPAGATION: Duration = Duration::from_secs(1);
pub(crate) const MAX_PROPAGATION: Duration = Duration::from_secs(3600);

pub(crate) type RotateStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::RotateKeysEvent, tonic::Status>> + Send>,
>;

/// What the leader needs to rotate a member's keys: its own key files and signers, the
/// credentials it asks other members with, and the one-rotation-at-a-time lock.
#[derive(Debug, Clone)]
pub(crate) struct Rotator {
    pub(crate) sync: KeySync,
    pub(crate) peers: PeerCredentials,
    pub(crate) in_flight: Arc<tokio::sync::Mutex<()>>,
}

/// How long the leader waits for a member to sign with its activated key before it stops
/// (the old key then stays active beside the new one until the next rotation retires it).
const SWAP_TIMEOUT: Duration = Duration::from_secs(20);
/// How many times a `PrepareKeys` that did not answer is retried (it is idempotent).
const PREPARE_TRIES: u32 = 3;

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
    /// The new key's public half: the member signs with it once this is what it reports.
    new_public: Vec<u8>,
    published_ms: u64,
    /// The member's other unretired keys of the kind (left by an interrupted rotation).
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
        let target = if r.node_id == 0 { me } else { r.node_id };
        let addr = self.member_address(target)?;
        let kinds = parse_kinds(&r.kinds).map_err(super::status::invalid)?;
        let window = propagation(r.propagation_ms).map_err(super::status::invalid)?;
        let Some(rotator) = self.rotator.clone() else {
            return Err(tonic::Status::unimplemented("this node cannot rotate keys"));
        };
        let Ok(guard) = Arc::clone(&rotator.in_flight).try_lock_owned() else {
            return Err(tonic::Status::failed_precondition(
                "a key rotation is already in flight on this node",
            ));
        };
        let (tx, rx) = mpsc::channel(32);
        let this = RotationHandle {
            proposer: self.proposer.clone(),
            sm: self.sm.clone(),
            me,
            target,
            addr,
            rotator,
        };
        tokio::spawn(async move {
            let _guard = guard;
            let result = this.run(&allowed, &kinds, window, &tx).await;
            if let Err(status) = result {
                tracing::warn!(node_id = this.target, error = %status.message(), "key rotation stopped");
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// The Raft address of member `id` (voter or learner).
    fn member_address(&self, id: NodeId) -> Result<String, tonic::Status> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .ok_or_else(|| {
                tonic::Status::failed_precondition(format!(
                    "authority node {id} is not a member of the cluster"
                ))
            })
    }
}

/// What the rotation task holds (it outlives the call).
struct RotationHandle {
    proposer: crate::Proposer,
    sm: crate::store::StateMachineStore,
    /// The leader (this node).
    me: NodeId,
    /// The member whose keys rotate.
    target: NodeId,
    /// Its Raft address.
    addr: String,
    rotator: Rotator,
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

    fn key_records(&self) -> Result<Vec<KeyRecord>, tonic::Status> {
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
                node_id: self.target,
                detail,
            }))
            .await;
    }

    /// The member stages new keys of `kinds` and returns their public halves: this node
    /// directly, another member over `PrepareKeys` (retried: it is idempotent).
    async fn stage(&self, kinds: &[KeyKind]) -> Result<Vec<Prepared>, tonic::Status> {
        if self.target == self.me {
            return self.rotator.sync.prepare(kinds).await.map_err(internal);
        }
        let mut tries = 0;
        loop {
            match crate::net::prepare_keys(&self.rotator.peers, self.target, &self.addr, kinds)
                .await
            {
                Ok(p)
                    if p.len() == kinds.len() && p.iter().zip(kinds).all(|(p, k)| p.kind == *k) =>
                {
                    return Ok(p);
                }
                Ok(_) => return Err(internal("the member prepared other keys than asked")),
                Err(s) if s.code() == tonic::Code::Unavailable && tries + 1 < PREPARE_TRIES => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(tries))).await;
                }
                Err(s) => {
                    return Err(tonic::Status::unavailable(format!(
                        "node {} did not prepare its keys: {}",
                        self.target,
                        s.message()
                    )));
                }
            }
        }
    }

    /// Publishes the member's staged key, or resumes with it if an interrupted rotation
    /// already published it.
    async fn publish(
        &self,
        allowed: &Allowed,
        prepared: &Prepared,
        tx: &Events,
    ) -> Result<Step, tonic::Status> {
        let kind = prepared.kind;
        let records = self.key_records()?;
        let mine = |k: &&KeyRecord| k.authority == self.target && k.kind == kind;
        let old = records
            .iter()
            .filter(mine)
            .find(|k| k.public_der == prepared.current)
            .map(|k| k.id);
        let resumed = records
            .iter()
            .filter(mine)
            .find(|k| {
                k.public_der == prepared.staged
                    && matches!(k.status, KeyStatus::Published | KeyStatus::Active)
            })
            .map(|k| (k.id, k.published_ms));
        let (new, published_ms, how) = match resumed {
            Some((id, at)) => (id, at, "resumed"),
            None => {
                let outcome = self
                    .propose(
                        allowed,
                        Op::PublishKey {
                            authority: self.target,
                            kind,
                            public_der: prepared.staged.clone(),
                            not_after_ms: prepared.not_after_ms,
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
            new_public: prepared.staged.clone(),
            published_ms,
            stale,
        };
        self.emit(tx, &step, how, "in the bundle; not signing yet".into())
            .await;
        Ok(step)
    }

    /// Waits until the member signs with the new key of `step` (it swaps when it applies the
    /// activation).
    async fn confirm_swap(&self, step: &Step) -> Result<(), tonic::Status> {
        let deadline = tokio::time::Instant::now() + SWAP_TIMEOUT;
        loop {
            let signing = if self.target == self.me {
                self.rotator.sync.sync().await.map_err(internal)?;
                self.rotator.sync.signing(&[step.kind]).map_err(internal)
            } else {
                crate::net::signing_keys(&self.rotator.peers, self.target, &self.addr, &[step.kind])
                    .await
            };
            match signing {
                Ok(keys)
                    if keys
                        .iter()
                        .any(|(k, p)| *k == step.kind && *p == step.new_public) =>
                {
                    return Ok(());
                }
                Ok(_) => {}
                Err(s) => {
                    tracing::debug!(node_id = self.target, error = %s.message(), "asking which keys a member signs with")
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(tonic::Status::deadline_exceeded(format!(
                    "node {} did not start signing with its new {} key within {}s; both keys \
                     stay active until it does and the next rotate-keys retires the old one",
                    self.target,
                    kind_name(step.kind),
                    SWAP_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Activates the new key, waits until the member signs with it, retires the old one.
    async fn activate(
        &self,
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
        self.confirm_swap(step).await?;
        self.emit(
            tx,
            step,
            "activated",
            format!("node {} signs with the new key", self.target),
        )
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
        if self.target == self.me {
            self.rotator.sync.sync().await.map_err(internal)?;
        }
        self.emit(
            tx,
            step,
            "retired",
            format!(
                "old key verifies only what it signed before; node {} destroys its private key",
                self.target
            ),
        )
        .await;
        Ok(())
    }

    async fn run(
        &self,
        allowed: &Allowed,
        kinds: &[KeyKind],
        window: Duration,
        tx: &Events,
    ) -> Result<(), tonic::Status> {
        let prepared = self.stage(kinds).await?;
        let mut steps = Vec::with_capacity(prepared.len());
        for p in &prepared {
            steps.push(self.publish(allowed, p, tx).await?);
        }
        // One window for all kinds, counted from the latest publication.
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let until = steps
            .iter()
            .map(|s| s.published_ms.saturating_add(window_ms))
            .max()
            .unwrap_or(0);
        let wait = until.saturating_sub(now_ms());
        for step in &steps {
            self.emit(
                tx,
                step,
                "window",
                format!("propagating for {} ms before it signs", wait),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(wait)).await;
        for step in &steps {
            self.activate(allowed, step, tx).await?;
        }
        for step in &steps {
            self.emit(tx, step, "done", String::new()).await;
        }
        tracing::info!(
            node_id = self.target,
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
