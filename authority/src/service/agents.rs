//! Agent nodes, workload SVIDs and registration entries.
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

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use ringzero_policy::selector::{Selector, is_weak};
use ringzero_policy::svid::{LeafKey, LeafRequest, MAX_DER_LEN};
use ringzero_policy::token::{Lifetime, MintRequest};
use ringzero_policy::{NodeName, Operation, Resource, Right, SpiffeId};
use ringzero_proto::pb;

use super::{AuthorityService, status_of};
use crate::command::{AuditDecision, NodeStatus, Op, Outcome, RegistrationEntry};
use crate::gate::Allowed;
use crate::state::NodeRecord;

/// The lifetime of agent node SVIDs and of the capability that goes with them.
pub const AGENT_SVID_TTL: Duration = Duration::from_secs(3600);
/// Workload SVID lifetimes an entry may ask for.
pub const MIN_ENTRY_TTL: Duration = Duration::from_secs(10);
pub const MAX_ENTRY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The default workload SVID lifetime.
pub const DEFAULT_ENTRY_TTL: Duration = Duration::from_secs(3600);
/// The most CSRs one `MintSvids` call may carry.
pub const MAX_MINT_BATCH: usize = 256;
/// Entries per `ListEntries` page, at most.
pub const MAX_PAGE: usize = 1000;
/// Changes per sync event, at most.
const SYNC_CHUNK: usize = 512;
/// An idle feed sends an empty event this often, so verifiers on the node can tell a quiet
/// feed from a dead one (they refuse privileged operations when it is staler than 30 s).
pub const FEED_HEARTBEAT: Duration = Duration::from_secs(10);

pub(crate) type SyncStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SyncEntriesEvent, tonic::Status>> + Send>>;

fn invalid(e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::invalid_argument(e.to_string())
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn node_resource(name: &NodeName) -> Result<Resource, tonic::Status> {
    Resource::from_segments(&["node", name.as_str()]).map_err(invalid)
}

/// The resource an entry's rights are checked on: its SPIFFE ID's path.
fn entry_resource(id: &SpiffeId) -> Result<Resource, tonic::Status> {
    let segments: Vec<&str> = id.segments().collect();
    if segments.is_empty() {
        return Err(invalid("an entry's SPIFFE ID needs a path"));
    }
    Resource::from_segments(&segments).map_err(invalid)
}

/// The wire form of `e`, with its creation revision read from `reader`.
pub(crate) fn entry_to_pb(
    reader: &crate::StateReader,
    e: &RegistrationEntry,
) -> Result<pb::RegistrationEntry, tonic::Status> {
    Ok(pb::RegistrationEntry {
        created_revision: reader.entry_created(e).map_err(status_of)?,
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.clone(),
        parent: e.parent.clone(),
        selectors: e.selectors.clone(),
        ttl_seconds: e.ttl_s,
        dns_names: e.dns_names.clone(),
        revision: e.revision,
    })
}

fn status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Active => "active",
        NodeStatus::Evicted => "evicted",
        NodeStatus::Banned => "banned",
    }
}

fn outcome_status(outcome: Outcome) -> Result<Outcome, tonic::Status> {
    match outcome {
        Outcome::Rejected(crate::command::Rejection::NotFound) => {
            Err(tonic::Status::not_found("no such entry or node"))
        }
        Outcome::Rejected(why) => Err(tonic::Status::failed_precondition(why.to_string())),
        other => Ok(other),
    }
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
    async fn gate_agent<T>(
        &self,
        req: &tonic::Request<T>,
    ) -> Result<(NodeName, Allowed), tonic::Status> {
        let name = self.calling_node(req)?;
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
                rights: vec![Right::new(Operation::SvidMint, node_resource(name)?)],
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
            return Err(tonic::Status::internal("a minted token has no block"));
        };
        audit.operation = Operation::TokenMint.as_str().into();
        audit
            .details
            .retain(|(k, _)| k == "rights" || k == "node" || k == "spiffe_id");
        audit
            .details
            .push(("minted_token".into(), token_ids.join(",")));
        let cmd = crate::command::Command {
            id: crate::command::CommandId::random(),
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
        match self.propose(cmd).await?.outcome {
            Outcome::Rejected(why) => {
                Err(tonic::Status::permission_denied(format!("refused: {why}")))
            }
            _ => Ok(()),
        }
    }

    pub(crate) async fn list_nodes_impl(
        &self,
        req: tonic::Request<pb::ListNodesRequest>,
    ) -> Result<tonic::Response<pb::ListNodesReply>, tonic::Status> {
        let nodes = self
            .read_gated(&req, Operation::NodeRead, &super::res("node")?)
            .await?
            .nodes()
            .map_err(status_of)?;
        Ok(tonic::Response::new(pb::ListNodesReply {
            nodes: nodes
                .into_iter()
                .map(|n| pb::NodeInfo {
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
            let issued = self.keys.ca.issue(&LeafRequest {
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
        // did not commit is withheld.
        let mut pending = tokio::task::JoinSet::new();
        for (slot, audit, op) in records {
            let cmd = crate::command::Command {
                audit,
                ..allowed.command(op)
            };
            let proposer = self.proposer.clone();
            pending.spawn(async move { (slot, proposer.propose(cmd).await) });
        }
        while let Some(done) = pending.join_next().await {
            match done {
                Ok((_, Ok(r))) if !matches!(r.outcome, Outcome::Rejected(_)) => {}
                Ok((Some(slot), Ok(r))) => {
                    if let (Some(s), Outcome::Rejected(why)) = (out.get_mut(slot), r.outcome) {
                        s.svid_chain.clear();
                        s.error = format!("refused: {why}");
                    }
                }
                Ok((None, Ok(_))) => {}
                Ok((Some(slot), Err(e))) => {
                    if let Some(s) = out.get_mut(slot) {
                        s.svid_chain.clear();
                        s.error = format!("audit record not committed: {e}");
                    }
                }
                Ok((None, Err(e))) => {
                    tracing::warn!(error = %e, "could not record a refused SVID request");
                }
                Err(e) => return Err(tonic::Status::internal(format!("audit task: {e}"))),
            }
        }
        Ok(tonic::Response::new(pb::MintSvidsReply { svids: out }))
    }

    pub(crate) async fn sync_entries_impl(
        &self,
        req: tonic::Request<pb::SyncEntriesRequest>,
    ) -> Result<tonic::Response<SyncStream>, tonic::Status> {
        self.require_leader()?;
        let (name, allowed) = self.gate_agent(&req).await?;
        self.gate.record(&allowed).await?;
        let since = req.get_ref().since_revision;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let feed = Feed {
            stopping: self.stopping.clone(),
            sm: self.sm.clone(),
            service_bundle: self.bundle_source(),
            name,
        };
        tokio::spawn(feed.run(since, tx));
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// Validates an entry request into the entry to store, checking rights on its identity.
    async fn put_entry(
        &self,
        req: tonic::Request<pb::PutEntryRequest>,
        update: bool,
    ) -> Result<tonic::Response<pb::EntryReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref();
        let id = SpiffeId::parse(&r.spiffe_id).map_err(|e| invalid(format!("spiffe id: {e}")))?;
        if !id.is_member_of(self.gate.trust_domain()) {
            return Err(invalid(format!(
                "{id} is not in trust domain {}",
                self.gate.trust_domain()
            )));
        }
        let resource = entry_resource(&id)?;
        let parent = NodeName::parse(&r.parent).map_err(|e| invalid(format!("node: {e}")))?;
        let mut selectors = Vec::with_capacity(r.selectors.len());
        for s in &r.selectors {
            selectors
                .push(Selector::parse(s).map_err(|e| invalid(format!("selector {s:?}: {e}")))?);
        }
        if selectors.is_empty() {
            return Err(invalid("an entry needs at least one selector"));
        }
        if is_weak(&selectors) && !r.allow_weak_selectors {
            return Err(invalid(
                "the entry selects only on unix:path / unix:sha256, which any user able to run \
                 that binary matches; add a unix:uid, unix:gid, unix:user or unix:group \
                 selector, or pass --allow-weak-selectors",
            ));
        }
        let ttl = if r.ttl_seconds == 0 {
            DEFAULT_ENTRY_TTL
        } else {
            Duration::from_secs(u64::from(r.ttl_seconds))
        };
        if ttl < MIN_ENTRY_TTL || ttl > MAX_ENTRY_TTL {
            return Err(invalid(format!(
                "ttl must be between {}s and {}s",
                MIN_ENTRY_TTL.as_secs(),
                MAX_ENTRY_TTL.as_secs()
            )));
        }
        let entry_id = if update {
            if r.id.is_empty() {
                return Err(invalid("an entry id is required"));
            }
            r.id.clone()
        } else {
            hex::encode(crate::command::CommandId::random().0)
        };
        let allowed = self
            .gate
            .check(&req, Operation::EntryWrite, &resource, None)
            .await?;
        if id.is_reserved() {
            // Refused whatever the caller's rights (`RegistrationEntry::validate` refuses it
            // too), and recorded: a caller allowed to write entries asking for a principal's
            // identity is the attack the reservation exists for.
            let mut audit = allowed.audit.clone();
            audit.decision = AuditDecision::Deny;
            audit.reason = Some(format!(
                "reserved_id: {id} is reserved for principals the authority enrolls itself"
            ));
            self.gate.record_denial(audit).await;
            return Err(invalid(format!(
                "spiffe id {id}: the paths ringzero/… and user/… are reserved for principals \
                 the authority enrolls itself"
            )));
        }
        self.check_selectable(&req, &selectors, &parent).await?;
        for name in &r.dns_names {
            let dns = ringzero_policy::rights::dns_resource(name)
                .map_err(|e| invalid(format!("dns name {name:?}: {e}")))?;
            self.gate
                .check(&req, Operation::EntryDns, &dns, None)
                .await?;
        }
        if update {
            // Changing an entry needs the right on what it was, too.
            let existing = self
                .sm
                .reader()
                .map_err(status_of)?
                .entry(&entry_id)
                .map_err(status_of)?
                .ok_or_else(|| tonic::Status::not_found(format!("no entry {entry_id}")))?;
            let old = SpiffeId::parse(&existing.spiffe_id).map_err(status_of)?;
            if old != id {
                self.gate
                    .check(&req, Operation::EntryWrite, &entry_resource(&old)?, None)
                    .await?;
            }
        }
        let r = req.into_inner();
        let entry = RegistrationEntry {
            id: entry_id,
            spiffe_id: id.to_string(),
            parent: parent.to_string(),
            selectors: selectors.iter().map(ToString::to_string).collect(),
            ttl_s: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
            dns_names: r.dns_names,
            revision: 0,
        };
        entry
            .validate()
            .map_err(|e| invalid(format!("entry: {e}")))?;
        let mut cmd = allowed.command(Op::PutEntry {
            entry: entry.clone(),
        });
        cmd.audit.details.extend([
            ("entry_id".into(), entry.id.clone()),
            ("node".into(), entry.parent.clone()),
            ("selectors".into(), entry.selectors.join(" ")),
        ]);
        let resp = self.propose(cmd).await?;
        let revision = match outcome_status(resp.outcome)? {
            Outcome::Revision(r) => r,
            _ => 0,
        };
        let reader = self.sm.reader().map_err(status_of)?;
        Ok(tonic::Response::new(pb::EntryReply {
            entry: Some(entry_to_pb(
                &reader,
                &RegistrationEntry { revision, ..entry },
            )?),
        }))
    }

    /// Which processes an entry may select is a right of its own (`entry:select`), granted by
    /// an admin: a namespace that may write entries may still only select the users and groups
    /// it was given. The entry matches only processes that carry *every* selector, so one
    /// covered principal selector bounds it; an entry without any (path or hash only) selects
    /// every user's processes and needs `selector/unix/any/node/<node>`.
    async fn check_selectable<T>(
        &self,
        req: &tonic::Request<T>,
        selectors: &[Selector],
        parent: &NodeName,
    ) -> Result<(), tonic::Status> {
        let mut candidates = Vec::new();
        for sel in selectors {
            if let Some(r) = ringzero_policy::rights::selector_resource(sel, parent) {
                candidates.push(r.map_err(|e| invalid(format!("selector {sel}: {e}")))?);
            }
        }
        if candidates.is_empty() {
            candidates
                .push(ringzero_policy::rights::any_principal_resource(parent).map_err(invalid)?);
        }
        let Some(peer) = ringzero_proto::transport::peer(req).spiffe_id else {
            return Err(tonic::Status::unauthenticated(
                "an mTLS client SVID is required",
            ));
        };
        if candidates
            .iter()
            .any(|r| self.gate.also_allows(req, &peer, Operation::EntrySelect, r))
        {
            return Ok(());
        }
        // None is covered: decide (and audit) the denial on the first one.
        self.gate
            .check(req, Operation::EntrySelect, &candidates[0], None)
            .await
            .map(|_| ())
    }

    pub(crate) async fn create_entry_impl(
        &self,
        req: tonic::Request<pb::PutEntryRequest>,
    ) -> Result<tonic::Response<pb::EntryReply>, tonic::Status> {
        if !req.get_ref().id.is_empty() {
            return Err(invalid("the authority assigns entry ids; leave id empty"));
        }
        self.put_entry(req, false).await
    }

    pub(crate) async fn update_entry_impl(
        &self,
        req: tonic::Request<pb::PutEntryRequest>,
    ) -> Result<tonic::Response<pb::EntryReply>, tonic::Status> {
        self.put_entry(req, true).await
    }

    fn existing_entry(&self, id: &str) -> Result<RegistrationEntry, tonic::Status> {
        if id.is_empty() || id.len() > 64 {
            return Err(invalid("bad entry id"));
        }
        self.sm
            .reader()
            .map_err(status_of)?
            .entry(id)
            .map_err(status_of)?
            .ok_or_else(|| tonic::Status::not_found(format!("no entry {id}")))
    }

    pub(crate) async fn delete_entry_impl(
        &self,
        req: tonic::Request<pb::DeleteEntryRequest>,
    ) -> Result<tonic::Response<pb::DeleteEntryReply>, tonic::Status> {
        self.require_leader()?;
        let entry = self.existing_entry(&req.get_ref().id)?;
        let id = SpiffeId::parse(&entry.spiffe_id).map_err(status_of)?;
        let allowed = self
            .gate
            .check(&req, Operation::EntryWrite, &entry_resource(&id)?, None)
            .await?;
        let mut cmd = allowed.command(Op::DeleteEntry {
            id: entry.id.clone(),
        });
        cmd.audit.details.push(("entry_id".into(), entry.id));
        let resp = self.propose(cmd).await?;
        outcome_status(resp.outcome)?;
        Ok(tonic::Response::new(pb::DeleteEntryReply {}))
    }

    pub(crate) async fn get_entry_impl(
        &self,
        req: tonic::Request<pb::GetEntryRequest>,
    ) -> Result<tonic::Response<pb::EntryReply>, tonic::Status> {
        self.require_leader()?;
        let entry = self.existing_entry(&req.get_ref().id)?;
        let id = SpiffeId::parse(&entry.spiffe_id).map_err(status_of)?;
        let allowed = self
            .gate
            .check(&req, Operation::EntryRead, &entry_resource(&id)?, None)
            .await?;
        self.gate.record(&allowed).await?;
        let reader = self.sm.reader().map_err(status_of)?;
        Ok(tonic::Response::new(pb::EntryReply {
            entry: Some(entry_to_pb(&reader, &entry)?),
        }))
    }

    /// Lists entries the caller may read, in id order, a page at a time. The capability is
    /// checked on the filter's scope: with a SPIFFE ID filter, that identity; otherwise the
    /// whole entry space, or — for callers confined to a namespace — entries the caller's
    /// rights cover are returned and others skipped.
    pub(crate) async fn list_entries_impl(
        &self,
        req: tonic::Request<pb::ListEntriesRequest>,
    ) -> Result<tonic::Response<pb::ListEntriesReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref();
        let scope = if r.spiffe_id.is_empty() {
            Resource::root()
        } else {
            let id = SpiffeId::parse(&r.spiffe_id).map_err(invalid)?;
            entry_resource(&id)?
        };
        let parent = if r.parent.is_empty() {
            None
        } else {
            Some(NodeName::parse(&r.parent).map_err(invalid)?)
        };
        let page = (r.page_size as usize).clamp(1, MAX_PAGE);
        let after = r.page_token.clone();
        let spiffe_filter = r.spiffe_id.clone();
        let allowed = self
            .gate
            .check(&req, Operation::EntryRead, &scope, None)
            .await?;
        self.gate.record(&allowed).await?;
        let reader = self.sm.reader().map_err(status_of)?;
        let (entries, next) = reader
            .entries_page(parent.as_ref().map(|p| p.as_str()), &after, page, |e| {
                spiffe_filter.is_empty() || e.spiffe_id == spiffe_filter
            })
            .map_err(status_of)?;
        Ok(tonic::Response::new(pb::ListEntriesReply {
            entries: entries
                .iter()
                .map(|e| entry_to_pb(&reader, e))
                .collect::<Result<_, _>>()?,
            next_page_token: next.unwrap_or_default(),
        }))
    }
}

/// One agent's entry feed.
struct Feed {
    stopping: tokio::sync::watch::Receiver<bool>,
    sm: crate::store::StateMachineStore,
    service_bundle: super::BundleSource,
    name: NodeName,
}

/// Revoked capability ids and revoked serials, each with its expiry (unix ms).
type RevokedSets = (Vec<(Vec<u8>, u64)>, Vec<(Vec<u8>, u64)>);

type FeedTx = tokio::sync::mpsc::Sender<Result<pb::SyncEntriesEvent, tonic::Status>>;

impl Feed {
    async fn run(self, since: u64, tx: FeedTx) {
        if let Err(status) = self.feed(since, &tx).await {
            let _ = tx.send(Err(status)).await;
        }
    }

    async fn feed(&self, since: u64, tx: &FeedTx) -> Result<(), tonic::Status> {
        let mut applied = self.sm.watch_applied();
        let mut stopping = self.stopping.clone();
        let mut revision = since;
        let mut last_bundle: Option<Vec<u8>> = None;
        let mut last_revocations: Option<RevokedSets> = None;
        let mut first = true;
        loop {
            // Mark the current applied state seen before reading, so a change applied while
            // this pass reads wakes the next one.
            applied.borrow_and_update();
            let status = self
                .sm
                .reader()
                .map_err(status_of)?
                .node(self.name.as_str())
                .map_err(status_of)?;
            match status {
                Some(r) if r.status == NodeStatus::Active => {}
                Some(r) => {
                    return Err(tonic::Status::permission_denied(format!(
                        "node {} was {}",
                        self.name,
                        if r.status == NodeStatus::Banned {
                            "banned"
                        } else {
                            "evicted"
                        }
                    )));
                }
                None => {
                    return Err(tonic::Status::permission_denied(format!(
                        "node {} is not enrolled",
                        self.name
                    )));
                }
            }
            let bundle = (self.service_bundle)()?;
            let encoded = prost::Message::encode_to_vec(&bundle);
            let bundle_changed = last_bundle.as_deref() != Some(encoded.as_slice());
            let revocations = self
                .sm
                .reader()
                .map_err(status_of)?
                .revocations()
                .map_err(status_of)?;
            let serials = self
                .sm
                .reader()
                .map_err(status_of)?
                .revoked_serials()
                .map_err(status_of)?;
            let revocations = (revocations, serials);
            let revocations_changed = last_revocations.as_ref() != Some(&revocations);
            let mut sent_any = false;
            loop {
                let (upserts, removed, next) = self.changes(revision, first)?;
                let more = next.1;
                let send_bundle = bundle_changed && !sent_any;
                let send_revocations = revocations_changed && !sent_any;
                if upserts.is_empty()
                    && removed.is_empty()
                    && !first
                    && !send_bundle
                    && !send_revocations
                {
                    break;
                }
                let event = pb::SyncEntriesEvent {
                    upserts,
                    removed,
                    revision: next.0,
                    bundle: send_bundle.then(|| bundle.clone()),
                    revocations: send_revocations.then(|| pb::RevocationSet {
                        revocations: revocations
                            .0
                            .iter()
                            .map(|(id, expires_ms)| pb::Revocation {
                                id: id.clone(),
                                expires_ms: *expires_ms,
                            })
                            .collect(),
                        serials: revocations
                            .1
                            .iter()
                            .map(|(serial, not_after_ms)| pb::RevokedSerial {
                                serial: serial.clone(),
                                not_after_ms: *not_after_ms,
                            })
                            .collect(),
                    }),
                    synced: first && !more,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
                revision = next.0;
                sent_any = true;
                if !more {
                    first = false;
                    break;
                }
            }
            if bundle_changed {
                last_bundle = Some(encoded);
            }
            if revocations_changed {
                last_revocations = Some(revocations);
            }
            let idle = tokio::select! {
                changed = applied.changed() => {
                    if changed.is_err() {
                        return Err(tonic::Status::unavailable("the authority is shutting down"));
                    }
                    false
                }
                _ = tx.closed() => return Ok(()),
                _ = stopping.wait_for(|s| *s) => {
                    return Err(tonic::Status::unavailable("the authority is shutting down"));
                }
                () = tokio::time::sleep(FEED_HEARTBEAT) => true,
            };
            if idle {
                // Nothing changed: say so, so the agent knows its revocations are current.
                let beat = pb::SyncEntriesEvent {
                    revision,
                    ..Default::default()
                };
                if tx.send(Ok(beat)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// The entries changed after `revision` (all current ones when `full`), as upserts and
    /// removals, with the revision they bring the agent to and whether more remain.
    #[allow(clippy::type_complexity)]
    fn changes(
        &self,
        revision: u64,
        full: bool,
    ) -> Result<(Vec<pb::RegistrationEntry>, Vec<String>, (u64, bool)), tonic::Status> {
        let reader = self.sm.reader().map_err(status_of)?;
        if full && revision == 0 {
            let entries = reader.entries_of(self.name.as_str()).map_err(status_of)?;
            let top = reader.entry_revision().map_err(status_of)?;
            return Ok((
                entries
                    .iter()
                    .map(|e| entry_to_pb(&reader, e))
                    .collect::<Result<_, _>>()?,
                Vec::new(),
                (top, false),
            ));
        }
        let changes = reader
            .entry_changes_since(self.name.as_str(), revision, SYNC_CHUNK)
            .map_err(status_of)?;
        let more = changes.len() >= SYNC_CHUNK;
        let mut latest: BTreeMap<String, bool> = BTreeMap::new();
        let mut to = revision;
        for c in &changes {
            latest.insert(c.entry_id.clone(), c.removed);
            to = to.max(c.revision);
        }
        let mut upserts = Vec::new();
        let mut removed = Vec::new();
        for (id, gone) in latest {
            let current = if gone {
                None
            } else {
                reader.entry(&id).map_err(status_of)?
            };
            match current {
                Some(e) if e.parent == self.name.as_str() => {
                    upserts.push(entry_to_pb(&reader, &e)?)
                }
                _ => removed.push(id),
            }
        }
        Ok((upserts, removed, (to, more)))
    }
}
