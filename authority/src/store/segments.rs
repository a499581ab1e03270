//! The Raft log's entries on disk: append-only segment files of checksummed records, the way
//! etcd's WAL keeps them — one `pwrite` and one `fdatasync` per group of appends, no B-tree.
//!
//! # Format
//! `DIR/{first index:020}.seg`, each a run of consecutive entries. A record is
//! `[payload length: u32 LE][CRC-32 of index and payload: u32 LE][index: u64 LE][payload]`; the
//! payload is the entry as the rest of the store encodes it (postcard). A segment is closed
//! once it passes [`SEGMENT_BYTES`], and a group of appends is never split across two.
//!
//! # Allocated ahead
//! A segment file is extended [`ALLOCATE_AHEAD`] at a time ahead of its records, with `fallocate`
//! (blocks allocated, reading as zeros, no data written), so most appends write inside the
//! file instead of growing it: `fdatasync` after a write that grows the file also writes the
//! inode, a second, serial disk write (measured on ext4 here: 126–155 µs a sync growing the
//! file, 99 µs inside allocated space). Writing real zeros ahead instead made syncs as cheap but
//! doubled the log's disk writes, which cost a fifth of batched SVID issuance. Zeros after the
//! last record are the clean end of a segment: a record header is never all zeros (a payload is
//! never empty). Where the file system cannot allocate ahead, appends grow the file as before.
//!
//! # Crash safety
//! A group is written and `fdatasync`ed before its appends are reported durable; a new segment
//! file is created, and its directory synced, before anything is written to it. So a crash can
//! leave only the *last* segment with a partial or torn record at its end: opening cuts it
//! there (nothing after it was ever acknowledged). A bad record anywhere else, or indexes that
//! do not follow each other, is corruption, and the store refuses to open. Cutting, like
//! truncation, shortens the file, so no stale record can reappear past a later end.
//!
//! Truncation removes whole segments from the last one down before cutting the one that holds
//! the truncation point, so an interrupted truncation leaves a shorter log, never a gap. Purged
//! entries are hidden at once (the purge point is recorded by the caller first) and their
//! segments deleted when every entry in them is purged.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::state::StateError;

/// A segment is closed once it is at least this large.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;

/// Length, checksum, index.
const HEADER: usize = 16;

/// How far past its records a segment file is allocated when an append reaches its end (see
/// the module docs).
pub(crate) const ALLOCATE_AHEAD: u64 = 1 << 20;

/// No entry is this large (a batch of commands is bounded far below it); a header that claims
/// more is damage, not an entry.
const MAX_PAYLOAD: usize = 256 << 20;

const SUFFIX: &str = ".seg";

/// One record's place in its segment: where its header starts, and its payload length.
#[derive(Debug, Clone, Copy)]
struct Loc {
    offset: u64,
    len: u32,
}

struct Segment {
    file: Arc<File>,
    path: PathBuf,
    /// The index of its first record (also its file name).
    first: u64,
    /// One per record, for indexes `first..first + locs.len()`.
    locs: Vec<Loc>,
    /// Bytes written (where the next record goes).
    bytes: u64,
    /// The file's length: from `bytes` to here it reads as zeros.
    end: u64,
}

impl Segment {
    fn last(&self) -> Option<u64> {
        (self.locs.len() as u64)
            .checked_sub(1)
            .map(|n| self.first + n)
    }
}

#[derive(Default)]
struct Index {
    /// By first index.
    segments: BTreeMap<u64, Segment>,
    /// Entries below this are purged: never returned, even while their segment still exists.
    floor: u64,
}

/// The segment files of one log. Reads may come from any thread; writes (append, truncate,
/// purge) from one writer at a time.
pub(crate) struct Segments {
    dir: PathBuf,
    index: RwLock<Index>,
}

impl std::fmt::Debug for Segments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segments")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn storage(what: &str, path: &Path, e: impl std::fmt::Display) -> StateError {
    StateError::Storage(format!("{what} {}: {e}", path.display()))
}

fn corrupt(detail: String) -> StateError {
    StateError::Corrupt {
        table: "log segments",
        detail,
    }
}

/// Appends `index`'s record with `payload` to `out`.
pub(crate) fn encode_record(index: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&index.to_le_bytes());
    crc.update(payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
}

/// What [`scan`] found in a segment's bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Each whole, checksummed record: (index, offset of its header, payload length).
    pub(crate) records: Vec<(u64, u64, u32)>,
    /// The bytes up to the end of the last good record.
    pub(crate) valid: u64,
    /// Why the scan stopped before the end of `bytes`, if it did. Zeros to the end after the
    /// last record are a clean end, not a stop.
    pub(crate) stopped: Option<String>,
}

/// Reads records from the start of `bytes` until its end, zeros to its end, or the first record
/// that is incomplete, too large or fails its checksum. Never panics, whatever `bytes` holds.
pub(crate) fn scan(bytes: &[u8]) -> Scan {
    let mut out = Scan::default();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = bytes.get(at..).unwrap_or_default();
        if rest.iter().take(4).all(|b| *b == 0) && rest.iter().all(|b| *b == 0) {
            // The zeroed space ahead of the records.
            break;
        }
        let Some(header) = bytes.get(at..at + HEADER) else {
            out.stopped = Some(format!("a partial header at byte {at}"));
            break;
        };
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (len, crc) = (word(0) as usize, word(4));
        let mut index_bytes = [0u8; 8];
        index_bytes.copy_from_slice(&header[8..16]);
        if len > MAX_PAYLOAD {
            out.stopped = Some(format!("a record of {len} bytes at byte {at}"));
            break;
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            out.stopped = Some(format!("a partial record at byte {at}"));
            break;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&index_bytes);
        h.update(payload);
        if h.finalize() != crc {
            out.stopped = Some(format!("a checksum mismatch at byte {at}"));
            break;
        }
        out.records
            .push((u64::from_le_bytes(index_bytes), at as u64, len as u32));
        at += HEADER + len;
        out.valid = at as u64;
    }
    out
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| storage("sync", dir, e))
}

fn open_rw(path: &Path, create: bool) -> Result<File, StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .mode(0o600)
        .open(path)
        .map_err(|e| storage("open", path, e))
}

impl Segments {
    /// Opens (creating if needed) the segments under `dir`, hiding entries at or below
    /// `purged`; cuts a torn end off the last segment, refuses any other damage.
    pub(crate) fn open(dir: &Path, purged: Option<u64>) -> Result<Self, StateError> {
        crate::private_fs::create_dir(dir).map_err(|e| storage("create", dir, e))?;
        let mut names = Vec::new();
        for f in std::fs::read_dir(dir).map_err(|e| storage("list", dir, e))? {
            let f = f.map_err(|e| storage("list", dir, e))?;
            let name = f.file_name().to_string_lossy().into_owned();
            let Some(first) = name.strip_suffix(SUFFIX) else {
                continue;
            };
            let first: u64 = first
                .parse()
                .map_err(|_| corrupt(format!("unexpected file {name}")))?;
            names.push((first, f.path()));
        }
        names.sort();
        let mut index = Index {
            segments: BTreeMap::new(),
            floor: purged.map_or(0, |p| p.saturating_add(1)),
        };
        let count = names.len();
        let mut expected: Option<u64> = None;
        for (n, (first, path)) in names.into_iter().enumerate() {
            let is_last = n + 1 == count;
            let bytes = std::fs::read(&path).map_err(|e| storage("read", &path, e))?;
            let found = scan(&bytes);
            if let Some(why) = &found.stopped {
                if !is_last {
                    return Err(corrupt(format!("{}: {why}", path.display())));
                }
                // A torn write at the end of the log: nothing from here was acknowledged.
                tracing::warn!(segment = %path.display(), at = found.valid, reason = %why,
                    "cutting a torn record off the end of the Raft log");
            }
            let file = open_rw(&path, false)?;
            let end = if found.stopped.is_some() {
                file.set_len(found.valid)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| storage("cut", &path, e))?;
                found.valid
            } else {
                bytes.len() as u64
            };
            let mut locs = Vec::with_capacity(found.records.len());
            for (i, (idx, offset, len)) in found.records.iter().enumerate() {
                if *idx != first + i as u64 {
                    return Err(corrupt(format!(
                        "{}: record {i} holds entry {idx}, expected {}",
                        path.display(),
                        first + i as u64
                    )));
                }
                locs.push(Loc {
                    offset: *offset,
                    len: *len,
                });
            }
            // A gap is allowed only where every missing entry is purged (a snapshot installed
            // past the end of the log, appends continuing after it).
            if let Some(want) = expected
                && first != want
                && !(first > want && first <= index.floor)
            {
                return Err(corrupt(format!(
                    "{} starts at entry {first}, expected {want}",
                    path.display()
                )));
            }
            if locs.is_empty() && !is_last {
                return Err(corrupt(format!("{} is empty", path.display())));
            }
            let seg = Segment {
                file: Arc::new(file),
                path,
                first,
                locs,
                bytes: found.valid,
                end,
            };
            expected = Some(seg.last().map_or(first, |l| l + 1));
            index.segments.insert(first, seg);
        }
        Ok(Self {
            dir: dir.to_owned(),
            index: RwLock::new(index),
        })
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // Every update of the index is completed under the lock before anything can fail, so
        // a poisoned lock still guards a consistent index.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The index of the last entry, if any is kept.
    pub(crate) fn last(&self) -> Option<u64> {
        let ix = self.read_index();
        ix.segments
            .values()
            .rev()
            .find_map(Segment::last)
            .filter(|l| *l >= ix.floor)
    }

    /// The payloads of the entries from `start` to `end` (inclusive) that are kept, in order.
    pub(crate) fn read(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, StateError> {
        let mut wanted = Vec::new();
        {
            let ix = self.read_index();
            let start = start.max(ix.floor);
            if start > end {
                return Ok(Vec::new());
            }
            // The segment holding `start` is the last one starting at or before it.
            let from = ix
                .segments
                .range(..=start)
                .next_back()
                .map_or(start, |(f, _)| *f);
            for seg in ix.segments.range(from..=end).map(|(_, s)| s) {
                let Some(last) = seg.last() else {
                    continue;
                };
                let (lo, hi) = (start.max(seg.first), end.min(last));
                for idx in lo..=hi {
                    if let Some(loc) = seg.locs.get((idx - seg.first) as usize) {
                        wanted.push((idx, seg.file.clone(), *loc, seg.path.clone()));
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(wanted.len());
        for (idx, file, loc, path) in wanted {
            let mut buf = vec![0u8; loc.len as usize];
            file.read_exact_at(&mut buf, loc.offset + HEADER as u64)
                .map_err(|e| storage("read", &path, e))?;
            out.push((idx, buf));
        }
        Ok(out)
    }

    /// Writes `rows` (consecutive indexes following the last entry) and syncs them: durable
    /// when this returns.
    pub(crate) fn append<B: AsRef<[u8]>>(&self, rows: &[(u64, B)]) -> Result<(), StateError> {
        let Some(&(first, _)) = rows.first() else {
            return Ok(());
        };
        for (i, (idx, _)) in rows.iter().enumerate() {
            if *idx != first + i as u64 {
                return Err(StateError::Storage(format!(
                    "appended entries are not consecutive: {idx} after {}",
                    first + i as u64 - 1
                )));
            }
        }
        let (file, path, offset, end) = {
            let mut ix = self.write_index();
            let last = ix.segments.values().next_back();
            // After everything up to the floor was purged (a snapshot installed past the end
            // of the log), appends start at the floor, in a segment of their own.
            let after_purge = last
                .and_then(Segment::last)
                .is_some_and(|l| l + 1 < first && first <= ix.floor);
            if let Some(seg) = last
                && let Some(l) = seg.last()
                && l + 1 != first
                && !after_purge
            {
                return Err(StateError::Storage(format!(
                    "appended entry {first} does not follow the last entry {l}"
                )));
            }
            let roll = match last {
                None => true,
                Some(seg) => {
                    after_purge
                        || seg.bytes >= SEGMENT_BYTES
                        || (seg.locs.is_empty() && seg.first != first)
                }
            };
            if roll {
                if let Some(seg) = ix.segments.values().next_back()
                    && seg.locs.is_empty()
                {
                    // An empty segment named for another index (left by a truncation of
                    // everything): replace it.
                    let (f, p) = (seg.first, seg.path.clone());
                    ix.segments.remove(&f);
                    std::fs::remove_file(&p).map_err(|e| storage("remove", &p, e))?;
                }
                let path = self.dir.join(segment_name(first));
                let file = open_rw(&path, true)?;
                sync_dir(&self.dir)?;
                ix.segments.insert(
                    first,
                    Segment {
                        file: Arc::new(file),
                        path,
                        first,
                        locs: Vec::new(),
                        bytes: 0,
                        end: 0,
                    },
                );
            }
            let seg = ix
                .segments
                .values()
                .next_back()
                .ok_or_else(|| StateError::Storage("no segment to append to".into()))?;
            (seg.file.clone(), seg.path.clone(), seg.bytes, seg.end)
        };
        let mut buf = Vec::with_capacity(rows.iter().map(|(_, b)| b.as_ref().len() + HEADER).sum());
        let mut locs = Vec::with_capacity(rows.len());
        for (idx, payload) in rows {
            let payload = payload.as_ref();
            locs.push(Loc {
                offset: offset + buf.len() as u64,
                len: u32::try_from(payload.len())
                    .ok()
                    .filter(|l| (*l as usize) <= MAX_PAYLOAD)
                    .ok_or_else(|| StateError::Storage(format!("entry {idx} is too large")))?,
            });
            encode_record(*idx, payload, &mut buf);
        }
        let written = offset + buf.len() as u64;
        let mut new_end = end.max(written);
        if written > end {
            // Past the zeroed space: allocate more, synced with this write. Where the file
            // system cannot allocate ahead, the write grows the file as it is.
            let ahead = written + ALLOCATE_AHEAD;
            if rustix::fs::fallocate(
                &*file,
                rustix::fs::FallocateFlags::empty(),
                end,
                ahead - end,
            )
            .is_ok()
            {
                new_end = ahead;
            }
        }
        file.write_all_at(&buf, offset)
            .and_then(|()| file.sync_data())
            .map_err(|e| storage("append to", &path, e))?;
        let mut ix = self.write_index();
        if let Some(seg) = ix.segments.values_mut().next_back() {
            seg.locs.extend(locs);
            seg.bytes = written;
            seg.end = seg.end.max(new_end);
        }
        Ok(())
    }

    /// Deletes the entries from `index` on, durably.
    pub(crate) fn truncate(&self, index: u64) -> Result<(), StateError> {
        let mut ix = self.write_index();
        // Whole segments from the last one down, so a crash midway leaves no gap.
        let doomed: Vec<u64> = ix.segments.range(index..).map(|(f, _)| *f).rev().collect();
        for first in &doomed {
            if let Some(seg) = ix.segments.remove(first) {
                std::fs::remove_file(&seg.path).map_err(|e| storage("remove", &seg.path, e))?;
            }
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        if let Some(seg) = ix.segments.values_mut().next_back()
            && seg.last().is_some_and(|l| l >= index)
        {
            let keep = (index - seg.first) as usize;
            let cut = seg.locs.get(keep).map_or(seg.bytes, |l| l.offset);
            seg.file
                .set_len(cut)
                .and_then(|()| seg.file.sync_all())
                .map_err(|e| storage("truncate", &seg.path, e))?;
            seg.locs.truncate(keep);
            seg.bytes = cut;
            seg.end = cut;
        }
        Ok(())
    }

    /// Hides the entries up to `index` (the caller has recorded the purge point durably) and
    /// deletes the segments that hold nothing else. The last segment is kept: it is the one
    /// appends go to.
    pub(crate) fn purge(&self, index: u64) -> Result<(), StateError> {
        let mut ix = self.write_index();
        ix.floor = ix.floor.max(index.saturating_add(1));
        let last_first = ix.segments.keys().next_back().copied();
        let done: Vec<u64> = ix
            .segments
            .values()
            .filter(|s| Some(s.first) != last_first && s.last().is_some_and(|l| l <= index))
            .map(|s| s.first)
            .collect();
        for first in done {
            if let Some(seg) = ix.segments.remove(&first) {
                std::fs::remove_file(&seg.path).map_err(|e| storage("remove", &seg.path, e))?;
            }
        }
        Ok(())
    }

    /// Deletes every segment (used when a migration from the old log table was interrupted
    /// and starts again).
    pub(crate) fn clear(&self) -> Result<(), StateError> {
        let mut ix = self.write_index();
        for (_, seg) in std::mem::take(&mut ix.segments) {
            std::fs::remove_file(&seg.path).map_err(|e| storage("remove", &seg.path, e))?;
        }
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests;
