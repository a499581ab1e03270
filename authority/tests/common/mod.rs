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

/// Waits until every running node has applied everything any of them has in its log, then
/// checks they all hold the same audit log, and returns it.
pub(crate) async fn try_converged(c: &Cluster) -> Result<Vec<String>, String> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let idx = c.max_log_index();
        c.wait_applied(idx, T).await.map_err(|e| e.to_string())?;
        if c.max_log_index() == idx {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("log kept growing".into());
        }
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
