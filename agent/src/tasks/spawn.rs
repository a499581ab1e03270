//! The command of a task: credentials, process group, environment, directory and files.
//!
//! std's `CommandExt::uid` does, in the child between fork and exec, `setgroups(0)` (when the
//! agent runs as root), then `setgid`, then `setuid`: the task keeps no supplementary group of
//! the agent. `process_group(0)` makes it the leader of a new process group, so that a stop
//! signals it and everything it forked.

use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::{TaskError, TaskSpec, logs};

/// The variable naming the Workload API socket.
pub(super) const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Bounds on a spec's strings, so one spec cannot swell the supervisor.
const MAX_ARGS: usize = 4096;
const MAX_ENV: usize = 4096;
const MAX_TOTAL_BYTES: usize = 1 << 20;

/// Rejects a spec that could not be run as given.
pub(super) fn validate(spec: &TaskSpec) -> Result<(), TaskError> {
    let bad = |why: String| Err(TaskError::InvalidSpec(format!("{}: {why}", spec.alloc_id)));
    if !spec.command.is_absolute() {
        return bad(format!(
            "command {} is not an absolute path",
            spec.command.display()
        ));
    }
    if spec.workdir.as_deref().is_some_and(|w| !w.is_absolute()) {
        return bad("workdir is not an absolute path".into());
    }
    if spec.memory_mb == Some(0) || spec.cpu_millis == Some(0) {
        return bad("a limit of 0 (leave it out for no limit)".into());
    }
    if spec.args.len() > MAX_ARGS || spec.env.len() > MAX_ENV {
        return bad(format!(
            "at most {MAX_ARGS} arguments and {MAX_ENV} variables"
        ));
    }
    let total: usize = spec.args.iter().map(String::len).sum::<usize>()
        + spec
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if total > MAX_TOTAL_BYTES {
        return bad(format!(
            "arguments and environment exceed {MAX_TOTAL_BYTES} bytes"
        ));
    }
    if spec.args.iter().any(|a| a.contains('\0')) {
        return bad("an argument contains NUL".into());
    }
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return bad(format!("invalid environment variable {key:?}"));
        }
    }
    Ok(())
}

/// Spawns the task with its files in `dir`: stdin `/dev/null`, stdout and stderr the log
/// files.
pub(super) fn spawn(
    spec: &TaskSpec,
    dir: &Path,
    spiffe_socket: Option<&str>,
) -> std::io::Result<Child> {
    let stdout = logs::open(dir, logs::STDOUT)?;
    let stderr = logs::open(dir, logs::STDERR)?;
    let mut command = Command::new(&spec.command);
    command
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(spec.workdir.as_deref().unwrap_or(Path::new("/")))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .uid(spec.uid)
        .gid(spec.gid)
        .process_group(0)
        // The task outlives the supervisor on purpose: a new one adopts it.
        .kill_on_drop(false);
    if let Some(socket) = spiffe_socket {
        command.env(SPIFFE_ENDPOINT_SOCKET, socket);
    }
    command.spawn()
}
