//! Authorization: size bounds, revocation check, the block-shape whitelist, signature
//! verification, then Datalog under explicit limits.

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{Fact, Policy, Rule, Term};
use biscuit_auth::error::{FailedCheck, Logic, MatchedPolicy, Token as BiscuitError};
use biscuit_auth::{AuthorizerBuilder, AuthorizerLimits, Biscuit};

use super::shape::{Refusal, Shape, ShapeError, shape_of};
use super::{KeySet, RevocationId, Revocations, RootKeyId, decode_unverified, unix_secs};
use crate::rights::{NodeName, Operation, Resource};
use crate::spiffe::SpiffeId;

/// The request being authorized, stated as facts to the token's Datalog.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub operation: Operation,
    pub resource: &'a Resource,
    /// The SPIFFE ID of the mTLS client that presented the token, when there is one.
    pub peer: Option<&'a SpiffeId>,
    /// The node the request acts on or comes from, when that applies.
    pub node: Option<&'a NodeName>,
    pub time: SystemTime,
}

/// Bounds on Datalog evaluation. Biscuit's default time bound (1 ms) fails spuriously on a busy
/// machine; the default here is looser in time and as tight in facts and iterations.
///
/// biscuit-auth checks the time bound only between checks; it is a hard deadline because the
/// block whitelist (see the [module docs](super)) makes every single check cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_facts: u64,
    pub max_iterations: u64,
    pub max_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_facts: 1000,
            max_iterations: 100,
            // Cost is bounded before evaluation (only ringzero's block shapes are accepted, so
            // the largest token evaluates in a few milliseconds); this bound is for a starved
            // machine, where 20 ms turned legitimate calls away.
            max_time: Duration::from_millis(200),
        }
    }
}

impl From<Limits> for AuthorizerLimits {
    fn from(l: Limits) -> Self {
        AuthorizerLimits {
            max_facts: l.max_facts,
            max_iterations: l.max_iterations,
            max_time: l.max_time,
        }
    }
}

/// The outcome of authorizing one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Grant),
    Deny(Denial),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// What an allowed request was allowed with: enough to audit it without the token itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Grant {
    /// The subject the authority block names, if it names one.
    pub subject: Option<String>,
    pub root_key_id: RootKeyId,
    /// One per block, authority block first.
    pub revocation_ids: Vec<RevocationId>,
}

/// Which kind of check refused the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// `check if time($t), $t < …`
    Expiry,
    /// `check if peer(…)`
    Peer,
    /// `check if node(…)`
    Node,
    /// `check if operation($op), {…}.contains($op)`
    Operation,
    /// `check if resource_within(…)`
    Resource,
    /// Anything else a block may say.
    Other,
}

/// Why a request was refused. Names the failed check; never contains the token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denial {
    /// The token does not decode, or is too large.
    Malformed(String),
    /// The token names no root key id.
    NoRootKeyId,
    /// The token's root key is not in the verifier's key set (unknown, or removed).
    UnknownRootKey(RootKeyId),
    /// A signature does not verify.
    BadSignature(String),
    /// One of the token's blocks is revoked.
    Revoked { block: usize, id: RevocationId },
    /// A check of the token failed.
    CheckFailed {
        block: u32,
        kind: CheckKind,
        rule: String,
    },
    /// No right in the authority block allows this operation on this resource.
    NoMatchingRight {
        operation: Operation,
        resource: Resource,
    },
    /// Datalog evaluation hit the run limits.
    LimitExceeded(String),
    /// A block has a shape ringzero never writes, or exceeds the caps on checks, rights or set
    /// sizes: refused before any Datalog runs.
    UnsupportedBlock(ShapeError),
}

impl Denial {
    /// Whether the token's signatures were verified before it was refused (a check or the
    /// rights refused it). Otherwise what the token says about itself — its revocation ids
    /// among it — is only a claim: anyone can write any id into a token that does not verify.
    pub fn signature_verified(&self) -> bool {
        matches!(
            self,
            Denial::CheckFailed { .. } | Denial::NoMatchingRight { .. } | Denial::LimitExceeded(_)
        )
    }

    /// A short, stable code for logs, audit records and JSON.
    pub fn code(&self) -> &'static str {
        match self {
            Denial::Malformed(_) => "malformed",
            Denial::NoRootKeyId => "no_root_key_id",
            Denial::UnknownRootKey(_) => "unknown_root_key",
            Denial::BadSignature(_) => "bad_signature",
            Denial::Revoked { .. } => "revoked",
            Denial::CheckFailed { kind, .. } => match kind {
                CheckKind::Expiry => "expired",
                CheckKind::Peer => "peer_mismatch",
                CheckKind::Node => "node_mismatch",
                CheckKind::Operation => "operation_not_allowed",
                CheckKind::Resource => "resource_not_allowed",
                CheckKind::Other => "check_failed",
            },
            Denial::NoMatchingRight { .. } => "no_matching_right",
            Denial::LimitExceeded(_) => "limits_exceeded",
            Denial::UnsupportedBlock(ShapeError::TooLarge { .. }) => "limits_exceeded",
            Denial::UnsupportedBlock(_) => "unsupported_block",
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Malformed(m) => write!(f, "malformed token: {m}"),
            Denial::NoRootKeyId => f.write_str("the token names no root key id"),
            Denial::UnknownRootKey(id) => {
                write!(
                    f,
                    "signed by root key {id}, which is not in the trusted key set"
                )
            }
            Denial::BadSignature(m) => write!(f, "signature does not verify: {m}"),
            Denial::Revoked { block, id } => {
                write!(f, "revoked (block {block}, revocation id {id})")
            }
            Denial::CheckFailed { block, kind, rule } => match kind {
                CheckKind::Expiry => write!(f, "expired (block {block}: {rule})"),
                CheckKind::Peer => {
                    write!(f, "bound to another peer identity (block {block}: {rule})")
                }
                CheckKind::Node => write!(f, "bound to another node (block {block}: {rule})"),
                CheckKind::Operation => {
                    write!(f, "operation not allowed by block {block} ({rule})")
                }
                CheckKind::Resource => {
                    write!(
                        f,
                        "resource outside the prefix allowed by block {block} ({rule})"
                    )
                }
                CheckKind::Other => write!(f, "check failed in block {block}: {rule}"),
            },
            Denial::NoMatchingRight {
                operation,
                resource,
            } => write!(f, "no right allows {operation} on {resource}"),
            Denial::LimitExceeded(m) => write!(f, "evaluation limits exceeded: {m}"),
            Denial::UnsupportedBlock(e) => write!(f, "refused before evaluation: {e}"),
        }
    }
}

/// A token whose signatures were verified against a key set, with what the cache needs to know
/// to re-use it safely.
pub(super) struct Verified {
    pub(super) biscuit: Biscuit,
    pub(super) root_key_id: RootKeyId,
    pub(super) key: biscuit_auth::PublicKey,
    pub(super) revocation_ids: Vec<RevocationId>,
    /// Its blocks as the whitelist read them, for [`super::native`].
    pub(super) shape: Shape,
}

/// Decodes `token`, refuses it if any block is revoked or any block's shape is not one ringzero
/// writes, then verifies its signatures with the key its `root_key_id` names. Only a token that
/// passed the shape check becomes `Verified`, so the cache (keyed by the token's exact bytes)
/// never holds one that did not.
pub(super) fn verify(
    token: &str,
    keys: &KeySet,
    revocations: &impl Revocations,
) -> Result<Verified, Denial> {
    let unverified = decode_unverified(token).map_err(|e| Denial::Malformed(e.to_string()))?;
    let revocation_ids: Vec<RevocationId> = unverified
        .revocation_identifiers()
        .into_iter()
        .map(RevocationId)
        .collect();
    if let Some(denial) = first_revoked(&revocation_ids, revocations) {
        return Err(denial);
    }
    // Before any Datalog (and before spending a signature check on it): the whitelist is what
    // bounds the cost of evaluation.
    let shape = shape_of(&unverified).map_err(|r| match r {
        Refusal::Malformed(m) => Denial::Malformed(m),
        Refusal::Shape(s) => Denial::UnsupportedBlock(s),
    })?;
    let root_key_id = RootKeyId(unverified.root_key_id().ok_or(Denial::NoRootKeyId)?);
    let key = *keys
        .get(root_key_id)
        .ok_or(Denial::UnknownRootKey(root_key_id))?;
    let biscuit = unverified
        .verify(key)
        .map_err(|e| Denial::BadSignature(e.to_string()))?;
    Ok(Verified {
        biscuit,
        root_key_id,
        key,
        revocation_ids,
        shape,
    })
}

pub(super) fn first_revoked(
    ids: &[RevocationId],
    revocations: &impl Revocations,
) -> Option<Denial> {
    ids.iter()
        .enumerate()
        .find(|(_, id)| revocations.is_revoked(&id.0))
        .map(|(block, id)| Denial::Revoked {
            block,
            id: id.clone(),
        })
}

/// Authorizes `req` with `token` (base64url), without a cache.
pub fn authorize(
    token: &str,
    keys: &KeySet,
    revocations: &impl Revocations,
    req: &Request<'_>,
    limits: Limits,
) -> Decision {
    match verify(token, keys, revocations) {
        Ok(v) => match run_datalog(&v.biscuit, req, limits, true) {
            (Ok(()), subject) => Decision::Allow(Grant {
                subject,
                root_key_id: v.root_key_id,
                revocation_ids: v.revocation_ids,
            }),
            (Err(d), _) => Decision::Deny(d),
        },
        Err(d) => Decision::Deny(d),
    }
}

const ALLOW_POLICY: &str =
    "allow if operation($op), right($sub, $op, $prefix), resource_within($prefix)";
const SUBJECT_QUERY: &str = "data($s) <- subject($s)";

fn allow_policy() -> Result<Policy, Denial> {
    static POLICY: OnceLock<Result<Policy, String>> = OnceLock::new();
    POLICY
        .get_or_init(|| Policy::try_from(ALLOW_POLICY).map_err(|e| e.to_string()))
        .clone()
        .map_err(Denial::Malformed)
}

fn subject_query() -> Option<Rule> {
    static RULE: OnceLock<Option<Rule>> = OnceLock::new();
    RULE.get_or_init(|| Rule::try_from(SUBJECT_QUERY).ok())
        .clone()
}

fn str_fact(name: &str, value: &str) -> Fact {
    Fact::new(name.to_owned(), vec![Term::Str(value.to_owned())])
}

/// Runs the token's Datalog against the request. With `want_subject`, also returns the subject
/// the authority block names (if exactly one), whatever the outcome.
pub(super) fn run_datalog(
    biscuit: &Biscuit,
    req: &Request<'_>,
    limits: Limits,
    want_subject: bool,
) -> (Result<(), Denial>, Option<String>) {
    // Datalog evaluation runs on attacker-supplied rules. biscuit-auth returns errors for what
    // it anticipates; a panic on anything it does not must still be a denial, never a crashed
    // verifier.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_datalog_inner(biscuit, req, limits, want_subject)
    }))
    .unwrap_or_else(|_| {
        (
            Err(Denial::Malformed("token evaluation failed".into())),
            None,
        )
    })
}

fn run_datalog_inner(
    biscuit: &Biscuit,
    req: &Request<'_>,
    limits: Limits,
    want_subject: bool,
) -> (Result<(), Denial>, Option<String>) {
    match build_authorizer(biscuit, req, limits) {
        Ok(mut authorizer) => {
            let outcome = authorizer
                .authorize()
                .map(|_| ())
                .map_err(|e| map_error(e, req));
            // After a run-limit error the world is over budget: querying it again would
            // evaluate with a fresh budget (and, in biscuit-auth 6.0.0, underflow its counter).
            let within_limits = !matches!(outcome, Err(Denial::LimitExceeded(_)));
            let subject = if want_subject && within_limits {
                subject_query().and_then(|q| {
                    authorizer
                        .query::<_, (String,), _>(q)
                        .ok()
                        .filter(|v| v.len() == 1)
                        .and_then(|mut v| v.pop())
                        .map(|(s,)| s)
                })
            } else {
                None
            };
            (outcome, subject)
        }
        Err(d) => (Err(d), None),
    }
}

fn build_authorizer(
    biscuit: &Biscuit,
    req: &Request<'_>,
    limits: Limits,
) -> Result<biscuit_auth::Authorizer, Denial> {
    let mut builder = AuthorizerBuilder::new()
        .set_limits(limits.into())
        .fact(str_fact("operation", req.operation.as_str()))
        .and_then(|b| b.fact(str_fact("resource", req.resource.as_str())))
        .and_then(|b| {
            b.fact(Fact::new(
                "time".to_owned(),
                vec![Term::Date(unix_secs(req.time))],
            ))
        })
        .map_err(|e| Denial::Malformed(e.to_string()))?;
    for prefix in req.resource.covering_prefixes() {
        builder = builder
            .fact(str_fact("resource_within", prefix))
            .map_err(|e| Denial::Malformed(e.to_string()))?;
    }
    if let Some(peer) = req.peer {
        builder = builder
            .fact(str_fact("peer", peer.as_str()))
            .map_err(|e| Denial::Malformed(e.to_string()))?;
    }
    if let Some(node) = req.node {
        builder = builder
            .fact(str_fact("node", node.as_str()))
            .map_err(|e| Denial::Malformed(e.to_string()))?;
    }
    builder
        .policy(allow_policy()?)
        .and_then(|b| b.build(biscuit))
        .map_err(|e| Denial::Malformed(e.to_string()))
}

fn map_error(e: BiscuitError, req: &Request<'_>) -> Denial {
    let no_right = || Denial::NoMatchingRight {
        operation: req.operation,
        resource: req.resource.clone(),
    };
    match e {
        BiscuitError::FailedLogic(Logic::Unauthorized { policy, checks }) => {
            match (first_failed(&checks), policy) {
                (Some(d), _) => d,
                (None, MatchedPolicy::Allow(_) | MatchedPolicy::Deny(_)) => no_right(),
            }
        }
        BiscuitError::FailedLogic(Logic::NoMatchingPolicy { checks }) => {
            first_failed(&checks).unwrap_or_else(no_right)
        }
        BiscuitError::RunLimit(limit) => Denial::LimitExceeded(limit.to_string()),
        other => Denial::Malformed(other.to_string()),
    }
}

fn first_failed(checks: &[FailedCheck]) -> Option<Denial> {
    checks.first().map(|c| match c {
        FailedCheck::Block(b) => Denial::CheckFailed {
            block: b.block_id,
            kind: classify(&b.rule),
            rule: b.rule.clone(),
        },
        // The verifier adds no checks of its own; treat one as a generic failure.
        FailedCheck::Authorizer(a) => Denial::CheckFailed {
            block: u32::MAX,
            kind: classify(&a.rule),
            rule: a.rule.clone(),
        },
    })
}

fn classify(rule: &str) -> CheckKind {
    let body = rule
        .trim_start_matches("check if ")
        .trim_start_matches("check all ");
    if body.starts_with("time(") {
        CheckKind::Expiry
    } else if body.starts_with("peer(") {
        CheckKind::Peer
    } else if body.starts_with("node(") {
        CheckKind::Node
    } else if body.starts_with("operation(") {
        CheckKind::Operation
    } else if body.starts_with("resource_within(") {
        CheckKind::Resource
    } else {
        CheckKind::Other
    }
}

#[cfg(test)]
mod signature_tests {
    use super::*;

    #[test]
    fn only_denials_after_the_signature_check_vouch_for_the_tokens_ids() {
        for claim in [
            Denial::Malformed("x".into()),
            Denial::NoRootKeyId,
            Denial::UnknownRootKey(RootKeyId(9)),
            Denial::BadSignature("x".into()),
            Denial::Revoked {
                block: 0,
                id: RevocationId(vec![1]),
            },
        ] {
            assert!(!claim.signature_verified(), "{claim:?}");
        }
        assert!(Denial::LimitExceeded("x".into()).signature_verified());
    }
}
