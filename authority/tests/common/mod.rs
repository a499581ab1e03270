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

/// Waits until every running node has applied everything the leader has applied, then checks
/// they all hold the same audit log, and returns it. (A follower may keep an uncommitted entry
/// from an old term in its log until a new entry overwrites it; that is not divergence, so the
/// leader's applied index is the target, not the longest log.)
pub(crate) async fn try_converged(c: &Cluster) -> Result<Vec<String>, String> {
    let leader = c.leader(&[], T).await.map_err(|e| e.to_string())?;
    let idx = c
        .raft(leader)
        .map_err(|e| e.to_string())?
        .metrics()
        .borrow()
        .last_applied
        .map_or(0, |l| l.index);
    c.wait_applied(idx, T).await.map_err(|e| e.to_string())?;
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
