//! The audit log as a transparency log, inside the state machine.
//!
//! Each audit record (sequence numbers from 0, no gaps) is also a leaf of an RFC 6962 Merkle
//! tree: apply stores its leaf hash — SHA-256 of `0x00 ‖` the record's canonical
//! [`AuditEntry`] JSON — and the hash of every perfect subtree the leaf completes, so a root or
//! a proof at any size costs O(log n) lookups, never a rehash. Apply also maintains the query
//! indexes (actor, operation, denials, time). Sealing drops old records and their index rows
//! from the live state; leaf and subtree hashes stay, so the tree keeps growing across sealed
//! segments and proofs remain available.

use redb::{ReadableTable, WriteTransaction};
use ringzero_policy::audit::{self, AuditEntry, Hash, LeafHashes};

use super::*;
use crate::command::{AuditDecision, Outcome};

/// The canonical leaf of a stored record.
pub fn audit_entry(a: &StoredAudit) -> AuditEntry {
    AuditEntry {
        seq: a.seq,
        time_ms: a.time_ms,
        log_index: a.log_index,
        authority: a.record.authority,
        actor: a.record.actor.clone(),
        revocation_ids: a.record.revocation_ids.clone(),
        operation: a.record.operation.clone(),
        resource: a.record.resource.clone(),
        decision: match a.record.decision {
            AuditDecision::Allow => audit::Decision::Allow,
            AuditDecision::Deny => audit::Decision::Deny,
        },
        reason: a.record.reason.clone(),
        request_id: a.record.request_id.clone(),
        outcome: match &a.outcome {
            Outcome::Done => "done".to_owned(),
            Outcome::KeyId(id) => format!("key {id}"),
            Outcome::Revision(r) => format!("revision {r}"),
            Outcome::Lease { expires_ms, .. } => format!("lease until {expires_ms}"),
            Outcome::Rejected(why) => format!("rejected: {why}"),
        },
        details: a.record.details.clone(),
    }
}

fn node_key(level: u32, index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = level as u8;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn hash_of(table: &'static str, v: &[u8]) -> Result<Hash, StateError> {
    v.try_into().map_err(|_| StateError::Corrupt {
        table,
        detail: "hash is not 32 bytes".into(),
    })
}

fn seq_key(prefix: &str, seq: u64) -> Vec<u8> {
    compound(prefix, &be(seq))
}

fn time_key(time_ms: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&time_ms.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The audit log's tables, opened once for every record one apply call appends (opening a
/// redb table costs about as much as an insert).
pub(crate) struct AuditTables<'t> {
    tx: &'t WriteTransaction,
    records: redb::Table<'t, &'static [u8], &'static [u8]>,
    leaves: redb::Table<'t, &'static [u8], &'static [u8]>,
    nodes: redb::Table<'t, &'static [u8], &'static [u8]>,
    by_actor: redb::Table<'t, &'static [u8], &'static [u8]>,
    by_operation: redb::Table<'t, &'static [u8], &'static [u8]>,
    by_time: redb::Table<'t, &'static [u8], &'static [u8]>,
}

impl<'t> AuditTables<'t> {
    pub(crate) fn open(tx: &'t WriteTransaction) -> Result<Self, StateError> {
        Ok(Self {
            tx,
            records: tx.open_table(AUDIT)?,
            leaves: tx.open_table(AUDIT_LEAVES)?,
            nodes: tx.open_table(AUDIT_NODES)?,
            by_actor: tx.open_table(AUDIT_BY_ACTOR)?,
            by_operation: tx.open_table(AUDIT_BY_OPERATION)?,
            by_time: tx.open_table(AUDIT_BY_TIME)?,
        })
    }

    /// Stores `a` (whose `seq` is the next leaf index): the record, its leaf, the subtrees it
    /// completes, and its index rows.
    pub(crate) fn append(&mut self, a: &StoredAudit) -> Result<(), StateError> {
        let seq = a.seq;
        let bytes = encode(a)?;
        self.records.insert(&be(seq)[..], bytes.as_slice())?;
        let leaf = audit_entry(a).leaf_hash();
        self.leaves.insert(&be(seq)[..], &leaf[..])?;
        // Every perfect subtree this leaf completes: at level l when the leaf count is a
        // multiple of 2^l.
        let mut hash = leaf;
        let mut level = 0u32;
        let mut index = seq;
        while index % 2 == 1 {
            let left_key = node_key(level, index - 1);
            let left = if level == 0 {
                let v = self
                    .leaves
                    .get(&be(index - 1)[..])?
                    .ok_or(StateError::Corrupt {
                        table: "audit_leaves",
                        detail: format!("leaf {} missing", index - 1),
                    })?;
                hash_of("audit_leaves", v.value())?
            } else {
                let v = self.nodes.get(&left_key[..])?.ok_or(StateError::Corrupt {
                    table: "audit_nodes",
                    detail: format!("subtree {level}/{} missing", index - 1),
                })?;
                hash_of("audit_nodes", v.value())?
            };
            hash = audit::merkle::node_hash(&left, &hash);
            level += 1;
            index /= 2;
            self.nodes.insert(&node_key(level, index)[..], &hash[..])?;
        }
        let r = &a.record;
        self.by_actor
            .insert(seq_key(&r.actor, seq).as_slice(), &[][..])?;
        self.by_operation
            .insert(seq_key(&r.operation, seq).as_slice(), &[][..])?;
        if r.decision == AuditDecision::Deny {
            self.tx
                .open_table(AUDIT_DENIALS)?
                .insert(&be(seq)[..], &[][..])?;
        }
        self.by_time
            .insert(&time_key(a.time_ms, seq)[..], &[][..])?;
        Ok(())
    }
}

/// The number of records (sealed ones included): the tree size.
pub(crate) fn size_in(tx: &WriteTransaction) -> Result<u64, StateError> {
    super::rows::counter(tx, CTR_AUDIT)
}

/// Drops the live records before `up_to` (and their index rows), keeping the tree.
pub(crate) fn seal(tx: &WriteTransaction, from: u64, up_to: u64) -> Result<(), StateError> {
    let mut records = tx.open_table(AUDIT)?;
    let mut actors = tx.open_table(AUDIT_BY_ACTOR)?;
    let mut ops = tx.open_table(AUDIT_BY_OPERATION)?;
    let mut denials = tx.open_table(AUDIT_DENIALS)?;
    let mut times = tx.open_table(AUDIT_BY_TIME)?;
    for seq in from..up_to {
        let Some(v) = records.remove(&be(seq)[..])? else {
            continue;
        };
        let a: StoredAudit = decode("audit", v.value())?;
        drop(v);
        actors.remove(seq_key(&a.record.actor, seq).as_slice())?;
        ops.remove(seq_key(&a.record.operation, seq).as_slice())?;
        denials.remove(&be(seq)[..])?;
        times.remove(&time_key(a.time_ms, seq)[..])?;
    }
    Ok(())
}

/// The Merkle tree of the first `size` records, as stored.
#[derive(Debug)]
pub struct AuditTree<'a> {
    reader: &'a StateReader,
    size: u64,
}

impl<'a> AuditTree<'a> {
    pub(crate) fn new(reader: &'a StateReader, size: u64) -> Self {
        Self { reader, size }
    }
}

impl LeafHashes for AuditTree<'_> {
    type Error = StateError;

    fn size(&self) -> u64 {
        self.size
    }

    fn leaf(&self, i: u64) -> Result<Hash, StateError> {
        self.reader.audit_hash(AUDIT_LEAVES, "audit_leaves", &be(i))
    }

    fn perfect_subtree(&self, level: u32, index: u64) -> Result<Hash, StateError> {
        if level == 0 {
            return self.leaf(index);
        }
        self.reader
            .audit_hash(AUDIT_NODES, "audit_nodes", &node_key(level, index))
    }
}

/// What `audit query` asks for. Every given filter must match.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub operation: Option<String>,
    /// A resource prefix, segment-aware.
    pub resource: Option<String>,
    pub decision: Option<AuditDecision>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Only records after this sequence.
    pub after_seq: Option<u64>,
    pub limit: usize,
}

impl AuditQuery {
    fn matches(&self, a: &StoredAudit) -> bool {
        let r = &a.record;
        self.actor.as_ref().is_none_or(|x| *x == r.actor)
            && self.operation.as_ref().is_none_or(|x| *x == r.operation)
            && self.decision.is_none_or(|d| d == r.decision)
            && self.since_ms.is_none_or(|t| a.time_ms >= t)
            && self.until_ms.is_none_or(|t| a.time_ms <= t)
            && self.resource.as_ref().is_none_or(|p| {
                p.is_empty()
                    || r.resource == *p
                    || r.resource
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
    }
}

impl StateReader {
    fn audit_hash(&self, table: Raw, name: &'static str, key: &[u8]) -> Result<Hash, StateError> {
        let t = self.tx.open_table(table)?;
        let v = t.get(key)?.ok_or(StateError::Corrupt {
            table: name,
            detail: "hash missing".into(),
        })?;
        hash_of(name, v.value())
    }

    /// The tree size: every record ever appended, sealed ones included.
    pub fn audit_size(&self) -> Result<u64, StateError> {
        let t = self.tx.open_table(META)?;
        match t.get(CTR_AUDIT.as_bytes())? {
            Some(v) => super::rows::read_u64(v.value()),
            None => Ok(0),
        }
    }

    /// Records before this one were sealed.
    pub fn audit_sealed_up_to(&self) -> Result<u64, StateError> {
        let t = self.tx.open_table(META)?;
        match t.get(META_AUDIT_SEALED.as_bytes())? {
            Some(v) => super::rows::read_u64(v.value()),
            None => Ok(0),
        }
    }

    /// The tree of the first `size` records.
    pub fn audit_tree(&self, size: u64) -> AuditTree<'_> {
        AuditTree::new(self, size)
    }

    /// One live record.
    pub fn audit_record(&self, seq: u64) -> Result<Option<StoredAudit>, StateError> {
        self.get(AUDIT, "audit", &be(seq))
    }

    /// Records matching `q`, oldest first, at most `q.limit`, read through the most selective
    /// index the query allows; and, when more may follow, the sequence to continue after (the
    /// last row *scanned*, so a sparse filter still makes progress). Scans at most 100 ×
    /// `limit` index rows per call, so an unselective filter pages rather than runs unbounded.
    pub fn audit_query(
        &self,
        q: &AuditQuery,
    ) -> Result<(Vec<StoredAudit>, Option<u64>), StateError> {
        let limit = q.limit.max(1);
        let budget = limit.saturating_mul(100);
        let start = q.after_seq.map_or(0, |s| s.saturating_add(1));
        let mut out = Vec::new();
        let mut scanned = 0usize;
        let mut more = false;
        let mut last = None;
        let mut visit = |seq: u64| -> Result<bool, StateError> {
            scanned += 1;
            last = Some(seq);
            if let Some(a) = self.audit_record(seq)?
                && q.matches(&a)
            {
                out.push(a);
            }
            if out.len() >= limit || scanned >= budget {
                more = true;
                return Ok(false);
            }
            Ok(true)
        };
        let seq_of = |k: &[u8]| -> Result<u64, StateError> {
            let tail = k.len().checked_sub(8).ok_or(StateError::Corrupt {
                table: "audit index",
                detail: "short key".into(),
            })?;
            super::rows::read_u64(&k[tail..])
        };
        if let Some(key) = q
            .actor
            .as_ref()
            .map(|a| (AUDIT_BY_ACTOR, a))
            .or(q.operation.as_ref().map(|o| (AUDIT_BY_OPERATION, o)))
        {
            let (table, prefix) = key;
            let t = self.tx.open_table(table)?;
            let from = seq_key(prefix, start);
            let to = seq_key(prefix, u64::MAX);
            for row in t.range(from.as_slice()..=to.as_slice())? {
                let (k, _) = row?;
                if !visit(seq_of(k.value())?)? {
                    break;
                }
            }
        } else if q.decision == Some(AuditDecision::Deny) {
            let t = self.tx.open_table(AUDIT_DENIALS)?;
            for row in t.range(&be(start)[..]..)? {
                let (k, _) = row?;
                if !visit(seq_of(k.value())?)? {
                    break;
                }
            }
        } else if q.since_ms.is_some() || q.until_ms.is_some() {
            // By time; results come in time order, which for records of one cluster is seq
            // order up to clock skew between authority nodes.
            // A continuation resumes right after the row it stopped at: (its time, its seq).
            let t = self.tx.open_table(AUDIT_BY_TIME)?;
            let mut from = time_key(q.since_ms.unwrap_or(0), 0);
            if let Some(after) = q.after_seq
                && let Some(a) = self.audit_record(after)?
            {
                from = time_key(
                    a.time_ms.max(q.since_ms.unwrap_or(0)),
                    after.saturating_add(1),
                );
            }
            let to = time_key(q.until_ms.unwrap_or(u64::MAX), u64::MAX);
            if from <= to {
                for row in t.range(&from[..]..=&to[..])? {
                    let (k, _) = row?;
                    if !visit(seq_of(k.value())?)? {
                        break;
                    }
                }
            }
        } else {
            let t = self.tx.open_table(AUDIT)?;
            for row in t.range(&be(start)[..]..)? {
                let (k, _) = row?;
                if !visit(seq_of(k.value())?)? {
                    break;
                }
            }
        }
        Ok((out, if more { last } else { None }))
    }
}
