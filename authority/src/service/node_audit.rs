//! `AppendNodeAudit`: an agent's audit records of its node API (log reads, exec sessions and
//! reads of their recordings), committed before the agent serves anything.
//!
//! Gated like `ReportAllocStatus`: the caller is a node agent (`svid:mint` on `node/<name>` of
//! its own certificate), it may only speak about allocations placed on its node (another
//! node's allocation is refused and recorded, `alloc_on_another_node`), and it is rate-bound
//! ([`NODE_AUDITS_PER_SECOND`](super::health::NODE_AUDITS_PER_SECOND) calls per node, at most
//! [`MAX_RECORDS`] records per call). The authority cannot check what the agent says about its
//! caller — the caller spoke to the agent, not to the authority — so each record names the
//! node that vouched for it (`reported_by`); the job it names is the authority's own record of
//! the allocation, never the agent's word. Each record is its own `AuditOnly` command (they
//! share Raft entries through the proposer's group commit) and the call returns once every one
//! is committed: an agent that gets an error serves nothing.

use ringzero_policy::{Operation, SpiffeId};
use ringzero_proto::pb;

use super::status::invalid;
use super::{AuthorityService, status_of};
use crate::command::{AuditDecision, AuditRecord, Op, job_resource};

/// Records in one call.
pub(crate) const MAX_RECORDS: usize = 16;
/// Detail pairs per record, and their sizes.
const MAX_DETAIL: usize = 16;
const MAX_DETAIL_KEY: usize = 64;
const MAX_TEXT: usize = 256;
/// Revocation ids per record (a token has at most 32 blocks), hex of at most 64 bytes each.
const MAX_REVOCATION_IDS: usize = 32;

/// One record as the agent stated it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeAudit {
    pub alloc_id: String,
    pub operation: Operation,
    pub action: String,
    pub caller: SpiffeId,
    pub revocation_ids: Vec<String>,
    pub decision: AuditDecision,
    pub reason: Option<String>,
    pub detail: Vec<(String, String)>,
}

/// The operation an action of the node API is gated by.
fn operation_of(action: &str) -> Option<Operation> {
    match action {
        "logs.read" => Some(Operation::LogsRead),
        "exec.start" | "exec.end" => Some(Operation::DebugAttach),
        "session.read" => Some(Operation::AuditRead),
        _ => None,
    }
}

fn plain(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(format!(
            "{what}: at most {max} bytes, no control characters"
        ));
    }
    Ok(())
}

/// Checks one record's shape; nothing here is trusted beyond it.
pub(crate) fn check_record(r: &pb::NodeAuditRecord) -> Result<NodeAudit, String> {
    let id_ok = r.alloc_id.len() == 16
        && r.alloc_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !id_ok {
        return Err("alloc_id must be [a-z0-9]{16}".into());
    }
    let operation = operation_of(&r.action).ok_or_else(|| "unknown action".to_owned())?;
    let caller =
        SpiffeId::parse(&r.caller_spiffe_id).map_err(|e| format!("caller_spiffe_id: {e}"))?;
    if r.token_revocation_ids.len() > MAX_REVOCATION_IDS {
        return Err(format!("at most {MAX_REVOCATION_IDS} revocation ids"));
    }
    for id in &r.token_revocation_ids {
        let hex_ok = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err("revocation ids are 1-128 lowercase hex digits".into());
        }
    }
    let decision = match r.decision.as_str() {
        "allow" => AuditDecision::Allow,
        "deny" => AuditDecision::Deny,
        _ => return Err("decision must be allow or deny".into()),
    };
    plain("reason", &r.reason, MAX_TEXT)?;
    if decision == AuditDecision::Deny && r.reason.is_empty() {
        return Err("a denial names the check that failed".into());
    }
    if r.detail.len() > MAX_DETAIL {
        return Err(format!("at most {MAX_DETAIL} detail pairs"));
    }
    let mut detail: Vec<(String, String)> = Vec::with_capacity(r.detail.len());
    for (k, v) in &r.detail {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_DETAIL_KEY
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !key_ok {
            return Err(format!(
                "detail keys are 1-{MAX_DETAIL_KEY} of [A-Za-z0-9_.-]"
            ));
        }
        plain("detail", v, MAX_TEXT)?;
        detail.push((k.clone(), v.clone()));
    }
    detail.sort();
    Ok(NodeAudit {
        alloc_id: r.alloc_id.clone(),
        operation,
        action: r.action.clone(),
        caller,
        revocation_ids: r.token_revocation_ids.clone(),
        decision,
        reason: (!r.reason.is_empty()).then(|| r.reason.clone()),
        detail,
    })
}

impl AuthorityService {
    pub(crate) async fn append_node_audit_impl(
        &self,
        req: tonic::Request<pb::AppendNodeAuditRequest>,
    ) -> Result<tonic::Response<pb::AppendNodeAuditReply>, tonic::Status> {
        self.require_leader()?;
        let (name, allowed) = self.gate_agent(&req).await?;
        if !self.health.admit_node_audit(name.as_str()) {
            return Err(tonic::Status::resource_exhausted(format!(
                "at most {} node audit appends per second per node",
                super::health::NODE_AUDITS_PER_SECOND
            )));
        }
        let records = &req.get_ref().records;
        if records.len() > MAX_RECORDS {
            return Err(invalid(format!("at most {MAX_RECORDS} records per call")));
        }
        let parsed = records
            .iter()
            .map(check_record)
            .collect::<Result<Vec<_>, String>>()
            .map_err(invalid)?;
        let reader = self.sm.reader().map_err(status_of)?;
        let mut commands = Vec::with_capacity(parsed.len());
        for r in parsed {
            let Some(alloc) = reader.alloc(&r.alloc_id).map_err(status_of)? else {
                // Purged: the authority can no longer vouch that this node ran it.
                return Err(tonic::Status::not_found(format!(
                    "no allocation {}",
                    r.alloc_id
                )));
            };
            if alloc.node != name.as_str() {
                let mut audit = allowed.audit.clone();
                audit.decision = AuditDecision::Deny;
                audit.reason = Some(format!(
                    "alloc_on_another_node: {} is on {}",
                    alloc.id, alloc.node
                ));
                audit.details.push(("action".into(), "node_audit".into()));
                self.gate.record_denial(audit).await;
                return Err(tonic::Status::permission_denied(format!(
                    "allocation {} is not placed on node {name}",
                    alloc.id
                )));
            }
            let resource = job_resource(&alloc.namespace, &alloc.job).map_err(invalid)?;
            let mut details = vec![
                ("action".to_owned(), r.action.clone()),
                ("alloc".to_owned(), alloc.id.clone()),
                ("node".to_owned(), name.to_string()),
                ("reported_by".to_owned(), allowed.peer.to_string()),
            ];
            details.extend(r.detail.into_iter().map(|(k, v)| (format!("req.{k}"), v)));
            let audit = AuditRecord {
                actor: r.caller.to_string(),
                revocation_ids: r.revocation_ids,
                operation: r.operation.as_str().into(),
                resource: resource.to_string(),
                decision: r.decision,
                reason: r.reason,
                authority: self.gate.node_id(),
                request_id: crate::command::random_hex(),
                details,
            };
            commands.push(crate::command::Command {
                audit,
                ..allowed.command(Op::AuditOnly)
            });
        }
        drop(reader);
        let committed = commands.len() as u32;
        let mut pending = tokio::task::JoinSet::new();
        for cmd in commands {
            let proposer = self.proposer.clone();
            pending.spawn(async move { proposer.propose(cmd).await });
        }
        while let Some(done) = pending.join_next().await {
            match done {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(tonic::Status::unavailable(format!("not committed: {e}")));
                }
                Err(e) => return Err(super::status::internal(format!("audit task: {e}"))),
            }
        }
        Ok(tonic::Response::new(pb::AppendNodeAuditReply { committed }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record() -> pb::NodeAuditRecord {
        pb::NodeAuditRecord {
            alloc_id: "abcdefgh01234567".into(),
            action: "logs.read".into(),
            caller_spiffe_id: "spiffe://example.org/user/alice".into(),
            token_revocation_ids: vec!["ab".repeat(32)],
            decision: "allow".into(),
            reason: String::new(),
            detail: [("stream".to_owned(), "stdout".to_owned())].into(),
        }
    }

    #[test]
    fn a_well_formed_record_is_accepted_as_stated() {
        let r = check_record(&record()).unwrap();
        assert_eq!(r.operation, Operation::LogsRead);
        assert_eq!(r.decision, AuditDecision::Allow);
        assert_eq!(r.caller.to_string(), "spiffe://example.org/user/alice");
        assert_eq!(r.detail, vec![("stream".into(), "stdout".into())]);
        let deny = pb::NodeAuditRecord {
            decision: "deny".into(),
            reason: "revoked: block 0".into(),
            ..record()
        };
        assert_eq!(check_record(&deny).unwrap().decision, AuditDecision::Deny);
    }

    #[test]
    fn malformed_records_are_refused() {
        let bad: Vec<(&str, pb::NodeAuditRecord)> = vec![
            (
                "short id",
                pb::NodeAuditRecord {
                    alloc_id: "abc".into(),
                    ..record()
                },
            ),
            (
                "upper id",
                pb::NodeAuditRecord {
                    alloc_id: "ABCDEFGH01234567".into(),
                    ..record()
                },
            ),
            (
                "action",
                pb::NodeAuditRecord {
                    action: "exec.anything".into(),
                    ..record()
                },
            ),
            (
                "caller",
                pb::NodeAuditRecord {
                    caller_spiffe_id: "alice".into(),
                    ..record()
                },
            ),
            (
                "hex",
                pb::NodeAuditRecord {
                    token_revocation_ids: vec!["XY".into()],
                    ..record()
                },
            ),
            (
                "ids",
                pb::NodeAuditRecord {
                    token_revocation_ids: vec!["ab".into(); 33],
                    ..record()
                },
            ),
            (
                "decision",
                pb::NodeAuditRecord {
                    decision: "maybe".into(),
                    ..record()
                },
            ),
            (
                "deny without reason",
                pb::NodeAuditRecord {
                    decision: "deny".into(),
                    ..record()
                },
            ),
            (
                "reason",
                pb::NodeAuditRecord {
                    reason: "a\nb".into(),
                    ..record()
                },
            ),
            (
                "detail key",
                pb::NodeAuditRecord {
                    detail: [("a b".to_owned(), String::new())].into(),
                    ..record()
                },
            ),
            (
                "detail count",
                pb::NodeAuditRecord {
                    detail: (0..17).map(|i| (format!("k{i}"), String::new())).collect(),
                    ..record()
                },
            ),
            (
                "detail value",
                pb::NodeAuditRecord {
                    detail: [("k".to_owned(), "v".repeat(300))].into(),
                    ..record()
                },
            ),
        ];
        for (what, r) in bad {
            assert!(check_record(&r).is_err(), "{what} accepted");
        }
    }
}
