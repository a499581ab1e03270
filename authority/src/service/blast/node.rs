//! The reach of machines: an agent node (bounded by its identity to its own entries) and an
//! authority member (bounded by nothing until it is removed).

use std::collections::BTreeSet;

use ringzero_policy::{NodeName, Operation};
use ringzero_proto::pb;

use super::{
    entry_identity, invalid, live_capabilities, live_svids, ms, node_status_name, own_identity,
    right,
};
use crate::command::{KeyKind, KeyStatus, NodeStatus};
use crate::gate::now_ms;
use crate::service::{AuthorityService, MAX_ENTRY_TTL, status_of};
use crate::{NodeId, StateReader};

impl AuthorityService {
    pub(super) fn node_radius(
        &self,
        r: &StateReader,
        name: &NodeName,
    ) -> Result<pb::BlastRadiusReply, tonic::Status> {
        let now = now_ms();
        let id = self
            .gate
            .trust_domain()
            .id_with_path(&["ringzero", "node", name.as_str()])
            .map_err(invalid)?;
        let record = r.node(name.as_str()).map_err(status_of)?;
        let status = record
            .as_ref()
            .map_or("not_enrolled", |rec| node_status_name(rec.status));
        let active = record
            .as_ref()
            .is_some_and(|rec| rec.status == NodeStatus::Active);
        let entries = r.entries_of(name.as_str()).map_err(status_of)?;
        let mut identities = vec![own_identity(&id)];
        identities.extend(entries.iter().map(entry_identity));
        let bound = format!("bound to {id} (its SVID's key) and to node {name}");
        let rights = crate::service::nodes::agent_rights(name)?
            .iter()
            .map(|x| {
                right(
                    x.operation.as_str(),
                    x.prefix.as_str(),
                    "node capability",
                    &bound,
                )
            })
            .collect();
        let mut credentials =
            live_svids(r, r.node_serials(name.as_str()).map_err(status_of)?, now)?;
        let svid_until = credentials
            .iter()
            .filter(|c| !c.revoked)
            .map(|c| c.expires_ms)
            .max()
            .unwrap_or(0);
        let mints = r.mints_for_subject(&id.to_string()).map_err(status_of)?;
        credentials.extend(live_capabilities(
            r,
            mints.into_iter().map(|(rid, rec)| (rid, rec.expires_ms)),
            now,
        )?);
        // A node's capability is bound to its SVID, and the gate honours only the serials
        // recorded for an active node: once it is cut off, the capability is worth nothing.
        let until_ms = credentials
            .iter()
            .filter(|c| !c.revoked && (active || c.kind == "svid"))
            .map(|c| c.expires_ms)
            .max()
            .unwrap_or(0);
        let longest_ttl = entries.iter().map(|e| e.ttl_s).max().unwrap_or(0);
        let mut cut_off = Vec::new();
        let mut notes = vec![format!(
            "its capability grants svid:mint on node/{name} only and is bound to the node's own \
             SVID: whatever a token says, node {name} obtains only the {} entr{} parented to it",
            entries.len(),
            if entries.len() == 1 { "y" } else { "ies" }
        )];
        match record.as_ref().map(|rec| rec.status) {
            Some(NodeStatus::Active) => {
                cut_off.push(format!("ringzero node evict {name}"));
                cut_off.push(format!("ringzero node ban {name}"));
                notes.push(format!(
                    "while active it renews its SVID and obtains a fresh SVID for every entry, \
                     so its reach lasts until it is cut off; `node evict` revokes its serials \
                     and refuses its renewals (`node ban` also stops it from ever \
                     re-enrolling as {name})"
                ));
            }
            Some(NodeStatus::Evicted) => {
                cut_off.push(format!("ringzero node ban {name}"));
                notes.push(
                    "evicted: it can no longer renew or obtain SVIDs; it may re-enroll only \
                     with a new join token (`node ban` stops that too)"
                        .into(),
                );
            }
            Some(NodeStatus::Banned) => notes.push(format!(
                "banned: it can no longer renew, obtain SVIDs or enroll again as {name}"
            )),
            None => notes.push(format!(
                "no node {name} has enrolled: these are the identities a node enrolling under \
                 that name would obtain"
            )),
        }
        if svid_until > 0 || longest_ttl > 0 {
            notes.push(format!(
                "workload SVIDs already issued stay valid until they expire, even once the \
                 node is cut off: X.509 verifiers outside the authority see revoked serials \
                 only through the agents' revocation feed; so the reach ends at the latest \
                 recorded expiry (until), and an SVID issued later lives at most its entry's \
                 TTL (here up to {longest_ttl} s)"
            ));
        }
        let pending: Vec<u64> = r
            .join_tokens()
            .map_err(status_of)?
            .into_iter()
            .filter(|t| {
                t.purpose == crate::command::JoinPurpose::Agent
                    && t.node_name == name.as_str()
                    && !t.used
                    && t.expires_ms > now
            })
            .map(|t| t.expires_ms)
            .collect();
        if !pending.is_empty() {
            notes.push(format!(
                "{} unredeemed join token(s) for {name} exist: whoever holds one can enroll as \
                 {name} unless the name is banned",
                pending.len()
            ));
        }
        Ok(pb::BlastRadiusReply {
            principal: format!("node/{name}"),
            kind: "node".into(),
            status: status.into(),
            identities,
            rights,
            until_cut_off: active,
            until_ms,
            credentials,
            cut_off,
            notes,
            ..Default::default()
        })
    }

    pub(super) fn authority_radius(
        &self,
        r: &StateReader,
        node_id: NodeId,
    ) -> Result<pb::BlastRadiusReply, tonic::Status> {
        let now = now_ms();
        let td = self.gate.trust_domain();
        let member = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .any(|(id, _)| *id == node_id);
        let keys: Vec<crate::KeyRecord> = r
            .keys()
            .map_err(status_of)?
            .into_iter()
            .filter(|k| k.authority == node_id)
            .collect();
        if !member && keys.is_empty() {
            return Err(tonic::Status::not_found(format!(
                "authority {node_id}: never a member of this cluster"
            )));
        }
        // Whether verifiers outside the authority still receive each key, and until when.
        let in_bundle: BTreeSet<u64> = crate::service::bundle_keys(&self.sm)?
            .into_iter()
            .map(|k| k.key_id)
            .collect();
        let issued_until = r.issued_until(node_id).map_err(status_of)?;
        let mut out_keys = Vec::with_capacity(keys.len());
        for k in &keys {
            let trusted_until_ms = match k.status {
                KeyStatus::Compromised => 0,
                _ if !in_bundle.contains(&k.id) => 0,
                KeyStatus::Published | KeyStatus::Active => k.not_after_ms,
                KeyStatus::Retired => match k.kind {
                    // As the bundle decides: until what it was recorded issuing has expired.
                    KeyKind::X509Ca => match issued_until {
                        0 => r
                            .key_retired_ms(k.id)
                            .map_err(status_of)?
                            .unwrap_or(k.published_ms)
                            .saturating_add(ms(MAX_ENTRY_TTL)),
                        t => t,
                    },
                    // Honoured only for tokens the cluster recorded minting, which expire
                    // within the longest token lifetime of the removal.
                    KeyKind::Biscuit => r
                        .key_retired_ms(k.id)
                        .map_err(status_of)?
                        .unwrap_or(k.published_ms)
                        .saturating_add(ms(crate::service::tokens::MAX_TOKEN_LIFETIME)),
                    // Kept to verify what it signed before (old tree heads, JWTs until expiry).
                    KeyKind::Audit | KeyKind::Jwt => k.not_after_ms,
                },
            };
            out_keys.push(pb::BlastKey {
                key_id: k.id,
                kind: crate::service::key_kind_name(k.kind).into(),
                status: crate::service::key_status_name(k.status).into(),
                not_after_ms: k.not_after_ms,
                trusted_until_ms: if trusted_until_ms > now {
                    trusted_until_ms
                } else {
                    0
                },
            });
        }
        let own_id = crate::net::authority_id(td, node_id).map_err(invalid)?;
        let mut notes = Vec::new();
        let mut cut_off = Vec::new();
        let reply = if member {
            cut_off.push(format!("ringzero authority remove {node_id} --compromised"));
            notes.push(
                "a member holds its own CA, Biscuit root key, JWT key and audit key: it can sign \
                 any SVID and mint any capability, for anyone, without asking the other members \
                 (Raft tolerates crashes, not a malicious member), until it is removed; the \
                 audit log (`ringzero audit verify`) is how such acts are detected"
                    .into(),
            );
            notes.push(
                "why --compromised: a plain removal keeps its CA in verifiers' bundles until \
                 everything it issued has expired, and keeps honouring the tokens the cluster \
                 recorded it minting; keys that may have been copied must be trusted nowhere, \
                 so --compromised marks every one compromised at once (everything it issued \
                 stops verifying and must be reissued by the other members)"
                    .into(),
            );
            pb::BlastRadiusReply {
                status: "member".into(),
                identities: vec![
                    own_identity(&own_id),
                    pb::BlastIdentity {
                        spiffe_id: format!("spiffe://{td}/*"),
                        via: "any".into(),
                        ..Default::default()
                    },
                ],
                all_identities: true,
                rights: vec![right(
                    Operation::ClusterAdmin.as_str(),
                    "",
                    "member",
                    "every operation on every resource: it holds signing keys",
                )],
                until_cut_off: true,
                // What it issued outlives a plain removal until then (not `--compromised`).
                until_ms: issued_until,
                ..Default::default()
            }
        } else {
            let retired: Vec<&pb::BlastKey> =
                out_keys.iter().filter(|k| k.status == "retired").collect();
            let trusted_until = out_keys
                .iter()
                .map(|k| k.trusted_until_ms)
                .max()
                .unwrap_or(0);
            if retired.is_empty() {
                notes.push(
                    "removed with its keys marked compromised: verifiers drop them, and nothing \
                     it issued verifies any more"
                        .into(),
                );
            } else {
                cut_off.push(format!("ringzero authority remove {node_id} --compromised"));
                notes.push(
                    "removed: it signs nothing the cluster honours any more, but its retired CA \
                     stays in verifiers' bundles (and its recorded tokens are honoured) until \
                     `until`; if its keys may have left with its disk, mark them compromised \
                     (`--compromised` works after a plain removal too)"
                        .into(),
                );
            }
            pb::BlastRadiusReply {
                status: "removed".into(),
                until_ms: trusted_until,
                ..Default::default()
            }
        };
        Ok(pb::BlastRadiusReply {
            principal: format!("authority/{node_id}"),
            kind: "authority".into(),
            keys: out_keys,
            cut_off,
            notes,
            ..reply
        })
    }
}
