//! `BlastRadius`: if a principal (or a token) were compromised now, what could the attacker
//! reach — which SPIFFE IDs, which rights, until when — and what cuts it off.
//!
//! - Gated like every read of the cluster's security record (`audit:read` on `audit`) and
//!   audited before anything is read; the record names what was assessed (for a token, its
//!   revocation ids, never the token).
//! - Everything is computed from the live state, never from a table of what a kind of principal
//!   "usually" holds: a node's entries by the parent index, its serials and capabilities as
//!   recorded at issue, a user's role as it stands (custom roles included), its recorded
//!   credentials and the mints in the lineage tables, a member's keys from the bundle, a
//!   token's rights as `policy` reads its blocks.
//! - A node's reach is bounded by its identity: an agent only ever obtains the entries parented
//!   to itself, whatever a token says. A member's is not bounded at all: it signs with its own
//!   CA and root key, so the answer says so rather than pretending otherwise.

use super::status::invalid;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ringzero_policy::token::Reach;
use ringzero_policy::{NodeName, Operation, SpiffeId};
use ringzero_proto::pb;

use super::{AuthorityService, status_of};
use crate::command::NodeStatus;
use crate::state::MintRecord;
use crate::{NodeId, StateReader};

mod node;
mod token;
mod user;

/// The most minted tokens one answer lists (a lineage can be much larger; it is summarized).
const MAX_LISTED: usize = 256;
/// How many of a minter's audit records are read, newest first, to name the rights of its
/// mints.
const RIGHTS_SCAN_BUDGET: usize = 20_000;

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What is assessed.
enum Target {
    Node(NodeName),
    User(NodeName),
    Authority(NodeId),
    /// The token, and what policy reads in it (decoded once, before the gate).
    Token(String, Box<Reach>),
}

impl Target {
    fn parse(r: &pb::BlastRadiusRequest) -> Result<Self, tonic::Status> {
        match (r.principal.trim(), r.token.trim()) {
            ("", "") => Err(invalid(
                "give a principal (node/NAME, user/NAME, authority/ID) or a token",
            )),
            ("", token) => {
                let reach = ringzero_policy::token::reach(token)
                    .map_err(|e| invalid(format!("token: {e}")))?;
                Ok(Target::Token(token.to_owned(), Box::new(reach)))
            }
            (p, "") => match p.split_once('/') {
                Some(("node", n)) => NodeName::parse(n)
                    .map(Target::Node)
                    .map_err(|e| invalid(format!("node name {n:?}: {e}"))),
                Some(("user", n)) => NodeName::parse(n)
                    .map(Target::User)
                    .map_err(|e| invalid(format!("user name {n:?}: {e}"))),
                Some(("authority", n)) => n
                    .parse::<NodeId>()
                    .ok()
                    .filter(|id| id.to_string() == n)
                    .map(Target::Authority)
                    .ok_or_else(|| invalid(format!("authority id {n:?}: not a number"))),
                _ => Err(invalid(format!(
                    "{p:?}: expected node/NAME, user/NAME or authority/ID"
                ))),
            },
            _ => Err(invalid("give a principal or a token, not both")),
        }
    }

    /// How the audit record names it: never the token itself.
    fn audit_details(&self) -> Vec<(String, String)> {
        match self {
            Target::Node(n) => vec![("blast_radius".into(), format!("node/{n}"))],
            Target::User(n) => vec![("blast_radius".into(), format!("user/{n}"))],
            Target::Authority(id) => vec![("blast_radius".into(), format!("authority/{id}"))],
            Target::Token(_, reach) => vec![
                ("blast_radius".into(), "token".into()),
                (
                    "revocation_ids".into(),
                    reach
                        .blocks
                        .iter()
                        .map(|b| b.revocation_id.to_hex())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ],
        }
    }
}

fn node_status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Active => "active",
        NodeStatus::Evicted => "evicted",
        NodeStatus::Banned => "banned",
    }
}

fn right(op: &str, resource: &str, source: &str, bound: &str) -> pb::BlastRight {
    pb::BlastRight {
        operation: op.to_owned(),
        resource: resource.to_owned(),
        source: source.to_owned(),
        bound: bound.to_owned(),
    }
}

/// The rights of an audit record's `rights` detail (`op on prefix, …`, `(all)` for the root);
/// anything else (a role summary) yields nothing.
fn parse_rights_summary(s: &str) -> Vec<(String, String)> {
    s.split(", ")
        .filter_map(|r| r.split_once(" on "))
        .filter(|(op, _)| op.parse::<Operation>().is_ok())
        .map(|(op, p)| {
            let p = if p == "(all)" { "" } else { p };
            (op.to_owned(), p.to_owned())
        })
        .collect()
}

fn entry_identity(e: &crate::command::RegistrationEntry) -> pb::BlastIdentity {
    pb::BlastIdentity {
        spiffe_id: e.spiffe_id.clone(),
        via: "entry".into(),
        entry_id: e.id.clone(),
        parent: e.parent.clone(),
        selectors: e.selectors.clone(),
        ttl_seconds: e.ttl_s,
        dns_names: e.dns_names.clone(),
    }
}

fn own_identity(id: &SpiffeId) -> pb::BlastIdentity {
    pb::BlastIdentity {
        spiffe_id: id.to_string(),
        via: "self".into(),
        ..Default::default()
    }
}

/// The certificates among `serials` (serial, not-after in ms) still unexpired at `now`, each
/// with whether its serial is revoked.
fn live_svids(
    r: &StateReader,
    serials: Vec<(Vec<u8>, u64)>,
    now: u64,
) -> Result<Vec<pb::BlastCredential>, tonic::Status> {
    let mut out = Vec::new();
    for (serial, not_after) in serials {
        if not_after > now {
            out.push(pb::BlastCredential {
                kind: "svid".into(),
                revoked: r.is_serial_revoked(&serial).map_err(status_of)?,
                id: hex::encode(serial),
                expires_ms: not_after,
            });
        }
    }
    Ok(out)
}

/// The capabilities among `tokens` (revocation id, expiry in ms) still unexpired at `now`,
/// each with whether it is revoked.
fn live_capabilities(
    r: &StateReader,
    tokens: impl IntoIterator<Item = (Vec<u8>, u64)>,
    now: u64,
) -> Result<Vec<pb::BlastCredential>, tonic::Status> {
    let mut out = Vec::new();
    for (rid, expires_ms) in tokens {
        if expires_ms > now {
            out.push(pb::BlastCredential {
                kind: "capability".into(),
                revoked: r.is_revoked(&rid).map_err(status_of)?,
                id: hex::encode(rid),
                expires_ms,
            });
        }
    }
    Ok(out)
}

/// The identities `rights` let their holder claim by writing registration entries: it needs
/// `entry:write` on the identity's path *and* `entry:select` on the processes it selects (and
/// `entry:dns` for DNS names). One pattern per `entry:write` prefix, with the selector and DNS
/// prefixes it could use.
fn claimable(
    td: &ringzero_policy::TrustDomain,
    rights: &[(String, String)],
) -> Vec<pb::BlastIdentity> {
    let of = |op: Operation| -> Vec<String> {
        let set: BTreeSet<String> = rights
            .iter()
            .filter(|(o, _)| o == op.as_str())
            .map(|(_, p)| p.clone())
            .collect();
        set.into_iter().collect()
    };
    let (writes, selects, dns) = (
        of(Operation::EntryWrite),
        of(Operation::EntrySelect),
        of(Operation::EntryDns),
    );
    if selects.is_empty() {
        return Vec::new();
    }
    let shown = |p: &String, all: &str| {
        if p.is_empty() {
            all.to_owned()
        } else {
            p.clone()
        }
    };
    writes
        .iter()
        .filter(|w| {
            // Reserved paths are refused for entries whatever the rights say.
            let first = w.split('/').next().unwrap_or_default();
            !ringzero_policy::spiffe::RESERVED_FIRST_SEGMENTS
                .iter()
                .any(|r| first.eq_ignore_ascii_case(r))
        })
        .map(|w| pb::BlastIdentity {
            spiffe_id: if w.is_empty() {
                format!("spiffe://{td}/* (every ID outside ringzero/ and user/)")
            } else {
                format!("spiffe://{td}/{w}/*")
            },
            via: "claimable".into(),
            selectors: selects
                .iter()
                .map(|p| shown(p, "(any selector on any node)"))
                .collect(),
            dns_names: dns.iter().map(|p| shown(p, "(any DNS name)")).collect(),
            ..Default::default()
        })
        .collect()
}

impl AuthorityService {
    pub(crate) async fn blast_radius_impl(
        &self,
        req: tonic::Request<pb::BlastRadiusRequest>,
    ) -> Result<tonic::Response<pb::BlastRadiusReply>, tonic::Status> {
        self.require_leader()?;
        let target = Target::parse(req.get_ref())?;
        let mut allowed = self
            .gate
            .check(&req, Operation::AuditRead, &super::res("audit")?, None)
            .await?;
        allowed.audit.details.extend(target.audit_details());
        self.gate.record(&allowed).await?;
        let reader = self.sm.reader().map_err(status_of)?;
        let reply = match &target {
            Target::Node(n) => self.node_radius(&reader, n)?,
            Target::User(n) => self.user_radius(&reader, n)?,
            Target::Authority(id) => self.authority_radius(&reader, *id)?,
            Target::Token(token, reach) => self.token_radius(&reader, token, reach)?,
        };
        Ok(tonic::Response::new(reply))
    }
}

/// Recorded mints: each token's authority-block revocation id and its record.
type Mints = Vec<(Vec<u8>, MintRecord)>;

/// Every recorded token minted (transitively) from a token holding one of `roots`, breadth
/// first, with its mint record; at most `limit`, and whether more exist.
fn descendants(
    r: &StateReader,
    roots: &[Vec<u8>],
    now: u64,
    limit: usize,
) -> Result<(Mints, bool), tonic::Status> {
    let mut queue: VecDeque<Vec<u8>> = roots.iter().cloned().collect();
    let mut seen: BTreeSet<Vec<u8>> = roots.iter().cloned().collect();
    let mut out = Vec::new();
    while let Some(id) = queue.pop_front() {
        for (child, expires) in r.mint_children(&id).map_err(status_of)? {
            if expires <= now || !seen.insert(child.clone()) {
                continue;
            }
            if out.len() >= limit {
                return Ok((out, true));
            }
            if let Some(rec) = r.minted(&child).map_err(status_of)? {
                out.push((child.clone(), rec));
            }
            queue.push_back(child);
        }
    }
    Ok((out, false))
}

/// The wire form of minted tokens: revocation and lineage state from the tables, rights from
/// the minters' audit records while those are live.
fn describe_mints(
    r: &StateReader,
    mints: Mints,
    now: u64,
) -> Result<Vec<pb::BlastToken>, tonic::Status> {
    let mut by_minter: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
    for (id, m) in &mints {
        if m.minter != "authority" {
            by_minter
                .entry(m.minter.as_str())
                .or_default()
                .push(id.clone());
        }
    }
    // A live token was minted within the longest token lifetime.
    let since = now.saturating_sub(ms(super::tokens::MAX_TOKEN_LIFETIME) + 3_600_000);
    let mut rights: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    for (minter, ids) in by_minter {
        rights.extend(
            r.minted_rights(minter, &ids, since, RIGHTS_SCAN_BUDGET)
                .map_err(status_of)?,
        );
    }
    let mut out = Vec::with_capacity(mints.len());
    for (id, m) in mints {
        let revoked = r.is_revoked(&id).map_err(status_of)?;
        let cut_off = !revoked
            && r.lineage_cut_off(std::slice::from_ref(&id))
                .map_err(status_of)?
                .is_some();
        out.push(pb::BlastToken {
            rights: rights.remove(&id).unwrap_or_default(),
            revocation_id: hex::encode(&id),
            minter: m.minter,
            subject: m.subject,
            expires_ms: m.expires_ms,
            revoked,
            cut_off,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn targets_parse_strictly() {
        let req = |p: &str, t: &str| pb::BlastRadiusRequest {
            principal: p.into(),
            token: t.into(),
        };
        assert!(matches!(
            Target::parse(&req("node/n7", "")),
            Ok(Target::Node(_))
        ));
        assert!(matches!(
            Target::parse(&req("user/alice", "")),
            Ok(Target::User(_))
        ));
        assert!(matches!(
            Target::parse(&req("authority/2", "")),
            Ok(Target::Authority(2))
        ));
        for bad in [
            "",
            "node",
            "node/",
            "node/a/b",
            "user/../x",
            "authority/02",
            "authority/x",
            "authority/-1",
            "group/x",
            "ns/default",
        ] {
            assert!(Target::parse(&req(bad, "")).is_err(), "{bad:?}");
        }
        assert!(Target::parse(&req("", "not a token")).is_err());
        assert!(Target::parse(&req("node/n7", "x")).is_err());
    }

    #[test]
    fn rights_summaries_parse_back() {
        assert_eq!(
            parse_rights_summary("logs:read on ns/shop, token:mint on (all)"),
            vec![
                ("logs:read".to_owned(), "ns/shop".to_owned()),
                ("token:mint".to_owned(), String::new())
            ]
        );
        assert!(parse_rights_summary("role developer in namespace shop").is_empty());
        assert!(parse_rights_summary("made:up on ns").is_empty());
    }

    #[test]
    fn claimable_needs_write_and_select() {
        let td = ringzero_policy::TrustDomain::new("example.org").unwrap();
        let r = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
        };
        assert!(claimable(&td, &r(&[("entry:write", "ns/shop")])).is_empty());
        let c = claimable(
            &td,
            &r(&[
                ("entry:write", "ns/shop"),
                ("entry:write", "user"),
                ("entry:select", "selector/unix/uid/1000"),
            ]),
        );
        assert_eq!(c.len(), 1, "reserved paths are never claimable: {c:?}");
        assert_eq!(c[0].spiffe_id, "spiffe://example.org/ns/shop/*");
        assert_eq!(c[0].selectors, vec!["selector/unix/uid/1000"]);
    }
}
