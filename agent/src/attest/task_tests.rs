//! `ringzero:job` on real process groups: the task, its descendants, a stranger of the same
//! uid, a process that joined the group from outside, and one that left it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ringzero_policy::selector::Selector;

use super::super::{AttestError, Attestor};
use super::*;
use crate::tasks::Limits;

const ALLOC: &str = "0123456789abcdef";

/// A process group, killed as a whole when dropped.
struct Group(Child);

impl Group {
    fn start(script: &str) -> Self {
        let child = Command::new("/bin/sh")
            .args(["-c", script])
            .process_group(0)
            .spawn()
            .unwrap();
        Self(child)
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).unwrap()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

fn running(pid: i32) -> (watch::Sender<BTreeMap<AllocId, TaskStatus>>, TaskStatuses) {
    let mut all = BTreeMap::new();
    all.insert(AllocId::new(ALLOC).unwrap(), status(pid));
    let (tx, rx) = watch::channel(all);
    (tx, rx)
}

fn status(pid: i32) -> TaskStatus {
    TaskStatus {
        state: TaskState::Running {
            pid: u32::try_from(pid).unwrap(),
        },
        restarts: 0,
        started_at: None,
        finished_at: None,
        last_exit: None,
        limits: Limits::Enforced,
        adopted: false,
    }
}

/// The first child of `pid`, once it has exec'd `exe_name`.
fn child_of(pid: i32, exe_name: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(c) = children.split_whitespace().next() {
            let c: i32 = c.parse().unwrap();
            let exe = std::fs::read_link(format!("/proc/{c}/exe")).unwrap_or_default();
            if exe.to_string_lossy().contains(exe_name) {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "no {exe_name} child of {pid}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn attest(attestor: &Attestor, pid: i32) -> super::super::Attestation {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    attestor.attest_process(pid, uid, gid).unwrap()
}

fn job() -> Selector {
    Selector::job(ALLOC).unwrap()
}

#[test]
fn stat_fields_survive_hostile_comm() {
    assert_eq!(parse_ppid_pgrp("42 (a) b) c) S 7 42 42 0"), Some((7, 42)));
    assert_eq!(parse_ppid_pgrp("42 (x) S 7"), None);
    assert_eq!(parse_ppid_pgrp("garbage"), None);
}

#[test]
fn the_task_and_its_descendants_get_the_job_selector() {
    // The shell forks `sleep` (the trailing `:` keeps it from exec'ing it).
    let task = Group::start("sleep 30; :");
    let sleep = child_of(task.pid(), "sleep");
    let (tx, tasks) = running(task.pid());
    let attestor = Attestor::new().with_tasks(tasks);

    let leader = attest(&attestor, task.pid());
    assert!(leader.selectors().contains(&job()));
    let child = attest(&attestor, sleep);
    assert!(child.selectors().contains(&job()), "{child:?}");
    child.verify().unwrap();

    // Without the supervisor's statuses, no one gets it.
    assert!(!attest(&Attestor::new(), sleep).selectors().contains(&job()));

    // The task stops (or is restarted under another pid): its processes fail verification.
    tx.send_modify(|all| {
        all.insert(AllocId::new(ALLOC).unwrap(), status(1));
    });
    assert!(matches!(child.verify(), Err(AttestError::LeftTask)));
    assert!(!attest(&attestor, sleep).selectors().contains(&job()));
}

#[test]
fn a_stranger_of_the_same_uid_does_not() {
    let task = Group::start("sleep 30; :");
    let (_tx, tasks) = running(task.pid());
    let attestor = Attestor::new().with_tasks(tasks);
    let stranger = Group::start("sleep 30; :");
    let stranger_sleep = child_of(stranger.pid(), "sleep");
    for pid in [stranger.pid(), stranger_sleep] {
        let a = attest(&attestor, pid);
        assert!(!a.selectors().contains(&job()), "{a:?}");
    }
}

#[test]
fn joining_the_group_from_outside_gets_nothing() {
    // Every task shares the agent's session, so setpgid can join another task's group; the
    // ancestry check refuses such a process.
    let task = Group::start("sleep 30; :");
    let (_tx, tasks) = running(task.pid());
    let attestor = Attestor::new().with_tasks(tasks);
    let mut intruder = Command::new("sleep")
        .arg("30")
        .process_group(task.pid())
        .spawn()
        .unwrap();
    let pid = i32::try_from(intruder.id()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert_eq!(parse_ppid_pgrp(&stat).unwrap().1, task.pid(), "joined");
    let a = attest(&attestor, pid);
    assert!(!a.selectors().contains(&job()), "{a:?}");
    let _ = intruder.kill();
    let _ = intruder.wait();
}

#[test]
fn leaving_the_group_loses_the_selector() {
    let python = Command::new("python3").arg("-c").arg("pass").status();
    if !python.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED leaving_the_group_loses_the_selector: no python3");
        return;
    }
    // A descendant that leaves the group without exec'ing anything (setpgid(0, 0)).
    let task = Group::start(
        "python3 -c 'import os, time; time.sleep(2); os.setpgid(0, 0); time.sleep(30)'; :",
    );
    let py = child_of(task.pid(), "python");
    let (_tx, tasks) = running(task.pid());
    let attestor = Attestor::new().with_tasks(tasks);
    let a = attest(&attestor, py);
    assert!(a.selectors().contains(&job()), "{a:?}");
    a.verify().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.verify().is_ok() {
        assert!(Instant::now() < deadline, "never left the group");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(matches!(a.verify(), Err(AttestError::LeftTask)));
    assert!(!attest(&attestor, py).selectors().contains(&job()));
    let _ = Command::new("kill")
        .args(["-KILL", &py.to_string()])
        .status();
}
