//! Agent nodes and workload SVIDs.
//!
//! - An agent speaks with its node SVID (`spiffe://TD/ringzero/node/<name>`) and the capability
//!   it received at enrollment (`svid:mint` on `node/<name>`, bound to that SVID). The node it
//!   acts for is taken from its **certificate**, never from the request: whatever its token
//!   says, an agent only ever renews its own SVID, syncs the entries parented to itself and
//!   obtains SVIDs for them. An evicted or banned node is refused at every call.
//! - Every issued SVID (serial, SPIFFE ID, node, public-key hash, not-after) is committed to the
//!   audit log before the certificate leaves this node. A batch of CSRs becomes as many audit
//!   records, proposed together so they share Raft entries.
//! - `SyncEntries` streams the entries of the caller's node: every change since the revision the
//!   agent already has, then each new change as it is applied (woken by the state machine, no
//!   polling), the bundle whenever it changes, and the set of revoked capabilities whenever it
//!   changes, so verifiers on the node follow revocations.
//! - Entries are gated on `entry:read` / `entry:write` with the SPIFFE ID's path as the resource
//!   (`spiffe://TD/ns/a/web` → `ns/a/web`), so a developer of namespace `a` manages exactly the
//!   identities under `ns/a`.

use std::pin::Pin;
use std::time::{Duration, SystemTime};

use ringzero_policy::svid::{LeafKey, LeafRequest, MAX_DER_LEN};
use ringzero_policy::token::{Lifetime, MintRequest};
use ringzero_policy::{NodeName, Operation, Resource, Right, SpiffeId};
use ringzero_proto::pb;

use super::{AuthorityService, status_of};
use crate::command::{AuditDecision, NodeStatus, Op, Outcome};
use crate::gate::Allowed;
use crate::state::NodeRecord;

/// The lifetime of agent node SVIDs and of the capability that goes with them.
pub(crate) const AGENT_SVID_TTL: Duration = Duration::from_secs(3600);
/// Workload SVID lifetimes an entry may ask for.
pub(crate) const MIN_ENTRY_TTL: Duration = Duration::from_secs(10);
pub(crate) const MAX_ENTRY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The default workload SVID lifetime.
pub(crate) const DEFAULT_ENTRY_TTL: Duration = Duration::from_secs(3600);
/// The most CSRs one `MintSvids` call may carry.
pub(crate) const MAX_MINT_BATCH: usize = 256;
/// Entries per `ListEntries` page, at most.
pub(crate) const MAX_PAGE: usize = 1000;
/// Changes per sync event, at most.
pub(super) const SYNC_CHUNK: usize = 512;
/// An idle feed sends an empty event this often, so verifiers on the node can tell a quiet
/// feed from a dead one (they refuse privileged operations when it is staler than 30 s).
pub(crate) const FEED_HEARTBEAT: Duration = Duration::from_secs(10);

pub(crate) type SyncStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SyncEntriesEvent, tonic::Status>> + Send>>;

pub(super) use super::status::invalid;

pub(super) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn node_resource(name: &NodeName) -> Result<Resource, tonic::Status> {
    Resource::from_segments(&["node", name.as_str()]).map_err(invalid)
}

pub(super) fn status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Active => "active",
        NodeStatus::Evicted => "evicted",
        NodeStatus::Banned => "banned",
    }
}

/// The outcome of an applied node or entry command, or the status of its refusal.
pub(super) fn outcome_status(outcome: Outcome) -> Result<Outcome, tonic::Status> {
    super::status::accepted("refused", outcome)
}

/// What an agent node's capability grants: `svid:mint` on `node/<name>` (it is also bound to
/// the node's SVID and to the node). The one definition, used to mint it and to report it.
pub(crate) fn agent_rights(name: &NodeName) -> Result<Vec<Right>, tonic::Status> {
    Ok(vec![Right::new(Operation::SvidMint, node_resource(name)?)])
}

impl AuthorityService {
    /// The node an agent call acts for: from the peer's SVID, which must be an agent node
    /// SVID of an active node.
    fn calling_node<T>(&self, req: &tonic::Request<T>) -> Result<NodeName, tonic::Status> {
        let peer = ringzero_proto::transport::peer(req);
        let td = self.gate.trust_domain();
        let id = peer
            .spiffe_id
            .filter(|p| p.is_member_of(td))
            .ok_or_else(|| tonic::Status::unauthenticated("a node SVID is required"))?;
        let segments: Vec<&str> = id.segments().collect();
        let name = match segments.as_slice() {
            ["ringzero", "node", name] => NodeName::parse(name).map_err(invalid)?,
            _ => {
                return Err(tonic::Status::permission_denied(format!(
                    "{id} is not an agent node identity"
                )));
            }
        };
        self.require_active(&name)?;
        Ok(name)
    }

    fn require_active(&self, name: &NodeName) -> Result<NodeRecord, tonic::Status> {
        let record = self
            .sm
            .reader()
            .map_err(status_of)?
            .node(name.as_str())
            .map_err(status_of)?;
        match record {
            Some(r) if r.status == NodeStatus::Active => Ok(r),
            Some(r) if r.status == NodeStatus::Evicted => Err(tonic::Status::permission_denied(
                format!("node {name} was evicted"),
            )),
            Some(_) => Err(tonic::Status::permission_denied(format!(
                "node {name} is banned"
            ))),
            None => Err(tonic::Status::permission_denied(format!(
                "node {name} is not enrolled"
            ))),
        }
    }

    /// Gates an agent call: the node's capability must allow `svid:mint` on `node/<name>` for
    /// the node named by its certificate.
    pub(super) async fn gate_agent<T>(
        &self,
        req: &tonic::Request<T>,
    ) -> Result<(NodeName, Allowed), tonic::Status> {
        let name = match self.calling_node(req) {
            Ok(name) => name,
            Err(status) => {
                // Refused before any capability is read (not a node SVID, or the node is
                // evicted, banned or unknown): audited like every other denial.
                let peer = ringzero_proto::transport::peer(req);
                let record = crate::command::AuditRecord {
                    actor: peer
                        .spiffe_id
                        .as_ref()
                        .map_or_else(|| "anonymous".to_owned(), ToString::to_string),
                    revocation_ids: Vec::new(),
                    operation: Operation::SvidMint.as_str().into(),
                    resource: "node".into(),
                    decision: AuditDecision::Deny,
                    reason: Some(format!("not_an_active_node: {}", status.message())),
                    authority: self.gate.node_id(),
                    request_id: crate::command::random_hex(),
                    details: Vec::new(),
                };
                self.gate.record_denial(record).await;
                return Err(status);
            }
        };
        let allowed = self
            .gate
            .check(
                req,
                Operation::SvidMint,
                &node_resource(&name)?,
                Some(&name),
            )
            .await?;
        Ok((name, allowed))
    }

    /// Mints the capability of an agent node: `svid:mint` on `node/<name>`, bound to its SVID
    /// and node. Returns the token and its revocation ids.
    pub(crate) fn agent_token(
        &self,
        id: &SpiffeId,
        name: &NodeName,
        ttl: Duration,
    ) -> Result<(String, Vec<String>), tonic::Status> {
        let token = ringzero_policy::token::mint(
            &self.minting_key()?,
            &MintRequest {
                subject: id.clone(),
                rights: agent_rights(name)?,
                ttl: Some(ttl),
                bind_to_subject: true,
                bind_node: Some(name.clone()),
            },
            &Lifetime {
                default: ttl,
                max: ttl,
            },
            SystemTime::now(),
        )
        .map_err(status_of)?;
        let ids = ringzero_policy::token::revocation_ids(&token)
            .map_err(status_of)?
            .iter()
            .map(|r| r.to_hex())
            .collect();
        Ok((token, ids))
    }

    /// Records an agent capability as minted by the cluster (so it keeps verifying if this
    /// node is later removed), before it is released; `audit` is the record of the act that
    /// minted it.
    pub(crate) async fn record_agent_mint(
        &self,
        mut audit: crate::command::AuditRecord,
        subject: &SpiffeId,
        token_ids: &[String],
        ttl: Duration,
    ) -> Result<(), tonic::Status> {
        let Some(first) = token_ids.first().and_then(|h| hex::decode(h).ok()) else {
            return Err(super::status::internal("a minted token has no block"));
        };
        audit.operation = Operation::TokenMint.as_str().into();
        audit
            .details
            .retain(|(k, _)| k == "rights" || k == "node" || k == "spiffe_id");
        audit
            .details
            .push(("minted_token".into(), token_ids.join(",")));
        let cmd = crate::command::Command {
            id: crate::command::CommandId::fresh(),
            time_ms: crate::gate::now_ms(),
            audit,
            op: Op::RecordMint {
                id: first,
                parents: Vec::new(),
                minter: "authority".into(),
                subject: subject.to_string(),
                expires_ms: crate::gate::now_ms()
                    .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            },
        };
        super::status::accepted("refused", self.propose(cmd).await?.outcome).map(|_| ())
    }

    pub(crate) async fn list_nodes_impl(
        &self,
        req: tonic::Request<pb::ListNodesRequest>,
    ) -> Result<tonic::Response<pb::ListNodesReply>, tonic::Status> {
        let reader = self
            .read_gated(&req, Operation::NodeRead, &super::res("node")?)
            .await?;
        let nodes = reader.nodes().map_err(status_of)?;
        let drains = reader.node_drains().map_err(status_of)?;
        Ok(tonic::Response::new(pb::ListNodesReply {
            nodes: nodes
                .into_iter()
                .map(|n| pb::NodeInfo {
                    drained: drains.contains_key(&n.name),
                    name: n.name,
                    status: status_name(n.status).into(),
                    since_ms: n.since_ms,
                })
                .collect(),
        }))
    }

    pub(crate) async fn set_node_status_impl(
        &self,
        req: tonic::Request<pb::SetNodeStatusRequest>,
    ) -> Result<tonic::Response<pb::SetNodeStatusReply>, tonic::Status> {
        self.require_leader()?;
        let (name, status, op) = {
            let r = req.get_ref();
            let name = NodeName::parse(&r.name).map_err(invalid)?;
            match r.status.as_str() {
                "evicted" => (name, NodeStatus::Evicted, Operation::NodeEvict),
                "banned" => (name, NodeStatus::Banned, Operation::NodeBan),
                _ => return Err(invalid("status must be evicted or banned")),
            }
        };
        let allowed = self
            .gate
            .check(&req, op, &node_resource(&name)?, None)
            .await?;
        let resp = self
            .propose(allowed.command(Op::SetNodeStatus {
                name: name.to_string(),
                status,
            }))
            .await?;
        outcome_status(resp.outcome)?;
        Ok(tonic::Response::new(pb::SetNodeStatusReply {}))
    }

    pub(crate) async fn renew_node_impl(
        &self,
        req: tonic::Request<pb::RenewNodeRequest>,
    ) -> Result<tonic::Response<pb::RenewNodeReply>, tonic::Status> {
        self.require_leader()?;
        let (name, allowed) = self.gate_agent(&req).await?;
        let csr = &req.get_ref().csr;
        if csr.len() > MAX_DER_LEN {
            return Err(invalid("CSR too large"));
        }
        let id = self
            .gate
            .trust_domain()
            .id_with_path(&["ringzero", "node", name.as_str()])
            .map_err(status_of)?;
        let svid = self
            .keys
            .load()
            .ca
            .issue(&LeafRequest {
                id: &id,
                key: LeafKey::Csr(csr),
                ttl: AGENT_SVID_TTL,
                dns_names: &[],
                now: SystemTime::now(),
            })
            .map_err(|e| invalid(format!("CSR: {e}")))?;
        let (token, token_ids) = self.agent_token(&id, &name, AGENT_SVID_TTL)?;
        let mut audit = allowed.audit.clone();
        audit.details.extend([
            ("svid_serial".into(), hex::encode(&svid.serial)),
            ("spiffe_id".into(), id.to_string()),
            ("node".into(), name.to_string()),
            (
                "public_key_sha256".into(),
                hex::encode(&svid.public_key_sha256),
            ),
            ("not_after".into(), unix_secs(svid.not_after).to_string()),
            ("minted_token".into(), token_ids.join(",")),
            ("rights".into(), format!("svid:mint on node/{name}")),
        ]);
        let cmd = crate::command::Command {
            audit: audit.clone(),
            ..allowed.command(Op::IssueSvid {
                node: name.to_string(),
                serial: svid.serial.clone(),
                not_after_ms: unix_secs(svid.not_after).saturating_mul(1000),
            })
        };
        // Recorded before anything is released; refused if the node was evicted meanwhile.
        outcome_status(self.propose(cmd).await?.outcome)?;
        self.record_agent_mint(audit, &id, &token_ids, AGENT_SVID_TTL)
            .await?;
        Ok(tonic::Response::new(pb::RenewNodeReply {
            svid_chain: svid.chain.iter().map(|c| c.to_vec()).collect(),
            bundle: Some(self.bundle()?),
            token,
        }))
    }

    pub(crate) async fn mint_svids_impl(
        &self,
        req: tonic::Request<pb::MintSvidsRequest>,
    ) -> Result<tonic::Response<pb::MintSvidsReply>, tonic::Status> {
        self.require_leader()?;
        let (name, allowed) = self.gate_agent(&req).await?;
        let requests = &req.get_ref().requests;
        if requests.len() > MAX_MINT_BATCH {
            return Err(invalid(format!("at most {MAX_MINT_BATCH} CSRs per call")));
        }
        let reader = self.sm.reader().map_err(status_of)?;
        let mut out = Vec::with_capacity(requests.len());
        let mut records = Vec::new();
        for r in requests {
            let refused = |why: &str| pb::MintedSvid {
                entry_id: r.entry_id.clone(),
                svid_chain: Vec::new(),
                error: why.to_owned(),
                revision: 0,
            };
            if r.csr.len() > MAX_DER_LEN {
                out.push(refused("CSR too large"));
                continue;
            }
            let entry = if r.entry_id.len() <= 64 {
                reader.entry(&r.entry_id).map_err(status_of)?
            } else {
                None
            };
            let Some(entry) = entry else {
                out.push(refused("no such entry"));
                continue;
            };
            if entry.parent != name.as_str() {
                // Never issued, and recorded as a denial: an agent asking for another node's
                // identity is either misconfigured or compromised.
                let mut audit = allowed.audit.clone();
                audit.decision = AuditDecision::Deny;
                audit.reason = Some(format!("entry {} is parented to another node", entry.id));
                audit.resource = format!("node/{}", entry.parent);
                records.push((None, audit, Op::AuditOnly));
                out.push(refused("entry is not parented to this node"));
                continue;
            }
            let id = match SpiffeId::parse(&entry.spiffe_id) {
                Ok(id) if !id.is_reserved() => id,
                Ok(id) => {
                    // Entries with reserved IDs are refused when written; one that predates
                    // that rule is still never signed, and the attempt is recorded.
                    let mut audit = allowed.audit.clone();
                    audit.decision = AuditDecision::Deny;
                    audit.reason = Some(format!("reserved_id: {id} is reserved"));
                    records.push((None, audit, Op::AuditOnly));
                    out.push(refused("the entry's SPIFFE ID is reserved"));
                    continue;
                }
                Err(_) => {
                    out.push(refused("entry has an invalid SPIFFE ID"));
                    continue;
                }
            };
            let ttl =
                Duration::from_secs(u64::from(entry.ttl_s)).clamp(MIN_ENTRY_TTL, MAX_ENTRY_TTL);
            let issued = self.keys.load().ca.issue(&LeafRequest {
                id: &id,
                key: LeafKey::Csr(&r.csr),
                ttl,
                dns_names: &entry.dns_names,
                now: SystemTime::now(),
            });
            let svid = match issued {
                Ok(s) => s,
                Err(e) => {
                    out.push(refused(&format!("CSR: {e}")));
                    continue;
                }
            };
            let mut audit = allowed.audit.clone();
            audit.resource = format!("node/{name}");
            audit.details.extend([
                ("svid_serial".into(), hex::encode(&svid.serial)),
                ("spiffe_id".into(), id.to_string()),
                ("node".into(), name.to_string()),
                ("entry_id".into(), entry.id.clone()),
                (
                    "public_key_sha256".into(),
                    hex::encode(&svid.public_key_sha256),
                ),
                ("not_after".into(), unix_secs(svid.not_after).to_string()),
            ]);
            let op = Op::IssueSvid {
                node: name.to_string(),
                serial: svid.serial.clone(),
                not_after_ms: unix_secs(svid.not_after).saturating_mul(1000),
            };
            records.push((Some(out.len()), audit, op));
            out.push(pb::MintedSvid {
                entry_id: entry.id.clone(),
                svid_chain: svid.chain.iter().map(|c| c.to_vec()).collect(),
                error: String::new(),
                revision: entry.revision,
            });
        }
        drop(reader);
        // Every record is committed before any certificate is released; an SVID whose record
        // did not commit is withheld. The records go as one group: one hand-off to the
        // batching task, one entry.
        let (slots, cmds): (Vec<_>, Vec<_>) = records
            .into_iter()
            .map(|(slot, audit, op)| {
                let cmd = crate::command::Command {
                    audit,
                    ..allowed.command(op)
                };
                (slot, cmd)
            })
            .unzip();
        let results = self.proposer.propose_all(cmds).await;
        for (slot, result) in slots.into_iter().zip(results) {
            match (slot, result) {
                (_, Ok(r)) if !matches!(r.outcome, Outcome::Rejected(_)) => {}
                (Some(slot), Ok(r)) => {
                    if let (Some(s), Outcome::Rejected(why)) = (out.get_mut(slot), r.outcome) {
                        s.svid_chain.clear();
                        s.error = format!("refused: {why}");
                    }
                }
                (None, Ok(_)) => {}
                (Some(slot), Err(e)) => {
                    if let Some(s) = out.get_mut(slot) {
                        s.svid_chain.clear();
                        s.error = format!("audit record not committed: {e}");
                    }
                }
                (None, Err(e)) => {
                    tracing::warn!(error = %e, "could not record a refused SVID request");
                }
            }
        }
        Ok(tonic::Response::new(pb::MintSvidsReply { svids: out }))
    }
}
