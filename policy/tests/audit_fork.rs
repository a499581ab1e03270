//! A verifier that remembers a head (and its leaf digest) refuses a later export that forks
//! from it, naming the first record that differs; accepts honest extensions, carries the digest
//! across segments, and refuses what cannot be linked to the remembered head.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;
use ringzero_policy::audit::{
    AuditEntry, AuditKeys, Decision, ExportError, ExportOptions, Frontier, KeyStatus, LeafDigest,
    TreeHead, VerifiedExport, VerifyOptions, public_key_of, verify_export_with, write_export,
};

const T0: u64 = 1_767_225_600_000;

fn key() -> Ed25519KeyPair {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

/// Record `seq` of history `branch` (0 is the honest one).
fn entry(seq: u64, branch: u64) -> AuditEntry {
    AuditEntry {
        seq,
        time_ms: T0 + seq * 10 + branch,
        log_index: seq * 2 + 5,
        authority: 1,
        actor: "spiffe://example.org/user/alice".to_owned(),
        revocation_ids: vec![],
        operation: "entry:write".to_owned(),
        resource: format!("ns/default/app{seq}"),
        decision: Decision::Allow,
        reason: None,
        request_id: format!("req-{seq}-{branch}"),
        outcome: "done".to_owned(),
        details: vec![],
    }
}

/// Records `0..n`: the honest ones before `fork_at`, another history's from there on.
fn history(n: u64, fork_at: u64) -> Vec<AuditEntry> {
    (0..n).map(|s| entry(s, u64::from(s >= fork_at))).collect()
}

struct Signer {
    key: Ed25519KeyPair,
    keys: AuditKeys,
}

impl Signer {
    fn new() -> Self {
        let key = key();
        let keys = AuditKeys::new().with(1, public_key_of(&key), KeyStatus::Active);
        Self { key, keys }
    }

    /// An export of `records`, continuing the tree of `prior`.
    fn export(&self, prior: &[AuditEntry], records: &[AuditEntry]) -> Vec<u8> {
        let mut frontier = Frontier::new();
        prior.iter().for_each(|r| frontier.push(r.leaf_hash()));
        let opts = ExportOptions {
            checkpoint_every: 16,
            leaf_hashes: true,
        };
        let mut out = Vec::new();
        write_export(&mut out, &frontier, records, &self.key, 1, T0, &opts).unwrap();
        out
    }

    fn verify(&self, data: &[u8], opts: VerifyOptions<'_>) -> Result<VerifiedExport, ExportError> {
        verify_export_with(data, &self.keys, &opts)
    }
}

fn remembering<'a>(v: &'a VerifiedExport) -> VerifyOptions<'a> {
    VerifyOptions {
        remembered: Some(&v.head.head),
        remembered_digest: v.digest.as_ref(),
        keep_records: false,
        ..VerifyOptions::default()
    }
}

fn digest_of(records: &[AuditEntry]) -> LeafDigest {
    let mut d = LeafDigest::new();
    records.iter().for_each(|r| d.push(r.leaf_hash()));
    d
}

#[test]
fn a_fork_past_the_remembered_head_is_named_at_its_first_differing_record() {
    let s = Signer::new();
    let honest = history(30, u64::MAX);
    let seen = s
        .verify(&s.export(&[], &honest), VerifyOptions::default())
        .unwrap();
    assert_eq!(seen.digest, Some(digest_of(&honest)));

    // Restored from a copy at 20, grown to 39 without the records 20..30 that were seen.
    let fork = s.export(&[], &history(39, 20));
    s.verify(&fork, VerifyOptions::default()).unwrap();
    let err = s.verify(&fork, remembering(&seen)).unwrap_err();
    assert!(
        matches!(
            err,
            ExportError::Diverged {
                seen_size: 30,
                got_size: 32,
                first_seq: 20,
                last_seq: 20
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("record 20 is the first that differs"),
        "{err}"
    );
    // Without the digest, the fork is still refused, only not located.
    let bare = VerifyOptions {
        remembered_digest: None,
        ..remembering(&seen)
    };
    assert!(matches!(
        s.verify(&fork, bare),
        Err(ExportError::Rollback { seen_size: 30, .. })
    ));
    // A digest that does not hash to the remembered head is ignored, not believed.
    let wrong = digest_of(&history(30, 5));
    let lying = VerifyOptions {
        remembered_digest: Some(&wrong),
        ..remembering(&seen)
    };
    assert!(matches!(
        s.verify(&fork, lying),
        Err(ExportError::Rollback { seen_size: 30, .. })
    ));

    // An edited record is still reported as altered, not as a fork.
    let text = String::from_utf8(s.export(&[], &honest)).unwrap();
    let edited = text.replace("\"ns/default/app25\"", "\"ns/default/elsewhere\"");
    assert!(matches!(
        s.verify(edited.as_bytes(), remembering(&seen)),
        Err(ExportError::Altered { seq: 25 })
    ));
}

#[test]
fn honest_exports_extend_the_remembered_head_and_carry_its_digest() {
    let s = Signer::new();
    let all = history(45, u64::MAX);
    let seen = s
        .verify(&s.export(&[], &all[..30]), VerifyOptions::default())
        .unwrap();

    // From record 0: reached, and the digest is the whole log's.
    let v = s.verify(&s.export(&[], &all), remembering(&seen)).unwrap();
    assert!(v.remembered_reached);
    assert_eq!(v.digest, Some(digest_of(&all)));

    // From record 10 (the live part of a sealed log): the remembered digest is carried over.
    let v = s
        .verify(&s.export(&all[..10], &all[10..]), remembering(&seen))
        .unwrap();
    assert!(v.remembered_reached);
    assert_eq!(v.digest, Some(digest_of(&all)));
    // Without a remembered digest, a partial export knows none.
    let v = s
        .verify(&s.export(&all[..10], &all[10..]), VerifyOptions::default())
        .unwrap();
    assert_eq!(v.digest, None);

    // Ending before it: not refused here (a chain's earlier file), but not reached either.
    let v = s
        .verify(&s.export(&[], &all[..20]), remembering(&seen))
        .unwrap();
    assert!(!v.remembered_reached);

    // Starting after it: nothing links the two.
    let err = s
        .verify(&s.export(&all[..35], &all[35..]), remembering(&seen))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExportError::Unprovable {
                seen_size: 30,
                first_seq: 35
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("cannot prove consistency with the remembered head at size 30"),
        "{err}"
    );

    // A partial fork from record 10: refused; the records before 10 are not here to compare.
    let fork = history(39, 20);
    assert!(matches!(
        s.verify(&s.export(&fork[..10], &fork[10..]), remembering(&seen)),
        Err(ExportError::Rollback { seen_size: 30, .. })
    ));
}

#[test]
fn the_digest_follows_a_chain_of_segments() {
    let s = Signer::new();
    let all = history(3000, u64::MAX);
    let first = s
        .verify(&s.export(&[], &all[..2000]), VerifyOptions::default())
        .unwrap();
    let chained = VerifyOptions {
        trusted: Some(&first.head.head),
        trusted_digest: first.digest.as_ref(),
        keep_records: false,
        ..VerifyOptions::default()
    };
    let second = s
        .verify(&s.export(&all[..2000], &all[2000..]), chained)
        .unwrap();
    let digest = second.digest.clone().unwrap();
    assert_eq!(digest, digest_of(&all));
    assert_eq!(digest.root(), second.head.head.root);
    assert_eq!(digest.level(), 2);

    // Past 1024 records the digest keeps blocks: a fork is named by its block of 4.
    let fork = history(3100, 2501);
    let err = s
        .verify(&s.export(&[], &fork), remembering(&second))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExportError::Diverged {
                seen_size: 3000,
                first_seq: 2500,
                last_seq: 2503,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("the first record that differs is among 2500..=2503"),
        "{err}"
    );
    // …and a trusted head (the chain link) is held to the same rule.
    let link = TreeHead {
        time_ms: 0,
        ..second.head.head
    };
    let err = s
        .verify(
            &s.export(&[], &fork),
            VerifyOptions {
                trusted: Some(&link),
                trusted_digest: second.digest.as_ref(),
                ..VerifyOptions::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExportError::Diverged {
                first_seq: 2500,
                ..
            }
        ),
        "{err:?}"
    );
}
