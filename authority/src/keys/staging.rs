//! The files of a key rotation, and how a restart finds them consistent.
//!
//! A rotation of the key of kind K moves through these files, all in `<data_dir>/keys/`:
//!
//! 1. **stage**: the new key is generated on this node and its files written, 0600, into
//!    `next/` (each by an atomic rename, the directory fsynced) *before* its public half is
//!    proposed. The node keeps signing with the current files.
//! 2. publish, wait one propagation window, activate (Raft entries).
//! 3. **promote**, only once the activation committed: a marker `next/promote.<K>` is written
//!    first, then each file moves `F` → `old/F` and `next/F` → `F`, then the marker goes. The
//!    in-memory signer is swapped after that.
//! 4. retire the old key (Raft), then destroy `old/` (overwritten with zeros, deleted).
//!
//! After a crash, [`KeyFiles::recover`] (run before the keys are loaded) finishes any promotion
//! whose marker exists, so the current files are always one whole key: the old one (no marker:
//! not yet activated here) or the new one. Files left in `next/` without a marker are a staged
//! key that never signed anything; the next `rotate-keys` of that kind resumes with it if it
//! was published, or discards it. Files left in `old/` are a key no longer signing; the next
//! rotation retires it if that did not commit, and destroys them.

use std::path::{Path, PathBuf};

use super::{AUDIT_KEY, BISCUIT_KEY, CA_CERT, CA_KEY, JWT_KEY, KeyError, NodeKeys, io};
use crate::command::KeyKind;

/// Every key kind, in the order a rotation handles them.
pub(crate) const ALL_KINDS: [KeyKind; 4] = [
    KeyKind::X509Ca,
    KeyKind::Biscuit,
    KeyKind::Jwt,
    KeyKind::Audit,
];

/// The short name of a kind, as `rotate-keys --kind` takes it.
pub(crate) fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::X509Ca => "ca",
        KeyKind::Biscuit => "biscuit",
        KeyKind::Jwt => "jwt",
        KeyKind::Audit => "audit",
    }
}

/// The files that hold the key of `kind` (a CA: its key, then its certificate).
fn files(kind: KeyKind) -> &'static [&'static str] {
    match kind {
        KeyKind::X509Ca => &[CA_KEY, CA_CERT],
        KeyKind::Biscuit => &[BISCUIT_KEY],
        KeyKind::Jwt => &[JWT_KEY],
        KeyKind::Audit => &[AUDIT_KEY],
    }
}

/// A node's key directory, seen by a rotation.
#[derive(Debug, Clone)]
pub(crate) struct KeyFiles {
    dir: PathBuf,
}

fn sync_dir(dir: &Path) -> Result<(), KeyError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    crate::private_fs::create_dir(dir).map_err(io(dir))
}

impl KeyFiles {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn next(&self) -> PathBuf {
        self.dir.join("next")
    }

    fn old(&self) -> PathBuf {
        self.dir.join("old")
    }

    fn marker(&self, kind: KeyKind) -> PathBuf {
        self.next().join(format!("promote.{}", kind_name(kind)))
    }

    /// The current keys (after [`KeyFiles::recover`]).
    pub(crate) fn load(&self, biscuit_key_id: u32) -> Result<NodeKeys, KeyError> {
        NodeKeys::load(&self.dir, biscuit_key_id)
    }

    /// Whether a whole staged key of `kind` is in `next/`.
    pub(crate) fn is_staged(&self, kind: KeyKind) -> bool {
        files(kind).iter().all(|f| self.next().join(f).exists())
    }

    /// Writes `fresh`'s key of `kind` into `next/`, durable before this returns.
    pub(crate) fn stage(&self, fresh: &NodeKeys, kind: KeyKind) -> Result<(), KeyError> {
        create_private_dir(&self.next())?;
        fresh.save_kind(&self.next(), kind)?;
        sync_dir(&self.next())
    }

    /// The keys as they would be with the staged key of `kind` in place of the current one.
    pub(crate) fn load_staged(
        &self,
        kind: KeyKind,
        biscuit_key_id: u32,
    ) -> Result<NodeKeys, KeyError> {
        self.load_with(&self.next(), kind, biscuit_key_id)
    }

    /// The keys as they were with the key of `kind` kept in `old/` in place of the current one.
    pub(crate) fn load_old(
        &self,
        kind: KeyKind,
        biscuit_key_id: u32,
    ) -> Result<NodeKeys, KeyError> {
        self.load_with(&self.old(), kind, biscuit_key_id)
    }

    /// When the staged key of `kind` was written (its first file's modification time).
    pub(crate) fn staged_at(&self, kind: KeyKind) -> Option<std::time::SystemTime> {
        let first = files(kind).first()?;
        std::fs::metadata(self.next().join(first))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Whether any file of the key of `kind` is in `old/`.
    pub(crate) fn has_old(&self, kind: KeyKind) -> bool {
        files(kind).iter().any(|f| self.old().join(f).exists())
    }

    fn load_with(
        &self,
        sub: &Path,
        kind: KeyKind,
        biscuit_key_id: u32,
    ) -> Result<NodeKeys, KeyError> {
        let replaced = files(kind);
        NodeKeys::load_from(
            |f| {
                if replaced.contains(&f) {
                    sub.join(f)
                } else {
                    self.dir.join(f)
                }
            },
            biscuit_key_id,
        )
    }

    /// Makes the staged key of `kind` the current one: call it only once its activation
    /// committed. Crash-safe: see the module docs.
    pub(crate) fn promote(&self, kind: KeyKind) -> Result<(), KeyError> {
        super::write_private(&self.marker(kind), b"", 0o600)?;
        self.finish_promotion(kind)
    }

    fn finish_promotion(&self, kind: KeyKind) -> Result<(), KeyError> {
        create_private_dir(&self.old())?;
        for f in files(kind) {
            let (next, current, old) = (self.next().join(f), self.dir.join(f), self.old().join(f));
            if !next.exists() {
                continue;
            }
            if current.exists() {
                std::fs::rename(&current, &old).map_err(io(&current))?;
            }
            std::fs::rename(&next, &current).map_err(io(&next))?;
        }
        sync_dir(&self.old())?;
        sync_dir(&self.dir)?;
        let marker = self.marker(kind);
        std::fs::remove_file(&marker).map_err(io(&marker))?;
        sync_dir(&self.next())
    }

    /// Finishes every promotion a crash interrupted; returns the kinds it finished.
    pub(crate) fn recover(&self) -> Result<Vec<KeyKind>, KeyError> {
        let mut done = Vec::new();
        for kind in ALL_KINDS {
            if self.marker(kind).exists() {
                self.finish_promotion(kind)?;
                done.push(kind);
            }
        }
        Ok(done)
    }

    /// Destroys a staged key of `kind` that will never be used.
    pub(crate) fn discard_staged(&self, kind: KeyKind) -> Vec<PathBuf> {
        super::destroy_files(&self.next(), files(kind))
    }

    /// Destroys the retired key of `kind` kept in `old/`.
    pub(crate) fn destroy_old(&self, kind: KeyKind) -> Vec<PathBuf> {
        super::destroy_files(&self.old(), files(kind))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use ringzero_policy::TrustDomain;

    use super::*;

    fn node(dir: &Path) -> (KeyFiles, NodeKeys) {
        let td = TrustDomain::new("example.org").unwrap();
        let keys = NodeKeys::generate(&td, 1, SystemTime::now()).unwrap();
        keys.save(dir).unwrap();
        (KeyFiles::new(dir), keys)
    }

    fn fresh() -> NodeKeys {
        let td = TrustDomain::new("example.org").unwrap();
        NodeKeys::generate(&td, 1, SystemTime::now()).unwrap()
    }

    #[test]
    fn staging_leaves_the_current_key_signing_until_promotion() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (files, old) = node(dir.path());
        let new = fresh();
        files.stage(&new, KeyKind::X509Ca).unwrap();
        assert!(files.is_staged(KeyKind::X509Ca));
        for f in [CA_KEY, CA_CERT] {
            let mode = std::fs::metadata(dir.path().join("next").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        // Not promoted: a restart still signs with the old CA.
        assert!(files.recover().unwrap().is_empty());
        assert_eq!(files.load(0).unwrap().ca.cert_der(), old.ca.cert_der());
        let staged = files.load_staged(KeyKind::X509Ca, 0).unwrap();
        assert_eq!(staged.ca.cert_der(), new.ca.cert_der());
        assert_eq!(
            staged.public_of(KeyKind::Jwt).unwrap(),
            old.public_of(KeyKind::Jwt).unwrap()
        );
        files.promote(KeyKind::X509Ca).unwrap();
        let now = files.load(0).unwrap();
        assert_eq!(now.ca.cert_der(), new.ca.cert_der());
        assert!(!files.is_staged(KeyKind::X509Ca));
        // The old key is kept until retired, then destroyed.
        assert!(dir.path().join("old").join(CA_KEY).exists());
        assert_eq!(files.destroy_old(KeyKind::X509Ca).len(), 2);
        assert!(!dir.path().join("old").join(CA_KEY).exists());
    }

    #[test]
    fn a_promotion_interrupted_by_a_crash_is_finished_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _old) = node(dir.path());
        let new = fresh();
        files.stage(&new, KeyKind::X509Ca).unwrap();
        // Crash after the marker and the first file moved: key new, certificate old.
        crate::keys::write_private(&files.marker(KeyKind::X509Ca), b"", 0o600).unwrap();
        std::fs::create_dir_all(files.old()).unwrap();
        std::fs::rename(dir.path().join(CA_KEY), files.old().join(CA_KEY)).unwrap();
        std::fs::rename(files.next().join(CA_KEY), dir.path().join(CA_KEY)).unwrap();
        assert_eq!(files.recover().unwrap(), vec![KeyKind::X509Ca]);
        let keys = files.load(0).unwrap();
        assert_eq!(keys.ca.cert_der(), new.ca.cert_der());
        assert_eq!(keys.ca.key_pkcs8_der(), new.ca.key_pkcs8_der());
        assert!(!files.marker(KeyKind::X509Ca).exists());
        assert!(files.recover().unwrap().is_empty());
    }

    #[test]
    fn a_staged_key_can_be_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let (files, old) = node(dir.path());
        files.stage(&fresh(), KeyKind::Audit).unwrap();
        assert_eq!(files.discard_staged(KeyKind::Audit).len(), 1);
        assert!(!files.is_staged(KeyKind::Audit));
        assert_eq!(
            files.load(0).unwrap().public_of(KeyKind::Audit).unwrap(),
            old.public_of(KeyKind::Audit).unwrap()
        );
    }
}
