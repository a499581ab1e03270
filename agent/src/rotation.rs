//! When to renew a certificate: at half its actual lifetime, ± 10 % jitter, never in the past.
//!
//! The lifetime is the certificate's own validity, from the moment it was issued to `notAfter`.
//! The authority backdates `notBefore` by [`NOT_BEFORE_BACKDATE`] for clock skew; counting the
//! half-life from `notBefore` would pull it earlier, and for short TTLs into the past (a 20 s
//! SVID backdated 60 s is "past half-life" at birth, and would be reissued in a loop). So the
//! start is `notBefore + NOT_BEFORE_BACKDATE`, but never later than when the certificate was
//! received (an issuer that does not backdate) nor earlier than `notBefore`. The jitter spreads
//! SVIDs issued together over ± 10 % of the half-life, so that a thousand entries created at
//! once don't come back as one storm.

use std::time::{Duration, SystemTime};

use ringzero_policy::svid::NOT_BEFORE_BACKDATE;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::FromDer;

/// The jitter, as a fraction of the half-life, either way.
pub(crate) const JITTER: f64 = 0.10;

/// A certificate's validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When its lifetime is counted from: see the module docs.
    pub start: SystemTime,
}

impl Validity {
    /// A window whose lifetime counts from `notBefore + NOT_BEFORE_BACKDATE`, at most from
    /// `received` (when this process got the certificate, or any later time) and at least
    /// from `notBefore`.
    pub(crate) fn new(not_before: SystemTime, not_after: SystemTime, received: SystemTime) -> Self {
        let start = (not_before + NOT_BEFORE_BACKDATE)
            .min(received)
            .min(not_after)
            .max(not_before);
        Self {
            not_before,
            not_after,
            start,
        }
    }

    /// The validity of a DER certificate received at `received`.
    pub(crate) fn of(cert: &CertificateDer<'_>, received: SystemTime) -> Option<Self> {
        let (_, c) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
        let v = c.validity();
        let secs = |t: i64| {
            u64::try_from(t)
                .ok()
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
        };
        Some(Self::new(
            secs(v.not_before.timestamp())?,
            secs(v.not_after.timestamp())?,
            received,
        ))
    }

    /// Whether the certificate is expired at `now`.
    pub(crate) fn expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// A jitter factor in `[-JITTER, JITTER]` from the system's random source (0 if it fails).
pub(crate) fn random_jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.0;
    }
    let unit = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX); // [0, 1]
    (unit * 2.0 - 1.0) * JITTER
}

/// How long from `now` until the certificate should be renewed: at
/// `start + (lifetime / 2) × (1 + jitter)` where `lifetime = not_after - start`, with `jitter`
/// clamped to `±JITTER`; zero when that moment has passed (renew now, never "in the past").
pub(crate) fn renew_in(validity: Validity, jitter: f64, now: SystemTime) -> Duration {
    let lifetime = validity
        .not_after
        .duration_since(validity.start)
        .unwrap_or(Duration::ZERO);
    let jitter = if jitter.is_finite() {
        jitter.clamp(-JITTER, JITTER)
    } else {
        0.0
    };
    let half = lifetime.as_secs_f64() / 2.0;
    let offset = Duration::from_secs_f64((half * (1.0 + jitter)).max(0.0));
    let at = validity.start + offset;
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    /// Not backdated, received at `nb`.
    fn validity(nb: u64, na: u64) -> Validity {
        Validity::new(t(nb), t(na), t(nb))
    }

    #[test]
    fn half_life_without_jitter() {
        // A 1 h SVID backdated 60 s: issued and received at t=60.
        let v = Validity::new(t(0), t(3660), t(60));
        assert_eq!(v.start, t(60));
        assert_eq!(renew_in(v, 0.0, t(60)), Duration::from_secs(1800));
        // Loaded from disk much later: the backdate is still taken off.
        let v = Validity::new(t(0), t(3660), t(3000));
        assert_eq!(renew_in(v, 0.0, t(1000)), Duration::from_secs(1860 - 1000));
        // Not backdated: counted from not_before.
        let v = validity(0, 3600);
        assert_eq!(renew_in(v, 0.0, t(0)), Duration::from_secs(1800));
    }

    #[test]
    fn short_backdated_svids_are_not_renewed_at_birth() {
        // A 20 s SVID backdated 60 s: from not_before its half-life is already past; counted
        // from issuance it is 10 s away.
        let v = Validity::new(t(0), t(80), t(60));
        assert_eq!(renew_in(v, 0.0, t(60)), Duration::from_secs(10));
        for _ in 0..100 {
            let d = renew_in(v, random_jitter(), t(60));
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent_of_the_half_life() {
        let v = validity(0, 3600);
        let now = t(0);
        assert_eq!(renew_in(v, JITTER, now), Duration::from_secs(1980));
        assert_eq!(renew_in(v, -JITTER, now), Duration::from_secs(1620));
        // Out-of-range or nonsense jitter is clamped.
        assert_eq!(renew_in(v, 5.0, now), Duration::from_secs(1980));
        assert_eq!(renew_in(v, -5.0, now), Duration::from_secs(1620));
        assert_eq!(renew_in(v, f64::NAN, now), Duration::from_secs(1800));
        for _ in 0..1000 {
            let j = random_jitter();
            assert!((-JITTER..=JITTER).contains(&j), "{j}");
            let d = renew_in(v, j, now);
            assert!(
                d >= Duration::from_secs(1620) && d <= Duration::from_secs(1980),
                "{d:?}"
            );
        }
    }

    #[test]
    fn never_in_the_past() {
        let v = validity(0, 100);
        assert_eq!(renew_in(v, 0.0, t(50)), Duration::ZERO);
        assert_eq!(renew_in(v, 0.0, t(99)), Duration::ZERO);
        assert_eq!(renew_in(v, JITTER, t(500)), Duration::ZERO);
        // A certificate whose window is inverted renews at once rather than panicking.
        assert_eq!(
            renew_in(Validity::new(t(100), t(0), t(200)), 0.0, t(200)),
            Duration::ZERO
        );
        assert!(v.expired_at(t(100)) && !v.expired_at(t(99)));
    }

    #[test]
    fn validity_of_a_real_certificate() {
        let td = ringzero_policy::TrustDomain::new("example.org").unwrap();
        let now = SystemTime::now();
        let ca = ringzero_policy::testing::CaBuilder::new(&td, "ca")
            .made_at(now)
            .ttl(Duration::from_secs(3600))
            .build();
        let v = Validity::of(ca.cert_der(), now).unwrap();
        assert!(v.not_before <= now && v.not_after > now);
        assert!(v.start >= v.not_before && v.start <= now);
        assert!(Validity::of(&CertificateDer::from(vec![1, 2, 3]), now).is_none());
    }
}
