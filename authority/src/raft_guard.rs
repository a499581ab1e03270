//! What a Raft message must be before openraft sees it.
//!
//! Transport admission already proves the sender is a current member, by a certificate its own
//! CA signed. Here the message must also *say* it is from that member (the node id in its vote
//! is the sender's), and be a message a correct member could send: consecutive entries whose
//! terms never go back nor pass the vote's, and nothing that would rewrite a log entry this node
//! has already applied (openraft treats that as a broken invariant and stops the node). A
//! refused message is answered with an error and audited: on the leader directly, from a
//! follower through the leader (`ReportDenial` on the Raft service).

use std::sync::Arc;
use std::time::Duration;

use openraft::RaftLogReader;
use openraft::raft::AppendEntriesRequest;

use crate::command::{AuditDecision, AuditRecord};
use crate::gate::Gate;
use crate::net::PeerCredentials;
use crate::store::{LogStore, StateMachineStore};
use crate::{NodeId, Raft, TypeConfig, Vote};

/// The node id a vote names (the candidate or the leader).
pub(crate) fn voter(vote: &Vote) -> Option<NodeId> {
    vote.leader_id().voted_for()
}

/// Refuses a message whose vote names another node than its sender.
pub(crate) fn sender_matches(sender: NodeId, vote: &Vote, what: &str) -> Result<(), String> {
    match voter(vote) {
        Some(n) if n == sender => Ok(()),
        Some(n) => Err(format!(
            "{what} from authority node {sender} claims to be from node {n}"
        )),
        None => Err(format!("{what} from authority node {sender} names no node")),
    }
}

/// Checks an AppendEntries for what no correct leader sends, from the message alone.
pub fn check_append(rpc: &AppendEntriesRequest<TypeConfig>) -> Result<(), String> {
    let term = rpc.vote.leader_id().term;
    if let Some(prev) = &rpc.prev_log_id
        && prev.leader_id.term > term
    {
        return Err(format!(
            "prev_log_id of term {} is past the vote's term {term}",
            prev.leader_id.term
        ));
    }
    let first = rpc.prev_log_id.map_or(0, |p| p.index + 1);
    let mut last_term = rpc.prev_log_id.map_or(0, |p| p.leader_id.term);
    for (expected, e) in (first..).zip(rpc.entries.iter()) {
        if e.log_id.index != expected {
            return Err(format!(
                "entry index {} where {expected} was due (entries must follow prev_log_id \
                 without gaps)",
                e.log_id.index
            ));
        }
        if e.log_id.leader_id.term < last_term || e.log_id.leader_id.term > term {
            return Err(format!(
                "entry {} of term {} is out of order (previous term {last_term}, vote term {term})",
                e.log_id.index, e.log_id.leader_id.term
            ));
        }
        last_term = e.log_id.leader_id.term;
    }
    Ok(())
}

/// Refuses an AppendEntries that would rewrite a log entry this node has applied (and so knows
/// committed): the previous log id and every entry at or below the last applied index must be
/// exactly the entries this node holds there.
pub(crate) async fn check_against_applied(
    log: &LogStore,
    sm: &StateMachineStore,
    rpc: &AppendEntriesRequest<TypeConfig>,
) -> Result<(), String> {
    let Some(applied) = sm.applied_index() else {
        return Ok(());
    };
    let mut claims: Vec<openraft::LogId<NodeId>> = Vec::new();
    if let Some(prev) = rpc.prev_log_id {
        claims.push(prev);
    }
    claims.extend(rpc.entries.iter().map(|e| e.log_id));
    claims.retain(|l| l.index <= applied);
    let (Some(first), Some(last)) = (claims.first(), claims.last()) else {
        return Ok(());
    };
    let mut reader = log.clone();
    let local = reader
        .try_get_log_entries(first.index..=last.index)
        .await
        .map_err(|e| format!("log: {e}"))?;
    for claim in &claims {
        // Entries purged into a snapshot are not compared (they are below the snapshot, which
        // openraft never rewrites).
        if let Some(mine) = local.iter().find(|e| e.log_id.index == claim.index)
            && mine.log_id != *claim
        {
            return Err(format!(
                "log id {claim} contradicts applied entry {} of this node",
                mine.log_id
            ));
        }
    }
    Ok(())
}

/// Where refusals of Raft messages are recorded.
#[derive(Clone)]
pub(crate) struct Reporter {
    pub(crate) raft: Raft,
    pub(crate) node_id: NodeId,
    pub(crate) gate: Option<Arc<Gate>>,
    pub(crate) creds: Option<PeerCredentials>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Reporter {
    /// The audit record of a refused Raft message from `actor`.
    pub(crate) fn record(&self, actor: String, what: &str, why: String) -> AuditRecord {
        AuditRecord {
            actor,
            revocation_ids: vec![],
            operation: "cluster:admin".into(),
            resource: format!("authority/{}", self.node_id),
            decision: AuditDecision::Deny,
            reason: Some(format!("raft_message_refused: {what}: {why}")),
            authority: self.node_id,
            request_id: crate::command::random_hex(),
            details: vec![("raft_rpc".into(), what.into())],
        }
    }

    /// Records `record`: through this node's gate when it leads, else sent to the leader.
    pub(crate) async fn report(&self, record: AuditRecord) {
        tracing::warn!(
            actor = %record.actor,
            reason = record.reason.as_deref().unwrap_or(""),
            "refused a Raft message"
        );
        let m = self.raft.metrics().borrow().clone();
        match (m.current_leader, &self.gate) {
            (Some(l), Some(gate)) if l == self.node_id => gate.record_denial(record).await,
            (Some(l), _) => {
                let addr = m
                    .membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone());
                if let (Some(addr), Some(creds)) = (addr, &self.creds) {
                    let creds = creds.clone();
                    tokio::spawn(async move {
                        if let Err(e) = crate::net::send_report(&creds, l, &addr, &record).await {
                            tracing::warn!(error = %e, "could not report a refused Raft message");
                        }
                    });
                }
            }
            (None, _) => {}
        }
    }
}

/// How long a report to the leader may take.
pub(crate) const REPORT_TIMEOUT: Duration = Duration::from_secs(3);
