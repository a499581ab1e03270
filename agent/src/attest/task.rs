//! `ringzero:job:<alloc>`: the peer is a process of a task this agent launched.
//!
//! Each task is the leader of its own process group (pgid = the task's pid), so the process
//! group of a peer names the task it belongs to. Two checks at accept, one at every request:
//!
//! - **At accept**: the peer's process group (field 5 of `/proc/<pid>/stat`) is the pid of a
//!   task the supervisor reports running, **and** the peer descends from that task's process
//!   (walking parent pids, at most [`MAX_DEPTH`] steps). The second check exists because all
//!   tasks share the agent's session, and `setpgid` lets a process join any process group of
//!   its session: a process of another task joining this task's group gets nothing.
//! - **At every request** ([`Attestation::verify`](super::Attestation::verify)): the process
//!   is still in that group (read through the pinned `/proc/<pid>` directory) and the task still
//!   runs as that pid. A process that left the group, or outlived a task that stopped, exited or
//!   was restarted, is refused (fail closed) and, attested again, gets no job selector.
//!
//! Residual: the ancestry walk reads `/proc/<ppid>/stat` by pid; an intermediate ancestor that
//! exits during the walk reparents the peer (the walk then fails, closed), and a pid reused in
//! that instant would have to be a process of the same task to matter.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;

use tokio::sync::watch;

use super::MAX_STAT_LEN;
use crate::tasks::{AllocId, TaskState, TaskStatus};

/// The supervisor's task statuses, as [`crate::tasks::Supervisor::statuses`] gives them.
pub(crate) type TaskStatuses = watch::Receiver<BTreeMap<AllocId, TaskStatus>>;

/// The most parent steps from a peer to its task's process.
pub(crate) const MAX_DEPTH: usize = 64;

/// `(ppid, pgrp)`: fields 4 and 5 of `/proc/<pid>/stat`, counted after the last `)`.
pub(super) fn parse_ppid_pgrp(stat: &str) -> Option<(i32, i32)> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    let mut fields = after_comm.split_ascii_whitespace();
    let ppid = fields.nth(1)?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

/// The allocation whose task runs as pid `pgid`, if any.
pub(super) fn task_leading(tasks: &TaskStatuses, pgid: i32) -> Option<AllocId> {
    let pgid = u32::try_from(pgid).ok()?;
    tasks
        .borrow()
        .iter()
        .find(|(_, s)| s.state == TaskState::Running { pid: pgid })
        .map(|(id, _)| id.clone())
}

/// Whether the task of `alloc` still runs as pid `pgid`.
pub(super) fn still_leads(tasks: &TaskStatuses, alloc: &AllocId, pgid: i32) -> bool {
    u32::try_from(pgid).is_ok_and(|pid| {
        tasks
            .borrow()
            .get(alloc)
            .is_some_and(|s| s.state == TaskState::Running { pid })
    })
}

/// Whether the process whose parent is `ppid` descends from `ancestor` (or is it, when `pid`
/// is `ancestor`), within [`MAX_DEPTH`] steps.
pub(super) fn descends_from(pid: i32, ppid: i32, ancestor: i32) -> bool {
    if pid == ancestor {
        return true;
    }
    let mut p = ppid;
    for _ in 0..MAX_DEPTH {
        if p == ancestor {
            return true;
        }
        if p <= 1 {
            return false;
        }
        match read_ppid(p) {
            Some(next) => p = next,
            None => return false,
        }
    }
    false
}

fn read_ppid(pid: i32) -> Option<i32> {
    let mut text = String::new();
    File::open(format!("/proc/{pid}/stat"))
        .ok()?
        .take(MAX_STAT_LEN)
        .read_to_string(&mut text)
        .ok()?;
    parse_ppid_pgrp(&text).map(|(ppid, _)| ppid)
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
