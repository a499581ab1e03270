//! Inspection: decode a token without verifying it, for people and for JSON.
//!
//! Nothing here is trusted: a token's content is shown as written, and only a verifier with the
//! right key set can say whether it holds.

use std::fmt;

use super::shape::{CheckShape, Refusal, shape_of};
use super::{RevocationId, TokenError, decode_unverified};

/// A decoded, **unverified** view of a token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenView {
    pub root_key_id: Option<u32>,
    /// The subject the authority block names.
    pub subject: Option<String>,
    /// The rights of the authority block, as `(operation, resource prefix)`.
    pub rights: Vec<RightView>,
    /// When the token stops being valid, in unix seconds: the earliest expiry any block
    /// states, as [`super::expiry`] computes it (`$time < D` expires at D, `$time <= D` at
    /// D + 1).
    pub expires_unix: Option<u64>,
    /// The same, as RFC 3339.
    pub expires: Option<String>,
    /// Peer identities the token is bound to (every one must match, so more than one distinct
    /// value makes the token unusable).
    pub bound_peers: Vec<String>,
    /// Nodes the token is bound to.
    pub bound_nodes: Vec<String>,
    /// Set when a block has a shape ringzero never writes: why. Such a token authorizes
    /// nothing, and subject, rights, expiry and bindings above are left empty.
    pub unsupported: Option<String>,
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
///
/// A token with a block outside the whitelist (see [`super::ShapeError`]) is still shown — its
/// blocks' source as biscuit prints it — but flagged in [`TokenView::unsupported`], and nothing
/// is read out of it: subject, rights, expiry and bindings come only from blocks that passed.
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
        unsupported: None,
        blocks: Vec::new(),
    };
    match shape_of(&unverified) {
        Ok(shape) => {
            view.expires_unix = shape.expires_at_unix();
            for (index, block) in shape.blocks.iter().enumerate() {
                if index == 0 {
                    view.subject = block.subject.clone();
                    view.rights = block
                        .rights
                        .iter()
                        .map(|r| RightView {
                            operation: r.operation.clone(),
                            prefix: r.prefix.clone(),
                        })
                        .collect();
                }
                for check in &block.checks {
                    match check {
                        CheckShape::Peer(p) => push_unique(&mut view.bound_peers, p),
                        CheckShape::Node(n) => push_unique(&mut view.bound_nodes, n),
                        _ => {}
                    }
                }
            }
        }
        Err(Refusal::Shape(e)) => view.unsupported = Some(e.to_string()),
        Err(Refusal::Malformed(m)) => return Err(TokenError::Malformed(m)),
    }
    for (index, id) in ids.into_iter().enumerate() {
        let source = unverified
            .print_block_source(index)
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
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
        if let Some(why) = &self.unsupported {
            writeln!(f, "UNSUPPORTED: {why}; this token authorizes nothing")?;
        }
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
