//! Mesh policies: the allow rules `(to, from)` in one table, and the counter the entry feed
//! watches to know when to send them again.

use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::rows::{next_counter, put, remove};
use super::{MESH_POLICIES, StateError, StateReader, compound, decode};
use crate::command::{MeshPolicy, Outcome, Rejection, limits};

/// `ctr:mesh`: bumped by every change of the mesh policies.
pub(crate) const CTR_MESH: &str = "ctr:mesh";

/// A mesh policy as stored: the rule, when it was first allowed and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPolicyRecord {
    pub policy: MeshPolicy,
    pub created_ms: u64,
    /// The SPIFFE ID of the caller that allowed it.
    pub actor: String,
}

fn key(p: &MeshPolicy) -> Vec<u8> {
    compound(&p.to, p.from.as_bytes())
}

/// `PutMeshPolicy`: idempotent (an existing rule keeps its record); refused past
/// [`limits::MAX_MESH_POLICIES`].
pub(crate) fn put_policy(
    tx: &WriteTransaction,
    policy: &MeshPolicy,
    now: u64,
    actor: &str,
) -> Result<Outcome, StateError> {
    let k = key(policy);
    {
        let t = tx.open_table(MESH_POLICIES)?;
        if t.get(k.as_slice())?.is_some() {
            return Ok(Outcome::Done);
        }
        if t.len()? >= limits::MAX_MESH_POLICIES as u64 {
            return Ok(Outcome::Rejected(Rejection::LimitReached(format!(
                "at most {} mesh policies",
                limits::MAX_MESH_POLICIES
            ))));
        }
        // Keys are `to \0 from`, and a pattern holds no NUL: one `to`'s rules are contiguous.
        let (first, past) = (compound(&policy.to, b""), compound(&policy.to, b"\xff"));
        let same_to = t
            .range(first.as_slice()..past.as_slice())?
            .take(limits::MAX_MESH_POLICIES_PER_TO)
            .count();
        if same_to >= limits::MAX_MESH_POLICIES_PER_TO {
            return Ok(Outcome::Rejected(Rejection::LimitReached(format!(
                "at most {} mesh policies for one --to",
                limits::MAX_MESH_POLICIES_PER_TO
            ))));
        }
    }
    put(
        tx,
        MESH_POLICIES,
        &k,
        &MeshPolicyRecord {
            policy: policy.clone(),
            created_ms: now,
            actor: actor.to_owned(),
        },
    )?;
    next_counter(tx, CTR_MESH)?;
    Ok(Outcome::Done)
}

/// `DeleteMeshPolicy`: `NotFound` when there is no such rule.
pub(crate) fn delete_policy(
    tx: &WriteTransaction,
    policy: &MeshPolicy,
) -> Result<Outcome, StateError> {
    if !remove(tx, MESH_POLICIES, &key(policy))? {
        return Ok(Outcome::Rejected(Rejection::NotFound));
    }
    next_counter(tx, CTR_MESH)?;
    Ok(Outcome::Done)
}

impl StateReader {
    /// Every mesh policy, ordered by `to`, then `from`.
    pub fn mesh_policies(&self) -> Result<Vec<MeshPolicyRecord>, StateError> {
        let t = self.tx.open_table(MESH_POLICIES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode("mesh_policies", v.value())?);
        }
        Ok(out)
    }

    /// Increases with every change of the mesh policies (0 before any).
    pub fn mesh_revision(&self) -> Result<u64, StateError> {
        let t = self.tx.open_table(super::META)?;
        match t.get(CTR_MESH.as_bytes())? {
            Some(v) => super::rows::read_u64(v.value()),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::apply::apply_command;
    use super::super::create_tables;
    use super::*;
    use crate::command::{AuditDecision, AuditRecord, Command, CommandId, Op};

    fn cmd(op: Op) -> Command {
        Command {
            id: CommandId::fresh(),
            time_ms: 1_000,
            audit: AuditRecord {
                actor: "spiffe://td/user/carol".into(),
                revocation_ids: vec![],
                operation: "mesh:policy".into(),
                resource: "ns/shop/db".into(),
                decision: AuditDecision::Allow,
                reason: None,
                authority: 1,
                request_id: "r".into(),
                details: vec![],
            },
            op,
        }
    }

    #[test]
    fn policies_are_put_once_deleted_once_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
        create_tables(&db).unwrap();
        let mut index = 0;
        let mut run = |op: Op| {
            index += 1;
            let tx = db.begin_write().unwrap();
            let r = apply_command(&tx, index, &cmd(op)).unwrap();
            tx.commit().unwrap();
            (r.outcome, StateReader::new(&db).unwrap())
        };
        let policy = MeshPolicy {
            to: "spiffe://td/ns/shop/db".into(),
            from: "spiffe://td/ns/shop/web".into(),
        };
        let (o, r) = run(Op::PutMeshPolicy {
            policy: policy.clone(),
        });
        assert_eq!(o, Outcome::Done);
        assert_eq!(r.mesh_revision().unwrap(), 1);
        let all = r.mesh_policies().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].policy, policy);
        assert_eq!(all[0].actor, "spiffe://td/user/carol");
        // Idempotent: no second row, no change for the feed.
        let (o, r) = run(Op::PutMeshPolicy {
            policy: policy.clone(),
        });
        assert_eq!(o, Outcome::Done);
        assert_eq!(r.mesh_revision().unwrap(), 1);
        assert_eq!(r.mesh_policies().unwrap().len(), 1);
        // A malformed one is refused in apply, and writes nothing.
        let (o, r) = run(Op::PutMeshPolicy {
            policy: MeshPolicy {
                to: "spiffe://td/ringzero/authority/1".into(),
                from: "spiffe://td/ns/shop/web".into(),
            },
        });
        assert!(
            matches!(o, Outcome::Rejected(Rejection::Invalid(_))),
            "{o:?}"
        );
        assert_eq!(r.mesh_policies().unwrap().len(), 1);
        let (o, r) = run(Op::DeleteMeshPolicy {
            policy: policy.clone(),
        });
        assert_eq!(o, Outcome::Done);
        assert_eq!(r.mesh_revision().unwrap(), 2);
        assert!(r.mesh_policies().unwrap().is_empty());
        let (o, _) = run(Op::DeleteMeshPolicy { policy });
        assert_eq!(o, Outcome::Rejected(Rejection::NotFound));
    }

    #[test]
    fn one_to_holds_a_bounded_number_of_rules_of_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
        create_tables(&db).unwrap();
        let mut index = 0;
        let mut put = |to: &str, from: String| {
            index += 1;
            let tx = db.begin_write().unwrap();
            let policy = MeshPolicy {
                to: to.into(),
                from,
            };
            let r = apply_command(&tx, index, &cmd(Op::PutMeshPolicy { policy })).unwrap();
            tx.commit().unwrap();
            r.outcome
        };
        let to = "spiffe://td/ns/shop/*";
        for i in 0..limits::MAX_MESH_POLICIES_PER_TO {
            assert_eq!(put(to, format!("spiffe://td/ns/a/w{i}")), Outcome::Done);
        }
        let past = put(to, "spiffe://td/ns/a/one-more".into());
        assert!(
            matches!(&past, Outcome::Rejected(Rejection::LimitReached(m)) if m.contains("one --to")),
            "{past:?}"
        );
        // Another `to` (even one that starts with the same text) has its own share.
        assert_eq!(
            put("spiffe://td/ns/shop/db", "spiffe://td/ns/a/w0".into()),
            Outcome::Done
        );
        // A pattern past the size bound is malformed.
        let long = format!("spiffe://td/ns/a/{}", "x".repeat(limits::MAX_MESH_PATTERN));
        assert!(matches!(
            put("spiffe://td/ns/shop/db", long),
            Outcome::Rejected(Rejection::Invalid(_))
        ));
    }
}
