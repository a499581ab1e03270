//! Signed tree heads and the verifier's pinned audit keys.

use std::collections::BTreeMap;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use super::merkle::Hash;

/// The domain separator of the tree-head signature: an audit key signs nothing else with this
/// prefix, and nothing signed for another purpose starts with it.
pub const TREE_HEAD_DOMAIN: &[u8] = b"ringzero audit tree head v1\0";

/// A tree head: the size and root of the audit log's Merkle tree at a point in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeHead {
    /// Number of leaves (records `0..size`).
    pub size: u64,
    /// `MTH(D[size])`.
    pub root: Hash,
    /// When the head was signed, in ms since the Unix epoch (the signer's claim).
    pub time_ms: u64,
    /// Id of the audit key that signs it.
    pub key_id: u64,
}

impl TreeHead {
    /// The signed message: [`TREE_HEAD_DOMAIN`] || size || time_ms || key_id (each 8 bytes
    /// big-endian) || root. Fixed width, so no two heads share a message.
    pub fn signed_message(&self) -> [u8; 28 + 24 + 32] {
        let mut m = [0u8; 28 + 24 + 32];
        m[..28].copy_from_slice(TREE_HEAD_DOMAIN);
        m[28..36].copy_from_slice(&self.size.to_be_bytes());
        m[36..44].copy_from_slice(&self.time_ms.to_be_bytes());
        m[44..52].copy_from_slice(&self.key_id.to_be_bytes());
        m[52..].copy_from_slice(&self.root);
        m
    }
}

/// A tree head with its Ed25519 signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTreeHead {
    /// The head.
    pub head: TreeHead,
    /// The Ed25519 signature over [`TreeHead::signed_message`].
    pub signature: Vec<u8>,
}

/// The life-cycle state of an audit key in the verifier's pinned bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    /// Signs current heads.
    Active,
    /// Retired in good order (private half destroyed): heads signed before `since_ms` stay
    /// valid, later ones are refused.
    Retired {
        /// Retirement time, ms since the Unix epoch.
        since_ms: u64,
    },
    /// Leaked or suspected: nothing it signed is trusted, whatever the head's time.
    Compromised,
}

/// One pinned audit public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditKey {
    /// The raw 32-byte Ed25519 public key.
    pub public: [u8; 32],
    /// Its status.
    pub status: KeyStatus,
}

/// Where tree-head verification finds keys: always the verifier's own pinned bundle, never the
/// data being verified. Implemented by [`AuditKeys`] and by any `Fn(u64) -> Option<AuditKey>`.
pub trait AuditKeySource {
    /// The key with this id, if pinned.
    fn audit_key(&self, key_id: u64) -> Option<AuditKey>;
}

impl<F: Fn(u64) -> Option<AuditKey>> AuditKeySource for F {
    fn audit_key(&self, key_id: u64) -> Option<AuditKey> {
        self(key_id)
    }
}

/// The verifier's pinned audit keys: key id → public key and status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditKeys {
    keys: BTreeMap<u64, AuditKey>,
}

impl AuditKeys {
    /// No keys: every head is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pins (or replaces) a key.
    pub fn insert(&mut self, key_id: u64, public: [u8; 32], status: KeyStatus) {
        self.keys.insert(key_id, AuditKey { public, status });
    }

    /// Builder form of [`insert`](Self::insert).
    pub fn with(mut self, key_id: u64, public: [u8; 32], status: KeyStatus) -> Self {
        self.insert(key_id, public, status);
        self
    }

    /// The pinned key with this id.
    pub fn get(&self, key_id: u64) -> Option<&AuditKey> {
        self.keys.get(&key_id)
    }
}

impl AuditKeySource for AuditKeys {
    fn audit_key(&self, key_id: u64) -> Option<AuditKey> {
        self.keys.get(&key_id).copied()
    }
}

/// Why a signed tree head is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// The key id is not in the verifier's bundle.
    #[error("unknown audit key {key_id}")]
    UnknownKey {
        /// The head's key id.
        key_id: u64,
    },
    /// The key is marked compromised.
    #[error("audit key {key_id} is compromised")]
    KeyCompromised {
        /// The head's key id.
        key_id: u64,
    },
    /// The key was retired before the head's time.
    #[error("audit key {key_id} was retired at {since_ms} ms, before the head's time {time_ms} ms")]
    KeyRetired {
        /// The head's key id.
        key_id: u64,
        /// Retirement time.
        since_ms: u64,
        /// The head's time.
        time_ms: u64,
    },
    /// The signature does not verify with the pinned key.
    #[error("bad tree-head signature for key {key_id}")]
    BadSignature {
        /// The head's key id.
        key_id: u64,
    },
}

impl SignedTreeHead {
    /// Signs `head` with an Ed25519 audit key (whose id the caller put in `head.key_id`).
    pub fn sign(key: &Ed25519KeyPair, head: TreeHead) -> Self {
        let signature = key.sign(&head.signed_message()).as_ref().to_vec();
        Self { head, signature }
    }

    /// Verifies the signature with a key from `keys` — the verifier's pinned bundle — and the
    /// key's status at the head's time.
    pub fn verify(&self, keys: &(impl AuditKeySource + ?Sized)) -> Result<(), HeadError> {
        let key_id = self.head.key_id;
        let key = keys
            .audit_key(key_id)
            .ok_or(HeadError::UnknownKey { key_id })?;
        match key.status {
            KeyStatus::Active => {}
            KeyStatus::Retired { since_ms } if self.head.time_ms < since_ms => {}
            KeyStatus::Retired { since_ms } => {
                return Err(HeadError::KeyRetired {
                    key_id,
                    since_ms,
                    time_ms: self.head.time_ms,
                });
            }
            KeyStatus::Compromised => return Err(HeadError::KeyCompromised { key_id }),
        }
        UnparsedPublicKey::new(&ED25519, key.public)
            .verify(&self.head.signed_message(), &self.signature)
            .map_err(|_| HeadError::BadSignature { key_id })
    }
}

/// The raw public half of an Ed25519 audit key pair, for pinning in [`AuditKeys`].
pub fn public_key_of(key: &Ed25519KeyPair) -> [u8; 32] {
    let mut out = [0u8; 32];
    let public = key.public_key().as_ref();
    if public.len() == 32 {
        out.copy_from_slice(public);
    }
    out
}
