//! The authority's `WatchSched` stream: snapshots assembled from their parts, in a task of its
//! own, handed to the daemon's loop over a channel. An authority that answers `Unimplemented`
//! (older than the stream) is reported as such, and the daemon goes back to polling.

use std::time::Duration;

use ringzero_proto::client::{AuthorityClient, ClientError};
use ringzero_proto::pb;
use tokio::sync::mpsc;

use super::convert::Snapshot;

/// Bounds on one assembled snapshot, above the authority's own caps (10,000 jobs, 100,000
/// allocations): a snapshot beyond them ends the stream.
const MAX_JOBS: usize = 10_000;
const MAX_ALLOCS: usize = 100_000;
const MAX_NODES: usize = 100_000;
/// The authority sends a heartbeat every 10 s when idle: silence for this long means the
/// stream is dead.
pub(crate) const SILENCE: Duration = Duration::from_secs(30);

/// A complete snapshot, and the allocation revision it was read at.
#[derive(Debug, Clone, Default)]
pub(crate) struct Watched {
    pub(crate) snapshot: Snapshot,
    pub(crate) allocs_revision: u64,
}

pub(crate) enum Msg {
    Snapshot(Box<Watched>),
    /// A heartbeat: the last snapshot stands.
    Alive,
    /// The stream ended (`None`: cleanly).
    Ended(Option<String>),
}

/// Parts of one snapshot being put together.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    current: Option<(pb::SchedSnapshot, Watched)>,
}

impl Assembler {
    /// Adds a part; a complete snapshot when it was the last one.
    pub(crate) fn push(&mut self, part: pb::SchedSnapshot) -> Result<Option<Watched>, String> {
        let (head, w) = self.current.get_or_insert_with(|| {
            let w = Watched {
                snapshot: Snapshot {
                    health: pb::ListNodeHealthReply {
                        nodes: Vec::new(),
                        tracking_since_ms: part.tracking_since_ms,
                    },
                    ..Default::default()
                },
                allocs_revision: part.allocs_revision,
            };
            (part.clone(), w)
        });
        if part.sequence != head.sequence {
            return Err("a snapshot's parts were interleaved with another's".into());
        }
        if head.truncated {
            return Err(format!(
                "the authority holds more than {MAX_ALLOCS} allocations: refusing to plan from a partial view"
            ));
        }
        let s = &mut w.snapshot;
        if s.jobs.len() + part.jobs.len() > MAX_JOBS
            || s.allocs.len() + part.allocs.len() > MAX_ALLOCS
            || s.health.nodes.len() + part.nodes.len() > MAX_NODES
        {
            return Err("a snapshot larger than any the authority sends".into());
        }
        s.jobs.extend(part.jobs);
        s.allocs.extend(part.allocs);
        s.health.nodes.extend(part.nodes);
        if !part.complete {
            return Ok(None);
        }
        Ok(self.current.take().map(|(_, w)| w))
    }
}

/// Opens the stream; `Ok(None)` when the authority does not know it (`Unimplemented`).
pub(crate) async fn open(
    client: &mut AuthorityClient,
    namespace: Option<&str>,
) -> Result<Option<tonic::Streaming<pb::SchedSnapshot>>, ClientError> {
    let namespace = namespace.unwrap_or_default().to_owned();
    let opened = client
        .call(|mut c| {
            let namespace = namespace.clone();
            async move { c.watch_sched(pb::WatchSchedRequest { namespace }).await }
        })
        .await;
    match opened {
        Ok(s) => Ok(Some(s)),
        Err(ClientError::Status {
            code: tonic::Code::Unimplemented,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `stream` until it ends, sending each complete snapshot (and heartbeats) to `tx`.
pub(crate) async fn pump(mut stream: tonic::Streaming<pb::SchedSnapshot>, tx: mpsc::Sender<Msg>) {
    let mut parts = Assembler::default();
    let end = loop {
        let next = tokio::time::timeout(SILENCE, stream.message()).await;
        let msg = match next {
            Err(_) => break Some(format!("no message for {SILENCE:?}")),
            Ok(Ok(None)) => break None,
            Ok(Err(status)) => break Some(ClientError::from(status).to_string()),
            Ok(Ok(Some(part))) if part.heartbeat => Msg::Alive,
            Ok(Ok(Some(part))) => match parts.push(part) {
                Ok(Some(w)) => Msg::Snapshot(Box::new(w)),
                Ok(None) => continue,
                Err(e) => break Some(e),
            },
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    };
    let _ = tx.send(Msg::Ended(end)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_make_one_snapshot_and_interleaving_is_refused() {
        let mut a = Assembler::default();
        let first = pb::SchedSnapshot {
            sequence: 1,
            allocs_revision: 9,
            tracking_since_ms: 5,
            jobs: vec![pb::JobStatus::default()],
            ..Default::default()
        };
        assert!(a.push(first).unwrap().is_none());
        let last = pb::SchedSnapshot {
            sequence: 1,
            allocs: vec![pb::Alloc::default(); 2],
            nodes: vec![pb::NodeHealth::default()],
            complete: true,
            ..Default::default()
        };
        let w = a.push(last).unwrap().unwrap();
        assert_eq!(w.allocs_revision, 9);
        assert_eq!(w.snapshot.health.tracking_since_ms, 5);
        assert_eq!((w.snapshot.jobs.len(), w.snapshot.allocs.len()), (1, 2));
        assert_eq!(w.snapshot.health.nodes.len(), 1);
        let mut a = Assembler::default();
        a.push(pb::SchedSnapshot {
            sequence: 2,
            ..Default::default()
        })
        .unwrap();
        assert!(
            a.push(pb::SchedSnapshot {
                sequence: 3,
                complete: true,
                ..Default::default()
            })
            .is_err()
        );
        let mut a = Assembler::default();
        assert!(
            a.push(pb::SchedSnapshot {
                sequence: 1,
                truncated: true,
                complete: true,
                ..Default::default()
            })
            .is_err()
        );
    }
}
