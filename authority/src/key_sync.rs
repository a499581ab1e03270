//! A node's own side of a key rotation, whoever leads it: staging new keys (`PrepareKeys`, or
//! the leader's own rotation) and swapping to them once the replicated state activates them.
//!
//! The private halves never leave the node: [`KeySync::prepare`] generates and stages them
//! (`keys::staging`, 0600, fsynced) and returns only public halves. The leader publishes them,
//! waits one propagation window and activates them through Raft; every node watches its
//! applied key records ([`spawn_watch`]) and, when a key staged in its `keys/next/` is active,
//! promotes the files, swaps [`CurrentKeys`] (and, for a CA, re-issues its own SVID), then
//! destroys the old key's files once its record is retired. The decision depends only on the
//! replicated state, so the leader's own rotation and a follower's take the same path, and a
//! node that crashed between the activation and its swap promotes at its next start.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ringzero_policy::TrustDomain;
use ringzero_policy::tls::RotatingCert;
use serde::{Deserialize, Serialize};

use crate::command::{KeyKind, KeyStatus};
use crate::keys::{ALL_KINDS, CurrentKeys, KeyError, KeyFiles, NodeKeys, kind_name};
use crate::store::StateMachineStore;
use crate::{KeyRecord, NodeId, StateError};

/// What the leader asks a member to prepare (postcard inside `RaftPayload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PrepareRequest {
    pub(crate) kinds: Vec<KeyKind>,
}

/// The public halves of one prepared key, and of the key it replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Prepared {
    pub(crate) kind: KeyKind,
    /// The staged key's public half, as published in the bundle.
    pub(crate) staged: Vec<u8>,
    /// The public half of the key the node signs with now.
    pub(crate) current: Vec<u8>,
    pub(crate) not_after_ms: u64,
}

/// Errors staging or swapping keys: this node's problem, never the caller's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum KeySyncError {
    #[error("{0}")]
    Keys(#[from] KeyError),
    #[error("state: {0}")]
    State(#[from] StateError),
    #[error("own SVID: {0}")]
    Svid(String),
}

/// Who may ask this node to prepare keys: a current member that is the leader this node
/// knows, and not this node itself (its own rotation does not go over the network).
pub(crate) fn may_prepare(
    sender: NodeId,
    members: &[NodeId],
    leader: Option<NodeId>,
    me: NodeId,
) -> Result<(), String> {
    if !members.contains(&sender) {
        return Err(format!("authority node {sender} is not a member"));
    }
    if sender == me {
        return Err("a node prepares its own keys without asking itself".into());
    }
    if leader != Some(sender) {
        return Err(format!(
            "only the leader asks for keys; node {sender} is not the leader this node knows ({})",
            leader.map_or("none".into(), |l| l.to_string())
        ));
    }
    Ok(())
}

/// What happens to a key staged in `keys/next/`, by its record in the replicated state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StagedFate {
    /// Active: promote it, sign with it.
    Promote,
    /// Not published yet, or published and waiting for its window: keep signing with the old.
    Keep,
    /// Retired or compromised before it ever signed: never use it.
    Discard,
}

/// The fate of `node`'s staged key of `kind` whose public half is `public`.
pub(crate) fn staged_fate(
    records: &[KeyRecord],
    node: NodeId,
    kind: KeyKind,
    public: &[u8],
) -> StagedFate {
    match records
        .iter()
        .find(|k| k.authority == node && k.kind == kind && k.public_der == public)
        .map(|k| k.status)
    {
        Some(KeyStatus::Active) => StagedFate::Promote,
        Some(KeyStatus::Retired | KeyStatus::Compromised) => StagedFate::Discard,
        Some(KeyStatus::Published) | None => StagedFate::Keep,
    }
}

/// Whether the key kept in `keys/old/` (public half `public`) may be destroyed: its record is
/// retired or compromised.
fn old_is_done(records: &[KeyRecord], node: NodeId, kind: KeyKind, public: &[u8]) -> bool {
    records.iter().any(|k| {
        k.authority == node
            && k.kind == kind
            && k.public_der == public
            && matches!(k.status, KeyStatus::Retired | KeyStatus::Compromised)
    })
}

/// What one settlement of the files did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Settled {
    pub(crate) promoted: Vec<KeyKind>,
    pub(crate) destroyed: Vec<KeyKind>,
}

/// Brings the key files of `node` in line with the replicated `records`: a staged key that
/// is active is promoted (after destroying any leftover in `old/`, which signs nothing), one
/// retired before it signed is discarded, an old key whose record is retired is destroyed.
/// Run at start before the keys are loaded, and by [`KeySync::sync`].
pub(crate) fn settle_files(
    files: &KeyFiles,
    records: &[KeyRecord],
    node: NodeId,
) -> Result<Settled, KeyError> {
    let mut settled = Settled::default();
    for kind in ALL_KINDS {
        if files.is_staged(kind) {
            let staged = files.load_staged(kind, 0)?.public_of(kind)?;
            match staged_fate(records, node, kind, &staged) {
                StagedFate::Promote => {
                    files.destroy_old(kind);
                    files.promote(kind)?;
                    settled.promoted.push(kind);
                }
                StagedFate::Discard => {
                    files.discard_staged(kind);
                }
                StagedFate::Keep => {}
            }
        }
        if files.has_old(kind)
            && let Ok(old) = files.load_old(kind, 0).and_then(|k| k.public_of(kind))
            && old_is_done(records, node, kind, &old)
            && !files.destroy_old(kind).is_empty()
        {
            settled.destroyed.push(kind);
        }
    }
    Ok(settled)
}

/// A node's key files and the signers that use them, for staging and swapping at run time.
#[derive(Clone)]
pub(crate) struct KeySync {
    pub(crate) files: KeyFiles,
    pub(crate) td: TrustDomain,
    pub(crate) node_id: NodeId,
    /// The node's own SVID, re-issued when its CA is promoted.
    pub(crate) cert: Arc<RotatingCert>,
    pub(crate) keys: CurrentKeys,
    pub(crate) sm: StateMachineStore,
    /// Staging and promotion never interleave (the watcher, a prepare, the leader's rotation).
    pub(crate) lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for KeySync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySync")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl KeySync {
    fn records(&self) -> Result<Vec<KeyRecord>, KeySyncError> {
        Ok(self.sm.reader().and_then(|r| r.keys())?)
    }

    /// Stages a new key of each of `kinds` in `keys/next/` (or keeps the one already staged,
    /// unless the state retired it) and returns the public halves. Idempotent: asked twice, it
    /// returns the same staged keys. At most one staged key per kind exists at any time.
    pub(crate) async fn prepare(&self, kinds: &[KeyKind]) -> Result<Vec<Prepared>, KeySyncError> {
        let _held = self.lock.lock().await;
        let records = self.records()?;
        let current = self.keys.load();
        let mut fresh: Option<NodeKeys> = None;
        let mut out = Vec::with_capacity(kinds.len());
        for &kind in kinds {
            if self.files.is_staged(kind) {
                let staged = self.files.load_staged(kind, 0)?.public_of(kind)?;
                if staged_fate(&records, self.node_id, kind, &staged) == StagedFate::Discard {
                    self.files.discard_staged(kind);
                }
            }
            if !self.files.is_staged(kind) {
                let keys = match fresh.take() {
                    Some(k) => k,
                    None => NodeKeys::generate(&self.td, self.node_id, SystemTime::now())?,
                };
                // Durable on this node before anyone learns of it.
                self.files.stage(&keys, kind)?;
                fresh = Some(keys);
            }
            let staged = self.files.load_staged(kind, 0)?;
            let not_after_ms = match kind {
                KeyKind::X509Ca => ms(staged.ca.not_after()),
                // Like the CA, a year from its generation; the same on every call.
                _ => ms(self.files.staged_at(kind).unwrap_or_else(SystemTime::now)
                    + crate::keys::CA_TTL),
            };
            out.push(Prepared {
                kind,
                staged: staged.public_of(kind)?,
                current: current.public_of(kind)?,
                not_after_ms,
            });
        }
        Ok(out)
    }

    /// The public halves of the keys this node signs with now.
    pub(crate) fn signing(&self, kinds: &[KeyKind]) -> Result<Vec<(KeyKind, Vec<u8>)>, KeyError> {
        let current = self.keys.load();
        kinds
            .iter()
            .map(|k| Ok((*k, current.public_of(*k)?)))
            .collect()
    }

    /// Settles the files against the applied key records and, when a key was promoted,
    /// signs with it from now on (a new CA also re-issues the node's own SVID).
    pub(crate) async fn sync(&self) -> Result<Settled, KeySyncError> {
        let _held = self.lock.lock().await;
        let records = self.records()?;
        let settled = settle_files(&self.files, &records, self.node_id)?;
        if settled.promoted.is_empty() {
            return Ok(settled);
        }
        let mut keys = self.files.load(0)?;
        let biscuit = keys.biscuit.public().key.to_bytes().to_vec();
        if let Some(id) = records
            .iter()
            .find(|k| k.kind == KeyKind::Biscuit && k.public_der == biscuit)
            .and_then(|k| u32::try_from(k.id).ok())
        {
            keys.set_biscuit_key_id(id)?;
        }
        if settled.promoted.contains(&KeyKind::X509Ca) {
            // Presented from the next handshake on (server and Raft client alike); open
            // connections keep the old SVID, still valid.
            let (chain, key) = crate::node::own_svid(&keys, &self.td, self.node_id)
                .map_err(|e| KeySyncError::Svid(e.to_string()))?;
            self.cert
                .replace(chain, key)
                .map_err(|e| KeySyncError::Svid(e.to_string()))?;
        }
        self.keys.replace(keys);
        tracing::info!(
            node_id = self.node_id,
            kinds = ?settled.promoted.iter().map(|k| kind_name(*k)).collect::<Vec<_>>(),
            "signing with newly activated keys"
        );
        Ok(settled)
    }
}

/// Runs [`KeySync::sync`] whenever the state machine applies an entry that may change a key
/// record (and every second, in case a notification was missed), until `stopping`.
pub(crate) fn spawn_watch(sync: KeySync, mut stopping: tokio::sync::watch::Receiver<bool>) {
    let mut applied = sync.sm.watch_trust();
    tokio::spawn(async move {
        loop {
            match sync.sync().await {
                Ok(s) if !s.destroyed.is_empty() => tracing::info!(
                    node_id = sync.node_id,
                    kinds = ?s.destroyed.iter().map(|k| kind_name(*k)).collect::<Vec<_>>(),
                    "retired keys destroyed"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "key sync failed; retrying"),
            }
            tokio::select! {
                r = applied.changed() => if r.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests;
