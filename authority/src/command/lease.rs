//! The scheduler's lease: at most one active scheduler per scope (the cluster, or one
//! namespace). Apply grants it when it is free, expired by the command's `time_ms`, or already
//! held by the same holder *and* the same caller; it refuses otherwise, naming the holder.
//!
//! Each change of holder gives the lease a new `epoch` (a fencing token). The scheduler's
//! allocation writes carry the lease they are made under ([`LeaseFence`]) and apply decides, in
//! log order, whether it still holds: a deposed scheduler's in-flight write is refused.

use serde::{Deserialize, Serialize};

use super::{Invalid, invalid};

/// The lease an allocation write is made under: `scope`'s lease held by `holder` at `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseFence {
    pub scope: String,
    pub holder: String,
    pub epoch: u64,
}

impl LeaseFence {
    /// Scope and holder as for [`check_lease`]; the epoch of a granted lease is never 0.
    pub fn check(&self) -> Result<(), Invalid> {
        check_lease(&self.scope, &self.holder, None)?;
        if self.epoch == 0 {
            return Err(invalid("lease epoch 0: take the lease first"));
        }
        Ok(())
    }

    /// Whether this lease's scope covers `namespace` (the cluster's covers every one).
    pub fn covers(&self, namespace: &str) -> bool {
        self.scope.is_empty() || self.scope == namespace
    }
}

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
        let f = |scope: &str, epoch| LeaseFence {
            scope: scope.into(),
            holder: "h".into(),
            epoch,
        };
        assert!(f("", 1).check().is_ok());
        assert!(f("", 0).check().is_err());
        assert!(f("a/b", 1).check().is_err());
        assert!(f("", 1).covers("shop") && f("shop", 1).covers("shop"));
        assert!(!f("shop", 1).covers("web"));
    }
}
