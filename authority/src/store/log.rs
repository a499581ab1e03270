//! The Raft log: entries in append-only segment files ([`super::segments`]); the vote, the
//! committed index and the purge point in a small redb database beside them.
//!
//! Appends are written by one writer thread, in order. `append` hands the entries to it and
//! returns at once, with the entries readable from an in-memory tail; the writer writes them
//! with one `pwrite` and one `fdatasync` and only then fires openraft's `LogFlushed` callback, so
//! nothing is acknowledged before it is on disk. Returning early lets the leader send entries to
//! its followers while its own fsync runs (openraft counts the leader in the quorum only when
//! the callback fires), and the writer folds every append queued behind an fsync into the next
//! write, so under load one fsync covers many appends.
//!
//! Truncation, purge and votes go through the same writer (so they are ordered with appends)
//! and are awaited. The committed index is kept in memory and written, unsynced, at most every
//! [`COMMITTED_EVERY`]: safety does not depend on it (see `save_committed`).
//!
//! A data directory from before the segment files keeps its entries in the database's `logs`
//! table; opening moves them into a segment once (see [`LogStore::open`]).

// openraft's storage traits fix the error type; its size is theirs to choose.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, mpsc};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::segments::Segments;
use crate::state::{StateError, decode, encode};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Where the entries were kept before the segment files; read once, to move them.
const LOGS: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("logs");
const LOG_META: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("log_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

/// How many queued jobs the writer folds into one write at most.
const MAX_JOBS_PER_COMMIT: usize = 1024;

/// How often, at most, the writer records the committed index.
const COMMITTED_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// How many bytes (encoded) of already written entries the tail keeps, so that the readers that
/// follow the end of the log — replication to each follower, the state machine — take them
/// from memory instead of reading and decoding them again. Each kept entry holds its commands
/// and its wire form ([`crate::command::Batch`]), so the memory held is a few times this.
const TAIL_KEEP_BYTES: usize = 8 << 20;

/// The end of the log in memory: every entry appended but not yet written (what readers see
/// until the writer has made them durable), and after them up to [`TAIL_KEEP_BYTES`] of the
/// latest written ones. A contiguous run of indexes, ending at the last entry.
#[derive(Default)]
struct TailEntries {
    /// Each entry with its encoded size.
    entries: BTreeMap<u64, (Entry, usize)>,
    /// The sum of those sizes.
    bytes: usize,
    /// The highest index written to the segments, if any is in the tail.
    written: Option<u64>,
}

impl TailEntries {
    fn insert(&mut self, e: Entry, size: usize) {
        self.bytes += size;
        if let Some((_, old)) = self.entries.insert(e.log_id.index, (e, size)) {
            self.bytes -= old;
        }
    }

    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.entries.retain(|&i, _| keep(i));
        self.bytes = self.entries.values().map(|(_, n)| n).sum();
        // What is left at or below the old mark was written; what a truncation removed and
        // appends bring again is not.
        self.written = self
            .written
            .and_then(|w| self.entries.range(..=w).next_back().map(|(i, _)| *i));
    }

    /// Records that `ids` are written, then drops the oldest written entries past the budget.
    /// An entry replaced since (truncated and appended again) does not count as written.
    fn written(&mut self, ids: impl Iterator<Item = LogId>) {
        for id in ids {
            if self
                .entries
                .get(&id.index)
                .is_some_and(|(e, _)| e.log_id == id)
            {
                self.written = Some(self.written.map_or(id.index, |w| w.max(id.index)));
            }
        }
        while self.bytes > TAIL_KEEP_BYTES {
            let Some((&first, (_, size))) = self.entries.first_key_value() else {
                break;
            };
            if self.written.is_none_or(|w| first > w) {
                break;
            }
            self.bytes -= *size;
            self.entries.remove(&first);
        }
    }
}

type Tail = Arc<Mutex<TailEntries>>;

/// Work the writer runs alone, on the meta database and the segments.
type Alone = Box<dyn FnOnce(&Database, &Segments) -> Result<(), StorageError> + Send>;

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
    /// The committed index, written soon (not synced on its own).
    Committed(Vec<u8>),
    /// Work of its own (truncate, purge, vote), after everything queued before it.
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

/// The log store. Cloning shares the files, the unflushed tail and the writer.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    segments: Arc<Segments>,
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

fn lock(tail: &Tail) -> std::sync::MutexGuard<'_, TailEntries> {
    // No update of the tail can panic midway, so a poisoned lock still guards a consistent
    // tail.
    tail.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogStore {
    /// Opens (creating if needed) the log under `dir` — `log.redb` and the segments in `log/` —
    /// and starts its writer thread.
    ///
    /// Entries still in the database's old `logs` table are first written to a segment and
    /// synced, then deleted from the table; if that was interrupted, the table still holds
    /// them all and the move starts again.
    pub fn open(dir: &std::path::Path) -> Result<Self, StateError> {
        let db = Database::create(dir.join("log.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(LOG_META)?;
        tx.commit()?;
        let purged = read_meta::<Option<LogId>>(&db, PURGED)?.flatten();
        let segments = Segments::open(&dir.join("log"), purged.map(|p| p.index))?;
        move_old_entries(&db, &segments)?;
        let db = Arc::new(db);
        let segments = Arc::new(segments);
        let tail = Tail::default();
        let (jobs, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn({
                let (db, segments, tail) = (db.clone(), segments.clone(), tail.clone());
                move || write_loop(&db, &segments, &tail, &rx)
            })
            .map_err(|e| StateError::Storage(format!("log writer thread: {e}")))?;
        Ok(Self {
            db,
            segments,
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

    /// Runs `run` on its own after everything queued, and waits for it.
    async fn alone(
        &self,
        run: impl FnOnce(&Database, &Segments) -> Result<(), StorageError> + Send + 'static,
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
        read_meta(&self.db, key).map_err(read_err)
    }
}

/// The value stored under `key` in the meta table, if any.
fn read_meta<T: for<'de> serde::Deserialize<'de>>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, StateError> {
    let tx = db.begin_read()?;
    let t = tx.open_table(LOG_META)?;
    let v = t.get(key)?;
    v.map(|v| decode("log_meta", v.value())).transpose()
}

/// Moves the entries of the old `logs` table into the segments (see [`LogStore::open`]).
fn move_old_entries(db: &Database, segments: &Segments) -> Result<(), StateError> {
    let rows: Vec<(u64, Vec<u8>)> = {
        let tx = db.begin_read()?;
        let t = tx.open_table(LOGS)?;
        let mut rows = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            rows.push((k.value(), v.value().to_vec()));
        }
        rows
    };
    if rows.is_empty() {
        return Ok(());
    }
    tracing::info!(
        entries = rows.len(),
        "moving the Raft log into segment files"
    );
    segments.clear()?;
    for chunk in rows.chunks(4096) {
        segments.append(chunk)?;
    }
    let tx = db.begin_write()?;
    tx.open_table(LOGS)?.retain(|_, _| false)?;
    tx.commit()?;
    Ok(())
}

/// The writer thread: takes every job queued, writes runs of appends with one sync, fires
/// their callbacks once they are durable, and runs the others alone.
fn write_loop(db: &Database, segments: &Segments, tail: &Tail, rx: &mpsc::Receiver<Job>) {
    let mut committed: Option<Vec<u8>> = None;
    let mut committed_at = std::time::Instant::now();
    while let Ok(first) = rx.recv() {
        let mut appends = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(job) = next.take() {
            taken += 1;
            match job {
                Job::Append(a) => appends.push(a),
                Job::Committed(bytes) => committed = Some(bytes),
                Job::Alone { run, done } => {
                    write_appends(segments, tail, std::mem::take(&mut appends));
                    let _ = done.send(run(db, segments));
                }
            }
            if taken < MAX_JOBS_PER_COMMIT {
                next = rx.try_recv().ok();
            }
        }
        write_appends(segments, tail, appends);
        if committed.is_some() && committed_at.elapsed() >= COMMITTED_EVERY {
            write_committed(db, committed.take());
            committed_at = std::time::Instant::now();
        }
    }
    write_committed(db, committed);
}

/// Records the committed index, unsynced (it becomes durable with the next vote or sync).
fn write_committed(db: &Database, committed: Option<Vec<u8>>) {
    let Some(bytes) = committed else {
        return;
    };
    let written = (|| -> Result<(), StateError> {
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::None)
            .map_err(|e| StateError::Storage(e.to_string()))?;
        tx.open_table(LOG_META)?
            .insert(COMMITTED, bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    })();
    if let Err(e) = written {
        tracing::warn!(error = %e, "could not record the committed index");
    }
}

/// Writes `appends` with one sync, then reports each one.
fn write_appends(segments: &Segments, tail: &Tail, appends: Vec<Append>) {
    if appends.is_empty() {
        return;
    }
    let rows: Vec<(u64, &[u8])> = appends
        .iter()
        .flat_map(|a| a.rows.iter().map(|(i, b)| (*i, b.as_slice())))
        .collect();
    let written = segments.append(&rows);
    drop(rows);
    if written.is_ok() {
        // Durable now: readers also find these in the segments.
        lock(tail).written(appends.iter().flat_map(|a| a.ids.iter().copied()));
    }
    for Append { callback, .. } in appends {
        let result = match &written {
            Ok(()) => Ok(()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        callback.log_io_completed(result);
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
        // The tail first: an entry leaves it only after it is written, so whatever the writer
        // does in between, each entry is found in one or the other.
        let from_tail: Vec<Entry> = lock(&self.tail)
            .entries
            .range(start..=end)
            .map(|(_, (e, _))| e.clone())
            .collect();
        // The segments for what comes before the tail's first entry (none before index 0).
        let before_tail = match from_tail.first() {
            Some(e) => e.log_id.index.checked_sub(1),
            None => Some(end),
        };
        let mut out = Vec::new();
        if let Some(last) = before_tail
            && start <= last
        {
            for (_, bytes) in self.segments.read(start, last).map_err(read_err)? {
                out.push(decode::<Entry>("logs", &bytes).map_err(read_err)?);
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
        let in_tail = lock(&self.tail)
            .entries
            .last_key_value()
            .map(|(_, (e, _))| e.log_id);
        let last = match in_tail {
            Some(id) => Some(id),
            None => match self.segments.last() {
                Some(index) => {
                    let mut rows = self.segments.read(index, index).map_err(read_err)?;
                    match rows.pop() {
                        Some((_, bytes)) => {
                            Some(decode::<Entry>("logs", &bytes).map_err(read_err)?.log_id)
                        }
                        None => last_purged,
                    }
                }
                None => last_purged,
            },
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
        self.alone(move |db, _| {
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
        // Written soon, not fsynced on its own: it becomes durable with the next vote. Safety
        // does not depend on it (the state machine records its own last-applied id durably);
        // after a crash a node merely re-learns the commit point from the leader.
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
            for (e, (_, bytes)) in entries.into_iter().zip(&rows) {
                t.insert(e, bytes.len());
            }
        }
        self.send(Job::Append(Append {
            rows,
            ids,
            callback,
        }))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.tail).retain(|i| i < log_id.index);
        self.alone(move |_, segments| segments.truncate(log_id.index).map_err(io_err))
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let purged = encode(&Some(log_id)).map_err(io_err)?;
        lock(&self.tail).retain(|i| i > log_id.index);
        self.alone(move |db, segments| {
            // Record the purge point first, durably: entries at or below it are ignored from
            // then on, so a crash before the segments are deleted loses nothing.
            let tx = db.begin_write().map_err(io_err)?;
            tx.open_table(LOG_META)
                .map_err(io_err)?
                .insert(PURGED, purged.as_slice())
                .map_err(io_err)?;
            tx.commit().map_err(io_err)?;
            segments.purge(log_id.index).map_err(io_err)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::command::Batch;
    use crate::testing::audit_only;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
            payload: EntryPayload::Normal(Batch::one(audit_only(&format!("e{index}")))),
        }
    }

    #[test]
    fn the_tail_drops_only_written_entries_past_its_budget() {
        let mut t = TailEntries::default();
        let half = TAIL_KEEP_BYTES / 2;
        for i in 1..=4 {
            t.insert(entry(i), half);
        }
        // Nothing written yet: all kept, whatever the budget.
        t.written(std::iter::empty());
        assert_eq!(t.entries.len(), 4);
        // 1 and 2 written: the oldest goes until the budget holds or only unwritten are left.
        t.written([entry(1).log_id, entry(2).log_id].into_iter());
        assert_eq!(t.entries.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
        // 3 and 4 written, then truncated from 4 and 4 appended again: the new 4 is unwritten.
        t.written([entry(3).log_id, entry(4).log_id].into_iter());
        t.retain(|i| i < 4);
        assert_eq!(t.written, Some(3));
        t.insert(entry(4), half);
        t.insert(entry(5), half);
        t.written(std::iter::empty());
        assert_eq!(t.entries.keys().copied().collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(t.bytes, 2 * half);
    }

    #[tokio::test]
    async fn entries_of_the_old_log_table_are_moved_into_segments_once() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Entry> = (0..=9).map(entry).collect();
        {
            let db = Database::create(dir.path().join("log.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(LOGS).unwrap();
                for i in 5..=9 {
                    t.insert(i, encode(&entries[i as usize]).unwrap().as_slice())
                        .unwrap();
                }
            }
            tx.commit().unwrap();
        }
        // An earlier move was interrupted: a partial segment exists beside the full table.
        let partial = Segments::open(&dir.path().join("log"), None).unwrap();
        partial.append(&[(5, encode(&entry(5)).unwrap())]).unwrap();
        drop(partial);

        let mut log = LogStore::open(dir.path()).unwrap();
        let got = log.try_get_log_entries(0..=100).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![5, 6, 7, 8, 9]
        );
        assert_eq!(encode(&got[2]).unwrap(), encode(&entries[7]).unwrap());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(entries[9].log_id));
        {
            let tx = log.db.begin_read().unwrap();
            assert_eq!(tx.open_table(LOGS).unwrap().iter().unwrap().count(), 0);
        }
        drop(log);
        // Opening again finds them in the segments only.
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.try_get_log_entries(0..=100).await.unwrap().len(), 5);
    }
}
