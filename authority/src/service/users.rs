//! Users: `AddUser`, `InviteUser`, `Login`, `ListUsers`, `RemoveUser`.
//!
//! - A user is `spiffe://TD/user/<name>` with a role (built-in or custom) and, for namespaced
//!   roles, a namespace. Its credential is an SVID for a key it generated (a CSR) and the role's
//!   capability **bound to that SVID**, both with the same lifetime (24 h by default, at most
//!   7 days).
//! - Every issued credential is recorded before it is released ([`Op::IssueUserCredential`]:
//!   the SVID serial and the capability's revocation ids), refused once the user is gone.
//!   Removing the user moves every unexpired one into the revoked serials and the revocations,
//!   so its capabilities are refused by every gate from that entry on.
//! - An invite is a join token of purpose `User` whose pending user (role, namespace) is stored
//!   with it ([`Op::IssueUserInvite`]); `Login` with it redeems it by the same compare-and-set
//!   as a join token, which creates the user in the same transaction.
//! - Schedulers (`ringzero/sched/<name>`) share this table and these flows: see `scheds`.
//! - `Login` without an invite renews: the caller's still-valid user SVID names the user, its
//!   capability must pass the gate (on the first right of the user's current role), and the
//!   user must still exist. An expired SVID cannot even connect.

use std::time::{Duration, SystemTime};

use ringzero_policy::join::{JoinToken, sha256};
use ringzero_policy::svid::{IssuedSvid, LeafKey, LeafRequest, MAX_DER_LEN};
use ringzero_policy::token::{Lifetime, MintRequest};
use ringzero_policy::{NodeName, Operation, Resource, Right, Role, SpiffeId};
use ringzero_proto::pb;

use super::{AuthorityService, MAX_JOIN_TOKEN_TTL, status_of};
use crate::command::{
    AuditDecision, AuditRecord, Command, CommandId, JoinPurpose, Op, Outcome, Rejection, User,
    principal_path, sched_key, sched_name,
};
use crate::gate::now_ms;

/// The lifetime of a user credential when none is asked for.
pub(crate) const DEFAULT_USER_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest user credential lifetime; longer requests are capped to it.
pub(crate) const MAX_USER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long an invite may be redeemed when no lifetime is asked for.
pub(crate) const DEFAULT_INVITE_TTL: Duration = Duration::from_secs(3600);

use super::status::invalid;

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn user_resource(name: &NodeName) -> Result<Resource, tonic::Status> {
    Resource::from_segments(&["user", name.as_str()]).map_err(invalid)
}

fn parse_name(s: &str) -> Result<NodeName, tonic::Status> {
    NodeName::parse(s).map_err(|e| invalid(format!("user name {s:?}: {e}")))
}

fn namespace(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// The credential lifetime for `asked` seconds: the default for 0, capped at [`MAX_USER_TTL`].
fn user_ttl(asked: u64) -> Duration {
    if asked == 0 {
        DEFAULT_USER_TTL
    } else {
        Duration::from_secs(asked).min(MAX_USER_TTL)
    }
}

/// The credential lifetime of `user` for `asked` seconds: a scheduler's is short (it renews
/// itself, see [`super::scheds`]), a user's as [`user_ttl`].
fn credential_ttl(user: &User, asked: u64) -> Duration {
    if user.sched_name().is_some() {
        super::scheds::sched_ttl(asked)
    } else {
        user_ttl(asked)
    }
}

pub(super) fn rights_summary(user: &User) -> String {
    match &user.namespace {
        Some(ns) => format!("role {} in namespace {ns}", user.role),
        None => format!("role {}", user.role),
    }
}

/// A credential issued (not yet released): the SVID, and the capability bound to it.
struct Issued {
    id: SpiffeId,
    svid: IssuedSvid,
    token: String,
    token_ids: Vec<Vec<u8>>,
    /// When the capability expires (unix ms).
    token_expires_ms: u64,
}

impl Issued {
    /// The audit facts of the credential (never the token or the key).
    fn details(&self, user: &User) -> Vec<(String, String)> {
        vec![
            ("svid_serial".into(), hex::encode(&self.svid.serial)),
            ("spiffe_id".into(), self.id.to_string()),
            (
                "public_key_sha256".into(),
                hex::encode(&self.svid.public_key_sha256),
            ),
            (
                "not_after".into(),
                unix_secs(self.svid.not_after).to_string(),
            ),
            (
                "minted_token".into(),
                self.token_ids
                    .iter()
                    .map(hex::encode)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("rights".into(), rights_summary(user)),
        ]
    }

    /// The command recording this credential for `user`, with `audit` plus its details.
    fn record(&self, mut audit: AuditRecord, user: &User) -> Command {
        audit.details.extend(self.details(user));
        Command {
            id: CommandId::fresh(),
            time_ms: now_ms(),
            audit,
            op: Op::IssueUserCredential {
                user: user.name.clone(),
                serial: self.svid.serial.clone(),
                not_after_ms: unix_secs(self.svid.not_after).saturating_mul(1000),
                revocation_ids: self.token_ids.clone(),
                expires_ms: self.token_expires_ms,
            },
        }
    }
}

pub(super) fn credential_refused(outcome: Outcome, user: &str) -> Result<(), tonic::Status> {
    match outcome {
        Outcome::Rejected(Rejection::NotFound) => Err(tonic::Status::permission_denied(format!(
            "user {user} does not exist (removed?)"
        ))),
        other => super::status::accepted("refused", other).map(|_| ()),
    }
}

impl AuthorityService {
    /// The rights of `role` for a user of `namespace`: a built-in role's, or a custom role's
    /// (custom roles are not namespaced).
    pub(super) fn role_rights(
        &self,
        role: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<Right>, tonic::Status> {
        let rights = match role.parse::<Role>() {
            Ok(builtin) => builtin.rights(namespace).map_err(invalid)?,
            Err(unknown) => {
                let custom = self
                    .sm
                    .reader()
                    .map_err(status_of)?
                    .role(role)
                    .map_err(status_of)?
                    .ok_or_else(|| invalid(unknown))?;
                if namespace.is_some() {
                    return Err(invalid(format!(
                        "role {role} is a custom role with fixed resources: a namespace does \
                         not apply"
                    )));
                }
                custom
                    .rights
                    .iter()
                    .map(|(op, prefix)| {
                        Ok(Right::new(
                            op.parse::<Operation>().map_err(status_of)?,
                            Resource::parse(prefix).map_err(status_of)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, tonic::Status>>()?
            }
        };
        if rights.is_empty() {
            return Err(invalid(format!("role {role} grants nothing")));
        }
        Ok(rights)
    }

    /// The SPIFFE ID of the principal recorded under `key`: `user/<name>`, or
    /// `ringzero/sched/<name>` for a scheduler.
    fn principal_id(&self, key: &str) -> Result<SpiffeId, tonic::Status> {
        let td = self.gate.trust_domain();
        match sched_name(key) {
            Some(name) => td.id_with_path(&["ringzero", "sched", name]),
            None => td.id_with_path(&["user", key]),
        }
        .map_err(invalid)
    }

    /// Issues `user`'s SVID for the key of `csr` and its role's capability bound to it.
    fn issue_user(&self, user: &User, csr: &[u8], ttl: Duration) -> Result<Issued, tonic::Status> {
        if csr.len() > MAX_DER_LEN {
            return Err(invalid("CSR too large"));
        }
        let rights = self.role_rights(&user.role, user.namespace.as_deref())?;
        let id = self.principal_id(&user.name)?;
        let now = SystemTime::now();
        let svid = self
            .keys
            .load()
            .ca
            .issue(&LeafRequest {
                id: &id,
                key: LeafKey::Csr(csr),
                ttl,
                dns_names: &[],
                now,
            })
            .map_err(|e| invalid(format!("CSR: {e}")))?;
        let token = ringzero_policy::token::mint(
            &self.minting_key()?,
            &MintRequest {
                subject: id.clone(),
                rights,
                ttl: Some(ttl),
                bind_to_subject: true,
                bind_node: None,
            },
            &Lifetime {
                default: ttl,
                max: ttl,
            },
            now,
        )
        .map_err(status_of)?;
        let token_ids = ringzero_policy::token::revocation_ids(&token)
            .map_err(status_of)?
            .into_iter()
            .map(|r| r.0)
            .collect();
        // The token expires at `now + ttl` to the second; one more second covers the rounding.
        let token_expires_ms = unix_secs(now)
            .saturating_add(ttl.as_secs())
            .saturating_add(1)
            .saturating_mul(1000);
        Ok(Issued {
            id,
            svid,
            token,
            token_ids,
            token_expires_ms,
        })
    }

    fn credentials_reply(&self, issued: Issued) -> Result<pb::UserCredentials, tonic::Status> {
        Ok(pb::UserCredentials {
            svid_chain: issued.svid.chain.iter().map(|c| c.to_vec()).collect(),
            bundle: Some(self.bundle()?),
            expires_unix: unix_secs(issued.svid.not_after),
            token: issued.token,
        })
    }

    fn require_no_user(&self, name: &NodeName) -> Result<(), tonic::Status> {
        let existing = self
            .sm
            .reader()
            .map_err(status_of)?
            .user(name.as_str())
            .map_err(status_of)?;
        if existing.is_some() {
            return Err(tonic::Status::already_exists(format!(
                "user {name} already exists (remove it first)"
            )));
        }
        Ok(())
    }

    pub(crate) async fn add_user_impl(
        &self,
        req: tonic::Request<pb::AddUserRequest>,
    ) -> Result<tonic::Response<pb::UserCredentials>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref();
        let name = parse_name(&r.name)?;
        let user = User {
            name: name.to_string(),
            role: r.role.clone(),
            namespace: namespace(&r.namespace),
        };
        user.validate().map_err(invalid)?;
        let ttl = user_ttl(r.ttl_seconds);
        let allowed = self
            .gate
            .check(&req, Operation::UserWrite, &user_resource(&name)?, None)
            .await?;
        self.require_no_user(&name)?;
        let issued = self.issue_user(&user, &req.get_ref().csr, ttl)?;
        let mut put = allowed.command(Op::PutUser { user: user.clone() });
        put.audit
            .details
            .push(("rights".into(), rights_summary(&user)));
        credential_refused(self.propose(put).await?.outcome, &user.name)?;
        // Recorded before anything is released.
        let record = issued.record(allowed.audit.clone(), &user);
        credential_refused(self.propose(record).await?.outcome, &user.name)?;
        Ok(tonic::Response::new(self.credentials_reply(issued)?))
    }

    pub(crate) async fn invite_user_impl(
        &self,
        req: tonic::Request<pb::InviteUserRequest>,
    ) -> Result<tonic::Response<pb::InviteReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref();
        let name = parse_name(&r.name)?;
        let user = User {
            name: name.to_string(),
            role: r.role.clone(),
            namespace: namespace(&r.namespace),
        };
        user.validate().map_err(invalid)?;
        let ttl = if r.ttl_seconds == 0 {
            DEFAULT_INVITE_TTL
        } else {
            Duration::from_secs(r.ttl_seconds.clamp(1, MAX_JOIN_TOKEN_TTL.as_secs()))
        };
        let allowed = self
            .gate
            .check(&req, Operation::UserWrite, &user_resource(&name)?, None)
            .await?;
        self.require_no_user(&name)?;
        // A bad role or namespace fails now, not at the invitee's login.
        self.role_rights(&user.role, user.namespace.as_deref())?;
        let token = JoinToken::generate(self.pin()).map_err(status_of)?;
        let expires_ms = now_ms().saturating_add(ttl.as_millis() as u64);
        let mut cmd = allowed.command(Op::IssueUserInvite {
            token_id: token.id,
            secret_sha256: token.secret_sha256(),
            user: user.clone(),
            expires_ms,
        });
        cmd.audit.details.extend([
            ("token_id".into(), hex::encode(token.id)),
            ("user".into(), user.name.clone()),
            ("rights".into(), rights_summary(&user)),
        ]);
        if let Outcome::Rejected(why) = self.propose(cmd).await?.outcome {
            return Err(tonic::Status::failed_precondition(format!(
                "refused: {why}"
            )));
        }
        Ok(tonic::Response::new(pb::InviteReply {
            invite: token.to_text().to_string(),
            expires_unix: expires_ms / 1000,
        }))
    }

    pub(crate) async fn login_impl(
        &self,
        req: tonic::Request<pb::LoginRequest>,
    ) -> Result<tonic::Response<pb::UserCredentials>, tonic::Status> {
        if req.get_ref().invite_id.is_empty() {
            self.renew_user(req).await
        } else {
            self.redeem_invite(req).await
        }
    }

    /// First contact: redeems an invite (compare-and-set, like a join token), which creates
    /// the user, then issues its first credential.
    async fn redeem_invite(
        &self,
        req: tonic::Request<pb::LoginRequest>,
    ) -> Result<tonic::Response<pb::UserCredentials>, tonic::Status> {
        let peer = ringzero_proto::transport::peer(&req);
        self.first_contact_allowed(&peer)?;
        self.require_leader()?;
        let r = req.into_inner();
        let token_id: [u8; 16] = hex::decode(&r.invite_id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| invalid("bad invite id"))?;
        if r.invite_secret.len() != 32 {
            return Err(invalid("bad invite secret"));
        }
        if r.csr.len() > MAX_DER_LEN {
            return Err(invalid("CSR too large"));
        }
        let record = self
            .sm
            .reader()
            .map_err(status_of)?
            .join_token(&token_id)
            .map_err(status_of)?;
        if let Err(why) = crate::first_contact::precheck(
            record.as_ref(),
            &sha256(&r.invite_secret),
            None,
            &[JoinPurpose::User],
            now_ms(),
        ) {
            let resource = match &record {
                Some(t) if t.purpose == JoinPurpose::User => principal_path(&t.node_name),
                _ => "invite".into(),
            };
            self.first_contact_refused(
                &peer,
                Operation::UserWrite.as_str(),
                resource,
                &token_id,
                &why,
            )
            .await;
            return Err(tonic::Status::permission_denied(format!(
                "login refused: {}",
                crate::first_contact::public_reason(&why)
            )));
        }
        let Some(record) = record else {
            return Err(super::status::internal("a checked invite has no record"));
        };
        let name = record.node_name.clone();
        let id = self.principal_id(&name)?;
        let audit = AuditRecord {
            actor: peer
                .spiffe_id
                .map_or_else(|| format!("invitee:{id}"), |p| p.to_string()),
            revocation_ids: vec![],
            operation: Operation::UserWrite.as_str().into(),
            resource: principal_path(&name),
            decision: AuditDecision::Allow,
            reason: None,
            authority: self.gate.node_id(),
            request_id: hex::encode(token_id),
            details: vec![
                ("login".into(), "invite".into()),
                ("token_id".into(), hex::encode(token_id)),
            ],
        };
        let redeem = Command {
            id: CommandId::fresh(),
            time_ms: now_ms(),
            audit: audit.clone(),
            op: Op::RedeemJoinToken {
                token_id,
                presented_sha256: sha256(&r.invite_secret),
                node_name: name.clone(),
            },
        };
        match super::status::accepted("login refused", self.propose(redeem).await?.outcome)? {
            Outcome::Done => {}
            other => {
                return Err(super::status::internal(format!(
                    "unexpected outcome {other:?}"
                )));
            }
        }
        let user = self
            .sm
            .reader()
            .map_err(status_of)?
            .user(&name)
            .map_err(status_of)?
            .ok_or_else(|| {
                tonic::Status::permission_denied(format!("user {name} was removed meanwhile"))
            })?;
        let issued = self.issue_user(&user, &r.csr, credential_ttl(&user, r.ttl_seconds))?;
        credential_refused(
            self.propose(issued.record(audit, &user)).await?.outcome,
            &name,
        )?;
        Ok(tonic::Response::new(self.credentials_reply(issued)?))
    }

    /// Renewal with a still-valid user SVID and its capability.
    async fn renew_user(
        &self,
        req: tonic::Request<pb::LoginRequest>,
    ) -> Result<tonic::Response<pb::UserCredentials>, tonic::Status> {
        self.require_leader()?;
        let peer = ringzero_proto::transport::peer(&req);
        let td = self.gate.trust_domain();
        let id = peer
            .spiffe_id
            .filter(|p| p.is_member_of(td))
            .ok_or_else(|| {
                tonic::Status::unauthenticated(
                    "renewal needs a valid user SVID (or an invite for a first login)",
                )
            })?;
        // The record the certificate names: a user's, or a scheduler's (`sched:<name>`). The
        // gate below checks that this very certificate was recorded as issued to it.
        let segments: Vec<&str> = id.segments().collect();
        let name = match segments.as_slice() {
            ["user", name] => parse_name(name)?.to_string(),
            ["ringzero", "sched", name] => sched_key(parse_name(name)?.as_str()),
            _ => {
                return Err(tonic::Status::permission_denied(format!(
                    "{id} is not a user or scheduler identity"
                )));
            }
        };
        let user = self
            .sm
            .reader()
            .map_err(status_of)?
            .user(&name)
            .map_err(status_of)?
            .ok_or_else(|| {
                tonic::Status::permission_denied(format!(
                    "{} does not exist (removed?)",
                    principal_path(&name)
                ))
            })?;
        // The capability must still be good for what the role grants: checked on the role's
        // first right, which every token minted for the role holds.
        let rights = self.role_rights(&user.role, user.namespace.as_deref())?;
        let first = rights
            .first()
            .ok_or_else(|| invalid(format!("role {} grants nothing", user.role)))?;
        let allowed = self
            .gate
            .check(&req, first.operation, &first.prefix, None)
            .await?;
        // Only the user's own credential renews: the capability the authority issued to it,
        // unattenuated. An attenuated or delegated token (narrower, shorter-lived, perhaps
        // handed to a CI job) must never turn back into the whole role for days.
        let own = self
            .gate
            .presented_token(&req)
            .and_then(|t| ringzero_policy::token::revocation_ids(&t).ok())
            .filter(|ids| ids.len() == 1)
            .and_then(|ids| ids.into_iter().next())
            .map(|id| {
                self.sm
                    .reader()
                    .and_then(|r| r.has_user_token(&name, &id.0))
            })
            .transpose()
            .map_err(status_of)?
            .unwrap_or(false);
        if !own {
            let mut cmd = allowed.command(Op::AuditOnly);
            cmd.audit.decision = crate::command::AuditDecision::Deny;
            cmd.audit.operation = "user:renew".into();
            cmd.audit.resource = principal_path(&name);
            cmd.audit.reason = Some(
                "not_own_credential: renewal needs the user's own, unattenuated capability".into(),
            );
            if let Err(e) = self.propose(cmd).await {
                tracing::warn!(error = %e, "could not record a refused renewal");
            }
            return Err(tonic::Status::permission_denied(
                "denied: only the user's own capability, unattenuated, renews its credentials \
                 (an attenuated or delegated token cannot)",
            ));
        }
        let r = req.get_ref();
        let issued = self.issue_user(&user, &r.csr, credential_ttl(&user, r.ttl_seconds))?;
        let mut audit = allowed.audit.clone();
        audit.details.push(("login".into(), "renew".into()));
        credential_refused(
            self.propose(issued.record(audit, &user)).await?.outcome,
            &user.name,
        )?;
        Ok(tonic::Response::new(self.credentials_reply(issued)?))
    }

    pub(crate) async fn list_users_impl(
        &self,
        req: tonic::Request<pb::ListUsersRequest>,
    ) -> Result<tonic::Response<pb::ListUsersReply>, tonic::Status> {
        let reader = self
            .read_gated(&req, Operation::UserRead, &super::res("user")?)
            .await?;
        let users = reader.users().map_err(status_of)?;
        let mut out = Vec::with_capacity(users.len());
        // Schedulers share the table; `sched list` shows them.
        for u in users.into_iter().filter(|u| u.sched_name().is_none()) {
            out.push(pb::UserInfo {
                suspended: reader.is_suspended(&u.name).map_err(status_of)?,
                name: u.name,
                role: u.role,
                namespace: u.namespace.unwrap_or_default(),
            });
        }
        Ok(tonic::Response::new(pb::ListUsersReply { users: out }))
    }

    pub(crate) async fn suspend_user_impl(
        &self,
        req: tonic::Request<pb::SuspendUserRequest>,
    ) -> Result<tonic::Response<pb::SuspendUserReply>, tonic::Status> {
        self.require_leader()?;
        let name = parse_name(&req.get_ref().name)?;
        let suspended = req.get_ref().suspended;
        let allowed = self
            .gate
            .check(&req, Operation::UserWrite, &user_resource(&name)?, None)
            .await?;
        let mut cmd = allowed.command(Op::SetUserSuspended {
            name: name.to_string(),
            suspended,
        });
        cmd.audit.details.extend([
            ("user".into(), name.to_string()),
            (
                "suspended".into(),
                if suspended { "true" } else { "false" }.into(),
            ),
        ]);
        match self.propose(cmd).await?.outcome {
            Outcome::Rejected(Rejection::NotFound) => {
                Err(tonic::Status::not_found(format!("no user {name}")))
            }
            Outcome::Rejected(why) => Err(super::status::rejected("refused", &why)),
            _ => Ok(tonic::Response::new(pb::SuspendUserReply {})),
        }
    }

    pub(crate) async fn remove_user_impl(
        &self,
        req: tonic::Request<pb::RemoveUserRequest>,
    ) -> Result<tonic::Response<pb::RemoveUserReply>, tonic::Status> {
        self.require_leader()?;
        let name = parse_name(&req.get_ref().name)?;
        let allowed = self
            .gate
            .check(&req, Operation::UserWrite, &user_resource(&name)?, None)
            .await?;
        let mut cmd = allowed.command(Op::RemoveUser {
            name: name.to_string(),
        });
        cmd.audit.details.push(("user".into(), name.to_string()));
        match self.propose(cmd).await?.outcome {
            Outcome::Rejected(Rejection::NotFound) => {
                Err(tonic::Status::not_found(format!("no user {name}")))
            }
            Outcome::Rejected(why) => Err(super::status::rejected("refused", &why)),
            _ => {
                self.gate.forget_revoked();
                Ok(tonic::Response::new(pb::RemoveUserReply {}))
            }
        }
    }
}
