//! The scheduler's lease: at most one active scheduler per scope (the cluster, or one
//! namespace). Apply grants it when it is free, expired by the command's `time_ms`, or already
//! held by the same holder *and* the same caller; it refuses otherwise, naming the holder.

use super::{Invalid, invalid};

/// The shortest lease.
pub const MIN_LEASE_TTL_MS: u64 = 1_000;
/// The longest lease: a crashed scheduler blocks its standby at most this long.
pub const MAX_LEASE_TTL_MS: u64 = 300_000;
/// Bytes of a holder's name.
pub(super) const MAX_LEASE_HOLDER: usize = 128;

/// A lease's scope (empty: the cluster; else a namespace) and holder: `[A-Za-z0-9._-]`.
pub fn check_lease(scope: &str, holder: &str, ttl_ms: Option<u64>) -> Result<(), Invalid> {
    if !scope.is_empty() {
        ringzero_policy::Resource::from_segments(&["ns", scope])
            .map_err(|e| invalid(format!("lease scope {scope:?}: {e}")))?;
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if holder.is_empty() || holder.len() > MAX_LEASE_HOLDER || !holder.chars().all(ok) {
        return Err(invalid(format!(
            "lease holder: 1 to {MAX_LEASE_HOLDER} bytes of [A-Za-z0-9._-]"
        )));
    }
    if let Some(t) = ttl_ms
        && !(MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&t)
    {
        return Err(invalid(format!(
            "lease ttl {t} ms: {MIN_LEASE_TTL_MS} to {MAX_LEASE_TTL_MS} ms"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks() {
        assert!(check_lease("", "host-1-abc", Some(10_000)).is_ok());
        assert!(check_lease("shop", "h", Some(1_000)).is_ok());
        assert!(check_lease("", "", Some(10_000)).is_err());
        assert!(check_lease("", "a b", Some(10_000)).is_err());
        assert!(check_lease("", &"a".repeat(129), None).is_err());
        assert!(check_lease("a/b", "h", None).is_err());
        assert!(check_lease("", "h", Some(999)).is_err());
        assert!(check_lease("", "h", Some(300_001)).is_err());
    }
}
