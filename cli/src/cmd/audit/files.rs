//! `audit verify --file …`: a chain of exported files, checked offline against the profile's
//! pinned keys and held to the remembered head exactly as the live check is: the chain must
//! reach the remembered size with the same tree there (or be refused, naming the first record
//! that differs), and its last head is remembered in turn unless `--no-remember`.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::anyhow;
use ringzero_policy::audit::{
    AuditKeys, ExportError, LeafDigest, SignedTreeHead, VerifyOptions, verify_export_with,
};

use super::args::AuditVerifyArgs;
use super::memory::{Remembered, load_remembered, remembered_path, save_remembered};
use super::{FileSummary, Summary, export_failed, load_profile, pinned_keys};
use crate::cli::GlobalArgs;
use crate::failure::{Failure, Outcome, bad_input, bad_input_msg, failed};

pub(super) fn verify_files_cmd(global: &GlobalArgs, a: &AuditVerifyArgs) -> Outcome {
    let (path, profile) = load_profile(global)?;
    let keys = pinned_keys(&profile, &path)?;
    let memory = remembered_path(&path);
    let seen = load_remembered(&memory)?;
    let chain = verify_files(
        &a.files,
        &keys,
        seen.as_ref().map(|r| (r, memory.as_path())),
    )?;
    if !a.no_remember {
        save_remembered(&memory, &chain.head, chain.digest.as_ref())?;
    }
    chain.summary.print(a.json);
    Ok(ExitCode::SUCCESS)
}

/// A verified chain: what to print and what to remember.
#[derive(Debug)]
pub(super) struct Chain {
    pub(super) summary: Summary,
    pub(super) head: SignedTreeHead,
    pub(super) digest: Option<LeafDigest>,
}

/// Verifies `files` in order as one chain: each continues the tree where the previous one's
/// last signed head left it (that head, and its digest, are the next file's trusted head). The
/// remembered head `seen` (and the file it is kept in, for messages) is checked in the file
/// whose tree reaches its size; the chain must reach it.
pub(super) fn verify_files(
    files: &[PathBuf],
    keys: &AuditKeys,
    seen: Option<(&Remembered, &Path)>,
) -> Result<Chain, Failure> {
    let mut previous: Option<(SignedTreeHead, Option<LeafDigest>)> = None;
    let mut pending = seen;
    let mut parts = Vec::with_capacity(files.len());
    let mut last = None;
    for path in files {
        let f =
            File::open(path).map_err(|e| bad_input(anyhow!("opening {}: {e}", path.display())))?;
        let opts = VerifyOptions {
            trusted: previous.as_ref().map(|(h, _)| &h.head),
            trusted_digest: previous.as_ref().and_then(|(_, d)| d.as_ref()),
            remembered: pending.map(|(r, _)| &r.head),
            remembered_digest: pending.and_then(|(r, _)| r.digest.as_ref()),
            keep_records: false,
            ..VerifyOptions::default()
        };
        let v = verify_export_with(BufReader::with_capacity(1 << 16, f), keys, &opts)
            .map_err(|e| file_failed(path, e, pending))?;
        if v.remembered_reached {
            pending = None;
        }
        let records = v.head.head.size - v.first_seq;
        if previous.is_none() && v.first_seq > 0 {
            eprintln!(
                "note: {} starts at record {}: the records before it are vouched for only by \
                 the signed roots (give their segment files first to verify them too)",
                path.display(),
                v.first_seq
            );
        }
        parts.push(FileSummary {
            file: path.display().to_string(),
            first_seq: v.first_seq,
            size: v.head.head.size,
            root: hex::encode(v.head.head.root),
            key_id: v.head.head.key_id,
            records,
        });
        previous = Some((v.head.clone(), v.digest.clone()));
        last = Some(v);
    }
    let Some(last) = last else {
        return Err(bad_input_msg("no --file given"));
    };
    if let Some((r, memory)) = pending {
        return Err(failed(anyhow!(
            "rollback: the files end at record {}, but a head of {} records was accepted \
             before (remembered in {}): they cannot show that the log still extends it (give \
             the later files too, up to a live export)",
            last.head.head.size,
            r.head.size,
            memory.display()
        )));
    }
    let first_seq = parts.first().map_or(0, |p| p.first_seq);
    let records = last.head.head.size - first_seq;
    let mut summary = Summary::new(&last, first_seq, records);
    summary.files = parts;
    summary.previous_size = seen.map(|(r, _)| r.head.size);
    Ok(Chain {
        summary,
        head: last.head,
        digest: last.digest,
    })
}

/// Exit 1 naming the file and the problem; a disagreement with the remembered head (the
/// pending one, of that size) is said as such.
fn file_failed(path: &Path, e: ExportError, pending: Option<(&Remembered, &Path)>) -> Failure {
    let file = path.display();
    let remembered = pending.filter(|(r, _)| match &e {
        ExportError::Rollback { seen_size, .. }
        | ExportError::Diverged { seen_size, .. }
        | ExportError::Unprovable { seen_size, .. } => *seen_size == r.head.size,
        _ => false,
    });
    match (e, remembered) {
        (
            ExportError::Diverged {
                seen_size,
                first_seq,
                last_seq,
                ..
            },
            Some((_, memory)),
        ) => {
            let at = if first_seq == last_seq {
                format!("record {first_seq} is the first that differs")
            } else {
                format!("the first record that differs is among {first_seq}..={last_seq}")
            };
            failed(anyhow!(
                "{file}: rollback: the log was forked or rewritten after the head of \
                 {seen_size} records accepted before (remembered in {}): {at}",
                memory.display()
            ))
        }
        (
            ExportError::Rollback {
                seen_size,
                got_size,
            },
            Some((r, memory)),
        ) if got_size >= seen_size => {
            let why = if r.digest.is_some() {
                "the files do not reach back to record 0"
            } else {
                "the remembered head keeps no record digest"
            };
            failed(anyhow!(
                "{file}: rollback: the log was forked or rewritten after the head of \
                 {seen_size} records accepted before (remembered in {}): its tree of \
                 {seen_size} records has another root (the first record that differs cannot \
                 be named: {why})",
                memory.display()
            ))
        }
        (
            ExportError::Unprovable {
                seen_size,
                first_seq,
            },
            Some((_, memory)),
        ) => failed(anyhow!(
            "{file}: starts at record {first_seq}, after the head of {seen_size} records \
             accepted before (remembered in {}): cannot prove consistency with the remembered \
             head at size {seen_size} (give the files from record 0, or from a record before \
             {seen_size})",
            memory.display()
        )),
        (
            ExportError::Rollback {
                seen_size,
                got_size,
            },
            _,
        ) if got_size < seen_size => failed(anyhow!(
            "{file}: ends at record {got_size}, but the files before it reach {seen_size}: \
             give the files oldest first (or this one is from a rolled-back log)"
        )),
        (e, _) => export_failed(&file.to_string(), e),
    }
}
