//! The `Authority` gRPC service.
//!
//! Privileged calls are never proxied: on a follower they fail with `Unavailable` and the
//! leader's address in the `ringzero-leader` metadata, and the client retries there. Gating, the
//! revocation check and the audit record all happen on the leader.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ringzero_policy::join::{JoinToken, sha256};
use ringzero_policy::svid::{LeafKey, LeafRequest, MAX_DER_LEN};
use ringzero_policy::{NodeName, Operation, Resource};
use ringzero_proto::pb;
use tokio::sync::Mutex;

use crate::command::{
    AuditDecision, AuditRecord, Command, CommandId, JoinPurpose, KeyKind, KeyStatus, Op, Outcome,
};
use crate::gate::{Gate, now_ms};
use crate::keys::NodeKeys;
use crate::net::{Contacts, authority_id};
use crate::store::StateMachineStore;
use crate::{NodeId, Proposer, Raft};

mod agents;
mod audit;
mod tokens;
mod users;
pub use agents::{
    AGENT_SVID_TTL, DEFAULT_ENTRY_TTL, FEED_HEARTBEAT, MAX_ENTRY_TTL, MAX_MINT_BATCH, MAX_PAGE,
    MIN_ENTRY_TTL,
};
pub use users::{DEFAULT_INVITE_TTL, DEFAULT_USER_TTL, MAX_USER_TTL};

/// The node SVID lifetime for authority nodes joining the cluster.
pub const AUTHORITY_SVID_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most join tokens one call may ask to live.
pub const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The metadata key carrying the leader's address on `Unavailable`.
pub const LEADER_HINT: &str = "ringzero-leader";

/// The Authority service of one node.
pub struct AuthorityService {
    raft: Raft,
    proposer: Proposer,
    sm: StateMachineStore,
    gate: Arc<Gate>,
    keys: Arc<NodeKeys>,
    contacts: Contacts,
    /// Membership changes and join-token id allocation are serialized here.
    membership: Mutex<()>,
    /// First-contact calls (token redemption) are rate limited.
    first_contact: crate::first_contact::PerSourceLimiter,
    /// Becomes true when the node shuts down: long-lived streams end then, so a graceful
    /// shutdown does not wait on them.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for AuthorityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityService").finish_non_exhaustive()
    }
}

fn status_of(e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::internal(e.to_string())
}

impl AuthorityService {
    pub fn new(
        proposer: Proposer,
        sm: StateMachineStore,
        gate: Arc<Gate>,
        keys: Arc<NodeKeys>,
        contacts: Contacts,
    ) -> Self {
        Self {
            raft: proposer.raft().clone(),
            proposer,
            sm,
            gate,
            keys,
            contacts,
            membership: Mutex::new(()),
            first_contact: Default::default(),
            stopping: tokio::sync::watch::channel(false).1,
        }
    }

    /// Ends the service's long-lived streams when `stopping` becomes true.
    pub fn with_shutdown(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// Refuses unless this node leads, naming the leader it knows.
    fn require_leader(&self) -> Result<(), tonic::Status> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(m.id) {
            return Ok(());
        }
        let mut status = tonic::Status::unavailable("not the leader; retry at the leader");
        if let Some(addr) = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
        }) && let Ok(v) = addr.parse()
        {
            status.metadata_mut().insert(LEADER_HINT, v);
        }
        Err(status)
    }

    /// Admits one first-contact attempt from `peer`'s address (its own token bucket).
    pub(crate) fn first_contact_allowed(
        &self,
        peer: &ringzero_proto::transport::PeerInfo,
    ) -> Result<(), tonic::Status> {
        if self.first_contact.allow(peer.addr) {
            Ok(())
        } else {
            Err(tonic::Status::resource_exhausted(
                "too many attempts from this address; retry shortly",
            ))
        }
    }

    /// Records a refused first-contact attempt through the gate's denial windows (one record
    /// per distinct cause and window, with a count), never a Raft write per attempt.
    pub(crate) async fn first_contact_refused(
        &self,
        peer: &ringzero_proto::transport::PeerInfo,
        operation: &str,
        resource: String,
        token_id: &[u8; 16],
        why: &crate::command::Rejection,
    ) {
        let record = AuditRecord {
            actor: "anonymous".into(),
            revocation_ids: vec![],
            operation: operation.into(),
            resource,
            decision: AuditDecision::Deny,
            reason: Some(format!("first_contact: {why}")),
            authority: self.gate.node_id(),
            request_id: hex::encode(token_id),
            details: vec![(
                "source".into(),
                peer.addr.map(|a| a.ip().to_string()).unwrap_or_default(),
            )],
        };
        self.gate.record_denial(record).await;
    }

    async fn propose(&self, cmd: Command) -> Result<crate::command::Response, tonic::Status> {
        self.proposer
            .propose(cmd)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("not committed: {e}")))
    }

    /// The bundle as the API presents it.
    pub fn bundle(&self) -> Result<pb::Bundle, tonic::Status> {
        Ok(pb::Bundle {
            trust_domain: self.gate.trust_domain().to_string(),
            keys: bundle_keys(&self.sm)?,
            members: self.members()?,
        })
    }

    /// A source of the bundle for long-lived streams: keys and member addresses only (no
    /// contact times), so it changes only when the trust or the membership does.
    fn bundle_source(&self) -> BundleSource {
        let (raft, sm, td) = (
            self.raft.clone(),
            self.sm.clone(),
            self.gate.trust_domain().to_string(),
        );
        std::sync::Arc::new(move || {
            let m = raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let voters: Vec<NodeId> = membership.voter_ids().collect();
            Ok(pb::Bundle {
                trust_domain: td.clone(),
                keys: bundle_keys(&sm)?,
                members: membership
                    .nodes()
                    .map(|(id, node)| pb::Member {
                        node_id: *id,
                        name: id.to_string(),
                        address: node.addr.clone(),
                        role: if voters.contains(id) {
                            "voter"
                        } else {
                            "learner"
                        }
                        .into(),
                        ..Default::default()
                    })
                    .collect(),
            })
        })
    }

    fn members(&self) -> Result<Vec<pb::Member>, tonic::Status> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let replication = m.replication.clone().unwrap_or_default();
        let is_leader = m.current_leader == Some(m.id);
        Ok(membership
            .nodes()
            .map(|(id, node)| pb::Member {
                node_id: *id,
                name: id.to_string(),
                address: node.addr.clone(),
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
                state: if m.current_leader == Some(*id) {
                    "leader"
                } else {
                    "follower"
                }
                .into(),
                last_contact_ms: if *id == m.id {
                    Some(0)
                } else if is_leader {
                    self.contacts.since(*id).map(|d| d.as_millis() as u64)
                } else {
                    None
                },
                matched_index: replication.get(id).and_then(|l| l.map(|l| l.index)),
            })
            .collect())
    }

    /// The next node id for an authority join token: above every member, authority record and
    /// outstanding authority token.
    fn next_node_id(&self) -> Result<NodeId, tonic::Status> {
        let r = self.sm.reader().map_err(status_of)?;
        let m = self.raft.metrics().borrow().clone();
        let mut max = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .max()
            .unwrap_or(0);
        for a in r.authorities().map_err(status_of)? {
            max = max.max(a.node_id);
        }
        // Removed nodes keep their (retired) keys, so their ids are never handed out again.
        for k in r.keys().map_err(status_of)? {
            max = max.max(k.authority);
        }
        for t in r.join_tokens().map_err(status_of)? {
            if t.purpose == JoinPurpose::Authority
                && let Ok(n) = t.node_name.parse::<NodeId>()
            {
                max = max.max(n);
            }
        }
        Ok(max + 1)
    }

    fn pin(&self) -> Result<[u8; 32], tonic::Status> {
        ringzero_policy::join::ca_pin(self.keys.ca.cert_der())
            .ok_or_else(|| tonic::Status::internal("own CA does not parse"))
    }
}

pub(crate) fn key_kind_name(k: KeyKind) -> &'static str {
    match k {
        KeyKind::X509Ca => "x509-ca",
        KeyKind::Biscuit => "biscuit",
        KeyKind::Jwt => "jwt",
        KeyKind::Audit => "audit",
    }
}

pub(crate) fn key_status_name(s: KeyStatus) -> &'static str {
    match s {
        KeyStatus::Published => "published",
        KeyStatus::Active => "active",
        KeyStatus::Retired => "retired",
        KeyStatus::Compromised => "compromised",
    }
}

fn parse_kind(s: &str) -> Option<KeyKind> {
    Some(match s {
        "x509-ca" => KeyKind::X509Ca,
        "biscuit" => KeyKind::Biscuit,
        "jwt" => KeyKind::Jwt,
        "audit" => KeyKind::Audit,
        _ => return None,
    })
}

impl AuthorityService {
    /// A gated, audited read on the leader: the caller's capability must allow `operation` on
    /// `resource`, and the read's audit record is committed before the state is read.
    pub(crate) async fn read_gated<T>(
        &self,
        req: &tonic::Request<T>,
        operation: Operation,
        resource: &Resource,
    ) -> Result<crate::StateReader, tonic::Status> {
        self.require_leader()?;
        let allowed = self.gate.check(req, operation, resource, None).await?;
        self.gate.record(&allowed).await?;
        self.sm.reader().map_err(status_of)
    }

    /// The Biscuit key this node mints with, under the id Raft gave it. A node that joined
    /// learns that id only after its key was published, so the id is looked up in the bundle
    /// when the key was loaded without one.
    pub(crate) fn minting_key(&self) -> Result<ringzero_policy::token::RootKey, tonic::Status> {
        minting_key(&self.keys, &self.sm)
    }
}

/// See [`AuthorityService::minting_key`].
pub(crate) fn minting_key(
    keys: &NodeKeys,
    sm: &StateMachineStore,
) -> Result<ringzero_policy::token::RootKey, tonic::Status> {
    let loaded = keys.biscuit.id().0;
    let id = if loaded != 0 {
        loaded
    } else {
        let own = keys.biscuit.public().key.to_bytes().to_vec();
        sm.reader()
            .map_err(status_of)?
            .keys()
            .map_err(status_of)?
            .iter()
            .find(|k| k.kind == KeyKind::Biscuit && k.public_der == own)
            .and_then(|k| u32::try_from(k.id).ok())
            .ok_or_else(|| {
                tonic::Status::unavailable("this node's Biscuit key is not published yet")
            })?
    };
    ringzero_policy::token::RootKey::from_private_text(
        ringzero_policy::token::RootKeyId(id),
        &keys.biscuit.private_text(),
    )
    .map_err(status_of)
}

/// Builds the bundle on demand (see [`AuthorityService::bundle_source`]).
pub(crate) type BundleSource =
    std::sync::Arc<dyn Fn() -> Result<pb::Bundle, tonic::Status> + Send + Sync>;

/// The bundle's keys, every one with its status. A compromised key is published *as
/// compromised*, never left out: a client only updates the keys it is sent, so an absent key
/// would stay trusted wherever it was pinned. Every consumer excludes compromised keys from
/// what it trusts (`ringzero_proto::client::bundle_cas`, `Profile::apply_bundle`).
/// The trust bundle as verifiers receive it. Compromised keys are sent marked as such (so
/// every verifier drops them, never merely forgets them). The CA of a member removed without
/// `--compromised` is sent as retired until everything it was recorded issuing has expired,
/// and then no more: verifiers outside the authority stop trusting it then.
fn bundle_keys(sm: &StateMachineStore) -> Result<Vec<pb::BundleKey>, tonic::Status> {
    let reader = sm.reader().map_err(status_of)?;
    let keys = reader.keys().map_err(status_of)?;
    let now = now_ms();
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        if k.kind == KeyKind::X509Ca && k.status == KeyStatus::Retired {
            let until = match reader.issued_until(k.authority).map_err(status_of)? {
                // Nothing recorded (a cluster older than the record): the longest lifetime an
                // SVID can have, from the removal.
                0 => reader
                    .key_retired_ms(k.id)
                    .map_err(status_of)?
                    .unwrap_or(k.published_ms)
                    .saturating_add(
                        u64::try_from(crate::service::agents::MAX_ENTRY_TTL.as_millis())
                            .unwrap_or(u64::MAX),
                    ),
                t => t,
            };
            if until <= now {
                continue;
            }
        }
        out.push(k);
    }
    let mut wire = Vec::with_capacity(out.len());
    for k in out {
        let not_after_ms = wire_not_after(&reader, &k).map_err(status_of)?;
        wire.push(pb::BundleKey {
            key_id: k.id,
            authority: k.authority,
            kind: key_kind_name(k.kind).into(),
            public_key: k.public_der,
            status: key_status_name(k.status).into(),
            not_after_ms,
        });
    }
    Ok(wire)
}

/// The end of a key's validity as verifiers are told it. A retired signing key (Biscuit, JWT,
/// audit) is good only for what it signed before its retirement, and verifiers read that end
/// from `not_after_ms` (a retired audit pin verifies heads dated before it): so it is the
/// retirement time, not the end the key was published with — else a removed member's stolen
/// audit key would sign tree heads that verify for the rest of its planned life. A CA's
/// validity is its certificate's own; it is sent as published.
pub(crate) fn wire_not_after(
    reader: &crate::StateReader,
    k: &crate::KeyRecord,
) -> Result<u64, crate::StateError> {
    if k.status != KeyStatus::Retired || k.kind == KeyKind::X509Ca {
        return Ok(k.not_after_ms);
    }
    Ok(match reader.key_retired_ms(k.id)? {
        Some(retired) if k.not_after_ms == 0 => retired,
        Some(retired) => retired.min(k.not_after_ms),
        None => k.not_after_ms,
    })
}

fn res(s: &str) -> Result<Resource, tonic::Status> {
    Resource::parse(s).map_err(|e| tonic::Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl pb::authority_server::Authority for AuthorityService {
    async fn get_bundle(
        &self,
        _req: tonic::Request<pb::GetBundleRequest>,
    ) -> Result<tonic::Response<pb::Bundle>, tonic::Status> {
        Ok(tonic::Response::new(self.bundle()?))
    }

    async fn redeem_join_token(
        &self,
        req: tonic::Request<pb::RedeemJoinTokenRequest>,
    ) -> Result<tonic::Response<pb::RedeemJoinTokenReply>, tonic::Status> {
        let peer = ringzero_proto::transport::peer(&req);
        self.first_contact_allowed(&peer)?;
        self.require_leader()?;
        let r = req.into_inner();
        if r.csr.len() > MAX_DER_LEN {
            return Err(tonic::Status::invalid_argument("CSR too large"));
        }
        let token_id: [u8; 16] = hex::decode(&r.token_id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| tonic::Status::invalid_argument("bad token id"))?;
        if r.secret.len() != 32 {
            return Err(tonic::Status::invalid_argument("bad secret"));
        }
        let presented = sha256(&r.secret);
        let record = self
            .sm
            .reader()
            .map_err(status_of)?
            .join_token(&token_id)
            .map_err(status_of)?;
        // Refused from the leader's state before anything is signed or proposed; apply's
        // compare-and-set still decides between racing valid redemptions.
        if let Err(why) = crate::first_contact::precheck(
            record.as_ref(),
            &presented,
            Some(r.node_name.as_str()),
            &[
                JoinPurpose::Agent,
                JoinPurpose::Authority,
                JoinPurpose::User,
            ],
            now_ms(),
        ) {
            let resource = match &record {
                Some(t) if t.purpose == JoinPurpose::Authority => {
                    format!("authority/{}", t.node_name)
                }
                Some(t) => format!("node/{}", t.node_name),
                None => "join-token".into(),
            };
            self.first_contact_refused(&peer, "node:enroll", resource, &token_id, &why)
                .await;
            return Err(tonic::Status::permission_denied(format!(
                "join refused: {}",
                crate::first_contact::public_reason(&why)
            )));
        }
        let Some((node_name, purpose)) = record.as_ref().map(|t| (t.node_name.clone(), t.purpose))
        else {
            return Err(tonic::Status::internal("a checked token has no record"));
        };
        if purpose == JoinPurpose::User {
            // A user invite is redeemed only by `Login`, which issues a user SVID.
            return Err(tonic::Status::permission_denied(
                "join refused: this is a user invite (use `ringzero login --invite`)",
            ));
        }
        let td = self.gate.trust_domain().clone();
        let id = match purpose {
            // Not `ringzero/authority/<id>`: a member's SVID must come from its own CA, which a
            // joiner does not have yet. This one only lets it ask to join (`JoinCluster`).
            JoinPurpose::Authority => td.id_with_path(&["ringzero", "joining", &node_name]),
            JoinPurpose::Agent | JoinPurpose::User => {
                td.id_with_path(&["ringzero", "node", &node_name])
            }
        }
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let svid = self
            .keys
            .ca
            .issue(&LeafRequest {
                id: &id,
                key: LeafKey::Csr(&r.csr),
                ttl: match purpose {
                    JoinPurpose::Authority => AUTHORITY_SVID_TTL,
                    JoinPurpose::Agent | JoinPurpose::User => AGENT_SVID_TTL,
                },
                dns_names: &[],
                now: SystemTime::now(),
            })
            .map_err(|e| tonic::Status::invalid_argument(format!("CSR: {e}")))?;
        // An agent also receives its capability, bound to the new SVID; minted now so its
        // revocation ids go into the enrollment's audit record.
        let (agent_token, agent_token_ids) = match (purpose, NodeName::parse(&node_name)) {
            (JoinPurpose::Agent, Ok(name)) if record.is_some() => {
                self.agent_token(&id, &name, AGENT_SVID_TTL)?
            }
            _ => (String::new(), Vec::new()),
        };
        let not_after = svid
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // The record of exactly what will be released is committed with the redemption,
        // before the certificate leaves this node.
        let cmd = Command {
            id: CommandId::random(),
            time_ms: now_ms(),
            audit: AuditRecord {
                actor: peer
                    .spiffe_id
                    .map_or_else(|| format!("joiner:{}", id), |p| p.to_string()),
                revocation_ids: vec![],
                operation: "node:enroll".into(),
                resource: format!(
                    "{}/{node_name}",
                    if purpose == JoinPurpose::Authority {
                        "authority"
                    } else {
                        "node"
                    }
                ),
                decision: AuditDecision::Allow,
                reason: None,
                authority: self.gate.node_id(),
                request_id: hex::encode(token_id),
                details: vec![
                    ("svid_serial".into(), hex::encode(&svid.serial)),
                    ("spiffe_id".into(), id.to_string()),
                    (
                        "public_key_sha256".into(),
                        hex::encode(&svid.public_key_sha256),
                    ),
                    ("not_after".into(), not_after.to_string()),
                    ("minted_token".into(), agent_token_ids.join(",")),
                    (
                        "rights".into(),
                        if agent_token_ids.is_empty() {
                            String::new()
                        } else {
                            format!("svid:mint on node/{node_name}")
                        },
                    ),
                ],
            },
            op: Op::RedeemJoinToken {
                token_id,
                presented_sha256: presented,
                // A joiner that names itself must name the node the token was issued for; the
                // check is apply's, so a refusal is recorded like any other.
                node_name: if r.node_name.is_empty() {
                    node_name.clone()
                } else {
                    r.node_name.clone()
                },
            },
        };
        let enrollment_record = cmd.audit.clone();
        let resp = self.propose(cmd).await?;
        match resp.outcome {
            Outcome::Done => {}
            Outcome::Rejected(why) => {
                return Err(tonic::Status::permission_denied(format!(
                    "join refused: {why}"
                )));
            }
            other => {
                return Err(tonic::Status::internal(format!(
                    "unexpected outcome {other:?}"
                )));
            }
        }
        if purpose == JoinPurpose::Agent {
            // The node's first SVID joins the serials an eviction or ban revokes.
            let mut audit = enrollment_record;
            audit.operation = "svid:mint".into();
            audit.details.retain(|(k, _)| k != "minted_token");
            let record = Command {
                id: CommandId::random(),
                time_ms: now_ms(),
                audit,
                op: Op::IssueSvid {
                    node: node_name.clone(),
                    serial: svid.serial.clone(),
                    not_after_ms: not_after.saturating_mul(1000),
                },
            };
            let audit = record.audit.clone();
            if let Outcome::Rejected(why) = self.propose(record).await?.outcome {
                return Err(tonic::Status::permission_denied(format!(
                    "join refused: {why}"
                )));
            }
            let token_ids: Vec<String> = agent_token_ids.clone();
            self.record_agent_mint(audit, &id, &token_ids, AGENT_SVID_TTL)
                .await?;
        }
        let node_id = node_name.parse::<NodeId>().unwrap_or(0);
        Ok(tonic::Response::new(pb::RedeemJoinTokenReply {
            svid_chain: svid.chain.iter().map(|c| c.to_vec()).collect(),
            bundle: Some(self.bundle()?),
            node_id,
            token: agent_token,
        }))
    }

    async fn status(
        &self,
        req: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::StatusReply>, tonic::Status> {
        self.require_leader()?;
        let allowed = self
            .gate
            .check(&req, Operation::AuthorityRead, &res("authority")?, None)
            .await?;
        let writable = self.raft.ensure_linearizable().await.is_ok();
        self.gate.record(&allowed).await?;
        let m = self.raft.metrics().borrow().clone();
        let leader_address = m
            .current_leader
            .and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone())
            })
            .unwrap_or_default();
        Ok(tonic::Response::new(pb::StatusReply {
            node_id: m.id,
            leader_id: m.current_leader,
            leader_address,
            term: m.current_term,
            last_applied: m.last_applied.map_or(0, |l| l.index),
            writable,
        }))
    }

    async fn members(
        &self,
        req: tonic::Request<pb::MembersRequest>,
    ) -> Result<tonic::Response<pb::MembersReply>, tonic::Status> {
        self.require_leader()?;
        let allowed = self
            .gate
            .check(&req, Operation::AuthorityRead, &res("authority")?, None)
            .await?;
        self.gate.record(&allowed).await?;
        Ok(tonic::Response::new(pb::MembersReply {
            members: self.members()?,
        }))
    }

    async fn create_join_token(
        &self,
        req: tonic::Request<pb::CreateJoinTokenRequest>,
    ) -> Result<tonic::Response<pb::CreateJoinTokenReply>, tonic::Status> {
        self.require_leader()?;
        let (purpose, node_name, ttl) = {
            let r = req.get_ref();
            let ttl = Duration::from_secs(r.ttl_seconds.clamp(1, MAX_JOIN_TOKEN_TTL.as_secs()));
            match r.purpose.as_str() {
                "authority" => (JoinPurpose::Authority, None, ttl),
                "agent" => {
                    let name = NodeName::parse(&r.node_name)
                        .map_err(|e| tonic::Status::invalid_argument(format!("node name: {e}")))?;
                    (JoinPurpose::Agent, Some(name), ttl)
                }
                _ => {
                    return Err(tonic::Status::invalid_argument(
                        "purpose must be authority or agent",
                    ));
                }
            }
        };
        let allowed = match (&purpose, &node_name) {
            (JoinPurpose::Authority, _) => {
                self.gate
                    .check(&req, Operation::ClusterAdmin, &res("cluster")?, None)
                    .await?
            }
            (JoinPurpose::Agent, Some(n)) => {
                let r = Resource::from_segments(&["node", n.as_str()])
                    .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
                self.gate
                    .check(&req, Operation::NodeEnroll, &r, Some(n))
                    .await?
            }
            (JoinPurpose::Agent, None) => {
                return Err(tonic::Status::invalid_argument("node name required"));
            }
            (JoinPurpose::User, _) => {
                return Err(tonic::Status::invalid_argument(
                    "user invites come from InviteUser",
                ));
            }
        };
        // Allocating an authority node id must not race another allocation; agent tokens name
        // their node and need no lock.
        let _serial = match node_name {
            None => Some(self.membership.lock().await),
            Some(_) => None,
        };
        let name = match node_name {
            Some(n) => n.to_string(),
            None => self.next_node_id()?.to_string(),
        };
        let token = JoinToken::generate(self.pin()?).map_err(status_of)?;
        let expires_ms = now_ms().saturating_add(ttl.as_millis() as u64);
        let mut audit = allowed.audit.clone();
        audit
            .details
            .push(("token_id".into(), hex::encode(token.id)));
        audit.details.push(("node_name".into(), name.clone()));
        let cmd = Command {
            id: CommandId::random(),
            time_ms: now_ms(),
            audit,
            op: Op::IssueJoinToken {
                token_id: token.id,
                secret_sha256: token.secret_sha256(),
                node_name: name,
                purpose,
                expires_ms,
            },
        };
        let resp = self.propose(cmd).await?;
        if let Outcome::Rejected(why) = resp.outcome {
            return Err(tonic::Status::failed_precondition(format!(
                "refused: {why}"
            )));
        }
        Ok(tonic::Response::new(pb::CreateJoinTokenReply {
            token: token.to_text().to_string(),
            expires_unix: expires_ms / 1000,
        }))
    }

    async fn join_cluster(
        &self,
        req: tonic::Request<pb::JoinClusterRequest>,
    ) -> Result<tonic::Response<pb::JoinClusterReply>, tonic::Status> {
        self.require_leader()?;
        let td = self.gate.trust_domain().clone();
        let peer = ringzero_proto::transport::peer(&req);
        // The caller proves itself with the SVID it received for a redeemed authority token
        // (`ringzero/joining/<id>`), signed by the CA of a current member.
        let members: Vec<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        let node_id = peer
            .spiffe_id
            .as_ref()
            .filter(|id| id.is_member_of(&td))
            .and_then(|id| match id.segments().collect::<Vec<_>>().as_slice() {
                ["ringzero", "joining", n] => n.parse::<NodeId>().ok(),
                _ => None,
            })
            .filter(|_| peer.issuer_authority.is_some_and(|a| members.contains(&a)))
            .ok_or_else(|| {
                tonic::Status::permission_denied("join: caller is not an enrolled authority node")
            })?;
        let r = req.into_inner();
        let redeemed = self
            .sm
            .reader()
            .map_err(status_of)?
            .join_tokens()
            .map_err(status_of)?
            .into_iter()
            .any(|t| {
                t.purpose == JoinPurpose::Authority && t.used && t.node_name == node_id.to_string()
            });
        if !redeemed {
            return Err(tonic::Status::permission_denied(
                "join: no redeemed join token for this node",
            ));
        }
        // A node joins once. Keys of a removed node are retired or compromised, never deleted:
        // their presence is the durable record that this id was removed and may not come back
        // (a new node needs a new token, which gets a new id).
        let existing: Vec<crate::KeyRecord> = self
            .sm
            .reader()
            .map_err(status_of)?
            .keys()
            .map_err(status_of)?
            .into_iter()
            .filter(|k| k.authority == node_id)
            .collect();
        if existing
            .iter()
            .any(|k| matches!(k.status, KeyStatus::Retired | KeyStatus::Compromised))
        {
            return Err(tonic::Status::permission_denied(format!(
                "join: authority node {node_id} was removed; join a new node with a new token"
            )));
        }
        if r.address.is_empty() || r.address.len() > 255 {
            return Err(tonic::Status::invalid_argument("bad address"));
        }
        let audit = AuditRecord {
            actor: authority_id(&td, node_id)
                .map(|i| i.to_string())
                .unwrap_or_default(),
            revocation_ids: vec![],
            operation: "cluster:admin".into(),
            resource: format!("authority/{node_id}"),
            decision: AuditDecision::Allow,
            reason: None,
            authority: self.gate.node_id(),
            request_id: format!("join-{node_id}"),
            details: vec![("address".into(), r.address.clone())],
        };
        let _serial = self.membership.lock().await;
        // A retried join (after a crash half way) does not publish its keys twice.
        let keys_to_publish: &[pb::BundleKey] = if existing.is_empty() { &r.keys } else { &[] };
        for k in keys_to_publish {
            let kind =
                parse_kind(&k.kind).ok_or_else(|| tonic::Status::invalid_argument("key kind"))?;
            let cmd = Command {
                id: CommandId::random(),
                time_ms: now_ms(),
                audit: audit.clone(),
                op: Op::PublishKey {
                    authority: node_id,
                    kind,
                    public_der: k.public_key.clone(),
                    not_after_ms: k.not_after_ms,
                },
            };
            self.propose(cmd).await?;
        }
        self.propose(Command {
            id: CommandId::random(),
            time_ms: now_ms(),
            audit: audit.clone(),
            op: Op::PutAuthority {
                node_id,
                name: node_id.to_string(),
                addr: r.address.clone(),
            },
        })
        .await?;
        let node = openraft::BasicNode { addr: r.address };
        self.raft
            .add_learner(node_id, node, true)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("add learner: {e}")))?;
        let mut voters: std::collections::BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        voters.insert(node_id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("promote: {e}")))?;
        Ok(tonic::Response::new(pb::JoinClusterReply { node_id }))
    }

    async fn remove_member(
        &self,
        req: tonic::Request<pb::RemoveMemberRequest>,
    ) -> Result<tonic::Response<pb::RemoveMemberReply>, tonic::Status> {
        self.require_leader()?;
        let allowed = self
            .gate
            .check(&req, Operation::ClusterAdmin, &res("cluster")?, None)
            .await?;
        let r = req.into_inner();
        let _serial = self.membership.lock().await;
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if !membership.nodes().any(|(id, _)| *id == r.node_id) {
            // Already removed: `--compromised` may still follow a plain removal, once it turns
            // out the node's keys may have left with its disk.
            let keys = self
                .sm
                .reader()
                .map_err(status_of)?
                .keys()
                .map_err(status_of)?;
            let retired: Vec<u64> = keys
                .iter()
                .filter(|k| k.authority == r.node_id && k.status == KeyStatus::Retired)
                .map(|k| k.id)
                .collect();
            if !r.compromised || retired.is_empty() {
                return Err(tonic::Status::not_found(format!(
                    "node {} is not a member",
                    r.node_id
                )));
            }
            for key_id in retired {
                self.propose(allowed.command(Op::SetKeyStatus {
                    key_id,
                    status: KeyStatus::Compromised,
                }))
                .await?;
            }
            return Ok(tonic::Response::new(pb::RemoveMemberReply {}));
        }
        let voters: std::collections::BTreeSet<NodeId> =
            membership.voter_ids().filter(|v| *v != r.node_id).collect();
        if voters.is_empty() {
            return Err(tonic::Status::failed_precondition(
                "cannot remove the last voter",
            ));
        }
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("membership change: {e}")))?;
        let status = if r.compromised {
            KeyStatus::Compromised
        } else {
            KeyStatus::Retired
        };
        let keys = self
            .sm
            .reader()
            .map_err(status_of)?
            .keys()
            .map_err(status_of)?;
        for k in keys
            .iter()
            .filter(|k| k.authority == r.node_id && k.status != KeyStatus::Compromised)
        {
            self.propose(allowed.command(Op::SetKeyStatus {
                key_id: k.id,
                status,
            }))
            .await?;
        }
        self.propose(allowed.command(Op::RemoveAuthority { node_id: r.node_id }))
            .await?;
        Ok(tonic::Response::new(pb::RemoveMemberReply {}))
    }

    async fn list_nodes(
        &self,
        req: tonic::Request<pb::ListNodesRequest>,
    ) -> Result<tonic::Response<pb::ListNodesReply>, tonic::Status> {
        self.list_nodes_impl(req).await
    }

    async fn set_node_status(
        &self,
        req: tonic::Request<pb::SetNodeStatusRequest>,
    ) -> Result<tonic::Response<pb::SetNodeStatusReply>, tonic::Status> {
        self.set_node_status_impl(req).await
    }

    async fn renew_node(
        &self,
        req: tonic::Request<pb::RenewNodeRequest>,
    ) -> Result<tonic::Response<pb::RenewNodeReply>, tonic::Status> {
        self.renew_node_impl(req).await
    }

    async fn mint_svids(
        &self,
        req: tonic::Request<pb::MintSvidsRequest>,
    ) -> Result<tonic::Response<pb::MintSvidsReply>, tonic::Status> {
        self.mint_svids_impl(req).await
    }

    async fn sync_entries(
        &self,
        req: tonic::Request<pb::SyncEntriesRequest>,
    ) -> Result<tonic::Response<agents::SyncStream>, tonic::Status> {
        self.sync_entries_impl(req).await
    }

    async fn create_entry(
        &self,
        req: tonic::Request<pb::PutEntryRequest>,
    ) -> Result<tonic::Response<pb::EntryReply>, tonic::Status> {
        self.create_entry_impl(req).await
    }

    async fn update_entry(
        &self,
        req: tonic::Request<pb::PutEntryRequest>,
    ) -> Result<tonic::Response<pb::EntryReply>, tonic::Status> {
        self.update_entry_impl(req).await
    }

    async fn delete_entry(
        &self,
        req: tonic::Request<pb::DeleteEntryRequest>,
    ) -> Result<tonic::Response<pb::DeleteEntryReply>, tonic::Status> {
        self.delete_entry_impl(req).await
    }

    async fn get_entry(
        &self,
        req: tonic::Request<pb::GetEntryRequest>,
    ) -> Result<tonic::Response<pb::EntryReply>, tonic::Status> {
        self.get_entry_impl(req).await
    }

    async fn list_entries(
        &self,
        req: tonic::Request<pb::ListEntriesRequest>,
    ) -> Result<tonic::Response<pb::ListEntriesReply>, tonic::Status> {
        self.list_entries_impl(req).await
    }

    async fn get_tree_head(
        &self,
        req: tonic::Request<pb::GetTreeHeadRequest>,
    ) -> Result<tonic::Response<pb::SignedTreeHead>, tonic::Status> {
        self.get_tree_head_impl(req).await
    }

    async fn get_inclusion_proof(
        &self,
        req: tonic::Request<pb::InclusionProofRequest>,
    ) -> Result<tonic::Response<pb::ProofReply>, tonic::Status> {
        self.get_inclusion_proof_impl(req).await
    }

    async fn get_consistency_proof(
        &self,
        req: tonic::Request<pb::ConsistencyProofRequest>,
    ) -> Result<tonic::Response<pb::ProofReply>, tonic::Status> {
        self.get_consistency_proof_impl(req).await
    }

    async fn query_audit(
        &self,
        req: tonic::Request<pb::QueryAuditRequest>,
    ) -> Result<tonic::Response<pb::QueryAuditReply>, tonic::Status> {
        self.query_audit_impl(req).await
    }

    async fn tail_audit(
        &self,
        req: tonic::Request<pb::TailAuditRequest>,
    ) -> Result<tonic::Response<audit::RecordStream>, tonic::Status> {
        self.tail_audit_impl(req).await
    }

    async fn export_audit(
        &self,
        req: tonic::Request<pb::ExportAuditRequest>,
    ) -> Result<tonic::Response<audit::ExportStream>, tonic::Status> {
        self.export_audit_impl(req).await
    }

    async fn seal_audit(
        &self,
        req: tonic::Request<pb::SealAuditRequest>,
    ) -> Result<tonic::Response<pb::SealAuditReply>, tonic::Status> {
        self.seal_audit_impl(req).await
    }

    async fn add_user(
        &self,
        req: tonic::Request<pb::AddUserRequest>,
    ) -> Result<tonic::Response<pb::UserCredentials>, tonic::Status> {
        self.add_user_impl(req).await
    }

    async fn invite_user(
        &self,
        req: tonic::Request<pb::InviteUserRequest>,
    ) -> Result<tonic::Response<pb::InviteReply>, tonic::Status> {
        self.invite_user_impl(req).await
    }

    async fn login(
        &self,
        req: tonic::Request<pb::LoginRequest>,
    ) -> Result<tonic::Response<pb::UserCredentials>, tonic::Status> {
        self.login_impl(req).await
    }

    async fn list_users(
        &self,
        req: tonic::Request<pb::ListUsersRequest>,
    ) -> Result<tonic::Response<pb::ListUsersReply>, tonic::Status> {
        self.list_users_impl(req).await
    }

    async fn remove_user(
        &self,
        req: tonic::Request<pb::RemoveUserRequest>,
    ) -> Result<tonic::Response<pb::RemoveUserReply>, tonic::Status> {
        self.remove_user_impl(req).await
    }

    async fn suspend_user(
        &self,
        req: tonic::Request<pb::SuspendUserRequest>,
    ) -> Result<tonic::Response<pb::SuspendUserReply>, tonic::Status> {
        self.suspend_user_impl(req).await
    }

    async fn apply_roles(
        &self,
        req: tonic::Request<pb::ApplyRolesRequest>,
    ) -> Result<tonic::Response<pb::ApplyRolesReply>, tonic::Status> {
        self.apply_roles_impl(req).await
    }

    async fn list_roles(
        &self,
        req: tonic::Request<pb::ListRolesRequest>,
    ) -> Result<tonic::Response<pb::ListRolesReply>, tonic::Status> {
        self.list_roles_impl(req).await
    }

    async fn mint_token(
        &self,
        req: tonic::Request<pb::MintTokenRequest>,
    ) -> Result<tonic::Response<pb::MintTokenReply>, tonic::Status> {
        self.mint_token_impl(req).await
    }

    async fn revoke_token(
        &self,
        req: tonic::Request<pb::RevokeTokenRequest>,
    ) -> Result<tonic::Response<pb::RevokeTokenReply>, tonic::Status> {
        self.revoke_token_impl(req).await
    }
}
