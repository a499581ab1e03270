//! Schedulers: `CreateJoinToken` of purpose `sched`, `ListScheds`, `RemoveSched`.
//!
//! A scheduler is `spiffe://TD/ringzero/sched/<name>`, recorded in the users table under
//! `sched:<name>` with the built-in `scheduler` role (see `command::principal`), so it reuses the
//! user flows end to end:
//! - its token is an invite ([`Op::IssueUserInvite`]: a pinned one-time join token, only the
//!   SHA-256 of its secret stored), issued by an admin (`cluster:admin` on `cluster`: the
//!   principal it creates may place allocations, moving identities that submitted jobs name onto
//!   nodes, in its namespace or everywhere — a right no other role grants, so no role below
//!   admin may hand it out);
//! - it redeems the token with `Login` (first contact, pin checked before the secret is sent;
//!   the compare-and-set creates the record), and renews with `Login` over mTLS with its own
//!   SVID and its own, unattenuated capability;
//! - every credential is recorded before release ([`Op::IssueUserCredential`]), and lasts at
//!   most [`MAX_SCHED_TTL`]; the gate opens nothing for a `ringzero/sched/<name>` certificate
//!   unless its serial was recorded for that scheduler from the CA that signed it;
//! - `RemoveSched` is [`Op::RemoveUser`] on its record: its unexpired serials join the revoked
//!   serials and its capabilities (with every token minted from them) the revocations.

use std::time::Duration;

use ringzero_policy::join::JoinToken;
use ringzero_policy::{NodeName, Operation};
use ringzero_proto::pb;

use super::status::invalid;
use super::users::rights_summary;
use super::{AuthorityService, MAX_JOIN_TOKEN_TTL, res, status_of};
use crate::command::{Op, Outcome, Rejection, SCHED_ROLE, User, sched_key};
use crate::gate::now_ms;

/// The longest (and default) lifetime of a scheduler's credentials: it renews itself at half of
/// it, so a stolen credential is good for at most this long.
pub(crate) const MAX_SCHED_TTL: Duration = Duration::from_secs(3600);
/// How long a scheduler token may be redeemed when no lifetime is asked for.
const DEFAULT_SCHED_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// A scheduler's credential lifetime for `asked` seconds: [`MAX_SCHED_TTL`] for 0, capped at it.
pub(crate) fn sched_ttl(asked: u64) -> Duration {
    if asked == 0 {
        MAX_SCHED_TTL
    } else {
        Duration::from_secs(asked).min(MAX_SCHED_TTL)
    }
}

fn parse_sched_name(s: &str) -> Result<NodeName, tonic::Status> {
    NodeName::parse(s).map_err(|e| invalid(format!("scheduler name {s:?}: {e}")))
}

impl AuthorityService {
    /// A one-time token enrolling scheduler `node_name` (optionally confined to `namespace`).
    pub(crate) async fn create_sched_token_impl(
        &self,
        req: tonic::Request<pb::CreateJoinTokenRequest>,
    ) -> Result<tonic::Response<pb::CreateJoinTokenReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref();
        let name = parse_sched_name(&r.node_name)?;
        let namespace = (!r.namespace.is_empty()).then(|| r.namespace.clone());
        let sched = User::sched(name.as_str(), namespace);
        sched.validate().map_err(invalid)?;
        let ttl = if r.ttl_seconds == 0 {
            DEFAULT_SCHED_TOKEN_TTL
        } else {
            Duration::from_secs(r.ttl_seconds.clamp(1, MAX_JOIN_TOKEN_TTL.as_secs()))
        };
        let allowed = self
            .gate
            .check(&req, Operation::ClusterAdmin, &res("cluster")?, None)
            .await?;
        let existing = self
            .sm
            .reader()
            .map_err(status_of)?
            .user(&sched.name)
            .map_err(status_of)?;
        if existing.is_some() {
            return Err(tonic::Status::already_exists(format!(
                "scheduler {name} already exists (remove it first)"
            )));
        }
        // A bad namespace fails now, not at the scheduler's first start.
        self.role_rights(SCHED_ROLE, sched.namespace.as_deref())?;
        let token = JoinToken::generate(self.pin()).map_err(status_of)?;
        let expires_ms = now_ms().saturating_add(ttl.as_millis() as u64);
        let mut cmd = allowed.command(Op::IssueUserInvite {
            token_id: token.id,
            secret_sha256: token.secret_sha256(),
            user: sched.clone(),
            expires_ms,
        });
        cmd.audit.details.extend([
            ("token_id".into(), hex::encode(token.id)),
            ("sched".into(), name.to_string()),
            ("rights".into(), rights_summary(&sched)),
        ]);
        if let Outcome::Rejected(why) = self.propose(cmd).await?.outcome {
            return Err(tonic::Status::failed_precondition(format!(
                "refused: {why}"
            )));
        }
        Ok(tonic::Response::new(pb::CreateJoinTokenReply {
            token: token.to_text().to_string(),
            expires_unix: expires_ms / 1000,
        }))
    }

    pub(crate) async fn list_scheds_impl(
        &self,
        req: tonic::Request<pb::ListSchedsRequest>,
    ) -> Result<tonic::Response<pb::ListSchedsReply>, tonic::Status> {
        let reader = self
            .read_gated(&req, Operation::UserRead, &res("user")?)
            .await?;
        let mut scheds = Vec::new();
        for u in reader.users().map_err(status_of)? {
            if let Some(name) = u.sched_name() {
                scheds.push(pb::SchedInfo {
                    name: name.to_owned(),
                    namespace: u.namespace.clone().unwrap_or_default(),
                    suspended: reader.is_suspended(&u.name).map_err(status_of)?,
                });
            }
        }
        Ok(tonic::Response::new(pb::ListSchedsReply { scheds }))
    }

    pub(crate) async fn remove_sched_impl(
        &self,
        req: tonic::Request<pb::RemoveSchedRequest>,
    ) -> Result<tonic::Response<pb::RemoveSchedReply>, tonic::Status> {
        self.require_leader()?;
        let name = parse_sched_name(&req.get_ref().name)?;
        let allowed = self
            .gate
            .check(&req, Operation::ClusterAdmin, &res("cluster")?, None)
            .await?;
        let mut cmd = allowed.command(Op::RemoveUser {
            name: sched_key(name.as_str()),
        });
        cmd.audit.details.push(("sched".into(), name.to_string()));
        match self.propose(cmd).await?.outcome {
            Outcome::Rejected(Rejection::NotFound) => {
                Err(tonic::Status::not_found(format!("no scheduler {name}")))
            }
            Outcome::Rejected(why) => Err(super::status::rejected("refused", &why)),
            _ => {
                self.gate.forget_revoked();
                Ok(tonic::Response::new(pb::RemoveSchedReply {}))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sched_credentials_are_short() {
        assert_eq!(sched_ttl(0), MAX_SCHED_TTL);
        assert_eq!(sched_ttl(30), Duration::from_secs(30));
        assert_eq!(sched_ttl(7 * 24 * 3600), MAX_SCHED_TTL);
    }
}
