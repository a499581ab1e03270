//! The reach of a user: its role as it stands, the delegations it holds, what it minted.

use ringzero_policy::{NodeName, Operation};
use ringzero_proto::pb;

use super::{
    MAX_LISTED, claimable, descendants, describe_mints, invalid, live_capabilities, live_svids,
    own_identity, parse_rights_summary, right,
};
use crate::StateReader;
use crate::gate::now_ms;
use crate::service::{AuthorityService, status_of};
use crate::state::MintRecord;

impl AuthorityService {
    pub(super) fn user_radius(
        &self,
        r: &StateReader,
        name: &NodeName,
    ) -> Result<pb::BlastRadiusReply, tonic::Status> {
        let now = now_ms();
        let td = self.gate.trust_domain();
        let id = td.id_with_path(&["user", name.as_str()]).map_err(invalid)?;
        let principal = format!("user/{name}");
        let Some(user) = r.user(name.as_str()).map_err(status_of)? else {
            return Ok(pb::BlastRadiusReply {
                principal,
                kind: "user".into(),
                status: "removed".into(),
                notes: vec![format!(
                    "no user {name}: never added, or removed (removal revoked its certificates, \
                     its capabilities and every token minted from them)"
                )],
                ..Default::default()
            });
        };
        let suspended = r.is_suspended(name.as_str()).map_err(status_of)?;
        let bound = format!("bound to {id} (its SVID's key)");
        let mut notes = Vec::new();
        let mut held_rights: Vec<(String, String)> = Vec::new();
        let mut rights = Vec::new();
        let source = match &user.namespace {
            Some(ns) => format!("role {} in namespace {ns}", user.role),
            None => format!("role {}", user.role),
        };
        match self.role_rights(&user.role, user.namespace.as_deref()) {
            Ok(rs) => {
                for x in rs {
                    held_rights.push((x.operation.as_str().to_owned(), x.prefix.as_str().into()));
                    rights.push(right(
                        x.operation.as_str(),
                        x.prefix.as_str(),
                        &source,
                        &bound,
                    ));
                }
            }
            Err(e) => notes.push(format!(
                "its role grants nothing as it stands ({}): credentials issued earlier still \
                 carry the rights they were minted with",
                e.message()
            )),
        }

        // Its own credentials, as recorded at issue.
        let mut credentials =
            live_svids(r, r.user_serials(name.as_str()).map_err(status_of)?, now)?;
        credentials.extend(live_capabilities(
            r,
            r.user_tokens(name.as_str()).map_err(status_of)?,
            now,
        )?);

        // Delegations others minted for it: more rights, bound to its SVID too.
        let held_records: Vec<(Vec<u8>, MintRecord)> = r
            .mints_for_subject(&id.to_string())
            .map_err(status_of)?
            .into_iter()
            .filter(|(_, m)| m.minter != "authority" && m.expires_ms > now)
            .collect();
        let held = describe_mints(r, held_records, now)?;
        for t in held.iter().filter(|t| !t.revoked && !t.cut_off) {
            for (op, p) in parse_rights_summary(&t.rights) {
                rights.push(right(
                    &op,
                    &p,
                    &format!("delegation {}", t.revocation_id),
                    &bound,
                ));
                held_rights.push((op, p));
            }
        }

        // What it minted, and what was minted from that.
        let own_mints: Vec<(Vec<u8>, MintRecord)> = r
            .mints_by_minter(&id.to_string())
            .map_err(status_of)?
            .into_iter()
            .filter(|(_, m)| m.expires_ms > now)
            .collect();
        let roots: Vec<Vec<u8>> = own_mints.iter().map(|(k, _)| k.clone()).collect();
        let mut lineage = own_mints;
        let (descendants, truncated) = descendants(r, &roots, now, MAX_LISTED)?;
        lineage.extend(descendants);
        let minted = describe_mints(r, lineage, now)?;
        if truncated {
            notes.push(format!(
                "more than {MAX_LISTED} tokens descend from its mints; the first are listed"
            ));
        }

        let identities = {
            let mut v = vec![own_identity(&id)];
            v.extend(claimable(td, &held_rights));
            v
        };
        let all_identities = held_rights
            .iter()
            .any(|(op, p)| op == Operation::EntryWrite.as_str() && p.is_empty())
            && held_rights
                .iter()
                .any(|(op, p)| op == Operation::EntrySelect.as_str() && p.is_empty());
        if identities.len() == 1 {
            notes.push(
                "a user obtains no workload SVID itself; its rights do not include both \
                 entry:write and entry:select, so it cannot claim any by writing an entry"
                    .into(),
            );
        } else {
            notes.push(
                "with entry:write and entry:select it can create registration entries, and so \
                 obtain (through a node whose processes it selects) the identities listed as \
                 claimable"
                    .into(),
            );
        }
        let mesh_scopes: Vec<&str> = held_rights
            .iter()
            .filter(|(op, _)| op == Operation::MeshPolicy.as_str())
            .map(|(_, p)| if p.is_empty() { "(all)" } else { p.as_str() })
            .collect();
        if !mesh_scopes.is_empty() {
            notes.push(format!(
                "with mesh:policy on {} it can write mesh allow rules: any SPIFFE ID it names may \
                 then connect through the mesh sidecars of workloads there that follow the \
                 authority's policies (new connections, within a second)",
                mesh_scopes.join(", ")
            ));
        }
        let until_ms = credentials
            .iter()
            .filter(|c| !c.revoked)
            .map(|c| c.expires_ms)
            .chain(held.iter().filter(|t| !t.revoked).map(|t| t.expires_ms))
            .max()
            .unwrap_or(0);
        let mut cut_off = Vec::new();
        let status = if suspended {
            cut_off.push(format!("ringzero user remove {name}"));
            notes.push(format!(
                "suspended: its certificates open nothing, it cannot renew, and no token it \
                 minted (or minted from those) is honoured; `ringzero user resume {name}` \
                 would restore its unexpired credentials and delegations, `user remove` makes \
                 it final"
            ));
            "suspended"
        } else {
            cut_off.push(format!("ringzero user suspend {name}"));
            cut_off.push(format!("ringzero user remove {name}"));
            notes.push(
                "while active it renews its own credential, so its reach lasts until it is cut \
                 off; `user suspend` is reversible (`user resume`), `user remove` revokes its \
                 serials, its capabilities and every token minted from them"
                    .into(),
            );
            "active"
        };
        let live_minted: Vec<&pb::BlastToken> = minted
            .iter()
            .filter(|t| !t.revoked && !t.cut_off && t.minter == id.to_string())
            .collect();
        if !live_minted.is_empty() {
            notes.push(format!(
                "{} token(s) it minted are held by others: suspending or removing it cuts them \
                 all off; `token revoke --id` cuts off one (and everything minted from it)",
                live_minted.len()
            ));
        }
        cut_off.extend(
            live_minted
                .iter()
                .map(|t| format!("ringzero token revoke --id {}", t.revocation_id)),
        );
        Ok(pb::BlastRadiusReply {
            principal,
            kind: "user".into(),
            status: status.into(),
            identities,
            all_identities,
            rights,
            until_cut_off: !suspended,
            // A suspended user's credentials open nothing (until it is resumed).
            until_ms: if suspended { 0 } else { until_ms },
            credentials,
            minted,
            held,
            cut_off,
            notes,
            ..Default::default()
        })
    }
}
