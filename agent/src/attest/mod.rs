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
//! - `unix:sha256:H` — the hash of the running executable (see [`digest`]): read through
//!   `/proc/<pid>/exe`, cached by a key its owner cannot forge (ctime included), computed once
//!   for concurrent callers, at most [`MAX_HASHED_EXE_LEN`] bytes. It is computed only when an
//!   entry with a `unix:sha256` selector has all its other selectors among the caller's.
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
//! show the process alive, and the start time and executable read through the pinned
//! `/proc/<pid>` directory must be unchanged. A process that connected and then died (its pid
//! possibly reused), or that exec'd another binary on the connected socket (fork-then-exec or
//! plain exec), is refused, so it never gets the identity of the binary it runs *now*; a
//! forked child that keeps the socket and the same binary is the same workload by construction.
//! Any change of the executable's inode (a write, `chmod`, a new link) also changes its ctime:
//! the process is refused until it reconnects and is attested again.
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

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use ringzero_policy::selector::{Selector, SelectorKind};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{AtFlags, Mode, OFlags, Statx, StatxFlags};
use rustix::process::{Pid, PidfdFlags};

use self::digest::{Digests, Join, Waited};
use self::gate::Gate;
pub use self::gate::GateError;

/// The largest executable whose SHA-256 is computed; a larger one gets no `unix:sha256`
/// selector.
pub const MAX_HASHED_EXE_LEN: u64 = 512 * 1024 * 1024;
/// The largest `/etc/passwd` or `/etc/group` read.
const MAX_DB_LEN: u64 = 8 * 1024 * 1024;
/// The largest `/proc/<pid>/stat` read (its `comm` is at most 16 bytes; the rest is numbers).
const MAX_STAT_LEN: u64 = 4096;

/// Bounds on the blocking work attestation may do at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttestLimits {
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
pub enum AttestError {
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
pub struct Attestation {
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
    pidfd: OwnedFd,
    proc_dir: OwnedFd,
}

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
pub struct Pending {
    /// Whether `unix:path` must be checked.
    pub path: bool,
    /// Whether the executable must be hashed.
    pub sha256: bool,
}

impl Pending {
    /// Nothing left to establish.
    pub fn is_none(self) -> bool {
        !self.path && !self.sha256
    }
}

impl Attestation {
    /// The peer's pid (as seen in the agent's pid namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The peer's user id at `connect`.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The peer's group id at `connect`.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// The selectors established so far: uid, gid, user and group from the start; `unix:path`
    /// and `unix:sha256` once [`Attestor::resolve`] established them.
    pub fn selectors(&self) -> Vec<Selector> {
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
    pub fn pending<'a>(&self, entries: impl IntoIterator<Item = &'a [Selector]>) -> Pending {
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
    pub fn verify(&self) -> Result<(), AttestError> {
        let start_time = read_start_time(&self.proc_dir)?;
        let exe =
            statx_cached(&self.proc_dir, "exe").map_err(AttestError::io("/proc/<pid>/exe"))?;
        // Alive *after* the reads: the pid still named this process while they ran.
        if !is_alive(&self.pidfd)? || start_time != self.start_time {
            return Err(AttestError::ProcessGone);
        }
        if FileId::of(&exe) != self.exe {
            return Err(AttestError::ExecutableChanged);
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
pub struct Attestor {
    limits: AttestLimits,
    digests: Arc<Digests>,
    proc_reads: Arc<Gate>,
    exe_reads: Arc<Gate>,
    /// The agent's own mount namespace; `None` if unreadable (then no path selector is ever
    /// granted).
    own_mnt_ns: Option<MntNs>,
}

impl Default for Attestor {
    fn default() -> Self {
        Self::new()
    }
}

impl Attestor {
    /// An attestor with the default [`AttestLimits`].
    pub fn new() -> Self {
        Self::with_limits(AttestLimits::default())
    }

    /// An attestor hashing executables of up to `max` bytes.
    pub fn with_max_hashed_len(max: u64) -> Self {
        Self::with_limits(AttestLimits {
            max_hashed_len: max,
            ..AttestLimits::default()
        })
    }

    /// An attestor with these limits.
    pub fn with_limits(limits: AttestLimits) -> Self {
        Self {
            limits,
            digests: Arc::new(Digests::default()),
            proc_reads: Arc::new(Gate::new(limits.proc_reads_per_uid, limits.proc_reads)),
            exe_reads: Arc::new(Gate::new(limits.exe_reads_per_uid, limits.exe_reads)),
            own_mnt_ns: mnt_ns(rustix::fs::CWD, "/proc/self/ns/mnt").ok(),
        }
    }

    /// Attests the peer of a connected unix socket: its credentials, then the `/proc` reads
    /// of [`Attestor::attest_process`] through the gate.
    pub async fn attest(&self, peer: &tokio::net::UnixStream) -> Result<Attestation, AttestError> {
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
    pub fn attest_process(&self, pid: i32, uid: u32, gid: u32) -> Result<Attestation, AttestError> {
        let raw = Pid::from_raw(pid).ok_or(AttestError::NoPid)?;
        let pidfd = rustix::process::pidfd_open(raw, PidfdFlags::empty())
            .map_err(AttestError::io("pidfd"))?;
        let proc_dir = rustix::fs::open(
            format!("/proc/{pid}"),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(AttestError::io("/proc/<pid>"))?;
        let start_time = read_start_time(&proc_dir)?;
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
    pub async fn resolve(
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
    async fn digest(&self, att: &Arc<Attestation>) -> Result<Option<[u8; 32]>, AttestError> {
        let max = self.limits.max_hashed_len;
        if att.exe.size > max {
            return Ok(None);
        }
        loop {
            match self.digests.join(att.exe, att.exe_owner) {
                Join::Cached(d) => return Ok(Some(d)),
                Join::Wait(w) => {
                    if let Waited::Digest(d) = w.wait().await {
                        return Ok(d);
                    }
                }
                Join::Lead(guard) => {
                    let wait = digest::wait_before_hashing(att.exe.ctime, SystemTime::now());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    let a = Arc::clone(att);
                    let hashed = self
                        .exe_reads
                        .run(att.uid, move || {
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

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
fn read_start_time(proc_dir: &OwnedFd) -> Result<u64, AttestError> {
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
    parse_start_time(&text).ok_or(AttestError::MalformedStat)
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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn start_time_survives_hostile_comm() {
        let rest = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21";
        assert_eq!(
            parse_start_time(&format!("42 (a) b) c) {rest}")),
            Some(987654)
        );
        assert_eq!(parse_start_time(&format!("42 (x) {rest}")), Some(987654));
        assert_eq!(parse_start_time("42 (x) S 1 2"), None);
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn names_from_passwd_format() {
        let db = "# comment\nroot:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/a:/bin/sh\n\
                  bad\n:x:7:7\n";
        assert_eq!(find_name(db, 0).as_deref(), Some("root"));
        assert_eq!(find_name(db, 1000).as_deref(), Some("alice"));
        assert_eq!(find_name(db, 7), None);
        assert_eq!(find_name(db, 5), None);
    }

    fn sha256_of(path: &std::path::Path) -> [u8; 32] {
        let hash = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(path).unwrap());
        hash.as_ref().try_into().unwrap()
    }

    fn path_sel(p: &std::path::Path) -> Selector {
        Selector::new(SelectorKind::UnixPath, p.to_str().unwrap()).unwrap()
    }

    fn me(attestor: &Attestor) -> Arc<Attestation> {
        let pid = i32::try_from(std::process::id()).unwrap();
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        Arc::new(attestor.attest_process(pid, uid, gid).unwrap())
    }

    /// A copy of `sleep` with `extra` bytes appended (the ELF loader ignores them), so that a
    /// test can rewrite them and still run it.
    fn sleeper(dir: &std::path::Path, name: &str, extra: &[u8]) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        let mut bytes = std::fs::read("/bin/sleep").unwrap();
        bytes.extend_from_slice(extra);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    struct Running(std::process::Child);

    impl Running {
        fn start(cmd: &mut std::process::Command) -> Self {
            let child = cmd.spawn().unwrap();
            // Until it has exec'd, /proc/<pid>/exe is the test binary.
            std::thread::sleep(std::time::Duration::from_millis(100));
            Self(child)
        }

        fn pid(&self) -> i32 {
            i32::try_from(self.0.id()).unwrap()
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attests_and_verifies_this_process() {
        let attestor = Attestor::new();
        let a = me(&attestor);
        a.verify().unwrap();
        let uid = Selector::uid(a.uid());
        assert!(a.selectors().contains(&uid));
        let exe = std::env::current_exe().unwrap();
        let path = path_sel(&exe);
        let hash = Selector::sha256(&sha256_of(&exe));
        // Path and hash are established only when some entry needs them.
        assert!(a.pending([std::slice::from_ref(&uid)]).is_none());
        attestor
            .resolve(&a, &[std::slice::from_ref(&uid)])
            .await
            .unwrap();
        assert!(!a.selectors().contains(&path));
        assert_eq!(attestor.digests.cached(), 0, "nothing asked for a hash");

        let by_path = [uid.clone(), path.clone()];
        let by_hash = [uid.clone(), hash.clone()];
        attestor.resolve(&a, &[&by_path, &by_hash]).await.unwrap();
        assert!(a.selectors().contains(&path), "{:?}", a.selectors());
        assert!(a.selectors().contains(&hash), "{:?}", a.selectors());
        assert_eq!(attestor.digests.cached(), 1);
        // A second connection of the same binary gets the hash from the cache.
        let b = me(&attestor);
        attestor.resolve(&b, &[&by_hash]).await.unwrap();
        assert!(b.selectors().contains(&hash));
        assert_eq!(attestor.digests.cached(), 1);

        let small = Attestor::with_max_hashed_len(1);
        let c = me(&small);
        small.resolve(&c, &[&by_hash]).await.unwrap();
        assert!(
            !c.selectors()
                .iter()
                .any(|s| s.kind() == SelectorKind::UnixSha256)
        );
    }

    /// The hash is computed only for an entry whose other selectors already match the caller.
    #[test]
    fn only_entries_that_could_match_call_for_a_hash_or_a_path_check() {
        let attestor = Attestor::new();
        let a = me(&attestor);
        let mine = Selector::uid(a.uid());
        let theirs = Selector::uid(a.uid().wrapping_add(1));
        let h1 = Selector::sha256(&[1; 32]);
        let h2 = Selector::sha256(&[2; 32]);
        let exe = path_sel(&std::env::current_exe().unwrap());
        let elsewhere = path_sel(std::path::Path::new("/nonexistent/bin"));
        let p = |entries: &[&[Selector]]| a.pending(entries.iter().copied());
        assert!(p(&[&[theirs.clone(), h1.clone()]]).is_none());
        assert!(p(&[&[h1.clone(), h2.clone(), mine.clone()]]).is_none());
        assert!(p(&[&[mine.clone(), elsewhere.clone(), h1.clone()]]).is_none());
        assert!(p(&[&[theirs.clone(), exe.clone()]]).is_none());
        assert!(p(&[&[]]).is_none());
        assert_eq!(
            p(&[&[theirs.clone(), h1.clone()], &[mine.clone(), h1.clone()]]),
            Pending {
                path: false,
                sha256: true
            }
        );
        assert_eq!(
            p(&[&[mine.clone(), exe.clone(), h2.clone()]]),
            Pending {
                path: true,
                sha256: true
            }
        );
        // A path that turned out not to be the executable rules out its entries.
        a.path_ok.set(false).unwrap();
        assert!(p(&[&[mine, exe, h2]]).is_none());
    }

    /// The attack: the owner of an executable rewrites six bytes in place (same size) and
    /// restores its mtime. The hash attested is the new content's, not the cached one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rewritten_executable_with_its_mtime_restored_is_hashed_again() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let tool = sleeper(dir.path(), "tool", &[b'A'; 64]);
        let original = sha256_of(&tool);
        let attestor = Attestor::new();
        let attest = |pid: i32| {
            let uid = rustix::process::getuid().as_raw();
            Arc::new(attestor.attest_process(pid, uid, 0).unwrap())
        };
        let wanted = [Selector::sha256(&original)];

        let first = Running::start(std::process::Command::new(&tool).arg("30"));
        let a = attest(first.pid());
        attestor.resolve(&a, &[&wanted]).await.unwrap();
        assert!(a.selectors().contains(&wanted[0]));
        assert_eq!(attestor.digests.cached(), 1);
        drop(first);

        let mtime = std::fs::metadata(&tool).unwrap().modified().unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(&tool).unwrap();
        let len = f.metadata().unwrap().len();
        f.seek(SeekFrom::Start(len - 10)).unwrap();
        f.write_all(b"EVIL!!").unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        assert_eq!(std::fs::metadata(&tool).unwrap().modified().unwrap(), mtime);
        assert_eq!(std::fs::metadata(&tool).unwrap().len(), len);

        let second = Running::start(std::process::Command::new(&tool).arg("30"));
        let b = attest(second.pid());
        attestor.resolve(&b, &[&wanted]).await.unwrap();
        assert!(!b.selectors().contains(&wanted[0]), "{:?}", b.selectors());
        // It was hashed again, as what it is now.
        let now = [Selector::sha256(&sha256_of(&tool))];
        attestor.resolve(&b, &[&now]).await.unwrap();
        assert!(b.selectors().contains(&now[0]));
    }

    /// `unix:path` holds only if the path, in the agent's namespace, is the running file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_path_is_granted_only_while_it_names_the_running_file() {
        let dir = tempfile::tempdir().unwrap();
        let tool = sleeper(dir.path(), "tool", b"");
        let attestor = Attestor::new();
        let uid = rustix::process::getuid().as_raw();
        let wanted = [path_sel(&tool)];

        let run = Running::start(std::process::Command::new(&tool).arg("30"));
        let a = Arc::new(attestor.attest_process(run.pid(), uid, 0).unwrap());
        attestor.resolve(&a, &[&wanted]).await.unwrap();
        assert!(a.selectors().contains(&wanted[0]));

        // Another file renamed over the path: the running process is no longer "the file at
        // that path".
        let other = sleeper(dir.path(), "other", b"x");
        let b = Arc::new(attestor.attest_process(run.pid(), uid, 0).unwrap());
        std::fs::rename(&other, &tool).unwrap();
        attestor.resolve(&b, &[&wanted]).await.unwrap();
        assert!(!b.selectors().contains(&wanted[0]), "{:?}", b.selectors());
    }

    /// A process in another mount namespace never gets a path selector, even for a path that
    /// is the same file in the agent's namespace.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_in_another_mount_namespace_gets_no_path() {
        let dir = tempfile::tempdir().unwrap();
        let tool = sleeper(dir.path(), "tool", b"");
        let mut cmd = std::process::Command::new("unshare");
        if rustix::process::getuid().as_raw() != 0 {
            cmd.arg("--map-root-user");
        }
        cmd.args(["--mount", "--"]).arg(&tool).arg("30");
        let probe = std::process::Command::new("unshare")
            .args(if rustix::process::getuid().as_raw() == 0 {
                &["--mount", "true"][..]
            } else {
                &["--map-root-user", "--mount", "true"][..]
            })
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            eprintln!("SKIPPED a_process_in_another_mount_namespace_gets_no_path: no unshare");
            return;
        }
        let run = Running::start(&mut cmd);
        let attestor = Attestor::new();
        let uid = rustix::process::getuid().as_raw();
        let a = Arc::new(attestor.attest_process(run.pid(), uid, 0).unwrap());
        assert!(a.exe_path.is_none());
        let wanted = [path_sel(&tool)];
        assert!(a.pending([&wanted[..]]).is_none());
        // The namespace is checked again at the moment of the path check.
        let own = attestor.own_mnt_ns;
        let same_file_elsewhere = Attestation {
            exe_path: Some(wanted[0].clone()),
            path_ok: OnceLock::new(),
            digest: OnceLock::new(),
            base: Vec::new(),
            pidfd: a.pidfd.try_clone().unwrap(),
            proc_dir: a.proc_dir.try_clone().unwrap(),
            ..*a
        };
        assert!(!same_file_elsewhere.path_is_exe(own).unwrap());
        // Control: the same binary in the agent's namespace.
        let here = Running::start(std::process::Command::new(&tool).arg("30"));
        let b = Arc::new(attestor.attest_process(here.pid(), uid, 0).unwrap());
        attestor.resolve(&b, &[&wanted]).await.unwrap();
        assert!(b.selectors().contains(&wanted[0]));
    }

    #[test]
    fn a_dead_process_fails_verification() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let a = Attestor::new().attest_process(pid, 0, 0).unwrap();
        a.verify().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(a.verify(), Err(AttestError::ProcessGone)));
        assert!(matches!(
            Attestor::new().attest_process(pid, 0, 0),
            Err(AttestError::ProcessGone)
        ));
    }
}
