//! Reach: what a token still allows once every block is taken into account, and under which
//! bindings — the answer to "what could whoever holds this token do?".
//!
//! The authorizer allows a request when a `right(_, op, prefix)` of the authority block has
//! `prefix` covering the resource, and every check of every block holds. Checks of appended
//! blocks only narrow: an operation set keeps the operations it lists, a `resource_within(q)`
//! keeps the resources `q` covers. So each right survives with the operations of every set and
//! the narrowest of its prefix and every `q` — or not at all, when two of those prefixes are
//! not nested (no resource lies under both). Bindings (peer, node) and the expiry apply to
//! every right alike and are reported beside them.
//!
//! Nothing here verifies a signature (see [`verify_signature`]) or consults revocations: reach
//! is what the token's text allows, for a verifier to weigh against what it trusts.

use std::collections::BTreeSet;

use super::authorize::{Denial, verify};
use super::shape::{CheckShape, shape_of};
use super::{KeySet, NoRevocations, RevocationId, RootKeyId, TokenError, decode_unverified};
use crate::rights::Operation;

/// What a token allows after every attenuation, decoded without verifying signatures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reach {
    pub root_key_id: Option<u32>,
    /// The subject the authority block names.
    pub subject: Option<String>,
    /// The rights that survive every block, as (operation, narrowest prefix), sorted and
    /// without repeats. Operations outside the vocabulary are left out: no verifier ever asks
    /// for them, so they allow nothing.
    pub effective: Vec<ReachRight>,
    /// When the token stops being valid (unix seconds): the earliest expiry of any block, as
    /// [`super::expiry`] computes it.
    pub expires_unix: Option<u64>,
    /// Every peer identity a block binds the token to (each must match the mTLS client).
    pub bound_peers: Vec<String>,
    /// Every node a block binds the token to.
    pub bound_nodes: Vec<String>,
    /// Why the token can allow nothing whatever its rights say (two distinct peers or nodes
    /// bound), if so.
    pub unusable: Option<String>,
    /// Each block's own contribution, authority block first.
    pub blocks: Vec<BlockReach>,
}

/// One right that survives: an operation on every resource under a prefix (`""`: all).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ReachRight {
    pub operation: String,
    pub prefix: String,
}

/// What one block says: the authority block's rights, every block's restrictions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockReach {
    pub index: usize,
    pub revocation_id: RevocationId,
    /// The rights the block states (only the authority block states any).
    pub rights: Vec<ReachRight>,
    /// The operations the block allows, when it restricts them (the intersection of its
    /// operation sets); `None` when it does not.
    pub operations: Option<Vec<String>>,
    /// The prefixes resources must lie under (`resource_within` checks).
    pub resources: Vec<String>,
    pub peers: Vec<String>,
    pub nodes: Vec<String>,
    /// The block's own earliest expiry (unix seconds), if it has a time check.
    pub expires_unix: Option<u64>,
}

/// Whether `prefix` covers `resource` by whole segments (the empty prefix covers everything).
fn covers(prefix: &str, resource: &str) -> bool {
    prefix.is_empty()
        || resource
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_owned());
    }
}

/// The reach of `token` (base64url). A token with a block outside the whitelist is refused
/// with [`TokenError::Unsupported`], as the authorizer refuses it: it reaches nothing.
pub fn reach(token: &str) -> Result<Reach, TokenError> {
    let unverified = decode_unverified(token)?;
    let ids = unverified.revocation_identifiers();
    let shape = shape_of(&unverified).map_err(TokenError::from)?;
    let mut out = Reach {
        root_key_id: unverified.root_key_id(),
        subject: None,
        effective: Vec::new(),
        expires_unix: shape.expires_at_unix(),
        bound_peers: Vec::new(),
        bound_nodes: Vec::new(),
        unusable: None,
        blocks: Vec::with_capacity(shape.blocks.len()),
    };
    // Every operation set of every block, and every resource prefix, must hold at once.
    let mut allowed_ops: Option<BTreeSet<String>> = None;
    let mut within: Vec<String> = Vec::new();
    for (index, block) in shape.blocks.iter().enumerate() {
        let mut b = BlockReach {
            index,
            revocation_id: RevocationId(ids.get(index).cloned().unwrap_or_default()),
            rights: block
                .rights
                .iter()
                .map(|r| ReachRight {
                    operation: r.operation.clone(),
                    prefix: r.prefix.clone(),
                })
                .collect(),
            operations: None,
            resources: Vec::new(),
            peers: Vec::new(),
            nodes: Vec::new(),
            expires_unix: None,
        };
        if index == 0 {
            out.subject = block.subject.clone();
        }
        let mut block_ops: Option<BTreeSet<String>> = None;
        for check in &block.checks {
            match check {
                CheckShape::Operations(set) => {
                    let set: BTreeSet<String> = set.iter().cloned().collect();
                    block_ops = Some(match block_ops {
                        Some(prev) => prev.intersection(&set).cloned().collect(),
                        None => set,
                    });
                }
                CheckShape::ResourceWithin(p) => {
                    push_unique(&mut b.resources, p);
                    within.push(p.clone());
                }
                CheckShape::Peer(p) => {
                    push_unique(&mut b.peers, p);
                    push_unique(&mut out.bound_peers, p);
                }
                CheckShape::Node(n) => {
                    push_unique(&mut b.nodes, n);
                    push_unique(&mut out.bound_nodes, n);
                }
                CheckShape::Expiry { date, inclusive } => {
                    // As the shape computes it: `<=` holds through second D, so until D + 1.
                    let at = if *inclusive {
                        date.saturating_add(1)
                    } else {
                        *date
                    };
                    b.expires_unix = Some(b.expires_unix.map_or(at, |x| x.min(at)));
                }
            }
        }
        if let Some(ops) = &block_ops {
            allowed_ops = Some(match allowed_ops {
                Some(prev) => prev.intersection(ops).cloned().collect(),
                None => ops.clone(),
            });
        }
        b.operations = block_ops.map(|s| s.into_iter().collect());
        out.blocks.push(b);
    }
    if out.bound_peers.len() > 1 {
        out.unusable = Some("bound to more than one peer identity".into());
    } else if out.bound_nodes.len() > 1 {
        out.unusable = Some("bound to more than one node".into());
    }
    let mut effective = BTreeSet::new();
    if out.unusable.is_none()
        && let Some(authority) = out.blocks.first()
    {
        for r in &authority.rights {
            if r.operation.parse::<Operation>().is_err()
                || allowed_ops
                    .as_ref()
                    .is_some_and(|ops| !ops.contains(&r.operation))
            {
                continue;
            }
            if let Some(prefix) = narrowest(&r.prefix, &within) {
                effective.insert(ReachRight {
                    operation: r.operation.clone(),
                    prefix,
                });
            }
        }
    }
    out.effective = effective.into_iter().collect();
    Ok(out)
}

/// The prefix under which a resource satisfies `prefix` and every one of `within`, or `None`
/// when no resource does. Prefixes that a common resource lies under are nested, so the answer
/// is the longest of them when they are.
fn narrowest(prefix: &str, within: &[String]) -> Option<String> {
    let mut current = prefix.to_owned();
    for q in within {
        if covers(&current, q) {
            current = q.clone();
        } else if !covers(q, &current) {
            return None;
        }
    }
    Some(current)
}

/// Verifies `token`'s signatures against `keys` (after the same decoding and block whitelist
/// as the authorizer) and that a verifier can load its blocks, without evaluating anything and
/// without revocations: the id of the root key that signed it, or why it cannot count.
pub fn verify_signature(token: &str, keys: &KeySet) -> Result<RootKeyId, Denial> {
    let v = verify(token, keys, &NoRevocations)?;
    // Signatures can hold over a block biscuit itself cannot load (an empty payload passes
    // the whitelist as a block with nothing in it): every request with such a token fails, so
    // it reaches nothing.
    biscuit_auth::AuthorizerBuilder::new()
        .build(&v.biscuit)
        .map_err(|e| Denial::Malformed(e.to_string()))?;
    Ok(v.root_key_id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn within(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    use std::time::{Duration, SystemTime};

    use crate::rights::{NodeName, Resource, Right};
    use crate::spiffe::SpiffeId;
    use crate::token::{Attenuation, Lifetime, MintRequest, RootKey, attenuate, mint};

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn minted(key: &RootKey) -> String {
        mint(
            key,
            &MintRequest {
                subject: SpiffeId::parse("spiffe://example.org/user/alice").unwrap(),
                rights: vec![
                    Right::new(Operation::LogsRead, Resource::parse("ns/shop").unwrap()),
                    Right::new(Operation::SchedSubmit, Resource::parse("ns/shop").unwrap()),
                    Right::new(Operation::AuditRead, Resource::parse("audit").unwrap()),
                ],
                ttl: Some(Duration::from_secs(600)),
                bind_to_subject: true,
                bind_node: None,
            },
            &Lifetime::default(),
            t0(),
        )
        .unwrap()
    }

    #[test]
    fn attenuations_narrow_the_effective_rights() {
        let key = RootKey::generate(RootKeyId(3));
        let token = minted(&key);
        let r = reach(&token).unwrap();
        assert_eq!(r.effective.len(), 3);
        assert_eq!(r.expires_unix, Some(1_800_000_600));
        assert_eq!(r.bound_peers, vec!["spiffe://example.org/user/alice"]);
        assert_eq!(
            verify_signature(&token, &KeySet::single(key.public())),
            Ok(RootKeyId(3))
        );
        assert!(verify_signature(&token, &KeySet::new()).is_err());

        let narrowed = attenuate(
            &token,
            &Attenuation {
                ttl: Some(Duration::from_secs(60)),
                operations: vec![Operation::LogsRead, Operation::AuditRead],
                resource: Some(Resource::parse("ns/shop/web").unwrap()),
                bind_node: Some(NodeName::parse("n7").unwrap()),
                ..Default::default()
            },
            t0(),
        )
        .unwrap();
        let r = reach(&narrowed).unwrap();
        // sched:submit is cut by the operation set, audit:read by the resource prefix.
        assert_eq!(
            r.effective,
            vec![ReachRight {
                operation: "logs:read".into(),
                prefix: "ns/shop/web".into(),
            }]
        );
        assert_eq!(r.expires_unix, Some(1_800_000_060));
        assert_eq!(r.bound_nodes, vec!["n7"]);
        assert_eq!(r.blocks.len(), 2);
        assert_eq!(r.blocks[0].rights.len(), 3);
        assert_eq!(r.blocks[0].operations, None);
        assert_eq!(
            r.blocks[1].operations,
            Some(vec!["audit:read".to_owned(), "logs:read".to_owned()])
        );
        assert_eq!(r.blocks[1].resources, vec!["ns/shop/web"]);
        assert_eq!(r.blocks[1].expires_unix, Some(1_800_000_060));

        // A second block elsewhere: nothing lies under both prefixes.
        let disjoint = attenuate(
            &narrowed,
            &Attenuation {
                resource: Some(Resource::parse("ns/shop/db").unwrap()),
                ..Default::default()
            },
            t0(),
        )
        .unwrap();
        assert!(reach(&disjoint).unwrap().effective.is_empty());
        // Bound to two nodes: usable nowhere.
        let two_nodes = attenuate(
            &narrowed,
            &Attenuation {
                bind_node: Some(NodeName::parse("n8").unwrap()),
                ..Default::default()
            },
            t0(),
        )
        .unwrap();
        let r = reach(&two_nodes).unwrap();
        assert!(r.unusable.is_some());
        assert!(r.effective.is_empty());
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        for bad in ["", "not a token", "AAAA", &"A".repeat(20_000)] {
            assert!(reach(bad).is_err(), "{bad:.20}");
        }
    }

    #[test]
    fn narrowest_takes_the_longest_nested_prefix() {
        assert_eq!(narrowest("", &within(&["ns/a"])).as_deref(), Some("ns/a"));
        assert_eq!(
            narrowest("ns/a", &within(&["ns", "ns/a/web"])).as_deref(),
            Some("ns/a/web")
        );
        assert_eq!(
            narrowest("ns/a/web", &within(&["ns/a"])).as_deref(),
            Some("ns/a/web")
        );
        // Not nested by whole segments: nothing lies under both.
        assert_eq!(narrowest("ns/a", &within(&["ns/ab"])), None);
        assert_eq!(narrowest("ns/a", &within(&["ns/a/x", "ns/a/y"])), None);
    }
}
