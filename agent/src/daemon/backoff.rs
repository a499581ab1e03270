//! Retry pacing.

use std::time::Duration;

use crate::rotation::random_jitter;

/// Exponential backoff with jitter: 500 ms doubling up to 30 s.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Backoff::MIN }
    }
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    pub(super) fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base.mul_f64(1.0 + random_jitter())
    }

    pub(super) fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_and_resets() {
        let mut b = Backoff::default();
        let first = b.next();
        assert!(first >= Duration::from_millis(450) && first <= Duration::from_millis(550));
        for _ in 0..20 {
            assert!(b.next() <= Backoff::MAX.mul_f64(1.1));
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(550));
    }
}
