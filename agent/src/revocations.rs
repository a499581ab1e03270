//! The revoked capabilities and certificates this node's verifiers refuse, as pushed by the
//! authority on the entry feed (the whole set on connecting and on every change): revocation
//! ids of capabilities, and serials of SVIDs issued to nodes since evicted or banned, each kept
//! until what it revokes would have expired anyway.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ringzero_proto::pb;

/// How stale the set may be before verifiers refuse privileged operations.
pub(crate) const MAX_STALENESS: std::time::Duration = std::time::Duration::from_secs(30);

/// A shared, replaceable set of revocation ids. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub(crate) struct RevocationSet(Arc<RwLock<Sets>>);

#[derive(Debug, Default)]
struct Sets {
    /// When the authority last spoke on the feed (any event, heartbeats included).
    heard: Option<std::time::Instant>,
    /// Capability revocation ids → when the token would have expired.
    tokens: HashMap<Vec<u8>, u64>,
    /// Certificate serials of evicted or banned nodes → their not-after.
    serials: HashMap<Vec<u8>, u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RevocationSet {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Replaces the set with the authority's; returns how many entries it now holds.
    pub(crate) fn replace(&self, set: &pb::RevocationSet) -> usize {
        let now = now_ms();
        let tokens: HashMap<Vec<u8>, u64> = set
            .revocations
            .iter()
            .filter(|r| r.expires_ms > now && !r.id.is_empty() && r.id.len() <= 128)
            .map(|r| (r.id.clone(), r.expires_ms))
            .collect();
        let serials: HashMap<Vec<u8>, u64> = set
            .serials
            .iter()
            .filter(|r| r.not_after_ms > now && !r.serial.is_empty() && r.serial.len() <= 20)
            .map(|r| (r.serial.clone(), r.not_after_ms))
            .collect();
        let n = tokens.len() + serials.len();
        let mut s = self.0.write().unwrap_or_else(|p| p.into_inner());
        *s = Sets {
            heard: Some(std::time::Instant::now()),
            tokens,
            serials,
        };
        n
    }

    /// Marks the feed alive (every event, heartbeats included).
    pub(crate) fn heard(&self) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).heard = Some(std::time::Instant::now());
        crate::metrics::metrics().feed_event();
    }

    /// How long since the feed last spoke (`None`: never).
    pub(crate) fn since_heard(&self) -> Option<std::time::Duration> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .heard
            .map(|t| t.elapsed())
    }

    /// Whether the set is current: the feed spoke within [`MAX_STALENESS`]. A verifier on the
    /// node refuses privileged operations otherwise — a revocation it has not seen may exist.
    pub(crate) fn is_fresh(&self) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .heard
            .is_some_and(|t| t.elapsed() <= MAX_STALENESS)
    }

    /// Whether a certificate with this serial was revoked (its node evicted or banned).
    pub(crate) fn is_serial_revoked(&self, serial: &[u8]) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .serials
            .get(serial)
            .is_some_and(|&until| until > now_ms())
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let s = self.0.read().unwrap_or_else(|p| p.into_inner());
        s.tokens.len() + s.serials.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ringzero_policy::token::Revocations for RevocationSet {
    fn is_revoked(&self, id: &[u8]) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .tokens
            .get(id)
            .is_some_and(|&expires| expires > now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringzero_policy::token::Revocations;

    #[test]
    fn the_set_follows_the_authority_and_forgets_expired_entries() {
        let set = RevocationSet::new();
        assert!(!set.is_fresh(), "never heard from the authority: not fresh");
        let later = now_ms() + 60_000;
        let n = set.replace(&pb::RevocationSet {
            revocations: vec![
                pb::Revocation {
                    id: vec![1; 64],
                    expires_ms: later,
                },
                pb::Revocation {
                    id: vec![2; 64],
                    expires_ms: 1,
                },
                pb::Revocation {
                    id: vec![],
                    expires_ms: later,
                },
            ],
            serials: vec![pb::RevokedSerial {
                serial: vec![9; 16],
                not_after_ms: later,
            }],
        });
        assert_eq!(n, 2);
        assert!(set.is_fresh());
        assert!(set.is_serial_revoked(&[9; 16]));
        assert!(set.is_revoked(&[1; 64]));
        assert!(!set.is_revoked(&[2; 64]));
        // A later push replaces the set: an entry the authority dropped is dropped here.
        set.replace(&pb::RevocationSet::default());
        assert!(!set.is_revoked(&[1; 64]));
        assert!(set.is_empty());
    }
}
