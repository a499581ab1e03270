//! Mesh policy: `MeshAllow`, `MeshDeny`, `ListMeshPolicies`, and the policies one agent's feed
//! carries.
//!
//! A rule `(to, from)` lets workloads matching `from` connect to workloads matching `to`. Writes
//! are gated on `mesh:policy` on the path of `to`'s base ID (`spiffe://TD/ns/shop/db` →
//! `ns/shop/db`, `spiffe://TD/ns/shop/*` → `ns/shop`), so a namespace decides who may reach its
//! own workloads and nothing else; a `to` outside `ns/…` (a reserved `ringzero/…` or `user/…`
//! path above all) is refused whatever the caller holds, and the refusal is recorded as a
//! denial. Lists are gated on `mesh:read` on their scope.

use ringzero_policy::{Operation, Resource, SpiffeId, SpiffeIdPattern};
use ringzero_proto::pb;

use super::nodes::*;
use super::{AuthorityService, status_of};
use crate::command::{AuditDecision, MeshPolicy, Op};
use crate::state::MeshPolicyRecord;

fn to_pb(r: &MeshPolicyRecord) -> pb::MeshPolicy {
    pb::MeshPolicy {
        to: r.policy.to.clone(),
        from: r.policy.from.clone(),
        created_ms: r.created_ms,
        actor: r.actor.clone(),
    }
}

/// The path of a pattern's base ID as a resource (the root for a bare trust domain).
fn base_resource(p: &SpiffeIdPattern) -> Result<Resource, tonic::Status> {
    let (SpiffeIdPattern::Exact(id) | SpiffeIdPattern::Below(id)) = p;
    let segments: Vec<&str> = id.segments().collect();
    Resource::from_segments(&segments).map_err(invalid)
}

/// The mesh policies whose `to` matches the SPIFFE ID of an entry of `node`: what that node's
/// agent receives, and nothing about other nodes' workloads.
pub(super) fn node_policies(
    reader: &crate::StateReader,
    node: &str,
) -> Result<Vec<pb::MeshPolicy>, tonic::Status> {
    let ids: Vec<SpiffeId> = reader
        .entries_of(node)
        .map_err(status_of)?
        .iter()
        .filter_map(|e| SpiffeId::parse(&e.spiffe_id).ok())
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(reader
        .mesh_policies()
        .map_err(status_of)?
        .iter()
        .filter(|r| {
            SpiffeIdPattern::parse(&r.policy.to).is_ok_and(|to| ids.iter().any(|id| to.matches(id)))
        })
        .map(to_pb)
        .collect())
}

impl AuthorityService {
    /// `MeshAllow` (`allow`) or `MeshDeny`.
    pub(crate) async fn mesh_write_impl(
        &self,
        req: tonic::Request<pb::MeshPolicyRequest>,
        allow: bool,
    ) -> Result<tonic::Response<pb::MeshPolicyReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref();
        let parse = |what: &str, s: &str| {
            SpiffeIdPattern::parse(s).map_err(|e| invalid(format!("{what} {s:?}: {e}")))
        };
        let to = parse("--to", &r.to)?;
        let from = parse("--from", &r.from)?;
        let td = self.gate.trust_domain();
        for p in [&to, &from] {
            if p.trust_domain_name() != td.as_str() {
                return Err(invalid(format!("{p} is not in trust domain {td}")));
            }
        }
        let policy = MeshPolicy {
            to: to.to_string(),
            from: from.to_string(),
        };
        let resource = base_resource(&to)?;
        let protects_a_namespace = MeshPolicy::protects_a_namespace(&to);
        let shape = policy.validate();
        if protects_a_namespace && let Err(e) = shape {
            // Malformed (too long, a bare trust domain as --from): invalid input, refused before
            // any decision, like an unparsable pattern.
            return Err(invalid(e));
        }
        let allowed = self
            .gate
            .check(&req, Operation::MeshPolicy, &resource, None)
            .await?;
        if !protects_a_namespace {
            // Refused whatever the caller's rights, and recorded: a rule protecting a reserved
            // identity (an authority member, a node, a user) is not a namespace's to write.
            let why = shape.err().map_or_else(String::new, |e| e.to_string());
            let mut audit = allowed.audit.clone();
            audit.decision = AuditDecision::Deny;
            audit.reason = Some(format!("not_a_namespace: {why}"));
            self.gate.record_denial(audit).await;
            return Err(invalid(why));
        }
        let op = if allow {
            Op::PutMeshPolicy {
                policy: policy.clone(),
            }
        } else {
            Op::DeleteMeshPolicy {
                policy: policy.clone(),
            }
        };
        let mut cmd = allowed.command(op);
        cmd.audit.details.extend([
            ("to".into(), policy.to.clone()),
            ("from".into(), policy.from.clone()),
        ]);
        let resp = self.propose(cmd).await?;
        super::status::accepted(if allow { "mesh allow" } else { "mesh deny" }, resp.outcome)?;
        let stored = self
            .sm
            .reader()
            .map_err(status_of)?
            .mesh_policies()
            .map_err(status_of)?
            .into_iter()
            .find(|p| p.policy == policy);
        Ok(tonic::Response::new(pb::MeshPolicyReply {
            policy: Some(stored.as_ref().map_or_else(
                || pb::MeshPolicy {
                    to: policy.to.clone(),
                    from: policy.from.clone(),
                    ..Default::default()
                },
                to_pb,
            )),
        }))
    }

    pub(crate) async fn list_mesh_policies_impl(
        &self,
        req: tonic::Request<pb::ListMeshPoliciesRequest>,
    ) -> Result<tonic::Response<pb::ListMeshPoliciesReply>, tonic::Status> {
        self.require_leader()?;
        let scope =
            Resource::parse(&req.get_ref().scope).map_err(|e| invalid(format!("scope: {e}")))?;
        let allowed = self
            .gate
            .check(&req, Operation::MeshRead, &scope, None)
            .await?;
        self.gate.record(&allowed).await?;
        let policies = self
            .sm
            .reader()
            .map_err(status_of)?
            .mesh_policies()
            .map_err(status_of)?
            .iter()
            .filter(|r| r.policy.resource().is_ok_and(|res| scope.covers(&res)))
            .map(to_pb)
            .collect();
        Ok(tonic::Response::new(pb::ListMeshPoliciesReply { policies }))
    }
}
