//! The audit log as a transparency log: signed tree heads, proofs, queries, tail, export, seal.
//!
//! Heads are signed by the answering leader's own audit key (a bundle key of kind `audit`),
//! over `policy::audit::TreeHead::signed_message` (domain-separated). Records travel as their
//! canonical leaf bytes, so a client re-derives every leaf hash itself. Every call here is
//! itself gated and audited (`audit:read` on `audit`; sealing `audit:seal`).

use std::io::Write;
use std::pin::Pin;

use ringzero_policy::audit::{
    self, ExportOptions, Frontier, SignedTreeHead, TreeHead, consistency_proof, inclusion_proof,
};
use ringzero_policy::{Operation, Resource};
use ringzero_proto::pb;

use super::{AuthorityService, status_of};
use crate::command::{AuditDecision, KeyKind, KeyStatus, Op};
use crate::gate::now_ms;
use crate::state::{AuditQuery, audit_entry};

/// Records per `TailAudit` message.
const TAIL_CHUNK: usize = 512;
/// Export bytes per message.
const EXPORT_CHUNK: usize = 256 * 1024;
/// The most records one query returns.
pub(crate) const MAX_QUERY: u32 = 10_000;

pub(crate) type RecordStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::AuditRecords, tonic::Status>> + Send>>;
pub(crate) type ExportStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ExportChunk, tonic::Status>> + Send>>;

fn audit_resource() -> Result<Resource, tonic::Status> {
    Resource::parse("audit").map_err(status_of)
}

/// Sends what is written through a channel, in chunks; a closed channel is a write error.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<pb::ExportChunk, tonic::Status>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.buf);
        self.tx
            .blocking_send(Ok(pb::ExportChunk { data }))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= EXPORT_CHUNK {
            self.send()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl AuthorityService {
    async fn gate_audit<T>(
        &self,
        req: &tonic::Request<T>,
        op: Operation,
    ) -> Result<crate::gate::Allowed, tonic::Status> {
        self.require_leader()?;
        self.gate.check(req, op, &audit_resource()?, None).await
    }

    /// The key this node signs tree heads with now, and its id in the bundle: both from one
    /// read of the current keys, found by public key (during a rotation the node has two
    /// unretired audit keys in the bundle, and signs with the one it holds).
    fn audit_signer(&self) -> Result<(u64, ring::signature::Ed25519KeyPair), tonic::Status> {
        let node_keys = self.keys.load();
        let own = node_keys.audit_public_spki().map_err(status_of)?;
        let keys = self.key_records()?;
        let id = keys
            .iter()
            .find(|k| {
                k.kind == KeyKind::Audit
                    && k.authority == self.gate.node_id()
                    && k.public_der == own
                    && matches!(k.status, KeyStatus::Active | KeyStatus::Published)
            })
            .map(|k| k.id)
            .ok_or_else(|| tonic::Status::unavailable("this node has no active audit key"))?;
        Ok((id, node_keys.audit_key_pair().map_err(status_of)?))
    }

    pub(crate) async fn get_tree_head_impl(
        &self,
        req: tonic::Request<pb::GetTreeHeadRequest>,
    ) -> Result<tonic::Response<pb::SignedTreeHead>, tonic::Status> {
        let allowed = self.gate_audit(&req, Operation::AuditRead).await?;
        self.gate.record(&allowed).await?;
        let (key_id, pair) = self.audit_signer()?;
        let reader = self.sm.reader().map_err(status_of)?;
        let size = reader.audit_size().map_err(status_of)?;
        let root = audit::merkle::root(&reader.audit_tree(size), size).map_err(status_of)?;
        let sealed = reader.audit_sealed_up_to().map_err(status_of)?;
        let head = TreeHead {
            size,
            root,
            time_ms: now_ms(),
            key_id,
        };
        let signed = SignedTreeHead::sign(&pair, head);
        Ok(tonic::Response::new(pb::SignedTreeHead {
            size,
            root: root.to_vec(),
            time_ms: signed.head.time_ms,
            key_id,
            signature: signed.signature,
            sealed_up_to: sealed,
        }))
    }

    pub(crate) async fn get_inclusion_proof_impl(
        &self,
        req: tonic::Request<pb::InclusionProofRequest>,
    ) -> Result<tonic::Response<pb::ProofReply>, tonic::Status> {
        let allowed = self.gate_audit(&req, Operation::AuditRead).await?;
        self.gate.record(&allowed).await?;
        let r = req.get_ref();
        let reader = self.sm.reader().map_err(status_of)?;
        let size = reader.audit_size().map_err(status_of)?;
        if r.tree_size > size || r.seq >= r.tree_size {
            return Err(tonic::Status::out_of_range(format!(
                "record {} in a tree of {} (the log has {size})",
                r.seq, r.tree_size
            )));
        }
        let proof = inclusion_proof(&reader.audit_tree(r.tree_size), r.seq, r.tree_size)
            .map_err(super::status::invalid)?;
        let leaf = reader
            .audit_record(r.seq)
            .map_err(status_of)?
            .map(|a| audit_entry(&a).leaf_bytes())
            .unwrap_or_default();
        Ok(tonic::Response::new(pb::ProofReply {
            hashes: proof.iter().map(|h| h.to_vec()).collect(),
            leaf,
        }))
    }

    pub(crate) async fn get_consistency_proof_impl(
        &self,
        req: tonic::Request<pb::ConsistencyProofRequest>,
    ) -> Result<tonic::Response<pb::ProofReply>, tonic::Status> {
        let allowed = self.gate_audit(&req, Operation::AuditRead).await?;
        self.gate.record(&allowed).await?;
        let r = req.get_ref();
        let reader = self.sm.reader().map_err(status_of)?;
        let size = reader.audit_size().map_err(status_of)?;
        if r.new_size > size || r.old_size > r.new_size {
            return Err(tonic::Status::out_of_range(format!(
                "sizes {}..{} (the log has {size})",
                r.old_size, r.new_size
            )));
        }
        let proof = consistency_proof(&reader.audit_tree(r.new_size), r.old_size, r.new_size)
            .map_err(super::status::invalid)?;
        Ok(tonic::Response::new(pb::ProofReply {
            hashes: proof.iter().map(|h| h.to_vec()).collect(),
            leaf: Vec::new(),
        }))
    }

    pub(crate) async fn query_audit_impl(
        &self,
        req: tonic::Request<pb::QueryAuditRequest>,
    ) -> Result<tonic::Response<pb::QueryAuditReply>, tonic::Status> {
        let allowed = self.gate_audit(&req, Operation::AuditRead).await?;
        self.gate.record(&allowed).await?;
        let r = req.get_ref();
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let q = AuditQuery {
            actor: non_empty(&r.actor),
            operation: non_empty(&r.operation),
            resource: non_empty(&r.resource),
            decision: match r.decision.as_str() {
                "" => None,
                "allow" => Some(AuditDecision::Allow),
                "deny" => Some(AuditDecision::Deny),
                _ => return Err(super::status::invalid("decision: allow or deny")),
            },
            since_ms: (r.since_ms > 0).then_some(r.since_ms),
            until_ms: (r.until_ms > 0).then_some(r.until_ms),
            after_seq: r.after_seq,
            limit: match r.limit {
                0 => 100,
                n => n.min(MAX_QUERY) as usize,
            },
        };
        let reader = self.sm.reader().map_err(status_of)?;
        let (records, next) = reader.audit_query(&q).map_err(status_of)?;
        Ok(tonic::Response::new(pb::QueryAuditReply {
            records: records
                .iter()
                .map(|a| audit_entry(a).leaf_bytes())
                .collect(),
            next_after_seq: next,
        }))
    }

    pub(crate) async fn tail_audit_impl(
        &self,
        req: tonic::Request<pb::TailAuditRequest>,
    ) -> Result<tonic::Response<RecordStream>, tonic::Status> {
        let allowed = self.gate_audit(&req, Operation::AuditRead).await?;
        self.gate.record(&allowed).await?;
        let (from, follow) = (req.get_ref().from_seq, req.get_ref().follow);
        let sm = self.sm.clone();
        let mut stopping = self.stopping.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut applied = sm.watch_applied();
            let mut next = from;
            loop {
                applied.borrow_and_update();
                let batch = (|| -> Result<Vec<Vec<u8>>, tonic::Status> {
                    let reader = sm.reader().map_err(status_of)?;
                    let size = reader.audit_size().map_err(status_of)?;
                    let sealed = reader.audit_sealed_up_to().map_err(status_of)?;
                    next = next.max(sealed);
                    let mut out = Vec::new();
                    while next < size && out.len() < TAIL_CHUNK {
                        if let Some(a) = reader.audit_record(next).map_err(status_of)? {
                            out.push(audit_entry(&a).leaf_bytes());
                        }
                        next += 1;
                    }
                    Ok(out)
                })();
                match batch {
                    Ok(records) if !records.is_empty() => {
                        let full = records.len() == TAIL_CHUNK;
                        if tx.send(Ok(pb::AuditRecords { records })).await.is_err() {
                            return;
                        }
                        if full {
                            continue;
                        }
                    }
                    Ok(_) => {}
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                }
                if !follow {
                    return;
                }
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { return; },
                    _ = tx.closed() => return,
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    pub(crate) async fn export_audit_impl(
        &self,
        req: tonic::Request<pb::ExportAuditRequest>,
    ) -> Result<tonic::Response<ExportStream>, tonic::Status> {
        let allowed = self.gate_audit(&req, Operation::AuditRead).await?;
        self.gate.record(&allowed).await?;
        let (key_id, pair) = self.audit_signer()?;
        let (since, until) = (req.get_ref().since_seq, req.get_ref().until_seq);
        let reader = self.sm.reader().map_err(status_of)?;
        let size = reader.audit_size().map_err(status_of)?;
        let sealed = reader.audit_sealed_up_to().map_err(status_of)?;
        let until = if until == 0 { size } else { until };
        if until > size || since > until {
            return Err(tonic::Status::out_of_range(format!(
                "records {since}..{until} (the log has {size})"
            )));
        }
        if since < sealed {
            return Err(tonic::Status::failed_precondition(format!(
                "records before {sealed} are sealed; export from {sealed} on and verify with \
                 the sealed segment files"
            )));
        }
        let prior = Frontier::of(&reader.audit_tree(since), since).map_err(status_of)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let failed = std::cell::RefCell::new(None);
            let records = (since..until).map_while(|seq| match reader.audit_record(seq) {
                Ok(Some(a)) => Some(audit_entry(&a)),
                Ok(None) => {
                    *failed.borrow_mut() = Some(format!("record {seq} is gone (sealed?)"));
                    None
                }
                Err(e) => {
                    *failed.borrow_mut() = Some(e.to_string());
                    None
                }
            });
            let mut out = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(EXPORT_CHUNK),
            };
            let written = audit::write_export(
                &mut out,
                &prior,
                records,
                &pair,
                key_id,
                now_ms(),
                &ExportOptions::default(),
            );
            let failed = failed.into_inner();
            match (written, failed) {
                (Ok(_), None) => {
                    let _ = out.flush();
                }
                (_, Some(why)) => {
                    let _ = tx.blocking_send(Err(super::status::internal(why)));
                }
                (Err(e), None) => {
                    let _ = tx.blocking_send(Err(super::status::internal(e.to_string())));
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    pub(crate) async fn seal_audit_impl(
        &self,
        req: tonic::Request<pb::SealAuditRequest>,
    ) -> Result<tonic::Response<pb::SealAuditReply>, tonic::Status> {
        let allowed = self.gate_audit(&req, Operation::AuditSeal).await?;
        let r = req.get_ref();
        {
            let reader = self.sm.reader().map_err(status_of)?;
            let size = reader.audit_size().map_err(status_of)?;
            if r.up_to_seq == 0 || r.up_to_seq > size {
                return Err(tonic::Status::out_of_range(format!(
                    "cannot seal up to {} (the log has {size})",
                    r.up_to_seq
                )));
            }
            // The records up to `up_to_seq` never change once appended, so the root checked
            // here is the root the seal covers.
            let root = audit::merkle::root(&reader.audit_tree(r.up_to_seq), r.up_to_seq)
                .map_err(status_of)?;
            if root.as_slice() != r.root.as_slice() {
                return Err(tonic::Status::failed_precondition(
                    "the root does not match this log's: the export is not of this log",
                ));
            }
        }
        let mut cmd = allowed.command(Op::SealAudit { up_to: r.up_to_seq });
        cmd.audit
            .details
            .push(("sealed_up_to".into(), r.up_to_seq.to_string()));
        cmd.audit
            .details
            .push(("root".into(), hex::encode(&r.root)));
        let resp = self.propose(cmd).await?;
        super::status::accepted("refused", resp.outcome)?;
        Ok(tonic::Response::new(pb::SealAuditReply {
            sealed_up_to: r.up_to_seq,
        }))
    }
}
