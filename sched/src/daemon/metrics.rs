//! The scheduler daemon's metrics and health, served on `sched run --metrics ADDR`.
//!
//! `/ready` answers 200 while the authority answered a lease request within twice the lease
//! time to live (holding the lease or standing by: either is a healthy scheduler); `/metrics`
//! tells whether this daemon holds the lease, its passes by outcome and the allocation
//! changes it wrote.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use ringzero_telemetry::{Health, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    change: String,
}

/// The families, registered once.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    lease_held: Gauge,
    passes: Family<OutcomeLabels, Counter>,
    changes: Family<ChangeLabels, Counter>,
    pass_seconds: Histogram,
    answered: Mutex<Option<Instant>>,
}

/// The process's scheduler metrics.
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("ringzero_sched");
        let m = Self {
            registry: Registry::default(),
            lease_held: Gauge::default(),
            passes: Family::default(),
            changes: Family::default(),
            pass_seconds: Histogram::new(ringzero_telemetry::latency_buckets()),
            answered: Mutex::new(None),
        };
        let r = &mut registry;
        r.register(
            "lease_held",
            "1 while this daemon holds its scope's scheduler lease",
            m.lease_held.clone(),
        );
        r.register(
            "passes",
            "Planning passes, by outcome (written, nothing, error)",
            m.passes.clone(),
        );
        r.register(
            "allocation_changes",
            "Allocation changes written, by change (place, stop, lost, remove)",
            m.changes.clone(),
        );
        r.register(
            "pass_seconds",
            "A planning pass: snapshot to written plan",
            m.pass_seconds.clone(),
        );
        Self { registry, ..m }
    }

    pub(crate) fn lease(&self, held: bool) {
        self.lease_held.set(i64::from(held));
    }

    /// The authority answered a lease request (granted or held by another).
    pub(crate) fn answered(&self) {
        *self.answered.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// A pass ended with `outcome` after `took`, writing `changes` (by kind).
    pub(crate) fn pass(&self, outcome: &str, took: Duration, changes: [(&str, usize); 4]) {
        self.passes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        self.pass_seconds.observe(took.as_secs_f64());
        for (change, n) in changes {
            if n > 0 {
                self.changes
                    .get_or_create(&ChangeLabels {
                        change: change.to_owned(),
                    })
                    .inc_by(n as u64);
            }
        }
    }
}

/// A scheduler's health, for its metrics endpoint.
#[derive(Debug, Clone, Copy)]
pub struct SchedHealth {
    /// The lease's time to live: `/ready` wants an answer within twice it.
    pub lease_ttl: Duration,
}

impl Health for SchedHealth {
    fn ready(&self) -> Result<(), String> {
        let bound = (self.lease_ttl * 2).max(Duration::from_secs(10));
        match *metrics().answered.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(t) if t.elapsed() <= bound => Ok(()),
            Some(t) => Err(format!(
                "no answer from the authority for {} s",
                t.elapsed().as_secs()
            )),
            None => Err("the authority has not answered yet".into()),
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
    fn ready_follows_the_authoritys_answers_and_passes_encode() {
        let h = SchedHealth {
            lease_ttl: Duration::from_secs(3),
        };
        metrics().answered();
        assert!(h.ready().is_ok());
        metrics().pass(
            "written",
            Duration::from_millis(3),
            [("place", 2), ("stop", 0), ("lost", 0), ("remove", 0)],
        );
        let text = ringzero_telemetry::encode(&metrics().registry);
        assert!(
            text.contains("ringzero_sched_allocation_changes_total{change=\"place\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("ringzero_sched_passes_total{outcome=\"written\"} 1"),
            "{text}"
        );
    }
}
