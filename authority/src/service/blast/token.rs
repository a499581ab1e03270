//! The reach of a token: what its blocks leave of its rights, whether the cluster still honours
//! it, and its lineage.

use std::collections::BTreeSet;

use ringzero_policy::token::{Denial, Reach};
use ringzero_policy::{Operation, Resource, SpiffeId};
use ringzero_proto::pb;

use super::{
    MAX_LISTED, claimable, descendants, describe_mints, entry_identity, invalid, ms, right,
};
use crate::StateReader;
use crate::command::{KeyKind, KeyStatus};
use crate::gate::now_ms;
use crate::service::{AuthorityService, status_of};

impl AuthorityService {
    pub(super) fn token_radius(
        &self,
        r: &StateReader,
        token: &str,
        reach: &Reach,
    ) -> Result<pb::BlastRadiusReply, tonic::Status> {
        let now = now_ms();
        let td = self.gate.trust_domain();
        let ids: Vec<Vec<u8>> = reach
            .blocks
            .iter()
            .map(|b| b.revocation_id.0.clone())
            .collect();
        let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
            return Err(invalid("token: no blocks"));
        };
        let (first_hex, last_hex) = (hex::encode(first), hex::encode(last));

        // Signature and key, as the gate would judge them.
        let keys = r.keys().map_err(status_of)?;
        let trusted = crate::gate::TrustedKeys::default();
        trusted.update(&keys);
        let key = reach.root_key_id.and_then(|id| {
            keys.iter()
                .find(|k| k.kind == KeyKind::Biscuit && k.id == u64::from(id))
        });
        let recorded = r.minted(first).map_err(status_of)?;
        let signature = match ringzero_policy::token::verify_signature(token, &trusted.current()) {
            Ok(_) if key.is_some_and(|k| k.status == KeyStatus::Retired) => "retired_key",
            Ok(_) => "verified",
            Err(Denial::UnknownRootKey(_))
                if key.is_some_and(|k| k.status == KeyStatus::Compromised) =>
            {
                "compromised_key"
            }
            Err(Denial::UnknownRootKey(_) | Denial::NoRootKeyId) => "unknown_key",
            Err(_) => "bad_signature",
        };
        let untrusted = match signature {
            "verified" => false,
            // A retired key's tokens count only when the cluster recorded minting them.
            "retired_key" => recorded.is_none(),
            _ => true,
        };
        let mut revoked_blocks = Vec::new();
        for id in &ids {
            if r.is_revoked(id).map_err(status_of)? {
                revoked_blocks.push(hex::encode(id));
            }
        }
        let cut_off_reason = r.lineage_cut_off(&ids).map_err(status_of)?;
        let expires_ms = ringzero_policy::token::expiry(token)
            .map_err(|e| invalid(format!("token: {e}")))?
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, ms);
        let status = if untrusted {
            "untrusted"
        } else if !revoked_blocks.is_empty() {
            "revoked"
        } else if cut_off_reason.is_some() {
            "cut_off"
        } else if expires_ms != 0 && expires_ms <= now {
            "expired"
        } else if reach.unusable.is_some() || reach.effective.is_empty() {
            "unusable"
        } else {
            "valid"
        };
        let live = status == "valid";

        let bound = {
            let mut parts = Vec::new();
            if !reach.bound_peers.is_empty() {
                parts.push(format!(
                    "bound to {} (needs that identity's private key too)",
                    reach.bound_peers.join(", ")
                ));
            }
            if !reach.bound_nodes.is_empty() {
                parts.push(format!("only on node {}", reach.bound_nodes.join(", ")));
            }
            parts.join("; ")
        };
        let rights: Vec<pb::BlastRight> = reach
            .effective
            .iter()
            .map(|x| right(&x.operation, &x.prefix, "token", &bound))
            .collect();

        // SPIFFE IDs: svid:mint on node/X is worth the entries of X, and only to X's own SVID.
        let mut notes = Vec::new();
        let bound_peer_node = |p: &str| -> Option<String> {
            let id: SpiffeId = p.parse().ok()?;
            let segs: Vec<&str> = id.segments().collect();
            match segs.as_slice() {
                ["ringzero", "node", n] if id.is_member_of(td) => Some((*n).to_owned()),
                _ => None,
            }
        };
        let mut nodes: BTreeSet<String> = BTreeSet::new();
        let mints_svids = reach
            .effective
            .iter()
            .filter(|x| x.operation == Operation::SvidMint.as_str())
            .collect::<Vec<_>>();
        if !mints_svids.is_empty() {
            let known: Vec<String> = r
                .nodes()
                .map_err(status_of)?
                .into_iter()
                .map(|n| n.name)
                .collect();
            for x in &mints_svids {
                let prefix = Resource::parse(&x.prefix).unwrap_or_default();
                let exact = x
                    .prefix
                    .strip_prefix("node/")
                    .and_then(|rest| rest.split('/').next())
                    .map(str::to_owned);
                let candidates: Vec<String> = match exact {
                    Some(n) => vec![n],
                    None => known
                        .iter()
                        .filter(|n| {
                            Resource::from_segments(&["node", n.as_str()])
                                .is_ok_and(|res| prefix.covers(&res))
                        })
                        .cloned()
                        .collect(),
                };
                nodes.extend(candidates);
            }
            if !reach.bound_nodes.is_empty() {
                nodes.retain(|n| reach.bound_nodes.contains(n));
            }
            if let Some(p) = reach.bound_peers.first() {
                match bound_peer_node(p) {
                    Some(n) => nodes.retain(|x| *x == n),
                    None => {
                        nodes.clear();
                        notes.push(format!(
                            "svid:mint is usable only over an agent node's SVID, and this token \
                             is bound to {p}: it obtains no workload SVID"
                        ));
                    }
                }
            }
            if !nodes.is_empty() {
                notes.push(
                    "svid:mint on a node is worth that node's entries, and only to that node's \
                     own SVID (an agent obtains only the entries parented to itself)"
                        .into(),
                );
            }
        }
        let mut identities = Vec::new();
        for n in &nodes {
            identities.extend(
                r.entries_of(n)
                    .map_err(status_of)?
                    .iter()
                    .map(entry_identity),
            );
        }
        let effective: Vec<(String, String)> = reach
            .effective
            .iter()
            .map(|x| (x.operation.clone(), x.prefix.clone()))
            .collect();
        identities.extend(claimable(td, &effective));

        // Lineage: who minted it, what was minted from it.
        let (descendants, truncated) = descendants(r, std::slice::from_ref(last), now, MAX_LISTED)?;
        let minted = describe_mints(r, descendants, now)?;
        if truncated {
            notes.push(format!(
                "more than {MAX_LISTED} tokens were minted from it; the first are listed"
            ));
        }
        if effective
            .iter()
            .any(|(op, _)| op == Operation::TokenMint.as_str())
            && live
        {
            notes.push(
                "with token:mint it can have the cluster mint tokens for other identities, \
                 never wider nor longer-lived than itself; they are revoked with it"
                    .into(),
            );
        }
        let mut cut_off = Vec::new();
        match status {
            "valid" | "unusable" | "expired" => {
                cut_off.push(format!("ringzero token revoke --id {last_hex}"));
                if first_hex != last_hex {
                    cut_off.push(format!("ringzero token revoke --id {first_hex}"));
                }
                let short = |h: &str| h[..h.len().min(16)].to_owned();
                notes.push(if first_hex == last_hex {
                    format!(
                        "revoking its block ({}…) kills it, every attenuation of it and every \
                         token minted from them",
                        short(&last_hex)
                    )
                } else {
                    format!(
                        "revoking its last block ({}…) kills it, every attenuation of it and \
                         every token minted from them; revoking its first block ({}…) also kills \
                         the token it was attenuated from and everything minted from that",
                        short(&last_hex),
                        short(&first_hex)
                    )
                });
            }
            "revoked" => notes.push("revoked: every verifier refuses it".into()),
            "cut_off" => notes.push(format!(
                "refused by the authority: {}",
                cut_off_reason.clone().unwrap_or_default()
            )),
            _ => notes.push(format!(
                "not signed by a key the cluster trusts ({signature}): it allows nothing"
            )),
        }
        if let Some(user) = recorded
            .as_ref()
            .and_then(|m| m.minter.split_once("/user/"))
            .map(|(_, u)| u.to_owned())
            .filter(|_| live)
        {
            cut_off.push(format!("ringzero user suspend {user}"));
            notes.push(format!(
                "minted by user {user}: suspending (or removing) that user cuts off this token \
                 and everything it minted"
            ));
        }
        if let Some(why) = &reach.unusable {
            notes.push(format!("unusable: {why}"));
        }
        if !reach.bound_peers.is_empty() {
            notes.push(
                "a stolen copy alone is useless: every request must come over the bound \
                 identity's mTLS key"
                    .into(),
            );
        }
        let blocks = reach
            .blocks
            .iter()
            .map(|b| pb::BlastBlock {
                index: u32::try_from(b.index).unwrap_or(u32::MAX),
                revocation_id: b.revocation_id.to_hex(),
                rights: b
                    .rights
                    .iter()
                    .map(|x| right(&x.operation, &x.prefix, "", ""))
                    .collect(),
                restricts_operations: b.operations.is_some(),
                operations: b.operations.clone().unwrap_or_default(),
                resources: b.resources.clone(),
                peers: b.peers.clone(),
                nodes: b.nodes.clone(),
                expires_ms: b.expires_unix.map_or(0, |s| s.saturating_mul(1000)),
            })
            .collect();
        Ok(pb::BlastRadiusReply {
            principal: format!("token {}", &first_hex[..first_hex.len().min(16)]),
            kind: "token".into(),
            status: status.into(),
            identities,
            rights,
            until_cut_off: false,
            until_ms: if live { expires_ms } else { 0 },
            minted,
            cut_off,
            notes,
            token: Some(pb::BlastTokenFacts {
                subject: reach.subject.clone().unwrap_or_default(),
                bound_peers: reach.bound_peers.clone(),
                bound_nodes: reach.bound_nodes.clone(),
                root_key_id: reach.root_key_id.unwrap_or_default(),
                signature: signature.into(),
                expires_ms,
                blocks,
                minted_by: recorded.map(|m| m.minter).unwrap_or_default(),
                revoked_blocks,
                cut_off_reason: cut_off_reason.unwrap_or_default(),
            }),
            ..Default::default()
        })
    }
}
