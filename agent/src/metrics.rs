//! The agent's metrics and health, served on `agent run --metrics ADDR`.
//!
//! Bumped where things happen: Workload API connections and open streams (gauges held by
//! guards), fetch latency (admission and attestation to the first answer), SVID rotations,
//! feed events. Sampled when scraped: cached SVIDs, seconds until the earliest expiry, the
//! revocation feed's staleness. The families are process-wide, as a process runs one agent.
//!
//! `/ready` answers 200 once the agent is enrolled and serving (its first sync done) and while
//! its revocation feed spoke within the node API's staleness bound (30 s).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use ringzero_telemetry::{Health, Registry};

use crate::cache::SvidCache;
use crate::revocations::{MAX_STALENESS, RevocationSet};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

/// The families, registered once.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    connections: Gauge,
    streams: Family<MethodLabels, Gauge>,
    fetch_seconds: Family<MethodLabels, Histogram>,
    rotations: Counter,
    feed_events: Counter,
    servable_seconds: Histogram,
    cached: Gauge,
    earliest_expiry: Gauge<f64, AtomicU64>,
    feed_staleness: Gauge<f64, AtomicU64>,
    ready: Gauge,
}

/// The process's agent metrics.
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn latency_histogram() -> Histogram {
    Histogram::new(ringzero_telemetry::latency_buckets())
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("ringzero_agent");
        let m = Self {
            registry: Registry::default(),
            connections: Gauge::default(),
            streams: Family::default(),
            fetch_seconds: Family::new_with_constructor(latency_histogram),
            rotations: Counter::default(),
            feed_events: Counter::default(),
            servable_seconds: latency_histogram(),
            cached: Gauge::default(),
            earliest_expiry: Gauge::default(),
            feed_staleness: Gauge::default(),
            ready: Gauge::default(),
        };
        let r = &mut registry;
        r.register(
            "workload_connections",
            "Open Workload API connections (attested)",
            m.connections.clone(),
        );
        r.register(
            "workload_streams",
            "Open Workload API streams, by method",
            m.streams.clone(),
        );
        r.register(
            "workload_fetch_seconds",
            "Workload API fetches: from the call to its first answer (admission and attestation included), by method",
            m.fetch_seconds.clone(),
        );
        r.register(
            "svid_rotations",
            "Cached SVIDs replaced by a newer one",
            m.rotations.clone(),
        );
        r.register(
            "feed_events",
            "Events (heartbeats included) received on the authority's feed",
            m.feed_events.clone(),
        );
        r.register(
            "entry_servable_seconds",
            "From an entry's commit on the authority to its SVID being servable here",
            m.servable_seconds.clone(),
        );
        r.register("cached_svids", "X.509-SVIDs in the cache", m.cached.clone());
        r.register(
            "svid_earliest_expiry_seconds",
            "Seconds until the earliest cached SVID expires (absent with none)",
            m.earliest_expiry.clone(),
        );
        r.register(
            "feed_staleness_seconds",
            "Seconds since the authority's feed last spoke (-1: never)",
            m.feed_staleness.clone(),
        );
        r.register(
            "ready",
            "1 when enrolled, serving and the revocation feed is fresh",
            m.ready.clone(),
        );
        Self { registry, ..m }
    }

    /// An attested Workload API connection opened; closed when the guard drops.
    pub(crate) fn connection(&self) -> GaugeGuard {
        GaugeGuard::new(self.connections.clone())
    }

    /// A Workload API stream of `method` opened; closed when the guard drops.
    pub(crate) fn stream(&self, method: &str) -> GaugeGuard {
        GaugeGuard::new(
            self.streams
                .get_or_create(&MethodLabels {
                    method: method.to_owned(),
                })
                .clone(),
        )
    }

    /// A fetch of `method` answered after `took`.
    pub(crate) fn fetched(&self, method: &str, took: Duration) {
        self.fetch_seconds
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// A cached SVID was replaced by a newer one.
    pub(crate) fn rotated(&self) {
        self.rotations.inc();
    }

    /// The feed sent an event.
    pub(crate) fn feed_event(&self) {
        self.feed_events.inc();
    }

    /// An entry change became servable `took` after its commit.
    pub(crate) fn servable(&self, took: Duration) {
        self.servable_seconds.observe(took.as_secs_f64());
    }
}

/// Holds one unit of a gauge; gives it back on drop.
#[derive(Debug)]
pub(crate) struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(g: Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An agent's health, for its metrics endpoint.
#[derive(Debug, Clone)]
pub(crate) struct AgentHealth {
    pub(crate) cache: SvidCache,
    pub(crate) revocations: RevocationSet,
    /// Set once the agent is enrolled and its first sync completed.
    pub(crate) serving: std::sync::Arc<AtomicBool>,
}

impl Health for AgentHealth {
    fn ready(&self) -> Result<(), String> {
        if !self.serving.load(Ordering::Acquire) {
            return Err("not enrolled and synced yet".into());
        }
        if !self.revocations.is_fresh() {
            return Err(format!(
                "the authority's feed has not spoken for over {} s",
                MAX_STALENESS.as_secs()
            ));
        }
        Ok(())
    }

    fn refresh(&self) {
        let m = metrics();
        let snap = self.cache.snapshot();
        let mut count = 0i64;
        let mut earliest: Option<SystemTime> = None;
        for id in snap.identities() {
            count += 1;
            earliest = Some(earliest.map_or(id.not_after, |e| e.min(id.not_after)));
        }
        m.cached.set(count);
        if let Some(t) = earliest {
            let secs = match t.duration_since(SystemTime::now()) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            m.earliest_expiry.set(secs);
        }
        m.feed_staleness.set(
            self.revocations
                .since_heard()
                .map_or(-1.0, |d| d.as_secs_f64()),
        );
        m.ready.set(i64::from(self.ready().is_ok()));
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
    fn guards_give_back_and_families_encode() {
        let m = metrics();
        {
            let _c = m.connection();
            let _s = m.stream("FetchX509SVID");
            let text = ringzero_telemetry::encode(&m.registry);
            assert!(
                text.contains("ringzero_agent_workload_connections 1"),
                "{text}"
            );
            assert!(
                text.contains("ringzero_agent_workload_streams{method=\"FetchX509SVID\"} 1"),
                "{text}"
            );
        }
        m.fetched("FetchX509SVID", Duration::from_millis(2));
        let text = ringzero_telemetry::encode(&m.registry);
        assert!(
            text.contains("ringzero_agent_workload_connections 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "ringzero_agent_workload_fetch_seconds_count{method=\"FetchX509SVID\"} 1"
            ),
            "{text}"
        );
    }
}
