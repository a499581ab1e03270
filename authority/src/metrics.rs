//! The authority's metrics and health, served on `authority run --metrics ADDR`.
//!
//! Counters and histograms are bumped where things happen (the gate's decisions, the
//! proposer's batches, SVID and JWT-SVID issuance, join-token redemptions); what the Raft
//! engine and the state machine know (term, leader, indexes, entries, audit log size, key
//! expiry) is sampled when `/metrics` is scraped. The families are process-wide, as a
//! process runs one authority node.
//!
//! `/ready` answers 200 when a leader is known and this node has applied its log to within
//! [`MAX_READY_LAG`] entries of what it holds; `/live` while the Raft engine runs.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use ringzero_telemetry::{Health, Registry};

use crate::command::{KeyKind, KeyStatus};
use crate::store::StateMachineStore;
use crate::{NodeId, Raft};

/// `/ready` needs this node's applied index within this many entries of its log.
pub(crate) const MAX_READY_LAG: u64 = 1000;

/// Keys that expire within this many seconds are flagged by `ringzero_key_expiring_soon`.
pub(crate) const KEY_WARNING_SECS: u64 = 30 * 24 * 3600;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GateLabels {
    operation: String,
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// The families, registered once.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    gate: Family<GateLabels, Counter>,
    writes: Counter,
    write_errors: Counter,
    write_seconds: Histogram,
    batch_size: Histogram,
    svids: Family<KindLabels, Counter>,
    joins: Family<OutcomeLabels, Counter>,
    term: Gauge,
    leader: Gauge,
    is_leader: Gauge,
    last_log_index: Gauge,
    applied_index: Gauge,
    apply_lag: Gauge,
    quorum_ack_ms: Gauge,
    entries: Gauge,
    audit_size: Gauge,
    key_expiry: Family<KindLabels, Gauge<f64, AtomicU64>>,
    key_expiring: Family<KindLabels, Gauge>,
}

/// The process's authority metrics.
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("ringzero");
        let m = Self {
            gate: Family::default(),
            writes: Counter::default(),
            write_errors: Counter::default(),
            write_seconds: Histogram::new(ringzero_telemetry::latency_buckets()),
            batch_size: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
            svids: Family::default(),
            joins: Family::default(),
            term: Gauge::default(),
            leader: Gauge::default(),
            is_leader: Gauge::default(),
            last_log_index: Gauge::default(),
            applied_index: Gauge::default(),
            apply_lag: Gauge::default(),
            quorum_ack_ms: Gauge::default(),
            entries: Gauge::default(),
            audit_size: Gauge::default(),
            key_expiry: Family::default(),
            key_expiring: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "gate_decisions",
            "Authorization decisions of the gate, by operation and decision (allow, deny)",
            m.gate.clone(),
        );
        r.register(
            "raft_writes",
            "Commands committed through this node's proposer",
            m.writes.clone(),
        );
        r.register(
            "raft_write_errors",
            "Batches this node's proposer could not commit (not the leader, no quorum)",
            m.write_errors.clone(),
        );
        r.register(
            "raft_write_seconds",
            "Time from proposing a batch to its commit and apply",
            m.write_seconds.clone(),
        );
        r.register(
            "raft_batch_commands",
            "Commands per Raft entry (group commit)",
            m.batch_size.clone(),
        );
        r.register(
            "svids_issued",
            "Credentials issued by this node, by kind (workload, jwt)",
            m.svids.clone(),
        );
        r.register(
            "join_attempts",
            "Join-token redemptions, by outcome",
            m.joins.clone(),
        );
        r.register("raft_term", "The current Raft term", m.term.clone());
        r.register(
            "raft_leader",
            "The id of the leader this node knows (0: none)",
            m.leader.clone(),
        );
        r.register(
            "raft_is_leader",
            "1 when this node is the leader",
            m.is_leader.clone(),
        );
        r.register(
            "raft_last_log_index",
            "The last index in this node's log",
            m.last_log_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "The last index applied to this node's state",
            m.applied_index.clone(),
        );
        r.register(
            "raft_apply_lag",
            "Log entries not yet applied on this node",
            m.apply_lag.clone(),
        );
        r.register(
            "raft_millis_since_quorum_ack",
            "On the leader: milliseconds since a quorum last acknowledged it (-1 elsewhere)",
            m.quorum_ack_ms.clone(),
        );
        r.register(
            "entries",
            "Registration entries in the replicated state",
            m.entries.clone(),
        );
        r.register(
            "audit_tree_size",
            "Records in the audit log's Merkle tree",
            m.audit_size.clone(),
        );
        r.register(
            "key_expiry_seconds",
            "Seconds until the earliest active or published key of each kind expires",
            m.key_expiry.clone(),
        );
        r.register(
            "key_expiring_soon",
            "1 when an active or published key of the kind expires within 30 days",
            m.key_expiring.clone(),
        );
        Self { registry, ..m }
    }

    /// The gate decided `operation`: `allow` or `deny`.
    pub(crate) fn gate(&self, operation: &str, allowed: bool) {
        self.gate
            .get_or_create(&GateLabels {
                operation: operation.to_owned(),
                decision: if allowed { "allow" } else { "deny" }.to_owned(),
            })
            .inc();
    }

    /// A batch of `commands` committed (`Ok`) or failed, after `seconds`.
    pub(crate) fn batch(&self, commands: usize, seconds: f64, committed: bool) {
        self.batch_size.observe(commands as f64);
        self.write_seconds.observe(seconds);
        if committed {
            self.writes.inc_by(commands as u64);
        } else {
            self.write_errors.inc();
        }
    }

    /// `n` credentials of `kind` (`workload`, `jwt`) issued.
    pub(crate) fn issued(&self, kind: &str, n: usize) {
        self.svids
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc_by(n as u64);
    }

    /// A join-token redemption ended with `outcome` (`joined`, or why it was refused).
    pub(crate) fn join(&self, outcome: &str) {
        self.joins
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// Active or published keys that expire within [`KEY_WARNING_SECS`] of `now_ms` (or already
/// have), earliest first.
pub(crate) fn expiring_keys(keys: &[crate::KeyRecord], now_ms: u64) -> Vec<&crate::KeyRecord> {
    let horizon = now_ms.saturating_add(KEY_WARNING_SECS * 1000);
    let mut out: Vec<_> = keys
        .iter()
        .filter(|k| matches!(k.status, KeyStatus::Active | KeyStatus::Published))
        .filter(|k| k.not_after_ms <= horizon)
        .collect();
    out.sort_by_key(|k| k.not_after_ms);
    out
}

/// An authority node's health, for its metrics endpoint.
pub(crate) struct AuthorityHealth {
    pub(crate) node_id: NodeId,
    pub(crate) raft: Raft,
    pub(crate) sm: StateMachineStore,
}

impl std::fmt::Debug for AuthorityHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityHealth")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// What the health of a node is made of, sampled from its Raft engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RaftHealth {
    pub(crate) term: u64,
    pub(crate) leader: Option<NodeId>,
    pub(crate) last_log_index: u64,
    pub(crate) applied_index: u64,
}

impl RaftHealth {
    /// Why the node should not receive work, if it should not.
    pub(crate) fn not_ready(&self) -> Option<String> {
        if self.leader.is_none() {
            return Some("no leader known".into());
        }
        let lag = self.last_log_index.saturating_sub(self.applied_index);
        (lag > MAX_READY_LAG).then(|| format!("{lag} log entries not applied yet"))
    }
}

impl RaftHealth {
    /// Sampled from `raft` now.
    pub(crate) fn of(raft: &Raft) -> Self {
        let m = raft.metrics().borrow().clone();
        RaftHealth {
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
        }
    }
}

impl AuthorityHealth {
    fn raft_health(&self) -> RaftHealth {
        RaftHealth::of(&self.raft)
    }
}

fn gauge_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Health for AuthorityHealth {
    fn live(&self) -> Result<(), String> {
        match &self.raft.metrics().borrow().running_state {
            Ok(()) => Ok(()),
            Err(e) => Err(format!("the Raft engine stopped: {e}")),
        }
    }

    fn ready(&self) -> Result<(), String> {
        match self.raft_health().not_ready() {
            None => Ok(()),
            Some(why) => Err(why),
        }
    }

    fn refresh(&self) {
        let m = metrics();
        let h = self.raft_health();
        m.term.set(gauge_i64(h.term));
        m.leader.set(gauge_i64(h.leader.unwrap_or(0)));
        m.is_leader.set(i64::from(h.leader == Some(self.node_id)));
        m.last_log_index.set(gauge_i64(h.last_log_index));
        m.applied_index.set(gauge_i64(h.applied_index));
        m.apply_lag
            .set(gauge_i64(h.last_log_index.saturating_sub(h.applied_index)));
        let ack = self.raft.metrics().borrow().millis_since_quorum_ack;
        m.quorum_ack_ms.set(ack.map_or(-1, gauge_i64));
        let Ok(reader) = self.sm.reader() else {
            return;
        };
        if let Ok(n) = reader.entry_count() {
            m.entries.set(gauge_i64(n));
        }
        if let Ok(n) = reader.audit_size() {
            m.audit_size.set(gauge_i64(n));
        }
        if let Ok(keys) = reader.keys() {
            let now_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            for kind in [
                KeyKind::X509Ca,
                KeyKind::Biscuit,
                KeyKind::Jwt,
                KeyKind::Audit,
            ] {
                let earliest = keys
                    .iter()
                    .filter(|k| k.kind == kind)
                    .filter(|k| matches!(k.status, KeyStatus::Active | KeyStatus::Published))
                    .map(|k| k.not_after_ms)
                    .min();
                let Some(not_after_ms) = earliest else {
                    continue;
                };
                let label = KindLabels {
                    kind: crate::service::key_kind_name(kind).to_owned(),
                };
                let secs = (not_after_ms as f64 - now_ms as f64) / 1000.0;
                m.key_expiry.get_or_create(&label).set(secs);
                m.key_expiring
                    .get_or_create(&label)
                    .set(i64::from(secs < KEY_WARNING_SECS as f64));
            }
        }
    }

    fn registry(&self) -> &Registry {
        &metrics().registry
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn readiness_needs_a_leader_and_a_short_apply_lag() {
        let mut h = RaftHealth {
            term: 3,
            leader: None,
            last_log_index: 10,
            applied_index: 10,
        };
        assert!(h.not_ready().unwrap().contains("no leader"));
        h.leader = Some(1);
        assert_eq!(h.not_ready(), None);
        h.last_log_index = 10 + MAX_READY_LAG + 1;
        assert!(h.not_ready().unwrap().contains("not applied"));
    }

    #[test]
    fn families_encode_with_the_ringzero_prefix() {
        let m = metrics();
        m.gate("entry:write", true);
        m.batch(3, 0.002, true);
        m.issued("workload", 2);
        m.join("joined");
        let text = ringzero_telemetry::encode(&m.registry);
        for want in [
            "ringzero_gate_decisions_total{operation=\"entry:write\",decision=\"allow\"}",
            "ringzero_raft_writes_total",
            "ringzero_raft_batch_commands_bucket",
            "ringzero_svids_issued_total{kind=\"workload\"}",
            "ringzero_join_attempts_total{outcome=\"joined\"}",
            "ringzero_raft_term",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }
}
