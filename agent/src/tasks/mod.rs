//! The task supervisor: runs scheduler-placed tasks as processes of their own, each in its own
//! process group, as its own uid/gid, with its output in size-bounded log files, optionally in a
//! cgroup v2 with cpu and memory limits, restarted per policy, and re-adopted by a new agent
//! process after an agent restart.
//!
//! It does not talk to the authority: the caller (the sync loop, later) turns allocations into
//! [`TaskSpec`]s, calls [`Supervisor::start`] / [`Supervisor::stop`], and reads
//! [`Supervisor::statuses`].
//!
//! # State directory
//!
//! `<state_dir>/<alloc_id>/` (0700, owned by the agent) holds:
//!
//! - `stdout.log`, `stderr.log` (0600, owned by the agent): opened by the agent and handed to
//!   the task as its stdout and stderr, so a task keeps logging while the agent restarts (a pipe
//!   would have died with the agent and sent the task SIGPIPE). The agent bounds them by
//!   copy-truncate (`logs.rs`): when a file passes `log_max_bytes` its last `log_max_bytes`
//!   bytes are copied to `stdout.log.1` (older copies shift up to `.<log_keep>`) and the file is
//!   truncated. The trade-offs: the live file can pass the bound by what the task writes in one
//!   check interval (1 s), and lines written between the copy and the truncation are lost.
//! - `task.json` (0600, written atomically): the running process (pid, start time from
//!   `/proc/<pid>/stat` field 22, spec hash, restarts), so that a new supervisor over the same
//!   directory adopts the process instead of starting a second copy (`adopt.rs`).
//!
//! # Adoption
//!
//! [`Supervisor::start`] of an alloc whose `task.json` names a live process with the recorded
//! start time (so not a reused pid) and the same spec hash adopts it: it is watched by polling
//! `/proc` (it is not our child, so it cannot be reaped or its exit code read; its exit counts
//! as a failure for the restart policy). A recorded live process with a different spec is
//! terminated before the new spec starts. Never two copies of an alloc, with two caveats: one
//! supervisor per state directory is enforced by an `flock` on `<state_dir>/supervisor.lock`,
//! and a process is recorded right after it is spawned, so an agent killed in that instant
//! leaves it unrecorded; with cgroups the next start of the alloc kills it (the leftover cgroup
//! is emptied through `cgroup.kill`), without them it runs on beside the new copy.
//!
//! Dropping the [`Supervisor`] leaves its processes running and unwatched; [`Supervisor::stop`]
//! on a new supervisor stops a recorded process even without its spec (an allocation removed
//! while the agent was down), and [`Supervisor::recorded`] lists them.
//!
//! # Limits
//!
//! With a writable cgroup v2 hierarchy, each task runs in `<cgroup_root>/ringzero/<alloc_id>`
//! with `memory.max` and `cpu.max`, and is killed as a whole through `cgroup.kill` when it
//! stops (`cgroup.rs`). The process is moved in right after spawn, so a child it forks in that
//! instant starts outside; the supervisor then also moves every member of the task's process
//! group, which leaves only a child that both forks and leaves the process group within that
//! instant. Without cgroup v2, tasks run without limits and their status says so
//! ([`Limits::Unavailable`]).
//!
//! Files: `mod.rs` (types, the [`Supervisor`]), `run.rs` (one task's lifecycle: spawn, wait,
//! stop, restart), `spawn.rs` (the command: credentials, environment, files), `logs.rs`,
//! `cgroup.rs`, `adopt.rs` (the `task.json` record and `/proc`), `tests.rs`.

mod adopt;
mod cgroup;
mod logs;

#[cfg(test)]
pub(crate) use self::logs::rotate;
pub(crate) use self::logs::rotated_start;
mod run;
mod spawn;

pub(crate) use self::cgroup::move_group_into;
#[cfg(test)]
mod tests;

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::AbortHandle;

/// At most this many tasks (running or finished and not forgotten) per supervisor.
pub const MAX_TASKS: usize = 1000;

/// The longest restart backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// An allocation id: 1 to 64 of `[A-Za-z0-9_-]`. It names a directory and a cgroup, so nothing
/// else is accepted.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllocId(String);

impl AllocId {
    /// The longest id.
    pub const MAX_LEN: usize = 64;

    /// Checks `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, TaskError> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= Self::MAX_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(id))
        } else {
            let shown: String = id.chars().take(Self::MAX_LEN).collect();
            Err(TaskError::InvalidAllocId(format!(
                "{shown:?} ({} bytes): want 1 to {} of [A-Za-z0-9_-]",
                id.len(),
                Self::MAX_LEN
            )))
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for AllocId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AllocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AllocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// What to run for one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    pub alloc_id: AllocId,
    /// An absolute path: the environment is cleared, so there is no `PATH` search.
    pub command: PathBuf,
    pub args: Vec<String>,
    /// The whole environment of the task, besides `SPIFFE_ENDPOINT_SOCKET` (see
    /// [`SupervisorConfig::spiffe_endpoint_socket`]), which overrides a value given here.
    pub env: BTreeMap<String, String>,
    /// The working directory; `/` if not given (the task's state directory is the agent's).
    pub workdir: Option<PathBuf>,
    pub uid: u32,
    pub gid: u32,
    /// CPU in thousandths of a core (`cpu.max` quota per 100 ms period).
    pub cpu_millis: Option<u32>,
    /// Memory in MiB (`memory.max`).
    pub memory_mb: Option<u32>,
    pub restart: RestartPolicy,
}

/// When a task that ended is started again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    /// Restarts before the task is [`TaskState::Failed`].
    pub max_restarts: u32,
    /// The first delay, doubled per restart up to 60 s, ±10 % jitter.
    pub backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            mode: RestartMode::OnFailure,
            max_restarts: 5,
            backoff: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartMode {
    /// Run once: the task ends [`TaskState::Exited`] however it ends.
    Never,
    /// Restart after a non-zero exit or a signal (or the unknown end of an adopted process).
    OnFailure,
    /// Restart whenever it ends.
    Always,
}

/// See [`Supervisor::exec_context`].
#[derive(Debug, Clone)]
pub(crate) struct ExecContext {
    pub cgroup_procs: Option<PathBuf>,
    pub spiffe_endpoint_socket: Option<String>,
}

/// The supervisor's settings.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Where each task's directory (logs, `task.json`) lives; created 0700 if missing.
    pub state_dir: PathBuf,
    /// Bound of each of `stdout.log` and `stderr.log` (default 8 MiB).
    pub log_max_bytes: u64,
    /// Rotated copies kept per stream (default 2).
    pub log_keep: u32,
    /// Between SIGTERM and SIGKILL on stop (default 10 s).
    pub stop_grace: Duration,
    /// The cgroup v2 mount to create `ringzero/<alloc_id>` under; `/sys/fs/cgroup` if not given.
    pub cgroup_root: Option<PathBuf>,
    /// The value of `SPIFFE_ENDPOINT_SOCKET` in every task's environment, such as
    /// `unix:///run/ringzero/agent.sock`.
    pub spiffe_endpoint_socket: Option<String>,
}

impl SupervisorConfig {
    /// The defaults over `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            log_max_bytes: 8 << 20,
            log_keep: 2,
            stop_grace: Duration::from_secs(10),
            cgroup_root: None,
            spiffe_endpoint_socket: None,
        }
    }
}

/// One task as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    pub state: TaskState,
    /// Restarts so far (kept across adoption).
    pub restarts: u32,
    /// When the current or last process started (adoption time for an adopted one).
    pub started_at: Option<SystemTime>,
    /// When the last process ended.
    pub finished_at: Option<SystemTime>,
    /// How the last process ended, if one did.
    pub last_exit: Option<Exit>,
    pub limits: Limits,
    /// The process was started by an earlier supervisor and adopted: its exit code cannot be
    /// read.
    pub adopted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Starting, or waiting out the backoff before a restart.
    Pending,
    Running {
        pid: u32,
    },
    /// Ended and not restarted, per policy.
    Exited {
        code: Option<i32>,
    },
    /// Could not be started, or ended after `max_restarts` restarts.
    Failed {
        reason: String,
        code: Option<i32>,
    },
    /// Stopped by [`Supervisor::stop`].
    Stopped,
}

impl TaskState {
    /// Whether no process runs or will run for it.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Exited { .. } | Self::Failed { .. } | Self::Stopped
        )
    }
}

/// How a process ended: its exit code, or the signal that killed it; neither for an adopted
/// process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl Exit {
    fn success(self) -> bool {
        self.code == Some(0)
    }
}

/// Whether the task's cpu and memory limits are enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limits {
    /// It runs in its own cgroup with the limits written.
    Enforced,
    /// It runs without limits, for this reason.
    Unavailable(String),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    #[error("invalid alloc id {0}")]
    InvalidAllocId(String),
    #[error("invalid task spec: {0}")]
    InvalidSpec(String),
    #[error("at most {max} tasks per supervisor")]
    TooManyTasks { max: usize },
    #[error("task {0} is still running")]
    StillRunning(AllocId),
    #[error("another supervisor uses {0}")]
    StateDirInUse(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl TaskError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// What every task's lifecycle shares.
#[derive(Debug)]
struct Shared {
    config: SupervisorConfig,
    cgroups: cgroup::Cgroups,
    statuses: watch::Sender<BTreeMap<AllocId, TaskStatus>>,
    /// Whether "limits unavailable" was logged.
    warned: AtomicBool,
}

impl Shared {
    fn update(&self, alloc: &AllocId, f: impl FnOnce(&mut TaskStatus)) {
        self.statuses.send_modify(|all| {
            if let Some(status) = all.get_mut(alloc) {
                f(status);
            }
        });
    }
}

/// One task's lifecycle, running as a tokio task.
#[derive(Debug)]
struct Handle {
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    abort: AbortHandle,
}

impl Handle {
    fn is_done(&self) -> bool {
        *self.done.borrow() || self.abort.is_finished()
    }
}

/// Runs tasks; see the module docs. Dropping it leaves the processes running (a new
/// supervisor over the same state directory adopts them) and stops watching them.
#[derive(Debug)]
pub struct Supervisor {
    shared: Arc<Shared>,
    tasks: Mutex<HashMap<AllocId, Handle>>,
    /// `<state_dir>/supervisor.lock`, locked (flock) while this supervisor lives: one
    /// supervisor per state directory, or two could each start an alloc once.
    _lock: std::fs::File,
}

impl Supervisor {
    /// Creates the state directory, locks it and detects cgroup v2 support.
    pub fn new(config: SupervisorConfig) -> Result<Self, TaskError> {
        adopt::private_dir(&config.state_dir).map_err(TaskError::io(format!(
            "state directory {}",
            config.state_dir.display()
        )))?;
        let lock = adopt::lock(&config.state_dir)?;
        let cgroups = cgroup::Cgroups::detect(config.cgroup_root.as_deref());
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                cgroups,
                statuses: watch::Sender::new(BTreeMap::new()),
                warned: AtomicBool::new(false),
            }),
            tasks: Mutex::new(HashMap::new()),
            _lock: lock,
        })
    }

    /// Starts the task (or adopts its recorded process); nothing if it is already running.
    /// A task that ended is started again, with its restart count reset.
    pub async fn start(&self, spec: TaskSpec) -> Result<(), TaskError> {
        spawn::validate(&spec)?;
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        if tasks.get(&spec.alloc_id).is_some_and(|h| !h.is_done()) {
            return Ok(());
        }
        if !tasks.contains_key(&spec.alloc_id) && tasks.len() >= MAX_TASKS {
            return Err(TaskError::TooManyTasks { max: MAX_TASKS });
        }
        let alloc = spec.alloc_id.clone();
        self.shared.statuses.send_modify(|all| {
            all.insert(
                alloc.clone(),
                TaskStatus {
                    state: TaskState::Pending,
                    restarts: 0,
                    started_at: None,
                    finished_at: None,
                    last_exit: None,
                    limits: Limits::Unavailable("not started yet".into()),
                    adopted: false,
                },
            );
        });
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let join = tokio::spawn(run::run(self.shared.clone(), spec, stop_rx, done_tx));
        tasks.insert(
            alloc,
            Handle {
                stop,
                done,
                abort: join.abort_handle(),
            },
        );
        Ok(())
    }

    /// Stops the task: SIGTERM to its process group, SIGKILL after the grace period. Returns
    /// when it has ended. A task this supervisor does not run but whose process is recorded
    /// in the state directory (an allocation removed while the agent was down) is stopped too.
    pub async fn stop(&self, alloc_id: &AllocId) -> Result<(), TaskError> {
        let done = {
            let tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
            tasks.get(alloc_id).map(|h| {
                h.stop.send_replace(true);
                h.done.clone()
            })
        };
        match done {
            Some(mut done) => {
                // An error means the lifecycle ended (its sender is gone): done as well.
                let _ = done.wait_for(|d| *d).await;
                Ok(())
            }
            None => run::stop_recorded(&self.shared, alloc_id).await,
        }
    }

    /// Forgets a task that has ended: its status leaves [`Supervisor::statuses`] and its slot
    /// is free. Its log files stay.
    pub fn forget(&self, alloc_id: &AllocId) -> Result<(), TaskError> {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        if tasks.get(alloc_id).is_some_and(|h| !h.is_done()) {
            return Err(TaskError::StillRunning(alloc_id.clone()));
        }
        tasks.remove(alloc_id);
        self.shared.statuses.send_modify(|all| {
            all.remove(alloc_id);
        });
        Ok(())
    }

    /// The allocations with a `task.json` record in the state directory: after an agent
    /// restart, those to either start (adopt) or stop.
    pub fn recorded(&self) -> Vec<AllocId> {
        adopt::recorded_allocs(&self.shared.config.state_dir)
    }

    /// Every task's status, updated as they change.
    pub fn statuses(&self) -> watch::Receiver<BTreeMap<AllocId, TaskStatus>> {
        self.shared.statuses.subscribe()
    }

    /// What a command run in a running task's context needs beyond its spec: the task's
    /// `cgroup.procs` when it has a cgroup, and the Workload API address tasks are given.
    /// `None` when the task is not running.
    pub(crate) fn exec_context(&self, alloc_id: &AllocId) -> Option<ExecContext> {
        let running = matches!(
            self.shared
                .statuses
                .borrow()
                .get(alloc_id)
                .map(|s| &s.state),
            Some(TaskState::Running { .. })
        );
        running.then(|| ExecContext {
            cgroup_procs: self.shared.cgroups.existing(alloc_id).map(|c| c.procs()),
            spiffe_endpoint_socket: self.shared.config.spiffe_endpoint_socket.clone(),
        })
    }

    /// Where the task's stdout and stderr logs are.
    pub fn log_paths(&self, alloc_id: &AllocId) -> (PathBuf, PathBuf) {
        let dir = self.shared.config.state_dir.join(alloc_id.as_str());
        (dir.join(logs::STDOUT), dir.join(logs::STDERR))
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner);
        for handle in tasks.values() {
            handle.abort.abort();
        }
    }
}

/// The delay before restart number `restart` (1-based): `base × 2^(restart-1)`, at most 60 s,
/// ±10 % jitter.
fn backoff(base: Duration, restart: u32) -> Duration {
    let doublings = restart.saturating_sub(1).min(16);
    let delay = base.saturating_mul(1 << doublings).min(MAX_BACKOFF);
    delay.mul_f64(1.0 + crate::rotation::random_jitter())
}
