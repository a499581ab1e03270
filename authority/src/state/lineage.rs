//! Lineage of minted capabilities, and revocation that follows it.
//!
//! Every token the cluster mints is recorded ([`MintRecord`]) with the revocation ids of the
//! token presented to mint it. Revoking a token revokes its last block — that token and every
//! attenuation of it — *and* every token the cluster minted from it, transitively: a user who
//! delegated to itself (`token mint --for <itself>`) keeps nothing once its token is revoked.

use std::collections::{HashSet, VecDeque};

use redb::{ReadableTable, WriteTransaction};

use super::rows::read_u64;
use super::*;

/// The most tokens one revocation follows through the lineage (a bound on one apply's work;
/// deeper descendants than this are an attack on the state machine, not a use).
pub(crate) const MAX_REVOKED_DESCENDANTS: usize = 100_000;

/// How many generations the gate walks up a token's lineage.
pub(crate) const MAX_LINEAGE_DEPTH: usize = 32;

/// The key of a lineage edge from `parent` to `child`.
pub(crate) fn child_key(parent: &[u8], child: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parent.len() + child.len());
    // Revocation ids are at most 128 bytes (checked by validation).
    k.push(u8::try_from(parent.len()).unwrap_or(u8::MAX));
    k.extend_from_slice(parent);
    k.extend_from_slice(child);
    k
}

/// The range of every edge from `parent`.
fn children_range(parent: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let start = child_key(parent, b"");
    let mut end = start.clone();
    end.push(0xff);
    // Children are at most 128 bytes: `start ‖ 0xff…` bounds them; pad to be safe.
    end.extend(std::iter::repeat_n(0xff, 129));
    (start, end)
}

/// Records a mint; refused when a parent is already revoked (revoked between the gate's check
/// and this apply).
pub(crate) fn record_mint(
    tx: &WriteTransaction,
    id: &[u8],
    record: &MintRecord,
) -> Result<Outcome, StateError> {
    {
        let revoked = tx.open_table(REVOCATIONS)?;
        for p in &record.parents {
            if revoked.get(p.as_slice())?.is_some() {
                return Ok(Outcome::Rejected(crate::command::Rejection::ParentRevoked));
            }
        }
    }
    tx.open_table(MINTED)?
        .insert(id, encode(record)?.as_slice())?;
    let mut edges = tx.open_table(MINT_CHILDREN)?;
    for p in &record.parents {
        edges.insert(child_key(p, id).as_slice(), &be(record.expires_ms)[..])?;
    }
    Ok(Outcome::Done)
}

/// Revokes `ids` until `expires_ms` and, transitively, every token minted from any of them
/// until its own expiry.
pub(crate) fn revoke_with_descendants(
    tx: &WriteTransaction,
    ids: &[(Vec<u8>, u64)],
) -> Result<(), StateError> {
    let mut queue: VecDeque<(Vec<u8>, u64)> = ids.iter().cloned().collect();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut revocations = tx.open_table(REVOCATIONS)?;
    let edges = tx.open_table(MINT_CHILDREN)?;
    while let Some((id, until)) = queue.pop_front() {
        if !seen.insert(id.clone()) || seen.len() > MAX_REVOKED_DESCENDANTS {
            continue;
        }
        let keep_until = match revocations.get(id.as_slice())? {
            Some(v) => read_u64(v.value())?.max(until),
            None => until,
        };
        revocations.insert(id.as_slice(), be(keep_until).as_slice())?;
        let (start, end) = children_range(&id);
        for row in edges.range(start.as_slice()..end.as_slice())? {
            let (k, v) = row?;
            let child = k.value().get(start.len()..).unwrap_or_default().to_vec();
            if !child.is_empty() {
                queue.push_back((child, read_u64(v.value())?));
            }
        }
    }
    Ok(())
}

/// Drops mint records and lineage edges of tokens expired by `now`.
pub(crate) fn purge_expired(tx: &WriteTransaction, now: u64) -> Result<(), StateError> {
    super::rows::purge_where(tx, MINTED, |v| {
        Ok(decode::<MintRecord>("minted", v)?.expires_ms <= now)
    })?;
    super::rows::purge_where(tx, MINT_CHILDREN, |v| Ok(read_u64(v)? <= now))
}

/// Raises the recorded end of what member `authority` issued to `not_after_ms`.
pub(crate) fn mark_issued_until(
    tx: &WriteTransaction,
    authority: crate::types::NodeId,
    not_after_ms: u64,
) -> Result<(), StateError> {
    let key = format!("{META_ISSUED_UNTIL}{authority}");
    let current = match super::rows::meta_get(tx, &key)? {
        Some(v) => read_u64(&v)?,
        None => 0,
    };
    if not_after_ms > current {
        super::rows::meta_put(tx, &key, &be(not_after_ms))?;
    }
    Ok(())
}
