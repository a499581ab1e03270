//! The state machine on redb, and its snapshots.
//!
//! `apply` runs a whole batch of entries — their state changes, their audit records and the new
//! last-applied log id — in one write transaction, so after a crash the state is exactly that of
//! some applied prefix of the log. Applied entries are already durable in the log of a quorum,
//! so the state machine does not fsync every batch: a batch is made durable when the previous
//! durable apply is older than [`DURABLE_EVERY`], when it changes membership, and always before
//! a snapshot is built (logs are purged only behind a snapshot) and at shutdown. A crash can
//! therefore lose at most that window of *applied* state, which openraft re-applies from the
//! durable log before the node serves again; nothing committed is ever lost.
//!
//! A snapshot is a file: a stream of `(table tag, key, value)` records from one read
//! transaction, closed by a SHA-256 of everything before it. Building, sending (openraft reads
//! it in chunks) and installing all stream, so memory stays bounded whatever the state's size.
//! Installing replaces every table in one write transaction, and only after the checksum held.

// openraft's storage traits fix the error type; its size is theirs to choose.
#![allow(clippy::result_large_err)]

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{OptionalSend, RaftSnapshotBuilder, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use crate::command::Response;
use crate::state::{
    self, META_LAST_APPLIED, META_MEMBERSHIP, StateError, StateReader, TABLES, encode,
};
use crate::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

const MAGIC: &[u8; 8] = b"RZSNAP01";
const END_TAG: u8 = 0xFF;
/// The largest key or value a snapshot record may carry.
const MAX_RECORD: u32 = 64 * 1024 * 1024;
const CURRENT_META: &str = "current.meta";
/// The longest a run of applied batches goes without an fsync of the state database.
pub(crate) const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The most commands an apply runs on the calling task rather than on a blocking thread: two
/// full batches ([`crate::command::MAX_BATCH`]), what a node under load applies at a time. A
/// hand-off to the blocking pool costs two cross-thread wake-ups and, on a machine with as many
/// cores as runtime workers, one more runnable thread than cores: at 32, SVID issuance at 16
/// CSRs per call was ~5% slower. A larger apply (a catch-up after a restart) still goes to the
/// blocking pool, so this bounds how long one apply holds a runtime worker (a few ms).
const INLINE_APPLY: usize = 2 * crate::command::MAX_BATCH;

/// The state database's page cache. redb's default (1 GiB) let a busy node's memory grow with
/// its audit log for as long as it ran; past this, pages are read back from the file (and the
/// kernel's page cache). 32 MiB to 1 GiB gave the same SVID rates (ARCHITECTURE.md).
const STATE_CACHE_BYTES: usize = 64 << 20;

fn sm_err(e: impl Into<StateError>) -> StorageError {
    let e: StateError = e.into();
    StorageIOError::write_state_machine(openraft::AnyError::new(&e)).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, openraft::AnyError::error(e.to_string())).into()
}

fn read_snap_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_snapshot(None, openraft::AnyError::error(e.to_string())).into()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| snap_err(format!("storage task failed: {e}")))?
}

/// The state machine store. Cloning shares the database.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    snapshot_dir: Arc<PathBuf>,
    /// When the state database was last fsynced by an apply.
    last_durable: Arc<std::sync::Mutex<std::time::Instant>>,
    /// The last applied log index as committed (read from the state at open), for watchers
    /// (entry feeds) to wake on and for the Raft guard to read without a read transaction.
    applied: Arc<tokio::sync::watch::Sender<Option<u64>>>,
    /// The last applied log index at which the trust material (key records, revocations) may
    /// have changed, for the watchers that follow only that.
    trust: Arc<tokio::sync::watch::Sender<u64>>,
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("snapshot_dir", &self.snapshot_dir)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    file: String,
}

impl StateMachineStore {
    /// Opens (creating if needed) the state database at `path`, with snapshots in
    /// `snapshot_dir`.
    pub fn open(path: &Path, snapshot_dir: &Path) -> Result<Self, StateError> {
        crate::private_fs::create_dir(snapshot_dir)
            .map_err(|e| StateError::Storage(format!("{}: {e}", snapshot_dir.display())))?;
        // Leftovers of a crash while building or receiving a snapshot are never current.
        if let Ok(dir) = std::fs::read_dir(snapshot_dir) {
            for f in dir.flatten() {
                if f.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        let db = Database::builder()
            .set_cache_size(STATE_CACHE_BYTES)
            .create(path)?;
        state::create_tables(&db)?;
        let applied = StateReader::new(&db)?.last_applied()?.map(|l| l.index);
        Ok(Self {
            db: Arc::new(db),
            snapshot_dir: Arc::new(snapshot_dir.to_path_buf()),
            last_durable: Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
            applied: Arc::new(tokio::sync::watch::Sender::new(applied)),
            trust: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    /// Changes whenever entries are applied or a snapshot is installed.
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.applied.subscribe()
    }

    /// The index of the last applied entry, if any: what the state holds, without opening a
    /// read transaction.
    pub fn applied_index(&self) -> Option<u64> {
        *self.applied.borrow()
    }

    /// Changes whenever applied entries may have changed the key records or the revocations
    /// (see [`state::Applier::trust_changed`]), and when a snapshot is installed. The
    /// watchers of that material (the TLS bundle, the gate's token cache, the key files) wake
    /// on this rather than on every apply: most writes touch neither.
    pub fn watch_trust(&self) -> tokio::sync::watch::Receiver<u64> {
        self.trust.subscribe()
    }

    /// Makes every applied batch durable (an empty transaction committed with immediate
    /// durability persists the non-durable commits before it).
    pub fn flush(&self) -> Result<(), StateError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| StateError::Storage(e.to_string()))?;
        tx.commit()?;
        if let Ok(mut t) = self.last_durable.lock() {
            *t = std::time::Instant::now();
        }
        Ok(())
    }

    /// Whether the next apply should be fsynced, and if so, records that it is.
    fn durable_now(&self, changes_membership: bool) -> bool {
        let Ok(mut t) = self.last_durable.lock() else {
            return true;
        };
        if changes_membership || t.elapsed() >= DURABLE_EVERY {
            *t = std::time::Instant::now();
            true
        } else {
            false
        }
    }

    /// A consistent read view of the current state.
    pub fn reader(&self) -> Result<StateReader, StateError> {
        StateReader::new(&self.db)
    }

    fn current(&self) -> Result<Option<CurrentSnapshot>, StorageError> {
        let path = self.snapshot_dir.join(CURRENT_META);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(postcard::from_bytes(&bytes).map_err(read_snap_err)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(read_snap_err(e)),
        }
    }

    /// Records `file` as the current snapshot (atomically) and removes older snapshot files.
    fn set_current(&self, meta: &SnapshotMeta, file: &str) -> Result<(), StorageError> {
        let record = CurrentSnapshot {
            meta: meta.clone(),
            file: file.to_owned(),
        };
        let bytes = postcard::to_stdvec(&record).map_err(snap_err)?;
        let tmp = self.snapshot_dir.join(format!("{CURRENT_META}.tmp"));
        write_durably(&tmp, &bytes).map_err(snap_err)?;
        std::fs::rename(&tmp, self.snapshot_dir.join(CURRENT_META)).map_err(snap_err)?;
        sync_dir(&self.snapshot_dir).map_err(snap_err)?;
        if let Ok(dir) = std::fs::read_dir(&*self.snapshot_dir) {
            for f in dir.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.ends_with(".snap") && name != file {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(())
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = crate::private_fs::create_file(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A digest-computing writer.
struct Hashing<W> {
    inner: W,
    ctx: ring::digest::Context,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Streams every table of `db` into `path`. Returns the last applied log id and membership of
/// the state written.
fn write_snapshot(
    db: &Database,
    path: &Path,
) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    let tx = db.begin_read().map_err(sm_err)?;
    let reader = StateReader::new(db).map_err(sm_err)?;
    let last_applied = reader.last_applied().map_err(sm_err)?;
    let membership = reader.membership().map_err(sm_err)?;
    drop(reader);
    let file = crate::private_fs::create_file(path).map_err(snap_err)?;
    let mut w = Hashing {
        inner: BufWriter::new(file),
        ctx: ring::digest::Context::new(&ring::digest::SHA256),
    };
    w.write_all(MAGIC).map_err(snap_err)?;
    for (tag, def) in TABLES {
        let t = tx.open_table(*def).map_err(sm_err)?;
        for row in t.iter().map_err(sm_err)? {
            let (k, v) = row.map_err(sm_err)?;
            let (k, v) = (k.value(), v.value());
            w.write_all(&[*tag]).map_err(snap_err)?;
            w.write_all(&(k.len() as u32).to_le_bytes())
                .map_err(snap_err)?;
            w.write_all(k).map_err(snap_err)?;
            w.write_all(&(v.len() as u32).to_le_bytes())
                .map_err(snap_err)?;
            w.write_all(v).map_err(snap_err)?;
        }
    }
    w.write_all(&[END_TAG]).map_err(snap_err)?;
    let digest = w.ctx.clone().finish();
    let mut inner = w.inner;
    inner.write_all(digest.as_ref()).map_err(snap_err)?;
    let file = inner.into_inner().map_err(|e| snap_err(e.error()))?;
    file.sync_all().map_err(snap_err)?;
    Ok((last_applied, membership))
}

/// Reads a snapshot file into `db`, replacing every table, in one transaction that commits only
/// if the whole file checks.
fn install_snapshot_file(
    db: &Database,
    path: &Path,
    meta: &SnapshotMeta,
) -> Result<(), StorageError> {
    let file = std::fs::File::open(path).map_err(read_snap_err)?;
    let mut r = BufReader::new(file);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut read = |buf: &mut [u8], ctx: &mut ring::digest::Context| -> Result<(), StorageError> {
        r.read_exact(buf).map_err(read_snap_err)?;
        ctx.update(buf);
        Ok(())
    };
    let mut magic = [0u8; 8];
    read(&mut magic, &mut ctx)?;
    if &magic != MAGIC {
        return Err(read_snap_err("not a ringzero snapshot"));
    }
    let tx = db.begin_write().map_err(sm_err)?;
    for (_, def) in TABLES {
        tx.delete_table(*def).map_err(sm_err)?;
        tx.open_table(*def).map_err(sm_err)?;
    }
    loop {
        let mut tag = [0u8; 1];
        read(&mut tag, &mut ctx)?;
        if tag[0] == END_TAG {
            break;
        }
        let def = TABLES
            .iter()
            .find(|(t, _)| *t == tag[0])
            .map(|(_, d)| *d)
            .ok_or_else(|| read_snap_err(format!("unknown table tag {}", tag[0])))?;
        let mut len = [0u8; 4];
        read(&mut len, &mut ctx)?;
        let klen = u32::from_le_bytes(len);
        if klen > MAX_RECORD {
            return Err(read_snap_err("oversized key"));
        }
        let mut k = vec![0u8; klen as usize];
        read(&mut k, &mut ctx)?;
        read(&mut len, &mut ctx)?;
        let vlen = u32::from_le_bytes(len);
        if vlen > MAX_RECORD {
            return Err(read_snap_err("oversized value"));
        }
        let mut v = vec![0u8; vlen as usize];
        read(&mut v, &mut ctx)?;
        tx.open_table(def)
            .map_err(sm_err)?
            .insert(k.as_slice(), v.as_slice())
            .map_err(sm_err)?;
    }
    let mut want = [0u8; 32];
    r.read_exact(&mut want).map_err(read_snap_err)?;
    if ctx.finish().as_ref() != want {
        // Dropping the transaction aborts it: the state is untouched.
        return Err(read_snap_err("snapshot checksum mismatch"));
    }
    state::meta_put(
        &tx,
        META_LAST_APPLIED,
        &encode(&meta.last_log_id).map_err(sm_err)?,
    )
    .map_err(sm_err)?;
    state::meta_put(
        &tx,
        META_MEMBERSHIP,
        &encode(&meta.last_membership).map_err(sm_err)?,
    )
    .map_err(sm_err)?;
    tx.commit().map_err(sm_err)?;
    Ok(())
}

/// Builds snapshots from a consistent read of the state.
#[derive(Clone, Debug)]
pub struct SnapshotBuilder {
    store: StateMachineStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let store = self.store.clone();
        let (meta, path) = blocking(move || {
            // Logs are purged behind a snapshot: the state it captures must be durable first.
            store.flush().map_err(sm_err)?;
            let nonce = crate::command::random_hex();
            let tmp = store
                .snapshot_dir
                .join(format!("building-{}.tmp", &nonce[..12]));
            let (last_applied, membership) = write_snapshot(&store.db, &tmp)?;
            let snapshot_id = match last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, &nonce[..8]),
                None => format!("0-0-{}", &nonce[..8]),
            };
            let file = format!("{snapshot_id}.snap");
            let path = store.snapshot_dir.join(&file);
            std::fs::rename(&tmp, &path).map_err(snap_err)?;
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            };
            store.set_current(&meta, &file)?;
            Ok((meta, path))
        })
        .await?;
        let file = tokio::fs::File::open(&path).await.map_err(read_snap_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let r = self.reader().map_err(sm_err)?;
        Ok((
            r.last_applied().map_err(sm_err)?,
            r.membership().map_err(sm_err)?,
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Response>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let changes_membership = entries
            .iter()
            .any(|e| matches!(e.payload, openraft::EntryPayload::Membership(_)));
        let durability = if self.durable_now(changes_membership) {
            Durability::Immediate
        } else {
            Durability::None
        };
        // A small apply that does not fsync is cheaper here than two thread hand-offs; a large
        // one, or one that fsyncs, leaves this runtime worker free meanwhile.
        let commands: usize = entries
            .iter()
            .map(|e| match &e.payload {
                openraft::EntryPayload::Normal(batch) => batch.commands().len(),
                _ => 1,
            })
            .sum();
        let last_index = entries.last().map(|e| e.log_id.index).unwrap_or(0);
        let db = self.db.clone();
        let run = move || {
            let mut tx = db.begin_write().map_err(sm_err)?;
            tx.set_durability(durability)
                .map_err(|e| sm_err(StateError::Storage(e.to_string())))?;
            let mut responses = Vec::with_capacity(entries.len());
            let mut applier = state::Applier::new(&tx);
            let mut trust_changed = false;
            for e in &entries {
                let r = applier.apply_entry(e).map_err(|err| {
                    StorageError::from(StorageIOError::apply(
                        e.log_id,
                        openraft::AnyError::new(&err),
                    ))
                })?;
                responses.push(r);
            }
            trust_changed |= applier.trust_changed();
            drop(applier);
            tx.commit().map_err(sm_err)?;
            Ok((responses, trust_changed))
        };
        let (responses, trust_changed) =
            if matches!(durability, Durability::None) && commands <= INLINE_APPLY {
                run()?
            } else {
                blocking(run).await?
            };
        self.applied.send_replace(Some(last_index));
        if trust_changed {
            self.trust.send_replace(last_index);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let nonce = crate::command::random_hex();
        let path = self
            .snapshot_dir
            .join(format!("receiving-{}.tmp", &nonce[..12]));
        let file = tokio::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .await
            .map_err(snap_err)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        // The received data is in the file openraft wrote through; make it durable, then read
        // it back by path.
        let mut file = snapshot.into_std().await;
        file.sync_all().map_err(snap_err)?;
        let received = match self.find_receiving(&file) {
            Some(path) => path,
            None => {
                // Not one of ours (a snapshot handed over from elsewhere): copy it in.
                use std::io::Seek;
                let nonce = crate::command::random_hex();
                let path = self
                    .snapshot_dir
                    .join(format!("receiving-{}.tmp", &nonce[..12]));
                let mut out = crate::private_fs::create_file(&path).map_err(snap_err)?;
                file.seek(std::io::SeekFrom::Start(0)).map_err(snap_err)?;
                std::io::copy(&mut file, &mut out).map_err(snap_err)?;
                out.sync_all().map_err(snap_err)?;
                path
            }
        };
        drop(file);
        let store = self.clone();
        let meta = meta.clone();
        let meta_index = meta.last_log_id.map(|l| l.index);
        let index = meta_index.unwrap_or(0);
        blocking(move || {
            install_snapshot_file(&store.db, &received, &meta)?;
            let name = format!("{}.snap", meta.snapshot_id);
            std::fs::rename(&received, store.snapshot_dir.join(&name)).map_err(snap_err)?;
            store.set_current(&meta, &name)
        })
        .await?;
        self.applied.send_replace(meta_index);
        self.trust.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(current) = self.current()? else {
            return Ok(None);
        };
        let path = self.snapshot_dir.join(&current.file);
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Some(Snapshot {
                meta: current.meta,
                snapshot: Box::new(f),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(read_snap_err(e)),
        }
    }
}

impl StateMachineStore {
    /// The path of a file handed out by `begin_receiving_snapshot`, found by inode.
    fn find_receiving(&self, file: &std::fs::File) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let want = file.metadata().ok()?;
        std::fs::read_dir(&*self.snapshot_dir)
            .ok()?
            .flatten()
            .find(|f| {
                f.file_name().to_string_lossy().starts_with("receiving-")
                    && f.metadata()
                        .is_ok_and(|m| m.ino() == want.ino() && m.dev() == want.dev())
            })
            .map(|f| f.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn the_applied_index_follows_applies_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (path, snaps) = (dir.path().join("state.redb"), dir.path().join("snapshots"));
        let mut sm = StateMachineStore::open(&path, &snaps).unwrap();
        assert_eq!(sm.applied_index(), None);
        sm.apply([blank(0), blank(1)]).await.unwrap();
        assert_eq!(sm.applied_index(), Some(1));
        sm.apply([blank(2)]).await.unwrap();
        assert_eq!(sm.applied_index(), Some(2));
        assert_eq!(
            sm.reader()
                .unwrap()
                .last_applied()
                .unwrap()
                .map(|l| l.index),
            sm.applied_index()
        );
        sm.flush().unwrap();
        drop(sm);
        let sm = StateMachineStore::open(&path, &snaps).unwrap();
        assert_eq!(sm.applied_index(), Some(2), "read from the state at open");
    }
}
