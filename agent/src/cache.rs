//! The agent's in-memory identity cache: what the Workload API hands out.
//!
//! The agent's sync loop fills it (issued SVIDs with their keys, and the trust bundles); the
//! Workload API reads it. It is a [`tokio::sync::watch`] channel of immutable [`Snapshot`]s:
//! readers take a consistent snapshot without locking out writers, and every change wakes every
//! open `FetchX509SVID` stream, which then sends the latest full state (intermediate states
//! may be skipped, never mixed). It also holds what the mesh extension hands out beside the
//! SVIDs: the authority's mesh policies for this node's identities and the revoked serials.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use ringzero_policy::selector::{self, Selector};
use ringzero_policy::{SpiffeId, SpiffeIdPattern, TrustDomain};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use zeroize::Zeroizing;

/// One workload identity: a registration entry's SPIFFE ID and selectors, with the SVID issued
/// for it and its private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The registration entry this identity was issued for; the cache's key.
    pub entry_id: String,
    /// The SPIFFE ID of the SVID.
    pub spiffe_id: SpiffeId,
    /// Every selector a workload must have to receive this identity.
    pub selectors: Vec<Selector>,
    /// The X.509-SVID, leaf first, then intermediates (not the root).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key: unencrypted PKCS#8 DER of a P-256 key, wiped on drop.
    pub key: Zeroizing<Vec<u8>>,
    /// When the leaf expires.
    pub not_after: SystemTime,
    /// An operator-chosen label telling workloads with several identities which to use; often
    /// empty.
    pub hint: String,
    /// The revision at which the entry was created: of several identities of one workload, the
    /// oldest (lowest, then by entry id) is its default.
    pub created_revision: u64,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("entry_id", &self.entry_id)
            .field("spiffe_id", &self.spiffe_id)
            .field("selectors", &self.selectors)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .field("not_after", &self.not_after)
            .field("hint", &self.hint)
            .field("created_revision", &self.created_revision)
            .finish()
    }
}

/// An authority mesh policy as the agent holds it: workloads matching `from` may connect to
/// workloads matching `to`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MeshRule {
    pub to: SpiffeIdPattern,
    pub from: SpiffeIdPattern,
}

/// Revoked certificate serials → their not-after (unix ms).
pub(crate) type RevokedSerials = BTreeMap<Vec<u8>, u64>;

/// One consistent state of the cache.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    identities: BTreeMap<String, Arc<Identity>>,
    bundles: BTreeMap<TrustDomain, Vec<CertificateDer<'static>>>,
    /// Every trust domain's trusted JWT-SVID keys (from the bundle's `jwt` keys).
    jwt_keys: ringzero_policy::jwt::JwtBundles,
    /// The authority's mesh policies for this node's identities; `None` until first set.
    mesh_rules: Option<Arc<Vec<MeshRule>>>,
    /// Revoked certificate serials → their not-after (unix ms); `None` until first set.
    revoked_serials: Option<Arc<BTreeMap<Vec<u8>, u64>>>,
    revision: u64,
}

impl Snapshot {
    /// Every identity, ordered by entry id.
    pub(crate) fn identities(&self) -> impl Iterator<Item = &Arc<Identity>> {
        self.identities.values()
    }

    /// The identity issued for `entry_id`.
    pub(crate) fn identity(&self, entry_id: &str) -> Option<&Arc<Identity>> {
        self.identities.get(entry_id)
    }

    /// The identities whose entry selectors all appear among `workload` selectors (SPIRE's
    /// matching), oldest entry first (by `created_revision`, then entry id): the first is the
    /// workload's default SVID, and an entry created later can never take its place, whatever
    /// its id.
    pub(crate) fn matching(
        &self,
        workload: &[Selector],
    ) -> impl Iterator<Item = &Arc<Identity>> + '_ {
        let mut found: Vec<&Arc<Identity>> = self
            .identities
            .values()
            .filter(|id| selector::matches(&id.selectors, workload))
            .collect();
        // Stable, and the map iterates by id: equal revisions stay in id order.
        found.sort_by_key(|id| id.created_revision);
        found.into_iter()
    }

    /// The CA certificates trusted for `td`.
    pub(crate) fn bundle(&self, td: &TrustDomain) -> Option<&[CertificateDer<'static>]> {
        self.bundles.get(td).map(Vec::as_slice)
    }

    /// Every trust domain's CA certificates: the agent's own and, later, federated ones.
    pub(crate) fn bundles(&self) -> &BTreeMap<TrustDomain, Vec<CertificateDer<'static>>> {
        &self.bundles
    }

    /// Every trust domain's trusted JWT-SVID keys.
    pub(crate) fn jwt_bundles(&self) -> &ringzero_policy::jwt::JwtBundles {
        &self.jwt_keys
    }

    /// The authority's mesh policies for this node's identities and the revoked serials with
    /// their not-after (unix ms), once both were set (after the agent's first sync): before
    /// that, an empty set would read as "no revocation".
    pub(crate) fn mesh(&self) -> Option<(&[MeshRule], &RevokedSerials)> {
        Some((
            self.mesh_rules.as_deref()?,
            self.revoked_serials.as_deref()?,
        ))
    }

    /// Increases with every change; equal revisions are equal states.
    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }
}

/// The identity cache: cheap to clone, every clone is the same cache.
#[derive(Debug, Clone)]
pub struct SvidCache {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl Default for SvidCache {
    fn default() -> Self {
        Self::new()
    }
}

impl SvidCache {
    /// An empty cache: no identities, no bundles.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        Self { tx: Arc::new(tx) }
    }

    /// The current state.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.tx.borrow())
    }

    /// A receiver that sees the current state and is woken by every later change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Sets the CA certificates of `td` (an empty list removes the trust domain).
    pub fn set_bundle(&self, td: TrustDomain, cas: Vec<CertificateDer<'static>>) {
        self.modify(|s| {
            if cas.is_empty() {
                s.bundles.remove(&td).is_some()
            } else if s.bundles.get(&td) == Some(&cas) {
                false
            } else {
                s.bundles.insert(td, cas);
                true
            }
        });
    }

    /// Sets the trusted JWT-SVID keys of `td` (an empty list removes the trust domain).
    pub fn set_jwt_keys(&self, td: TrustDomain, keys: Vec<ringzero_policy::jwt::JwtKey>) {
        self.modify(|s| {
            if keys.is_empty() {
                s.jwt_keys.remove(&td).is_some()
            } else if s.jwt_keys.get(&td) == Some(&keys) {
                false
            } else {
                s.jwt_keys.insert(td, keys);
                true
            }
        });
    }

    /// Adds or replaces the identity of `identity.entry_id`.
    pub fn upsert(&self, identity: Identity) {
        self.modify(|s| {
            match s.identities.get(&identity.entry_id) {
                Some(old) if old.as_ref() == &identity => return false,
                Some(old) if old.chain != identity.chain => crate::metrics::metrics().rotated(),
                _ => {}
            }
            s.identities
                .insert(identity.entry_id.clone(), Arc::new(identity));
            true
        });
    }

    /// Removes the identity of `entry_id`; returns whether there was one.
    pub fn remove(&self, entry_id: &str) -> bool {
        let mut removed = false;
        self.modify(|s| {
            removed = s.identities.remove(entry_id).is_some();
            removed
        });
        removed
    }

    /// Replaces the authority's mesh policies (the whole set, as the feed sends it).
    pub fn set_mesh_rules(&self, mut rules: Vec<MeshRule>) {
        rules.sort_by_cached_key(|r| (r.to.to_string(), r.from.to_string()));
        rules.dedup();
        self.modify(|s| {
            if s.mesh_rules.as_deref() == Some(&rules) {
                return false;
            }
            s.mesh_rules = Some(Arc::new(rules));
            true
        });
    }

    /// Replaces the revoked certificate serials (serial → not-after, unix ms).
    pub fn set_revoked_serials(&self, serials: BTreeMap<Vec<u8>, u64>) {
        self.modify(|s| {
            if s.revoked_serials.as_deref() == Some(&serials) {
                return false;
            }
            s.revoked_serials = Some(Arc::new(serials));
            true
        });
    }

    /// Replaces every identity at once (a full sync), as one change.
    pub fn replace_all(&self, identities: Vec<Identity>) {
        let new: BTreeMap<String, Arc<Identity>> = identities
            .into_iter()
            .map(|id| (id.entry_id.clone(), Arc::new(id)))
            .collect();
        self.modify(|s| {
            if s.identities == new {
                return false;
            }
            s.identities = new;
            true
        });
    }

    /// Applies `change` to a copy of the state; publishes it (and wakes subscribers) only when
    /// `change` says it changed something.
    fn modify(&self, change: impl FnOnce(&mut Snapshot) -> bool) {
        self.tx.send_if_modified(|current| {
            let mut next = Snapshot::clone(current);
            if !change(&mut next) {
                return false;
            }
            next.revision = current.revision.wrapping_add(1);
            *current = Arc::new(next);
            true
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::time::Duration;

    use super::*;

    fn identity(entry: &str, uid: u32, cert: &[u8]) -> Identity {
        Identity {
            entry_id: entry.to_owned(),
            spiffe_id: SpiffeId::parse(&format!("spiffe://example.org/{entry}")).unwrap(),
            selectors: vec![Selector::uid(uid)],
            chain: vec![CertificateDer::from(cert.to_vec())],
            key: Zeroizing::new(vec![1, 2, 3]),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(10),
            hint: String::new(),
            created_revision: 0,
        }
    }

    #[tokio::test]
    async fn changes_wake_subscribers_and_no_ops_do_not() {
        let cache = SvidCache::new();
        let mut rx = cache.subscribe();
        rx.borrow_and_update();

        cache.upsert(identity("a", 1, b"x"));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().revision(), 1);

        cache.upsert(identity("a", 1, b"x"));
        cache.replace_all(vec![identity("a", 1, b"x")]);
        cache.set_bundle(TrustDomain::new("example.org").unwrap(), vec![]);
        assert!(!cache.remove("nope"));
        assert!(!rx.has_changed().unwrap(), "no-ops must not wake streams");

        cache.upsert(identity("a", 1, b"y"));
        assert!(rx.has_changed().unwrap());
        let snap = rx.borrow_and_update().clone();
        assert_eq!(snap.identity("a").unwrap().chain[0].as_ref(), b"y");

        let td = TrustDomain::new("example.org").unwrap();
        cache.set_bundle(td.clone(), vec![CertificateDer::from(vec![9])]);
        assert_eq!(cache.snapshot().bundle(&td).unwrap().len(), 1);

        cache.replace_all(vec![identity("b", 2, b"z"), identity("c", 1, b"w")]);
        let snap = cache.snapshot();
        assert!(snap.identity("a").is_none());
        let uid1 = [Selector::uid(1)];
        let matched: Vec<_> = snap.matching(&uid1).map(|i| i.entry_id.as_str()).collect();
        assert_eq!(matched, ["c"]);
        assert!(cache.remove("b"));
        assert_eq!(cache.snapshot().identities().count(), 1);
    }

    /// Of several identities matching one workload, the oldest entry comes first, even when a
    /// newer entry's id sorts before it.
    #[test]
    fn the_oldest_entry_is_the_default_whatever_the_ids() {
        let cache = SvidCache::new();
        let mut old = identity("ffff-payments", 7, b"p");
        old.created_revision = 10;
        let mut newer = identity("0000-attacker", 7, b"a");
        newer.created_revision = 42;
        let mut same_rev_b = identity("bbbb", 7, b"b");
        same_rev_b.created_revision = 42;
        cache.replace_all(vec![same_rev_b, newer, old]);
        let snap = cache.snapshot();
        let uid = [Selector::uid(7)];
        let order: Vec<_> = snap.matching(&uid).map(|i| i.entry_id.as_str()).collect();
        assert_eq!(order, ["ffff-payments", "0000-attacker", "bbbb"]);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let mut id = identity("a", 1, b"x");
        id.key = Zeroizing::new(b"SECRETKEY".to_vec());
        let shown = format!("{id:?}");
        assert!(!shown.contains("SECRETKEY") && !shown.contains("83, 69"));
    }
}
