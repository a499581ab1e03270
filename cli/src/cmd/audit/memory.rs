//! The remembered head: the last tree head `verify` accepted (live or `--file`), stored next to
//! the profile (`PROFILE.audit-head`) with the [`LeafDigest`] of its records when the verifier
//! saw them all, so that a later fork is refused and pinned to its first differing record.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ringzero_policy::audit::{Hash, LeafDigest, SignedTreeHead, TreeHead};
use serde::{Deserialize, Serialize};

use crate::failure::{Failure, failed};
use crate::input::{read_bounded, write_file};

/// What `verify` remembers of the head it accepted last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Remembered {
    pub(crate) head: TreeHead,
    /// The digest of the head's records, when the verifier knew them back to record 0.
    pub(crate) digest: Option<LeafDigest>,
}

/// The file form (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RememberedHead {
    size: u64,
    /// Hex.
    root: String,
    time_ms: u64,
    key_id: u64,
    /// Hex.
    signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<DigestFile>,
}

/// A [`LeafDigest`] on disk: at most 1024 block hashes, so the file stays a few dozen KiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DigestFile {
    level: u32,
    /// Base64 of the 32-byte block hashes, in order.
    blocks: String,
    /// Hex: the frontier of the records after the last full block.
    tail: Vec<String>,
}

impl DigestFile {
    fn of(d: &LeafDigest) -> Self {
        Self {
            level: d.level(),
            blocks: BASE64.encode(d.blocks().concat()),
            tail: d.tail().iter().map(hex::encode).collect(),
        }
    }

    fn digest(&self, size: u64) -> Result<LeafDigest, String> {
        let bytes = BASE64
            .decode(&self.blocks)
            .map_err(|_| "the digest's blocks are not base64".to_owned())?;
        if bytes.len() % 32 != 0 {
            return Err("the digest's blocks are not 32-byte hashes".into());
        }
        let blocks = bytes.chunks_exact(32).map(hash_of).collect();
        let tail = self
            .tail
            .iter()
            .map(|h| {
                hex::decode(h)
                    .ok()
                    .filter(|b| b.len() == 32)
                    .map(|b| hash_of(&b))
                    .ok_or_else(|| "the digest's tail is not 64-digit hex".to_owned())
            })
            .collect::<Result<_, _>>()?;
        LeafDigest::from_parts(size, self.level, blocks, tail).map_err(|e| e.to_string())
    }
}

fn hash_of(b: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(b);
    h
}

impl RememberedHead {
    fn of(sth: &SignedTreeHead, digest: Option<&LeafDigest>) -> Self {
        Self {
            size: sth.head.size,
            root: hex::encode(sth.head.root),
            time_ms: sth.head.time_ms,
            key_id: sth.head.key_id,
            signature: hex::encode(&sth.signature),
            digest: digest.map(DigestFile::of),
        }
    }

    fn remembered(&self) -> Result<Remembered, String> {
        let mut root = [0u8; 32];
        hex::decode_to_slice(&self.root, &mut root)
            .map_err(|_| "the root is not 64 hex digits".to_owned())?;
        let head = TreeHead {
            size: self.size,
            root,
            time_ms: self.time_ms,
            key_id: self.key_id,
        };
        let digest = match &self.digest {
            None => None,
            Some(d) => {
                let d = d.digest(self.size)?;
                if d.root() != root {
                    return Err("the record digest does not hash to the remembered root".into());
                }
                Some(d)
            }
        };
        Ok(Remembered { head, digest })
    }
}

/// `PROFILE.audit-head`.
pub(crate) fn remembered_path(profile: &Path) -> PathBuf {
    let mut name = profile.as_os_str().to_owned();
    name.push(".audit-head");
    PathBuf::from(name)
}

pub(crate) fn load_remembered(path: &Path) -> Result<Option<Remembered>, Failure> {
    if !path.exists() {
        return Ok(None);
    }
    let unreadable = |why: String| {
        failed(anyhow!(
            "{}: the remembered tree head is unreadable ({why}); it is what a rollback is \
             detected against, so find out why before removing it",
            path.display()
        ))
    };
    let text = read_bounded(path).map_err(|e| unreadable(format!("{e:#}")))?;
    let r: RememberedHead = serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?;
    r.remembered().map(Some).map_err(unreadable)
}

/// Remembers `sth` (with the digest of its records, when known) in place of the head before.
pub(crate) fn save_remembered(
    path: &Path,
    sth: &SignedTreeHead,
    digest: Option<&LeafDigest>,
) -> Result<(), Failure> {
    // A digest of another tree is worse than none: it would blame the wrong records.
    let digest = digest.filter(|d| d.size() == sth.head.size && d.root() == sth.head.root);
    let text = serde_json::to_string_pretty(&RememberedHead::of(sth, digest)).map_err(failed)?;
    write_file(path, format!("{text}\n").as_bytes(), 0o600, true)
        .map_err(|e| failed(e.context("remembering the verified tree head")))
}
