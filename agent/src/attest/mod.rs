//! Workload attestation: who is at the other end of a Workload API connection.
//!
//! At accept, [`Attestor::attest`] reads the peer's credentials from the socket (`SO_PEERCRED`:
//! pid, uid, gid, fixed by the kernel at `connect`), then pins the process:
//!
//! - a **pidfd** (`pidfd_open`), which tells whether *that* process is still alive even after
//!   its pid is reused;
//! - a directory fd on **`/proc/<pid>`**: every later read through it fails once that process
//!   is gone, even if a new process gets the same pid;
//! - the process **start time** (field 22 of `/proc/<pid>/stat`) and the **executable's
//!   identity** (device, inode, size, mtime and ctime of `/proc/<pid>/exe`, read with
//!   `AT_STATX_DONT_SYNC` so that a FUSE or network filesystem is never asked).
//!
//! It derives selectors from them at once: `unix:uid`, `unix:gid`, `unix:user` and `unix:group`
//! (named by `/etc/passwd` and `/etc/group`; users known only to NSS modules such as LDAP get no
//! name selector). Two more are established only when some entry needs them
//! ([`Attestor::resolve`], called before answering with the entries held at that moment), because
//! they read the executable's filesystem, which its owner may make slow:
//!
//! - `unix:path:P` — `P` is the target of `/proc/<pid>/exe`; the selector is granted only if
//!   the process shares the agent's **mount namespace** and `P`, resolved in the agent's own
//!   namespace, is the **same file** (device and inode) as the running executable. A process
//!   that bind-mounted another binary over `P` in a namespace of its own never has it.
//! - `unix:sha256:H` — the hash of the running executable (module `digest`): read through
//!   `/proc/<pid>/exe`, cached by a key its owner cannot forge (ctime included), computed once
//!   for concurrent callers, at most [`MAX_HASHED_EXE_LEN`] bytes. It is computed only when an
//!   entry with a `unix:sha256` selector has all its other selectors among the caller's.
//!
//! For a process of a task this agent launched, `ringzero:job:<alloc>` (module `task`): its
//! process group is the task's, it descends from the task's process, and it stays in that group.
//!
//! # Bounds
//!
//! Every blocking step runs through a gate ([`AttestLimits`]): the `/proc` reads at accept at
//! most 4 per uid and 16 in all, the executable reads (path check, hash) at most 1 per uid and 2
//! in all. A job keeps its slots until it really ends, even when its caller stopped waiting, so
//! a uid whose executable never answers (a FUSE server that hangs) holds one thread and delays
//! only itself; other uids keep being served.
//!
//! # Verification
//!
//! Before answering each request the Workload API calls [`Attestation::verify`]: the pidfd must
//! show the process alive (after the reads, so they were of that process), and the executable
//! read through the pinned `/proc/<pid>` directory must be unchanged (and, for a task's
//! process, its start time and process group). A process that connected and then died (its pid
//! possibly reused), or that exec'd another binary on the connected socket (fork-then-exec or
//! plain exec), is refused, so it never gets the identity of the binary it runs *now*; a
//! forked child that keeps the socket and the same binary is the same workload by construction.
//! Any change of the executable's inode (a write, `chmod`, a new link) also changes its ctime:
//! the process is refused until it reconnects and is attested again. The streams of one
//! connection share a successful verification for the snapshot they carry, for at most
//! [`SHARED_VERIFICATION`] ([`Attestation::verify_for`]): a rotation fanned out to a
//! connection's streams reads `/proc` once per connection, not once per stream.
//!
//! # Residual races
//!
//! - **Between `connect` and accept.** Linux (before 6.5) gives only a pid for the peer, and
//!   ringzero's code is free of `unsafe`, which rules out `SO_PEERPIDFD` through a raw
//!   `getsockopt`. A process that connects and then execs another binary *before* the agent
//!   accepts and attests is attested as the new binary. The new image is what runs on the socket
//!   from then on, with the uid/gid of the connecting process (a setuid binary keeps the
//!   original uid in `SO_PEERCRED`), so the gain is limited to what an entry selecting that
//!   binary grants that uid. Likewise a process that connects and exits before the accept,
//!   with its pid reused by a new process in that window, would be attested as the new process
//!   (the kernel would have to cycle through the whole pid space during the window).
//! - **Hash and content**: see `threat-model/attestation.md` for what `unix:sha256` proves.

mod digest;
mod gate;
mod task;

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use ringzero_policy::selector::{Selector, SelectorKind};

use crate::tasks::AllocId;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{AtFlags, Mode, OFlags, Statx, StatxFlags};
use rustix::process::{Pid, PidfdFlags};

use self::digest::{Digests, Join, Waited};
use self::gate::Gate;
pub(crate) use self::gate::GateError;
pub(crate) use self::task::TaskStatuses;

/// The largest executable whose SHA-256 is computed; a larger one gets no `unix:sha256`
/// selector.
pub(crate) const MAX_HASHED_EXE_LEN: u64 = 512 * 1024 * 1024;
/// The largest `/etc/passwd` or `/etc/group` read.
const MAX_DB_LEN: u64 = 8 * 1024 * 1024;
/// The largest `/proc/<pid>/stat` read (its `comm` is at most 16 bytes; the rest is numbers).
const MAX_STAT_LEN: u64 = 4096;

/// Bounds on the blocking work attestation may do at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttestLimits {
    /// `/proc` reads at accept, per uid.
    pub proc_reads_per_uid: usize,
    /// `/proc` reads at accept, in all.
    pub proc_reads: usize,
    /// Executable reads (path checks and hashes), per uid.
    pub exe_reads_per_uid: usize,
    /// Executable reads, in all.
    pub exe_reads: usize,
    /// The largest executable hashed.
    pub max_hashed_len: u64,
}

impl Default for AttestLimits {
    /// 4 `/proc` reads per uid and 16 in all; 1 executable read per uid and 2 in all;
    /// executables up to [`MAX_HASHED_EXE_LEN`].
    fn default() -> Self {
        Self {
            proc_reads_per_uid: 4,
            proc_reads: 16,
            exe_reads_per_uid: 1,
            exe_reads: 2,
            max_hashed_len: MAX_HASHED_EXE_LEN,
        }
    }
}

/// Why a peer could not be attested, or is no longer the process that was attested.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum AttestError {
    /// The socket gave no peer pid (the peer is in another pid namespace, or not a process).
    #[error("the peer's pid is unknown")]
    NoPid,
    /// The process is gone (exited or reaped), or its pid now belongs to another process.
    #[error("the peer process has exited")]
    ProcessGone,
    /// The process now runs another executable than when it was attested, or its executable
    /// changed.
    #[error("the peer process has executed another binary since it connected")]
    ExecutableChanged,
    /// Reading the process's credentials or `/proc` entries failed.
    #[error("cannot read {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// `/proc/<pid>/stat` did not have the expected shape.
    #[error("malformed /proc/<pid>/stat")]
    MalformedStat,
    /// The process was attested as part of a task, and has left its process group or the
    /// task no longer runs.
    #[error("the peer process is no longer part of the task it was attested in")]
    LeftTask,
    /// The attestation job did not finish (the agent is shutting down).
    #[error(transparent)]
    Interrupted(#[from] GateError),
}

impl AttestError {
    fn io(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> AttestError {
        move |e| {
            if e == rustix::io::Errno::SRCH || e == rustix::io::Errno::NOENT {
                AttestError::ProcessGone
            } else {
                AttestError::Io {
                    what,
                    source: e.into(),
                }
            }
        }
    }
}

/// A file timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Timestamp {
    pub(crate) sec: i64,
    pub(crate) nsec: u32,
}

impl Timestamp {
    fn of(t: &rustix::fs::StatxTimestamp) -> Self {
        Self {
            sec: t.tv_sec,
            nsec: t.tv_nsec,
        }
    }

    /// Nanoseconds since the epoch.
    pub(crate) fn nanos(self) -> i128 {
        i128::from(self.sec) * 1_000_000_000 + i128::from(self.nsec)
    }
}

/// The identity of a file's content as far as `stat` can tell: device, inode, size, mtime and
/// ctime. The ctime is what its owner cannot set: see [`digest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    pub(crate) dev: (u32, u32),
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime: Timestamp,
    pub(crate) ctime: Timestamp,
}

impl FileId {
    fn of(st: &Statx) -> Self {
        Self {
            dev: (st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            size: st.stx_size,
            mtime: Timestamp::of(&st.stx_mtime),
            ctime: Timestamp::of(&st.stx_ctime),
        }
    }

    /// Device and inode: which file, whatever its content.
    fn file(&self) -> ((u32, u32), u64) {
        (self.dev, self.ino)
    }
}

/// The fields [`FileId`] is made of; a filesystem that does not report them all is refused.
const FILE_ID_FIELDS: StatxFlags = StatxFlags::INO
    .union(StatxFlags::SIZE)
    .union(StatxFlags::MTIME)
    .union(StatxFlags::CTIME)
    .union(StatxFlags::UID);

fn checked(st: Statx) -> rustix::io::Result<Statx> {
    if StatxFlags::from_bits_retain(st.stx_mask).contains(FILE_ID_FIELDS) {
        Ok(st)
    } else {
        Err(rustix::io::Errno::NOTSUP)
    }
}

/// `statx` of `path` under `dir`, from cached attributes only: a FUSE server or a network
/// filesystem is not asked, so this never blocks on one.
fn statx_cached(dir: impl AsFd, path: &str) -> rustix::io::Result<Statx> {
    checked(rustix::fs::statx(
        dir,
        path,
        AtFlags::STATX_DONT_SYNC,
        FILE_ID_FIELDS,
    )?)
}

/// `statx` of an open file.
pub(crate) fn statx_fd(fd: impl AsFd) -> rustix::io::Result<Statx> {
    checked(rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH,
        FILE_ID_FIELDS,
    )?)
}

/// A mount namespace, as the device and inode of its `ns/mnt` file.
type MntNs = (u64, u64);

#[allow(clippy::unnecessary_cast, clippy::useless_conversion)] // field types differ by arch
fn mnt_ns(dir: impl AsFd, path: &str) -> rustix::io::Result<MntNs> {
    let st = rustix::fs::statat(dir, path, AtFlags::empty())?;
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// What was learned about a peer process at accept, and the handles that pin it.
pub(crate) struct Attestation {
    pid: i32,
    uid: u32,
    gid: u32,
    start_time: u64,
    exe: FileId,
    exe_owner: u32,
    /// uid, gid, user, group: known at accept.
    base: Vec<Selector>,
    /// `unix:path` of `/proc/<pid>/exe`, if the process shares the agent's mount namespace:
    /// granted once [`Attestation::path_is_exe`] confirmed it.
    exe_path: Option<Selector>,
    path_ok: OnceLock<bool>,
    /// The executable's hash, once computed (`None`: too large or changed while read).
    digest: OnceLock<Option<[u8; 32]>>,
    /// The task the process belonged to at accept (its `ringzero:job` selector is in `base`),
    /// its process group, and the statuses to check it against.
    task: Option<(AllocId, i32, TaskStatuses)>,
    pidfd: OwnedFd,
    proc_dir: OwnedFd,
    /// The last successful [`Attestation::verify_for`]: the snapshot revision it was for and
    /// when it ran.
    shared: std::sync::Mutex<Option<(u64, Instant)>>,
}

/// How long one verification serves the other streams of a connection that carry the same
/// snapshot ([`Attestation::verify_for`]).
pub(crate) const SHARED_VERIFICATION: Duration = Duration::from_millis(50);

impl fmt::Debug for Attestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attestation")
            .field("pid", &self.pid)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("selectors", &self.selectors())
            .finish_non_exhaustive()
    }
}

/// What an attestation still has to establish before some entry can be decided.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Whether `unix:path` must be checked.
    pub path: bool,
    /// Whether the executable must be hashed.
    pub sha256: bool,
}

impl Pending {
    /// Nothing left to establish.
    pub(crate) fn is_none(self) -> bool {
        !self.path && !self.sha256
    }
}

impl Attestation {
    /// The peer's pid (as seen in the agent's pid namespace).
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// The peer's user id at `connect`.
    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }

    /// The selectors established so far: uid, gid, user and group from the start; `unix:path`
    /// and `unix:sha256` once [`Attestor::resolve`] established them.
    pub(crate) fn selectors(&self) -> Vec<Selector> {
        let mut out = self.base.clone();
        if self.path_ok.get() == Some(&true)
            && let Some(path) = &self.exe_path
        {
            out.push(path.clone());
        }
        if let Some(Some(d)) = self.digest.get() {
            out.push(Selector::sha256(d));
        }
        out
    }

    /// What must still be established for the entries with these selectors to be decided:
    /// the path check when an entry selects this executable's path, the hash when an entry
    /// selects a hash — each only if every other selector of that entry is (or may still
    /// become) the caller's.
    pub(crate) fn pending<'a>(&self, entries: impl IntoIterator<Item = &'a [Selector]>) -> Pending {
        let mut out = Pending::default();
        for entry in entries {
            let mut need = Pending::default();
            let mut wanted_hash: Option<&Selector> = None;
            let possible = !entry.is_empty()
                && entry.iter().all(|s| match s.kind() {
                    SelectorKind::UnixPath => match self.path_ok.get() {
                        _ if self.exe_path.as_ref() != Some(s) => false,
                        Some(ok) => *ok,
                        None => {
                            need.path = true;
                            true
                        }
                    },
                    SelectorKind::UnixSha256 => match self.digest.get() {
                        Some(d) => d.is_some_and(|d| Selector::sha256(&d) == *s),
                        // Two different hashes in one entry can never both match.
                        None if wanted_hash.is_some_and(|w| w != s) => false,
                        None => {
                            wanted_hash = Some(s);
                            need.sha256 = true;
                            true
                        }
                    },
                    _ => self.base.contains(s),
                });
            if possible {
                out.path |= need.path;
                out.sha256 |= need.sha256;
            }
        }
        out
    }

    /// Checks that the peer is still the process that was attested, running the same
    /// executable; see the [module docs](self). Blocking, but only a few small reads of `/proc`
    /// and cached attributes: never a request to the executable's filesystem.
    ///
    /// The pidfd alone proves the process is the attested one: it pinned the process that was
    /// at the pid when the pidfd was opened, and while that process lives its pid cannot name
    /// another, so `/proc/<pid>` (opened right after) is its directory. The start time is
    /// therefore compared only when `/proc/<pid>/stat` is read anyway, for a task's process
    /// group: reading it costs the kernel formatting 52 fields, and it was most of a
    /// rotation's cost per stream.
    pub(crate) fn verify(&self) -> Result<(), AttestError> {
        let stat = match self.task {
            Some(_) => Some(read_stat(&self.proc_dir)?),
            None => None,
        };
        let exe =
            statx_cached(&self.proc_dir, "exe").map_err(AttestError::io("/proc/<pid>/exe"))?;
        // Alive *after* the reads: the pid still named this process while they ran.
        if !is_alive(&self.pidfd)? {
            return Err(AttestError::ProcessGone);
        }
        if FileId::of(&exe) != self.exe {
            return Err(AttestError::ExecutableChanged);
        }
        if let (Some((alloc, pgid, tasks)), Some(stat)) = (&self.task, &stat) {
            let start_time = parse_start_time(stat).ok_or(AttestError::MalformedStat)?;
            if start_time != self.start_time {
                return Err(AttestError::ProcessGone);
            }
            let (_, now) = task::parse_ppid_pgrp(stat).ok_or(AttestError::MalformedStat)?;
            if now != *pgid || !task::still_leads(tasks, alloc, *pgid) {
                return Err(AttestError::LeftTask);
            }
        }
        Ok(())
    }

    /// [`Attestation::verify`] before a stream's message carrying snapshot `revision`, shared
    /// by the connection's streams: when another stream of this connection verified the caller
    /// for the same revision less than [`SHARED_VERIFICATION`] ago, that check stands for this
    /// one. A rotation fanned out to the 16 streams of one connection reads `/proc` once, not
    /// 16 times. A failure is never shared: each stream verifies again, and is refused itself.
    pub(crate) fn verify_for(&self, revision: u64) -> Result<(), AttestError> {
        let recent = |memo: &Option<(u64, Instant)>| {
            memo.is_some_and(|(r, at)| r == revision && at.elapsed() < SHARED_VERIFICATION)
        };
        if self.shared.lock().is_ok_and(|m| recent(&m)) {
            return Ok(());
        }
        self.verify()?;
        if let Ok(mut m) = self.shared.lock() {
            *m = Some((revision, Instant::now()));
        }
        Ok(())
    }

    /// Whether the process shares the mount namespace `own` and its executable's path, resolved
    /// in the agent's own namespace, is the running executable. Blocking: the lookup may ask
    /// the filesystem holding the path.
    fn path_is_exe(&self, own: Option<MntNs>) -> Result<bool, AttestError> {
        let (Some(path), Some(own)) = (&self.exe_path, own) else {
            return Ok(false);
        };
        let theirs =
            mnt_ns(&self.proc_dir, "ns/mnt").map_err(AttestError::io("/proc/<pid>/ns/mnt"))?;
        if theirs != own {
            return Ok(false);
        }
        // The path is the kernel's name for the executable: a symlink at its end now means
        // something else is there.
        match rustix::fs::statx(
            rustix::fs::CWD,
            path.value(),
            AtFlags::SYMLINK_NOFOLLOW,
            FILE_ID_FIELDS,
        ) {
            Ok(st) => Ok(FileId::of(&st).file() == self.exe.file()),
            Err(_) => Ok(false),
        }
    }
}

/// Attests peers; cheap to clone (the hash cache and the gates are shared).
#[derive(Debug, Clone)]
pub(crate) struct Attestor {
    limits: AttestLimits,
    digests: Arc<Digests>,
    proc_reads: Arc<Gate>,
    exe_reads: Arc<Gate>,
    /// The agent's own mount namespace; `None` if unreadable (then no path selector is ever
    /// granted).
    own_mnt_ns: Option<MntNs>,
    /// The tasks this agent launched, for `ringzero:job` (none: never granted).
    tasks: Option<TaskStatuses>,
}

impl Default for Attestor {
    fn default() -> Self {
        Self::new()
    }
}

impl Attestor {
    /// An attestor with the default [`AttestLimits`].
    pub(crate) fn new() -> Self {
        Self::with_limits(AttestLimits::default())
    }

    /// An attestor hashing executables of up to `max` bytes.
    #[cfg(test)]
    pub(crate) fn with_max_hashed_len(max: u64) -> Self {
        Self::with_limits(AttestLimits {
            max_hashed_len: max,
            ..AttestLimits::default()
        })
    }

    /// An attestor with these limits.
    pub(crate) fn with_limits(limits: AttestLimits) -> Self {
        Self {
            limits,
            digests: Arc::new(Digests::default()),
            proc_reads: Arc::new(Gate::new(limits.proc_reads_per_uid, limits.proc_reads)),
            exe_reads: Arc::new(Gate::new(limits.exe_reads_per_uid, limits.exe_reads)),
            own_mnt_ns: mnt_ns(rustix::fs::CWD, "/proc/self/ns/mnt").ok(),
            tasks: None,
        }
    }

    /// Grants `ringzero:job:<alloc>` to processes of the running tasks of these statuses.
    pub(crate) fn with_tasks(mut self, tasks: TaskStatuses) -> Self {
        self.tasks = Some(tasks);
        self
    }

    /// Attests the peer of a connected unix socket: its credentials, then the `/proc` reads
    /// of [`Attestor::attest_process`] through the gate.
    pub(crate) async fn attest(
        &self,
        peer: &tokio::net::UnixStream,
    ) -> Result<Attestation, AttestError> {
        let cred = peer.peer_cred().map_err(|source| AttestError::Io {
            what: "peer credentials",
            source,
        })?;
        let pid = cred.pid().ok_or(AttestError::NoPid)?;
        let (uid, gid) = (cred.uid(), cred.gid());
        let this = self.clone();
        self.proc_reads
            .run(uid, move || this.attest_process(pid, uid, gid))
            .await?
    }

    /// Attests process `pid`, whose credentials the kernel reported as `uid` and `gid`.
    /// Blocking, but it reads only `/proc`, `/etc/passwd` and `/etc/group`.
    pub(crate) fn attest_process(
        &self,
        pid: i32,
        uid: u32,
        gid: u32,
    ) -> Result<Attestation, AttestError> {
        let raw = Pid::from_raw(pid).ok_or(AttestError::NoPid)?;
        let pidfd = rustix::process::pidfd_open(raw, PidfdFlags::empty())
            .map_err(AttestError::io("pidfd"))?;
        let proc_dir = rustix::fs::open(
            format!("/proc/{pid}"),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(AttestError::io("/proc/<pid>"))?;
        let stat = read_stat(&proc_dir)?;
        let start_time = parse_start_time(&stat).ok_or(AttestError::MalformedStat)?;
        let exe_stat =
            statx_cached(&proc_dir, "exe").map_err(AttestError::io("/proc/<pid>/exe"))?;
        let exe = FileId::of(&exe_stat);
        let exe_path = rustix::fs::readlinkat(&proc_dir, "exe", Vec::new())
            .map_err(AttestError::io("/proc/<pid>/exe"))?;
        let same_mnt_ns = match self.own_mnt_ns {
            Some(own) => {
                mnt_ns(&proc_dir, "ns/mnt").map_err(AttestError::io("/proc/<pid>/ns/mnt"))? == own
            }
            None => false,
        };

        let mut base = vec![Selector::uid(uid), Selector::gid(gid)];
        if let Some(name) = lookup_name("/etc/passwd", uid) {
            base.extend(Selector::new(SelectorKind::UnixUser, &name).ok());
        }
        if let Some(name) = lookup_name("/etc/group", gid) {
            base.extend(Selector::new(SelectorKind::UnixGroup, &name).ok());
        }
        let task = match &self.tasks {
            Some(tasks) => {
                let (ppid, pgid) =
                    task::parse_ppid_pgrp(&stat).ok_or(AttestError::MalformedStat)?;
                task::task_leading(tasks, pgid)
                    .filter(|_| task::descends_from(pid, ppid, pgid))
                    .and_then(|alloc| {
                        let selector = Selector::job(alloc.as_str()).ok()?;
                        base.push(selector);
                        Some((alloc, pgid, tasks.clone()))
                    })
            }
            None => None,
        };
        // A path means something only in the agent's own mount namespace (it is checked there
        // before it is granted). A deleted executable reads as "/path (deleted)".
        let exe_path = exe_path
            .into_string()
            .ok()
            .filter(|p| same_mnt_ns && !p.ends_with(" (deleted)"))
            .and_then(|p| Selector::new(SelectorKind::UnixPath, &p).ok());

        let attestation = Attestation {
            pid,
            uid,
            gid,
            start_time,
            exe,
            exe_owner: exe_stat.stx_uid,
            base,
            exe_path,
            path_ok: OnceLock::new(),
            digest: OnceLock::new(),
            shared: std::sync::Mutex::new(None),
            task,
            pidfd,
            proc_dir,
        };
        // Everything above described the process that is still there, on the same binary.
        attestation.verify()?;
        Ok(attestation)
    }

    /// Establishes what [`Attestation::pending`] says the entries with these selectors need
    /// (the path check, the hash), through the executable-read gate. Cancel-safe: a job that
    /// started finishes on its own, its result is kept for the next call (and a hash is
    /// cached for every caller).
    pub(crate) async fn resolve(
        &self,
        att: &Arc<Attestation>,
        entries: &[&[Selector]],
    ) -> Result<(), AttestError> {
        loop {
            let pending = att.pending(entries.iter().copied());
            if pending.path {
                let a = Arc::clone(att);
                let own = self.own_mnt_ns;
                let ok = self
                    .exe_reads
                    .run(att.uid, move || a.path_is_exe(own))
                    .await??;
                let _ = att.path_ok.set(ok);
            } else if pending.sha256 {
                let digest = self.digest(att).await?;
                let _ = att.digest.set(digest);
            } else {
                return Ok(());
            }
        }
    }

    /// The hash of the caller's executable: cached, another caller's in flight, or computed
    /// here once the file's ctime has settled.
    ///
    /// A caller becomes the one hashing (and makes others wait for it) only once it holds its
    /// uid's slot: a uid whose slot is taken (by a read that never ends) cannot make other
    /// uids wait for a hash of a binary they share.
    async fn digest(&self, att: &Arc<Attestation>) -> Result<Option<[u8; 32]>, AttestError> {
        let max = self.limits.max_hashed_len;
        if att.exe.size > max {
            return Ok(None);
        }
        loop {
            match self.digests.lookup(att.exe) {
                Some(Join::Cached(d)) => return Ok(Some(d)),
                Some(Join::Wait(w)) => {
                    if let Waited::Digest(d) = w.wait().await {
                        return Ok(d);
                    }
                    continue;
                }
                Some(Join::Lead(_)) | None => {}
            }
            let wait = digest::wait_before_hashing(att.exe.ctime, SystemTime::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let slot = self.exe_reads.slot(att.uid).await?;
            match self.digests.join(att.exe, att.exe_owner) {
                Join::Cached(d) => return Ok(Some(d)),
                Join::Wait(w) => {
                    drop(slot);
                    if let Waited::Digest(d) = w.wait().await {
                        return Ok(d);
                    }
                }
                Join::Lead(guard) => {
                    let a = Arc::clone(att);
                    let hashed = slot
                        .run(move || {
                            let out = digest::hash_exe(&a.proc_dir, a.exe, max);
                            guard.publish(&out);
                            out
                        })
                        .await??;
                    return Ok(hashed.digest);
                }
            }
        }
    }
}

/// Whether the process behind `pidfd` is still running (a pidfd polls readable once its
/// process has exited).
fn is_alive(pidfd: &OwnedFd) -> Result<bool, AttestError> {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let ready = rustix::event::poll(&mut fds, Some(&zero)).map_err(AttestError::io("pidfd"))?;
    Ok(ready == 0)
}

/// `/proc/<pid>/stat`, read through the pinned directory.
fn read_stat(proc_dir: &OwnedFd) -> Result<String, AttestError> {
    let fd = rustix::fs::openat(
        proc_dir,
        "stat",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(AttestError::io("/proc/<pid>/stat"))?;
    let mut text = String::new();
    File::from(fd)
        .take(MAX_STAT_LEN)
        .read_to_string(&mut text)
        .map_err(|source| {
            if source.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) {
                AttestError::ProcessGone
            } else {
                AttestError::Io {
                    what: "/proc/<pid>/stat",
                    source,
                }
            }
        })?;
    Ok(text)
}

/// `pid (comm) state ppid …`: `comm` may contain spaces and parentheses, so fields are counted
/// from the last `)`; the start time is field 22, the 20th after `comm`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    after_comm.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// The user name of `uid` in `/etc/passwd`, if any (users known only to NSS modules have none).
pub fn user_name(uid: u32) -> Option<String> {
    lookup_name("/etc/passwd", uid)
}

/// The uid of this process.
pub fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The name of `id` in a passwd- or group-format file (`name:x:id:…`), if any.
fn lookup_name(path: &str, id: u32) -> Option<String> {
    let mut text = String::new();
    File::open(path)
        .ok()?
        .take(MAX_DB_LEN)
        .read_to_string(&mut text)
        .ok()?;
    find_name(&text, id)
}

fn find_name(db: &str, id: u32) -> Option<String> {
    let wanted = id.to_string();
    db.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        (fields.next()? == wanted && !name.is_empty()).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests;
