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
use crate::keys::{CurrentKeys, NodeKeys};
use crate::net::{Contacts, authority_id};
use crate::store::StateMachineStore;
use crate::{NodeId, Proposer, Raft};

mod allocs;
mod audit;
mod blast;
mod bundle;
mod entries;
mod feed;
mod health;
pub(crate) mod jobs;
mod jwt;
mod lease;
mod membership;
mod mesh;
mod node_audit;
mod nodes;
mod rotation;
mod sched_watch;
mod scheds;
mod servable;
mod status;
mod tokens;
mod users;
pub(crate) use bundle::{BundleSource, key_kind_name, key_status_name, wire_not_after};
use bundle::{bundle_keys, parse_kind};
pub(crate) use jwt::DEFAULT_JWT_TTL;
pub(crate) use nodes::{AGENT_SVID_TTL, MAX_ENTRY_TTL};
pub(crate) use rotation::Rotator;

/// The node SVID lifetime for authority nodes joining the cluster.
pub(crate) const AUTHORITY_SVID_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most join tokens one call may ask to live.
pub(crate) const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The metadata key carrying the leader's address on `Unavailable`.
pub(crate) const LEADER_HINT: &str = "ringzero-leader";

/// The Authority service of one node.
pub(crate) struct AuthorityService {
    raft: Raft,
    proposer: Proposer,
    sm: StateMachineStore,
    gate: Arc<Gate>,
    keys: CurrentKeys,
    contacts: Contacts,
    /// Membership changes and join-token id allocation are serialized here.
    membership: Mutex<()>,
    /// First-contact calls (token redemption) are rate limited.
    first_contact: crate::first_contact::PerSourceLimiter,
    /// Becomes true when the node shuts down: long-lived streams end then, so a graceful
    /// shutdown does not wait on them.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Which agents hold an open feed to this leader (in memory, never replicated).
    health: health::Health,
    /// What each node's agent reported it can serve (in memory, never replicated).
    servable: servable::Servable,
    /// The lifetime of the JWT-SVIDs this node signs (capped by each entry's TTL).
    jwt_ttl: std::time::Duration,
    /// How this node rotates its own keys (absent in tests that build a bare service).
    rotator: Option<Rotator>,
}

impl std::fmt::Debug for AuthorityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityService").finish_non_exhaustive()
    }
}

use self::status::internal as status_of;

impl AuthorityService {
    pub(crate) fn new(
        proposer: Proposer,
        sm: StateMachineStore,
        gate: Arc<Gate>,
        keys: CurrentKeys,
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
            health: health::Health::default(),
            servable: servable::Servable::default(),
            jwt_ttl: jwt::DEFAULT_JWT_TTL,
            rotator: None,
        }
    }

    /// Lets `RotateKeys` rotate this node's keys.
    pub(crate) fn with_rotator(mut self, rotator: Rotator) -> Self {
        self.rotator = Some(rotator);
        self
    }

    /// Signs JWT-SVIDs for `ttl` (clamped to [`jwt::MIN_JWT_TTL`]–[`jwt::MAX_JWT_TTL`]).
    pub(crate) fn with_jwt_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.jwt_ttl = ttl.clamp(jwt::MIN_JWT_TTL, jwt::MAX_JWT_TTL);
        self
    }

    /// Ends the service's long-lived streams when `stopping` becomes true.
    pub(crate) fn with_shutdown(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
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

    async fn propose(&self, cmd: Command) -> Result<crate::command::Response, tonic::Status> {
        self.proposer
            .propose(cmd)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("not committed: {e}")))
    }

    /// The bundle as the API presents it.
    pub(crate) fn bundle(&self) -> Result<pb::Bundle, tonic::Status> {
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
                    .map(|(id, node)| member(*id, &node.addr, voters.contains(id)))
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
                ..member(*id, &node.addr, voters.contains(id))
            })
            .collect())
    }
}

/// A member as the bundle names it: id, address and role; the replication facts left unset.
fn member(id: NodeId, address: &str, voter: bool) -> pb::Member {
    pb::Member {
        node_id: id,
        name: id.to_string(),
        address: address.to_owned(),
        role: if voter { "voter" } else { "learner" }.into(),
        ..Default::default()
    }
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

    /// Every key record of the replicated state (every member's, every status).
    pub(crate) fn key_records(&self) -> Result<Vec<crate::KeyRecord>, tonic::Status> {
        self.sm.reader().and_then(|r| r.keys()).map_err(status_of)
    }

    /// The Biscuit key this node mints with, under the id Raft gave it. A node that joined
    /// learns that id only after its key was published, so the id is looked up in the bundle
    /// when the key was loaded without one.
    pub(crate) fn minting_key(&self) -> Result<ringzero_policy::token::RootKey, tonic::Status> {
        minting_key(&self.keys.load(), &self.sm)
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

fn res(s: &str) -> Result<Resource, tonic::Status> {
    Resource::parse(s).map_err(|e| status::invalid(e.to_string()))
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
        let r = self.redeem_join_token_impl(req).await;
        crate::metrics::metrics().join(join_outcome(&r));
        r
    }

    async fn status(
        &self,
        req: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::StatusReply>, tonic::Status> {
        self.status_impl(req).await
    }

    async fn members(
        &self,
        req: tonic::Request<pb::MembersRequest>,
    ) -> Result<tonic::Response<pb::MembersReply>, tonic::Status> {
        self.members_impl(req).await
    }

    async fn create_join_token(
        &self,
        req: tonic::Request<pb::CreateJoinTokenRequest>,
    ) -> Result<tonic::Response<pb::CreateJoinTokenReply>, tonic::Status> {
        self.create_join_token_impl(req).await
    }

    async fn join_cluster(
        &self,
        req: tonic::Request<pb::JoinClusterRequest>,
    ) -> Result<tonic::Response<pb::JoinClusterReply>, tonic::Status> {
        self.join_cluster_impl(req).await
    }

    async fn remove_member(
        &self,
        req: tonic::Request<pb::RemoveMemberRequest>,
    ) -> Result<tonic::Response<pb::RemoveMemberReply>, tonic::Status> {
        self.remove_member_impl(req).await
    }

    async fn rotate_keys(
        &self,
        req: tonic::Request<pb::RotateKeysRequest>,
    ) -> Result<tonic::Response<rotation::RotateStream>, tonic::Status> {
        self.rotate_keys_impl(req).await
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
        let r = self.mint_svids_impl(req).await;
        if let Ok(reply) = &r {
            let issued = reply
                .get_ref()
                .svids
                .iter()
                .filter(|s| s.error.is_empty())
                .count();
            crate::metrics::metrics().issued("workload", issued);
        }
        r
    }

    async fn mint_jwt_svid(
        &self,
        req: tonic::Request<pb::MintJwtSvidRequest>,
    ) -> Result<tonic::Response<pb::MintJwtSvidReply>, tonic::Status> {
        let r = self.mint_jwt_svid_impl(req).await;
        if r.is_ok() {
            crate::metrics::metrics().issued("jwt", 1);
        }
        r
    }

    async fn sync_entries(
        &self,
        req: tonic::Request<pb::SyncEntriesRequest>,
    ) -> Result<tonic::Response<nodes::SyncStream>, tonic::Status> {
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

    async fn list_scheds(
        &self,
        req: tonic::Request<pb::ListSchedsRequest>,
    ) -> Result<tonic::Response<pb::ListSchedsReply>, tonic::Status> {
        self.list_scheds_impl(req).await
    }

    async fn remove_sched(
        &self,
        req: tonic::Request<pb::RemoveSchedRequest>,
    ) -> Result<tonic::Response<pb::RemoveSchedReply>, tonic::Status> {
        self.remove_sched_impl(req).await
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

    async fn blast_radius(
        &self,
        req: tonic::Request<pb::BlastRadiusRequest>,
    ) -> Result<tonic::Response<pb::BlastRadiusReply>, tonic::Status> {
        self.blast_radius_impl(req).await
    }

    async fn mesh_allow(
        &self,
        req: tonic::Request<pb::MeshPolicyRequest>,
    ) -> Result<tonic::Response<pb::MeshPolicyReply>, tonic::Status> {
        self.mesh_write_impl(req, true).await
    }

    async fn mesh_deny(
        &self,
        req: tonic::Request<pb::MeshPolicyRequest>,
    ) -> Result<tonic::Response<pb::MeshPolicyReply>, tonic::Status> {
        self.mesh_write_impl(req, false).await
    }

    async fn list_mesh_policies(
        &self,
        req: tonic::Request<pb::ListMeshPoliciesRequest>,
    ) -> Result<tonic::Response<pb::ListMeshPoliciesReply>, tonic::Status> {
        self.list_mesh_policies_impl(req).await
    }

    async fn submit_job(
        &self,
        req: tonic::Request<pb::SubmitJobRequest>,
    ) -> Result<tonic::Response<pb::JobReply>, tonic::Status> {
        self.submit_job_impl(req).await
    }

    async fn stop_job(
        &self,
        req: tonic::Request<pb::StopJobRequest>,
    ) -> Result<tonic::Response<pb::JobReply>, tonic::Status> {
        self.stop_job_impl(req).await
    }

    async fn get_job(
        &self,
        req: tonic::Request<pb::GetJobRequest>,
    ) -> Result<tonic::Response<pb::JobReply>, tonic::Status> {
        self.get_job_impl(req).await
    }

    async fn list_jobs(
        &self,
        req: tonic::Request<pb::ListJobsRequest>,
    ) -> Result<tonic::Response<pb::ListJobsReply>, tonic::Status> {
        self.list_jobs_impl(req).await
    }

    async fn place_allocs(
        &self,
        req: tonic::Request<pb::PlaceAllocsRequest>,
    ) -> Result<tonic::Response<pb::AllocsReply>, tonic::Status> {
        self.place_allocs_impl(req).await
    }

    async fn stop_allocs(
        &self,
        req: tonic::Request<pb::AllocIdsRequest>,
    ) -> Result<tonic::Response<pb::AllocsReply>, tonic::Status> {
        self.stop_allocs_impl(req).await
    }

    async fn mark_allocs_lost(
        &self,
        req: tonic::Request<pb::AllocIdsRequest>,
    ) -> Result<tonic::Response<pb::AllocsReply>, tonic::Status> {
        self.mark_allocs_lost_impl(req).await
    }

    async fn remove_allocs(
        &self,
        req: tonic::Request<pb::AllocIdsRequest>,
    ) -> Result<tonic::Response<pb::AllocsReply>, tonic::Status> {
        self.remove_allocs_impl(req).await
    }

    async fn list_allocs(
        &self,
        req: tonic::Request<pb::ListAllocsRequest>,
    ) -> Result<tonic::Response<pb::ListAllocsReply>, tonic::Status> {
        self.list_allocs_impl(req).await
    }

    async fn wait_entry_servable(
        &self,
        req: tonic::Request<pb::WaitEntryServableRequest>,
    ) -> Result<tonic::Response<pb::WaitEntryServableReply>, tonic::Status> {
        self.wait_entry_servable_impl(req).await
    }

    async fn report_servable(
        &self,
        req: tonic::Request<pb::ReportServableRequest>,
    ) -> Result<tonic::Response<pb::ReportServableReply>, tonic::Status> {
        self.report_servable_impl(req).await
    }

    async fn report_alloc_status(
        &self,
        req: tonic::Request<pb::ReportAllocStatusRequest>,
    ) -> Result<tonic::Response<pb::ReportAllocStatusReply>, tonic::Status> {
        self.report_alloc_status_impl(req).await
    }

    async fn append_node_audit(
        &self,
        req: tonic::Request<pb::AppendNodeAuditRequest>,
    ) -> Result<tonic::Response<pb::AppendNodeAuditReply>, tonic::Status> {
        self.append_node_audit_impl(req).await
    }

    async fn list_node_health(
        &self,
        req: tonic::Request<pb::ListNodeHealthRequest>,
    ) -> Result<tonic::Response<pb::ListNodeHealthReply>, tonic::Status> {
        self.list_node_health_impl(req).await
    }

    async fn watch_sched(
        &self,
        req: tonic::Request<pb::WatchSchedRequest>,
    ) -> Result<tonic::Response<sched_watch::SchedStream>, tonic::Status> {
        self.watch_sched_impl(req).await
    }

    async fn set_node_drain(
        &self,
        req: tonic::Request<pb::SetNodeDrainRequest>,
    ) -> Result<tonic::Response<pb::SetNodeDrainReply>, tonic::Status> {
        self.set_node_drain_impl(req).await
    }

    async fn acquire_sched_lease(
        &self,
        req: tonic::Request<pb::AcquireSchedLeaseRequest>,
    ) -> Result<tonic::Response<pb::SchedLease>, tonic::Status> {
        self.acquire_sched_lease_impl(req).await
    }

    async fn release_sched_lease(
        &self,
        req: tonic::Request<pb::ReleaseSchedLeaseRequest>,
    ) -> Result<tonic::Response<pb::ReleaseSchedLeaseReply>, tonic::Status> {
        self.release_sched_lease_impl(req).await
    }
}

/// The `join_attempts` label of a redemption's result.
fn join_outcome<T>(r: &Result<T, tonic::Status>) -> &'static str {
    match r {
        Ok(_) => "joined",
        Err(s) => match s.code() {
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => "refused",
            tonic::Code::InvalidArgument => "invalid",
            tonic::Code::ResourceExhausted => "throttled",
            tonic::Code::Unavailable => "unavailable",
            _ => "error",
        },
    }
}
