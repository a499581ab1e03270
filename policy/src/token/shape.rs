//! The block whitelist: every block of a token must have one of the shapes ringzero itself
//! writes, or the token is refused before any Datalog runs.
//!
//! Any holder can append a block offline, and biscuit-auth checks its time limit only between
//! checks: one check joining a few predicates over a few dozen facts runs for minutes. Bounding
//! the evaluation therefore has to happen before it starts, by refusing every construct ringzero
//! never writes. What is accepted:
//!
//! - the authority block: exactly one `subject("…")` fact, at most [`MAX_RIGHTS`]
//!   `right("…", "…", "…")` facts, and checks `time($t), $t < D` (or `$t <= D`), `peer("…")`
//!   and `node("…")`;
//! - appended blocks: no facts; the same checks, plus `operation($op), {…}.contains($op)` (1 to
//!   [`MAX_SET_LEN`] strings) and `resource_within("…")`.
//!
//! Every check is a `check if` with one query over one predicate. No block may hold rules,
//! `check all` / `reject if`, `trusting` scopes, public-key tables or a third-party signature,
//! and each holds at most [`MAX_CHECKS_PER_BLOCK`] checks.
//!
//! Blocks are read structurally: the token's protobuf form (`biscuit_auth::format::schema`) is
//! decoded block by block, and symbols are resolved with biscuit's own symbol table built the
//! way biscuit builds it. Nothing is matched on printed Datalog, whose string literals are not
//! escaped and could therefore be made to re-parse as something other than what is evaluated.
//!
//! # The bound this gives
//!
//! With these shapes no fact is ever derived, and every check has one body predicate and at
//! most one expression, so it costs one scan of the facts: at most `1 + MAX_RIGHTS` from the
//! token plus the request's own (five, and one `resource_within` per prefix of the resource —
//! at most 257 for the longest resource accepted), about 520 in all. A token holds at most
//! `MAX_BLOCKS × MAX_CHECKS_PER_BLOCK` = 512 checks, so evaluation is at most 512 × 520 fact
//! matches, plus the allow policy's join of one `operation` × at most 256 `right`s × the
//! resource's prefixes. biscuit's time limit, checked between checks, is then an effective hard
//! deadline.

use std::time::{Duration, SystemTime};

use biscuit_auth::UnverifiedBiscuit;
use biscuit_auth::datalog::SymbolTable;
use biscuit_auth::format::schema::{self, op, op_binary, term};
use biscuit_prost::Message;

use super::TokenError;

/// The most `right` facts an authority block may hold.
pub const MAX_RIGHTS: usize = 256;
/// The most checks one block may hold.
pub const MAX_CHECKS_PER_BLOCK: usize = 16;
/// The most operations one `operation($op), {…}.contains($op)` check may list.
pub const MAX_SET_LEN: usize = 64;

/// Why a token's blocks are refused before evaluation. Names the construct, never the token
/// or any string it carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShapeError {
    /// The block holds something ringzero never writes.
    #[error("block {block} holds {what}, which ringzero never writes")]
    Unsupported { block: usize, what: String },
    /// The block holds more than the caps allow.
    #[error("block {block} holds {what}")]
    TooLarge { block: usize, what: String },
}

impl ShapeError {
    /// The index of the refused block (0 is the authority block).
    pub fn block(&self) -> usize {
        match self {
            ShapeError::Unsupported { block, .. } | ShapeError::TooLarge { block, .. } => *block,
        }
    }
}

/// One accepted check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckShape {
    /// `check if time($t), $t < date` (`inclusive`: `<=`).
    Expiry { date: u64, inclusive: bool },
    /// `check if operation($op), {…}.contains($op)`
    Operations(Vec<String>),
    /// `check if resource_within("…")`
    ResourceWithin(String),
    /// `check if peer("…")`
    Peer(String),
    /// `check if node("…")`
    Node(String),
}

impl CheckShape {
    /// The first instant, in unix seconds, at which this check no longer holds, if it is a time
    /// check. The verifier states the time in whole seconds (truncated), so `$t < D` holds
    /// until D and `$t <= D` holds through second D, that is until D + 1.
    pub(crate) fn expires_at(&self) -> Option<u64> {
        match self {
            CheckShape::Expiry { date, inclusive } => Some(if *inclusive {
                date.saturating_add(1)
            } else {
                *date
            }),
            _ => None,
        }
    }
}

/// One `right(subsystem, operation, prefix)` fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RightFact {
    pub(crate) operation: String,
    pub(crate) prefix: String,
}

/// An accepted block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BlockShape {
    pub(crate) subject: Option<String>,
    pub(crate) rights: Vec<RightFact>,
    pub(crate) checks: Vec<CheckShape>,
}

/// A token all of whose blocks passed the whitelist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) blocks: Vec<BlockShape>,
}

impl Shape {
    /// The earliest instant, in unix seconds, at which some time check of some block stops
    /// holding; `None` when no block has a time check.
    pub(crate) fn expires_at_unix(&self) -> Option<u64> {
        self.blocks
            .iter()
            .flat_map(|b| &b.checks)
            .filter_map(CheckShape::expires_at)
            .min()
    }

    /// The same as a `SystemTime`. A date too far away for `SystemTime` bounds nothing.
    pub(crate) fn expires_at(&self) -> Option<SystemTime> {
        self.blocks
            .iter()
            .flat_map(|b| &b.checks)
            .filter_map(CheckShape::expires_at)
            .filter_map(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)))
            .min()
    }
}

/// Why [`shape_of`] failed: the bytes do not decode, or a block is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    Malformed(String),
    Shape(ShapeError),
}

impl From<Refusal> for TokenError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Malformed(m) => TokenError::Malformed(m),
            Refusal::Shape(s) => TokenError::Unsupported(s),
        }
    }
}

/// Reads every block of `token` and accepts it only if each has a whitelisted shape.
///
/// The blocks read are exactly the bytes biscuit evaluates: the container is re-serialized from
/// the decoded token, and each signed block's payload is carried in it verbatim.
pub(crate) fn shape_of(token: &UnverifiedBiscuit) -> Result<Shape, Refusal> {
    let malformed = |e: &dyn std::fmt::Display| Refusal::Malformed(e.to_string());
    let bytes = token.to_vec().map_err(|e| malformed(&e))?;
    let proto = schema::Biscuit::decode(bytes.as_slice()).map_err(|e| malformed(&e))?;
    let mut symbols = SymbolTable::new();
    let mut shape = Shape::default();
    for (index, signed) in std::iter::once(&proto.authority)
        .chain(proto.blocks.iter())
        .enumerate()
    {
        if signed.external_signature.is_some() {
            return Err(unsupported(index, "a third-party signature"));
        }
        let block = schema::Block::decode(signed.block.as_slice()).map_err(|e| malformed(&e))?;
        // As biscuit does: each first-party block extends one table shared by all blocks.
        let own = SymbolTable::from(block.symbols.clone()).map_err(|e| malformed(&e))?;
        symbols.extend(&own).map_err(|e| malformed(&e))?;
        shape
            .blocks
            .push(block_shape(index, &block, &symbols).map_err(Refusal::Shape)?);
    }
    Ok(shape)
}

fn unsupported(block: usize, what: &str) -> Refusal {
    Refusal::Shape(ShapeError::Unsupported {
        block,
        what: what.to_owned(),
    })
}

fn block_shape(
    index: usize,
    block: &schema::Block,
    symbols: &SymbolTable,
) -> Result<BlockShape, ShapeError> {
    let unsupported = |what: &str| ShapeError::Unsupported {
        block: index,
        what: what.to_owned(),
    };
    let too_large = |what: String| ShapeError::TooLarge { block: index, what };
    if !block.scope.is_empty() {
        return Err(unsupported("a `trusting` scope annotation"));
    }
    if !block.public_keys.is_empty() {
        return Err(unsupported(
            "a public key table (used by `trusting` scopes)",
        ));
    }
    if !block.rules.is_empty() {
        return Err(unsupported("a rule"));
    }
    let mut shape = BlockShape::default();
    if index == 0 {
        if block.facts.len() > MAX_RIGHTS + 1 {
            return Err(too_large(format!(
                "{} facts; at most one subject and {MAX_RIGHTS} rights are accepted",
                block.facts.len()
            )));
        }
        for fact in &block.facts {
            let p = &fact.predicate;
            match (
                symbols.get_symbol(p.name),
                strings(&p.terms, symbols).as_deref(),
            ) {
                (Some("subject"), Some([s])) if shape.subject.is_none() => {
                    shape.subject = Some(s.clone());
                }
                (Some("subject"), Some([_])) => return Err(unsupported("a second subject fact")),
                (Some("right"), Some([_, operation, prefix])) => shape.rights.push(RightFact {
                    operation: operation.clone(),
                    prefix: prefix.clone(),
                }),
                _ => {
                    return Err(unsupported(
                        "a fact other than subject(\"…\") or right(\"…\", \"…\", \"…\")",
                    ));
                }
            }
        }
        if shape.subject.is_none() {
            return Err(unsupported(
                "no subject fact (an authority block names one)",
            ));
        }
    } else if !block.facts.is_empty() {
        return Err(unsupported("a fact in an appended block"));
    }
    if block.checks.len() > MAX_CHECKS_PER_BLOCK {
        return Err(too_large(format!(
            "{} checks; at most {MAX_CHECKS_PER_BLOCK} are accepted",
            block.checks.len()
        )));
    }
    for check in &block.checks {
        let c = check_shape(index, check, symbols)?;
        let authority_may_say = matches!(
            c,
            CheckShape::Expiry { .. } | CheckShape::Peer(_) | CheckShape::Node(_)
        );
        if index == 0 && !authority_may_say {
            return Err(unsupported(
                "an operation or resource check (those belong in appended blocks)",
            ));
        }
        shape.checks.push(c);
    }
    Ok(shape)
}

fn check_shape(
    index: usize,
    check: &schema::Check,
    symbols: &SymbolTable,
) -> Result<CheckShape, ShapeError> {
    let unsupported = |what: &str| ShapeError::Unsupported {
        block: index,
        what: what.to_owned(),
    };
    // `check if` is encoded without a kind (or, equivalently, kind One).
    if !matches!(check.kind, None | Some(0)) {
        return Err(unsupported("a `check all` or `reject if`"));
    }
    let [query] = check.queries.as_slice() else {
        return Err(unsupported("a check with alternatives (`or`) or no query"));
    };
    if !query.scope.is_empty() {
        return Err(unsupported("a `trusting` scope annotation"));
    }
    if symbols.get_symbol(query.head.name) != Some("query") || !query.head.terms.is_empty() {
        return Err(unsupported("a check with an unusual head"));
    }
    let [pred] = query.body.as_slice() else {
        return Err(unsupported("a check not over exactly one predicate"));
    };
    let name = symbols.get_symbol(pred.name);
    let exprs = query.expressions.as_slice();
    let shape = match (name, pred.terms.as_slice(), exprs) {
        (Some("time"), [var], [expr]) => {
            let v = variable(var);
            match (v, ops(expr).as_deref()) {
                (
                    Some(v),
                    Some(
                        [
                            op::Content::Value(schema::Term {
                                content: Some(term::Content::Variable(lhs)),
                            }),
                            op::Content::Value(schema::Term {
                                content: Some(term::Content::Date(date)),
                            }),
                            op::Content::Binary(b),
                        ],
                    ),
                ) if *lhs == v && b.ffi_name.is_none() => {
                    let inclusive = match b.kind {
                        k if k == op_binary::Kind::LessThan as i32 => false,
                        k if k == op_binary::Kind::LessOrEqual as i32 => true,
                        _ => return Err(unsupported("a time check other than `<` or `<=`")),
                    };
                    CheckShape::Expiry {
                        date: *date,
                        inclusive,
                    }
                }
                _ => return Err(unsupported("a time check of an unsupported shape")),
            }
        }
        (Some("operation"), [var], [expr]) => {
            let v = variable(var);
            match (v, ops(expr).as_deref()) {
                (
                    Some(v),
                    Some(
                        [
                            op::Content::Value(schema::Term {
                                content: Some(term::Content::Set(set)),
                            }),
                            op::Content::Value(schema::Term {
                                content: Some(term::Content::Variable(arg)),
                            }),
                            op::Content::Binary(b),
                        ],
                    ),
                ) if *arg == v
                    && b.kind == op_binary::Kind::Contains as i32
                    && b.ffi_name.is_none() =>
                {
                    if set.set.len() > MAX_SET_LEN {
                        return Err(ShapeError::TooLarge {
                            block: index,
                            what: format!(
                                "an operation set of {} elements; at most {MAX_SET_LEN} are accepted",
                                set.set.len()
                            ),
                        });
                    }
                    if set.set.is_empty() {
                        return Err(unsupported("an empty operation set"));
                    }
                    let ops = strings(&set.set, symbols)
                        .ok_or_else(|| unsupported("an operation set of non-strings"))?;
                    CheckShape::Operations(ops)
                }
                _ => return Err(unsupported("an operation check of an unsupported shape")),
            }
        }
        (Some(n @ ("resource_within" | "peer" | "node")), [t], []) => {
            let s = strings(std::slice::from_ref(t), symbols)
                .and_then(|mut v| v.pop())
                .ok_or_else(|| unsupported("a binding check on a non-string"))?;
            match n {
                "resource_within" => CheckShape::ResourceWithin(s),
                "peer" => CheckShape::Peer(s),
                _ => CheckShape::Node(s),
            }
        }
        _ => return Err(unsupported("a check of an unsupported shape")),
    };
    Ok(shape)
}

fn variable(t: &schema::Term) -> Option<u32> {
    match t.content {
        Some(term::Content::Variable(v)) => Some(v),
        _ => None,
    }
}

/// The ops of an expression, if none is empty.
fn ops(e: &schema::Expression) -> Option<Vec<&op::Content>> {
    e.ops.iter().map(|o| o.content.as_ref()).collect()
}

/// The terms, if every one is a string literal that resolves.
fn strings(terms: &[schema::Term], symbols: &SymbolTable) -> Option<Vec<String>> {
    terms
        .iter()
        .map(|t| match t.content {
            Some(term::Content::String(i)) => symbols.get_symbol(i).map(str::to_owned),
            _ => None,
        })
        .collect()
}
