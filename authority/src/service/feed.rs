//! `SyncEntries`: one agent's entry feed. Every change since the revision the agent already has,
//! then each new change as it is applied (woken by the state machine, no polling), the bundle
//! whenever it changes, the revoked capabilities and serials whenever they change, and the mesh
//! policies for the node's identities whenever they change, the node's allocations (with their
//! jobs' specs) whenever they change, with a heartbeat when idle. An open feed marks the node
//! live in the leader's [`Health`](super::health::Health), with the capacity it announced.

use std::collections::BTreeMap;

use ringzero_policy::NodeName;
use ringzero_proto::pb;

use super::entries::entry_to_pb;
use super::nodes::*;
use super::{AuthorityService, status_of};
use crate::command::NodeStatus;

impl AuthorityService {
    pub(crate) async fn sync_entries_impl(
        &self,
        req: tonic::Request<pb::SyncEntriesRequest>,
    ) -> Result<tonic::Response<SyncStream>, tonic::Status> {
        self.require_leader()?;
        let (name, allowed) = self.gate_agent(&req).await?;
        self.gate.record(&allowed).await?;
        let since = req.get_ref().since_revision;
        let capacity = super::health::Capacity::from_request(req.get_ref()).map_err(invalid)?;
        let term = self.raft.metrics().borrow().current_term;
        let guard = self.health.connected(term, name.as_str(), capacity);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let feed = Feed {
            stopping: self.stopping.clone(),
            sm: self.sm.clone(),
            service_bundle: self.bundle_source(),
            name,
            health: self.health.clone(),
            _guard: guard,
        };
        tokio::spawn(feed.run(since, tx));
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// One agent's entry feed.
struct Feed {
    stopping: tokio::sync::watch::Receiver<bool>,
    sm: crate::store::StateMachineStore,
    service_bundle: super::BundleSource,
    name: NodeName,
    health: super::health::Health,
    /// The node is live while its feed runs.
    _guard: super::health::FeedGuard,
}

/// Revoked capability ids and revoked serials, each with its expiry (unix ms).
type RevokedSets = (Vec<(Vec<u8>, u64)>, Vec<(Vec<u8>, u64)>);

type FeedTx = tokio::sync::mpsc::Sender<Result<pb::SyncEntriesEvent, tonic::Status>>;

impl Feed {
    async fn run(self, since: u64, tx: FeedTx) {
        if let Err(status) = self.feed(since, &tx).await {
            let _ = tx.send(Err(status)).await;
        }
    }

    async fn feed(&self, since: u64, tx: &FeedTx) -> Result<(), tonic::Status> {
        let mut applied = self.sm.watch_applied();
        let mut stopping = self.stopping.clone();
        let mut revision = since;
        let mut last_bundle: Option<Vec<u8>> = None;
        let mut last_revocations: Option<RevokedSets> = None;
        // The mesh policies are recomputed only when a policy or an entry changed.
        let mut mesh_seen: Option<(u64, u64)> = None;
        let mut last_mesh: Option<Vec<pb::MeshPolicy>> = None;
        // The allocations are recomputed only when the node's allocations or a job changed.
        let mut allocs_seen: Option<(u64, u64)> = None;
        let mut last_allocs: Option<pb::NodeAllocSet> = None;
        let mut first = true;
        // When this stream last sent anything: a heartbeat is due FEED_HEARTBEAT after it,
        // whether or not entries were applied meanwhile (applies that change nothing for this
        // node send nothing, and must not put the heartbeat off).
        let mut last_sent = tokio::time::Instant::now();
        loop {
            // Mark the current applied state seen before reading, so a change applied while
            // this pass reads wakes the next one.
            applied.borrow_and_update();
            let status = self
                .sm
                .reader()
                .map_err(status_of)?
                .node(self.name.as_str())
                .map_err(status_of)?;
            match status {
                Some(r) if r.status == NodeStatus::Active => {}
                Some(r) => {
                    return Err(tonic::Status::permission_denied(format!(
                        "node {} was {}",
                        self.name,
                        if r.status == NodeStatus::Banned {
                            "banned"
                        } else {
                            "evicted"
                        }
                    )));
                }
                None => {
                    return Err(tonic::Status::permission_denied(format!(
                        "node {} is not enrolled",
                        self.name
                    )));
                }
            }
            let bundle = (self.service_bundle)()?;
            let encoded = prost::Message::encode_to_vec(&bundle);
            let bundle_changed = last_bundle.as_deref() != Some(encoded.as_slice());
            let revocations = self
                .sm
                .reader()
                .map_err(status_of)?
                .revocations()
                .map_err(status_of)?;
            let serials = self
                .sm
                .reader()
                .map_err(status_of)?
                .revoked_serials()
                .map_err(status_of)?;
            let revocations = (revocations, serials);
            let revocations_changed = last_revocations.as_ref() != Some(&revocations);
            let mesh = self.mesh_if_changed(&mut mesh_seen, last_mesh.as_ref())?;
            let allocs = self.allocs_if_changed(&mut allocs_seen, last_allocs.as_ref())?;
            let mut sent_any = false;
            loop {
                let (upserts, removed, next) = self.changes(revision, first)?;
                let more = next.1;
                let send_bundle = bundle_changed && !sent_any;
                let send_revocations = revocations_changed && !sent_any;
                let send_mesh = mesh.is_some() && !sent_any;
                let send_allocs = allocs.is_some() && !sent_any;
                if upserts.is_empty()
                    && removed.is_empty()
                    && !first
                    && !send_bundle
                    && !send_revocations
                    && !send_mesh
                    && !send_allocs
                {
                    break;
                }
                let event = pb::SyncEntriesEvent {
                    upserts,
                    removed,
                    revision: next.0,
                    bundle: send_bundle.then(|| bundle.clone()),
                    revocations: send_revocations.then(|| pb::RevocationSet {
                        revocations: revocations
                            .0
                            .iter()
                            .map(|(id, expires_ms)| pb::Revocation {
                                id: id.clone(),
                                expires_ms: *expires_ms,
                            })
                            .collect(),
                        serials: revocations
                            .1
                            .iter()
                            .map(|(serial, not_after_ms)| pb::RevokedSerial {
                                serial: serial.clone(),
                                not_after_ms: *not_after_ms,
                            })
                            .collect(),
                    }),
                    synced: first && !more,
                    mesh_policies: send_mesh
                        .then(|| mesh.clone().map(|policies| pb::MeshPolicySet { policies }))
                        .flatten(),
                    allocs: send_allocs.then(|| allocs.clone()).flatten(),
                };
                if tx.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
                last_sent = tokio::time::Instant::now();
                revision = next.0;
                sent_any = true;
                self.health.seen(self.name.as_str());
                if !more {
                    first = false;
                    break;
                }
            }
            if bundle_changed {
                last_bundle = Some(encoded);
            }
            if revocations_changed {
                last_revocations = Some(revocations);
            }
            if let Some(m) = mesh {
                last_mesh = Some(m);
            }
            if let Some(a) = allocs {
                last_allocs = Some(a);
            }
            let idle = tokio::select! {
                changed = applied.changed() => {
                    if changed.is_err() {
                        return Err(tonic::Status::unavailable("the authority is shutting down"));
                    }
                    false
                }
                _ = tx.closed() => return Ok(()),
                _ = stopping.wait_for(|s| *s) => {
                    return Err(tonic::Status::unavailable("the authority is shutting down"));
                }
                () = tokio::time::sleep_until(last_sent + FEED_HEARTBEAT) => true,
            };
            if idle {
                // Nothing changed: say so, so the agent knows its revocations are current.
                let beat = pb::SyncEntriesEvent {
                    revision,
                    ..Default::default()
                };
                if tx.send(Ok(beat)).await.is_err() {
                    return Ok(());
                }
                last_sent = tokio::time::Instant::now();
                self.health.seen(self.name.as_str());
            }
        }
    }

    /// The node's mesh policies when they differ from `last` (always on the first call);
    /// `None` when nothing changed. Read only when a policy or an entry changed since `seen`.
    fn mesh_if_changed(
        &self,
        seen: &mut Option<(u64, u64)>,
        last: Option<&Vec<pb::MeshPolicy>>,
    ) -> Result<Option<Vec<pb::MeshPolicy>>, tonic::Status> {
        let reader = self.sm.reader().map_err(status_of)?;
        let now = (
            reader.mesh_revision().map_err(status_of)?,
            reader.entry_revision().map_err(status_of)?,
        );
        if *seen == Some(now) && last.is_some() {
            return Ok(None);
        }
        let policies = super::mesh::node_policies(&reader, self.name.as_str())?;
        *seen = Some(now);
        Ok((last != Some(&policies)).then_some(policies))
    }

    /// The node's allocations when they differ from `last` (always on the first call); `None`
    /// when nothing changed. Read only when the node's allocations or a job changed since
    /// `seen`.
    fn allocs_if_changed(
        &self,
        seen: &mut Option<(u64, u64)>,
        last: Option<&pb::NodeAllocSet>,
    ) -> Result<Option<pb::NodeAllocSet>, tonic::Status> {
        let reader = self.sm.reader().map_err(status_of)?;
        let now = (
            reader
                .node_alloc_revision(self.name.as_str())
                .map_err(status_of)?,
            reader.jobs_revision().map_err(status_of)?,
        );
        if *seen == Some(now) && last.is_some() {
            return Ok(None);
        }
        let set = super::allocs::node_alloc_set(&reader, self.name.as_str())?;
        *seen = Some(now);
        Ok((last != Some(&set)).then_some(set))
    }

    /// The entries changed after `revision` (all current ones when `full`), as upserts and
    /// removals, with the revision they bring the agent to and whether more remain.
    #[allow(clippy::type_complexity)]
    fn changes(
        &self,
        revision: u64,
        full: bool,
    ) -> Result<(Vec<pb::RegistrationEntry>, Vec<String>, (u64, bool)), tonic::Status> {
        let reader = self.sm.reader().map_err(status_of)?;
        if full && revision == 0 {
            let entries = reader.entries_of(self.name.as_str()).map_err(status_of)?;
            let top = reader.entry_revision().map_err(status_of)?;
            return Ok((
                entries
                    .iter()
                    .map(|e| entry_to_pb(&reader, e))
                    .collect::<Result<_, _>>()?,
                Vec::new(),
                (top, false),
            ));
        }
        let changes = reader
            .entry_changes_since(self.name.as_str(), revision, SYNC_CHUNK)
            .map_err(status_of)?;
        let more = changes.len() >= SYNC_CHUNK;
        let mut latest: BTreeMap<String, bool> = BTreeMap::new();
        let mut to = revision;
        for c in &changes {
            latest.insert(c.entry_id.clone(), c.removed);
            to = to.max(c.revision);
        }
        let mut upserts = Vec::new();
        let mut removed = Vec::new();
        for (id, gone) in latest {
            let current = if gone {
                None
            } else {
                reader.entry(&id).map_err(status_of)?
            };
            match current {
                Some(e) if e.parent == self.name.as_str() => {
                    upserts.push(entry_to_pb(&reader, &e)?)
                }
                _ => removed.push(id),
            }
        }
        Ok((upserts, removed, (to, more)))
    }
}
