//! The statistics of a run: successes, rate, latency percentiles (nearest rank over every
//! measured latency, sorted) and errors by class.

use std::collections::BTreeMap;
use std::time::Duration;

/// What a closed-loop run measured in its window.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Calls that succeeded and completed inside the window.
    pub calls: u64,
    /// Calls that failed and completed inside the window, by class (a gRPC code name, or
    /// `Transport` when the server never answered).
    pub errors: BTreeMap<String, u64>,
    /// The measured window.
    pub window: Duration,
    /// Latency percentiles of the successful calls (zero when there were none).
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl Summary {
    /// The summary of `latencies` (successful calls, any order), `errors` and `window`.
    pub fn new(
        mut latencies: Vec<Duration>,
        errors: BTreeMap<String, u64>,
        window: Duration,
    ) -> Self {
        latencies.sort_unstable();
        Self {
            calls: latencies.len() as u64,
            errors,
            window,
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            p999: percentile(&latencies, 0.999),
            max: latencies.last().copied().unwrap_or_default(),
        }
    }

    /// Successful calls per second of the window (0 for an empty window).
    pub fn rate(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.calls as f64 / secs
        } else {
            0.0
        }
    }

    /// Failed calls, all classes together.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The nearest-rank `q`-quantile of `sorted` (ascending): the smallest value with at least
/// `q` of the values at or below it; zero for no values.
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let n = sorted.len();
    let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<Duration> = (1..=1000).map(ms).collect();
        assert_eq!(percentile(&sorted, 0.50), ms(500));
        assert_eq!(percentile(&sorted, 0.99), ms(990));
        assert_eq!(percentile(&sorted, 0.999), ms(999));
        assert_eq!(percentile(&sorted, 1.0), ms(1000));
        assert_eq!(percentile(&sorted, 0.0), ms(1));
        assert_eq!(percentile(&[ms(7)], 0.999), ms(7));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        // Out-of-range quantiles are clamped, not an index out of bounds.
        assert_eq!(percentile(&sorted, 2.0), ms(1000));
        assert_eq!(percentile(&sorted, -1.0), ms(1));
        assert_eq!(percentile(&sorted, f64::NAN), ms(1));
    }

    #[test]
    fn summary_sorts_and_counts() {
        let lat = vec![ms(30), ms(10), ms(20), ms(40)];
        let errors = BTreeMap::from([("Unavailable".to_owned(), 2), ("Transport".to_owned(), 1)]);
        let s = Summary::new(lat, errors, Duration::from_secs(2));
        assert_eq!(s.calls, 4);
        assert_eq!(s.rate(), 2.0);
        assert_eq!(s.error_count(), 3);
        assert_eq!(
            (s.p50, s.p99, s.p999, s.max),
            (ms(20), ms(40), ms(40), ms(40))
        );
    }

    #[test]
    fn empty_run_is_all_zero() {
        let s = Summary::new(Vec::new(), BTreeMap::new(), Duration::ZERO);
        assert_eq!(s.calls, 0);
        assert_eq!(s.rate(), 0.0);
        assert_eq!((s.p50, s.max), (Duration::ZERO, Duration::ZERO));
    }
}
