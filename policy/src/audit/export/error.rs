//! What can go wrong writing or verifying an export.

use std::io;

use super::MAX_CHECKPOINT_EVERY;

/// Writing an export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportWriteError {
    /// The output failed.
    #[error("writing the export failed")]
    Io(#[from] io::Error),
    /// Records must be consecutive, starting at the prior frontier's size.
    #[error("record seq {got} where {expected} was expected")]
    SeqMismatch {
        /// The next leaf index.
        expected: u64,
        /// The record's seq.
        got: u64,
    },
    /// `checkpoint_every` is 0 or above [`MAX_CHECKPOINT_EVERY`].
    #[error("checkpoint interval {0} is outside 1..={MAX_CHECKPOINT_EVERY}")]
    BadCheckpointInterval(u64),
}

/// Why an export is refused. Every variant names the first problem met, reading in order.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The reader failed.
    #[error("reading line {line} failed")]
    Read {
        /// 1-based line number.
        line: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A line is not a well-formed export line (JSON, type, version, fields, encodings, length).
    #[error("line {line} is malformed: {reason}")]
    Malformed {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record is missing: the next record has a later seq, and `expected_seq` does not appear
    /// in the following lines.
    #[error("record {expected_seq} was dropped")]
    Dropped {
        /// The seq that should have come next.
        expected_seq: u64,
    },
    /// Records are out of order: `seq` came later than it should have, or a seq repeats.
    #[error("record {seq} is out of order")]
    Reordered {
        /// The misplaced (or repeated) seq.
        seq: u64,
    },
    /// A tree head covers more records than precede it: records before it were cut.
    #[error("a tree head covers {expected} records but only {have} precede it")]
    Truncated {
        /// Records present.
        have: u64,
        /// Records the head covers.
        expected: u64,
    },
    /// Record `seq` precedes a tree head that does not cover it: it was inserted (or the head
    /// was moved).
    #[error("record {seq} precedes a tree head that does not cover it")]
    Inserted {
        /// The first uncovered seq.
        seq: u64,
    },
    /// Records from `first_seq` on are followed by no tree head: nothing vouches for them.
    #[error("records from {first_seq} on are not covered by any signed tree head")]
    Unsigned {
        /// The first uncovered seq.
        first_seq: u64,
    },
    /// The export has no tree head at all.
    #[error("the export has no tree head")]
    NoTreeHead,
    /// Record `seq` is the first whose content differs from what the signed tree head commits
    /// to (located with the head's leaf hashes).
    #[error("record {seq} was altered")]
    Altered {
        /// The altered record.
        seq: u64,
    },
    /// The records `first_seq..=last_seq` (the window since the previous verified head; for a
    /// segment's first window, or the segment line) do not match the signed head, and no
    /// usable leaf hashes say which record: the first alteration lies in this window.
    #[error("a record in {first_seq}..={last_seq} was altered")]
    AlteredWithin {
        /// First seq of the window.
        first_seq: u64,
        /// Last seq of the window.
        last_seq: u64,
    },
    /// The segment line's prior tree does not match the signed heads.
    #[error("the segment line's prior tree does not match the signed tree head")]
    AlteredSegment,
    /// Two validly signed heads of the same size have different roots: the signer equivocated.
    #[error("two signed tree heads of size {size} have different roots")]
    Forked {
        /// The size.
        size: u64,
    },
    /// A tree head names a key id that is not pinned.
    #[error("line {line}: unknown audit key {key_id}")]
    UnknownKey {
        /// 1-based line number.
        line: u64,
        /// The key id.
        key_id: u64,
    },
    /// A tree head is signed by a key pinned as compromised.
    #[error("line {line}: audit key {key_id} is compromised")]
    KeyCompromised {
        /// 1-based line number.
        line: u64,
        /// The key id.
        key_id: u64,
    },
    /// A tree head is dated at or after its key's retirement.
    #[error("line {line}: audit key {key_id} was retired at {since_ms} ms, before {time_ms} ms")]
    KeyRetired {
        /// 1-based line number.
        line: u64,
        /// The key id.
        key_id: u64,
        /// Retirement time.
        since_ms: u64,
        /// The head's time.
        time_ms: u64,
    },
    /// A tree head's signature does not verify with the pinned key.
    #[error("line {line}: bad tree-head signature (key {key_id})")]
    BadSignature {
        /// 1-based line number.
        line: u64,
        /// The key id.
        key_id: u64,
    },
    /// The export is not an extension of the tree head the verifier trusts: it ends before it
    /// (`got_size < seen_size`), or its tree at `seen_size` has a different root.
    #[error("rollback: trusted tree head of size {seen_size}, export signed up to {got_size}")]
    Rollback {
        /// The trusted head's size.
        seen_size: u64,
        /// The export's signed size.
        got_size: u64,
    },
    /// The export's segment starts after the trusted head: a consistency proof from the trusted
    /// size to the segment's start is needed ([`VerifyOptions::trusted_consistency`](super::VerifyOptions::trusted_consistency)).
    #[error("a consistency proof from size {from} to {to} is needed")]
    ConsistencyRequired {
        /// The trusted size.
        from: u64,
        /// The segment's first seq.
        to: u64,
    },
    /// The export's tree at the size of a head the verifier trusts (or remembers) has another
    /// root, and the verifier's [`LeafDigest`](crate::audit::LeafDigest) of that head names where: records
    /// `first_seq..=last_seq` hold the first difference (one record when they are equal).
    /// Decided, like [`Rollback`](ExportError::Rollback), once the next head checks out.
    #[error(
        "the tree of {seen_size} records accepted before is not a prefix of this export (signed \
         up to {got_size}): {}",
        first_difference(*first_seq, *last_seq)
    )]
    Diverged {
        /// The trusted head's size.
        seen_size: u64,
        /// The export's signed size.
        got_size: u64,
        /// The first record of the first differing block.
        first_seq: u64,
        /// Its last record.
        last_seq: u64,
    },
    /// The export starts (with a segment line) after the remembered head
    /// ([`VerifyOptions::remembered`](super::VerifyOptions::remembered)), and no proof links them: nothing in it can show that the
    /// log still extends that head.
    #[error(
        "cannot prove consistency with the remembered head at size {seen_size}: the export starts \
         at record {first_seq}"
    )]
    Unprovable {
        /// The remembered head's size.
        seen_size: u64,
        /// The segment's first seq.
        first_seq: u64,
    },
}

fn first_difference(first: u64, last: u64) -> String {
    if first == last {
        format!("record {first} is the first that differs")
    } else {
        format!("the first record that differs is among {first}..={last}")
    }
}

pub(super) fn malformed(line: u64, reason: impl Into<String>) -> ExportError {
    ExportError::Malformed {
        line,
        reason: reason.into(),
    }
}

/// Keeps attacker-controlled text in error messages short.
pub(super) fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
