//! The JSON-lines export: writer and verifier. The format and what verification proves are
//! described in the [module docs](super).

use std::borrow::Borrow;
use std::io::{self, BufRead, Read, Write};
use std::ops::Range;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::Ed25519KeyPair;
use serde::{Deserialize, Serialize};

use super::digest::LeafDigest;
use super::entry::{AuditEntry, Decision};
use super::head::{AuditKeySource, HeadError, SignedTreeHead, TreeHead};
use super::merkle::{Frontier, Hash, leaf_hash, verify_consistency};

/// `type` of a record line.
pub const RECORD_TYPE: &str = "ringzero.audit.record";
/// `type` of a tree-head line.
pub const HEAD_TYPE: &str = "ringzero.audit.tree_head";
/// `type` of the optional leading segment line.
pub const SEGMENT_TYPE: &str = "ringzero.audit.segment";
/// The `v` of every line this module writes and accepts.
pub const FORMAT_VERSION: u64 = 1;
/// The longest line the verifier reads, newline excluded.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// The largest checkpoint interval the writer accepts, so that a head line with its window's
/// leaf hashes stays well below [`MAX_LINE_BYTES`].
pub const MAX_CHECKPOINT_EVERY: u64 = 16_384;
/// How many lines past a gap in the sequence the verifier reads to tell a moved record
/// ([`ExportError::Reordered`]) from a missing one ([`ExportError::Dropped`]).
const GAP_LOOKAHEAD_LINES: usize = 4096;

const RECORD_PREFIX: &[u8] = b"{\"type\":\"ringzero.audit.record\",\"v\":1,";

/// How the writer lays out an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportOptions {
    /// A signed checkpoint head after every this many records (1..=[`MAX_CHECKPOINT_EVERY`]),
    /// plus one at the end.
    pub checkpoint_every: u64,
    /// Whether each head line carries its window's leaf hashes, so that the verifier can name
    /// the exact altered record instead of its window.
    pub leaf_hashes: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 1024,
            leaf_hashes: true,
        }
    }
}

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

#[derive(Serialize)]
struct HeadLine<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    v: u64,
    size: u64,
    root: String,
    time_ms: u64,
    key_id: u64,
    signature: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    leaves: Option<String>,
}

#[derive(Serialize)]
struct SegmentLine<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    v: u64,
    first_seq: u64,
    prior_size: u64,
    prior_root: String,
    prior_frontier: Vec<String>,
}

/// Writes an export of `records` (whose seqs must run from `prior.size()` on, without gaps),
/// signing checkpoint heads with `key` (pinned by verifiers as `key_id`) at `time_ms`. A
/// segment line is written first when `prior` is not the empty tree. Returns the final head.
pub fn write_export<W, I, B>(
    out: &mut W,
    prior: &Frontier,
    records: I,
    key: &Ed25519KeyPair,
    key_id: u64,
    time_ms: u64,
    opts: &ExportOptions,
) -> Result<SignedTreeHead, ExportWriteError>
where
    W: Write + ?Sized,
    I: IntoIterator<Item = B>,
    B: Borrow<AuditEntry>,
{
    if opts.checkpoint_every == 0 || opts.checkpoint_every > MAX_CHECKPOINT_EVERY {
        return Err(ExportWriteError::BadCheckpointInterval(
            opts.checkpoint_every,
        ));
    }
    if prior.size() > 0 {
        let line = SegmentLine {
            kind: SEGMENT_TYPE,
            v: FORMAT_VERSION,
            first_seq: prior.size(),
            prior_size: prior.size(),
            prior_root: hex::encode(prior.root()),
            prior_frontier: prior.nodes().iter().map(hex::encode).collect(),
        };
        write_json_line(out, &line)?;
    }
    let mut frontier = prior.clone();
    let mut window: Vec<u8> = Vec::new();
    let mut buf = Vec::with_capacity(512);
    let mut last = None;
    for record in records {
        let record = record.borrow();
        if record.seq != frontier.size() {
            return Err(ExportWriteError::SeqMismatch {
                expected: frontier.size(),
                got: record.seq,
            });
        }
        buf.clear();
        record.write_leaf(&mut buf);
        let h = leaf_hash(&buf);
        out.write_all(RECORD_PREFIX)?;
        out.write_all(buf.get(1..).unwrap_or_default())?;
        out.write_all(b"\n")?;
        frontier.push(h);
        window.extend_from_slice(&h);
        if window.len() as u64 / 32 == opts.checkpoint_every {
            last = Some(write_head(
                out, &frontier, &window, key, key_id, time_ms, opts,
            )?);
            window.clear();
        }
    }
    match last {
        Some(head) if window.is_empty() => Ok(head),
        _ => write_head(out, &frontier, &window, key, key_id, time_ms, opts),
    }
}

fn write_head<W: Write + ?Sized>(
    out: &mut W,
    frontier: &Frontier,
    window: &[u8],
    key: &Ed25519KeyPair,
    key_id: u64,
    time_ms: u64,
    opts: &ExportOptions,
) -> Result<SignedTreeHead, ExportWriteError> {
    let sth = SignedTreeHead::sign(
        key,
        TreeHead {
            size: frontier.size(),
            root: frontier.root(),
            time_ms,
            key_id,
        },
    );
    let line = HeadLine {
        kind: HEAD_TYPE,
        v: FORMAT_VERSION,
        size: sth.head.size,
        root: hex::encode(sth.head.root),
        time_ms,
        key_id,
        signature: BASE64.encode(&sth.signature),
        leaves: opts.leaf_hashes.then(|| BASE64.encode(window)),
    };
    write_json_line(out, &line)?;
    Ok(sth)
}

fn write_json_line<W: Write + ?Sized, T: Serialize>(out: &mut W, line: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, line).map_err(io::Error::other)?;
    out.write_all(b"\n")
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
    /// size to the segment's start is needed ([`VerifyOptions::trusted_consistency`]).
    #[error("a consistency proof from size {from} to {to} is needed")]
    ConsistencyRequired {
        /// The trusted size.
        from: u64,
        /// The segment's first seq.
        to: u64,
    },
    /// The export's tree at the size of a head the verifier trusts (or remembers) has another
    /// root, and the verifier's [`LeafDigest`] of that head names where: records
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
    /// ([`VerifyOptions::remembered`]), and no proof links them: nothing in it can show that the
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

/// What the verifier is given besides the export and the keys.
#[derive(Clone, Copy, Debug)]
pub struct VerifyOptions<'a> {
    /// A tree head the export must extend (never from the export): the last one this verifier
    /// accepted, or the previous file's last head in a chain of segments. An export that ends
    /// before it is a [`Rollback`](ExportError::Rollback).
    pub trusted: Option<&'a TreeHead>,
    /// When the export is a segment starting after `trusted.size`: the consistency proof from
    /// `trusted.size` to the segment's first seq (from the live cluster).
    pub trusted_consistency: Option<&'a [Hash]>,
    /// The verifier's [`LeafDigest`] of `trusted` (ignored unless it hashes to it): names the
    /// first differing records when the export disagrees with `trusted`, and carries the
    /// returned [`VerifiedExport::digest`] back to record 0 when the export starts later.
    pub trusted_digest: Option<&'a LeafDigest>,
    /// The head this verifier remembers having accepted, checked like `trusted` where the
    /// export's tree reaches its size ([`VerifiedExport::remembered_reached`]); an export that
    /// ends before it is not refused for that (a chain's earlier files do), one that starts
    /// after it is ([`Unprovable`](ExportError::Unprovable)).
    pub remembered: Option<&'a TreeHead>,
    /// The verifier's [`LeafDigest`] of `remembered`, used like `trusted_digest`.
    pub remembered_digest: Option<&'a LeafDigest>,
    /// Whether to return the parsed records (turn off to verify huge exports in O(window)
    /// memory).
    pub keep_records: bool,
}

impl Default for VerifyOptions<'_> {
    fn default() -> Self {
        Self {
            trusted: None,
            trusted_consistency: None,
            trusted_digest: None,
            remembered: None,
            remembered_digest: None,
            keep_records: true,
        }
    }
}

/// A verified export.
#[derive(Clone, Debug)]
pub struct VerifiedExport {
    /// The seq of the first record (the segment's start, or 0).
    pub first_seq: u64,
    /// The records, in order (empty unless [`VerifyOptions::keep_records`]).
    pub records: Vec<AuditEntry>,
    /// Every verified tree head, in order.
    pub heads: Vec<SignedTreeHead>,
    /// The last (largest) verified head: the one for the verifier to remember.
    pub head: SignedTreeHead,
    /// The tree's frontier at `head.size`: where a following segment continues.
    pub frontier: Frontier,
    /// The [`LeafDigest`] at `head.size`, for the verifier to remember with the head: known
    /// when the export starts at record 0, or reaches a trusted or remembered head whose digest
    /// was given.
    pub digest: Option<LeafDigest>,
    /// Whether the export reached [`VerifyOptions::remembered`]'s size (and so agrees with it).
    pub remembered_reached: bool,
}

/// Verifies an export against the pinned `keys` and, if given, the last head this verifier
/// accepted. See the [module docs](super) for exactly what is proven.
pub fn verify_export<R: BufRead>(
    reader: R,
    keys: &(impl AuditKeySource + ?Sized),
    trusted: Option<&TreeHead>,
) -> Result<VerifiedExport, ExportError> {
    verify_export_with(
        reader,
        keys,
        &VerifyOptions {
            trusted,
            ..VerifyOptions::default()
        },
    )
}

/// [`verify_export`] with all options.
pub fn verify_export_with<R: BufRead>(
    mut reader: R,
    keys: &(impl AuditKeySource + ?Sized),
    opts: &VerifyOptions<'_>,
) -> Result<VerifiedExport, ExportError> {
    let mut v = Verifier::new(keys, opts);
    v.check_anchors();
    let mut line = Vec::with_capacity(1024);
    let mut line_no = 0u64;
    let mut content_lines = 0u64;
    while read_line(&mut reader, &mut line, &mut line_no)? {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let wire = parse_line(&line, line_no)?;
        match wire.kind.as_str() {
            RECORD_TYPE => match v.record(line_no, wire)? {
                RecordStep::Absorbed => {}
                RecordStep::Gap { expected } => {
                    return Err(classify_gap(&mut reader, &mut line, &mut line_no, expected));
                }
            },
            HEAD_TYPE => v.head(line_no, wire)?,
            SEGMENT_TYPE if content_lines == 0 => v.segment(line_no, wire)?,
            SEGMENT_TYPE => return Err(malformed(line_no, "a segment line must come first")),
            other => {
                return Err(malformed(
                    line_no,
                    format!("unknown line type {:?}", truncate(other)),
                ));
            }
        }
        content_lines += 1;
    }
    v.finish()
}

/// Reads one line into `line` without its `\n` / `\r\n`; `false` at the end of input.
fn read_line<R: BufRead>(
    reader: &mut R,
    line: &mut Vec<u8>,
    line_no: &mut u64,
) -> Result<bool, ExportError> {
    line.clear();
    let n = reader
        .by_ref()
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', line)
        .map_err(|source| ExportError::Read {
            line: *line_no + 1,
            source,
        })?;
    if n == 0 {
        return Ok(false);
    }
    *line_no += 1;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if line.len() > MAX_LINE_BYTES {
        return Err(malformed(
            *line_no,
            format!("line longer than {MAX_LINE_BYTES} bytes"),
        ));
    }
    Ok(true)
}

/// After a gap at `expected`: a record that appears a little later was moved, otherwise it
/// is missing.
fn classify_gap<R: BufRead>(
    reader: &mut R,
    line: &mut Vec<u8>,
    line_no: &mut u64,
    expected: u64,
) -> ExportError {
    for _ in 0..GAP_LOOKAHEAD_LINES {
        match read_line(reader, line, line_no) {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
        if let Ok(w) = serde_json::from_slice::<WireLine>(line)
            && w.kind == RECORD_TYPE
            && w.seq == Some(expected)
        {
            return ExportError::Reordered { seq: expected };
        }
    }
    ExportError::Dropped {
        expected_seq: expected,
    }
}

fn malformed(line: u64, reason: impl Into<String>) -> ExportError {
    ExportError::Malformed {
        line,
        reason: reason.into(),
    }
}

/// Keeps attacker-controlled text in error messages short.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Every field any line type may carry; which ones a line must and may carry depends on its
/// type. Unknown and duplicate fields are refused by serde.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireLine {
    #[serde(rename = "type")]
    kind: String,
    v: u64,
    // Record.
    seq: Option<u64>,
    time_ms: Option<u64>,
    log_index: Option<u64>,
    authority: Option<u64>,
    actor: Option<String>,
    revocation_ids: Option<Vec<String>>,
    operation: Option<String>,
    resource: Option<String>,
    decision: Option<Decision>,
    reason: Option<String>,
    request_id: Option<String>,
    outcome: Option<String>,
    details: Option<Vec<(String, String)>>,
    // Tree head (and `time_ms`).
    size: Option<u64>,
    root: Option<String>,
    key_id: Option<u64>,
    signature: Option<String>,
    leaves: Option<String>,
    // Segment.
    first_seq: Option<u64>,
    prior_size: Option<u64>,
    prior_root: Option<String>,
    prior_frontier: Option<Vec<String>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Record,
    Head,
    Segment,
}

impl WireLine {
    /// The first field present that does not belong to a line of `kind`.
    fn foreign_field(&self, kind: Kind) -> Option<&'static str> {
        use Kind::{Head, Record, Segment};
        let fields: [(&'static str, bool, &[Kind]); 21] = [
            ("seq", self.seq.is_some(), &[Record]),
            ("time_ms", self.time_ms.is_some(), &[Record, Head]),
            ("log_index", self.log_index.is_some(), &[Record]),
            ("authority", self.authority.is_some(), &[Record]),
            ("actor", self.actor.is_some(), &[Record]),
            ("revocation_ids", self.revocation_ids.is_some(), &[Record]),
            ("operation", self.operation.is_some(), &[Record]),
            ("resource", self.resource.is_some(), &[Record]),
            ("decision", self.decision.is_some(), &[Record]),
            ("reason", self.reason.is_some(), &[Record]),
            ("request_id", self.request_id.is_some(), &[Record]),
            ("outcome", self.outcome.is_some(), &[Record]),
            ("details", self.details.is_some(), &[Record]),
            ("size", self.size.is_some(), &[Head]),
            ("root", self.root.is_some(), &[Head]),
            ("key_id", self.key_id.is_some(), &[Head]),
            ("signature", self.signature.is_some(), &[Head]),
            ("leaves", self.leaves.is_some(), &[Head]),
            ("first_seq", self.first_seq.is_some(), &[Segment]),
            ("prior_size", self.prior_size.is_some(), &[Segment]),
            ("prior_root", self.prior_root.is_some(), &[Segment]),
        ];
        if self.prior_frontier.is_some() && kind != Segment {
            return Some("prior_frontier");
        }
        fields
            .iter()
            .find(|(_, present, kinds)| *present && !kinds.contains(&kind))
            .map(|(name, _, _)| *name)
    }
}

fn parse_line(line: &[u8], line_no: u64) -> Result<WireLine, ExportError> {
    let wire: WireLine =
        serde_json::from_slice(line).map_err(|e| malformed(line_no, e.to_string()))?;
    if wire.v != FORMAT_VERSION {
        return Err(malformed(
            line_no,
            format!("unsupported version {}", wire.v),
        ));
    }
    Ok(wire)
}

fn required<T>(value: Option<T>, name: &str, line: u64) -> Result<T, ExportError> {
    value.ok_or_else(|| malformed(line, format!("missing field {name}")))
}

fn parse_hash(text: &str, name: &str, line: u64) -> Result<Hash, ExportError> {
    let mut out = [0u8; 32];
    if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(malformed(
            line,
            format!("{name} is not 64 lowercase hex digits"),
        ));
    }
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| malformed(line, format!("{name} is not 64 lowercase hex digits")))?;
    Ok(out)
}

enum RecordStep {
    Absorbed,
    Gap { expected: u64 },
}

/// A head the export must agree with where its tree reaches that size.
struct Anchor<'a> {
    head: &'a TreeHead,
    /// The caller's digest of `head`, when it hashes to it.
    digest: Option<&'a LeafDigest>,
    checked: bool,
}

impl<'a> Anchor<'a> {
    fn new(head: Option<&'a TreeHead>, digest: Option<&'a LeafDigest>) -> Option<Self> {
        let head = head?;
        Some(Self {
            head,
            digest: digest.filter(|d| d.size() == head.size && d.root() == head.root),
            checked: false,
        })
    }

    /// Compares the running tree with this head once the tree reaches its size: agreement
    /// lends the head's digest to an export that started after record 0; disagreement is a
    /// divergence, located with the two digests when both are known.
    fn check(
        anchor: &mut Option<Self>,
        frontier: &Frontier,
        digest: &mut Option<LeafDigest>,
        pending: &mut Option<Divergence>,
    ) {
        let Some(a) = anchor else { return };
        if a.checked || a.head.size != frontier.size() {
            return;
        }
        a.checked = true;
        if frontier.root() == a.head.root {
            if digest.is_none() {
                *digest = a.digest.cloned();
            }
        } else if pending.is_none() {
            let first = match (digest.as_ref(), a.digest) {
                (Some(ours), Some(seen)) => ours.first_difference(seen),
                _ => None,
            };
            *pending = Some(Divergence {
                seen_size: a.head.size,
                first,
            });
        }
    }
}

/// The running tree disagreed with a trusted head; blame is decided at the next head (valid:
/// the log forked or rolled back; invalid: records were altered).
struct Divergence {
    seen_size: u64,
    /// The first differing records, when both digests were known.
    first: Option<Range<u64>>,
}

impl Divergence {
    fn error(&self, got_size: u64) -> ExportError {
        match &self.first {
            Some(r) => ExportError::Diverged {
                seen_size: self.seen_size,
                got_size,
                first_seq: r.start,
                last_seq: r.end.saturating_sub(1),
            },
            None => ExportError::Rollback {
                seen_size: self.seen_size,
                got_size,
            },
        }
    }
}

struct Verifier<'a, K: ?Sized> {
    keys: &'a K,
    opts: &'a VerifyOptions<'a>,
    first_seq: u64,
    /// The running tree over every record so far (`frontier.size()` is the next seq).
    frontier: Frontier,
    /// The running digest, while it reaches back to record 0.
    digest: Option<LeafDigest>,
    /// The tree at the last verified head (or the segment start): the start of the window.
    window_start: Frontier,
    /// Leaf hashes of the records since `window_start`.
    window: Vec<Hash>,
    records: Vec<AuditEntry>,
    heads: Vec<SignedTreeHead>,
    trusted: Option<Anchor<'a>>,
    remembered: Option<Anchor<'a>>,
    pending: Option<Divergence>,
    leaf_buf: Vec<u8>,
}

impl<'a, K: AuditKeySource + ?Sized> Verifier<'a, K> {
    fn new(keys: &'a K, opts: &'a VerifyOptions<'a>) -> Self {
        Self {
            keys,
            opts,
            first_seq: 0,
            frontier: Frontier::new(),
            digest: Some(LeafDigest::new()),
            window_start: Frontier::new(),
            window: Vec::new(),
            records: Vec::new(),
            heads: Vec::new(),
            trusted: Anchor::new(opts.trusted, opts.trusted_digest),
            remembered: Anchor::new(opts.remembered, opts.remembered_digest),
            pending: None,
            leaf_buf: Vec::with_capacity(512),
        }
    }

    /// Checks the trusted and remembered heads the running tree has just reached.
    fn check_anchors(&mut self) {
        for anchor in [&mut self.trusted, &mut self.remembered] {
            Anchor::check(anchor, &self.frontier, &mut self.digest, &mut self.pending);
        }
    }

    fn segment(&mut self, line: u64, w: WireLine) -> Result<(), ExportError> {
        if let Some(name) = w.foreign_field(Kind::Segment) {
            return Err(malformed(line, format!("field {name} in a segment line")));
        }
        let first_seq = required(w.first_seq, "first_seq", line)?;
        let prior_size = required(w.prior_size, "prior_size", line)?;
        if first_seq != prior_size {
            return Err(malformed(line, "first_seq differs from prior_size"));
        }
        let prior_root = parse_hash(
            &required(w.prior_root, "prior_root", line)?,
            "prior_root",
            line,
        )?;
        let nodes = required(w.prior_frontier, "prior_frontier", line)?
            .iter()
            .map(|h| parse_hash(h, "prior_frontier", line))
            .collect::<Result<Vec<_>, _>>()?;
        let frontier =
            Frontier::from_parts(prior_size, nodes).map_err(|e| malformed(line, e.to_string()))?;
        if frontier.root() != prior_root {
            return Err(malformed(
                line,
                "prior_frontier does not hash to prior_root",
            ));
        }
        self.first_seq = first_seq;
        self.frontier = frontier.clone();
        self.window_start = frontier;
        // The records before the segment are not here: the digest is known again only where
        // the tree meets a trusted head whose digest is.
        self.digest = None;
        if let Some(t) = self.trusted.as_mut()
            && !t.checked
            && t.head.size < prior_size
        {
            // The trusted head lies before this segment: only a consistency proof links them.
            let proof = self
                .opts
                .trusted_consistency
                .ok_or(ExportError::ConsistencyRequired {
                    from: t.head.size,
                    to: prior_size,
                })?;
            t.checked = true;
            if verify_consistency(t.head.size, prior_size, &t.head.root, &prior_root, proof)
                .is_err()
            {
                self.pending = Some(Divergence {
                    seen_size: t.head.size,
                    first: None,
                });
            }
        }
        if let Some(r) = &self.remembered
            && !r.checked
            && r.head.size < prior_size
        {
            return Err(ExportError::Unprovable {
                seen_size: r.head.size,
                first_seq,
            });
        }
        self.check_anchors();
        Ok(())
    }

    fn record(&mut self, line: u64, w: WireLine) -> Result<RecordStep, ExportError> {
        if let Some(name) = w.foreign_field(Kind::Record) {
            return Err(malformed(line, format!("field {name} in a record line")));
        }
        let entry = AuditEntry {
            seq: required(w.seq, "seq", line)?,
            time_ms: required(w.time_ms, "time_ms", line)?,
            log_index: required(w.log_index, "log_index", line)?,
            authority: required(w.authority, "authority", line)?,
            actor: required(w.actor, "actor", line)?,
            revocation_ids: required(w.revocation_ids, "revocation_ids", line)?,
            operation: required(w.operation, "operation", line)?,
            resource: required(w.resource, "resource", line)?,
            decision: required(w.decision, "decision", line)?,
            reason: w.reason,
            request_id: required(w.request_id, "request_id", line)?,
            outcome: required(w.outcome, "outcome", line)?,
            details: required(w.details, "details", line)?,
        };
        let expected = self.frontier.size();
        if entry.seq > expected {
            return Ok(RecordStep::Gap { expected });
        }
        if entry.seq < expected {
            return Err(ExportError::Reordered { seq: entry.seq });
        }
        // The leaf is re-derived from the parsed fields, never taken from the line's text.
        self.leaf_buf.clear();
        entry.write_leaf(&mut self.leaf_buf);
        let h = leaf_hash(&self.leaf_buf);
        self.frontier.push(h);
        if let Some(d) = self.digest.as_mut() {
            d.push(h);
        }
        self.window.push(h);
        if self.opts.keep_records {
            self.records.push(entry);
        }
        self.check_anchors();
        Ok(RecordStep::Absorbed)
    }

    fn head(&mut self, line: u64, w: WireLine) -> Result<(), ExportError> {
        if let Some(name) = w.foreign_field(Kind::Head) {
            return Err(malformed(line, format!("field {name} in a tree-head line")));
        }
        let size = required(w.size, "size", line)?;
        let root = parse_hash(&required(w.root, "root", line)?, "root", line)?;
        let time_ms = required(w.time_ms, "time_ms", line)?;
        let key_id = required(w.key_id, "key_id", line)?;
        let signature = BASE64
            .decode(required(w.signature, "signature", line)?)
            .map_err(|_| malformed(line, "signature is not base64"))?;
        let have = self.frontier.size();
        if size > have {
            return Err(ExportError::Truncated {
                have,
                expected: size,
            });
        }
        if size < have {
            return Err(ExportError::Inserted { seq: size });
        }
        let sth = SignedTreeHead {
            head: TreeHead {
                size,
                root,
                time_ms,
                key_id,
            },
            signature,
        };
        sth.verify(self.keys).map_err(|e| match e {
            HeadError::UnknownKey { key_id } => ExportError::UnknownKey { line, key_id },
            HeadError::KeyCompromised { key_id } => ExportError::KeyCompromised { line, key_id },
            HeadError::KeyRetired {
                key_id,
                since_ms,
                time_ms,
            } => ExportError::KeyRetired {
                line,
                key_id,
                since_ms,
                time_ms,
            },
            HeadError::BadSignature { key_id } => ExportError::BadSignature { line, key_id },
        })?;
        if self.frontier.root() != root {
            return Err(self.localize(&sth, w.leaves.as_deref()));
        }
        if let Some(p) = &self.pending {
            return Err(p.error(size));
        }
        self.window_start = self.frontier.clone();
        self.window.clear();
        self.heads.push(sth);
        Ok(())
    }

    /// The running tree disagrees with a validly signed head: find the first altered record.
    ///
    /// Every earlier head matched, so the records before the window are exactly those signed
    /// (collision resistance); the difference lies in the window. If the head carries leaf
    /// hashes that, appended to the window's starting tree, give the signed root, those hashes
    /// are the signed ones, and the first record whose re-derived leaf differs is named.
    fn localize(&self, sth: &SignedTreeHead, leaves: Option<&str>) -> ExportError {
        let start = self.window_start.size();
        let end = sth.head.size;
        if start == end {
            return if self.heads.last().is_some_and(|h| h.head.size == end) {
                ExportError::Forked { size: end }
            } else {
                ExportError::AlteredSegment
            };
        }
        let listed = leaves.and_then(|l| BASE64.decode(l).ok());
        if let Some(listed) = listed
            && listed.len() as u64 == (end - start).saturating_mul(32)
        {
            let mut f = self.window_start.clone();
            let hashes: Vec<Hash> = listed
                .chunks_exact(32)
                .map(|c| {
                    let mut h = [0u8; 32];
                    h.copy_from_slice(c);
                    h
                })
                .collect();
            for h in &hashes {
                f.push(*h);
            }
            if f.root() == sth.head.root
                && let Some(i) = self.window.iter().zip(&hashes).position(|(a, b)| a != b)
            {
                return ExportError::Altered {
                    seq: start + i as u64,
                };
            }
        }
        ExportError::AlteredWithin {
            first_seq: start,
            last_seq: end - 1,
        }
    }

    fn finish(self) -> Result<VerifiedExport, ExportError> {
        let Some(head) = self.heads.last().cloned() else {
            return Err(ExportError::NoTreeHead);
        };
        if self.frontier.size() > head.head.size {
            return Err(ExportError::Unsigned {
                first_seq: head.head.size,
            });
        }
        if let Some(t) = self.opts.trusted
            && t.size > head.head.size
        {
            return Err(ExportError::Rollback {
                seen_size: t.size,
                got_size: head.head.size,
            });
        }
        if let Some(p) = &self.pending {
            return Err(p.error(head.head.size));
        }
        Ok(VerifiedExport {
            first_seq: self.first_seq,
            records: self.records,
            heads: self.heads,
            head,
            frontier: self.frontier,
            digest: self.digest,
            remembered_reached: self.remembered.is_some_and(|r| r.checked),
        })
    }
}
