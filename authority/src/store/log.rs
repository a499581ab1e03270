//! The Raft log on redb: entries, vote, committed index, purge point.
//!
//! An append is one redb write transaction with immediate durability (fsync), and openraft's
//! `LogFlushed` callback fires only after that commit returned: nothing is acknowledged before
//! it is on disk. openraft hands over every entry it has accumulated in one call, so under load
//! one fsync covers many entries.

// openraft's storage traits fix the error type; its size is theirs to choose.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

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

/// The log store. Cloning shares the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
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

/// Runs blocking redb work off the async runtime's worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        StorageError::from(StorageIOError::write_logs(openraft::AnyError::error(
            format!("storage task failed: {e}"),
        )))
    })?
}

impl LogStore {
    /// Opens (creating if needed) the log database at `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, StateError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(LOG_META)?;
        tx.commit()?;
        Ok(Self { db: Arc::new(db) })
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

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let bytes = encode(value).map_err(io_err)?;
        let db = self.db.clone();
        let run = move || {
            let mut tx = db.begin_write().map_err(io_err)?;
            tx.set_durability(durability)
                .map_err(|e| io_err(StateError::Storage(e.to_string())))?;
            tx.open_table(LOG_META)
                .map_err(io_err)?
                .insert(key, bytes.as_slice())
                .map_err(io_err)?;
            tx.commit().map_err(io_err)
        };
        if matches!(durability, Durability::None) {
            // No I/O wait (and openraft calls the log store from one task, so no writer is
            // ever in the way): cheaper here than two thread hand-offs.
            run()
        } else {
            blocking(run).await
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
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(LOGS).map_err(read_err)?;
        let mut out = Vec::new();
        for row in t.range(start..=end).map_err(read_err)? {
            let (_, v) = row.map_err(read_err)?;
            out.push(decode::<Entry>("logs", v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.meta(PURGED)?.flatten();
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(LOGS).map_err(read_err)?;
        let last = match t.last().map_err(read_err)? {
            Some((_, v)) => Some(decode::<Entry>("logs", v.value()).map_err(read_err)?.log_id),
            None => last_purged,
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
        self.put_meta(VOTE, vote, Durability::Immediate).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: it becomes durable with the next append or vote. Safety does
        // not depend on it (the state machine records its own last-applied id durably); after a
        // crash a node merely re-learns the commit point from the leader.
        self.put_meta(COMMITTED, &committed, Durability::None).await
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
        let mut rows = Vec::new();
        for e in entries {
            rows.push((e.log_id.index, encode(&e).map_err(io_err)?));
        }
        let db = self.db.clone();
        let result = blocking(move || {
            let tx = db.begin_write().map_err(io_err)?;
            {
                let mut t = tx.open_table(LOGS).map_err(io_err)?;
                for (index, bytes) in &rows {
                    t.insert(*index, bytes.as_slice()).map_err(io_err)?;
                }
            }
            tx.commit().map_err(io_err)
        })
        .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
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
        let db = self.db.clone();
        let purged = encode(&Some(log_id)).map_err(io_err)?;
        blocking(move || {
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
