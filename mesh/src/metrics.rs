//! Counters for `/metrics` (Prometheus text format), lock-free.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use crate::verify::Refusal;

/// Upper bounds of the handshake latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Traffic direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::Inbound => 0,
            Direction::Outbound => 1,
        }
    }
}

/// Log lines a (direction, refusal reason) may write per second; past it refusals are only
/// counted, and the next line written says how many went unlogged. A flood of bad handshakes
/// then costs a counter increment each, not a line in the log.
const REFUSAL_LINES_PER_SECOND: u64 = 5;

/// The log budget of one (direction, refusal reason).
#[derive(Debug, Default)]
struct LogBudget {
    /// The second (since the Unix epoch) `used` counts in.
    second: AtomicU64,
    used: AtomicU64,
    /// Refusals not logged since the last line written.
    unlogged: AtomicU64,
}

impl LogBudget {
    /// `Some(unlogged since the last line)` when a line may be written now.
    fn take(&self, now_secs: u64) -> Option<u64> {
        if self.second.swap(now_secs, Relaxed) != now_secs {
            self.used.store(0, Relaxed);
        }
        if self.used.fetch_add(1, Relaxed) < REFUSAL_LINES_PER_SECOND {
            Some(self.unlogged.swap(0, Relaxed))
        } else {
            self.unlogged.fetch_add(1, Relaxed);
            None
        }
    }
}

#[derive(Debug, Default)]
struct PerDirection {
    refusals: [AtomicU64; Refusal::ALL.len()],
    log_budget: [LogBudget; Refusal::ALL.len()],
    handshakes: AtomicU64,
    open: AtomicU64,
    connections: AtomicU64,
    target_failures: AtomicU64,
    /// Bytes received from the TLS peer / sent to it.
    bytes_from_peer: AtomicU64,
    bytes_to_peer: AtomicU64,
    /// The histogram's count is `handshakes`.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_sum_us: AtomicU64,
}

/// The sidecar's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    dirs: [PerDirection; 2],
    svid_updates: AtomicU64,
}

impl Metrics {
    fn dir(&self, d: Direction) -> &PerDirection {
        &self.dirs[d.index()]
    }

    /// Counts a refusal. `Some(n)` when it may be logged (`n` refusals of this direction and
    /// reason went unlogged before it), `None` when this second's lines are spent.
    pub fn refused(&self, d: Direction, why: Refusal) -> Option<u64> {
        let dir = self.dir(d);
        dir.refusals[why.index()].fetch_add(1, Relaxed);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        dir.log_budget[why.index()].take(now)
    }

    /// How many connections were refused for `why`.
    pub fn refusals(&self, d: Direction, why: Refusal) -> u64 {
        self.dir(d).refusals[why.index()].load(Relaxed)
    }

    pub fn handshake_done(&self, d: Direction, took: Duration) {
        let dir = self.dir(d);
        dir.handshakes.fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&dir.latency_buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        dir.latency_sum_us
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn target_failed(&self, d: Direction) {
        self.dir(d).target_failures.fetch_add(1, Relaxed);
    }

    pub fn bytes(&self, d: Direction, from_peer: u64, to_peer: u64) {
        let dir = self.dir(d);
        dir.bytes_from_peer.fetch_add(from_peer, Relaxed);
        dir.bytes_to_peer.fetch_add(to_peer, Relaxed);
    }

    /// Counts an open connection until the guard drops.
    pub fn open(&self, d: Direction) -> OpenGuard<'_> {
        let dir = self.dir(d);
        dir.open.fetch_add(1, Relaxed);
        dir.connections.fetch_add(1, Relaxed);
        OpenGuard(&dir.open)
    }

    pub fn open_connections(&self) -> u64 {
        self.dirs.iter().map(|d| d.open.load(Relaxed)).sum()
    }

    pub fn svid_updated(&self) {
        self.svid_updates.fetch_add(1, Relaxed);
    }

    /// Renders the Prometheus text exposition; `svid_not_after` is the current SVID's expiry.
    pub fn render(&self, svid_not_after: Option<SystemTime>, now: SystemTime) -> String {
        let mut out = String::with_capacity(4096);
        let name = "ringzero_mesh_refusals_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections refused at the handshake, by reason.\n# TYPE {name} counter"
        );
        for d in [Direction::Inbound, Direction::Outbound] {
            for r in Refusal::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{direction=\"{}\",reason=\"{}\"}} {}",
                    d.as_str(),
                    r.as_str(),
                    self.refusals(d, r)
                );
            }
        }
        let simple: [Family; 6] = [
            (
                "ringzero_mesh_open_connections",
                "gauge",
                "Proxied connections open now.",
                |d| &d.open,
            ),
            (
                "ringzero_mesh_connections_total",
                "counter",
                "Connections proxied after a successful handshake.",
                |d| &d.connections,
            ),
            (
                "ringzero_mesh_handshakes_total",
                "counter",
                "Successful mTLS handshakes.",
                |d| &d.handshakes,
            ),
            (
                "ringzero_mesh_target_failures_total",
                "counter",
                "Connections dropped because the target could not be reached.",
                |d| &d.target_failures,
            ),
            (
                "ringzero_mesh_bytes_from_peer_total",
                "counter",
                "Bytes received from the mTLS peer (plaintext).",
                |d| &d.bytes_from_peer,
            ),
            (
                "ringzero_mesh_bytes_to_peer_total",
                "counter",
                "Bytes sent to the mTLS peer (plaintext).",
                |d| &d.bytes_to_peer,
            ),
        ];
        for (name, kind, help, field) in simple {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for d in [Direction::Inbound, Direction::Outbound] {
                let _ = writeln!(
                    out,
                    "{name}{{direction=\"{}\"}} {}",
                    d.as_str(),
                    field(self.dir(d)).load(Relaxed)
                );
            }
        }
        let name = "ringzero_mesh_handshake_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} mTLS handshake latency.\n# TYPE {name} histogram"
        );
        for d in [Direction::Inbound, Direction::Outbound] {
            let dir = self.dir(d);
            let label = d.as_str();
            for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&dir.latency_buckets) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{direction=\"{label}\",le=\"{bound}\"}} {}",
                    bucket.load(Relaxed)
                );
            }
            let count = dir.handshakes.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{direction=\"{label}\",le=\"+Inf\"}} {count}\n{name}_sum{{direction=\"{label}\"}} {}\n{name}_count{{direction=\"{label}\"}} {count}",
                dir.latency_sum_us.load(Relaxed) as f64 / 1e6
            );
        }
        let name = "ringzero_mesh_svid_expiry_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Seconds until the current SVID expires (negative once expired, absent before the first SVID).\n# TYPE {name} gauge"
        );
        if let Some(not_after) = svid_not_after {
            let secs = match not_after.duration_since(now) {
                Ok(left) => i128::from(left.as_secs()),
                Err(past) => -i128::from(past.duration().as_secs()),
            };
            let _ = writeln!(out, "{name} {secs}");
        }
        let name = "ringzero_mesh_svid_updates_total";
        let _ = writeln!(
            out,
            "# HELP {name} SVIDs received from the Workload API.\n# TYPE {name} counter\n{name} {}",
            self.svid_updates.load(Relaxed)
        );
        out
    }
}

/// A metric family with one value per direction: name, type, help, field.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PerDirection) -> &AtomicU64,
);

/// Decrements the open-connections gauge on drop.
#[derive(Debug)]
pub struct OpenGuard<'a>(&'a AtomicU64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_lines_are_rate_limited_and_every_refusal_counted() {
        let budget = LogBudget::default();
        let logged: Vec<_> = (0..20).map(|_| budget.take(100)).collect();
        assert_eq!(
            logged.iter().filter(|l| l.is_some()).count() as u64,
            REFUSAL_LINES_PER_SECOND
        );
        assert!(
            logged[REFUSAL_LINES_PER_SECOND as usize..]
                .iter()
                .all(Option::is_none)
        );
        // The next second's first line tells how many went unlogged.
        assert_eq!(budget.take(101), Some(20 - REFUSAL_LINES_PER_SECOND));
        assert_eq!(budget.take(101), Some(0));

        let metrics = Metrics::default();
        for _ in 0..50 {
            let _ = metrics.refused(Direction::Inbound, Refusal::Overloaded);
        }
        assert_eq!(
            metrics.refusals(Direction::Inbound, Refusal::Overloaded),
            50
        );
        assert_eq!(
            metrics.refusals(Direction::Outbound, Refusal::Overloaded),
            0
        );
    }
}
