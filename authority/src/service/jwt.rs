//! JWT-SVIDs: `MintJwtSvid`, called by an agent for one entry parented to its own node.
//!
//! The authorization model is `MintSvids`' exactly: the node comes from the caller's SVID
//! (never from the request), must be active and hold `svid:mint` on `node/<name>`; the entry
//! must be parented to that node and its SPIFFE ID must not be reserved (`ringzero/…`,
//! `user/…`). Which workload on the node may have the token is the agent's decision
//! (attestation), as for X.509-SVIDs.
//!
//! The token is signed here with this node's own JWT key (ES256, `kid` = the key's id in the
//! bundle), for [`DEFAULT_JWT_TTL`] (the node's `jwt_svid_ttl_s`, within
//! [`MIN_JWT_TTL`]–[`MAX_JWT_TTL`]) and never longer than the entry's TTL. One audit record per
//! call — the SPIFFE ID, entry, node, audiences, `kid`, times and the SHA-256 of the token —
//! is committed before the token is returned; an agent caches tokens until half-life, so
//! workloads' fetches do not each cost a record.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringzero_policy::SpiffeId;
use ringzero_proto::pb;

use super::nodes::{MAX_ENTRY_TTL, MIN_ENTRY_TTL, invalid};
use super::{AuthorityService, status_of};
use crate::command::{AuditDecision, KeyKind, KeyStatus, Op};

/// The default lifetime of a JWT-SVID (SPIRE's default).
pub(crate) const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// The bounds on a node's configured JWT-SVID lifetime.
pub(crate) const MIN_JWT_TTL: Duration = Duration::from_secs(10);
pub(crate) const MAX_JWT_TTL: Duration = Duration::from_secs(3600);

impl AuthorityService {
    /// This node's JWT key id in the bundle, if the key is published or active (never once
    /// retired or compromised: a removed member signs nothing).
    fn jwt_kid(&self, node_keys: &crate::keys::NodeKeys) -> Result<String, tonic::Status> {
        let own = node_keys
            .jwt_public_spki()
            .map_err(|e| super::status::internal(e.to_string()))?;
        let keys = self.key_records()?;
        let k = keys
            .iter()
            .find(|k| k.kind == KeyKind::Jwt && k.public_der == own)
            .ok_or_else(|| {
                tonic::Status::unavailable("this node's JWT key is not published yet")
            })?;
        match k.status {
            KeyStatus::Active | KeyStatus::Published => Ok(k.id.to_string()),
            KeyStatus::Retired | KeyStatus::Compromised => Err(tonic::Status::failed_precondition(
                "this node's JWT key no longer signs",
            )),
        }
    }

    pub(crate) async fn mint_jwt_svid_impl(
        &self,
        req: tonic::Request<pb::MintJwtSvidRequest>,
    ) -> Result<tonic::Response<pb::MintJwtSvidReply>, tonic::Status> {
        self.require_leader()?;
        let (name, allowed) = self.gate_agent(&req).await?;
        let r = req.get_ref();
        let audience = ringzero_policy::jwt::audiences(&r.audience).map_err(invalid)?;
        let entry = if r.entry_id.len() <= 64 {
            self.sm
                .reader()
                .map_err(status_of)?
                .entry(&r.entry_id)
                .map_err(status_of)?
        } else {
            None
        };
        let Some(entry) = entry else {
            return Err(tonic::Status::not_found("no such entry"));
        };
        let deny = |reason: String, resource: String| {
            let mut audit = allowed.audit.clone();
            audit.decision = AuditDecision::Deny;
            audit.reason = Some(reason);
            audit.resource = resource;
            audit.details.push(("svid_type".into(), "jwt".into()));
            crate::command::Command {
                audit,
                ..allowed.command(Op::AuditOnly)
            }
        };
        if entry.parent != name.as_str() {
            // Never signed, and recorded: an agent asking for another node's identity is
            // misconfigured or compromised.
            let cmd = deny(
                format!("entry {} is parented to another node", entry.id),
                format!("node/{}", entry.parent),
            );
            self.propose(cmd).await?;
            return Err(tonic::Status::permission_denied(
                "entry is not parented to this node",
            ));
        }
        let id = match SpiffeId::parse(&entry.spiffe_id) {
            Ok(id) if !id.is_reserved() => id,
            Ok(id) => {
                let cmd = deny(
                    format!("reserved_id: {id} is reserved"),
                    format!("node/{name}"),
                );
                self.propose(cmd).await?;
                return Err(tonic::Status::permission_denied(
                    "the entry's SPIFFE ID is reserved",
                ));
            }
            Err(_) => return Err(invalid("entry has an invalid SPIFFE ID")),
        };
        let entry_ttl =
            Duration::from_secs(u64::from(entry.ttl_s)).clamp(MIN_ENTRY_TTL, MAX_ENTRY_TTL);
        let ttl = self.jwt_ttl.min(entry_ttl);
        // The kid and the key from one read of the current keys: a rotation in between must
        // not sign with one key under the other's id.
        let node_keys = self.keys.load();
        let kid = self.jwt_kid(&node_keys)?;
        let key = node_keys
            .jwt_key_pair()
            .map_err(|e| super::status::internal(e.to_string()))?;
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| super::status::internal("clock before 1970"))?
            .as_secs();
        let exp = iat.saturating_add(ttl.as_secs());
        let token = ringzero_policy::jwt::sign(&key, &kid, &id, &audience, iat, exp)
            .map_err(|e| super::status::internal(e.to_string()))?;

        let mut audit = allowed.audit.clone();
        audit.resource = format!("node/{name}");
        let shown: String = audience.join(",").chars().take(1024).collect();
        audit.details.extend([
            ("svid_type".into(), "jwt".into()),
            ("spiffe_id".into(), id.to_string()),
            ("node".into(), name.to_string()),
            ("entry_id".into(), entry.id.clone()),
            ("audience".into(), shown),
            ("kid".into(), kid.clone()),
            ("issued_at".into(), iat.to_string()),
            ("not_after".into(), exp.to_string()),
            (
                "jwt_sha256".into(),
                hex::encode(ringzero_policy::join::sha256(token.as_bytes())),
            ),
        ]);
        // Recorded before the token leaves this node; withheld if the record did not commit.
        let cmd = crate::command::Command {
            audit,
            ..allowed.command(Op::AuditOnly)
        };
        super::status::accepted("refused", self.propose(cmd).await?.outcome)?;
        Ok(tonic::Response::new(pb::MintJwtSvidReply {
            token,
            spiffe_id: id.to_string(),
            issued_at_ms: iat.saturating_mul(1000),
            expires_at_ms: exp.saturating_mul(1000),
            key_id: kid,
        }))
    }
}
