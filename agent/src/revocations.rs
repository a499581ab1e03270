//! The revoked capabilities this node's verifiers refuse, as pushed by the authority on the
//! entry feed (the whole set on connecting and on every change), each kept until the token it
//! revokes would have expired anyway.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ringzero_proto::pb;

/// A shared, replaceable set of revocation ids. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct RevocationSet(Arc<RwLock<HashMap<Vec<u8>, u64>>>);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RevocationSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the set with the authority's; returns how many entries it now holds.
    pub fn replace(&self, set: &pb::RevocationSet) -> usize {
        let now = now_ms();
        let fresh: HashMap<Vec<u8>, u64> = set
            .revocations
            .iter()
            .filter(|r| r.expires_ms > now && !r.id.is_empty() && r.id.len() <= 128)
            .map(|r| (r.id.clone(), r.expires_ms))
            .collect();
        let n = fresh.len();
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        n
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ringzero_policy::token::Revocations for RevocationSet {
    fn is_revoked(&self, id: &[u8]) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
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
        });
        assert_eq!(n, 1);
        assert!(set.is_revoked(&[1; 64]));
        assert!(!set.is_revoked(&[2; 64]));
        // A later push replaces the set: an entry the authority dropped is dropped here.
        set.replace(&pb::RevocationSet::default());
        assert!(!set.is_revoked(&[1; 64]));
        assert!(set.is_empty());
    }
}
