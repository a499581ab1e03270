//! The canonical audit record: the content of one Merkle leaf.

use serde::{Deserialize, Serialize};

use super::merkle::{Hash, leaf_hash};

/// Whether the audited request was allowed. Serialized as `"allow"` / `"deny"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The request was allowed.
    Allow,
    /// The request was refused.
    Deny,
}

/// One audit record, as appended by the authority's state machine (one per command, `seq`
/// 0, 1, 2, … without gaps).
///
/// Its leaf bytes ([`leaf_bytes`](Self::leaf_bytes)) are its canonical JSON: serde_json of
/// this struct, fields in declaration order, no whitespace, `reason` as `null` when absent,
/// `details` as an array of `[key, value]` pairs (order kept). Parsing those bytes and
/// re-encoding gives the same bytes, and a verifier always re-derives the leaf from the parsed
/// fields — never hashes the text it was given — so re-formatting a record (whitespace, key
/// order, `\u` escapes) is harmless while changing any field value changes the leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log and leaf index in the Merkle tree.
    pub seq: u64,
    /// The proposer's clock when the command was proposed, in ms since the Unix epoch.
    pub time_ms: u64,
    /// The Raft log index of the entry carrying the record.
    pub log_index: u64,
    /// Node id of the authority that handled the request.
    pub authority: u64,
    /// Who asked: a SPIFFE ID, or `local:…` for the admin socket.
    pub actor: String,
    /// Hex revocation ids of the capability used (never the token itself).
    pub revocation_ids: Vec<String>,
    /// The operation, e.g. `entry:write`.
    pub operation: String,
    /// The resource path.
    pub resource: String,
    /// Allowed or refused.
    pub decision: Decision,
    /// The failed check, for a denial.
    pub reason: Option<String>,
    /// The caller's request id (idempotency key).
    pub request_id: String,
    /// What happened, e.g. `done` or `rejected: …`.
    pub outcome: String,
    /// What was released: serials, key hashes, not-after… as ordered `(key, value)` pairs.
    pub details: Vec<(String, String)>,
}

/// Bytes that are not a canonical audit entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid audit entry: {0}")]
pub struct InvalidEntry(String);

impl AuditEntry {
    /// The canonical JSON encoding: the leaf content.
    pub fn leaf_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(256);
        self.write_leaf(&mut buf);
        buf
    }

    /// Appends the canonical JSON encoding to `buf`.
    pub fn write_leaf(&self, buf: &mut Vec<u8>) {
        // Serializing to a Vec cannot fail: there is no I/O and every map key is a string. The
        // result is ignored rather than unwrapped so that this path can never panic.
        let _ = serde_json::to_writer(buf, self);
    }

    /// The RFC 6962 leaf hash `SHA-256(0x00 || leaf_bytes)`.
    pub fn leaf_hash(&self) -> Hash {
        leaf_hash(&self.leaf_bytes())
    }

    /// Parses leaf bytes (or any JSON object with exactly these fields).
    pub fn from_leaf_bytes(bytes: &[u8]) -> Result<Self, InvalidEntry> {
        serde_json::from_slice(bytes).map_err(|e| InvalidEntry(e.to_string()))
    }
}
