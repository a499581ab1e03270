//! First contact without a certificate: join-token redemption and invite login.
//!
//! Anyone who can reach the port can try, so what an attempt costs is bounded *before* anything
//! is signed or proposed:
//!
//! - **Per source address**: a token bucket per IP (per /64 for IPv6) limits attempts, so one
//!   client hammering the port refuses only itself, never a legitimate joiner elsewhere.
//! - **Checked against local state first**: an unknown token id, a wrong secret (compared in
//!   constant time), an expired, used or mismatched token is refused from the leader's state
//!   without a Raft write. The compare-and-set in apply still decides between racing
//!   redemptions of a valid token.
//! - **Failures are summarized**: each refused attempt goes through the gate's denial windows
//!   under the actor `anonymous`, so the audit log gets one record per distinct cause and a
//!   count, not one record per attempt.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use subtle::ConstantTimeEq;

use crate::command::{JoinPurpose, Rejection};
use crate::state::JoinTokenRecord;

/// Attempts one source may burst.
pub(crate) const ATTEMPTS_BURST: f64 = 10.0;
/// Attempts per second one source regains.
pub(crate) const ATTEMPTS_PER_SECOND: f64 = 2.0;
/// Sources remembered at once; the least recently seen is forgotten first (a forgotten source
/// starts again with a full bucket, which costs at most one burst).
const MAX_SOURCES: usize = 4096;

/// Token buckets per source address.
#[derive(Debug, Default)]
pub(crate) struct PerSourceLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// The address a limit applies to: an IPv4 address, or an IPv6 /64 (one host usually holds a
/// whole /64).
fn source_key(addr: Option<SocketAddr>) -> IpAddr {
    match addr.map(|a| a.ip()) {
        Some(IpAddr::V6(v6)) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        Some(ip) => ip,
        // Not fed by the TLS listener (in-process tests): one shared bucket.
        None => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    }
}

impl PerSourceLimiter {
    /// Takes one attempt from `addr`'s bucket; `false` when it is empty.
    pub(crate) fn allow(&self, addr: Option<SocketAddr>) -> bool {
        let key = source_key(addr);
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() >= MAX_SOURCES
            && !b.contains_key(&key)
            && let Some(oldest) = b.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k)
        {
            b.remove(&oldest);
        }
        let (tokens, last) = b.entry(key).or_insert((ATTEMPTS_BURST, now));
        let refill = now.duration_since(*last).as_secs_f64() * ATTEMPTS_PER_SECOND;
        *tokens = (*tokens + refill).min(ATTEMPTS_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Checks a presented join token or invite against the leader's state, before any work: the
/// same checks apply makes (which still decides, atomically, between racing redemptions).
/// `asked_name` is the name a joiner gave for itself, if any.
pub(crate) fn precheck(
    record: Option<&JoinTokenRecord>,
    presented_sha256: &[u8; 32],
    asked_name: Option<&str>,
    purposes: &[JoinPurpose],
    now_ms: u64,
) -> Result<(), Rejection> {
    // Compared before anything else about the record, in constant time, so that an existing id
    // with a wrong secret is answered like an unknown one.
    let Some(t) = record else {
        return Err(Rejection::JoinTokenUnknown);
    };
    if !bool::from(t.secret_sha256.ct_eq(presented_sha256)) {
        return Err(Rejection::JoinTokenMismatch);
    }
    if !purposes.contains(&t.purpose) {
        return Err(Rejection::JoinTokenUnknown);
    }
    if t.used {
        return Err(Rejection::JoinTokenUsed);
    }
    if t.expires_ms <= now_ms {
        return Err(Rejection::JoinTokenExpired);
    }
    if asked_name.is_some_and(|n| !n.is_empty() && n != t.node_name) {
        return Err(Rejection::JoinTokenWrongName);
    }
    Ok(())
}

/// What a refused attempt tells the caller: unknown ids and wrong secrets get one answer, so
/// the reply never confirms that an id exists.
pub(crate) fn public_reason(r: &Rejection) -> String {
    match r {
        Rejection::JoinTokenUnknown | Rejection::JoinTokenMismatch => {
            "unknown token or wrong secret".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(secret: [u8; 32]) -> JoinTokenRecord {
        JoinTokenRecord {
            secret_sha256: secret,
            node_name: "n7".into(),
            purpose: JoinPurpose::Agent,
            expires_ms: 1_000,
            used: false,
        }
    }

    #[test]
    fn every_refusal_is_decided_before_any_work() {
        let ok = record([1; 32]);
        let agent = [JoinPurpose::Agent];
        assert_eq!(
            precheck(Some(&ok), &[1; 32], Some("n7"), &agent, 10),
            Ok(())
        );
        assert_eq!(precheck(Some(&ok), &[1; 32], None, &agent, 10), Ok(()));
        assert_eq!(
            precheck(None, &[1; 32], None, &agent, 10),
            Err(Rejection::JoinTokenUnknown)
        );
        assert_eq!(
            precheck(Some(&ok), &[2; 32], None, &agent, 10),
            Err(Rejection::JoinTokenMismatch)
        );
        assert_eq!(
            precheck(Some(&ok), &[1; 32], None, &[JoinPurpose::User], 10),
            Err(Rejection::JoinTokenUnknown)
        );
        assert_eq!(
            precheck(Some(&ok), &[1; 32], Some("n8"), &agent, 10),
            Err(Rejection::JoinTokenWrongName)
        );
        assert_eq!(
            precheck(Some(&ok), &[1; 32], None, &agent, 1_000),
            Err(Rejection::JoinTokenExpired)
        );
        let used = JoinTokenRecord {
            used: true,
            ..record([1; 32])
        };
        assert_eq!(
            precheck(Some(&used), &[1; 32], None, &agent, 10),
            Err(Rejection::JoinTokenUsed)
        );
        // Unknown and wrong secret read the same to the caller.
        assert_eq!(
            public_reason(&Rejection::JoinTokenUnknown),
            public_reason(&Rejection::JoinTokenMismatch)
        );
    }

    #[test]
    fn one_source_exhausts_only_its_own_bucket() {
        let l = PerSourceLimiter::default();
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let a2: SocketAddr = "10.0.0.1:2000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1000".parse().unwrap();
        let allowed = (0..100).filter(|_| l.allow(Some(a))).count();
        assert_eq!(allowed, ATTEMPTS_BURST as usize);
        assert!(
            !l.allow(Some(a2)),
            "another port of the same host shares the bucket"
        );
        assert!(l.allow(Some(b)), "another host is not starved");
        // IPv6 sources share a bucket per /64.
        let v6a: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let v6b: SocketAddr = "[2001:db8::2]:1".parse().unwrap();
        for _ in 0..ATTEMPTS_BURST as usize {
            assert!(l.allow(Some(v6a)));
        }
        assert!(!l.allow(Some(v6b)));
    }
}
