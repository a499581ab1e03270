//! Issuing admin credentials: at bootstrap, and through the break-glass admin socket.

use std::time::{Duration, SystemTime};

use ringzero_policy::svid::{LeafKey, LeafRequest, generate_key};
use ringzero_policy::token::{Lifetime, MintRequest};
use ringzero_policy::{Role, TrustDomain};
use ringzero_proto::client::Profile;

use crate::command::{AuditDecision, AuditRecord, Command, CommandId, KeyKind, Op, Outcome};
use crate::gate::now_ms;
use crate::keys::NodeKeys;
use crate::store::StateMachineStore;
use crate::{NodeId, Raft};

use super::*;

pub(super) fn local_audit(
    node_id: NodeId,
    operation: &str,
    resource: &str,
    details: Vec<(String, String)>,
) -> AuditRecord {
    AuditRecord {
        actor: "local:bootstrap".into(),
        revocation_ids: vec![],
        operation: operation.into(),
        resource: resource.into(),
        decision: AuditDecision::Allow,
        reason: None,
        authority: node_id,
        request_id: crate::command::random_hex(),
        details,
    }
}

pub(super) async fn propose(raft: &Raft, audit: AuditRecord, op: Op) -> Result<Outcome, NodeError> {
    let cmd = Command {
        id: CommandId::fresh(),
        time_ms: now_ms(),
        audit,
        op,
    };
    Ok(crate::propose(raft, cmd).await.map_err(raft_err)?.outcome)
}

/// Issues an admin SVID and an admin capability bound to it, recording both first: the
/// `admin` user (role admin) is stored, or restored, and the credential is recorded for it
/// (`IssueUserCredential`), so `login` renews it and `user remove admin` revokes it. Proposed
/// directly to Raft: this node must lead. `actor` names who asked (`local:bootstrap`,
/// `local:admin-socket …`).
pub(crate) async fn admin_profile(
    raft: &Raft,
    keys: &NodeKeys,
    td: &TrustDomain,
    node_id: NodeId,
    listen: &str,
    ttl: Duration,
    actor: &str,
) -> Result<Profile, NodeError> {
    let admin_id = td.id_with_path(&["user", "admin"])?;
    let key = generate_key()?;
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let now = SystemTime::now();
    let svid = keys.ca.issue(&LeafRequest {
        id: &admin_id,
        key: LeafKey::PublicKey(&spki),
        ttl,
        dns_names: &[],
        now,
    })?;
    let token = ringzero_policy::token::mint(
        &keys.biscuit,
        &MintRequest {
            subject: admin_id.clone(),
            rights: Role::Admin.rights(None)?,
            ttl: Some(ttl),
            bind_to_subject: true,
            bind_node: None,
        },
        &Lifetime {
            default: ttl,
            max: ttl,
        },
        now,
    )?;
    let view = ringzero_policy::token::inspect(&token)?;
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let not_after = unix(svid.not_after);
    let mut audit = local_audit(
        node_id,
        "user:write",
        "user/admin",
        vec![("rights".into(), "role admin".into())],
    );
    audit.actor = actor.to_owned();
    let admin = crate::command::User {
        name: "admin".into(),
        role: "admin".into(),
        namespace: None,
    };
    if let Outcome::Rejected(why) =
        propose(raft, audit.clone(), Op::PutUser { user: admin }).await?
    {
        return Err(NodeError::Refused {
            what: "storing the admin user",
            why,
        });
    }
    audit.operation = "token:mint".into();
    audit.details = vec![
        ("svid_serial".into(), hex::encode(&svid.serial)),
        ("spiffe_id".into(), admin_id.to_string()),
        (
            "public_key_sha256".into(),
            hex::encode(&svid.public_key_sha256),
        ),
        ("not_after".into(), not_after.to_string()),
        ("rights".into(), "role admin".into()),
    ];
    audit.revocation_ids = view
        .blocks
        .iter()
        .map(|b| b.revocation_id.to_hex())
        .collect();
    // Committed before the credential is written anywhere.
    let record = Op::IssueUserCredential {
        user: "admin".into(),
        serial: svid.serial.clone(),
        not_after_ms: not_after.saturating_mul(1000),
        revocation_ids: view
            .blocks
            .iter()
            .map(|b| b.revocation_id.0.clone())
            .collect(),
        expires_ms: unix(now)
            .saturating_add(ttl.as_secs())
            .saturating_add(1)
            .saturating_mul(1000),
    };
    if let Outcome::Rejected(why) = propose(raft, audit, record).await? {
        return Err(NodeError::Refused {
            what: "recording the admin credential",
            why,
        });
    }
    Ok(Profile::new(
        td,
        vec![listen.to_owned()],
        &[keys.ca.cert_der().clone()],
        &svid.chain,
        &key.serialize_der(),
        &token,
    ))
}

/// Pins the audit keys of the replicated bundle in `profile`, as the CAs are pinned.
pub(crate) fn pin_audit_keys(
    profile: &mut Profile,
    sm: &StateMachineStore,
) -> Result<(), NodeError> {
    let reader = sm.reader()?;
    for k in reader.keys()? {
        if k.kind != KeyKind::Audit {
            continue;
        }
        let not_after_ms = crate::service::wire_not_after(&reader, &k)?;
        let key = ringzero_proto::pb::BundleKey {
            key_id: k.id,
            authority: k.authority,
            kind: "audit".into(),
            public_key: k.public_der,
            status: crate::service::key_status_name(k.status).into(),
            not_after_ms,
        };
        profile
            .audit_keys
            .extend(ringzero_proto::client::AuditKeyPin::from_bundle_key(&key));
    }
    Ok(())
}
