//! `WatchSched`: the scheduler's view, pushed instead of polled. A scheduler that polled
//! `ListJobs`, `ListAllocs` and `ListNodeHealth` every second committed three audit records a
//! second to Raft, even on an idle cluster; this stream is gated and audited once, at open,
//! exactly as those three reads are (`sched:read` on the scope, `node:read` on `node`), and
//! then sends a complete snapshot at open and after each change:
//!
//! - of a job (`ctr:jobs`) or of any allocation (`ctr:alloc-changes`, agents' reports
//!   included): two counters read per wake, no scan;
//! - of a node's status, drain, liveness or announced capacity: the node list is rebuilt per
//!   wake (the nodes table and the leader's in-memory [`Health`](super::health::Health)) and
//!   compared with the last one sent, ignoring `last_seen_ms` while a node is live (a feed
//!   heartbeat is not a change).
//!
//! Wakes come from the state machine (`watch_applied`), the health tracker's change signal and
//! Raft's server metrics (leadership), never from polling; changes are coalesced for at least
//! [`COALESCE`] (longer when building the last snapshot took long, so a busy cluster costs the
//! leader at most about a third of one core per watcher). Idle, a heartbeat goes out every
//! [`HEARTBEAT`]. On every wake the caller is checked again through the gate (revoked
//! capability or certificate, removed or suspended principal, expired certificate): a refusal
//! ends the stream with `PermissionDenied`, and that denial is recorded like any other.
//! When this node stops leading (or its term changes) the stream ends `Unavailable`.
//!
//! **Size**: a snapshot is sent in parts of at most about [`PART_BYTES`] (one item may carry it
//! over by its own size: a job spec is at most 64 KiB), well under the service's 4 MiB encoding
//! limit and the client's 4 MiB decoding limit, so no limit is raised. A whole snapshot is
//! bounded by the state's own caps: 10,000 jobs (specs ≤ 64 KiB: ≤ 640 MiB in the very worst
//! case, a few MiB in practice), 100,000 allocations (≤ ~0.5 KiB each: ≤ ~50 MiB) and the
//! enrolled nodes.

use std::time::{Duration, Instant};

use ringzero_policy::{Operation, Resource};
use ringzero_proto::pb;

use super::allocs::alloc_to_pb;
use super::jobs::status_to_pb;
use super::nodes::{invalid, status_name};
use super::{AuthorityService, status_of};
use crate::command::limits;

/// Changes are gathered this long before a snapshot is built.
pub(crate) const COALESCE: Duration = Duration::from_millis(100);
/// An idle stream sends a heartbeat this often.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(10);
/// The encoded size a part is cut at.
pub(crate) const PART_BYTES: usize = 1 << 20;
/// The longest pause between snapshots that a slow build may impose.
const MAX_COALESCE: Duration = Duration::from_secs(5);

pub(crate) type SchedStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::SchedSnapshot, tonic::Status>> + Send>,
>;

type WatchTx = tokio::sync::mpsc::Sender<Result<pb::SchedSnapshot, tonic::Status>>;

/// The most `WatchSched` streams one authority process serves at once: each rebuilds a
/// snapshot on every change, so their number bounds the leader's work (a scheduler per
/// namespace, and standbys, fit well within it).
const MAX_WATCHES: usize = 64;

/// The slots of [`MAX_WATCHES`].
fn watch_slots() -> std::sync::Arc<tokio::sync::Semaphore> {
    static SLOTS: std::sync::OnceLock<std::sync::Arc<tokio::sync::Semaphore>> =
        std::sync::OnceLock::new();
    SLOTS
        .get_or_init(|| std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_WATCHES)))
        .clone()
}

impl AuthorityService {
    pub(crate) async fn watch_sched_impl(
        &self,
        req: tonic::Request<pb::WatchSchedRequest>,
    ) -> Result<tonic::Response<SchedStream>, tonic::Status> {
        self.require_leader()?;
        let namespace = req.get_ref().namespace.clone();
        let scope = if namespace.is_empty() {
            Resource::parse("")
        } else {
            Resource::from_segments(&["ns", &namespace])
        }
        .map_err(invalid)?;
        let nodes = super::res("node")?;
        let mut allowed = self
            .gate
            .check(&req, Operation::SchedRead, &scope, None)
            .await?;
        self.gate
            .check(&req, Operation::NodeRead, &nodes, None)
            .await?;
        // One record for the stream's life: what it reads, and that it is a watch.
        allowed
            .audit
            .details
            .push(("action".into(), "watch_sched".into()));
        allowed
            .audit
            .details
            .push(("also".into(), "node:read node".into()));
        // Decided before a slot is taken, so callers without the rights cannot hold them.
        let Ok(slot) = watch_slots().try_acquire_owned() else {
            return Err(tonic::Status::resource_exhausted(format!(
                "at most {MAX_WATCHES} scheduler watches at once"
            )));
        };
        self.gate.record(&allowed).await?;
        let term = self.raft.metrics().borrow().current_term;
        // The caller's metadata and peer, to decide again on every wake.
        let (metadata, extensions, _) = req.into_parts();
        let watch = Watch {
            service: Snapshotter {
                sm: self.sm.clone(),
                health: self.health.clone(),
                namespace,
                scope: scope.clone(),
            },
            gate: self.gate.clone(),
            raft: self.raft.clone(),
            stopping: self.stopping.clone(),
            caller: tonic::Request::from_parts(metadata, extensions, ()),
            scope,
            nodes,
            term,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            watch.run(tx).await;
            drop(slot);
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Reads what a snapshot holds.
pub(crate) struct Snapshotter {
    pub(crate) sm: crate::store::StateMachineStore,
    pub(crate) health: super::health::Health,
    /// Empty: every namespace.
    pub(crate) namespace: String,
    pub(crate) scope: Resource,
}

/// What decides whether a new snapshot is due: the two counters, and the nodes as the
/// scheduler sees them (a live node's `last_seen_ms` left out).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fingerprint {
    jobs_revision: u64,
    allocs_revision: u64,
    tracking_since_ms: u64,
    nodes: Vec<pb::NodeHealth>,
}

/// The nodes as `ListNodeHealth` shows them at leader term `term`, and since when this leader
/// tracks feeds. Without `with_node_api` the node-API addresses stay unset (the scheduler does
/// not plan with them, so their changes must not wake it).
pub(crate) fn node_health(
    reader: &crate::StateReader,
    health: &super::health::Health,
    term: u64,
    with_node_api: bool,
) -> Result<(u64, Vec<pb::NodeHealth>), tonic::Status> {
    let (tracking_since_ms, mut seen) = health.view(term);
    let drains = reader.node_drains().map_err(status_of)?;
    let nodes = reader
        .nodes()
        .map_err(status_of)?
        .into_iter()
        .map(|n| {
            let v = seen.remove(&n.name).unwrap_or_default();
            let drain = drains.get(&n.name);
            pb::NodeHealth {
                status: status_name(n.status).into(),
                live: v.live,
                last_seen_ms: v.last_seen_ms,
                cpu_millis: v.capacity.cpu_millis,
                memory_mb: v.capacity.memory_mb,
                labels: v.capacity.labels.into_iter().collect(),
                node_api: if with_node_api {
                    v.capacity.node_api
                } else {
                    String::new()
                },
                drained: drain.is_some(),
                drained_since_ms: drain.map_or(0, |d| d.since_ms),
                drained_by: drain.map(|d| d.by.clone()).unwrap_or_default(),
                name: n.name,
            }
        })
        .collect();
    Ok((tracking_since_ms, nodes))
}

impl Snapshotter {
    /// The current fingerprint, with the node list it was computed from.
    pub(crate) fn fingerprint(
        &self,
        term: u64,
    ) -> Result<(Fingerprint, Vec<pb::NodeHealth>), tonic::Status> {
        let reader = self.sm.reader().map_err(status_of)?;
        let (tracking_since_ms, nodes) = node_health(&reader, &self.health, term, false)?;
        let masked = nodes
            .iter()
            .map(|n| pb::NodeHealth {
                last_seen_ms: if n.live { 0 } else { n.last_seen_ms },
                ..n.clone()
            })
            .collect();
        Ok((
            Fingerprint {
                jobs_revision: reader.jobs_revision().map_err(status_of)?,
                allocs_revision: reader.alloc_changes_revision().map_err(status_of)?,
                tracking_since_ms,
                nodes: masked,
            },
            nodes,
        ))
    }

    /// A complete snapshot (numbered `sequence`) in parts, read at `print`.
    pub(crate) fn parts(
        &self,
        sequence: u64,
        print: &Fingerprint,
        nodes: Vec<pb::NodeHealth>,
    ) -> Result<Vec<pb::SchedSnapshot>, tonic::Status> {
        let reader = self.sm.reader().map_err(status_of)?;
        let jobs: Vec<pb::JobStatus> = reader
            .jobs()
            .map_err(status_of)?
            .iter()
            .filter(|r| r.job.resource().is_ok_and(|res| self.scope.covers(&res)))
            .map(status_to_pb)
            .collect();
        let found = if self.namespace.is_empty() {
            reader.allocs(limits::MAX_ALLOCS + 1)
        } else {
            reader.allocs_of_job(&self.namespace, None, limits::MAX_ALLOCS + 1)
        }
        .map_err(status_of)?;
        let truncated = found.len() > limits::MAX_ALLOCS;
        let allocs: Vec<pb::Alloc> = found
            .iter()
            .filter(|a| self.namespace.is_empty() || a.namespace == self.namespace)
            .take(limits::MAX_ALLOCS)
            .map(alloc_to_pb)
            .collect();
        drop(reader);
        let first = pb::SchedSnapshot {
            sequence,
            tracking_since_ms: print.tracking_since_ms,
            allocs_revision: print.allocs_revision,
            jobs_revision: print.jobs_revision,
            truncated,
            ..Default::default()
        };
        Ok(split(first, jobs, allocs, nodes))
    }
}

/// Cuts a snapshot into parts of about [`PART_BYTES`]; `first` carries the header fields.
pub(crate) fn split(
    first: pb::SchedSnapshot,
    jobs: Vec<pb::JobStatus>,
    allocs: Vec<pb::Alloc>,
    nodes: Vec<pb::NodeHealth>,
) -> Vec<pb::SchedSnapshot> {
    use prost::Message;
    let sequence = first.sequence;
    let mut parts = Vec::new();
    let mut current = first;
    let mut size = 0usize;
    // Field tag and length prefix: at most 1 + 10 bytes per item.
    let mut room = |current: &mut pb::SchedSnapshot, size: &mut usize, len: usize| {
        let len = len + 11;
        if *size > 0 && *size + len > PART_BYTES {
            parts.push(std::mem::replace(
                current,
                pb::SchedSnapshot {
                    sequence,
                    ..Default::default()
                },
            ));
            *size = 0;
        }
        *size += len;
    };
    for j in jobs {
        room(&mut current, &mut size, j.encoded_len());
        current.jobs.push(j);
    }
    for a in allocs {
        room(&mut current, &mut size, a.encoded_len());
        current.allocs.push(a);
    }
    for n in nodes {
        room(&mut current, &mut size, n.encoded_len());
        current.nodes.push(n);
    }
    current.complete = true;
    parts.push(current);
    parts
}

/// One open watch.
struct Watch {
    service: Snapshotter,
    gate: std::sync::Arc<crate::gate::Gate>,
    raft: crate::Raft,
    stopping: tokio::sync::watch::Receiver<bool>,
    /// The opening call's metadata and peer, without its message.
    caller: tonic::Request<()>,
    scope: Resource,
    nodes: Resource,
    term: u64,
}

fn shutting_down() -> tonic::Status {
    tonic::Status::unavailable("the authority is shutting down")
}

impl Watch {
    async fn run(self, tx: WatchTx) {
        if let Err(status) = self.watch(&tx).await {
            let _ = tx.send(Err(status)).await;
        }
    }

    /// Still the leader of the term the stream opened in, and the caller still allowed.
    async fn still_standing(&self) -> Result<(), tonic::Status> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(m.id) || m.current_term != self.term {
            return Err(tonic::Status::unavailable(
                "leadership changed; reconnect to the leader",
            ));
        }
        self.gate
            .check(&self.caller, Operation::SchedRead, &self.scope, None)
            .await?;
        self.gate
            .check(&self.caller, Operation::NodeRead, &self.nodes, None)
            .await?;
        Ok(())
    }

    async fn watch(&self, tx: &WatchTx) -> Result<(), tonic::Status> {
        let mut applied = self.service.sm.watch_applied();
        let mut health = self.service.health.watch_changes();
        let mut server = self.raft.server_metrics();
        let mut stopping = self.stopping.clone();
        let mut last: Option<Fingerprint> = None;
        let mut sequence = 0u64;
        let mut last_sent = Instant::now();
        let mut coalesce = COALESCE;
        loop {
            // Mark everything seen before reading, so a change during this pass wakes the next.
            applied.borrow_and_update();
            health.borrow_and_update();
            server.borrow_and_update();
            self.still_standing().await?;
            let started = Instant::now();
            let (print, nodes) = self.service.fingerprint(self.term)?;
            if last.as_ref() != Some(&print) {
                sequence += 1;
                for part in self.service.parts(sequence, &print, nodes)? {
                    if tx.send(Ok(part)).await.is_err() {
                        return Ok(());
                    }
                }
                last = Some(print);
                last_sent = Instant::now();
                coalesce = (started.elapsed() * 2).clamp(COALESCE, MAX_COALESCE);
            } else if last_sent.elapsed() >= HEARTBEAT {
                let beat = pb::SchedSnapshot {
                    sequence,
                    heartbeat: true,
                    complete: true,
                    ..Default::default()
                };
                if tx.send(Ok(beat)).await.is_err() {
                    return Ok(());
                }
                last_sent = Instant::now();
            }
            let beat_at = tokio::time::Instant::from_std(last_sent + HEARTBEAT);
            tokio::select! {
                r = applied.changed() => r.map_err(|_| shutting_down())?,
                r = health.changed() => r.map_err(|_| shutting_down())?,
                r = server.changed() => r.map_err(|_| shutting_down())?,
                () = tx.closed() => return Ok(()),
                _ = stopping.wait_for(|s| *s) => return Err(shutting_down()),
                () = tokio::time::sleep_until(beat_at) => continue,
            }
            // Gather what else changes meanwhile into the same snapshot.
            tokio::select! {
                () = tokio::time::sleep(coalesce) => {}
                () = tx.closed() => return Ok(()),
                _ = stopping.wait_for(|s| *s) => return Err(shutting_down()),
            }
        }
    }
}

#[cfg(test)]
#[path = "sched_watch_tests.rs"]
mod tests;
