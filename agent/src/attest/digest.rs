//! The SHA-256 of a running executable, for `unix:sha256`.
//!
//! - **What is hashed**: the file the process runs, opened through `/proc/<pid>/exe` (never by
//!   path), checked to be the same file (device, inode, size, mtime, ctime) before and after
//!   the read; a file that changed while being read gets no hash.
//! - **Cache key**: device, inode, size, mtime *and ctime*. The owner of a file can set its
//!   mtime (`utimensat`) but not its ctime: every write, `chmod`, `utimensat` or link change
//!   sets the ctime to the kernel's current (coarse) time. A file rewritten in place with its
//!   mtime restored therefore gets a new key and is hashed again.
//! - **Settling**: the kernel stamps ctime from a clock that advances in ticks (and some
//!   filesystems store whole seconds), so two writes within one tick can leave the same ctime.
//!   A hash is cached (or shared with other callers) only if its read began more than
//!   [`settle`] after the file's ctime: any write after that moment gets a later ctime, hence
//!   another key. A file changed less than that ago is hashed once settled (the caller waits);
//!   one whose ctime lies in the future (the clock was stepped back) is hashed for its caller
//!   only and never cached.
//! - **Single flight**: concurrent callers for one key wait for one hash instead of each
//!   reading the file.
//! - **Bounds**: at most [`CACHE_ENTRIES`] hashes are remembered, at most
//!   [`CACHE_ENTRIES_PER_OWNER`] of files of one owner, least recently used first out, so that a
//!   user creating many executables cannot push other users' binaries out of the cache.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustix::fs::{Mode, OFlags};
use tokio::sync::watch;

use super::{AttestError, FileId, Timestamp, statx_fd};

/// How many hashes are remembered.
pub(crate) const CACHE_ENTRIES: usize = 2048;
/// How many hashes of files of one owner are remembered.
pub(crate) const CACHE_ENTRIES_PER_OWNER: usize = 512;
/// How long after its ctime a file's content is settled on filesystems with sub-second
/// timestamps: well above the kernel's coarse clock tick (at most 10 ms with `HZ=100`).
const SETTLE: Duration = Duration::from_millis(100);
/// The same for a ctime with no sub-second part, likely from a filesystem storing whole
/// seconds (ext4 with 128-byte inodes: 1 s; FAT: 2 s).
const SETTLE_COARSE: Duration = Duration::from_secs(2);
/// The read buffer.
const CHUNK: usize = 64 * 1024;

/// How long after `ctime` the content of a file with that ctime cannot change without its
/// ctime changing too.
pub(crate) fn settle(ctime: Timestamp) -> Duration {
    if ctime.nsec == 0 {
        SETTLE_COARSE
    } else {
        SETTLE
    }
}

/// Whether a read that began at `started` saw a content that no later write can change
/// without also changing `ctime`.
pub(crate) fn settled(ctime: Timestamp, started: SystemTime) -> bool {
    let settle_ns = i128::try_from(settle(ctime).as_nanos()).unwrap_or(i128::MAX);
    nanos_since_epoch(started) > ctime.nanos().saturating_add(settle_ns)
}

/// How long to wait, at `now`, before hashing a file with `ctime` so that the hash is
/// [`settled`]: zero when it already would be, or when `ctime` is in the future (no wait would
/// be short enough to be worth it; that hash is not cached).
pub(crate) fn wait_before_hashing(ctime: Timestamp, now: SystemTime) -> Duration {
    let settle = settle(ctime);
    let settle_ns = i128::try_from(settle.as_nanos()).unwrap_or(i128::MAX);
    let margin = 1_000_000; // 1 ms: `settled` wants strictly later.
    let ready_at = ctime
        .nanos()
        .saturating_add(settle_ns)
        .saturating_add(margin);
    let wait = ready_at.saturating_sub(nanos_since_epoch(now));
    if wait <= 0 || wait > settle_ns.saturating_add(margin) {
        return Duration::ZERO;
    }
    Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
}

fn nanos_since_epoch(t: SystemTime) -> i128 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
    }
}

/// What reading an executable gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hashed {
    /// `None`: the file is too large, or changed while it was read.
    pub(crate) digest: Option<[u8; 32]>,
    /// Whether the digest may be cached and shared ([`settled`]).
    pub(crate) settled: bool,
}

/// Hashes the executable behind `proc_dir` (`/proc/<pid>`), expected to be `exe`. Blocking;
/// on a hostile filesystem it may never return: run it through the gate.
pub(crate) fn hash_exe(
    proc_dir: &OwnedFd,
    exe: FileId,
    max_len: u64,
) -> Result<Hashed, AttestError> {
    let unhashed = Hashed {
        digest: None,
        settled: true,
    };
    if exe.size > max_len {
        return Ok(unhashed);
    }
    let started = SystemTime::now();
    let fd = rustix::fs::openat(
        proc_dir,
        "exe",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(AttestError::io("/proc/<pid>/exe"))?;
    let opened = FileId::of(&statx_fd(&fd).map_err(AttestError::io("the executable"))?);
    if opened != exe {
        return Err(AttestError::ExecutableChanged);
    }
    let mut file = File::from(fd).take(max_len.saturating_add(1));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut total: u64 = 0;
    loop {
        let n = file.read(&mut buf).map_err(|source| AttestError::Io {
            what: "the executable",
            source,
        })?;
        if n == 0 {
            break;
        }
        total = total.saturating_add(n as u64);
        ctx.update(buf.get(..n).unwrap_or_default());
    }
    let after = FileId::of(&statx_fd(file.get_ref()).map_err(AttestError::io("the executable"))?);
    if total != exe.size || after != exe {
        // Modified while we read it: no hash rather than a wrong one.
        return Ok(unhashed);
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ctx.finish().as_ref());
    Ok(Hashed {
        digest: Some(digest),
        settled: settled(exe.ctime, started),
    })
}

/// The outcome of one hash, as other callers waiting for it see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flight {
    Hashed([u8; 32]),
    /// Too large or changed while read: nobody gets a hash for this key.
    Unhashable,
    /// The leader failed (its process went away) or its hash is not settled: hash for
    /// yourself.
    Retry,
}

/// What a caller does for a key.
pub(crate) enum Join {
    Cached([u8; 32]),
    Wait(Waiter),
    Lead(FlightGuard),
}

/// Waits for another caller's hash.
pub(crate) struct Waiter(watch::Receiver<Option<Flight>>);

/// What a waiter learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    Digest(Option<[u8; 32]>),
    Retry,
}

impl Waiter {
    pub(crate) async fn wait(mut self) -> Waited {
        match self.0.wait_for(Option::is_some).await.map(|v| *v) {
            Ok(Some(Flight::Hashed(d))) => Waited::Digest(Some(d)),
            Ok(Some(Flight::Unhashable)) => Waited::Digest(None),
            _ => Waited::Retry,
        }
    }
}

/// The executable hash cache and the hashes in flight.
#[derive(Debug, Default)]
pub(crate) struct Digests {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    cache: HashMap<FileId, Cached>,
    flights: HashMap<FileId, watch::Receiver<Option<Flight>>>,
    clock: u64,
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    digest: [u8; 32],
    owner: u32,
    used: u64,
}

impl Digests {
    /// The cached hash of `key`, the flight to wait for, or the duty to hash it.
    pub(crate) fn join(self: &Arc<Self>, key: FileId, owner: u32) -> Join {
        let Ok(mut state) = self.state.lock() else {
            return Join::Lead(FlightGuard::detached(key));
        };
        state.clock += 1;
        let now = state.clock;
        if let Some(hit) = state.cache.get_mut(&key) {
            hit.used = now;
            return Join::Cached(hit.digest);
        }
        if let Some(rx) = state.flights.get(&key) {
            return Join::Wait(Waiter(rx.clone()));
        }
        let (tx, rx) = watch::channel(None);
        state.flights.insert(key, rx);
        Join::Lead(FlightGuard {
            key,
            owner,
            tx: Some(tx),
            digests: Some(Arc::clone(self)),
        })
    }

    /// The cached hash of `key` or the flight to wait for, without taking the lead (`None`:
    /// neither).
    pub(crate) fn lookup(&self, key: FileId) -> Option<Join> {
        let mut state = self.state.lock().ok()?;
        state.clock += 1;
        let now = state.clock;
        if let Some(hit) = state.cache.get_mut(&key) {
            hit.used = now;
            return Some(Join::Cached(hit.digest));
        }
        state
            .flights
            .get(&key)
            .map(|rx| Join::Wait(Waiter(rx.clone())))
    }

    /// How many hashes are cached.
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.state.lock().map(|s| s.cache.len()).unwrap_or(0)
    }

    fn finish(&self, key: FileId, owner: u32, digest: Option<[u8; 32]>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.flights.remove(&key);
        let Some(digest) = digest else {
            return;
        };
        state.clock += 1;
        let used = state.clock;
        let mine = state.cache.values().filter(|c| c.owner == owner).count();
        let victim = if mine >= CACHE_ENTRIES_PER_OWNER {
            lru(&state.cache, |c| c.owner == owner)
        } else if state.cache.len() >= CACHE_ENTRIES {
            lru(&state.cache, |_| true)
        } else {
            None
        };
        if let Some(v) = victim {
            state.cache.remove(&v);
        }
        state.cache.insert(
            key,
            Cached {
                digest,
                owner,
                used,
            },
        );
    }
}

fn lru(cache: &HashMap<FileId, Cached>, pick: impl Fn(&Cached) -> bool) -> Option<FileId> {
    cache
        .iter()
        .filter(|(_, c)| pick(c))
        .min_by_key(|(_, c)| c.used)
        .map(|(k, _)| *k)
}

/// The duty to hash one key. Publishing settles every waiter; dropping it unpublished (the
/// leader gave up before hashing, or its job failed) tells them to hash for themselves.
pub(crate) struct FlightGuard {
    key: FileId,
    owner: u32,
    tx: Option<watch::Sender<Option<Flight>>>,
    digests: Option<Arc<Digests>>,
}

impl FlightGuard {
    /// A guard that publishes nowhere (the state lock was poisoned).
    fn detached(key: FileId) -> Self {
        Self {
            key,
            owner: 0,
            tx: None,
            digests: None,
        }
    }

    /// Records the leader's outcome: a settled hash is cached and shared; anything else is
    /// kept from the cache and from the waiters (an unsettled hash), or shared as "no hash".
    pub(crate) fn publish(mut self, outcome: &Result<Hashed, AttestError>) {
        let flight = match outcome {
            Ok(Hashed {
                digest: Some(d),
                settled: true,
            }) => Flight::Hashed(*d),
            Ok(Hashed { digest: None, .. }) => Flight::Unhashable,
            Ok(Hashed {
                digest: Some(_),
                settled: false,
            })
            | Err(_) => Flight::Retry,
        };
        if let Some(d) = self.digests.take() {
            let cached = match flight {
                Flight::Hashed(digest) => Some(digest),
                Flight::Unhashable | Flight::Retry => None,
            };
            d.finish(self.key, self.owner, cached);
        }
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(flight));
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if let Some(d) = self.digests.take() {
            d.finish(self.key, self.owner, None);
        }
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(Flight::Retry));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn ts(sec: i64, nsec: u32) -> Timestamp {
        Timestamp { sec, nsec }
    }

    fn at(sec: u64, nsec: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(sec, nsec)
    }

    fn key(ino: u64, ctime: Timestamp) -> FileId {
        FileId {
            dev: (8, 1),
            ino,
            size: 100,
            mtime: ts(1000, 0),
            ctime,
        }
    }

    #[test]
    fn a_hash_is_settled_only_well_after_the_ctime() {
        let ctime = ts(1_000, 500_000_000);
        // Within the coarse tick of the ctime: a later write may keep this ctime.
        assert!(!settled(ctime, at(1_000, 505_000_000)));
        assert!(!settled(ctime, at(1_000, 600_000_000)));
        assert!(settled(ctime, at(1_000, 600_000_001)));
        assert!(settled(ctime, at(2_000, 0)));
        // In the future (the clock was stepped back): never settled.
        assert!(!settled(ctime, at(999, 0)));
        // Whole-second ctimes (coarse filesystems) settle after 2 s.
        let coarse = ts(1_000, 0);
        assert!(!settled(coarse, at(1_001, 900_000_000)));
        assert!(settled(coarse, at(1_002, 1)));
    }

    #[test]
    fn waiting_makes_a_fresh_file_settled_and_the_future_is_not_waited_for() {
        let ctime = ts(1_000, 500_000_000);
        let now = at(1_000, 520_000_000);
        let wait = wait_before_hashing(ctime, now);
        assert!(
            wait > Duration::from_millis(80) && wait <= Duration::from_millis(82),
            "{wait:?}"
        );
        assert!(settled(ctime, now + wait));
        assert_eq!(wait_before_hashing(ctime, at(1_005, 0)), Duration::ZERO);
        assert_eq!(wait_before_hashing(ctime, at(900, 0)), Duration::ZERO);
        let coarse = ts(1_000, 0);
        let wait = wait_before_hashing(coarse, at(1_000, 300_000_000));
        assert!(wait > Duration::from_millis(1_700), "{wait:?}");
        assert!(settled(coarse, at(1_000, 300_000_000) + wait));
    }

    /// The cache key is what the owner cannot forge: rewriting a file and restoring its
    /// mtime changes its ctime, and a changed ctime is another key.
    #[test]
    fn the_key_includes_the_ctime() {
        let d = Arc::new(Digests::default());
        let original = key(7, ts(1_000, 1));
        let Join::Lead(guard) = d.join(original, 1000) else {
            panic!("the first caller leads");
        };
        guard.publish(&Ok(Hashed {
            digest: Some([1; 32]),
            settled: true,
        }));
        assert!(matches!(d.join(original, 1000), Join::Cached([1, ..])));
        // Same device, inode, size and mtime; only the ctime differs.
        let rewritten = key(7, ts(1_050, 2));
        assert!(matches!(d.join(rewritten, 1000), Join::Lead(_)));
    }

    #[test]
    fn an_unsettled_hash_is_neither_cached_nor_shared() {
        let d = Arc::new(Digests::default());
        let k = key(9, ts(1_000, 1));
        let Join::Lead(guard) = d.join(k, 0) else {
            panic!()
        };
        let Join::Wait(waiter) = d.join(k, 0) else {
            panic!("a second caller waits")
        };
        guard.publish(&Ok(Hashed {
            digest: Some([2; 32]),
            settled: false,
        }));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(waiter.wait()), Waited::Retry);
        assert_eq!(d.cached(), 0);
        assert!(matches!(d.join(k, 0), Join::Lead(_)));
    }

    /// Concurrent callers for one file wait for one hash; a leader that gives up sends them
    /// to hash for themselves; "no hash" (too large, changed while read) is shared.
    #[tokio::test]
    async fn concurrent_callers_share_one_flight() {
        let d = Arc::new(Digests::default());
        let k = key(11, ts(1_000, 1));
        let Join::Lead(guard) = d.join(k, 0) else {
            panic!()
        };
        let waiters: Vec<_> = (0..8)
            .map(|_| match d.join(k, 0) {
                Join::Wait(w) => tokio::spawn(w.wait()),
                _ => panic!("callers during a flight wait for it"),
            })
            .collect();
        guard.publish(&Ok(Hashed {
            digest: Some([3; 32]),
            settled: true,
        }));
        for w in waiters {
            assert_eq!(w.await.unwrap(), Waited::Digest(Some([3; 32])));
        }
        assert_eq!(d.cached(), 1);

        // A leader dropped before hashing: its waiter retries and then leads.
        let k2 = key(12, ts(1_000, 1));
        let Join::Lead(guard) = d.join(k2, 0) else {
            panic!()
        };
        let Join::Wait(w) = d.join(k2, 0) else {
            panic!()
        };
        drop(guard);
        assert_eq!(w.wait().await, Waited::Retry);
        let Join::Lead(guard) = d.join(k2, 0) else {
            panic!("the flight is over")
        };
        let Join::Wait(w) = d.join(k2, 0) else {
            panic!()
        };
        guard.publish(&Ok(Hashed {
            digest: None,
            settled: true,
        }));
        assert_eq!(w.wait().await, Waited::Digest(None));
        assert_eq!(d.cached(), 1, "no hash is not cached");
    }

    /// One owner's files cannot evict other owners' hashes.
    #[test]
    fn one_owner_cannot_flush_the_cache() {
        let d = Arc::new(Digests::default());
        let hash = |d: &Arc<Digests>, k: FileId, owner: u32| {
            let Join::Lead(g) = d.join(k, owner) else {
                panic!()
            };
            g.publish(&Ok(Hashed {
                digest: Some([4; 32]),
                settled: true,
            }));
        };
        let root_binary = key(1, ts(1_000, 1));
        hash(&d, root_binary, 0);
        for i in 0..(CACHE_ENTRIES_PER_OWNER as u64 * 3) {
            hash(&d, key(100 + i, ts(1_000, 1)), 4242);
        }
        assert!(matches!(d.join(root_binary, 0), Join::Cached(_)));
        assert_eq!(d.cached(), CACHE_ENTRIES_PER_OWNER + 1);
    }
}
