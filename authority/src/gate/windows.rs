//! The denial windows: per peer, the first of each distinct denial (operation, resource,
//! failed check) is committed at once, repeats are counted, and one summary per distinct denial
//! is committed when the window closes — so denials cannot become unbounded Raft writes, and no
//! distinct denial is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{DENIAL_WINDOW, now_ms};
use crate::Proposer;
use crate::command::{AuditRecord, Command, CommandId, Op};

/// How many distinct denials (operation, resource, failed check) one peer's window keeps
/// apart; more are only counted.
pub(super) const DENIAL_KEYS_PER_WINDOW: usize = 16;

/// What makes two denials "the same" within a window.
type DenialKey = (String, String, String);

fn denial_key(r: &AuditRecord) -> DenialKey {
    (
        r.operation.clone(),
        r.resource.clone(),
        r.reason.clone().unwrap_or_default(),
    )
}

/// The denials of one peer in one window: each distinct (operation, resource, failed check)
/// with the last record seen for it and how many more were folded into it, so a probe sent
/// between two decoys keeps its own record.
pub(super) struct Window {
    pub(super) opened: Instant,
    /// Distinct denials, in arrival order: the first record of each was committed at once.
    seen: Vec<(DenialKey, AuditRecord, u64)>,
    /// Denials beyond [`DENIAL_KEYS_PER_WINDOW`] distinct ones: counted only.
    overflow: u64,
}

impl Window {
    pub(super) fn new(opened: Instant, first: &AuditRecord) -> Self {
        Self {
            opened,
            seen: vec![(denial_key(first), first.clone(), 0)],
            overflow: 0,
        }
    }

    /// Folds `record` in; returns it when it is a new distinct denial to commit at once.
    pub(super) fn fold(&mut self, record: &AuditRecord) -> Option<AuditRecord> {
        let key = denial_key(record);
        if let Some((_, last, n)) = self.seen.iter_mut().find(|(k, _, _)| *k == key) {
            *n += 1;
            *last = record.clone();
            return None;
        }
        if self.seen.len() >= DENIAL_KEYS_PER_WINDOW {
            self.overflow += 1;
            return None;
        }
        self.seen.push((key, record.clone(), 0));
        Some(record.clone())
    }

    /// The records standing for what this window folded: one per distinct denial that repeated
    /// (the last one, with the count), the overflow count on the last of them.
    pub(super) fn summary(&self) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = self
            .seen
            .iter()
            .filter(|(_, _, n)| *n > 0)
            .map(|(_, last, n)| {
                let mut s = last.clone();
                s.details.push(("suppressed_denials".into(), n.to_string()));
                s
            })
            .collect();
        if self.overflow > 0 {
            let note = (
                "overflow_denials".to_owned(),
                format!(
                    "{} more denials of other kinds (over {DENIAL_KEYS_PER_WINDOW} distinct)",
                    self.overflow
                ),
            );
            match out.last_mut() {
                Some(s) => s.details.push(note),
                None => {
                    if let Some((_, r, _)) = self.seen.last() {
                        let mut s = r.clone();
                        s.details.push(note);
                        out.push(s);
                    }
                }
            }
        }
        out
    }
}

pub(super) type Windows = Arc<Mutex<HashMap<String, Window>>>;

/// Commits the audit record of a denial. A denied call fails whatever happens here; an
/// unrecorded denial is logged.
pub(super) async fn commit_denial(proposer: &Proposer, record: AuditRecord) {
    let cmd = Command {
        id: CommandId::fresh(),
        time_ms: now_ms(),
        audit: record,
        op: Op::AuditOnly,
    };
    if let Err(e) = proposer.propose(cmd).await {
        tracing::warn!(error = %e, "could not record a denial");
    }
}

/// When the window of `key` opened at `opened` closes, forgets it and commits the summary of
/// the denials it folded — unless a later denial from the same peer has already replaced the
/// window (and committed that summary itself). Without this, the last denials of a peer that
/// stops calling would never reach the audit log.
pub(super) fn close_window_later(
    denials: Windows,
    proposer: Proposer,
    key: String,
    opened: Instant,
) {
    tokio::spawn(async move {
        tokio::time::sleep(DENIAL_WINDOW).await;
        let summary = {
            let mut w = denials.lock().unwrap_or_else(|p| p.into_inner());
            match w.get(&key) {
                Some(win) if win.opened == opened => {
                    w.remove(&key).map(|win| win.summary()).unwrap_or_default()
                }
                _ => Vec::new(),
            }
        };
        for record in summary {
            commit_denial(&proposer, record).await;
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::command::AuditDecision;

    fn denial(operation: &str, resource: &str, reason: &str) -> AuditRecord {
        AuditRecord {
            actor: "spiffe://td/user/mallory".into(),
            revocation_ids: vec![],
            operation: operation.into(),
            resource: resource.into(),
            decision: AuditDecision::Deny,
            reason: Some(reason.into()),
            authority: 1,
            request_id: "r".into(),
            details: vec![],
        }
    }

    #[test]
    fn a_probe_between_decoys_keeps_its_own_record() {
        let decoy = denial("entry:read", "ns/decoy", "no_matching_right");
        let probe = denial("user:write", "user/admin", "no_matching_right");
        let mut w = Window::new(Instant::now(), &decoy);
        // The probe is new: committed at once. Repeats of either are counted.
        assert!(w.fold(&decoy).is_none());
        assert_eq!(w.fold(&probe), Some(probe.clone()));
        assert!(w.fold(&decoy).is_none());
        assert!(w.fold(&probe).is_none());
        let summary = w.summary();
        assert_eq!(summary.len(), 2, "{summary:?}");
        let counts: Vec<(&str, &str)> = summary
            .iter()
            .map(|r| {
                let n = r
                    .details
                    .iter()
                    .find(|(k, _)| k == "suppressed_denials")
                    .map(|(_, v)| v.as_str())
                    .unwrap();
                (r.resource.as_str(), n)
            })
            .collect();
        assert_eq!(counts, vec![("ns/decoy", "2"), ("user/admin", "1")]);
    }

    #[test]
    fn distinct_denials_are_capped_with_an_overflow_count() {
        let first = denial("entry:read", "ns/0", "x");
        let mut w = Window::new(Instant::now(), &first);
        let mut committed = 1;
        for i in 1..100 {
            if w.fold(&denial("entry:read", &format!("ns/{i}"), "x"))
                .is_some()
            {
                committed += 1;
            }
        }
        assert_eq!(committed, DENIAL_KEYS_PER_WINDOW);
        let summary = w.summary();
        assert_eq!(summary.len(), 1);
        assert!(
            summary[0]
                .details
                .iter()
                .any(|(k, v)| k == "overflow_denials" && v.starts_with("84 more"))
        );
    }
}
