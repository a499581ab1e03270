//! Minting: the authority block.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::Term;

use super::{MAX_RIGHTS, RootKey, TokenError, unix_secs};
use crate::rights::{NodeName, Right};
use crate::spiffe::SpiffeId;

/// Lifetime policy for minted tokens: a default when none is asked for, and a cap that minting
/// refuses to exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub default: Duration,
    pub max: Duration,
}

impl Default for Lifetime {
    /// One hour by default, at most 24 hours.
    fn default() -> Self {
        Self {
            default: Duration::from_secs(3600),
            max: Duration::from_secs(24 * 3600),
        }
    }
}

impl Lifetime {
    /// Resolves an asked-for lifetime against the policy.
    pub fn resolve(&self, asked: Option<Duration>) -> Result<Duration, TokenError> {
        let ttl = asked.unwrap_or(self.default);
        if ttl < Duration::from_secs(1) {
            return Err(TokenError::TtlTooShort);
        }
        if ttl > self.max {
            return Err(TokenError::TtlAboveCap {
                asked: ttl,
                cap: self.max,
            });
        }
        Ok(ttl)
    }
}

/// What to mint.
#[derive(Debug, Clone)]
pub struct MintRequest {
    /// Who the token is minted for.
    pub subject: SpiffeId,
    /// What it allows. At least one.
    pub rights: Vec<Right>,
    /// Requested lifetime; `None` takes the policy default.
    pub ttl: Option<Duration>,
    /// Bind the token to the subject's mTLS identity (proof of possession): it is then refused
    /// when presented over any other peer identity.
    pub bind_to_subject: bool,
    /// Bind the token to one node.
    pub bind_node: Option<NodeName>,
}

/// Mints a token signed by `key`. `now` is the issuing time; the expiry is `now + ttl`, to the
/// second.
pub fn mint(
    key: &RootKey,
    req: &MintRequest,
    lifetime: &Lifetime,
    now: SystemTime,
) -> Result<String, TokenError> {
    if req.rights.is_empty() {
        return Err(TokenError::NoRights);
    }
    // More would make a token every verifier refuses.
    if req.rights.len() > MAX_RIGHTS {
        return Err(TokenError::TooManyRights(req.rights.len()));
    }
    let ttl = lifetime.resolve(req.ttl)?;
    let expiry = unix_secs(now).saturating_add(ttl.as_secs());

    let mut builder = biscuit_auth::Biscuit::builder()
        .root_key_id(key.id().0)
        .code_with_params(
            "subject({subject});\ncheck if time($time), $time < {expiry};",
            params([
                ("subject", Term::Str(req.subject.to_string())),
                ("expiry", Term::Date(expiry)),
            ]),
            HashMap::new(),
        )
        .map_err(biscuit_err)?;
    for right in &req.rights {
        builder = builder
            .code_with_params(
                "right({sub}, {op}, {prefix});",
                params([
                    ("sub", Term::Str(right.operation.subsystem().into())),
                    ("op", Term::Str(right.operation.as_str().into())),
                    ("prefix", Term::Str(right.prefix.as_str().into())),
                ]),
                HashMap::new(),
            )
            .map_err(biscuit_err)?;
    }
    if req.bind_to_subject {
        builder = builder
            .code_with_params(
                "check if peer({peer});",
                params([("peer", Term::Str(req.subject.to_string()))]),
                HashMap::new(),
            )
            .map_err(biscuit_err)?;
    }
    if let Some(node) = &req.bind_node {
        builder = builder
            .code_with_params(
                "check if node({node});",
                params([("node", Term::Str(node.to_string()))]),
                HashMap::new(),
            )
            .map_err(biscuit_err)?;
    }
    let token = builder.build(key.pair()).map_err(biscuit_err)?;
    token.to_base64().map_err(biscuit_err)
}

pub(super) fn params<const N: usize>(pairs: [(&str, Term); N]) -> HashMap<String, Term> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

pub(super) fn biscuit_err(e: biscuit_auth::error::Token) -> TokenError {
    TokenError::Biscuit(e.to_string())
}
