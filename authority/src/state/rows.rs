//! Reading and writing rows inside a write transaction: typed get/put/remove, the meta table
//! and its counters, big-endian integers, and purging rows past their expiry. Shared by apply,
//! the audit log and the lineage, so none of them depends on another for these.

use redb::{ReadableTable, WriteTransaction};

use super::*;

pub(crate) fn meta_get(tx: &WriteTransaction, key: &str) -> Result<Option<Vec<u8>>, StateError> {
    let t = tx.open_table(META)?;
    Ok(t.get(key.as_bytes())?.map(|v| v.value().to_vec()))
}

pub(crate) fn meta_put(tx: &WriteTransaction, key: &str, value: &[u8]) -> Result<(), StateError> {
    let mut t = tx.open_table(META)?;
    t.insert(key.as_bytes(), value)?;
    Ok(())
}

/// The current value of a counter (0 before its first use).
pub(crate) fn counter(tx: &WriteTransaction, key: &str) -> Result<u64, StateError> {
    match meta_get(tx, key)? {
        Some(b) => read_u64(&b),
        None => Ok(0),
    }
}

pub(crate) fn next_counter(tx: &WriteTransaction, key: &str) -> Result<u64, StateError> {
    let current = match meta_get(tx, key)? {
        Some(b) => {
            u64::from_be_bytes(b.as_slice().try_into().map_err(|_| StateError::Corrupt {
                table: "meta",
                detail: format!("counter {key}"),
            })?)
        }
        None => 0,
    };
    let next = current + 1;
    meta_put(tx, key, &be(next))?;
    Ok(next)
}

pub(crate) fn get<T: for<'de> serde::Deserialize<'de>>(
    tx: &WriteTransaction,
    table: Raw,
    name: &'static str,
    key: &[u8],
) -> Result<Option<T>, StateError> {
    let t = tx.open_table(table)?;
    let v = t.get(key)?;
    v.map(|v| decode(name, v.value())).transpose()
}

pub(crate) fn put<T: serde::Serialize>(
    tx: &WriteTransaction,
    table: Raw,
    key: &[u8],
    value: &T,
) -> Result<(), StateError> {
    let bytes = encode(value)?;
    tx.open_table(table)?.insert(key, bytes.as_slice())?;
    Ok(())
}

pub(crate) fn remove(tx: &WriteTransaction, table: Raw, key: &[u8]) -> Result<bool, StateError> {
    Ok(tx.open_table(table)?.remove(key)?.is_some())
}

pub(crate) fn read_u64(v: &[u8]) -> Result<u64, StateError> {
    Ok(u64::from_be_bytes(v.try_into().map_err(|_| {
        StateError::Corrupt {
            table: "u64",
            detail: "not 8 bytes".into(),
        }
    })?))
}

pub(crate) fn purge_where(
    tx: &WriteTransaction,
    table: Raw,
    expired: impl Fn(&[u8]) -> Result<bool, StateError>,
) -> Result<(), StateError> {
    let mut t = tx.open_table(table)?;
    let mut doomed = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        if expired(v.value())? {
            doomed.push(k.value().to_vec());
        }
    }
    for k in doomed {
        t.remove(k.as_slice())?;
    }
    Ok(())
}

/// The value of a recorded node or user certificate serial: its not-after (unix ms), then the
/// authority member whose CA signed it (the leader that recorded it). The serial alone does not
/// name a certificate: a CA key that leaves the cluster (a removed member's) can sign another
/// certificate with the same serial, which the gate then tells apart by its issuer.
pub(crate) fn serial_value(not_after_ms: u64, issuer: crate::NodeId) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&be(not_after_ms));
    v[8..].copy_from_slice(&be(issuer));
    v
}

/// The not-after of a recorded serial's value (8 bytes, or 16 with the issuer).
pub(crate) fn read_not_after(v: &[u8]) -> Result<u64, StateError> {
    read_u64(v.get(..8).unwrap_or(v))
}

/// The issuer of a recorded serial's value: `None` for a value written before issuers were
/// recorded.
pub(crate) fn read_issuer(v: &[u8]) -> Result<Option<crate::NodeId>, StateError> {
    match v.len() {
        8 => Ok(None),
        16 => read_u64(&v[8..]).map(Some),
        _ => Err(StateError::Corrupt {
            table: "serials",
            detail: "neither 8 nor 16 bytes".into(),
        }),
    }
}
