//! The writer: records as canonical JSON lines, a signed tree head after every checkpoint
//! window and at the end, and a leading segment line when the export continues a prior tree.

use std::borrow::Borrow;
use std::io::{self, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::Ed25519KeyPair;
use serde::Serialize;

use super::{
    ExportOptions, ExportWriteError, FORMAT_VERSION, HEAD_TYPE, MAX_CHECKPOINT_EVERY, SEGMENT_TYPE,
};
use crate::audit::entry::AuditEntry;
use crate::audit::head::{SignedTreeHead, TreeHead};
use crate::audit::merkle::{Frontier, leaf_hash};

const RECORD_PREFIX: &[u8] = b"{\"type\":\"ringzero.audit.record\",\"v\":1,";

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
