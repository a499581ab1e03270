//! Jobs: one table, `namespace \0 name` → [`JobRecord`]. A later slice's allocations go in a
//! table of their own (keyed under the same `namespace \0 name`), so a job record never changes
//! shape when tasks are placed.

use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::rows::{get, next_counter, put, remove};
use super::{JOBS, StateError, StateReader, compound, decode};
use crate::command::{Job, Outcome, Rejection, limits};

/// What should be happening to a job's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DesiredState {
    Running,
    Stopped,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Running => "running",
            DesiredState::Stopped => "stopped",
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job: Job,
    /// 1 on the first submit; each later submit of the same name adds one.
    pub version: u64,
    pub desired: DesiredState,
    /// The SPIFFE ID of the caller of the last submit.
    pub submitted_by: String,
    /// The last submit's time (the command's `time_ms`).
    pub submitted_at_ms: u64,
}

/// `ctr:jobs`: bumped by every change of a job (the entry feed re-reads the specs it sends
/// with a node's allocations only then).
pub(crate) const CTR_JOBS: &str = "ctr:jobs";

fn key(namespace: &str, name: &str) -> Vec<u8> {
    compound(namespace, name.as_bytes())
}

/// `PutJob`: the next version of the job, running; refused past [`limits::MAX_JOBS`] jobs.
/// Returns the version as `Outcome::Revision`.
pub(crate) fn put_job(
    tx: &WriteTransaction,
    job: &Job,
    now: u64,
    actor: &str,
) -> Result<Outcome, StateError> {
    let k = key(&job.namespace, &job.name);
    let previous: Option<JobRecord> = get(tx, JOBS, "jobs", &k)?;
    if previous.is_none() && tx.open_table(JOBS)?.len()? >= limits::MAX_JOBS as u64 {
        return Ok(Outcome::Rejected(Rejection::LimitReached(format!(
            "at most {} jobs",
            limits::MAX_JOBS
        ))));
    }
    let version = previous.map_or(1, |p| p.version.saturating_add(1));
    put(
        tx,
        JOBS,
        &k,
        &JobRecord {
            job: job.clone(),
            version,
            desired: DesiredState::Running,
            submitted_by: actor.to_owned(),
            submitted_at_ms: now,
        },
    )?;
    next_counter(tx, CTR_JOBS)?;
    Ok(Outcome::Revision(version))
}

/// `StopJob`: desired state `Stopped` (idempotent); `NotFound` when there is no such job.
pub(crate) fn stop_job(
    tx: &WriteTransaction,
    namespace: &str,
    name: &str,
) -> Result<Outcome, StateError> {
    let k = key(namespace, name);
    let Some(mut record): Option<JobRecord> = get(tx, JOBS, "jobs", &k)? else {
        return Ok(Outcome::Rejected(Rejection::NotFound));
    };
    if record.desired != DesiredState::Stopped {
        record.desired = DesiredState::Stopped;
        put(tx, JOBS, &k, &record)?;
        next_counter(tx, CTR_JOBS)?;
    }
    Ok(Outcome::Revision(record.version))
}

/// `PurgeJob`: deletes a stopped job; `NotFound` when absent, `JobRunning` when not stopped.
pub(crate) fn purge_job(
    tx: &WriteTransaction,
    namespace: &str,
    name: &str,
) -> Result<Outcome, StateError> {
    let k = key(namespace, name);
    let Some(record): Option<JobRecord> = get(tx, JOBS, "jobs", &k)? else {
        return Ok(Outcome::Rejected(Rejection::NotFound));
    };
    if record.desired != DesiredState::Stopped {
        return Ok(Outcome::Rejected(Rejection::JobRunning));
    }
    remove(tx, JOBS, &k)?;
    next_counter(tx, CTR_JOBS)?;
    super::allocs::drop_job_entries(tx, namespace, name)?;
    Ok(Outcome::Done)
}

impl StateReader {
    /// The job `namespace/name`, if any.
    pub fn job(&self, namespace: &str, name: &str) -> Result<Option<JobRecord>, StateError> {
        let t = self.tx.open_table(JOBS)?;
        let v = t.get(key(namespace, name).as_slice())?;
        v.map(|v| decode("jobs", v.value())).transpose()
    }

    /// Increases with every change of a job (0 before any).
    pub fn jobs_revision(&self) -> Result<u64, StateError> {
        let t = self.tx.open_table(super::META)?;
        match t.get(CTR_JOBS.as_bytes())? {
            Some(v) => super::rows::read_u64(v.value()),
            None => Ok(0),
        }
    }

    /// Every job, ordered by namespace, then name.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StateError> {
        let t = self.tx.open_table(JOBS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode("jobs", v.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::apply::apply_command;
    use super::super::create_tables;
    use super::*;
    use crate::command::{
        AuditDecision, AuditRecord, Command, CommandId, Constraints, Op, Restart,
    };

    fn job(name: &str) -> Job {
        Job {
            namespace: "shop".into(),
            name: name.into(),
            command: "/usr/bin/web".into(),
            args: vec![],
            env: Default::default(),
            workdir: None,
            uid: 1000,
            gid: 1000,
            count: 1,
            cpu_millis: None,
            memory_mb: None,
            constraints: Constraints::default(),
            restart: Restart::default(),
            spiffe_id: format!("spiffe://td/ns/shop/{name}"),
        }
    }

    fn cmd(op: Op, time_ms: u64) -> Command {
        Command {
            id: CommandId::fresh(),
            time_ms,
            audit: AuditRecord {
                actor: "spiffe://td/user/carol".into(),
                revocation_ids: vec![],
                operation: "sched:submit".into(),
                resource: "ns/shop/web".into(),
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
    fn jobs_are_versioned_stopped_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
        create_tables(&db).unwrap();
        let mut index = 0;
        let mut run = |op: Op| {
            index += 1;
            let tx = db.begin_write().unwrap();
            let r = apply_command(&tx, index, &cmd(op, index * 10)).unwrap();
            tx.commit().unwrap();
            (r.outcome, StateReader::new(&db).unwrap())
        };
        let (o, r) = run(Op::PutJob { job: job("web") });
        assert_eq!(o, Outcome::Revision(1));
        let rec = r.job("shop", "web").unwrap().unwrap();
        assert_eq!(rec.version, 1);
        assert_eq!(rec.desired, DesiredState::Running);
        assert_eq!(rec.submitted_by, "spiffe://td/user/carol");
        assert_eq!(rec.submitted_at_ms, 10);
        // A running job is not purged.
        let (o, _) = run(Op::PurgeJob {
            namespace: "shop".into(),
            name: "web".into(),
        });
        assert_eq!(o, Outcome::Rejected(Rejection::JobRunning));
        let (o, r) = run(Op::PutJob { job: job("web") });
        assert_eq!(o, Outcome::Revision(2));
        assert_eq!(r.jobs().unwrap().len(), 1);
        // A malformed job is refused in apply and writes nothing.
        let mut bad = job("api");
        bad.spiffe_id = "spiffe://td/ns/other/api".into();
        let (o, r) = run(Op::PutJob { job: bad });
        assert!(
            matches!(o, Outcome::Rejected(Rejection::Invalid(_))),
            "{o:?}"
        );
        assert!(r.job("shop", "api").unwrap().is_none());
        let stop = || Op::StopJob {
            namespace: "shop".into(),
            name: "web".into(),
        };
        let (o, r) = run(stop());
        assert_eq!(o, Outcome::Revision(2));
        let rec = r.job("shop", "web").unwrap().unwrap();
        assert_eq!(rec.desired, DesiredState::Stopped);
        assert_eq!(rec.version, 2);
        let (o, _) = run(stop());
        assert_eq!(o, Outcome::Revision(2));
        let (o, r) = run(Op::PurgeJob {
            namespace: "shop".into(),
            name: "web".into(),
        });
        assert_eq!(o, Outcome::Done);
        assert!(r.jobs().unwrap().is_empty());
        let (o, _) = run(stop());
        assert_eq!(o, Outcome::Rejected(Rejection::NotFound));
        // Resubmitting a purged job starts again at version 1.
        let (o, _) = run(Op::PutJob { job: job("web") });
        assert_eq!(o, Outcome::Revision(1));
    }
}
