//! Agent processes: `ringzero agent run` enrolled against an authority, and the uid its
//! workloads (this test process) run as.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{Proc, ringzero, wait_until};

/// The uid of this process, as the agent attests it: the owner of a file it just created.
pub fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().metadata().unwrap().uid()
}

/// `ringzero agent run --authority ADDR [--join-token TOKEN] --data-dir DIR --socket SOCKET`,
/// run in `cwd`. `join_token` is a token argument as the CLI takes it (`@FILE`, `-`, or the
/// token); without it the agent starts from the enrollment in its data directory.
pub fn agent_cmd(
    cwd: &Path,
    authority: &str,
    join_token: Option<&str>,
    data_dir: &Path,
    socket: &Path,
) -> Command {
    let mut cmd = ringzero(cwd);
    cmd.args(["agent", "run", "--authority", authority]);
    if let Some(token) = join_token {
        cmd.args(["--join-token", token]);
    }
    cmd.arg("--data-dir")
        .arg(data_dir)
        .arg("--socket")
        .arg(socket);
    cmd
}

/// Spawns the agent `cmd` as `name` with its output in `log`, and waits up to `within` for it
/// to log that it is ready (enrolled and serving the Workload API). Panics, with the log, if
/// it exits first.
pub fn spawn_ready_agent(name: &str, cmd: Command, log: &Path, within: Duration) -> Proc {
    let mut p = Proc::spawn(name, cmd, log);
    wait_until(
        "the agent to be ready",
        within,
        Duration::from_millis(50),
        || {
            assert!(p.is_running(), "the agent exited: {}", p.log());
            p.log().contains("agent ready").then_some(())
        },
    );
    p
}
