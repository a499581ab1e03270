//! The audit log as a transparency log: canonical records, RFC 6962 Merkle hashing and proofs,
//! signed tree heads, and the JSON-lines export with its verifier. Pure: no I/O beyond the
//! reader and writer the caller hands in, no clock, no keys but the caller's.
//!
//! # Layout
//!
//! - `entry.rs`: [`AuditEntry`], one record, whose canonical JSON is the Merkle leaf.
//! - [`merkle`] (`merkle.rs`): hashing, the O(log n) [`Frontier`], the [`LeafHashes`] store
//!   trait, the in-memory [`MerkleTree`], inclusion and consistency proofs and their
//!   verification.
//! - `head.rs`: [`TreeHead`] / [`SignedTreeHead`], Ed25519 over a domain-separated message,
//!   verified only with the caller's pinned [`AuditKeys`].
//! - `export/`: [`write_export`] / [`verify_export`], the export format below — `mod.rs` (line
//!   types, limits, [`ExportOptions`]), `write.rs`, `verify.rs` (the verifier and
//!   [`VerifyOptions`]), `anchor.rs` (the trusted and remembered heads an export must agree
//!   with), `read.rs` (bounded lines, the wire form, field parsers), `error.rs`
//!   ([`ExportError`], [`ExportWriteError`]).
//! - `digest.rs`: [`LeafDigest`], the bounded digest of a tree's leaves a verifier keeps with
//!   the head it accepted, so that a later fork is pinned to the first records that differ.
//! - `fuzzing.rs` (feature `fuzzing`): the `audit_export` fuzz target's entry point.
//!
//! # Why not `ct-merkle`
//!
//! `ct-merkle` 0.3 has inclusion and consistency proofs, but (1) no compact range: its tree
//! keeps every leaf value and interior node in memory, where a verifier of a million records
//! needs only O(log n) hashes; (2) out-of-memory proof building hands back node indices in its
//! own array layout, so the authority would have to persist every interior node in that layout
//! rather than back a proof with leaf hashes; (3) it brings `digest` 0.11 / `sha2` 0.11 while
//! `ring`, already a dependency, provides SHA-256. RFC 6962 §2.1 is small, so [`merkle`]
//! implements it directly and is tested against the transparency-dev / Certificate Transparency
//! test vectors and, by property tests, against the recursive definition.
//!
//! # Export format (v1)
//!
//! UTF-8 JSON lines, each at most [`MAX_LINE_BYTES`], each a self-describing object with a
//! `type` and `v: 1`; unknown fields, duplicate fields and fields of another line type are
//! refused. Blank lines are ignored.
//!
//! ```text
//! {"type":"ringzero.audit.segment","v":1,"first_seq":1024,"prior_size":1024,"prior_root":"<hex>","prior_frontier":["<hex>"]}
//! {"type":"ringzero.audit.record","v":1,"seq":1024,"time_ms":1767225600000,"log_index":2077,"authority":1,"actor":"spiffe://example.org/user/alice","revocation_ids":["9f1c…"],"operation":"entry:write","resource":"ns/default/web","decision":"allow","reason":null,"request_id":"r-17","outcome":"done","details":[["revision","42"]]}
//! …
//! {"type":"ringzero.audit.tree_head","v":1,"size":2048,"root":"<hex>","time_ms":1767225601000,"key_id":3,"signature":"<base64>","leaves":"<base64>"}
//! ```
//!
//! - **segment** (optional, first line): the export continues a tree whose first `prior_size`
//!   leaves were sealed in earlier segments. `prior_frontier` is that tree's compact range
//!   (one hash per set bit of `prior_size`, largest subtree first) and must hash to
//!   `prior_root`; it lets the verifier keep growing the same tree without the old records. The
//!   verifier chains segments by trusting the previous segment's last head (`trusted`): its
//!   size must equal `first_seq` (or lie inside this export) and its root must match; a trusted
//!   head further back needs a consistency proof to `first_seq` from the live cluster.
//! - **record**: the [`AuditEntry`] fields (`seq` = leaf index), in seq order without gaps.
//! - **tree_head**: a signed head for the tree over every record so far. It must come right
//!   after record `size - 1`. The writer puts one after every `checkpoint_every` records
//!   (default 1024) and one at the end; several heads of the same size (e.g. signed by several
//!   authority nodes) may follow each other. The optional, unsigned `leaves` holds the leaf
//!   hashes of the records since the previous head (base64 of 32-byte hashes), used only to
//!   name an altered record.
//!
//! # What [`verify_export`] proves
//!
//! Reading in order, it re-derives every leaf from the parsed record fields (never from the
//! line's text: re-formatting is harmless, any field change is caught), grows the tree, and at
//! every head checks the signature with a key from the caller's [`AuditKeys`] only (unknown,
//! compromised, or retired-before-the-head's-time keys are refused) and that the signed root
//! equals the tree's. On success, every returned record is exactly what the holder of a pinned
//! audit key signed at the position shown, and the final head commits to all of them (and,
//! for a segment, to the sealed records before it); if `trusted` was given, the returned head
//! is an append-only extension of it (same root at its size, or a verified consistency proof);
//! if `remembered` was given and the export reaches its size, the export's tree there is the
//! remembered one (an export that starts after it, with no proof, is
//! [`Unprovable`](ExportError::Unprovable)). A disagreement with either is a
//! [`Rollback`](ExportError::Rollback), or [`Diverged`](ExportError::Diverged) naming the first
//! differing records when the caller's [`LeafDigest`] of that head and the export's own leaves
//! (from record 0, or carried over from an earlier agreeing head) allow it.
//!
//! Errors name the first problem: a gap ([`ExportError::Dropped`] — or
//! [`Reordered`](ExportError::Reordered) when the missing seq shows up within the next 4096
//! lines), a seq going backwards or repeating (`Reordered`), a head covering records that are
//! not there ([`Truncated`](ExportError::Truncated)), a record before a head that does not cover
//! it ([`Inserted`](ExportError::Inserted)), records after the last head
//! ([`Unsigned`](ExportError::Unsigned)), content that does not match a signed root
//! ([`Altered`](ExportError::Altered) naming the exact record when the head carries `leaves`,
//! otherwise [`AlteredWithin`](ExportError::AlteredWithin) naming the window since the previous
//! head — sound because every earlier head matched, so every earlier record is the signed one),
//! key and signature failures, and [`Rollback`](ExportError::Rollback) when the export ends before
//! the trusted head or disagrees with it (decided only once the next head's signature and root
//! check out, so an altered record is reported as altered, not as a rollback).
//!
//! It does **not** prove: that the export is complete — a copy cut right after a head is a
//! valid, shorter export, which only a trusted head from a later verification (or the live
//! cluster's current head) reveals; that the records are true — only that a pinned key signed
//! them; freshness — head times are the signer's claim; that a retired key's holder did not
//! backdate a head (retirement assumes the private half was destroyed; mark leaked keys
//! compromised). Two validly signed heads of one size with different roots are reported as
//! [`Forked`](ExportError::Forked): proof that the signers equivocated.

pub mod merkle;

mod digest;
mod entry;
mod export;
mod head;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use self::digest::{InvalidDigest, LeafDigest, MAX_DIGEST_BLOCKS, digest_level};
pub use self::entry::{AuditEntry, Decision, InvalidEntry};
pub use self::export::{
    ExportError, ExportOptions, ExportWriteError, FORMAT_VERSION, HEAD_TYPE, MAX_CHECKPOINT_EVERY,
    MAX_LINE_BYTES, RECORD_TYPE, SEGMENT_TYPE, VerifiedExport, VerifyOptions, verify_export,
    verify_export_with, write_export,
};
pub use self::head::{
    AuditKey, AuditKeySource, AuditKeys, HeadError, KeyStatus, SignedTreeHead, TREE_HEAD_DOMAIN,
    TreeHead, public_key_of,
};
pub use self::merkle::{
    Frontier, Hash, InvalidProof, LeafHashes, MerkleTree, ProofError, consistency_proof,
    inclusion_proof, verify_consistency, verify_inclusion,
};
