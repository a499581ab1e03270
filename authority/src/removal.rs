//! A removed member destroys its own keys.
//!
//! After `authority remove N`, node N's CA, Biscuit, JWT and audit keys are retired in the
//! bundle, and nothing they sign after the removal opens anything on the authority. Node N
//! itself deletes them as soon as it learns it was removed, so that its disk stops being a
//! source of signatures at all:
//!
//! - from its own log, when the membership entry that drops it reaches it; or
//! - from its peers, when a majority of the other members answer its Raft messages with "not a
//!   member" (a removed node usually never receives the entry that drops it: the leader stops
//!   replicating to it).
//!
//! Either way only after it has seen itself a member (a joiner replays older membership entries
//! that do not name it yet). The node then writes `D/REMOVED`, stops, and refuses to start from
//! that directory again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::net::Contacts;
use crate::{NodeId, Raft};

/// The marker a removed node leaves in its data directory.
pub(crate) const REMOVED_MARKER: &str = "REMOVED";

/// How often the node looks.
const EVERY: Duration = Duration::from_secs(1);

/// The marker's path in `dir`.
pub(crate) fn marker(dir: &Path) -> PathBuf {
    dir.join(REMOVED_MARKER)
}

/// Watches for this node's removal; on it, destroys the keys in `keys_dir`, writes the marker
/// and sends `true` on `removed`.
pub(crate) fn spawn_watch(
    raft: Raft,
    node_id: NodeId,
    contacts: Contacts,
    dir: PathBuf,
    keys_dir: PathBuf,
    removed: tokio::sync::watch::Sender<bool>,
) {
    tokio::spawn(async move {
        let mut seen_self = false;
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if removed.is_closed() {
                return;
            }
            let m = raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let is_member = membership.nodes().any(|(n, _)| *n == node_id);
            if is_member {
                seen_self = true;
            }
            if !seen_self {
                continue;
            }
            let dropped_by_log = !is_member && membership.nodes().next().is_some();
            let others: Vec<NodeId> = membership.voter_ids().filter(|n| *n != node_id).collect();
            let refusing = contacts.refusing();
            let refused_by_majority = !others.is_empty()
                && others.iter().filter(|n| refusing.contains(n)).count() * 2 > others.len();
            if !(dropped_by_log || refused_by_majority) {
                continue;
            }
            let gone = crate::keys::NodeKeys::destroy(&keys_dir);
            let note = format!(
                "authority node {node_id} was removed from the cluster; its private keys were \
                 deleted ({} files). This directory cannot serve again: join a new node with a \
                 new token in a new data directory.\n",
                gone.len()
            );
            if let Err(e) = crate::keys::write_private(&marker(&dir), note.as_bytes(), 0o600) {
                tracing::warn!(error = %e, "could not write the removal marker");
            }
            tracing::error!(node_id, deleted = gone.len(), "{}", note.trim_end());
            let _ = removed.send(true);
            return;
        }
    });
}
