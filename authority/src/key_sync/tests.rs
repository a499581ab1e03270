#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use ringzero_policy::TrustDomain;
use ringzero_policy::tls::RotatingCert;

use super::*;

const NODE: NodeId = 2;

fn td() -> TrustDomain {
    TrustDomain::new("sync.example.org").unwrap()
}

/// A node's key directory with its current keys.
fn node_dir(dir: &Path) -> (KeyFiles, NodeKeys) {
    let keys = NodeKeys::generate(&td(), NODE, SystemTime::now()).unwrap();
    keys.save(dir).unwrap();
    (KeyFiles::new(dir), keys)
}

fn record(id: u64, node: NodeId, kind: KeyKind, public: Vec<u8>, status: KeyStatus) -> KeyRecord {
    KeyRecord {
        id,
        authority: node,
        kind,
        public_der: public,
        status,
        not_after_ms: 0,
        published_ms: 0,
    }
}

/// A running node's sync over an empty replicated state (no key records).
fn running(dir: &Path) -> (KeySync, tempfile::TempDir) {
    let (files, keys) = node_dir(dir);
    let raft = tempfile::tempdir().unwrap();
    let (_log, sm) = crate::store::open(raft.path()).unwrap();
    let (chain, key) = crate::node::own_svid(&keys, &td(), NODE).unwrap();
    let sync = KeySync {
        files,
        td: td(),
        node_id: NODE,
        cert: RotatingCert::new(chain, key).unwrap(),
        keys: CurrentKeys::new(keys),
        sm,
        lock: Arc::default(),
    };
    (sync, raft)
}

#[test]
fn only_the_leader_this_node_knows_may_ask_it_to_prepare() {
    let members = [1, 2, 3];
    assert!(may_prepare(1, &members, Some(1), 2).is_ok());
    // Not a member (a removed node, or a stranger of the trust domain).
    let e = may_prepare(7, &members, Some(7), 2).unwrap_err();
    assert!(e.contains("not a member"), "{e}");
    // A member that is not the leader this node knows, or no leader known.
    let e = may_prepare(3, &members, Some(1), 2).unwrap_err();
    assert!(e.contains("not the leader"), "{e}");
    assert!(may_prepare(3, &members, None, 2).is_err());
    // Never itself over the network.
    assert!(may_prepare(2, &members, Some(2), 2).is_err());
}

#[test]
fn a_staged_key_is_promoted_only_once_active() {
    let public = vec![1, 2, 3];
    let at = |status| vec![record(9, NODE, KeyKind::Jwt, public.clone(), status)];
    assert_eq!(
        staged_fate(&[], NODE, KeyKind::Jwt, &public),
        StagedFate::Keep
    );
    assert_eq!(
        staged_fate(&at(KeyStatus::Published), NODE, KeyKind::Jwt, &public),
        StagedFate::Keep
    );
    assert_eq!(
        staged_fate(&at(KeyStatus::Active), NODE, KeyKind::Jwt, &public),
        StagedFate::Promote
    );
    assert_eq!(
        staged_fate(&at(KeyStatus::Retired), NODE, KeyKind::Jwt, &public),
        StagedFate::Discard
    );
    // Another node's record, or another kind, says nothing about this node's key.
    let other = vec![record(
        9,
        3,
        KeyKind::Jwt,
        public.clone(),
        KeyStatus::Active,
    )];
    assert_eq!(
        staged_fate(&other, NODE, KeyKind::Jwt, &public),
        StagedFate::Keep
    );
    let kind = vec![record(
        9,
        NODE,
        KeyKind::Audit,
        public.clone(),
        KeyStatus::Active,
    )];
    assert_eq!(
        staged_fate(&kind, NODE, KeyKind::Jwt, &public),
        StagedFate::Keep
    );
}

#[test]
fn settling_keeps_the_old_key_until_activation_then_destroys_it_once_retired() {
    let dir = tempfile::tempdir().unwrap();
    let (files, old) = node_dir(dir.path());
    let new = NodeKeys::generate(&td(), NODE, SystemTime::now()).unwrap();
    files.stage(&new, KeyKind::X509Ca).unwrap();
    let old_pub = old.public_of(KeyKind::X509Ca).unwrap();
    let new_pub = new.public_of(KeyKind::X509Ca).unwrap();
    let ca =
        |id, public: &Vec<u8>, status| record(id, NODE, KeyKind::X509Ca, public.clone(), status);

    // Published, not active: the node keeps signing with the old key.
    let published = [
        ca(1, &old_pub, KeyStatus::Active),
        ca(5, &new_pub, KeyStatus::Published),
    ];
    assert_eq!(
        settle_files(&files, &published, NODE).unwrap(),
        Settled::default()
    );
    assert_eq!(files.load(0).unwrap().ca.cert_der(), old.ca.cert_der());
    assert!(files.is_staged(KeyKind::X509Ca));

    // Active: promoted; the old key is kept while its record is not retired.
    let active = [
        ca(1, &old_pub, KeyStatus::Active),
        ca(5, &new_pub, KeyStatus::Active),
    ];
    let s = settle_files(&files, &active, NODE).unwrap();
    assert_eq!(s.promoted, vec![KeyKind::X509Ca]);
    assert!(s.destroyed.is_empty());
    assert_eq!(files.load(0).unwrap().ca.cert_der(), new.ca.cert_der());
    assert!(!files.is_staged(KeyKind::X509Ca));
    assert!(files.has_old(KeyKind::X509Ca));
    // Idempotent.
    assert_eq!(
        settle_files(&files, &active, NODE).unwrap(),
        Settled::default()
    );

    // Retired: the old private key is destroyed.
    let retired = [
        ca(1, &old_pub, KeyStatus::Retired),
        ca(5, &new_pub, KeyStatus::Active),
    ];
    let s = settle_files(&files, &retired, NODE).unwrap();
    assert_eq!(s.destroyed, vec![KeyKind::X509Ca]);
    assert!(!files.has_old(KeyKind::X509Ca));
    assert_eq!(files.load(0).unwrap().ca.cert_der(), new.ca.cert_der());
}

#[test]
fn a_crash_after_activation_promotes_at_start_and_a_retired_staged_key_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _old) = node_dir(dir.path());
    let new = NodeKeys::generate(&td(), NODE, SystemTime::now()).unwrap();
    files.stage(&new, KeyKind::Audit).unwrap();
    files.stage(&new, KeyKind::Biscuit).unwrap();
    let audit = new.public_of(KeyKind::Audit).unwrap();
    let biscuit = new.public_of(KeyKind::Biscuit).unwrap();
    // The node went down after the activation committed, before it swapped: what `open`
    // runs before loading its keys promotes the active one; a staged key the cluster
    // retired before it ever signed is discarded.
    let records = [
        record(7, NODE, KeyKind::Audit, audit.clone(), KeyStatus::Active),
        record(8, NODE, KeyKind::Biscuit, biscuit, KeyStatus::Retired),
    ];
    let s = settle_files(&files, &records, NODE).unwrap();
    assert_eq!(s.promoted, vec![KeyKind::Audit]);
    assert_eq!(
        files.load(0).unwrap().public_of(KeyKind::Audit).unwrap(),
        audit
    );
    assert!(!files.is_staged(KeyKind::Biscuit));
}

#[tokio::test]
async fn prepare_stages_0600_returns_public_halves_and_is_idempotent() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (sync, _raft) = running(dir.path());
    let current = sync.signing(&ALL_KINDS).unwrap();
    let first = sync.prepare(&ALL_KINDS).await.unwrap();
    assert_eq!(first.len(), 4);
    for (p, (kind, now)) in first.iter().zip(&current) {
        assert_eq!(p.kind, *kind);
        assert_eq!(&p.current, now);
        assert_ne!(&p.staged, now, "{}", kind_name(*kind));
        assert!(sync.files.is_staged(*kind));
    }
    for f in ["ca.key", "biscuit.key", "jwt.key", "audit.key"] {
        let mode = std::fs::metadata(dir.path().join("next").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // No private key in what goes back to the leader.
    let wire = postcard::to_stdvec(&first).unwrap();
    let staged = sync.files.load_staged(KeyKind::X509Ca, 0).unwrap();
    let secrets = [
        staged.ca.key_pkcs8_der().to_vec(),
        staged.biscuit.private_text().as_bytes().to_vec(),
    ];
    for secret in secrets {
        assert!(!wire.windows(secret.len()).any(|w| w == secret.as_slice()));
    }
    // Asked again (a retry, a new leader): the same staged keys.
    assert_eq!(sync.prepare(&ALL_KINDS).await.unwrap(), first);
    // Not active in the state: a sync keeps the node signing with its current keys.
    assert_eq!(sync.sync().await.unwrap(), Settled::default());
    assert_eq!(sync.signing(&ALL_KINDS).unwrap(), current);
}
