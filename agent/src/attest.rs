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
//!   identity** (device, inode, size, mtime of `/proc/<pid>/exe`).
//!
//! It derives selectors from them: `unix:uid`, `unix:gid`, `unix:user` and `unix:group` (named
//! by `/etc/passwd` and `/etc/group`; users known only to NSS modules such as LDAP get no name
//! selector), `unix:path` (the target of `/proc/<pid>/exe`, when it still exists and is
//! UTF-8) and `unix:sha256` (of the executable's content, read through `/proc/<pid>/exe` so that
//! it is the file actually running, at most [`MAX_HASHED_EXE_LEN`] bytes, cached by device,
//! inode, size and mtime so that each binary is hashed once).
//!
//! Before answering each request the Workload API calls [`Attestation::verify`]: the pidfd must
//! show the process alive, and the start time and executable read through the pinned
//! `/proc/<pid>` directory must be unchanged. A process that connected and then died (its pid
//! possibly reused), or that exec'd another binary on the connected socket (fork-then-exec or
//! plain exec), is refused, so it never gets the identity of the binary it runs *now*; a
//! forked child that keeps the socket and the same binary is the same workload by construction.
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
//! - **Hash and content.** A binary rewritten in place keeps its inode; the size and mtime in
//!   the cache key catch ordinary rewrites, and `verify` refuses a process whose executable's
//!   size or mtime changed since accept.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use ringzero_policy::selector::{Selector, SelectorKind};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::process::{Pid, PidfdFlags};

/// The largest executable whose SHA-256 is computed; a larger one gets no `unix:sha256`
/// selector.
pub const MAX_HASHED_EXE_LEN: u64 = 512 * 1024 * 1024;
/// How many executables' hashes are remembered.
const HASH_CACHE_ENTRIES: usize = 512;
/// The largest `/etc/passwd` or `/etc/group` read.
const MAX_DB_LEN: u64 = 8 * 1024 * 1024;
/// The largest `/proc/<pid>/stat` read (its `comm` is at most 16 bytes; the rest is numbers).
const MAX_STAT_LEN: u64 = 4096;

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
    /// The process now runs another executable than when it was attested.
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

/// The identity of a file's content as far as `stat` can tell: device, inode, size, mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileId {
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)] // field types differ by arch
    fn of(st: &rustix::fs::Stat) -> Self {
        Self {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: u64::try_from(st.st_size).unwrap_or(u64::MAX),
            mtime: st.st_mtime as i64,
            mtime_nsec: st.st_mtime_nsec as i64,
        }
    }
}

/// What was learned about a peer process at accept, and the handles that pin it.
pub struct Attestation {
    pid: i32,
    uid: u32,
    gid: u32,
    start_time: u64,
    exe: FileId,
    selectors: Vec<Selector>,
    pidfd: OwnedFd,
    proc_dir: OwnedFd,
}

impl fmt::Debug for Attestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attestation")
            .field("pid", &self.pid)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("selectors", &self.selectors)
            .finish_non_exhaustive()
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

    /// The selectors the peer was attested with.
    pub fn selectors(&self) -> &[Selector] {
        &self.selectors
    }

    /// Checks that the peer is still the process that was attested, running the same
    /// executable; see the [module docs](self). Blocking, but only a few small reads of `/proc`.
    pub fn verify(&self) -> Result<(), AttestError> {
        let start_time = read_start_time(&self.proc_dir)?;
        let exe = rustix::fs::statat(&self.proc_dir, "exe", AtFlags::empty())
            .map_err(AttestError::io("/proc/<pid>/exe"))?;
        // Alive *after* the reads: the pid still named this process while they ran.
        if !is_alive(&self.pidfd)? || start_time != self.start_time {
            return Err(AttestError::ProcessGone);
        }
        if FileId::of(&exe) != self.exe {
            return Err(AttestError::ExecutableChanged);
        }
        Ok(())
    }
}

/// Attests peers; cheap to clone (the executable hash cache is shared).
#[derive(Debug, Clone)]
pub struct Attestor {
    hashes: Arc<Mutex<HashMap<FileId, [u8; 32]>>>,
    max_hashed_len: u64,
}

impl Default for Attestor {
    fn default() -> Self {
        Self::new()
    }
}

impl Attestor {
    /// An attestor hashing executables of up to [`MAX_HASHED_EXE_LEN`] bytes.
    pub fn new() -> Self {
        Self::with_max_hashed_len(MAX_HASHED_EXE_LEN)
    }

    /// An attestor hashing executables of up to `max` bytes.
    pub fn with_max_hashed_len(max: u64) -> Self {
        Self {
            hashes: Arc::new(Mutex::new(HashMap::new())),
            max_hashed_len: max,
        }
    }

    /// Attests the peer of a connected unix socket. Blocking (it reads `/proc` and may hash an
    /// executable the first time it is seen): run it on a blocking thread.
    pub fn attest(&self, peer: &tokio::net::UnixStream) -> Result<Attestation, AttestError> {
        let cred = peer.peer_cred().map_err(|source| AttestError::Io {
            what: "peer credentials",
            source,
        })?;
        let pid = cred.pid().ok_or(AttestError::NoPid)?;
        self.attest_process(pid, cred.uid(), cred.gid())
    }

    /// Attests process `pid`, whose credentials the kernel reported as `uid` and `gid`.
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
        let exe_stat = rustix::fs::statat(&proc_dir, "exe", AtFlags::empty())
            .map_err(AttestError::io("/proc/<pid>/exe"))?;
        let exe = FileId::of(&exe_stat);
        let exe_path = rustix::fs::readlinkat(&proc_dir, "exe", Vec::new())
            .map_err(AttestError::io("/proc/<pid>/exe"))?;

        let mut selectors = vec![Selector::uid(uid), Selector::gid(gid)];
        if let Some(name) = lookup_name("/etc/passwd", uid) {
            selectors.extend(Selector::new(SelectorKind::UnixUser, &name).ok());
        }
        if let Some(name) = lookup_name("/etc/group", gid) {
            selectors.extend(Selector::new(SelectorKind::UnixGroup, &name).ok());
        }
        // A deleted executable reads as "/path (deleted)": no path selector then.
        if let Ok(path) = exe_path.into_string()
            && !path.ends_with(" (deleted)")
            && let Ok(sel) = Selector::new(SelectorKind::UnixPath, &path)
        {
            selectors.push(sel);
        }
        if let Some(digest) = self.exe_digest(&proc_dir, exe)? {
            selectors.push(Selector::sha256(&digest));
        }

        let attestation = Attestation {
            pid,
            uid,
            gid,
            start_time,
            exe,
            selectors,
            pidfd,
            proc_dir,
        };
        // Everything above described the process that is still there, on the same binary.
        attestation.verify()?;
        Ok(attestation)
    }

    /// The SHA-256 of the executable the process runs, from the cache or by reading it through
    /// `/proc/<pid>/exe`; `None` when it is too large or changed while being read.
    fn exe_digest(&self, proc_dir: &OwnedFd, exe: FileId) -> Result<Option<[u8; 32]>, AttestError> {
        if let Some(d) = self.cached(exe) {
            return Ok(Some(d));
        }
        if exe.size > self.max_hashed_len {
            return Ok(None);
        }
        let fd = rustix::fs::openat(
            proc_dir,
            "exe",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(AttestError::io("/proc/<pid>/exe"))?;
        let opened =
            FileId::of(&rustix::fs::fstat(&fd).map_err(AttestError::io("/proc/<pid>/exe"))?);
        if opened != exe {
            return Err(AttestError::ExecutableChanged);
        }
        let mut file = File::from(fd).take(self.max_hashed_len.saturating_add(1));
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
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
        let after = FileId::of(
            &rustix::fs::fstat(file.get_ref()).map_err(AttestError::io("/proc/<pid>/exe"))?,
        );
        if total != exe.size || after != exe {
            // Modified while we read it: no hash rather than a wrong one.
            return Ok(None);
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(ctx.finish().as_ref());
        if let Ok(mut cache) = self.hashes.lock() {
            if cache.len() >= HASH_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(exe, digest);
        }
        Ok(Some(digest))
    }

    fn cached(&self, exe: FileId) -> Option<[u8; 32]> {
        self.hashes.lock().ok()?.get(&exe).copied()
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

    #[test]
    fn attests_and_verifies_this_process() {
        let me = std::process::id();
        let attestor = Attestor::new();
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let a = attestor
            .attest_process(i32::try_from(me).unwrap(), uid, gid)
            .unwrap();
        a.verify().unwrap();
        let exe = std::env::current_exe().unwrap();
        let path = Selector::new(SelectorKind::UnixPath, exe.to_str().unwrap()).unwrap();
        assert!(a.selectors().contains(&path), "{:?}", a.selectors());
        assert!(a.selectors().contains(&Selector::uid(uid)));
        let hash = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(&exe).unwrap());
        let hash: [u8; 32] = hash.as_ref().try_into().unwrap();
        assert!(a.selectors().contains(&Selector::sha256(&hash)));
        // The second time comes from the cache.
        assert_eq!(attestor.hashes.lock().unwrap().len(), 1);
        let small = Attestor::with_max_hashed_len(1);
        let b = small
            .attest_process(i32::try_from(me).unwrap(), uid, gid)
            .unwrap();
        assert!(
            !b.selectors()
                .iter()
                .any(|s| s.kind() == SelectorKind::UnixSha256)
        );
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
