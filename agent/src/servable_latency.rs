//! Commit-to-servable latency: from the moment the authority's leader proposed an entry's change
//! (the entry's `changed_ms`, on the leader's clock) to the moment this agent holds a valid SVID
//! for it in its cache (on the agent's clock — so skew between the two machines adds in; on one
//! machine it does not).
//!
//! [`ServableLatency`] is the hook for metrics: [`ServableLatency::record`] is called once per
//! entry change that became servable while the agent followed its feed (not for entries of a
//! full sync from scratch, whose change may be hours old). It keeps a bounded summary —
//! cumulative histogram buckets in Prometheus' `le` form, count, sum, and the last
//! [`RECENT`] samples for quantiles — so a metrics exporter can read
//! [`ServableLatency::summary`] and publish it as a histogram without this crate depending on a
//! metrics library.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds (ms) of the histogram's buckets; a last `+Inf` bucket is implied by `count`.
pub const BUCKETS_MS: [u64; 12] = [5, 10, 25, 50, 75, 100, 250, 500, 1000, 2500, 5000, 10000];
/// Samples kept for quantiles.
pub const RECENT: usize = 1024;

#[derive(Debug, Default)]
struct Inner {
    count: u64,
    sum: Duration,
    max: Duration,
    /// Samples ≤ `BUCKETS_MS[i]`, cumulative.
    buckets: [u64; BUCKETS_MS.len()],
    recent: VecDeque<Duration>,
}

/// A shared, bounded summary of commit-to-servable latencies (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct ServableLatency(Arc<Mutex<Inner>>);

/// What [`ServableLatency::summary`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub sum: Duration,
    pub max: Duration,
    /// `(le_ms, cumulative count)`, one per [`BUCKETS_MS`].
    pub buckets: Vec<(u64, u64)>,
    /// Over the last [`RECENT`] samples (`None` without any).
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl ServableLatency {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent in a way that matters.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records one entry change that became servable `latency` after its commit.
    pub fn record(&self, latency: Duration) {
        crate::metrics::metrics().servable(latency);
        let mut inner = self.lock();
        inner.count = inner.count.saturating_add(1);
        inner.sum = inner.sum.saturating_add(latency);
        inner.max = inner.max.max(latency);
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            if ms <= *le {
                inner.buckets[i] = inner.buckets[i].saturating_add(1);
            }
        }
        if inner.recent.len() >= RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(latency);
    }

    /// The summary so far.
    pub fn summary(&self) -> LatencySummary {
        let inner = self.lock();
        let mut recent: Vec<Duration> = inner.recent.iter().copied().collect();
        recent.sort_unstable();
        LatencySummary {
            count: inner.count,
            sum: inner.sum,
            max: inner.max,
            buckets: BUCKETS_MS
                .iter()
                .copied()
                .zip(inner.buckets.iter().copied())
                .collect(),
            p50: quantile(&recent, 50),
            p99: quantile(&recent, 99),
        }
    }
}

/// The `pct`th percentile of sorted samples (nearest rank).
pub(crate) fn quantile(sorted: &[Duration], pct: usize) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn summary_is_bounded_and_cumulative() {
        let l = ServableLatency::new();
        assert_eq!(l.summary().p50, None);
        for ms in 1..=2000u64 {
            l.record(Duration::from_millis(ms % 200));
        }
        let s = l.summary();
        assert_eq!(s.count, 2000);
        assert_eq!(s.max, Duration::from_millis(199));
        assert_eq!(s.buckets.len(), BUCKETS_MS.len());
        assert!(s.buckets.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(s.buckets.last().unwrap().1, 2000);
        assert_eq!(l.0.lock().unwrap().recent.len(), RECENT);
        assert!(s.p50.unwrap() <= s.p99.unwrap());
        assert_eq!(
            quantile(&[Duration::from_millis(7)], 99),
            Some(Duration::from_millis(7))
        );
    }
}
