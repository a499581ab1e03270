//! Helpers shared by the cluster tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use ringzero_authority::testing::Cluster;
use ringzero_authority::{NodeId, StoredAudit};

pub(crate) const T: Duration = Duration::from_secs(10);

pub(crate) fn request_ids(c: &Cluster, id: NodeId) -> Vec<String> {
    let r = c.reader(id).expect("reader");
    r.audit(0, usize::MAX)
        .expect("audit")
        .into_iter()
        .map(|a: StoredAudit| a.record.request_id)
        .collect()
}

/// Waits until every running node follows one leader and has applied exactly what that leader
/// has applied, then checks they all hold the same audit log, and returns it. (A follower may
/// keep an uncommitted entry from an old term in its log until a new entry overwrites it; that
/// is not divergence, so applied indexes are compared, not log lengths.)
pub(crate) async fn try_converged(c: &Cluster) -> Result<Vec<String>, String> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let metrics: Vec<_> = c
            .running()
            .into_iter()
            .filter_map(|id| c.raft(id).ok().map(|r| r.metrics().borrow().clone()))
            .collect();
        let leader = metrics.first().and_then(|m| m.current_leader);
        // Metrics are published after the fact, so applied ids are read from each node's
        // durable state: a write that returned is in the leader's, and every node must match it.
        let applied: Vec<_> = c
            .running()
            .into_iter()
            .map(|id| {
                c.reader(id)
                    .ok()
                    .and_then(|r| r.last_applied().ok())
                    .flatten()
            })
            .collect();
        let leader_applied = leader
            .and_then(|l| c.reader(l).ok())
            .and_then(|r| r.last_applied().ok())
            .flatten();
        let settled = leader.is_some()
            && metrics.iter().all(|m| m.current_leader == leader)
            && metrics.iter().any(|m| Some(m.id) == leader)
            && applied.iter().all(|a| *a == leader_applied);
        if settled {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "did not settle: {:?}",
                metrics
                    .iter()
                    .map(|m| (m.id, m.current_leader, m.last_applied))
                    .collect::<Vec<_>>()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ids: Vec<NodeId> = c.running();
    let first = request_ids(c, ids[0]);
    for id in &ids[1..] {
        let other = request_ids(c, *id);
        if other != first {
            return Err(format!(
                "node {id} diverges from node {}: {other:?} vs {first:?}",
                ids[0]
            ));
        }
    }
    Ok(first)
}

pub(crate) async fn converged(c: &Cluster) -> Vec<String> {
    try_converged(c).await.expect("cluster converges")
}
