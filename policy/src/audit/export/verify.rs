//! The verifier: reads an export in order, re-derives every leaf, checks every signed head,
//! and holds the export to the trusted and remembered heads.

use std::io::BufRead;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::anchor::{Anchor, Divergence};
use super::error::{malformed, truncate};
use super::read::{Kind, WireLine, classify_gap, parse_hash, parse_line, read_line, required};
use super::{ExportError, HEAD_TYPE, RECORD_TYPE, SEGMENT_TYPE};
use crate::audit::digest::LeafDigest;
use crate::audit::entry::AuditEntry;
use crate::audit::head::{AuditKeySource, HeadError, SignedTreeHead, TreeHead};
use crate::audit::merkle::{Frontier, Hash, leaf_hash, verify_consistency};

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
/// accepted. See the [module docs](crate::audit) for exactly what is proven.
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

enum RecordStep {
    Absorbed,
    Gap { expected: u64 },
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
