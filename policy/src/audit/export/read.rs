//! Reading an export: bounded lines, the wire form every line type shares, and the field
//! parsers that turn it into typed values.

use std::io::{BufRead, Read};

use serde::Deserialize;

use super::error::malformed;
use super::{ExportError, FORMAT_VERSION, MAX_LINE_BYTES, RECORD_TYPE};
use crate::audit::entry::Decision;
use crate::audit::merkle::Hash;

/// How many lines past a gap in the sequence the verifier reads to tell a moved record
/// ([`ExportError::Reordered`]) from a missing one ([`ExportError::Dropped`]).
const GAP_LOOKAHEAD_LINES: usize = 4096;

/// Reads one line into `line` without its `\n` / `\r\n`; `false` at the end of input.
pub(super) fn read_line<R: BufRead>(
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
pub(super) fn classify_gap<R: BufRead>(
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

/// Every field any line type may carry; which ones a line must and may carry depends on its
/// type. Unknown and duplicate fields are refused by serde.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireLine {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) v: u64,
    // Record.
    pub(super) seq: Option<u64>,
    pub(super) time_ms: Option<u64>,
    pub(super) log_index: Option<u64>,
    pub(super) authority: Option<u64>,
    pub(super) actor: Option<String>,
    pub(super) revocation_ids: Option<Vec<String>>,
    pub(super) operation: Option<String>,
    pub(super) resource: Option<String>,
    pub(super) decision: Option<Decision>,
    pub(super) reason: Option<String>,
    pub(super) request_id: Option<String>,
    pub(super) outcome: Option<String>,
    pub(super) details: Option<Vec<(String, String)>>,
    // Tree head (and `time_ms`).
    pub(super) size: Option<u64>,
    pub(super) root: Option<String>,
    pub(super) key_id: Option<u64>,
    pub(super) signature: Option<String>,
    pub(super) leaves: Option<String>,
    // Segment.
    pub(super) first_seq: Option<u64>,
    pub(super) prior_size: Option<u64>,
    pub(super) prior_root: Option<String>,
    pub(super) prior_frontier: Option<Vec<String>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Record,
    Head,
    Segment,
}

impl WireLine {
    /// The first field present that does not belong to a line of `kind`.
    pub(super) fn foreign_field(&self, kind: Kind) -> Option<&'static str> {
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

pub(super) fn parse_line(line: &[u8], line_no: u64) -> Result<WireLine, ExportError> {
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

pub(super) fn required<T>(value: Option<T>, name: &str, line: u64) -> Result<T, ExportError> {
    value.ok_or_else(|| malformed(line, format!("missing field {name}")))
}

pub(super) fn parse_hash(text: &str, name: &str, line: u64) -> Result<Hash, ExportError> {
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
