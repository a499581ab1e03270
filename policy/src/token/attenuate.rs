//! Attenuation: appending a block of checks. Offline — it needs no key and no authority, and it
//! can only narrow what the token allows.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::Term;

use super::mint::{biscuit_err, params};
use super::shape::shape_of;
use super::{MAX_BLOCKS, TokenError, decode_unverified, unix_secs};
use crate::rights::{NodeName, Operation, Resource};
use crate::spiffe::SpiffeId;

/// The restrictions one attenuation block adds. Each present field becomes one check.
#[derive(Debug, Clone, Default)]
pub struct Attenuation {
    /// Expire `ttl` after `now` (or earlier, if the token already expires earlier).
    pub ttl: Option<Duration>,
    /// Allow only these operations.
    pub operations: Vec<Operation>,
    /// Allow only resources under this prefix.
    pub resource: Option<Resource>,
    /// Allow only when presented over this mTLS identity.
    pub bind_peer: Option<SpiffeId>,
    /// Allow only on this node.
    pub bind_node: Option<NodeName>,
}

impl Attenuation {
    fn is_empty(&self) -> bool {
        self.ttl.is_none()
            && self.operations.is_empty()
            && self.resource.is_none()
            && self.bind_peer.is_none()
            && self.bind_node.is_none()
    }
}

/// Appends one block of checks to `token` (base64url) and returns the new token. A token with a
/// block ringzero would refuse (see [`super::ShapeError`]) is not extended.
pub fn attenuate(token: &str, a: &Attenuation, now: SystemTime) -> Result<String, TokenError> {
    if a.is_empty() {
        return Err(TokenError::EmptyAttenuation);
    }
    let unverified = decode_unverified(token)?;
    if unverified.block_count() >= MAX_BLOCKS {
        return Err(TokenError::TooManyBlocks(unverified.block_count() + 1));
    }
    shape_of(&unverified)?;
    let mut block = biscuit_auth::builder::BlockBuilder::new();
    if let Some(ttl) = a.ttl {
        if ttl < Duration::from_secs(1) {
            return Err(TokenError::TtlTooShort);
        }
        let expiry = unix_secs(now).saturating_add(ttl.as_secs());
        block = block
            .code_with_params(
                "check if time($time), $time < {expiry};",
                params([("expiry", Term::Date(expiry))]),
                HashMap::new(),
            )
            .map_err(biscuit_err)?;
    }
    if !a.operations.is_empty() {
        let ops: BTreeSet<Term> = a
            .operations
            .iter()
            .map(|o| Term::Str(o.as_str().into()))
            .collect();
        block = block
            .code_with_params(
                "check if operation($op), {ops}.contains($op);",
                params([("ops", Term::Set(ops))]),
                HashMap::new(),
            )
            .map_err(biscuit_err)?;
    }
    if let Some(prefix) = &a.resource {
        block = block
            .code_with_params(
                "check if resource_within({prefix});",
                params([("prefix", Term::Str(prefix.as_str().into()))]),
                HashMap::new(),
            )
            .map_err(biscuit_err)?;
    }
    if let Some(peer) = &a.bind_peer {
        block = block
            .code_with_params(
                "check if peer({peer});",
                params([("peer", Term::Str(peer.to_string()))]),
                HashMap::new(),
            )
            .map_err(biscuit_err)?;
    }
    if let Some(node) = &a.bind_node {
        block = block
            .code_with_params(
                "check if node({node});",
                params([("node", Term::Str(node.to_string()))]),
                HashMap::new(),
            )
            .map_err(biscuit_err)?;
    }
    let attenuated = unverified.append(block).map_err(biscuit_err)?;
    attenuated.to_base64().map_err(biscuit_err)
}
