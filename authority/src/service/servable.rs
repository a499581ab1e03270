//! Which entries each node's agent can serve, as the leader last heard it, and waiting on it.
//!
//! - **`ReportServable`** (an agent, gated like `ReportAllocStatus`: `svid:mint` on the node of
//!   its own certificate): "every entry of my node up to revision R has a valid SVID in my
//!   cache, or is one of these (at most [`MAX_UNSERVABLE`]) that I cannot serve, with why". The
//!   latest report wins (it may go down: a restarted agent starts with an empty cache). Kept in
//!   memory like node health, never replicated nor recorded — a report changes no state and
//!   grants nothing — and bounded: [`REPORTS_PER_SECOND`] per node, one report per enrolled
//!   node. A new leader knows nothing: agents report again when their feed reconnects and every
//!   10 s, and reports from an earlier leadership are forgotten (the agent may have restarted
//!   meanwhile).
//! - **`WaitEntryServable`** (gated like `GetEntry`: `entry:read` on the entry's SPIFFE ID path,
//!   recorded once): waits, on a watch per node — no polling of the state, one re-check a
//!   second — until the entry's node reports it servable or unservable at the revision asked
//!   for, or the timeout (at most [`MAX_WAIT`]) passes. At most [`MAX_WAITS`] waits at once on
//!   a leader and [`MAX_WAITS_PER_CALLER`] per caller.
//!
//! A lying agent can only claim its own node's entries servable (the node comes from its
//! certificate), which makes `entry create --wait` return early for that node's entries and
//! nothing else: see `threat-model/entry-wait.md`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringzero_policy::{Operation, SpiffeId};
use ringzero_proto::pb;
use tokio::sync::watch;

use super::entries::entry_resource;
use super::nodes::invalid;
use super::{AuthorityService, status_of};
use crate::gate::now_ms;

/// `ReportServable` calls per node per second.
pub(crate) const REPORTS_PER_SECOND: u32 = 25;
/// Unservable entries one report may list.
pub(crate) const MAX_UNSERVABLE: usize = 64;
/// The longest reason kept for an unservable entry.
const MAX_REASON: usize = 256;
/// Waits at once on a leader.
pub(crate) const MAX_WAITS: usize = 256;
/// Waits at once per caller (SPIFFE ID).
pub(crate) const MAX_WAITS_PER_CALLER: usize = 16;
/// A wait without a timeout.
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The longest one call waits: below the clients' call timeout (15 s) and the server's request
/// timeout (30 s). A longer wait is several calls.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(10);
/// Waits re-check this often even without a report (leadership, a node's feed closing).
const RECHECK: Duration = Duration::from_secs(1);

/// An unservable entry as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unservable {
    pub id: String,
    pub revision: u64,
    pub reason: String,
}

/// A node's latest report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    pub revision: u64,
    pub unservable: Vec<Unservable>,
    pub at_ms: u64,
}

impl Report {
    /// A report from the wire; refused past the bounds.
    pub(crate) fn from_request(r: &pb::ReportServableRequest) -> Result<Self, String> {
        if r.unservable.len() > MAX_UNSERVABLE {
            return Err(format!("at most {MAX_UNSERVABLE} unservable entries"));
        }
        let unservable = r
            .unservable
            .iter()
            .map(|u| {
                if u.id.is_empty() || u.id.len() > 64 {
                    return Err("bad entry id".to_owned());
                }
                let mut reason: String = u.reason.chars().filter(|c| !c.is_control()).collect();
                if reason.len() > MAX_REASON {
                    let mut end = MAX_REASON;
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    reason.truncate(end);
                }
                Ok(Unservable {
                    id: u.id.clone(),
                    revision: u.revision,
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Report {
            revision: r.revision,
            unservable,
            at_ms: now_ms(),
        })
    }
}

/// Where a node stands for one entry at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Standing {
    Servable,
    Unservable(String),
    Pending,
}

/// What `report` says about entry `id` at `revision`.
pub(crate) fn standing(report: Option<&Report>, id: &str, revision: u64) -> Standing {
    let Some(r) = report else {
        return Standing::Pending;
    };
    if let Some(u) = r
        .unservable
        .iter()
        .find(|u| u.id == id && u.revision >= revision)
    {
        return Standing::Unservable(u.reason.clone());
    }
    if r.revision >= revision {
        Standing::Servable
    } else {
        Standing::Pending
    }
}

#[derive(Debug)]
struct NodeState {
    report: Option<Report>,
    /// Start of the current one-second report window, and the reports in it.
    window: (u64, u32),
    /// Bumped on every report of the node: its waiters re-check.
    changed: watch::Sender<()>,
}

impl Default for NodeState {
    fn default() -> Self {
        NodeState {
            report: None,
            window: (0, 0),
            changed: watch::Sender::new(()),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    term: Option<u64>,
    nodes: HashMap<String, NodeState>,
    waits: usize,
    waits_by_caller: HashMap<String, usize>,
}

/// The leader's view of what its agents can serve.
#[derive(Debug, Clone, Default)]
pub(crate) struct Servable(Arc<Mutex<Inner>>);

/// Why a report or a wait was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    RateLimited,
    Busy,
    CallerBusy,
}

/// A wait in progress; its slots are given back on drop, and a node nobody reported nor waits
/// on is forgotten.
#[derive(Debug)]
pub(crate) struct WaitSlot {
    servable: Servable,
    caller: String,
    node: String,
    changed: Option<watch::Receiver<()>>,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.changed = None;
        let mut inner = self.servable.lock();
        inner.waits = inner.waits.saturating_sub(1);
        if let Some(n) = inner.waits_by_caller.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.waits_by_caller.remove(&self.caller);
            }
        }
        let idle = inner
            .nodes
            .get(&self.node)
            .is_some_and(|s| s.report.is_none() && s.changed.receiver_count() == 0);
        if idle {
            inner.nodes.remove(&self.node);
        }
    }
}

impl WaitSlot {
    /// Until the node's next report (or its state was replaced: then at once).
    async fn changed(&mut self) {
        match &mut self.changed {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    self.changed = None;
                }
            }
            None => std::future::pending().await,
        }
    }
}

impl Servable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new term forgets the reports of an earlier leadership.
    fn at_term(inner: &mut Inner, term: u64) {
        if inner.term != Some(term) {
            inner.term = Some(term);
            for s in inner.nodes.values_mut() {
                if s.report.take().is_some() {
                    s.changed.send_replace(());
                }
            }
        }
    }

    /// Records `node`'s report at leader term `term`; refused past [`REPORTS_PER_SECOND`].
    pub(crate) fn report(&self, term: u64, node: &str, report: Report) -> Result<(), Refusal> {
        let now = now_ms();
        let mut inner = self.lock();
        Self::at_term(&mut inner, term);
        let s = inner.nodes.entry(node.to_owned()).or_default();
        let (start, n) = &mut s.window;
        if now.saturating_sub(*start) >= 1000 {
            *start = now;
            *n = 0;
        }
        if *n >= REPORTS_PER_SECOND {
            return Err(Refusal::RateLimited);
        }
        *n += 1;
        s.report = Some(report);
        s.changed.send_replace(());
        Ok(())
    }

    /// Admits one wait by `caller` on `node`.
    pub(crate) fn admit_wait(&self, caller: &str, node: &str) -> Result<WaitSlot, Refusal> {
        let mut inner = self.lock();
        if inner.waits >= MAX_WAITS {
            return Err(Refusal::Busy);
        }
        let mine = inner.waits_by_caller.get(caller).copied().unwrap_or(0);
        if mine >= MAX_WAITS_PER_CALLER {
            return Err(Refusal::CallerBusy);
        }
        inner.waits += 1;
        inner.waits_by_caller.insert(caller.to_owned(), mine + 1);
        let changed = inner
            .nodes
            .entry(node.to_owned())
            .or_default()
            .changed
            .subscribe();
        Ok(WaitSlot {
            servable: self.clone(),
            caller: caller.to_owned(),
            node: node.to_owned(),
            changed: Some(changed),
        })
    }

    /// `node`'s latest report at term `term`.
    pub(crate) fn latest(&self, term: u64, node: &str) -> Option<Report> {
        let mut inner = self.lock();
        Self::at_term(&mut inner, term);
        inner.nodes.get(node).and_then(|s| s.report.clone())
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().nodes.len()
    }
}

impl AuthorityService {
    pub(crate) async fn report_servable_impl(
        &self,
        req: tonic::Request<pb::ReportServableRequest>,
    ) -> Result<tonic::Response<pb::ReportServableReply>, tonic::Status> {
        self.require_leader()?;
        let (name, _allowed) = self.gate_agent(&req).await?;
        let report = Report::from_request(req.get_ref()).map_err(invalid)?;
        let term = self.raft.metrics().borrow().current_term;
        self.servable
            .report(term, name.as_str(), report)
            .map_err(|_| {
                tonic::Status::resource_exhausted(format!(
                    "at most {REPORTS_PER_SECOND} servable reports per second per node"
                ))
            })?;
        Ok(tonic::Response::new(pb::ReportServableReply {}))
    }

    pub(crate) async fn wait_entry_servable_impl(
        &self,
        req: tonic::Request<pb::WaitEntryServableRequest>,
    ) -> Result<tonic::Response<pb::WaitEntryServableReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref();
        let timeout = match r.timeout_ms {
            0 => DEFAULT_WAIT,
            ms => Duration::from_millis(u64::from(ms)).min(MAX_WAIT),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let entry = self.existing_entry(&r.id)?;
        let id = SpiffeId::parse(&entry.spiffe_id).map_err(status_of)?;
        let allowed = self
            .gate
            .check(&req, Operation::EntryRead, &entry_resource(&id)?, None)
            .await?;
        let caller = allowed.peer.to_string();
        let mut slot = self
            .servable
            .admit_wait(&caller, &entry.parent)
            .map_err(|e| {
                tonic::Status::resource_exhausted(match e {
                    Refusal::CallerBusy => {
                        format!("at most {MAX_WAITS_PER_CALLER} waits at once per caller")
                    }
                    _ => format!("at most {MAX_WAITS} waits at once on this authority"),
                })
            })?;
        let mut audit = allowed.clone();
        audit
            .audit
            .details
            .extend([("action".into(), "wait_servable".into())]);
        self.gate.record(&audit).await?;
        let revision = r.revision.max(entry.revision);
        let node = entry.parent.clone();
        let mut stopping = self.stopping.clone();
        loop {
            self.require_leader()?;
            let term = self.raft.metrics().borrow().current_term;
            let report = self.servable.latest(term, &node);
            let standing = standing(report.as_ref(), &entry.id, revision);
            let timed_out = tokio::time::Instant::now() >= deadline;
            if standing != Standing::Pending || timed_out {
                let live = self.health.is_live(&node);
                let servable = standing == Standing::Servable;
                let (state, reason) = match standing {
                    Standing::Servable => ("servable", String::new()),
                    Standing::Unservable(why) => ("unservable", why),
                    Standing::Pending => ("pending", String::new()),
                };
                return Ok(tonic::Response::new(pb::WaitEntryServableReply {
                    revision,
                    nodes: vec![pb::NodeServable {
                        node,
                        state: state.into(),
                        reason,
                        reported_revision: report.as_ref().map_or(0, |r| r.revision),
                        live,
                        reported_ms: report.as_ref().map_or(0, |r| r.at_ms),
                    }],
                    servable,
                }));
            }
            tokio::select! {
                () = slot.changed() => {}
                () = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + RECHECK)) => {}
                _ = stopping.wait_for(|s| *s) => {
                    return Err(tonic::Status::unavailable("the authority is shutting down"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn report(revision: u64, unservable: &[(&str, u64)]) -> Report {
        Report {
            revision,
            unservable: unservable
                .iter()
                .map(|(id, rev)| Unservable {
                    id: (*id).into(),
                    revision: *rev,
                    reason: "bad selector".into(),
                })
                .collect(),
            at_ms: 1,
        }
    }

    #[test]
    fn standing_follows_the_latest_report() {
        assert_eq!(standing(None, "e", 1), Standing::Pending);
        assert_eq!(standing(Some(&report(4, &[])), "e", 5), Standing::Pending);
        assert_eq!(standing(Some(&report(5, &[])), "e", 5), Standing::Servable);
        assert_eq!(
            standing(Some(&report(9, &[("e", 5)])), "e", 5),
            Standing::Unservable("bad selector".into())
        );
        // Unservable at an older revision says nothing about the one waited for.
        assert_eq!(
            standing(Some(&report(9, &[("e", 3)])), "e", 5),
            Standing::Servable
        );
        assert_eq!(
            standing(Some(&report(9, &[("other", 9)])), "e", 5),
            Standing::Servable
        );
    }

    #[test]
    fn reports_are_rate_bound_and_forgotten_at_a_new_term() {
        let s = Servable::default();
        for _ in 0..REPORTS_PER_SECOND {
            s.report(1, "n1", report(3, &[])).unwrap();
        }
        assert_eq!(s.report(1, "n1", report(3, &[])), Err(Refusal::RateLimited));
        s.report(1, "n2", report(3, &[])).unwrap();
        assert_eq!(s.latest(1, "n1").unwrap().revision, 3);
        assert!(s.latest(2, "n1").is_none(), "a new leadership starts over");
    }

    #[test]
    fn report_bounds_hold() {
        let mut r = pb::ReportServableRequest {
            revision: 3,
            unservable: vec![pb::UnservableEntry {
                id: "e".into(),
                revision: 3,
                reason: format!("x\n{}", "é".repeat(400)),
            }],
        };
        let parsed = Report::from_request(&r).unwrap();
        assert!(parsed.unservable[0].reason.len() <= MAX_REASON);
        assert!(!parsed.unservable[0].reason.contains('\n'));
        r.unservable[0].id = String::new();
        assert!(Report::from_request(&r).is_err());
        r.unservable = vec![pb::UnservableEntry::default(); MAX_UNSERVABLE + 1];
        assert!(Report::from_request(&r).is_err());
    }

    #[tokio::test]
    async fn waits_are_bounded_and_woken_by_reports() {
        let s = Servable::default();
        let mut slots = Vec::new();
        for _ in 0..MAX_WAITS_PER_CALLER {
            slots.push(s.admit_wait("alice", "n1").unwrap());
        }
        assert_eq!(
            s.admit_wait("alice", "n1").unwrap_err(),
            Refusal::CallerBusy
        );
        let mut other = Vec::new();
        while other.len() + slots.len() < MAX_WAITS {
            other.push(s.admit_wait(&format!("c{}", other.len()), "n2").unwrap());
        }
        assert_eq!(s.admit_wait("bob", "n1").unwrap_err(), Refusal::Busy);
        drop(other);
        let mut slot = s.admit_wait("bob", "n1").unwrap();
        assert_eq!(
            s.tracked(),
            1,
            "a node without report nor waiter is forgotten"
        );
        s.report(1, "n1", report(7, &[])).unwrap();
        tokio::time::timeout(Duration::from_secs(1), slot.changed())
            .await
            .unwrap();
        drop(slots);
        drop(slot);
        assert_eq!(s.tracked(), 1, "a node that reported is kept");
    }
}
