//! The verified-token cache: a token seen before skips signature verification and is evaluated
//! from its blocks' shapes, without building a Datalog authorizer.
//!
//! Safety argument — the cache can never turn a deny into an allow:
//! - entries are keyed by the SHA-256 of the token's exact bytes, so a hit is the same token;
//! - an entry remembers the root key it was verified with, and is used only while the caller's
//!   key set still maps that key id to that same key (a removed or replaced key is a miss, and
//!   the full path then refuses the token);
//! - every call checks the entry's revocation ids against the caller's revocation set, before
//!   Datalog, exactly as the uncached path does, and drops the entry when one is revoked;
//! - only tokens whose every block passed the shape whitelist are ever inserted (a `Verified`
//!   exists only past it), so a hit never evaluates a block the uncached path would refuse;
//! - every call evaluates the token's checks and rights — expiry, bindings, rights — against
//!   the current request: an allow directly from the blocks' whitelisted shapes
//!   ([`super::native`], equivalent to Datalog for those shapes), a refusal by Datalog, which
//!   names the failed check;
//! - denied tokens are never cached, nor are tokens biscuit cannot evaluate (an authorizer
//!   that does not build is a refusal on every call, never decided from the shapes).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::authorize::{Verified, first_revoked, run_datalog, verify};
use super::native;
use super::{
    Decision, Denial, Grant, KeySet, Limits, MAX_TOKEN_LEN, Request, Revocations, TokenError,
};

type Digest = [u8; 32];

/// A bounded cache of verified tokens, shared by every request a verifier handles.
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Digest, Arc<Entry>>,
    /// Insertion order, for first-in-first-out eviction.
    order: VecDeque<Digest>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("entries", &self.entries.len())
            .finish()
    }
}

struct Entry {
    verified: Verified,
    subject: Option<String>,
}

impl TokenCache {
    /// A cache holding at most `capacity` verified tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent in a way that
        // matters for safety (every use re-checks keys and revocations), so recover.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Authorizes `req` with `token`, verifying signatures only on first sight.
    pub fn authorize(
        &self,
        token: &str,
        keys: &KeySet,
        revocations: &impl Revocations,
        req: &Request<'_>,
        limits: Limits,
    ) -> Decision {
        let (token, digest) = match self.lookup(token, keys, revocations, req, limits) {
            Ok(decision) => return decision,
            Err(miss) => miss,
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        let verified = match verify(token, keys, revocations) {
            Ok(v) => v,
            Err(d) => return Decision::Deny(d),
        };
        let (outcome, subject) = run_datalog(&verified.biscuit, req, limits, true);
        let decision = match outcome {
            Ok(()) => Decision::Allow(Grant {
                subject: subject.clone(),
                root_key_id: verified.root_key_id,
                revocation_ids: verified.revocation_ids.clone(),
            }),
            Err(d) => Decision::Deny(d),
        };
        // A token that verified is worth keeping even when this request was refused by its
        // checks. Not one that biscuit cannot evaluate at all (a block it will not load): the
        // shapes would answer for it where Datalog refuses it, so it stays a miss every time.
        if !matches!(decision, Decision::Deny(Denial::Malformed(_))) {
            self.insert(digest, Entry { verified, subject });
        }
        decision
    }

    /// The decision [`authorize`](Self::authorize) would make, when it needs no signature
    /// verification: for a token verified before with a key still trusted, or one too large
    /// to be a token. `None` means the full path must run — it costs signature checks, which
    /// callers may want to run off an async runtime's workers; this one costs about a
    /// microsecond to allow (the blocks' shapes, [`super::native`]) and one Datalog evaluation
    /// (tens of microseconds) to refuse.
    pub fn authorize_cached(
        &self,
        token: &str,
        keys: &KeySet,
        revocations: &impl Revocations,
        req: &Request<'_>,
        limits: Limits,
    ) -> Option<Decision> {
        self.lookup(token, keys, revocations, req, limits).ok()
    }

    /// The cached decision, or the trimmed token and its digest for the full path.
    fn lookup<'t>(
        &self,
        token: &'t str,
        keys: &KeySet,
        revocations: &impl Revocations,
        req: &Request<'_>,
        limits: Limits,
    ) -> Result<Decision, (&'t str, Digest)> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            // Worded as the uncached path words it.
            return Ok(Decision::Deny(Denial::Malformed(
                TokenError::TooLarge.to_string(),
            )));
        }
        let digest = digest(token.as_bytes());
        let Some(entry) = self.lock().entries.get(&digest).cloned() else {
            return Err((token, digest));
        };
        let v = &entry.verified;
        if keys.get(v.root_key_id) != Some(&v.key) {
            // The key it was verified with is gone or replaced: verify again from scratch.
            self.remove(&digest);
            return Err((token, digest));
        }
        if let Some(denial) = first_revoked(&v.revocation_ids, revocations) {
            self.remove(&digest);
            return Ok(Decision::Deny(denial));
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        let grant = || {
            Decision::Allow(Grant {
                subject: entry.subject.clone(),
                root_key_id: v.root_key_id,
                revocation_ids: v.revocation_ids.clone(),
            })
        };
        if native::allows(&v.shape, req) {
            return Ok(grant());
        }
        // Refused: Datalog names the failed check, as the uncached path does.
        Ok(match run_datalog(&v.biscuit, req, limits, false).0 {
            Ok(()) => grant(),
            Err(d) => Decision::Deny(d),
        })
    }

    fn insert(&self, digest: Digest, entry: Entry) {
        let mut inner = self.lock();
        if inner.entries.contains_key(&digest) {
            return;
        }
        while inner.entries.len() >= self.capacity {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.entries.remove(&old);
                }
                None => break,
            }
        }
        inner.entries.insert(digest, Arc::new(entry));
        inner.order.push_back(digest);
    }

    fn remove(&self, digest: &Digest) {
        let mut inner = self.lock();
        if inner.entries.remove(digest).is_some() {
            inner.order.retain(|d| d != digest);
        }
    }

    /// Drops every entry with a revoked block. Calls check revocations anyway; this frees memory
    /// as soon as a revocation arrives.
    pub fn forget_revoked(&self, revocations: &impl Revocations) {
        let mut inner = self.lock();
        let doomed: Vec<Digest> = inner
            .entries
            .iter()
            .filter(|(_, e)| first_revoked(&e.verified.revocation_ids, revocations).is_some())
            .map(|(d, _)| *d)
            .collect();
        for d in &doomed {
            inner.entries.remove(d);
        }
        inner.order.retain(|d| !doomed.contains(d));
    }

    /// Empties the cache.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.order.clear();
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (hits, misses) since creation.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

fn digest(bytes: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
