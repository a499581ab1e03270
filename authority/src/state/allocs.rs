//! Allocations and node drains.
//!
//! `allocs` (id → [`AllocRecord`]) with two indexes so that a node's or a job's allocations are
//! read without a scan: `allocs_by_node` (`node \0 id`) and `allocs_by_job`
//! (`namespace \0 job \0 id`). A per-node counter in `meta` (`ctr:allocs:<node>`) is bumped
//! whenever what that node's agent must run changes (placed, desired changed, removed), so each
//! agent's feed re-reads its allocations only then; an agent's own status reports do not bump it.
//! A cluster-wide counter (`ctr:alloc-changes`) is bumped by every command that changes any
//! allocation, reports included, so the scheduler's watch re-reads them only then.
//!
//! Each allocation also owns a registration entry, `alloc-<id>`, written and deleted here in
//! the same transaction as the allocation: its task's identity (the job's SPIFFE ID, on the
//! allocation's node, selectors `ringzero:job:<id>` and `unix:uid:<job uid>`). It exists while
//! the allocation is desired `Run` and not lost, and goes when the allocation is stopped,
//! marked lost or removed, or its job is purged. No caller needs entry rights for it: the job's
//! submitter was authorized for that identity and uid when submitting (`entry:write`,
//! `entry:select`), and placing needs `job:launch` on the job.
//!
//! Records are stored inside a versioned enum ([`StoredAlloc`]): postcard records cannot gain
//! fields, so a later shape is a new variant and the old one keeps decoding.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::jobs::{DesiredState, JobRecord};
use super::rows::{get, next_counter, put, remove};
use super::{
    ALLOCS, ALLOCS_BY_JOB, ALLOCS_BY_NODE, JOBS, NODE_DRAINS, NODES, NodeRecord, StateError,
    StateReader, compound, decode, encode,
};
use crate::command::{
    AllocDesired, AllocState, AllocUpdate, AllocWrite, LeaseFence, NodeStatus, Outcome, Placement,
    RegistrationEntry, Rejection, alloc_entry_id, limits,
};

/// `ctr:allocs:<node>`: bumped when the allocations the node must run change.
const CTR_NODE_ALLOCS: &str = "ctr:allocs:";
/// `ctr:alloc-changes`: bumped by every command that changes an allocation (reports too).
const CTR_ALLOC_CHANGES: &str = "ctr:alloc-changes";

/// An allocation as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocRecord {
    pub id: String,
    pub namespace: String,
    pub job: String,
    pub job_version: u64,
    pub index: u32,
    pub node: String,
    pub desired: AllocDesired,
    pub state: AllocState,
    pub exit_code: Option<i32>,
    pub restarts: u32,
    pub created_ms: u64,
    /// The last change of any field (the command's `time_ms`).
    pub updated_ms: u64,
    /// The agent's last message (or the scheduler's, for `Lost`).
    pub message: String,
    /// The allocation this one replaces, if the scheduler said so.
    pub previous: Option<String>,
    /// The SPIFFE ID of the caller that placed it.
    pub placed_by: String,
    /// When `desired` last changed.
    pub desired_ms: u64,
    /// When the agent last reported on it (0: never).
    pub reported_ms: u64,
}

/// The stored form: a new record shape is a new variant, never a changed one.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum StoredAlloc {
    V1(AllocRecord),
}

/// A drained node: no new allocation is placed on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    pub since_ms: u64,
    /// The SPIFFE ID of the caller that drained it.
    pub by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum StoredDrain {
    V1(DrainRecord),
}

fn by_node(node: &str, id: &str) -> Vec<u8> {
    compound(node, id.as_bytes())
}

fn by_job(namespace: &str, job: &str, id: &str) -> Vec<u8> {
    compound(namespace, &compound(job, id.as_bytes()))
}

fn load(tx: &WriteTransaction, id: &str) -> Result<Option<AllocRecord>, StateError> {
    let stored: Option<StoredAlloc> = get(tx, ALLOCS, "allocs", id.as_bytes())?;
    Ok(stored.map(|StoredAlloc::V1(r)| r))
}

fn store(tx: &WriteTransaction, r: &AllocRecord) -> Result<(), StateError> {
    put(tx, ALLOCS, r.id.as_bytes(), &StoredAlloc::V1(r.clone()))
}

fn bump(tx: &WriteTransaction, node: &str) -> Result<(), StateError> {
    next_counter(tx, &format!("{CTR_NODE_ALLOCS}{node}")).map(|_| ())
}

/// Some allocation changed in this command.
fn changed(tx: &WriteTransaction) -> Result<(), StateError> {
    next_counter(tx, CTR_ALLOC_CHANGES).map(|_| ())
}

/// Rows under `prefix` in `table`, at most `cap` of them.
fn count_prefix(
    tx: &WriteTransaction,
    table: super::Raw,
    prefix: &[u8],
    cap: usize,
) -> Result<usize, StateError> {
    let t = tx.open_table(table)?;
    let mut n = 0;
    for row in t.range(prefix..)? {
        let (k, _) = row?;
        if !k.value().starts_with(prefix) || n >= cap {
            break;
        }
        n += 1;
    }
    Ok(n)
}

/// The derived entry's TTL: the default of a user-written entry (1 h).
const ALLOC_ENTRY_TTL_S: u32 = 3600;

/// Writes `alloc-<id>`, the identity of the allocation's task.
fn put_alloc_entry(
    tx: &WriteTransaction,
    a: &Placement,
    job: &JobRecord,
    now: u64,
) -> Result<(), StateError> {
    let entry = RegistrationEntry {
        id: alloc_entry_id(&a.id),
        spiffe_id: job.job.spiffe_id.clone(),
        parent: a.node.clone(),
        selectors: vec![
            format!("ringzero:job:{}", a.id),
            format!("unix:uid:{}", job.job.uid),
        ],
        ttl_s: ALLOC_ENTRY_TTL_S,
        dns_names: Vec::new(),
        revision: 0,
    };
    super::apply::put_entry(tx, &entry, now).map(|_| ())
}

/// Deletes `alloc-<id>` if it exists.
fn drop_alloc_entry(tx: &WriteTransaction, id: &str) -> Result<(), StateError> {
    super::apply::delete_entry(tx, &alloc_entry_id(id)).map(|_| ())
}

/// `PurgeJob`: the entries of the job's allocations go with it (the allocations themselves
/// stay until removed, so that the scheduler sees them end).
pub(crate) fn drop_job_entries(
    tx: &WriteTransaction,
    namespace: &str,
    job: &str,
) -> Result<(), StateError> {
    let prefix = compound(namespace, &compound(job, b""));
    let mut ids = Vec::new();
    {
        let t = tx.open_table(ALLOCS_BY_JOB)?;
        for row in t.range(prefix.as_slice()..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(&prefix) || ids.len() >= limits::MAX_ALLOCS {
                break;
            }
            ids.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
    }
    for id in ids {
        drop_alloc_entry(tx, &id)?;
    }
    Ok(())
}

fn refused(m: String) -> Outcome {
    Outcome::Rejected(Rejection::AllocRefused(m))
}

/// `PlaceAllocs`: all placements are checked before any is written.
pub(crate) fn place(
    tx: &WriteTransaction,
    allocs: &[Placement],
    now: u64,
    actor: &str,
) -> Result<Outcome, StateError> {
    let total = tx.open_table(ALLOCS)?.len()?;
    if total.saturating_add(allocs.len() as u64) > limits::MAX_ALLOCS as u64 {
        return Ok(Outcome::Rejected(Rejection::LimitReached(format!(
            "at most {} allocations",
            limits::MAX_ALLOCS
        ))));
    }
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    let mut jobs = Vec::with_capacity(allocs.len());
    for a in allocs {
        if load(tx, &a.id)?.is_some() {
            return Ok(refused(format!("allocation id {} is in use", a.id)));
        }
        let job: Option<JobRecord> =
            get(tx, JOBS, "jobs", &compound(&a.namespace, a.job.as_bytes()))?;
        let Some(job) = job else {
            return Ok(refused(format!("no job {}/{}", a.namespace, a.job)));
        };
        if job.desired != DesiredState::Running {
            return Ok(refused(format!("job {}/{} is stopped", a.namespace, a.job)));
        }
        if job.version != a.job_version {
            return Ok(refused(format!(
                "job {}/{} is at version {}, not {}",
                a.namespace, a.job, job.version, a.job_version
            )));
        }
        if a.index >= job.job.count {
            return Ok(refused(format!(
                "index {} of job {}/{} whose count is {}",
                a.index, a.namespace, a.job, job.job.count
            )));
        }
        // The submitter's node list binds every placer, not only an honest scheduler (labels
        // are announced by agents, not replicated, so only names are checked here).
        let allowed = &job.job.constraints.nodes;
        if !allowed.is_empty() && allowed.binary_search(&a.node).is_err() {
            return Ok(refused(format!(
                "job {}/{} may not run on node {}",
                a.namespace, a.job, a.node
            )));
        }
        let node: Option<NodeRecord> = get(tx, NODES, "nodes", a.node.as_bytes())?;
        match node {
            None => return Ok(refused(format!("node {} is not enrolled", a.node))),
            Some(n) if n.status != NodeStatus::Active => {
                return Ok(Outcome::Rejected(Rejection::NodeInactive));
            }
            Some(_) => {}
        }
        if tx
            .open_table(NODE_DRAINS)?
            .get(a.node.as_bytes())?
            .is_some()
        {
            return Ok(refused(format!("node {} is drained", a.node)));
        }
        *per_node.entry(a.node.as_str()).or_default() += 1;
        jobs.push(job);
    }
    for (node, added) in &per_node {
        let prefix = compound(node, b"");
        let have = count_prefix(tx, ALLOCS_BY_NODE, &prefix, limits::MAX_ALLOCS_PER_NODE)?;
        if have + added > limits::MAX_ALLOCS_PER_NODE {
            return Ok(Outcome::Rejected(Rejection::LimitReached(format!(
                "at most {} allocations on node {node}",
                limits::MAX_ALLOCS_PER_NODE
            ))));
        }
    }
    for (a, job) in allocs.iter().zip(&jobs) {
        store(
            tx,
            &AllocRecord {
                id: a.id.clone(),
                namespace: a.namespace.clone(),
                job: a.job.clone(),
                job_version: a.job_version,
                index: a.index,
                node: a.node.clone(),
                desired: AllocDesired::Run,
                state: AllocState::Pending,
                exit_code: None,
                restarts: 0,
                created_ms: now,
                updated_ms: now,
                message: String::new(),
                previous: a.previous.clone(),
                placed_by: actor.to_owned(),
                desired_ms: now,
                reported_ms: 0,
            },
        )?;
        tx.open_table(ALLOCS_BY_NODE)?
            .insert(by_node(&a.node, &a.id).as_slice(), &[][..])?;
        tx.open_table(ALLOCS_BY_JOB)?
            .insert(by_job(&a.namespace, &a.job, &a.id).as_slice(), &[][..])?;
        put_alloc_entry(tx, a, job, now)?;
    }
    for node in per_node.keys() {
        bump(tx, node)?;
    }
    changed(tx)?;
    Ok(Outcome::Done)
}

/// Every allocation of `ids`, or `NotFound` if one is missing.
fn load_all(tx: &WriteTransaction, ids: &[String]) -> Result<Option<Vec<AllocRecord>>, StateError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        match load(tx, id)? {
            Some(r) => out.push(r),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// A [`AllocWrite`] under the lease rule ([`super::lease::fence`]), then as its plain op.
pub(crate) fn fenced_write(
    tx: &WriteTransaction,
    lease: Option<&LeaseFence>,
    write: &AllocWrite,
    now: u64,
    actor: &str,
) -> Result<Outcome, StateError> {
    let namespaces: BTreeSet<String> = match write {
        AllocWrite::Place(allocs) => allocs.iter().map(|a| a.namespace.clone()).collect(),
        // Unknown ids are left to the write itself (`NotFound`).
        AllocWrite::Stop(ids) | AllocWrite::Lost(ids) | AllocWrite::Remove(ids) => {
            let mut out = BTreeSet::new();
            for id in ids {
                if let Some(r) = load(tx, id)? {
                    out.insert(r.namespace);
                }
            }
            out
        }
    };
    if let Some(refused) = super::lease::fence(tx, lease, &namespaces, now, actor)? {
        return Ok(Outcome::Rejected(refused));
    }
    match write {
        AllocWrite::Place(allocs) => place(tx, allocs, now, actor),
        AllocWrite::Stop(ids) => stop(tx, ids, now),
        AllocWrite::Lost(ids) => mark_lost(tx, ids, now),
        AllocWrite::Remove(ids) => remove_allocs(tx, ids),
    }
}

/// `StopAllocs`: desired `Stop`.
pub(crate) fn stop(tx: &WriteTransaction, ids: &[String], now: u64) -> Result<Outcome, StateError> {
    let Some(records) = load_all(tx, ids)? else {
        return Ok(Outcome::Rejected(Rejection::NotFound));
    };
    let mut any = false;
    for mut r in records {
        if r.desired != AllocDesired::Stop {
            r.desired = AllocDesired::Stop;
            r.desired_ms = now;
            r.updated_ms = now;
            store(tx, &r)?;
            bump(tx, &r.node)?;
            drop_alloc_entry(tx, &r.id)?;
            any = true;
        }
    }
    if any {
        changed(tx)?;
    }
    Ok(Outcome::Done)
}

/// `MarkAllocsLost`: state `Lost`.
pub(crate) fn mark_lost(
    tx: &WriteTransaction,
    ids: &[String],
    now: u64,
) -> Result<Outcome, StateError> {
    let Some(records) = load_all(tx, ids)? else {
        return Ok(Outcome::Rejected(Rejection::NotFound));
    };
    let mut any = false;
    for mut r in records {
        if r.state != AllocState::Lost {
            r.state = AllocState::Lost;
            r.updated_ms = now;
            r.message = "marked lost by the scheduler".into();
            store(tx, &r)?;
            drop_alloc_entry(tx, &r.id)?;
            any = true;
        }
    }
    if any {
        changed(tx)?;
    }
    Ok(Outcome::Done)
}

/// `RemoveAllocs`: only allocations desired `Stop` in a terminal state, or whose job is gone.
pub(crate) fn remove_allocs(tx: &WriteTransaction, ids: &[String]) -> Result<Outcome, StateError> {
    let Some(records) = load_all(tx, ids)? else {
        return Ok(Outcome::Rejected(Rejection::NotFound));
    };
    for r in &records {
        let done = r.desired == AllocDesired::Stop && r.state.is_terminal();
        if !done {
            let job_gone = tx
                .open_table(JOBS)?
                .get(compound(&r.namespace, r.job.as_bytes()).as_slice())?
                .is_none();
            if !job_gone {
                return Ok(refused(format!(
                    "allocation {} is {} and desired {}: stop it and wait for a terminal state",
                    r.id,
                    r.state.as_str(),
                    r.desired.as_str()
                )));
            }
        }
    }
    for r in &records {
        remove(tx, ALLOCS, r.id.as_bytes())?;
        remove(tx, ALLOCS_BY_NODE, &by_node(&r.node, &r.id))?;
        remove(tx, ALLOCS_BY_JOB, &by_job(&r.namespace, &r.job, &r.id))?;
        bump(tx, &r.node)?;
        drop_alloc_entry(tx, &r.id)?;
    }
    if !records.is_empty() {
        changed(tx)?;
    }
    Ok(Outcome::Done)
}

/// `ReportAllocStatus`: `WrongNode` (nothing written) if one allocation is on another node;
/// allocations removed meanwhile are skipped.
pub(crate) fn report(
    tx: &WriteTransaction,
    node: &str,
    updates: &[AllocUpdate],
    now: u64,
) -> Result<Outcome, StateError> {
    let mut records = Vec::with_capacity(updates.len());
    for u in updates {
        if let Some(r) = load(tx, &u.id)? {
            if r.node != node {
                return Ok(Outcome::Rejected(Rejection::WrongNode(u.id.clone())));
            }
            // The scheduler's verdict stands: a partitioned agent that comes back and reports
            // its task running must not turn a lost allocation (whose entry is gone and whose
            // index was placed again) back into a live one.
            if r.state == AllocState::Lost {
                continue;
            }
            records.push((r, u));
        }
    }
    if !records.is_empty() {
        changed(tx)?;
    }
    for (mut r, u) in records {
        r.state = u.state;
        r.exit_code = u.exit_code;
        r.restarts = u.restarts;
        r.message.clone_from(&u.message);
        r.updated_ms = now;
        r.reported_ms = now;
        store(tx, &r)?;
    }
    Ok(Outcome::Done)
}

/// `SetNodeDrain`: `NotFound` for a node never enrolled.
pub(crate) fn set_drain(
    tx: &WriteTransaction,
    node: &str,
    drain: bool,
    now: u64,
    actor: &str,
) -> Result<Outcome, StateError> {
    let known: Option<NodeRecord> = get(tx, NODES, "nodes", node.as_bytes())?;
    if known.is_none() {
        return Ok(Outcome::Rejected(Rejection::NotFound));
    }
    if !drain {
        remove(tx, NODE_DRAINS, node.as_bytes())?;
        return Ok(Outcome::Done);
    }
    let present = tx.open_table(NODE_DRAINS)?.get(node.as_bytes())?.is_some();
    if !present {
        let rec = StoredDrain::V1(DrainRecord {
            since_ms: now,
            by: actor.to_owned(),
        });
        tx.open_table(NODE_DRAINS)?
            .insert(node.as_bytes(), encode(&rec)?.as_slice())?;
    }
    Ok(Outcome::Done)
}

impl StateReader {
    /// One allocation.
    pub fn alloc(&self, id: &str) -> Result<Option<AllocRecord>, StateError> {
        let t = self.tx.open_table(ALLOCS)?;
        let v = t.get(id.as_bytes())?;
        Ok(v.map(|v| decode::<StoredAlloc>("allocs", v.value()))
            .transpose()?
            .map(|StoredAlloc::V1(r)| r))
    }

    /// The allocations whose index key starts with `prefix`, at most `cap`, in key order.
    fn allocs_indexed(
        &self,
        index: super::Raw,
        prefix: &[u8],
        cap: usize,
    ) -> Result<Vec<AllocRecord>, StateError> {
        let t = self.tx.open_table(index)?;
        let mut out = Vec::new();
        for row in t.range(prefix..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(prefix) || out.len() >= cap {
                break;
            }
            let id = k.rsplit(|b| *b == 0).next().unwrap_or_default();
            let id = std::str::from_utf8(id).map_err(|_| StateError::Corrupt {
                table: "allocs index",
                detail: "an id that is not UTF-8".into(),
            })?;
            if let Some(r) = self.alloc(id)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The allocations placed on `node` (at most [`limits::MAX_ALLOCS_PER_NODE`]), by id.
    pub fn allocs_of_node(&self, node: &str) -> Result<Vec<AllocRecord>, StateError> {
        self.allocs_indexed(
            ALLOCS_BY_NODE,
            &compound(node, b""),
            limits::MAX_ALLOCS_PER_NODE,
        )
    }

    /// The allocations of the job `namespace/job` (or of the whole namespace when `job` is
    /// `None`), at most `cap`, by job then id.
    pub fn allocs_of_job(
        &self,
        namespace: &str,
        job: Option<&str>,
        cap: usize,
    ) -> Result<Vec<AllocRecord>, StateError> {
        let prefix = match job {
            Some(j) => compound(namespace, &compound(j, b"")),
            None => compound(namespace, b""),
        };
        self.allocs_indexed(ALLOCS_BY_JOB, &prefix, cap)
    }

    /// Every allocation, at most `cap`, by id.
    pub fn allocs(&self, cap: usize) -> Result<Vec<AllocRecord>, StateError> {
        let t = self.tx.open_table(ALLOCS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            if out.len() >= cap {
                break;
            }
            let (_, v) = row?;
            let StoredAlloc::V1(r) = decode("allocs", v.value())?;
            out.push(r);
        }
        Ok(out)
    }

    /// Increases whenever what `node` must run changes (0 before any allocation).
    pub fn node_alloc_revision(&self, node: &str) -> Result<u64, StateError> {
        let t = self.tx.open_table(super::META)?;
        match t.get(format!("{CTR_NODE_ALLOCS}{node}").as_bytes())? {
            Some(v) => super::rows::read_u64(v.value()),
            None => Ok(0),
        }
    }

    /// Increases with every command that changes an allocation (0 before any).
    pub fn alloc_changes_revision(&self) -> Result<u64, StateError> {
        let t = self.tx.open_table(super::META)?;
        match t.get(CTR_ALLOC_CHANGES.as_bytes())? {
            Some(v) => super::rows::read_u64(v.value()),
            None => Ok(0),
        }
    }

    /// The drained nodes.
    pub fn node_drains(&self) -> Result<BTreeMap<String, DrainRecord>, StateError> {
        let t = self.tx.open_table(NODE_DRAINS)?;
        let mut out = BTreeMap::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let StoredDrain::V1(r) = decode("node_drains", v.value())?;
            out.insert(String::from_utf8_lossy(k.value()).into_owned(), r);
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "allocs_tests.rs"]
mod tests;
