//! The entry point shared by the `audit_export` cargo-fuzz target and the corpus replay test
//! (`policy/tests/audit_corpus.rs`). It must never panic, whatever the input.

use ring::signature::Ed25519KeyPair;

use super::{
    AuditKeys, KeyStatus, TreeHead, VerifyOptions, public_key_of, verify_export, verify_export_with,
};

/// The seed of the fixed key that signs the checked-in corpus, so that its heads verify and the
/// fuzzer reaches the tree checks. A test key: never use it for anything else.
pub const CORPUS_KEY_SEED: [u8; 32] = [1; 32];
/// The key id the corpus is signed under.
pub const CORPUS_KEY_ID: u64 = 1;

/// The corpus signing key.
pub fn corpus_key() -> Option<Ed25519KeyPair> {
    Ed25519KeyPair::from_seed_unchecked(&CORPUS_KEY_SEED).ok()
}

/// Verifies `data` as an export against the corpus key, without and with a trusted head.
pub fn audit_export(data: &[u8]) {
    let Some(key) = corpus_key() else { return };
    let keys = AuditKeys::new().with(CORPUS_KEY_ID, public_key_of(&key), KeyStatus::Active);
    if let Ok(v) = verify_export(data, &keys, None) {
        // A verified export commits to its records: its frontier is the signed root, and so
        // does the digest a verifier would remember.
        assert_eq!(v.frontier.root(), v.head.head.root);
        assert_eq!(v.frontier.size(), v.head.head.size);
        if let Some(d) = &v.digest {
            assert_eq!(d.root(), v.head.head.root);
        }
        // Remembering the head it ends at, the same export verifies again.
        let again = verify_export_with(
            data,
            &keys,
            &VerifyOptions {
                remembered: Some(&v.head.head),
                remembered_digest: v.digest.as_ref(),
                keep_records: false,
                ..VerifyOptions::default()
            },
        );
        assert!(again.is_ok_and(|w| w.remembered_reached && w.digest == v.digest));
    }
    let trusted = TreeHead {
        size: 2,
        root: [0; 32],
        time_ms: 0,
        key_id: CORPUS_KEY_ID,
    };
    let _ = verify_export(data, &keys, Some(&trusted));
}
