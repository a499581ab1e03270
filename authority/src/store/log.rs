//! The Raft log on redb: entries, vote, committed index, purge point.
//!
//! Appends are written by one writer thread, in order. `append` hands the entries to it and
//! returns at once, with the entries readable from an in-memory tail; the writer commits them in
//! one redb transaction with immediate durability (fsync) and only then fires openraft's
//! `LogFlushed` callback, so nothing is acknowledged before it is on disk. Returning early lets
//! the leader send entries to its followers while its own fsync runs (openraft counts the leader
//! in the quorum only when the callback fires), and the writer folds every append queued behind
//! an fsync into the next transaction, so under load one fsync covers many appends.
//!
//! Truncation, purge and votes go through the same writer (so they are ordered with appends)
//! and are awaited; the committed index is written with the next transaction, unsynced.

// openraft's storage traits fix the error type; its size is theirs to choose.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, mpsc};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::state::{StateError, decode, encode};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const LOGS: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("logs");
const LOG_META: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("log_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

/// How many queued jobs the writer folds into one transaction at most.
const MAX_JOBS_PER_COMMIT: usize = 1024;

/// Entries appended but not yet committed to redb, by index: what readers see until the writer
/// has made them durable. Always a contiguous run just after the last entry in redb.
type Tail = Arc<Mutex<BTreeMap<u64, Entry>>>;

/// A transaction the writer runs alone.
type Alone = Box<dyn FnOnce(&Database) -> Result<(), StorageError> + Send>;

/// Entries to write durably, then report through `callback`.
struct Append {
    /// Each entry's index and encoding.
    rows: Vec<(u64, Vec<u8>)>,
    ids: Vec<LogId>,
    callback: LogFlushed<TypeConfig>,
}

/// Work for the writer thread, done in the order it was queued.
enum Job {
    Append(Append),
    /// The committed index, written with the next transaction (not synced on its own).
    Committed(Vec<u8>),
    /// A transaction of its own (truncate, purge, vote), after everything queued before it.
    Alone {
        run: Alone,
        done: tokio::sync::oneshot::Sender<Result<(), StorageError>>,
    },
}

/// The writer thread and the way to it. Dropping it (with the last [`LogStore`] clone) lets
/// the thread finish what is queued and waits for it, so the database is closed when the store
/// is gone and can be opened again at once.
struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The log store. Cloning shares the database, the unflushed tail and the writer.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    tail: Tail,
    writer: Arc<Writer>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn io_err(e: impl Into<StateError>) -> StorageError {
    let e: StateError = e.into();
    StorageIOError::write_logs(openraft::AnyError::new(&e)).into()
}

fn read_err(e: impl Into<StateError>) -> StorageError {
    let e: StateError = e.into();
    StorageIOError::read_logs(openraft::AnyError::new(&e)).into()
}

fn stopped() -> StorageError {
    StorageIOError::write_logs(openraft::AnyError::error("the log writer has stopped")).into()
}

fn lock(tail: &Tail) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
    // A panic while holding the lock cannot leave the map half-updated (every update is one
    // BTreeMap call), so a poisoned lock is still a consistent map.
    tail.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogStore {
    /// Opens (creating if needed) the log database at `path` and starts its writer thread.
    pub fn open(path: &std::path::Path) -> Result<Self, StateError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(LOG_META)?;
        tx.commit()?;
        let db = Arc::new(db);
        let tail = Tail::default();
        let (jobs, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn({
                let (db, tail) = (db.clone(), tail.clone());
                move || write_loop(&db, &tail, &rx)
            })
            .map_err(|e| StateError::Storage(format!("log writer thread: {e}")))?;
        Ok(Self {
            db,
            tail,
            writer: Arc::new(Writer {
                jobs: Some(jobs),
                thread: Some(thread),
            }),
        })
    }

    fn send(&self, job: Job) -> Result<(), StorageError> {
        let jobs = self.writer.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(job).map_err(|_| stopped())
    }

    /// Runs `run` in a transaction of its own after everything queued, and waits for it.
    async fn alone(
        &self,
        run: impl FnOnce(&Database) -> Result<(), StorageError> + Send + 'static,
    ) -> Result<(), StorageError> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Alone {
            run: Box::new(run),
            done,
        })?;
        rx.await.map_err(|_| stopped())?
    }

    fn meta<T: for<'de> serde::Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(LOG_META).map_err(read_err)?;
        let v = t.get(key).map_err(read_err)?;
        v.map(|v| decode("log_meta", v.value()).map_err(read_err))
            .transpose()
    }
}

/// The writer thread: takes every job queued, writes runs of appends (and the committed index)
/// in one transaction, fires their callbacks once it is durable, and runs the others alone.
fn write_loop(db: &Database, tail: &Tail, rx: &mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut group = Group::default();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(job) = next.take() {
            taken += 1;
            match job {
                Job::Append(a) => group.appends.push(a),
                Job::Committed(bytes) => group.committed = Some(bytes),
                Job::Alone { run, done } => {
                    group.commit(db, tail);
                    let _ = done.send(run(db));
                }
            }
            if taken < MAX_JOBS_PER_COMMIT {
                next = rx.try_recv().ok();
            }
        }
        group.commit(db, tail);
    }
}

/// Appends and the committed index gathered for one transaction.
#[derive(Default)]
struct Group {
    appends: Vec<Append>,
    committed: Option<Vec<u8>>,
}

impl Group {
    fn commit(&mut self, db: &Database, tail: &Tail) {
        if self.appends.is_empty() && self.committed.is_none() {
            return;
        }
        let appends = std::mem::take(&mut self.appends);
        let committed = self.committed.take();
        let durability = if appends.is_empty() {
            Durability::None
        } else {
            Durability::Immediate
        };
        let written = (|| {
            let mut tx = db.begin_write().map_err(io_err)?;
            tx.set_durability(durability)
                .map_err(|e| io_err(StateError::Storage(e.to_string())))?;
            {
                let mut t = tx.open_table(LOGS).map_err(io_err)?;
                for a in &appends {
                    for (index, bytes) in &a.rows {
                        t.insert(*index, bytes.as_slice()).map_err(io_err)?;
                    }
                }
            }
            if let Some(bytes) = &committed {
                tx.open_table(LOG_META)
                    .map_err(io_err)?
                    .insert(COMMITTED, bytes.as_slice())
                    .map_err(io_err)?;
            }
            tx.commit().map_err(io_err)
        })();
        if written.is_ok() {
            // Durable now: readers find these in redb. An entry replaced in the tail since
            // (truncated and appended again) stays.
            let mut t = lock(tail);
            for id in appends.iter().flat_map(|a| &a.ids) {
                if t.get(&id.index).is_some_and(|e| e.log_id == *id) {
                    t.remove(&id.index);
                }
            }
        }
        for Append { callback, .. } in appends {
            let result = match &written {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            callback.log_io_completed(result);
        }
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e,
        Bound::Excluded(&e) => e.saturating_sub(1),
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        if start > end {
            return Ok(Vec::new());
        }
        // The tail first: an entry leaves it only after it is in redb, so whatever the writer
        // does in between, each entry is found in one or the other.
        let from_tail: Vec<Entry> = lock(&self.tail)
            .range(start..=end)
            .map(|(_, e)| e.clone())
            .collect();
        let db_end = match from_tail.first() {
            Some(e) => e.log_id.index.saturating_sub(1),
            None => end,
        };
        let mut out = Vec::new();
        if start <= db_end && from_tail.first().is_none_or(|e| e.log_id.index > start) {
            let tx = self.db.begin_read().map_err(read_err)?;
            let t = tx.open_table(LOGS).map_err(read_err)?;
            for row in t.range(start..=db_end).map_err(read_err)? {
                let (_, v) = row.map_err(read_err)?;
                out.push(decode::<Entry>("logs", v.value()).map_err(read_err)?);
            }
        }
        out.extend(from_tail);
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.meta(PURGED)?.flatten();
        let in_tail = lock(&self.tail).last_key_value().map(|(_, e)| e.log_id);
        let last = match in_tail {
            Some(id) => Some(id),
            None => {
                let tx = self.db.begin_read().map_err(read_err)?;
                let t = tx.open_table(LOGS).map_err(read_err)?;
                match t.last().map_err(read_err)? {
                    Some((_, v)) => {
                        Some(decode::<Entry>("logs", v.value()).map_err(read_err)?.log_id)
                    }
                    None => last_purged,
                }
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // A vote must survive a crash: a node that forgot it could vote twice in one term.
        let bytes = encode(vote).map_err(io_err)?;
        self.alone(move |db| {
            let tx = db.begin_write().map_err(io_err)?;
            tx.open_table(LOG_META)
                .map_err(io_err)?
                .insert(VOTE, bytes.as_slice())
                .map_err(io_err)?;
            tx.commit().map_err(io_err)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: it becomes durable with the next append or vote. Safety does
        // not depend on it (the state machine records its own last-applied id durably); after a
        // crash a node merely re-learns the commit point from the leader.
        let bytes = encode(&committed).map_err(io_err)?;
        self.send(Job::Committed(bytes))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut rows = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        for e in &entries {
            rows.push((e.log_id.index, encode(e).map_err(io_err)?));
            ids.push(e.log_id);
        }
        // Readable before this returns (openraft's contract), durable when the callback fires.
        {
            let mut t = lock(&self.tail);
            for e in entries {
                t.insert(e.log_id.index, e);
            }
        }
        self.send(Job::Append(Append {
            rows,
            ids,
            callback,
        }))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.tail).retain(|&i, _| i < log_id.index);
        self.alone(move |db| {
            let tx = db.begin_write().map_err(io_err)?;
            {
                let mut t = tx.open_table(LOGS).map_err(io_err)?;
                t.retain_in(log_id.index.., |_, _| false).map_err(io_err)?;
            }
            tx.commit().map_err(io_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let purged = encode(&Some(log_id)).map_err(io_err)?;
        lock(&self.tail).retain(|&i, _| i > log_id.index);
        self.alone(move |db| {
            let tx = db.begin_write().map_err(io_err)?;
            {
                // Record the purge point first: in the same transaction, so a crash leaves
                // either both or neither.
                tx.open_table(LOG_META)
                    .map_err(io_err)?
                    .insert(PURGED, purged.as_slice())
                    .map_err(io_err)?;
                let mut t = tx.open_table(LOGS).map_err(io_err)?;
                t.retain_in(..=log_id.index, |_, _| false).map_err(io_err)?;
            }
            tx.commit().map_err(io_err)
        })
        .await
    }
}
