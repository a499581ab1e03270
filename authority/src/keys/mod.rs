//! An authority node's own key material, generated in its data directory and never sent.
//!
//! Each node has its own signing CA (P-256), Biscuit root key (Ed25519), JWT signing key (ES256)
//! and audit signing key (Ed25519). Only the public halves leave the node, through Raft, into the
//! trust bundle. Private keys are written with mode 0600 by an atomic rename.
//!
//! # Layout
//! - `mod.rs`: [`NodeKeys`], the four key pairs, and their files in `<data_dir>/keys/`.
//! - `current.rs`: [`CurrentKeys`], the keys a running node signs with, swapped at run time.
//! - `staging.rs`: the files of a rotation (`keys/next/`, `keys/old/`) and their recovery.

mod current;
mod staging;

pub(crate) use current::CurrentKeys;
pub(crate) use staging::{ALL_KINDS, KeyFiles, kind_name};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ring::signature::KeyPair as _;
use ringzero_policy::TrustDomain;
use ringzero_policy::svid::SigningCa;
use ringzero_policy::token::{RootKey, RootKeyId};

use crate::command::KeyKind;

/// How long a node's signing CA is valid. Leaves it signs are capped at its expiry.
pub(crate) const CA_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Errors loading or creating key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Bad { path: PathBuf, detail: String },
    #[error("{0}")]
    Generate(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, detail: impl std::fmt::Display) -> KeyError {
    KeyError::Bad {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// Writes `bytes` to `path` with `mode`, atomically: the one way secrets are written
/// ([`ringzero_proto::fs::write_private`]).
pub(crate) fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    ringzero_proto::fs::write_private(path, bytes, mode).map_err(io(path))
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(bad(
            path,
            "private key file is readable by group or others (expected mode 0600)",
        ));
    }
    std::fs::read(path).map_err(io(path))
}

/// The four key pairs of one authority node.
pub(crate) struct NodeKeys {
    pub ca: SigningCa,
    /// The Biscuit root key. Its id is the key id Raft assigned when it was published; before
    /// that it carries id 0 and must not sign.
    pub biscuit: RootKey,
    /// PKCS#8 of the ES256 JWT key.
    jwt_pkcs8: zeroize::Zeroizing<Vec<u8>>,
    /// PKCS#8 of the Ed25519 audit key.
    audit_pkcs8: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeys")
            .field("ca", &self.ca)
            .field("biscuit", &self.biscuit)
            .finish_non_exhaustive()
    }
}

impl NodeKeys {
    /// The public bytes of the key of `kind`, as published in the bundle.
    pub(crate) fn public_of(&self, kind: KeyKind) -> Result<Vec<u8>, KeyError> {
        Ok(match kind {
            KeyKind::X509Ca => self.ca.cert_der().to_vec(),
            KeyKind::Biscuit => self.biscuit.public().key.to_bytes().to_vec(),
            KeyKind::Jwt => self.jwt_public_spki()?,
            KeyKind::Audit => self.audit_public_spki()?,
        })
    }
}

const CA_CERT: &str = "ca.der";
const CA_KEY: &str = "ca.key";
const BISCUIT_KEY: &str = "biscuit.key";
const JWT_KEY: &str = "jwt.key";
const AUDIT_KEY: &str = "audit.key";

impl NodeKeys {
    /// Generates fresh keys for node `node_id` of `td`.
    pub(crate) fn generate(
        td: &TrustDomain,
        node_id: u64,
        now: SystemTime,
    ) -> Result<Self, KeyError> {
        let ca = SigningCa::self_signed(
            td,
            &ringzero_policy::svid::authority_ca_common_name(node_id),
            CA_TTL,
            now,
            Some(0),
        )
        .map_err(|e| KeyError::Generate(e.to_string()))?;
        let rng = ring::rand::SystemRandom::new();
        let jwt = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .map_err(|_| KeyError::Generate("JWT key".into()))?;
        let audit = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| KeyError::Generate("audit key".into()))?;
        Ok(Self {
            ca,
            biscuit: RootKey::generate(RootKeyId(0)),
            jwt_pkcs8: zeroize::Zeroizing::new(jwt.as_ref().to_vec()),
            audit_pkcs8: zeroize::Zeroizing::new(audit.as_ref().to_vec()),
        })
    }

    /// Writes every key under `dir` (created 0700), private keys 0600.
    pub(crate) fn save(&self, dir: &Path) -> Result<(), KeyError> {
        for kind in [
            KeyKind::X509Ca,
            KeyKind::Biscuit,
            KeyKind::Jwt,
            KeyKind::Audit,
        ] {
            self.save_kind(dir, kind)?;
        }
        Ok(())
    }

    /// Writes the files of the key of `kind` under `dir` (created 0700), private keys 0600.
    pub(crate) fn save_kind(&self, dir: &Path, kind: KeyKind) -> Result<(), KeyError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
        }
        match kind {
            KeyKind::X509Ca => {
                write_private(&dir.join(CA_KEY), &self.ca.key_pkcs8_der(), 0o600)?;
                write_private(&dir.join(CA_CERT), self.ca.cert_der(), 0o600)?;
            }
            KeyKind::Biscuit => write_private(
                &dir.join(BISCUIT_KEY),
                self.biscuit.private_text().as_bytes(),
                0o600,
            )?,
            KeyKind::Jwt => write_private(&dir.join(JWT_KEY), &self.jwt_pkcs8, 0o600)?,
            KeyKind::Audit => write_private(&dir.join(AUDIT_KEY), &self.audit_pkcs8, 0o600)?,
        }
        Ok(())
    }

    /// Loads the keys written by [`NodeKeys::save`]; the Biscuit key takes `biscuit_key_id`.
    /// Deletes the private keys in `dir` (overwritten with zeros first, best effort): a removed
    /// member's keys must never sign again, wherever its disk ends up. Returns the files it
    /// deleted.
    pub(crate) fn destroy(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut gone = Vec::new();
        for sub in [dir.to_path_buf(), dir.join("next"), dir.join("old")] {
            gone.extend(destroy_files(
                &sub,
                &[CA_KEY, BISCUIT_KEY, JWT_KEY, AUDIT_KEY],
            ));
        }
        gone
    }

    pub(crate) fn load(dir: &Path, biscuit_key_id: u32) -> Result<Self, KeyError> {
        Self::load_from(|f| dir.join(f), biscuit_key_id)
    }

    /// Loads the keys whose files `path` names (one directory, or a staged key over the
    /// current ones).
    pub(crate) fn load_from(
        path: impl Fn(&str) -> PathBuf,
        biscuit_key_id: u32,
    ) -> Result<Self, KeyError> {
        let cert_path = path(CA_CERT);
        let cert = std::fs::read(&cert_path).map_err(io(&cert_path))?;
        let key_path = path(CA_KEY);
        let ca = SigningCa::from_der(&cert, &read(&key_path)?, Vec::new())
            .map_err(|e| bad(&key_path, e))?;
        let b_path = path(BISCUIT_KEY);
        let b_text = zeroize::Zeroizing::new(read(&b_path)?);
        let b_text = std::str::from_utf8(&b_text).map_err(|e| bad(&b_path, e))?;
        let biscuit = RootKey::from_private_text(RootKeyId(biscuit_key_id), b_text)
            .map_err(|e| bad(&b_path, e))?;
        let jwt_path = path(JWT_KEY);
        let jwt_pkcs8 = zeroize::Zeroizing::new(read(&jwt_path)?);
        ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &jwt_pkcs8,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| bad(&jwt_path, e))?;
        let audit_path = path(AUDIT_KEY);
        let audit_pkcs8 = zeroize::Zeroizing::new(read(&audit_path)?);
        ring::signature::Ed25519KeyPair::from_pkcs8(&audit_pkcs8)
            .map_err(|e| bad(&audit_path, e))?;
        Ok(Self {
            ca,
            biscuit,
            jwt_pkcs8,
            audit_pkcs8,
        })
    }

    /// The Biscuit key re-labelled with the id Raft assigned to it.
    pub(crate) fn set_biscuit_key_id(&mut self, id: u32) -> Result<(), KeyError> {
        self.biscuit = RootKey::from_private_text(RootKeyId(id), &self.biscuit.private_text())
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(())
    }

    /// The JWT public key, as SubjectPublicKeyInfo DER.
    pub(crate) fn jwt_public_spki(&self) -> Result<Vec<u8>, KeyError> {
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &self.jwt_pkcs8,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(p256_spki(pair.public_key().as_ref()))
    }

    /// The JWT key pair, for signing JWT-SVIDs (ES256).
    pub(crate) fn jwt_key_pair(&self) -> Result<ring::signature::EcdsaKeyPair, KeyError> {
        ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &self.jwt_pkcs8,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| KeyError::Generate(e.to_string()))
    }

    /// The audit public key, as SubjectPublicKeyInfo DER (Ed25519).
    pub(crate) fn audit_public_spki(&self) -> Result<Vec<u8>, KeyError> {
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(&self.audit_pkcs8)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(ed25519_spki(pair.public_key().as_ref()))
    }

    /// The audit key pair, for signing tree heads.
    pub(crate) fn audit_key_pair(&self) -> Result<ring::signature::Ed25519KeyPair, KeyError> {
        ring::signature::Ed25519KeyPair::from_pkcs8(&self.audit_pkcs8)
            .map_err(|e| KeyError::Generate(e.to_string()))
    }
}

/// Whether the replicated keys say node `node_id` was removed: it has keys, and none of them
/// is published or active any more (a rotation retires one key of a kind while another of the
/// same kind is active, so a retired key alone proves nothing).
pub(crate) fn removed_by_keys(records: &[crate::KeyRecord], node_id: crate::NodeId) -> bool {
    let mut own = records.iter().filter(|k| k.authority == node_id).peekable();
    own.peek().is_some()
        && own.all(|k| {
            matches!(
                k.status,
                crate::command::KeyStatus::Retired | crate::command::KeyStatus::Compromised
            )
        })
}

/// Overwrites with zeros (best effort), then deletes, the files `names` under `dir`. Returns
/// the files it deleted.
pub(crate) fn destroy_files(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    let mut gone = Vec::new();
    for f in names {
        let path = dir.join(f);
        if let Ok(meta) = std::fs::metadata(&path) {
            let zeros = vec![0u8; usize::try_from(meta.len()).unwrap_or(0).min(1 << 20)];
            if let Ok(mut file) = std::fs::OpenOptions::new().write(true).open(&path) {
                let _ = file.write_all(&zeros);
                let _ = file.sync_all();
            }
            if std::fs::remove_file(&path).is_ok() {
                gone.push(path);
            }
        }
    }
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    gone
}

/// SPKI DER for an uncompressed P-256 point.
fn p256_spki(point: &[u8]) -> Vec<u8> {
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING point }
    const PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let mut out = PREFIX.to_vec();
    out.extend_from_slice(point);
    out
}

/// SPKI DER for an Ed25519 public key.
fn ed25519_spki(key: &[u8]) -> Vec<u8> {
    const PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let mut out = PREFIX.to_vec();
    out.extend_from_slice(key);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_with_private_files_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let mut keys = NodeKeys::generate(&td, 1, SystemTime::now()).unwrap();
        keys.set_biscuit_key_id(3).unwrap();
        keys.save(dir.path()).unwrap();
        for f in [CA_KEY, BISCUIT_KEY, JWT_KEY, AUDIT_KEY] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let back = NodeKeys::load(dir.path(), 3).unwrap();
        assert_eq!(back.biscuit.public(), keys.biscuit.public());
        assert_eq!(back.ca.cert_der(), keys.ca.cert_der());
        assert_eq!(
            back.jwt_public_spki().unwrap(),
            keys.jwt_public_spki().unwrap()
        );
        assert_eq!(back.audit_public_spki().unwrap().len(), 44);
        assert_eq!(keys.jwt_public_spki().unwrap().len(), 91);
        // A key file opened up to others is refused.
        std::fs::set_permissions(
            dir.path().join(CA_KEY),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(NodeKeys::load(dir.path(), 3).is_err());
        // No private key in Debug.
        let dbg = format!("{keys:?}");
        assert!(!dbg.contains(&*keys.biscuit.private_text()));
    }

    #[test]
    fn spki_encodings_parse() {
        let td = TrustDomain::new("example.org").unwrap();
        let keys = NodeKeys::generate(&td, 1, SystemTime::now()).unwrap();
        use x509_parser::prelude::FromDer;
        let jwt = keys.jwt_public_spki().unwrap();
        let (rest, _) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&jwt).unwrap();
        assert!(rest.is_empty());
        let audit = keys.audit_public_spki().unwrap();
        let (rest, _) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&audit).unwrap();
        assert!(rest.is_empty());
    }
}
