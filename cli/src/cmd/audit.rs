//! `ringzero audit …`: verify, query, tail, export, prove and seal the audit log.
//!
//! Trust comes from the profile alone: tree heads are checked only against its pinned audit
//! keys ([`Profile::audit_keys`], learned at bootstrap and from authenticated bundle refreshes),
//! never against keys carried by what is verified. `verify` — live or `--file` — remembers the
//! last tree head it accepted next to the profile (`PROFILE.audit-head`) and demands that every
//! later head extend it (a consistency proof from the cluster, or the files' own tree at that
//! size), so a log rolled back or forked after it was seen is caught.
//!
//! # Layout
//!
//! - this file: live `verify`, `prove`, `seal`.
//! - [`args`]: the subcommands' flags and value parsers.
//! - [`files`]: `verify --file`, a chain of exports checked offline.
//! - [`memory`]: the remembered head and the digest of its records.
//! - [`review`]: `query`, `tail`, `export` and the record table.
//! - [`session`]: `session show|verify`, exec recordings checked against their audit record.
//! - [`stream`]: feeding an export stream to the (blocking) verifier, and to files.

mod args;
mod files;
mod memory;
mod review;
mod session;
mod stream;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::anyhow;
use ringzero_policy::audit::{
    AuditEntry, AuditKeys, ExportError, Hash, KeyStatus, SignedTreeHead, TreeHead, VerifiedExport,
    VerifyOptions, verify_consistency, verify_export_with, verify_inclusion,
};
use ringzero_proto::client::Profile;
use ringzero_proto::pb;
use serde::Serialize;

pub(crate) use self::args::AuditCommand;
use self::args::{AuditProveArgs, AuditSealArgs, AuditVerifyArgs};
use self::memory::{load_remembered, remembered_path, save_remembered};
use super::session::{Session, refused, runtime, session};
use crate::cli::GlobalArgs;
use crate::failure::{Failure, Outcome, bad_input, bad_input_msg, failed};
use crate::input::read_bounded;

/// `audit query --resource RESOURCE` — the same code, for commands that show one object's
/// history (`job history`).
pub(crate) async fn query_resource(
    global: &GlobalArgs,
    resource: String,
    limit: u32,
    json: bool,
) -> Outcome {
    review::query(
        global,
        args::AuditQueryArgs {
            actor: None,
            operation: None,
            resource: Some(resource),
            decision: None,
            since: None,
            until: None,
            limit,
            json,
        },
    )
    .await
}

/// Records `seal` leaves in the live log by default.
pub(crate) const SEAL_KEEP_LIVE: u64 = 1000;

pub(crate) fn run(global: &GlobalArgs, cmd: AuditCommand) -> Outcome {
    // Verifying files needs only the profile's pinned keys: no runtime, no network.
    if let AuditCommand::Verify(a) = &cmd
        && !a.files.is_empty()
    {
        return files::verify_files_cmd(global, a);
    }
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            AuditCommand::Verify(a) => verify_live(global, &a).await,
            AuditCommand::Query(a) => review::query(global, a).await,
            AuditCommand::Tail(a) => review::tail(global, a).await,
            AuditCommand::Export(a) => review::export(global, a).await,
            AuditCommand::Prove(a) => prove(global, a).await,
            AuditCommand::Seal(a) => seal(global, a).await,
            AuditCommand::Session(c) => session::run(global, c).await,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Keys and heads
// ---------------------------------------------------------------------------------------------

/// The profile's pinned audit keys. `published` and `active` keys verify; a `retired` one
/// verifies heads dated before its retirement (all of them when the time is unknown); a
/// `compromised` one — or one in a state this CLI does not know — verifies nothing.
pub(crate) fn pinned_keys(profile: &Profile, path: &Path) -> Result<AuditKeys, Failure> {
    let mut keys = AuditKeys::new();
    let mut pinned = 0usize;
    for pin in &profile.audit_keys {
        let Some(public) = pin.public_key_bytes() else {
            eprintln!(
                "warning: {}: ignoring audit key {}: not a 32-byte hex key",
                path.display(),
                pin.id
            );
            continue;
        };
        let status = match pin.status.as_str() {
            "active" | "published" => KeyStatus::Active,
            "retired" => KeyStatus::Retired {
                since_ms: pin.retired_ms.unwrap_or(u64::MAX),
            },
            _ => KeyStatus::Compromised,
        };
        keys.insert(pin.id, public, status);
        pinned += 1;
    }
    if pinned == 0 {
        return Err(failed(anyhow!(
            "{}: the profile pins no audit key, so no tree head can be trusted \
             (a profile written before audit keys existed learns them on its next call to the cluster)",
            path.display()
        )));
    }
    Ok(keys)
}

/// The policy form of a tree head from the wire.
fn wire_head(h: &pb::SignedTreeHead) -> Result<SignedTreeHead, Failure> {
    let root: Hash = h.root.as_slice().try_into().map_err(|_| {
        failed(anyhow!(
            "the authority sent a tree head whose root is {} bytes, not 32",
            h.root.len()
        ))
    })?;
    Ok(SignedTreeHead {
        head: TreeHead {
            size: h.size,
            root,
            time_ms: h.time_ms,
            key_id: h.key_id,
        },
        signature: h.signature.clone(),
    })
}

/// The proof hashes of a reply, each exactly 32 bytes.
fn proof_hashes(reply: &pb::ProofReply) -> Result<Vec<Hash>, Failure> {
    reply
        .hashes
        .iter()
        .map(|h| {
            h.as_slice().try_into().map_err(|_| {
                failed(anyhow!(
                    "the authority sent a proof hash of {} bytes, not 32",
                    h.len()
                ))
            })
        })
        .collect()
}

/// The cluster's current signed tree head, checked against the pinned keys, and where the live
/// log starts (records before it are sealed).
pub(crate) async fn current_head(
    s: &mut Session,
    keys: &AuditKeys,
) -> Result<(SignedTreeHead, u64), Failure> {
    let reply = s
        .client
        .call(|mut c| async move { c.get_tree_head(pb::GetTreeHeadRequest {}).await })
        .await
        .map_err(|e| refused(e, "audit tree head"))?;
    let sth = wire_head(&reply)?;
    sth.verify(keys).map_err(|e| {
        failed(anyhow!(
            "the cluster's tree head (size {}) is not signed by an audit key pinned in {}: {e}",
            sth.head.size,
            s.path.display()
        ))
    })?;
    if reply.sealed_up_to > sth.head.size {
        return Err(failed(anyhow!(
            "the authority says records up to {} are sealed, past its tree head of size {}",
            reply.sealed_up_to,
            sth.head.size
        )));
    }
    Ok((sth, reply.sealed_up_to))
}

async fn consistency_proof(
    s: &mut Session,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, Failure> {
    let reply = s
        .client
        .call(|mut c| async move {
            c.get_consistency_proof(pb::ConsistencyProofRequest { old_size, new_size })
                .await
        })
        .await
        .map_err(|e| refused(e, &format!("audit consistency proof {old_size}→{new_size}")))?;
    proof_hashes(&reply)
}

// ---------------------------------------------------------------------------------------------
// The remembered head (see [`memory`])
// ---------------------------------------------------------------------------------------------

/// Checks that `sth` extends the remembered head `seen` (same tree at `seen.size`), asking the
/// cluster for a consistency proof. Anything else is a rollback or a fork.
async fn check_extends(
    s: &mut Session,
    seen: &TreeHead,
    sth: &SignedTreeHead,
    file: &Path,
) -> Result<(), Failure> {
    let (old, new) = (seen.size, sth.head.size);
    if new < old {
        return Err(failed(anyhow!(
            "rollback: the cluster's signed tree head has {new} records, but a head of {old} \
             records was accepted before (remembered in {}): records were removed from the log",
            file.display()
        )));
    }
    let proof = if old == 0 || old == new {
        Vec::new()
    } else {
        consistency_proof(s, old, new).await?
    };
    verify_consistency(old, new, &seen.root, &sth.head.root, &proof).map_err(|e| {
        failed(anyhow!(
            "rollback: the cluster's tree of {new} records does not extend the tree of {old} \
             records accepted before (remembered in {}; consistency proof: {e}): the log was \
             rewritten or forked",
            file.display()
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// verify
// ---------------------------------------------------------------------------------------------

/// What a verification established, for the summary.
#[derive(Debug, Serialize)]
struct Summary {
    /// The verified tree head.
    size: u64,
    root: String,
    key_id: u64,
    time_ms: u64,
    time: String,
    /// The first record verified (the live log's start or the first file's).
    first_seq: u64,
    records_verified: u64,
    /// The head accepted before (remembered), which the new one extends.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_size: Option<u64>,
    /// The files of a `--file` chain, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    files: Vec<FileSummary>,
}

#[derive(Debug, Serialize)]
struct FileSummary {
    file: String,
    first_seq: u64,
    size: u64,
    root: String,
    key_id: u64,
    records: u64,
}

impl Summary {
    fn new(v: &VerifiedExport, first_seq: u64, records: u64) -> Self {
        let h = &v.head.head;
        Self {
            size: h.size,
            root: hex::encode(h.root),
            key_id: h.key_id,
            time_ms: h.time_ms,
            time: format_ms(h.time_ms),
            first_seq,
            records_verified: records,
            previous_size: None,
            files: Vec::new(),
        }
    }

    fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::json!(self));
            return;
        }
        for f in &self.files {
            println!(
                "{}: records {}..{} ({} records), signed up to {} by key {}",
                f.file, f.first_seq, f.size, f.records, f.size, f.key_id
            );
        }
        println!(
            "verified {} records ({}..{}): every record is what a pinned audit key signed",
            self.records_verified, self.first_seq, self.size
        );
        println!("tree size {}", self.size);
        println!("root      {}", self.root);
        println!("signed    by key {} at {}", self.key_id, self.time);
        if let Some(prev) = self.previous_size {
            println!("extends   the head of size {prev} accepted before");
        }
    }
}

/// A unix time in milliseconds as RFC 3339 (UTC, to the second); `-` for 0.
pub(crate) use super::session::format_ms;

/// Exit 1 naming what was verified and the first problem (the library's error names the record).
fn export_failed(what: &str, e: ExportError) -> Failure {
    match e {
        ExportError::ConsistencyRequired { from, to } => failed(anyhow!(
            "{what}: starts at record {to}, but the chain so far ends at {from}: the records \
             {from}..{to} are missing (give every sealed segment, oldest first)"
        )),
        e => failed(anyhow!("{what}: {e}")),
    }
}

async fn verify_live(global: &GlobalArgs, a: &AuditVerifyArgs) -> Outcome {
    let mut s = session(global)?;
    // Learn the audit keys of nodes that joined since the profile was written (authenticated).
    s.refresh().await;
    let keys = pinned_keys(&s.profile, &s.path)?;
    let (sth, sealed) = current_head(&mut s, &keys).await?;
    let file = remembered_path(&s.path);
    let remembered = load_remembered(&file)?;
    let seen = remembered.as_ref().map(|r| r.head);
    if let Some(seen) = &seen {
        check_extends(&mut s, seen, &sth, &file).await?;
    }
    let size = sth.head.size;
    let first_seq = sealed;
    let records = size - first_seq;
    let previous_size = seen.as_ref().map(|t| t.size);
    if size == 0 {
        if !a.no_remember {
            save_remembered(&file, &sth, None)?;
        }
        let summary = Summary {
            size: 0,
            root: hex::encode(sth.head.root),
            key_id: sth.head.key_id,
            time_ms: sth.head.time_ms,
            time: format_ms(sth.head.time_ms),
            first_seq: 0,
            records_verified: 0,
            previous_size,
            files: Vec::new(),
        };
        summary.print(a.json);
        return Ok(ExitCode::SUCCESS);
    }
    // A remembered head before the live start is linked to it by a consistency proof.
    let seen_to_start = match &seen {
        Some(t) if t.size > 0 && t.size < first_seq => {
            Some(consistency_proof(&mut s, t.size, first_seq).await?)
        }
        _ => None,
    };
    let chunks = stream::export(&mut s, first_seq, size).await?;
    let seen_digest = remembered.and_then(|r| r.digest);
    let verified = stream::verify(chunks, keys, seen, seen_to_start, seen_digest)
        .await?
        .map_err(|e| export_failed("the live audit log", e))?;
    if verified.head.head.size != size {
        return Err(failed(anyhow!(
            "the live audit log: the export ends at a signed head of size {}, not at the \
             cluster's head of size {size}",
            verified.head.head.size
        )));
    }
    if verified.head.head.root != sth.head.root {
        return Err(failed(anyhow!(
            "the live audit log: two signed tree heads of size {size} have different roots: \
             the cluster equivocated"
        )));
    }
    if !a.no_remember {
        save_remembered(&file, &sth, verified.digest.as_ref())?;
    }
    s.refresh().await;
    let mut summary = Summary::new(&verified, first_seq, records);
    // The cluster's head (the one remembered), which the export's last head equals.
    summary.key_id = sth.head.key_id;
    summary.time_ms = sth.head.time_ms;
    summary.time = format_ms(sth.head.time_ms);
    summary.previous_size = previous_size;
    summary.print(a.json);
    Ok(ExitCode::SUCCESS)
}

/// The profile, for commands that need only its pinned keys (no credentials, no network).
fn load_profile(global: &GlobalArgs) -> Result<(PathBuf, Profile), Failure> {
    let path = global
        .profile
        .clone()
        .ok_or_else(|| bad_input_msg("no profile: pass --profile FILE or set RINGZERO_PROFILE"))?;
    let text = read_bounded(&path).map_err(bad_input)?;
    let profile =
        Profile::from_toml(&text).map_err(|e| bad_input(anyhow!("{}: {e}", path.display())))?;
    Ok((path, profile))
}

// ---------------------------------------------------------------------------------------------
// prove
// ---------------------------------------------------------------------------------------------

async fn prove(global: &GlobalArgs, a: AuditProveArgs) -> Outcome {
    let mut s = session(global)?;
    s.refresh().await;
    let keys = pinned_keys(&s.profile, &s.path)?;
    let (sth, sealed) = current_head(&mut s, &keys).await?;
    let (seq, size) = (a.seq, sth.head.size);
    if seq >= size {
        return Err(failed(anyhow!(
            "record {seq} is not in the log: the signed tree has {size} records (0..{size})"
        )));
    }
    let reply = s
        .client
        .call(|mut c| async move {
            c.get_inclusion_proof(pb::InclusionProofRequest {
                seq,
                tree_size: size,
            })
            .await
        })
        .await
        .map_err(|e| refused(e, &format!("audit record {seq}")))?;
    if reply.leaf.is_empty() {
        return Err(failed(anyhow!(
            "record {seq} is sealed (the live log starts at {sealed}): the authority no longer \
             serves it; it is in the segment file that sealed it (`audit verify --file` checks it)"
        )));
    }
    let entry = AuditEntry::from_leaf_bytes(&reply.leaf)
        .map_err(|e| failed(anyhow!("the authority sent record {seq} malformed: {e}")))?;
    if entry.seq != seq {
        return Err(failed(anyhow!(
            "the authority sent record {} when asked for record {seq}",
            entry.seq
        )));
    }
    let proof = proof_hashes(&reply)?;
    verify_inclusion(&entry.leaf_hash(), seq, size, &proof, &sth.head.root).map_err(|e| {
        failed(anyhow!(
            "record {seq} is NOT proven to be in the signed tree of size {size}: {e}"
        ))
    })?;
    s.refresh().await;
    let root = hex::encode(sth.head.root);
    if a.json {
        let out = serde_json::json!({
            "record": entry,
            "tree_size": size,
            "root": root,
            "key_id": sth.head.key_id,
            "time_ms": sth.head.time_ms,
            "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
        });
        println!("{out}");
    } else {
        for line in review::describe(&entry) {
            println!("{line}");
        }
        println!(
            "included in tree of size {size} (root {root}), signed by key {} at {}",
            sth.head.key_id,
            format_ms(sth.head.time_ms)
        );
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// seal
// ---------------------------------------------------------------------------------------------

/// Where `seal` stops by default: all but the last [`SEAL_KEEP_LIVE`] records, or all of them
/// when there are fewer.
pub(crate) fn default_seal_point(size: u64) -> u64 {
    if size > SEAL_KEEP_LIVE {
        size - SEAL_KEEP_LIVE
    } else {
        size
    }
}

async fn seal(global: &GlobalArgs, a: AuditSealArgs) -> Outcome {
    if !a.force && a.out.exists() {
        return Err(bad_input_msg(format!(
            "{} exists (use --force to replace it)",
            a.out.display()
        )));
    }
    let mut s = session(global)?;
    s.refresh().await;
    let keys = pinned_keys(&s.profile, &s.path)?;
    let (sth, sealed) = current_head(&mut s, &keys).await?;
    let file = remembered_path(&s.path);
    if let Some(seen) = load_remembered(&file)? {
        check_extends(&mut s, &seen.head, &sth, &file).await?;
    }
    let size = sth.head.size;
    let up_to = match a.up_to {
        Some(u) if u > size => {
            return Err(bad_input_msg(format!(
                "--up-to {u}: the log has only {size} records"
            )));
        }
        Some(u) if u <= sealed => {
            return Err(bad_input_msg(format!(
                "--up-to {u}: the records before {sealed} are already sealed"
            )));
        }
        Some(u) => u,
        None => default_seal_point(size),
    };
    if up_to <= sealed {
        eprintln!("nothing to seal: the live log starts at record {sealed} of {size}");
        return Ok(ExitCode::SUCCESS);
    }
    let chunks = stream::export(&mut s, sealed, up_to).await?;
    stream::to_file(chunks, &a.out, a.force).await?;
    // The file must verify on its own, end exactly at `up_to`, and be a prefix of the signed
    // live tree — before the cluster is asked to forget its records.
    let kept = || {
        format!(
            "{} was kept for inspection; nothing was sealed",
            a.out.display()
        )
    };
    let f =
        File::open(&a.out).map_err(|e| failed(anyhow!("reopening {}: {e}", a.out.display())))?;
    let v = verify_export_with(
        BufReader::with_capacity(1 << 16, f),
        &keys,
        &VerifyOptions {
            keep_records: false,
            ..VerifyOptions::default()
        },
    )
    .map_err(|e| {
        failed(anyhow!(
            "the exported segment does not verify: {e}; {}",
            kept()
        ))
    })?;
    if v.first_seq != sealed || v.head.head.size != up_to {
        return Err(failed(anyhow!(
            "the exported segment covers records {}..{}, not {sealed}..{up_to}; {}",
            v.first_seq,
            v.head.head.size,
            kept()
        )));
    }
    let proof = if up_to == size {
        Vec::new()
    } else {
        consistency_proof(&mut s, up_to, size).await?
    };
    verify_consistency(up_to, size, &v.head.head.root, &sth.head.root, &proof).map_err(|e| {
        failed(anyhow!(
            "the exported segment is not a prefix of the signed live tree ({e}); {}",
            kept()
        ))
    })?;
    let root = v.head.head.root.to_vec();
    let reply = s
        .client
        .call(|mut c| {
            let root = root.clone();
            async move {
                c.seal_audit(pb::SealAuditRequest {
                    up_to_seq: up_to,
                    root,
                })
                .await
            }
        })
        .await
        .map_err(|e| refused(e, &format!("audit seal up to {up_to}")))?;
    s.refresh().await;
    println!(
        "sealed records {sealed}..{up_to} ({} records) into {}",
        up_to - sealed,
        a.out.display()
    );
    println!(
        "segment root {} (tree size {up_to})",
        hex::encode(v.head.head.root)
    );
    println!(
        "the live log now starts at record {}; keep {}: `ringzero audit verify --file` needs \
         every segment, oldest first",
        reply.sealed_up_to,
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
