//! The cached capability check without Datalog: a verified token's blocks, read once into the
//! shapes the whitelist accepts ([`super::shape`]), evaluated directly against a request.
//!
//! The whitelist leaves nothing else to evaluate. No block derives a fact; the authority block
//! holds only `subject` and `right` facts, and the others none; every check is one query over
//! one predicate the authorizer states (`time`, `operation`, `resource_within`, `peer`,
//! `node`); and the one policy is `allow if operation($op), right($sub, $op, $prefix),
//! resource_within($prefix)`. So a request is allowed exactly when every check holds for the
//! request's facts and some right of the authority block names the operation and a prefix
//! covering the resource — which costs a few string comparisons per check, whatever the number
//! of blocks, instead of building an authorizer from every block.
//!
//! Only an *allow* is answered here. A refusal is left to Datalog, which names the check that
//! failed exactly as the uncached path does; the property test in `token::tests` holds the two
//! paths to the same decision.

use super::Request;
use super::shape::{CheckShape, Shape};

/// Whether Datalog would allow `req` with a token of this shape (checks and policy alike).
pub(super) fn allows(shape: &Shape, req: &Request<'_>) -> bool {
    let now = super::unix_secs(req.time);
    let operation = req.operation.as_str();
    let within = |prefix: &str| req.resource.covering_prefixes().any(|p| p == prefix);
    let checks_hold = shape
        .blocks
        .iter()
        .flat_map(|b| &b.checks)
        .all(|check| match check {
            CheckShape::Expiry { .. } => check.expires_at().is_some_and(|end| now < end),
            CheckShape::Operations(set) => set.iter().any(|o| o == operation),
            CheckShape::ResourceWithin(prefix) => within(prefix),
            CheckShape::Peer(p) => req.peer.is_some_and(|peer| peer.as_str() == p),
            CheckShape::Node(n) => req.node.is_some_and(|node| node.as_str() == n),
        });
    checks_hold
        && shape.blocks.first().is_some_and(|authority| {
            authority
                .rights
                .iter()
                .any(|r| r.operation == operation && within(&r.prefix))
        })
}
