//! cgroup v2 limits: `<root>/ringzero/<alloc_id>` with `memory.max` and `cpu.max`, and
//! `cgroup.kill` to end every process of a task at once.
//!
//! Detected once per supervisor: the root must be a cgroup2 mount where the agent can create
//! `ringzero/` and enable the `cpu` and `memory` controllers for it. A container whose
//! `/sys/fs/cgroup` is its own non-delegated cgroup, or a host on cgroup v1, fails that, and
//! tasks run without limits ([`super::Limits::Unavailable`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{AllocId, TaskSpec, adopt};

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
const DEFAULT_ROOT: &str = "/sys/fs/cgroup";
/// `cpu.max` period: 100 ms, so a quota of 100 µs per thousandth of a core.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug)]
pub(super) enum Cgroups {
    /// `<root>/ringzero`, with the controllers enabled for its children.
    Available(PathBuf),
    Unavailable(String),
}

impl Cgroups {
    pub(super) fn detect(root: Option<&Path>) -> Self {
        let root = root.unwrap_or(Path::new(DEFAULT_ROOT));
        match Self::prepare(root) {
            Ok(base) => Self::Available(base),
            Err(reason) => Self::Unavailable(reason),
        }
    }

    fn prepare(root: &Path) -> Result<PathBuf, String> {
        let shown = root.display();
        let fs_type = rustix::fs::statfs(root)
            .map_err(|e| format!("{shown}: {e}"))?
            .f_type;
        if u64::try_from(fs_type).ok() != Some(CGROUP2_SUPER_MAGIC) {
            return Err(format!("{shown} is not a cgroup v2 mount"));
        }
        let base = root.join("ringzero");
        match fs::create_dir(&base) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(format!("cannot create {}: {e}", base.display()));
            }
            _ => {}
        }
        for dir in [root, base.as_path()] {
            enable_controllers(dir).map_err(|e| {
                format!(
                    "cannot enable the cpu and memory controllers in {}: {e}",
                    dir.display()
                )
            })?;
        }
        Ok(base)
    }

    /// Creates the task's cgroup with its limits, or says why not.
    pub(super) fn create(&self, spec: &TaskSpec) -> Result<TaskCgroup, String> {
        match self {
            Self::Unavailable(reason) => Err(reason.clone()),
            Self::Available(base) => TaskCgroup::create(base, spec)
                .map_err(|e| format!("cgroup for {}: {e}", spec.alloc_id)),
        }
    }

    /// The task's cgroup if it exists (left by an earlier supervisor).
    pub(super) fn existing(&self, alloc: &AllocId) -> Option<TaskCgroup> {
        match self {
            Self::Available(base) => {
                let dir = base.join(alloc.as_str());
                dir.is_dir().then_some(TaskCgroup { dir })
            }
            Self::Unavailable(_) => None,
        }
    }
}

/// Enables `+cpu +memory` in `dir/cgroup.subtree_control` unless they are already.
fn enable_controllers(dir: &Path) -> io::Result<()> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control)?;
    let has = |c: &str| enabled.split_whitespace().any(|e| e == c);
    if has("cpu") && has("memory") {
        return Ok(());
    }
    fs::write(&control, "+cpu +memory")
}

/// One task's cgroup.
#[derive(Debug)]
pub(super) struct TaskCgroup {
    dir: PathBuf,
}

impl TaskCgroup {
    fn create(base: &Path, spec: &TaskSpec) -> io::Result<Self> {
        let dir = base.join(spec.alloc_id.as_str());
        match fs::create_dir(&dir) {
            // Left by an earlier run of this alloc: whatever still runs in it is a stray.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let _ = fs::write(dir.join("cgroup.kill"), "1");
            }
            other => other?,
        }
        let memory = match spec.memory_mb {
            Some(mb) => (u64::from(mb) << 20).to_string(),
            None => "max".into(),
        };
        fs::write(dir.join("memory.max"), memory)?;
        let cpu = match spec.cpu_millis {
            Some(millis) => format!("{} {CPU_PERIOD_US}", (u64::from(millis) * 100).max(1000)),
            None => format!("max {CPU_PERIOD_US}"),
        };
        fs::write(dir.join("cpu.max"), cpu)?;
        Ok(Self { dir })
    }

    /// Its `cgroup.procs`, where a pid is written to move it in.
    pub(super) fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Moves `pid` in, then every other member of its process group (a child it forked
    /// before the move).
    pub(super) fn add(&self, pid: u32) -> io::Result<()> {
        move_group_into(&self.procs(), pid)
    }

    /// SIGKILL to every process in it.
    pub(super) fn kill(&self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
    }

    /// Kills what is left in it and removes it (retrying while the killed processes go).
    pub(super) async fn remove(self) {
        self.kill();
        let mut last = None;
        for _ in 0..50 {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(error) = last {
            tracing::warn!(cgroup = %self.dir.display(), %error, "cannot remove a task's cgroup");
        }
    }
}

/// Writes `pid` to the cgroup whose `cgroup.procs` is `procs`, then every other member of its
/// process group (a child it forked before the move). Used for tasks and for the commands
/// `job exec` runs in a task's context.
pub(crate) fn move_group_into(procs: &Path, pid: u32) -> io::Result<()> {
    fs::write(procs, pid.to_string())?;
    for member in adopt::group_members(pid) {
        if member != pid {
            // It may have exited meanwhile.
            let _ = fs::write(procs, member.to_string());
        }
    }
    Ok(())
}
