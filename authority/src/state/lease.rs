//! The scheduler lease: `sched_lease` (scope → [`LeaseRecord`], versioned), one row per scope
//! (empty: the cluster). Expiry is decided by the command's `time_ms` (the proposing leader's
//! clock), so every replica decides alike.
//!
//! Each change of holder takes a new epoch from one cluster-wide counter in `meta`
//! (`ctr:sched_lease_epoch`), so an epoch is never given twice, in any scope, even after a
//! release deletes the row. [`fence`] decides whether an allocation write may land under it.

use std::collections::BTreeSet;

use redb::WriteTransaction;
use serde::{Deserialize, Serialize};

use super::rows::{get, next_counter, put, remove};
use super::{SCHED_LEASE, StateError, StateReader, decode};
use crate::command::{LeaseFence, Outcome, Rejection};

/// The epoch counter (`meta`).
const CTR_LEASE_EPOCH: &str = "ctr:sched_lease_epoch";

/// Who holds a scope's lease, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: String,
    /// The SPIFFE ID of the caller that took it: only that caller renews or releases it.
    pub actor: String,
    /// When this holder took it (unchanged by renewals).
    pub acquired_ms: u64,
    pub renewed_ms: u64,
    pub expires_ms: u64,
    pub ttl_ms: u64,
    /// The fencing token, set when this holder took it (0: taken before epochs existed).
    pub epoch: u64,
}

impl LeaseRecord {
    /// Held by `holder` for `actor`, and not expired at `now`.
    pub fn held_by(&self, holder: &str, actor: &str, now: u64) -> bool {
        self.holder == holder && self.actor == actor && now < self.expires_ms
    }
}

/// The first shape: no epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecordV1 {
    holder: String,
    actor: String,
    acquired_ms: u64,
    renewed_ms: u64,
    expires_ms: u64,
    ttl_ms: u64,
}

/// Postcard records cannot gain fields: a later shape is a new variant, the old one still
/// decodes (as epoch 0, which no fenced write can name).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum StoredLease {
    V1(LeaseRecordV1),
    V2(LeaseRecord),
}

impl From<StoredLease> for LeaseRecord {
    fn from(s: StoredLease) -> Self {
        match s {
            StoredLease::V1(r) => LeaseRecord {
                holder: r.holder,
                actor: r.actor,
                acquired_ms: r.acquired_ms,
                renewed_ms: r.renewed_ms,
                expires_ms: r.expires_ms,
                ttl_ms: r.ttl_ms,
                epoch: 0,
            },
            StoredLease::V2(r) => r,
        }
    }
}

fn load(tx: &WriteTransaction, scope: &str) -> Result<Option<LeaseRecord>, StateError> {
    let s: Option<StoredLease> = get(tx, SCHED_LEASE, "sched_lease", scope.as_bytes())?;
    Ok(s.map(LeaseRecord::from))
}

/// `AcquireSchedLease`: granted when free, expired at `now`, or held by `holder` and `actor`
/// (a renewal, keeping its epoch); `LeaseHeld` otherwise. A new holder gets a new epoch.
pub(crate) fn acquire(
    tx: &WriteTransaction,
    scope: &str,
    holder: &str,
    ttl_ms: u64,
    now: u64,
    actor: &str,
) -> Result<Outcome, StateError> {
    let current = load(tx, scope)?;
    let renewed = match &current {
        Some(c) if c.held_by(holder, actor, now) => true,
        Some(c) if now < c.expires_ms => {
            return Ok(Outcome::Rejected(Rejection::LeaseHeld {
                holder: c.holder.clone(),
                expires_ms: c.expires_ms,
            }));
        }
        _ => false,
    };
    let expires_ms = now.saturating_add(ttl_ms);
    // A lease taken before epochs existed gets one at its first renewal.
    let (acquired_ms, epoch) = match &current {
        Some(c) if renewed && c.epoch != 0 => (c.acquired_ms, c.epoch),
        Some(c) if renewed => (c.acquired_ms, next_counter(tx, CTR_LEASE_EPOCH)?),
        _ => (now, next_counter(tx, CTR_LEASE_EPOCH)?),
    };
    let record = LeaseRecord {
        holder: holder.to_owned(),
        actor: actor.to_owned(),
        acquired_ms,
        renewed_ms: now,
        expires_ms,
        ttl_ms,
        epoch,
    };
    put(tx, SCHED_LEASE, scope.as_bytes(), &StoredLease::V2(record))?;
    Ok(Outcome::Lease {
        expires_ms,
        renewed,
    })
}

/// Whether an allocation write touching `namespaces` may land at `now` for `actor`: `None` if
/// so, else the refusal. With `lease`: its scope's lease must be held by its holder for
/// `actor` at its epoch, not expired, and the scope must cover every namespace. Without: no
/// unexpired lease may cover any of them (the cluster's, or a namespace's own). At most one
/// read per namespace plus one.
pub(crate) fn fence(
    tx: &WriteTransaction,
    lease: Option<&LeaseFence>,
    namespaces: &BTreeSet<String>,
    now: u64,
    actor: &str,
) -> Result<Option<Rejection>, StateError> {
    if let Some(f) = lease {
        let held = load(tx, &f.scope)?
            .is_some_and(|c| c.held_by(&f.holder, actor, now) && c.epoch == f.epoch);
        if !held {
            return Ok(Some(Rejection::LeaseLost {
                scope: f.scope.clone(),
                holder: f.holder.clone(),
                epoch: f.epoch,
            }));
        }
        if let Some(ns) = namespaces.iter().find(|ns| !f.covers(ns)) {
            return Ok(Some(Rejection::AllocRefused(format!(
                "the lease of scope {:?} does not cover namespace {ns}",
                f.scope
            ))));
        }
        return Ok(None);
    }
    let scopes = std::iter::once("").chain(namespaces.iter().map(String::as_str));
    for scope in scopes {
        if let Some(c) = load(tx, scope)?.filter(|c| now < c.expires_ms) {
            return Ok(Some(Rejection::LeaseHeld {
                holder: c.holder,
                expires_ms: c.expires_ms,
            }));
        }
    }
    Ok(None)
}

/// `ReleaseSchedLease`: removes the lease if `holder` and `actor` hold it; `NotFound` else.
pub(crate) fn release(
    tx: &WriteTransaction,
    scope: &str,
    holder: &str,
    actor: &str,
    now: u64,
) -> Result<Outcome, StateError> {
    match load(tx, scope)? {
        Some(c) if c.held_by(holder, actor, now) => {
            remove(tx, SCHED_LEASE, scope.as_bytes())?;
            Ok(Outcome::Done)
        }
        _ => Ok(Outcome::Rejected(Rejection::NotFound)),
    }
}

impl StateReader {
    /// The lease of `scope` (empty: the cluster), expired or not.
    pub fn sched_lease(&self, scope: &str) -> Result<Option<LeaseRecord>, StateError> {
        let t = self.tx.open_table(SCHED_LEASE)?;
        match t.get(scope.as_bytes())? {
            Some(v) => Ok(Some(
                decode::<StoredLease>("sched_lease", v.value())?.into(),
            )),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{AuditDecision, AuditRecord, Command, CommandId, Op};

    struct Driver {
        _dir: tempfile::TempDir,
        db: redb::Database,
        index: u64,
    }

    impl Driver {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
            crate::state::create_tables(&db).unwrap();
            Driver {
                _dir: dir,
                db,
                index: 0,
            }
        }

        fn run_as(&mut self, actor: &str, time_ms: u64, op: Op) -> Outcome {
            self.index += 1;
            let cmd = Command {
                id: CommandId::fresh(),
                time_ms,
                audit: AuditRecord {
                    actor: actor.into(),
                    revocation_ids: vec![],
                    operation: "job:launch".into(),
                    resource: "ns".into(),
                    decision: AuditDecision::Allow,
                    reason: None,
                    authority: 1,
                    request_id: "r".into(),
                    details: vec![],
                },
                op,
            };
            let tx = self.db.begin_write().unwrap();
            let r = crate::state::apply::apply_command(&tx, self.index, &cmd).unwrap();
            tx.commit().unwrap();
            r.outcome
        }

        fn read(&self) -> StateReader {
            StateReader::new(&self.db).unwrap()
        }

        fn audit_len(&self) -> u64 {
            self.read().audit_size().unwrap()
        }
    }

    fn acquire(d: &mut Driver, holder: &str, actor: &str, at: u64) -> Outcome {
        d.run_as(
            actor,
            at,
            Op::AcquireSchedLease {
                scope: String::new(),
                holder: holder.into(),
                ttl_ms: 10_000,
            },
        )
    }

    #[test]
    fn a_first_shape_record_decodes_and_gets_an_epoch_at_renewal() {
        let mut d = Driver::new();
        let a = "spiffe://td/user/sched1";
        let v1 = LeaseRecordV1 {
            holder: "h1".into(),
            actor: a.into(),
            acquired_ms: 1_000,
            renewed_ms: 1_000,
            expires_ms: 11_000,
            ttl_ms: 10_000,
        };
        let tx = d.db.begin_write().unwrap();
        put(&tx, SCHED_LEASE, b"", &StoredLease::V1(v1)).unwrap();
        tx.commit().unwrap();
        let r = d.read().sched_lease("").unwrap().unwrap();
        assert_eq!((r.holder.as_str(), r.epoch), ("h1", 0));
        assert!(matches!(
            acquire(&mut d, "h1", a, 2_000),
            Outcome::Lease { renewed: true, .. }
        ));
        let r = d.read().sched_lease("").unwrap().unwrap();
        assert_eq!((r.acquired_ms, r.epoch), (1_000, 1));
        // Later renewals keep it.
        acquire(&mut d, "h1", a, 3_000);
        assert_eq!(d.read().sched_lease("").unwrap().unwrap().epoch, 1);
    }

    #[test]
    fn lease_apply_rules() {
        let mut d = Driver::new();
        let a = "spiffe://td/user/sched1";
        let b = "spiffe://td/user/sched2";
        let audit = |d: &Driver| d.audit_len();
        // Free: granted, audited.
        let n0 = audit(&d);
        assert_eq!(
            acquire(&mut d, "h1", a, 1_000),
            Outcome::Lease {
                expires_ms: 11_000,
                renewed: false
            }
        );
        assert_eq!(audit(&d), n0 + 1);
        // Held: refused, naming the holder.
        assert_eq!(
            acquire(&mut d, "h2", b, 5_000),
            Outcome::Rejected(Rejection::LeaseHeld {
                holder: "h1".into(),
                expires_ms: 11_000
            })
        );
        // The same holder name from another caller is not the holder.
        assert!(matches!(
            acquire(&mut d, "h1", b, 5_000),
            Outcome::Rejected(Rejection::LeaseHeld { .. })
        ));
        // Renewal by the holder: extended, no audit record.
        let n1 = audit(&d);
        assert_eq!(
            acquire(&mut d, "h1", a, 6_000),
            Outcome::Lease {
                expires_ms: 16_000,
                renewed: true
            }
        );
        assert_eq!(audit(&d), n1);
        let r = d.read().sched_lease("").unwrap().unwrap();
        assert_eq!((r.acquired_ms, r.renewed_ms), (1_000, 6_000));
        // Expired (by the command's time): taken by another, audited.
        assert_eq!(
            acquire(&mut d, "h2", b, 16_000),
            Outcome::Lease {
                expires_ms: 26_000,
                renewed: false
            }
        );
        assert_eq!(audit(&d), n1 + 1);
        // The old holder cannot renew or release it.
        assert!(matches!(
            acquire(&mut d, "h1", a, 17_000),
            Outcome::Rejected(Rejection::LeaseHeld { .. })
        ));
        let release = |d: &mut Driver, holder: &str, actor: &str| {
            d.run_as(
                actor,
                18_000,
                Op::ReleaseSchedLease {
                    scope: String::new(),
                    holder: holder.into(),
                },
            )
        };
        assert_eq!(
            release(&mut d, "h1", a),
            Outcome::Rejected(Rejection::NotFound)
        );
        assert_eq!(release(&mut d, "h2", b), Outcome::Done);
        assert!(d.read().sched_lease("").unwrap().is_none());
        // Scopes are independent.
        assert!(matches!(
            acquire(&mut d, "h1", a, 19_000),
            Outcome::Lease { renewed: false, .. }
        ));
        assert!(matches!(
            d.run_as(
                b,
                19_000,
                Op::AcquireSchedLease {
                    scope: "shop".into(),
                    holder: "h2".into(),
                    ttl_ms: 10_000
                }
            ),
            Outcome::Lease { renewed: false, .. }
        ));
    }
}
