//! Roles and delegation: `ApplyRoles`, `ListRoles`, `MintToken`, `RevokeToken`.
//!
//! - Custom roles are named sets of rights stored in the replicated state; the built-in names
//!   (admin, operator, developer, auditor) are reserved.
//! - `MintToken` hands on part of the caller's own authority: every requested right must be
//!   allowed by the caller's own capability (decided by the gate exactly as a call would be),
//!   and the new token never outlives it. It is bound to its subject's SVID.
//! - `RevokeToken` revokes a block: a whole token's last block (it and every attenuation of it,
//!   never its parent), or a revocation id. The revocation replicates; every node's gate forgets
//!   cached tokens it covers as it applies (see `node::spawn_revocation_watch`).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use ringzero_policy::rights::Scope;
use ringzero_policy::token::{Lifetime, MintRequest, RevocationId};
use ringzero_policy::{Operation, Resource, Right, Role, SpiffeId};
use ringzero_proto::pb;

use super::{AuthorityService, status_of};
use crate::command::{Op, Outcome, RoleDef, limits};

/// The longest a revocation is kept when the token's own expiry is unknown: the longest any
/// token may live.
pub(crate) const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The default lifetime of a delegated token.
pub(crate) const DEFAULT_DELEGATED_TTL: Duration = Duration::from_secs(3600);
/// The most roles one `ApplyRoles` call may carry.
pub(crate) const MAX_ROLES_PER_APPLY: usize = 64;

use super::status::invalid;

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Maps a command that apply refused to the call's status.
fn refused(outcome: Outcome) -> Result<Outcome, tonic::Status> {
    super::status::accepted("refused", outcome)
}

/// A built-in role as the API lists it; a namespaced right shows its prefix as `ns/<namespace>`.
fn builtin_info(role: Role) -> pb::RoleInfo {
    pb::RoleInfo {
        name: role.name().to_owned(),
        rights: role
            .grants()
            .into_iter()
            .map(|(op, scope)| pb::RoleRight {
                operation: op.as_str().to_owned(),
                resource: match scope {
                    Scope::All => String::new(),
                    Scope::Fixed(p) => p.to_owned(),
                    Scope::Namespace => "ns/<namespace>".to_owned(),
                    Scope::NamespaceOr("") => "ns/<namespace> (all without one)".to_owned(),
                    Scope::NamespaceOr(p) => format!("ns/<namespace> ({p} without one)"),
                },
            })
            .collect(),
        builtin: true,
        namespaced: role.needs_namespace(),
    }
}

/// Checks one custom role as submitted: a valid, unreserved name and at least one right, each
/// an operation of the vocabulary on a well-formed resource prefix.
fn parse_role(info: &pb::RoleInfo) -> Result<RoleDef, String> {
    let name = info.name.as_str();
    if Role::ALL.iter().any(|r| r.name() == name) {
        return Err(format!(
            "role name {name:?} is reserved for a built-in role"
        ));
    }
    ringzero_policy::NodeName::parse(name).map_err(|e| format!("role name {name:?}: {e}"))?;
    if info.rights.is_empty() {
        return Err(format!("role {name}: give at least one right"));
    }
    if info.rights.len() > limits::MAX_RIGHTS {
        return Err(format!(
            "role {name}: at most {} rights",
            limits::MAX_RIGHTS
        ));
    }
    let mut rights = BTreeSet::new();
    for r in &info.rights {
        let op: Operation = r
            .operation
            .parse()
            .map_err(|e| format!("role {name}: {e}"))?;
        let prefix = Resource::parse(&r.resource)
            .map_err(|e| format!("role {name}: resource {:?}: {e}", r.resource))?;
        rights.insert((op.as_str().to_owned(), prefix.as_str().to_owned()));
    }
    Ok(RoleDef {
        name: name.to_owned(),
        rights: rights.into_iter().collect(),
    })
}

fn custom_info(def: RoleDef) -> pb::RoleInfo {
    pb::RoleInfo {
        name: def.name,
        rights: def
            .rights
            .into_iter()
            .map(|(operation, resource)| pb::RoleRight {
                operation,
                resource,
            })
            .collect(),
        builtin: false,
        namespaced: false,
    }
}

/// The longest prefix, by whole segments, that every right's prefix lies under.
fn common_prefix(rights: &[Right]) -> Resource {
    let mut iter = rights.iter();
    let Some(first) = iter.next() else {
        return Resource::root();
    };
    let mut common: Vec<&str> = if first.prefix.is_root() {
        Vec::new()
    } else {
        first.prefix.as_str().split('/').collect()
    };
    for r in iter {
        let segs: Vec<&str> = if r.prefix.is_root() {
            Vec::new()
        } else {
            r.prefix.as_str().split('/').collect()
        };
        let same = common.iter().zip(&segs).take_while(|(a, b)| a == b).count();
        common.truncate(same);
    }
    Resource::from_segments(&common).unwrap_or_else(|_| Resource::root())
}

/// A one-line summary of rights for audit records: `op on prefix, …`.
fn rights_summary(rights: &[Right]) -> String {
    rights
        .iter()
        .map(|r| {
            let p = if r.prefix.is_root() {
                "(all)"
            } else {
                r.prefix.as_str()
            };
            format!("{} on {p}", r.operation)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl AuthorityService {
    pub(crate) async fn apply_roles_impl(
        &self,
        req: tonic::Request<pb::ApplyRolesRequest>,
    ) -> Result<tonic::Response<pb::ApplyRolesReply>, tonic::Status> {
        self.require_leader()?;
        let roles = &req.get_ref().roles;
        if roles.is_empty() {
            return Err(invalid("no roles given"));
        }
        if roles.len() > MAX_ROLES_PER_APPLY {
            return Err(invalid(format!(
                "at most {MAX_ROLES_PER_APPLY} roles per call"
            )));
        }
        // Everything is checked before anything is stored.
        let mut defs = Vec::with_capacity(roles.len());
        let mut names = BTreeSet::new();
        for info in roles {
            let def = parse_role(info).map_err(invalid)?;
            if !names.insert(def.name.clone()) {
                return Err(invalid(format!("role {} is given twice", def.name)));
            }
            defs.push(def);
        }
        let mut applied = Vec::with_capacity(defs.len());
        for def in defs {
            let resource =
                Resource::from_segments(&["role", def.name.as_str()]).map_err(invalid)?;
            let allowed = self
                .gate
                .check(&req, Operation::RoleWrite, &resource, None)
                .await?;
            let mut cmd = allowed.command(Op::PutRole { role: def.clone() });
            cmd.audit.details.push((
                "rights".into(),
                def.rights
                    .iter()
                    .map(|(op, p)| format!("{op} on {}", if p.is_empty() { "(all)" } else { p }))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
            refused(self.propose(cmd).await?.outcome)?;
            applied.push(def.name);
        }
        Ok(tonic::Response::new(pb::ApplyRolesReply { applied }))
    }

    pub(crate) async fn list_roles_impl(
        &self,
        req: tonic::Request<pb::ListRolesRequest>,
    ) -> Result<tonic::Response<pb::ListRolesReply>, tonic::Status> {
        self.require_leader()?;
        let resource = Resource::parse("role").map_err(invalid)?;
        let allowed = self
            .gate
            .check(&req, Operation::RoleRead, &resource, None)
            .await?;
        let custom = self
            .sm
            .reader()
            .and_then(|r| r.roles())
            .map_err(status_of)?;
        self.gate.record(&allowed).await?;
        let roles = Role::ALL
            .iter()
            .map(|r| builtin_info(*r))
            .chain(custom.into_iter().map(custom_info))
            .collect();
        Ok(tonic::Response::new(pb::ListRolesReply { roles }))
    }

    /// The rights a `MintToken` request asks for. Without a resource, each operation takes the
    /// narrowest prefix among the caller's own rights that grant it.
    fn requested_rights<T>(
        &self,
        req: &tonic::Request<T>,
        r: &pb::MintTokenRequest,
    ) -> Result<Vec<Right>, tonic::Status> {
        if !r.rights.is_empty() {
            if !r.operations.is_empty() || !r.resource.is_empty() {
                return Err(invalid(
                    "give either rights, or operations with an optional resource",
                ));
            }
            if r.rights.len() > limits::MAX_RIGHTS {
                return Err(invalid(format!("at most {} rights", limits::MAX_RIGHTS)));
            }
            return r
                .rights
                .iter()
                .map(|x| {
                    let op: Operation = x.operation.parse().map_err(invalid)?;
                    let prefix = Resource::parse(&x.resource).map_err(invalid)?;
                    Ok(Right::new(op, prefix))
                })
                .collect();
        }
        if r.operations.is_empty() {
            return Err(invalid("give at least one operation"));
        }
        if r.operations.len() > limits::MAX_RIGHTS {
            return Err(invalid(format!(
                "at most {} operations",
                limits::MAX_RIGHTS
            )));
        }
        let ops = r
            .operations
            .iter()
            .map(|o| o.parse::<Operation>().map_err(invalid))
            .collect::<Result<BTreeSet<_>, _>>()?;
        if !r.resource.is_empty() {
            let prefix = Resource::parse(&r.resource).map_err(invalid)?;
            return Ok(ops
                .into_iter()
                .map(|op| Right::new(op, prefix.clone()))
                .collect());
        }
        // The gate verifies the capability next; a missing or unreadable one has no rights.
        let own = self
            .gate
            .presented_token(req)
            .and_then(|t| ringzero_policy::token::inspect(&t).ok())
            .map(|v| v.rights)
            .unwrap_or_default();
        // An operation the caller holds nowhere asks for the root: refused by the gate or the
        // widening check, with an audit record.
        Ok(ops
            .into_iter()
            .map(|op| {
                let prefix = own
                    .iter()
                    .filter(|x| x.operation == op.as_str())
                    .filter_map(|x| Resource::parse(&x.prefix).ok())
                    .max_by_key(|p| p.as_str().len())
                    .unwrap_or_else(Resource::root);
                Right::new(op, prefix)
            })
            .collect())
    }

    pub(crate) async fn mint_token_impl(
        &self,
        req: tonic::Request<pb::MintTokenRequest>,
    ) -> Result<tonic::Response<pb::MintTokenReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref();
        let subject: SpiffeId = r
            .subject
            .parse()
            .map_err(|e| invalid(format!("subject: {e}")))?;
        if !subject.is_member_of(self.gate.trust_domain()) {
            return Err(invalid(format!(
                "subject {subject} is not of trust domain {}",
                self.gate.trust_domain()
            )));
        }
        let mut rights = self.requested_rights(&req, r)?;
        rights.sort();
        rights.dedup();
        let allowed = self
            .gate
            .check(&req, Operation::TokenMint, &common_prefix(&rights), None)
            .await
            .map_err(|e| match rights.iter().find(|x| x.prefix.is_root()) {
                // Say why the scope became the root: the caller asked for an operation without
                // a resource, and holds it nowhere.
                Some(x)
                    if e.code() == tonic::Code::PermissionDenied
                        && r.resource.is_empty()
                        && r.rights.is_empty() =>
                {
                    tonic::Status::permission_denied(format!(
                        "{} (asked for {} without --resource: delegating it needs it on every \
                         resource, or give a resource you hold it on)",
                        e.message(),
                        x.operation
                    ))
                }
                _ => e,
            })?;
        // Never more than the caller holds: its own capability must allow every right, on the
        // whole prefix, for the caller itself.
        if let Some(wider) = rights.iter().find(|x| {
            !self
                .gate
                .also_allows(&req, &allowed.peer, x.operation, &x.prefix)
        }) {
            let mut cmd = allowed.command(Op::AuditOnly);
            cmd.audit.decision = crate::command::AuditDecision::Deny;
            let wider = rights_summary(std::slice::from_ref(wider));
            cmd.audit.reason = Some(format!("delegation would widen: {wider}"));
            cmd.audit
                .details
                .push(("subject".into(), subject.to_string()));
            if let Err(e) = self.propose(cmd).await {
                tracing::warn!(error = %e, "could not record a refused delegation");
            }
            return Err(tonic::Status::permission_denied(format!(
                "denied: your capability does not allow {wider}; a delegated token cannot \
                 grant more than its minter holds"
            )));
        }
        // Never beyond the caller's own token.
        let now = SystemTime::now();
        // The earliest time check of *every* block of the caller's token, whatever its syntax
        // (`policy` refuses any other shape of time check before this token was allowed).
        let own_expiry = self
            .gate
            .presented_token(&req)
            .map(|t| ringzero_policy::token::expiry(&t))
            .transpose()
            .map_err(invalid)?
            .flatten();
        let remaining = own_expiry.map(|e| e.duration_since(now).unwrap_or_default());
        let cap = remaining.map_or(MAX_TOKEN_LIFETIME, |rem| rem.min(MAX_TOKEN_LIFETIME));
        let ttl = match r.ttl_seconds {
            0 => DEFAULT_DELEGATED_TTL.min(cap),
            s if Duration::from_secs(s) > cap => {
                return Err(invalid(format!(
                    "ttl of {s} s is beyond what your own capability allows ({} s)",
                    cap.as_secs()
                )));
            }
            s => Duration::from_secs(s),
        };
        let token = ringzero_policy::token::mint(
            &self.minting_key()?,
            &MintRequest {
                subject: subject.clone(),
                rights: rights.clone(),
                ttl: Some(ttl),
                bind_to_subject: true,
                bind_node: None,
            },
            &Lifetime {
                default: DEFAULT_DELEGATED_TTL,
                max: MAX_TOKEN_LIFETIME,
            },
            now,
        )
        .map_err(invalid)?;
        let ids: Vec<String> = ringzero_policy::token::revocation_ids(&token)
            .map_err(status_of)?
            .iter()
            .map(RevocationId::to_hex)
            .collect();
        let expires_unix = unix_secs(now).saturating_add(ttl.as_secs());
        // Its lineage: every block of the token presented to mint it. Revoking any of them
        // (or suspending or removing the minter) revokes this one too.
        let parents: Vec<Vec<u8>> = self
            .gate
            .presented_token(&req)
            .and_then(|t| ringzero_policy::token::revocation_ids(&t).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|id| id.0)
            .collect();
        let first_id = ringzero_policy::token::revocation_ids(&token)
            .map_err(status_of)?
            .into_iter()
            .next()
            .map(|id| id.0)
            .ok_or_else(|| super::status::internal("a minted token has no block"))?;
        let mut cmd = allowed.command(Op::RecordMint {
            id: first_id,
            parents,
            minter: allowed.peer.to_string(),
            subject: subject.to_string(),
            expires_ms: expires_unix.saturating_mul(1000),
        });
        cmd.audit.details.extend([
            ("subject".into(), subject.to_string()),
            ("rights".into(), rights_summary(&rights)),
            ("minted_token".into(), ids.join(",")),
            ("expires_unix".into(), expires_unix.to_string()),
        ]);
        // The token is released only once its record is committed.
        super::status::accepted("denied", self.propose(cmd).await?.outcome)?;
        Ok(tonic::Response::new(pb::MintTokenReply {
            token,
            expires_unix,
            revocation_ids: ids,
        }))
    }

    pub(crate) async fn revoke_token_impl(
        &self,
        req: tonic::Request<pb::RevokeTokenRequest>,
    ) -> Result<tonic::Response<pb::RevokeTokenReply>, tonic::Status> {
        self.require_leader()?;
        let now = unix_secs(SystemTime::now());
        let (id, until_unix) = {
            let r = req.get_ref();
            match (r.token.trim(), r.revocation_id.trim()) {
                ("", "") => return Err(invalid("give a token or a revocation id")),
                (t, "") => {
                    let view = ringzero_policy::token::inspect(t).map_err(invalid)?;
                    let last = view
                        .blocks
                        .last()
                        .map(|b| b.revocation_id.clone())
                        .ok_or_else(|| invalid("token has no blocks"))?;
                    let until = view
                        .expires_unix
                        .unwrap_or(now.saturating_add(MAX_TOKEN_LIFETIME.as_secs()));
                    (last, until)
                }
                ("", id) => (
                    RevocationId::from_hex(id).map_err(invalid)?,
                    now.saturating_add(MAX_TOKEN_LIFETIME.as_secs()),
                ),
                _ => return Err(invalid("give a token or a revocation id, not both")),
            }
        };
        let resource = Resource::parse("token").map_err(invalid)?;
        let allowed = self
            .gate
            .check(&req, Operation::TokenRevoke, &resource, None)
            .await?;
        let mut cmd = allowed.command(Op::Revoke {
            ids: vec![id.0.clone()],
            expires_ms: until_unix.saturating_mul(1000),
        });
        cmd.audit.details.extend([
            ("revoked".into(), id.to_hex()),
            ("until_unix".into(), until_unix.to_string()),
        ]);
        refused(self.propose(cmd).await?.outcome)?;
        self.gate.forget_revoked();
        Ok(tonic::Response::new(pb::RevokeTokenReply {
            revoked: vec![id.to_hex()],
            until_unix,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn right(op: Operation, p: &str) -> Right {
        Right::new(op, Resource::parse(p).unwrap_or_default())
    }

    #[test]
    fn common_prefix_is_by_whole_segments() {
        let r = [
            right(Operation::LogsRead, "ns/shop/web"),
            right(Operation::SchedSubmit, "ns/shop/db"),
        ];
        assert_eq!(common_prefix(&r).as_str(), "ns/shop");
        let r = [
            right(Operation::LogsRead, "ns/ab"),
            right(Operation::LogsRead, "ns/a"),
        ];
        assert_eq!(common_prefix(&r).as_str(), "ns");
        assert!(common_prefix(&[right(Operation::LogsRead, "")]).is_root());
    }

    #[test]
    fn reserved_and_unknown_roles_are_refused() {
        let info = |name: &str, op: &str, res: &str| pb::RoleInfo {
            name: name.into(),
            rights: vec![pb::RoleRight {
                operation: op.into(),
                resource: res.into(),
            }],
            builtin: false,
            namespaced: false,
        };
        assert!(parse_role(&info("admin", "logs:read", "ns")).is_err());
        assert!(parse_role(&info("deployer", "logs:write", "ns")).is_err());
        assert!(parse_role(&info("deployer", "logs:read", "ns//x")).is_err());
        assert!(parse_role(&info("deployer", "logs:read", "ns/shop")).is_ok());
    }
}
