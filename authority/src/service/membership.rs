//! Membership and first contact: join tokens, redemption (agents and authority nodes), joining
//! the cluster, removing a member, status and members.

use super::*;

impl AuthorityService {
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

    /// The next node id for an authority join token: above every member, authority record and
    /// outstanding authority token.
    pub(crate) fn next_node_id(&self) -> Result<NodeId, tonic::Status> {
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

    /// The pin of this node's CA, which every join token it issues carries.
    pub(crate) fn pin(&self) -> [u8; 32] {
        self.keys.load().ca.pin()
    }

    pub(crate) async fn redeem_join_token_impl(
        &self,
        req: tonic::Request<pb::RedeemJoinTokenRequest>,
    ) -> Result<tonic::Response<pb::RedeemJoinTokenReply>, tonic::Status> {
        let peer = ringzero_proto::transport::peer(&req);
        self.first_contact_allowed(&peer)?;
        self.require_leader()?;
        let r = req.into_inner();
        if r.csr.len() > MAX_DER_LEN {
            return Err(super::status::invalid("CSR too large"));
        }
        let token_id: [u8; 16] = hex::decode(&r.token_id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| super::status::invalid("bad token id"))?;
        if r.secret.len() != 32 {
            return Err(super::status::invalid("bad secret"));
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
            return Err(super::status::internal("a checked token has no record"));
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
        .map_err(|e| super::status::internal(e.to_string()))?;
        let svid = self
            .keys
            .load()
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
            .map_err(|e| super::status::invalid(format!("CSR: {e}")))?;
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
            id: CommandId::fresh(),
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
        match super::status::accepted("join refused", resp.outcome)? {
            Outcome::Done => {}
            other => {
                return Err(super::status::internal(format!(
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
                id: CommandId::fresh(),
                time_ms: now_ms(),
                audit,
                op: Op::IssueSvid {
                    node: node_name.clone(),
                    serial: svid.serial.clone(),
                    not_after_ms: not_after.saturating_mul(1000),
                },
            };
            let audit = record.audit.clone();
            super::status::accepted("join refused", self.propose(record).await?.outcome)?;
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

    /// On the leader, checks `authority:read` on `authority` (status and membership reads).
    async fn gate_authority_read<T>(
        &self,
        req: &tonic::Request<T>,
    ) -> Result<crate::gate::Allowed, tonic::Status> {
        self.require_leader()?;
        self.gate
            .check(req, Operation::AuthorityRead, &res("authority")?, None)
            .await
    }

    pub(crate) async fn status_impl(
        &self,
        req: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::StatusReply>, tonic::Status> {
        let allowed = self.gate_authority_read(&req).await?;
        // A leader that cannot confirm its quorum for a second is not accepting writes.
        let writable = crate::proposer::confirm_leader(&self.raft, Duration::from_secs(1))
            .await
            .is_ok();
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
        let health = crate::metrics::RaftHealth::of(&self.raft);
        let not_ready = health.not_ready();
        let keys = self.key_records()?;
        let now_ms = crate::gate::now_ms();
        let expiring_keys = crate::metrics::expiring_keys(&keys, now_ms)
            .into_iter()
            .map(|k| pb::KeyWarning {
                key_id: k.id,
                authority: k.authority,
                kind: crate::service::key_kind_name(k.kind).to_owned(),
                status: if k.status == crate::command::KeyStatus::Active {
                    "active"
                } else {
                    "published"
                }
                .to_owned(),
                not_after_ms: k.not_after_ms,
            })
            .collect();
        Ok(tonic::Response::new(pb::StatusReply {
            node_id: m.id,
            leader_id: m.current_leader,
            leader_address,
            term: m.current_term,
            last_applied: m.last_applied.map_or(0, |l| l.index),
            writable,
            last_log_index: m.last_log_index.unwrap_or(0),
            ready: not_ready.is_none(),
            not_ready: not_ready.unwrap_or_default(),
            expiring_keys,
        }))
    }

    pub(crate) async fn members_impl(
        &self,
        req: tonic::Request<pb::MembersRequest>,
    ) -> Result<tonic::Response<pb::MembersReply>, tonic::Status> {
        let allowed = self.gate_authority_read(&req).await?;
        self.gate.record(&allowed).await?;
        Ok(tonic::Response::new(pb::MembersReply {
            members: self.members()?,
        }))
    }

    pub(crate) async fn create_join_token_impl(
        &self,
        req: tonic::Request<pb::CreateJoinTokenRequest>,
    ) -> Result<tonic::Response<pb::CreateJoinTokenReply>, tonic::Status> {
        self.require_leader()?;
        let (purpose, node_name, ttl) = {
            let r = req.get_ref();
            let ttl = Duration::from_secs(r.ttl_seconds.clamp(1, MAX_JOIN_TOKEN_TTL.as_secs()));
            match r.purpose.as_str() {
                "authority" => (JoinPurpose::Authority, None, ttl),
                "sched" => return self.create_sched_token_impl(req).await,
                "agent" => {
                    let name = NodeName::parse(&r.node_name)
                        .map_err(|e| super::status::invalid(format!("node name: {e}")))?;
                    (JoinPurpose::Agent, Some(name), ttl)
                }
                _ => {
                    return Err(super::status::invalid(
                        "purpose must be authority, agent or sched",
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
                    .map_err(|e| super::status::invalid(e.to_string()))?;
                self.gate
                    .check(&req, Operation::NodeEnroll, &r, Some(n))
                    .await?
            }
            (JoinPurpose::Agent, None) => {
                return Err(super::status::invalid("node name required"));
            }
            (JoinPurpose::User, _) => {
                return Err(super::status::invalid("user invites come from InviteUser"));
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
        let token = JoinToken::generate(self.pin()).map_err(status_of)?;
        let expires_ms = now_ms().saturating_add(ttl.as_millis() as u64);
        let mut audit = allowed.audit.clone();
        audit
            .details
            .push(("token_id".into(), hex::encode(token.id)));
        audit.details.push(("node_name".into(), name.clone()));
        let cmd = Command {
            id: CommandId::fresh(),
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
        super::status::accepted("refused", resp.outcome)?;
        Ok(tonic::Response::new(pb::CreateJoinTokenReply {
            token: token.to_text().to_string(),
            expires_unix: expires_ms / 1000,
        }))
    }

    pub(crate) async fn join_cluster_impl(
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
            .key_records()?
            .into_iter()
            .filter(|k| k.authority == node_id)
            .collect();
        if crate::keys::removed_by_keys(&existing, node_id) {
            return Err(tonic::Status::permission_denied(format!(
                "join: authority node {node_id} was removed; join a new node with a new token"
            )));
        }
        if r.address.is_empty() || r.address.len() > 255 {
            return Err(super::status::invalid("bad address"));
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
            let kind = parse_kind(&k.kind).ok_or_else(|| super::status::invalid("key kind"))?;
            let cmd = Command {
                id: CommandId::fresh(),
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
            id: CommandId::fresh(),
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

    pub(crate) async fn remove_member_impl(
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
            let keys = self.key_records()?;
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
        let keys = self.key_records()?;
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
}
