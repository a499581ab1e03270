//! The `task.json` record of a running process, and what `/proc` says about a pid: enough to
//! re-adopt a task after an agent restart without mistaking a reused pid for it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{AllocId, TaskError, TaskSpec};

pub(super) const RECORD: &str = "task.json";
/// A record is a few hundred bytes; anything much larger is not ours.
const MAX_RECORD: u64 = 4096;

/// The running process of a task, as recorded in `<state_dir>/<alloc_id>/task.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) pid: u32,
    /// `/proc/<pid>/stat` field 22, in clock ticks since boot.
    pub(super) start_time: u64,
    /// [`spec_hash`] of the spec it runs.
    pub(super) spec_hash: String,
    pub(super) restarts: u32,
}

impl Record {
    /// Reads the record in `dir`, if there is a readable one.
    pub(super) fn load(dir: &Path) -> Option<Self> {
        let file = fs::File::open(dir.join(RECORD)).ok()?;
        let mut text = String::new();
        io::Read::read_to_string(&mut io::Read::take(file, MAX_RECORD), &mut text).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the record to `dir` atomically (a 0600 temporary file renamed over it).
    pub(super) fn store(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join("task.json.tmp");
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let json = serde_json::to_vec(self).map_err(io::Error::other)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        fs::rename(&tmp, dir.join(RECORD))
    }

    /// Removes the record in `dir`, if any.
    pub(super) fn remove(dir: &Path) -> io::Result<()> {
        match fs::remove_file(dir.join(RECORD)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether the recorded process still runs: the pid is alive (not a zombie) and started
    /// at the recorded time, so it is not another process that reused the pid.
    pub(super) fn is_alive(&self) -> bool {
        ProcStat::read(self.pid).is_some_and(|s| s.start_time == self.start_time && s.is_live())
    }
}

/// The fields of `/proc/<pid>/stat` the supervisor needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcStat {
    pub(super) state: char,
    pub(super) pgrp: i64,
    pub(super) start_time: u64,
}

impl ProcStat {
    pub(super) fn read(pid: u32) -> Option<Self> {
        Self::parse(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Parses a `stat` line. The command name (field 2) is in parentheses and may hold spaces
    /// and parentheses itself, so fields are counted from the last `)`.
    pub(super) fn parse(line: &str) -> Option<Self> {
        let rest = &line[line.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3 (state); field n is fields[n - 3].
        Some(Self {
            state: fields.first()?.chars().next()?,
            pgrp: fields.get(2)?.parse().ok()?,
            start_time: fields.get(19)?.parse().ok()?,
        })
    }

    /// Running or sleeping, not a zombie or dead.
    pub(super) fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// The pids in process group `pgrp`, from a scan of `/proc`.
pub(super) fn group_members(pgrp: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            ProcStat::read(pid).is_some_and(|s| s.pgrp == i64::from(pgrp) && s.is_live())
        })
        .collect()
}

/// A hash of what the process of `spec` is: command, arguments, environment, directory,
/// credentials and limits (not the restart policy, which changes nothing in a running
/// process). Hex SHA-256 over a length-prefixed encoding.
pub(super) fn spec_hash(spec: &TaskSpec, spiffe_socket: Option<&str>) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut put = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(bytes);
    };
    put(b"ringzero task v1");
    put(spec.alloc_id.as_str().as_bytes());
    put(spec.command.as_os_str().as_bytes());
    put(&(spec.args.len() as u64).to_le_bytes());
    for arg in &spec.args {
        put(arg.as_bytes());
    }
    put(&(spec.env.len() as u64).to_le_bytes());
    for (k, v) in &spec.env {
        put(k.as_bytes());
        put(v.as_bytes());
    }
    put(spec
        .workdir
        .as_deref()
        .map_or(&b""[..], |w| w.as_os_str().as_bytes()));
    put(&spec.uid.to_le_bytes());
    put(&spec.gid.to_le_bytes());
    put(&spec.cpu_millis.map_or(-1, i64::from).to_le_bytes());
    put(&spec.memory_mb.map_or(-1, i64::from).to_le_bytes());
    put(spiffe_socket.unwrap_or("").as_bytes());
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates `dir` as 0700 if missing and makes sure it is 0700.
pub(super) fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// The allocations with a record under `state_dir`.
pub(super) fn recorded_allocs(state_dir: &Path) -> Vec<AllocId> {
    let Ok(entries) = fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let mut allocs: Vec<AllocId> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let alloc = AllocId::new(e.file_name().to_str()?).ok()?;
            e.path().join(RECORD).is_file().then_some(alloc)
        })
        .collect();
    allocs.sort();
    allocs
}

/// Opens and locks `<state_dir>/supervisor.lock` (the lock goes with the file; the file is
/// close-on-exec, so tasks do not inherit it).
pub(super) fn lock(state_dir: &Path) -> Result<fs::File, TaskError> {
    let path = state_dir.join("supervisor.lock");
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(TaskError::io(format!("{}", path.display())))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(TaskError::StateDirInUse(state_dir.into())),
        Err(e) => Err(TaskError::Io {
            context: format!("lock {}", path.display()),
            source: e.into(),
        }),
    }
}
