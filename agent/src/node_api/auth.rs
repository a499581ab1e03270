//! Deciding a node-API call: the caller's SVID (not revoked), the feed's freshness, and the
//! capability in `authorization: Bearer …` verified against the bundle's Biscuit keys and the
//! revocation feed, for the operation on the allocation's job, bound to the caller (the token's
//! `peer` check sees the SVID's SPIFFE ID: proof of possession) and to this node.

use std::time::SystemTime;

use ringzero_policy::token::{self, Decision, KeySet, Limits, Request};
use ringzero_policy::{NodeName, Operation, Resource, SpiffeId};
use ringzero_proto::pb;

use crate::revocations::RevocationSet;

/// Who asked, with what, and the verdict — everything the audit record needs.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    pub caller: String,
    /// The capability's revocation ids, once its signatures verified.
    pub revocation_ids: Vec<String>,
    /// The first revocation id a refused capability names without its signatures having been
    /// verified: a claim (anyone can write someone else's id into a forged token), recorded
    /// apart as `claimed_revocation_id`.
    pub claimed_id: Option<String>,
    /// `None`: allowed. `Some(code: detail)`: the check that failed.
    pub denied: Option<String>,
    /// When the capability stops being valid (allowed calls only).
    pub expires: Option<SystemTime>,
}

impl Verdict {
    /// The audit record of this decision on `action` about `alloc`, with `detail`.
    pub(crate) fn record(
        &self,
        alloc: &str,
        action: &str,
        mut detail: std::collections::HashMap<String, String>,
    ) -> pb::NodeAuditRecord {
        if let Some(id) = &self.claimed_id {
            detail.insert("claimed_revocation_id".into(), id.clone());
        }
        pb::NodeAuditRecord {
            alloc_id: alloc.to_owned(),
            action: action.to_owned(),
            caller_spiffe_id: self.caller.clone(),
            token_revocation_ids: self.revocation_ids.clone(),
            decision: if self.denied.is_some() {
                "deny"
            } else {
                "allow"
            }
            .into(),
            reason: self
                .denied
                .as_deref()
                .map(str::to_owned)
                .unwrap_or_default(),
            detail,
        }
    }
}

/// Reads the bearer capability, as the authority's gate does.
pub(crate) fn bearer<T>(req: &tonic::Request<T>) -> Option<String> {
    let v = req.metadata().get("authorization")?.to_str().ok()?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    Some(t.trim().to_owned())
}

/// The Biscuit keys a bundle carries, compromised ones excluded (as the authority's gate).
pub(crate) fn biscuit_keys(bundle: &pb::Bundle) -> KeySet {
    let mut keys = KeySet::new();
    for k in &bundle.keys {
        if k.kind != "biscuit" || k.status == "compromised" {
            continue;
        }
        let Ok(id) = u32::try_from(k.key_id) else {
            continue;
        };
        let Ok(public) = token::PublicRootKey::from_bytes(token::RootKeyId(id), &k.public_key)
        else {
            continue;
        };
        keys.insert(public);
    }
    keys
}

/// What is checked, in order: the caller has an SVID whose serial is not revoked; the
/// revocation feed is fresh (else every privileged call is refused: a revocation this node has
/// not seen may exist); a capability is present; it allows `operation` on `resource` for this
/// caller on this node. The Datalog runs off the async workers.
pub(crate) async fn decide(
    peer: &ringzero_proto::transport::PeerInfo,
    token_text: Option<String>,
    keys: KeySet,
    revocations: &RevocationSet,
    operation: Operation,
    resource: &Resource,
    node: &NodeName,
) -> Verdict {
    let caller = peer
        .spiffe_id
        .as_ref()
        .map_or_else(|| "anonymous".to_owned(), ToString::to_string);
    let unverified_ids: Vec<String> = token_text
        .as_deref()
        .and_then(|t| token::revocation_ids(t).ok())
        .map(|ids| ids.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    // Every reason goes through `bounded_reason`: a denial's detail can quote a rule from a
    // block the caller wrote, so it must not carry control characters into the agent's log or
    // exceed what the authority records (which would get the denial record refused).
    // Refused before (or without) verifying the token's signatures: its ids are a claim.
    let deny = |why: String, ids: Vec<String>| Verdict {
        caller: caller.clone(),
        revocation_ids: Vec::new(),
        claimed_id: ids.into_iter().next(),
        denied: Some(bounded_reason(&why)),
        expires: None,
    };
    let Some(id) = peer.spiffe_id.clone() else {
        return deny("no_client_svid".into(), unverified_ids);
    };
    if peer
        .serial
        .as_ref()
        .is_some_and(|s| revocations.is_serial_revoked(s))
    {
        return deny(
            "revoked_certificate: the caller's SVID was revoked".into(),
            unverified_ids,
        );
    }
    if peer.not_after.is_some_and(|t| t <= SystemTime::now()) {
        return deny("expired_certificate".into(), unverified_ids);
    }
    if !revocations.is_fresh() {
        return deny(
            format!(
                "stale_revocations: no word from the authority for over {} s",
                crate::revocations::MAX_STALENESS.as_secs()
            ),
            unverified_ids,
        );
    }
    let Some(text) = token_text else {
        return deny("no_capability".into(), unverified_ids);
    };
    let revs = revocations.clone();
    let resource = resource.clone();
    let node = node.clone();
    let decided = tokio::task::spawn_blocking(move || {
        let decision = token::authorize(
            &text,
            &keys,
            &revs,
            &Request {
                operation,
                resource: &resource,
                peer: Some(&id),
                node: Some(&node),
                time: SystemTime::now(),
            },
            Limits::default(),
        );
        let expires = token::expiry(&text).ok().flatten();
        (decision, expires)
    })
    .await;
    match decided {
        Ok((Decision::Allow(grant), expires)) => Verdict {
            caller: caller.clone(),
            revocation_ids: grant
                .revocation_ids
                .iter()
                .map(ToString::to_string)
                .collect(),
            claimed_id: None,
            denied: None,
            expires,
        },
        Ok((Decision::Deny(d), _)) if d.signature_verified() => Verdict {
            caller: caller.clone(),
            revocation_ids: unverified_ids,
            claimed_id: None,
            denied: Some(bounded_reason(&format!("{}: {d}", d.code()))),
            expires: None,
        },
        Ok((Decision::Deny(d), _)) => deny(format!("{}: {d}", d.code()), unverified_ids),
        Err(_) => deny("internal: the verifier failed".into(), unverified_ids),
    }
}

/// The longest denial reason kept, in bytes (the authority records at most 256).
const MAX_REASON: usize = 200;

/// `why` without control characters, cut to at most [`MAX_REASON`] bytes on a character
/// boundary.
fn bounded_reason(why: &str) -> String {
    let mut out = String::with_capacity(why.len().min(MAX_REASON));
    for c in why.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_REASON {
            break;
        }
        out.push(c);
    }
    out
}

/// Whether an allowed call may go on streaming: the feed is fresh, its capability is neither
/// revoked since nor expired.
pub(crate) fn still_allowed(v: &Verdict, revocations: &RevocationSet) -> Result<(), String> {
    use ringzero_policy::token::Revocations;
    if !revocations.is_fresh() {
        return Err("the revocation feed is stale".into());
    }
    if v.expires.is_some_and(|t| t <= SystemTime::now()) {
        return Err("the capability expired".into());
    }
    for id in &v.revocation_ids {
        if token::RevocationId::from_hex(id).is_ok_and(|r| revocations.is_revoked(&r.0)) {
            return Err("the capability was revoked".into());
        }
    }
    Ok(())
}

/// `ns/<namespace>/<job>`.
pub(crate) fn job_resource(namespace: &str, job: &str) -> Option<Resource> {
    Resource::from_segments(&["ns", namespace, job]).ok()
}

/// The caller's SPIFFE ID is what the concurrency cap counts.
pub(crate) fn caller_key(peer: &ringzero_proto::transport::PeerInfo) -> Option<SpiffeId> {
    peer.spiffe_id.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_bounded_in_bytes_and_free_of_control_characters() {
        let hostile = format!("no_matching_right: rule {}\n\u{1b}[2J", "é".repeat(300));
        let r = bounded_reason(&hostile);
        assert!(r.len() <= MAX_REASON, "{} bytes", r.len());
        assert!(r.starts_with("no_matching_right: rule é"));
        assert!(!r.chars().any(char::is_control), "{r:?}");
        assert_eq!(bounded_reason("peer_mismatch"), "peer_mismatch");
    }
}
