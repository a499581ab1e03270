//! Inspection: decode a token without verifying it, for people and for JSON.
//!
//! Nothing here is trusted: a token's content is shown as written, and only a verifier with the
//! right key set can say whether it holds.

use std::fmt;

use biscuit_auth::builder::{Binary, BlockBuilder, Op, Term};

use super::{RevocationId, TokenError, decode_unverified};

/// A decoded, **unverified** view of a token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenView {
    pub root_key_id: Option<u32>,
    /// The subject the authority block names.
    pub subject: Option<String>,
    /// The rights of the authority block, as `(operation, resource prefix)`.
    pub rights: Vec<RightView>,
    /// The earliest expiry any block states, in unix seconds.
    pub expires_unix: Option<u64>,
    /// The same, as RFC 3339.
    pub expires: Option<String>,
    /// Peer identities the token is bound to (every one must match, so more than one distinct
    /// value makes the token unusable).
    pub bound_peers: Vec<String>,
    /// Nodes the token is bound to.
    pub bound_nodes: Vec<String>,
    pub blocks: Vec<BlockView>,
}

/// One right of the authority block.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RightView {
    pub operation: String,
    pub prefix: String,
}

/// One block: its index, revocation id and Datalog source.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlockView {
    pub index: usize,
    pub revocation_id: RevocationId,
    pub source: String,
}

/// The revocation ids of `token`'s blocks (authority block first), decoded without verifying
/// anything: cheap enough to name a token in every audit record.
pub fn revocation_ids(token: &str) -> Result<Vec<RevocationId>, TokenError> {
    Ok(decode_unverified(token)?
        .revocation_identifiers()
        .into_iter()
        .map(RevocationId)
        .collect())
}

/// Decodes `token` (base64url) without verifying any signature.
pub fn inspect(token: &str) -> Result<TokenView, TokenError> {
    let unverified = decode_unverified(token)?;
    let ids = unverified.revocation_identifiers();
    let mut view = TokenView {
        root_key_id: unverified.root_key_id(),
        subject: None,
        rights: Vec::new(),
        expires_unix: None,
        expires: None,
        bound_peers: Vec::new(),
        bound_nodes: Vec::new(),
        blocks: Vec::new(),
    };
    for (index, id) in ids.into_iter().enumerate() {
        let source = unverified
            .print_block_source(index)
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
        let parsed = BlockBuilder::new()
            .code(&source)
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
        if index == 0 {
            for fact in &parsed.facts {
                let p = &fact.predicate;
                match (p.name.as_str(), p.terms.as_slice()) {
                    ("subject", [Term::Str(s)]) => view.subject = Some(s.clone()),
                    ("right", [Term::Str(_), Term::Str(op), Term::Str(prefix)]) => {
                        view.rights.push(RightView {
                            operation: op.clone(),
                            prefix: prefix.clone(),
                        })
                    }
                    _ => {}
                }
            }
        }
        for check in &parsed.checks {
            for query in &check.queries {
                for pred in &query.body {
                    match (pred.name.as_str(), pred.terms.as_slice()) {
                        ("peer", [Term::Str(s)]) => push_unique(&mut view.bound_peers, s),
                        ("node", [Term::Str(s)]) => push_unique(&mut view.bound_nodes, s),
                        _ => {}
                    }
                }
                for expr in &query.expressions {
                    if let [
                        Op::Value(Term::Variable(_)),
                        Op::Value(Term::Date(d)),
                        Op::Binary(Binary::LessThan),
                    ] = expr.ops.as_slice()
                    {
                        view.expires_unix = Some(view.expires_unix.map_or(*d, |e| e.min(*d)));
                    }
                }
            }
        }
        view.blocks.push(BlockView {
            index,
            revocation_id: RevocationId(id),
            source,
        });
    }
    view.expires = view.expires_unix.map(rfc3339);
    Ok(view)
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_owned());
    }
}

fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

impl fmt::Display for TokenView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "UNVERIFIED token (signatures not checked)")?;
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        writeln!(
            f,
            "root key id:  {}",
            self.root_key_id.map_or("-".into(), |i| i.to_string())
        )?;
        writeln!(f, "subject:      {}", opt(&self.subject))?;
        writeln!(f, "expires:      {}", opt(&self.expires))?;
        if !self.bound_peers.is_empty() {
            writeln!(f, "bound peer:   {}", self.bound_peers.join(", "))?;
        }
        if !self.bound_nodes.is_empty() {
            writeln!(f, "bound node:   {}", self.bound_nodes.join(", "))?;
        }
        writeln!(f, "rights:")?;
        for r in &self.rights {
            let prefix = if r.prefix.is_empty() {
                "(all)"
            } else {
                &r.prefix
            };
            writeln!(f, "  {:<16} {}", r.operation, prefix)?;
        }
        for b in &self.blocks {
            let label = if b.index == 0 {
                "authority"
            } else {
                "attenuation"
            };
            writeln!(
                f,
                "block {} ({label}), revocation id {}:",
                b.index, b.revocation_id
            )?;
            for line in b.source.lines().filter(|l| !l.trim().is_empty()) {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}
