//! Node liveness, as the leader sees it: which agents hold an open entry feed, when each was
//! last seen, and the capacity and labels it announced. Kept in memory and never replicated —
//! a heartbeat must not become a Raft write — so a new leader starts knowing nothing: it says
//! since when it tracks (`tracking_since_ms`), and a scheduler waits a grace period past that
//! before calling a node lost.
//!
//! Entries exist only for nodes that passed the agent gate (enrolled, active, own certificate),
//! so the map is bounded by the enrolled nodes; labels are bounded when announced.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ringzero_proto::pb;

use crate::gate::now_ms;

/// Labels an agent may announce.
pub(crate) const MAX_NODE_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 63;
const MAX_LABEL_VALUE: usize = 255;
/// `ReportAllocStatus` calls per node per second.
pub(crate) const REPORTS_PER_SECOND: u32 = 5;
/// `AppendNodeAudit` calls per node per second.
pub(crate) const NODE_AUDITS_PER_SECOND: u32 = 20;
/// The longest node-API address an agent may announce.
const MAX_NODE_API: usize = 261;

/// What an agent announced when it opened its feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Capacity {
    pub cpu_millis: Option<u32>,
    pub memory_mb: Option<u64>,
    pub labels: BTreeMap<String, String>,
    /// Where the agent serves its node API (`host:port`; empty: not served).
    pub node_api: String,
}

impl Capacity {
    /// The capacity a feed request announces; labels beyond the bounds are refused.
    pub(crate) fn from_request(r: &pb::SyncEntriesRequest) -> Result<Self, String> {
        if r.labels.len() > MAX_NODE_LABELS {
            return Err(format!("at most {MAX_NODE_LABELS} labels"));
        }
        for (k, v) in &r.labels {
            let key_ok = !k.is_empty()
                && k.len() <= MAX_LABEL_KEY
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
            if !key_ok {
                return Err(format!(
                    "label keys are 1-{MAX_LABEL_KEY} of [A-Za-z0-9._/-]"
                ));
            }
            if v.len() > MAX_LABEL_VALUE || v.chars().any(char::is_control) {
                return Err(format!(
                    "label values are at most {MAX_LABEL_VALUE} bytes, no control characters"
                ));
            }
        }
        check_node_api(&r.node_api)?;
        Ok(Capacity {
            cpu_millis: r.cpu_millis,
            memory_mb: r.memory_mb,
            labels: r.labels.clone().into_iter().collect(),
            node_api: r.node_api.clone(),
        })
    }
}

/// A node-API address as announced: empty, or `host:port` with a non-zero port and a host of
/// letters, digits, `.`, `-`, `:` (IPv6 in brackets). Not trust material — a client checks the
/// server's node SVID — but shown to callers, so kept plain.
fn check_node_api(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Ok(());
    }
    let ok = addr.len() <= MAX_NODE_API
        && addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the node API address must be host:port, at most {MAX_NODE_API} bytes"
        ))
    }
}

#[derive(Debug, Default)]
struct Seen {
    feeds: u32,
    last_seen_ms: u64,
    capacity: Capacity,
    /// Start of the current one-second report window, and the reports in it.
    report_window: (u64, u32),
    /// The same for `AppendNodeAudit`.
    audit_window: (u64, u32),
}

#[derive(Debug)]
struct Inner {
    term: Option<u64>,
    since_ms: u64,
    nodes: HashMap<String, Seen>,
    /// Bumped when a feed opens or closes (liveness or capacity may have changed) and when a
    /// new term starts over: the scheduler's watch wakes on it, never on mere heartbeats.
    changes: tokio::sync::watch::Sender<u64>,
}

/// The leader's view of its agents' feeds.
#[derive(Debug, Clone)]
pub(crate) struct Health(Arc<Mutex<Inner>>);

impl Default for Health {
    fn default() -> Self {
        Health(Arc::new(Mutex::new(Inner {
            term: None,
            since_ms: now_ms(),
            nodes: HashMap::new(),
            changes: tokio::sync::watch::Sender::new(0),
        })))
    }
}

/// One node's view as `ListNodeHealth` shows it.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeView {
    pub live: bool,
    pub last_seen_ms: u64,
    pub capacity: Capacity,
}

/// Held by an open feed; the node is no longer live once every guard is dropped.
#[derive(Debug)]
pub(crate) struct FeedGuard {
    health: Health,
    node: String,
}

impl Drop for FeedGuard {
    fn drop(&mut self) {
        let mut inner = self.health.lock();
        if let Some(s) = inner.nodes.get_mut(&self.node) {
            s.feeds = s.feeds.saturating_sub(1);
            s.last_seen_ms = now_ms();
        }
        inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new term forgets what an earlier leadership saw (the agents may have been connected
    /// elsewhere meanwhile); open feeds on this node stay.
    fn at_term(inner: &mut Inner, term: u64) {
        if inner.term != Some(term) {
            inner.term = Some(term);
            inner.since_ms = now_ms();
            inner.nodes.retain(|_, s| s.feeds > 0);
            inner.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Changes whenever a node's liveness or announced capacity may have changed.
    pub(crate) fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.lock().changes.subscribe()
    }

    /// A feed opened by `node` at leader term `term`.
    pub(crate) fn connected(&self, term: u64, node: &str, capacity: Capacity) -> FeedGuard {
        let mut inner = self.lock();
        Self::at_term(&mut inner, term);
        let s = inner.nodes.entry(node.to_owned()).or_default();
        s.feeds = s.feeds.saturating_add(1);
        s.last_seen_ms = now_ms();
        s.capacity = capacity;
        inner.changes.send_modify(|n| *n = n.wrapping_add(1));
        FeedGuard {
            health: self.clone(),
            node: node.to_owned(),
        }
    }

    /// The feed of `node` sent it an event (or a heartbeat).
    pub(crate) fn seen(&self, node: &str) {
        if let Some(s) = self.lock().nodes.get_mut(node) {
            s.last_seen_ms = now_ms();
        }
    }

    /// Counts one status report from `node`; false past [`REPORTS_PER_SECOND`].
    pub(crate) fn admit_report(&self, node: &str) -> bool {
        let now = now_ms();
        let mut inner = self.lock();
        let s = inner.nodes.entry(node.to_owned()).or_default();
        s.last_seen_ms = now;
        let (start, n) = &mut s.report_window;
        if now.saturating_sub(*start) >= 1000 {
            *start = now;
            *n = 0;
        }
        if *n >= REPORTS_PER_SECOND {
            return false;
        }
        *n += 1;
        true
    }

    /// Counts one node-audit append from `node`; false past [`NODE_AUDITS_PER_SECOND`].
    pub(crate) fn admit_node_audit(&self, node: &str) -> bool {
        let now = now_ms();
        let mut inner = self.lock();
        let s = inner.nodes.entry(node.to_owned()).or_default();
        let (start, n) = &mut s.audit_window;
        if now.saturating_sub(*start) >= 1000 {
            *start = now;
            *n = 0;
        }
        if *n >= NODE_AUDITS_PER_SECOND {
            return false;
        }
        *n += 1;
        true
    }

    /// Whether `node` holds an open feed to this node now.
    pub(crate) fn is_live(&self, node: &str) -> bool {
        self.lock().nodes.get(node).is_some_and(|s| s.feeds > 0)
    }

    /// Where each node with an open feed serves its node API (only non-empty addresses).
    pub(crate) fn node_apis(&self) -> HashMap<String, String> {
        self.lock()
            .nodes
            .iter()
            .filter(|(_, s)| s.feeds > 0 && !s.capacity.node_api.is_empty())
            .map(|(k, s)| (k.clone(), s.capacity.node_api.clone()))
            .collect()
    }

    /// Every tracked node's view at `term`, and since when this leader tracks.
    pub(crate) fn view(&self, term: u64) -> (u64, HashMap<String, NodeView>) {
        let mut inner = self.lock();
        Self::at_term(&mut inner, term);
        let nodes = inner
            .nodes
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    NodeView {
                        live: s.feeds > 0,
                        last_seen_ms: s.last_seen_ms,
                        capacity: s.capacity.clone(),
                    },
                )
            })
            .collect();
        (inner.since_ms, nodes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn feeds_make_a_node_live_until_they_close_and_a_new_term_starts_over() {
        let h = Health::default();
        let g = h.connected(1, "n1", Capacity::default());
        let g2 = h.connected(1, "n1", Capacity::default());
        assert!(h.view(1).1["n1"].live);
        drop(g);
        assert!(h.view(1).1["n1"].live);
        drop(g2);
        let (_, v) = h.view(1);
        assert!(!v["n1"].live);
        assert!(v["n1"].last_seen_ms > 0);
        let (since, v) = h.view(2);
        assert!(v.is_empty() && since > 0);
    }

    #[test]
    fn reports_are_rate_bound_and_labels_bounded() {
        let h = Health::default();
        for _ in 0..REPORTS_PER_SECOND {
            assert!(h.admit_report("n1"));
        }
        assert!(!h.admit_report("n1"));
        assert!(h.admit_report("n2"));
        let mut r = pb::SyncEntriesRequest::default();
        r.labels.insert("zone".into(), "a".into());
        assert_eq!(Capacity::from_request(&r).unwrap().labels.len(), 1);
        r.labels.insert("bad key".into(), "a".into());
        assert!(Capacity::from_request(&r).is_err());
        let mut r = pb::SyncEntriesRequest::default();
        for i in 0..=MAX_NODE_LABELS {
            r.labels.insert(format!("k{i}"), String::new());
        }
        assert!(Capacity::from_request(&r).is_err());
    }

    #[test]
    fn node_audits_are_rate_bound_and_node_api_addresses_plain() {
        let h = Health::default();
        for _ in 0..NODE_AUDITS_PER_SECOND {
            assert!(h.admit_node_audit("n1"));
        }
        assert!(!h.admit_node_audit("n1"));
        assert!(h.admit_node_audit("n2"));
        assert!(
            h.admit_report("n1"),
            "a separate budget from status reports"
        );
        for good in ["", "127.0.0.1:7443", "node-1.example.org:1", "[::1]:7443"] {
            assert!(check_node_api(good).is_ok(), "{good}");
        }
        for bad in [
            "127.0.0.1",
            "h:0",
            ":80",
            "h:99999",
            "a b:1",
            "h:1\n",
            &"a".repeat(300),
        ] {
            assert!(check_node_api(bad).is_err(), "{bad}");
        }
        let r = pb::SyncEntriesRequest {
            node_api: "127.0.0.1:7443".into(),
            ..Default::default()
        };
        let g = h.connected(1, "n3", Capacity::from_request(&r).unwrap());
        assert_eq!(h.node_apis()["n3"], "127.0.0.1:7443");
        drop(g);
        assert!(
            !h.node_apis().contains_key("n3"),
            "only while its feed is open"
        );
    }
}
