//! One task's lifecycle: adopt or spawn, wait, rotate logs, stop, restart per policy.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use rustix::process::{Pid, Signal};
use tokio::process::Child;
use tokio::sync::watch;
use tracing::{info, warn};

use super::adopt::{ProcStat, Record};
use super::cgroup::TaskCgroup;
use super::{
    AllocId, Exit, Limits, RestartMode, Shared, TaskError, TaskSpec, TaskState, backoff, logs,
    spawn,
};

/// How often an adopted process is looked up in `/proc`.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

/// A running process of a task.
#[derive(Debug)]
enum Proc {
    /// Spawned by this supervisor: it can be reaped and its exit read.
    Child { child: Child, record: Record },
    /// Recorded by an earlier one: watched through `/proc` only.
    Adopted { record: Record },
}

impl Proc {
    fn record(&self) -> &Record {
        match self {
            Self::Child { record, .. } | Self::Adopted { record } => record,
        }
    }

    /// Until it ends. Cancel-safe.
    async fn wait(&mut self) -> Exit {
        let record = match self {
            Self::Child { child, record } => match child.wait().await {
                Ok(status) => {
                    return Exit {
                        code: status.code(),
                        signal: status.signal(),
                    };
                }
                // Not expected (it is our child); fall back to watching it.
                Err(error) => {
                    warn!(pid = record.pid, %error, "cannot wait for a task; polling /proc");
                    record
                }
            },
            Self::Adopted { record } => record,
        };
        while record.is_alive() {
            tokio::time::sleep(ADOPTED_POLL).await;
        }
        Exit {
            code: None,
            signal: None,
        }
    }
}

/// Sends `signal` to process group `pgid`; one that is gone is not an error.
fn signal_group(pgid: u32, signal: Signal) {
    let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else {
        return;
    };
    match rustix::process::kill_process_group(pid, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(error) => warn!(pgid, %error, ?signal, "cannot signal a task's process group"),
    }
}

/// SIGTERM to the process group, SIGKILL (to the group and the cgroup) after `grace`; returns
/// when the process has ended.
async fn terminate(proc: &mut Proc, grace: Duration, cgroup: Option<&TaskCgroup>) -> Exit {
    let pgid = proc.record().pid;
    signal_group(pgid, Signal::TERM);
    match tokio::time::timeout(grace, proc.wait()).await {
        Ok(exit) => exit,
        Err(_) => {
            info!(pgid, "task outlived its stop grace period: SIGKILL");
            signal_group(pgid, Signal::KILL);
            if let Some(cgroup) = cgroup {
                cgroup.kill();
            }
            proc.wait().await
        }
    }
}

/// Until a stop is asked for (never, if the supervisor is gone: dropping it leaves tasks be).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let gone = stop.wait_for(|s| *s).await.is_err();
    if gone {
        std::future::pending::<()>().await;
    }
}

/// Runs the task until it ends for good or is stopped, then says so on `done`.
pub(super) async fn run(
    shared: Arc<Shared>,
    spec: TaskSpec,
    mut stop: watch::Receiver<bool>,
    done: watch::Sender<bool>,
) {
    lifecycle(&shared, &spec, &mut stop).await;
    done.send_replace(true);
}

async fn lifecycle(shared: &Shared, spec: &TaskSpec, stop: &mut watch::Receiver<bool>) {
    let alloc = &spec.alloc_id;
    let config = &shared.config;
    let dir = config.state_dir.join(alloc.as_str());
    if let Err(e) = super::adopt::private_dir(&dir) {
        return fail(shared, alloc, format!("task directory: {e}"), None);
    }
    let hash = super::adopt::spec_hash(spec, config.spiffe_endpoint_socket.as_deref());
    let mut restarts = 0;
    let mut adopted = None;
    if let Some(record) = Record::load(&dir).filter(Record::is_alive) {
        let cgroup = shared.cgroups.existing(alloc);
        if record.spec_hash == hash {
            info!(%alloc, pid = record.pid, "adopting the recorded task");
            restarts = record.restarts;
            let limits = match (&cgroup, &shared.cgroups) {
                (Some(_), _) => Limits::Enforced,
                (None, super::cgroup::Cgroups::Unavailable(reason)) => {
                    Limits::Unavailable(reason.clone())
                }
                (None, _) => Limits::Unavailable("adopted outside a cgroup".into()),
            };
            adopted = Some((Proc::Adopted { record }, cgroup, limits));
        } else {
            info!(%alloc, pid = record.pid, "the recorded task runs another spec: stopping it");
            let mut proc = Proc::Adopted { record };
            terminate(&mut proc, config.stop_grace, cgroup.as_ref()).await;
            end_process(&dir, &proc, cgroup).await;
        }
    }
    let mut check = tokio::time::interval(logs::CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let is_adopted = adopted.is_some();
        let (mut proc, cgroup, limits) = match adopted.take() {
            Some(running) => running,
            None => match start_once(shared, spec, &dir, &hash, restarts).await {
                Ok(running) => running,
                Err(reason) => return fail(shared, alloc, reason, None),
            },
        };
        let pid = proc.record().pid;
        shared.update(alloc, |s| {
            s.state = TaskState::Running { pid };
            s.restarts = restarts;
            s.started_at = Some(SystemTime::now());
            s.limits = limits;
            s.adopted = is_adopted;
        });
        let (exit, stopped) = loop {
            tokio::select! {
                exit = proc.wait() => break (exit, false),
                () = stop_requested(stop) => {
                    break (terminate(&mut proc, config.stop_grace, cgroup.as_ref()).await, true);
                }
                _ = check.tick() => logs::rotate_all(&dir, config.log_max_bytes, config.log_keep),
            }
        };
        end_process(&dir, &proc, cgroup).await;
        logs::rotate_all(&dir, config.log_max_bytes, config.log_keep);
        info!(%alloc, pid, ?exit, stopped, "task ended");
        let finished = |state: TaskState| {
            shared.update(alloc, |s| {
                s.state = state;
                s.finished_at = Some(SystemTime::now());
                s.last_exit = Some(exit);
            });
        };
        if stopped {
            return finished(TaskState::Stopped);
        }
        let restart = match spec.restart.mode {
            RestartMode::Never => false,
            RestartMode::OnFailure => !exit.success(),
            RestartMode::Always => true,
        };
        if !restart {
            return finished(TaskState::Exited { code: exit.code });
        }
        if restarts >= spec.restart.max_restarts {
            return finished(TaskState::Failed {
                reason: format!("ended ({exit:?}) after {restarts} restarts"),
                code: exit.code,
            });
        }
        restarts += 1;
        finished(TaskState::Pending);
        tokio::select! {
            () = tokio::time::sleep(backoff(spec.restart.backoff, restarts)) => {}
            () = stop_requested(stop) => return finished(TaskState::Stopped),
        }
    }
}

/// Creates the cgroup, spawns the process, moves it in and records it. A process that cannot
/// be recorded is killed: unrecorded, a later supervisor would start a second copy.
async fn start_once(
    shared: &Shared,
    spec: &TaskSpec,
    dir: &Path,
    hash: &str,
    restarts: u32,
) -> Result<(Proc, Option<TaskCgroup>, Limits), String> {
    let (mut cgroup, mut limits) = match shared.cgroups.create(spec) {
        Ok(cgroup) => (Some(cgroup), Limits::Enforced),
        Err(reason) => (None, Limits::Unavailable(reason)),
    };
    let socket = shared.config.spiffe_endpoint_socket.as_deref();
    let child = match spawn::spawn(spec, dir, socket) {
        Ok(child) => child,
        Err(e) => {
            if let Some(cgroup) = cgroup {
                cgroup.remove().await;
            }
            return Err(format!("cannot start {}: {e}", spec.command.display()));
        }
    };
    // A spawned child always has a pid until it is reaped; never fall back to 0, which written
    // to `cgroup.procs` would move the agent itself.
    let Some(pid) = child.id() else {
        if let Some(group) = cgroup.take() {
            group.remove().await;
        }
        return Err(format!("{} started without a pid", spec.command.display()));
    };
    if let Some(group) = &cgroup
        && let Err(e) = group.add(pid)
    {
        limits = Limits::Unavailable(format!("cannot move the task into its cgroup: {e}"));
        if let Some(group) = cgroup.take() {
            group.remove().await;
        }
    }
    if let Limits::Unavailable(reason) = &limits
        && !shared.warned.swap(true, Ordering::Relaxed)
    {
        warn!(%reason, "cgroup v2 limits unavailable: tasks run without cpu and memory limits");
    }
    let record = Record {
        pid,
        start_time: ProcStat::read(pid).map_or(0, |s| s.start_time),
        spec_hash: hash.to_owned(),
        restarts,
    };
    let mut proc = Proc::Child { child, record };
    if let Err(e) = proc.record().store(dir) {
        signal_group(pid, Signal::KILL);
        proc.wait().await;
        end_process(dir, &proc, cgroup).await;
        return Err(format!("cannot record the task's process: {e}"));
    }
    Ok((proc, cgroup, limits))
}

/// After the process ended: kills what is left of its process group (only for our own child:
/// an adopted leader's pid may be reused once it is gone) and its cgroup, removes the record.
async fn end_process(dir: &Path, proc: &Proc, cgroup: Option<TaskCgroup>) {
    if let Proc::Child { record, .. } = proc {
        signal_group(record.pid, Signal::KILL);
    }
    if let Some(cgroup) = cgroup {
        cgroup.remove().await;
    }
    if let Err(error) = Record::remove(dir) {
        warn!(dir = %dir.display(), %error, "cannot remove a task record");
    }
}

fn fail(shared: &Shared, alloc: &AllocId, reason: String, code: Option<i32>) {
    warn!(%alloc, %reason, "task failed");
    shared.update(alloc, |s| {
        s.state = TaskState::Failed { reason, code };
        s.finished_at = Some(SystemTime::now());
    });
}

/// Stops a task this supervisor does not run but whose process is recorded in the state
/// directory.
pub(super) async fn stop_recorded(shared: &Shared, alloc: &AllocId) -> Result<(), TaskError> {
    let dir = shared.config.state_dir.join(alloc.as_str());
    let Some(record) = Record::load(&dir) else {
        return Ok(());
    };
    let cgroup = shared.cgroups.existing(alloc);
    let mut proc = Proc::Adopted { record };
    if proc.record().is_alive() {
        info!(%alloc, pid = proc.record().pid, "stopping a recorded task");
        terminate(&mut proc, shared.config.stop_grace, cgroup.as_ref()).await;
    }
    if let Some(cgroup) = cgroup {
        cgroup.remove().await;
    }
    Record::remove(&dir).map_err(TaskError::io(format!("{}", dir.display())))
}
