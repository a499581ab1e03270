#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::adopt::{ProcStat, Record, spec_hash};
use super::cgroup::Cgroups;
use super::{
    AllocId, Limits, MAX_TASKS, RestartMode, RestartPolicy, Supervisor, SupervisorConfig,
    TaskError, TaskSpec, TaskState, TaskStatus, backoff, logs,
};

type Statuses = watch::Receiver<BTreeMap<AllocId, TaskStatus>>;

fn id(s: &str) -> AllocId {
    AllocId::new(s).unwrap()
}

fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

/// A `/bin/sh -c script` task as the current user, never restarted.
fn sh(alloc: &str, script: &str) -> TaskSpec {
    TaskSpec {
        alloc_id: id(alloc),
        command: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: BTreeMap::new(),
        workdir: None,
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        cpu_millis: None,
        memory_mb: None,
        restart: RestartPolicy {
            mode: RestartMode::Never,
            max_restarts: 0,
            backoff: Duration::from_millis(100),
        },
    }
}

fn config(dir: &Path) -> SupervisorConfig {
    let mut config = SupervisorConfig::new(dir.join("state"));
    config.stop_grace = Duration::from_secs(5);
    config
}

/// A second supervisor over `dir` once the first is dropped. The first one's lock fd can
/// outlive its drop by a moment: a test on another thread that forks a child between our
/// open and the child's exec hands the child a copy (close-on-exec closes it only at exec),
/// and flock belongs to the open file, so wait that window out.
fn reopen(dir: &Path) -> Supervisor {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Supervisor::new(config(dir)) {
            Err(TaskError::StateDirInUse(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
}

async fn wait_until(
    rx: &mut Statuses,
    alloc: &str,
    what: impl Fn(&TaskStatus) -> bool,
) -> TaskStatus {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let found = rx
                .borrow_and_update()
                .get(alloc)
                .filter(|s| what(s))
                .cloned();
            if let Some(status) = found {
                return status;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    match waited {
        Ok(status) => status,
        Err(_) => panic!("timed out; last status {:?}", rx.borrow().get(alloc)),
    }
}

async fn running(rx: &mut Statuses, alloc: &str) -> u32 {
    let status = wait_until(rx, alloc, |s| matches!(s.state, TaskState::Running { .. })).await;
    match status.state {
        TaskState::Running { pid } => pid,
        _ => unreachable!(),
    }
}

async fn finished(rx: &mut Statuses, alloc: &str) -> TaskStatus {
    wait_until(rx, alloc, |s| s.state.is_final()).await
}

/// Until `path` contains `needle`.
async fn log_contains(path: &Path, needle: &str) -> String {
    for _ in 0..300 {
        let text = fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} never contained {needle:?}: {:?}",
        path.display(),
        fs::read_to_string(path)
    );
}

fn alive(pid: u32) -> bool {
    ProcStat::read(pid).is_some_and(|s| s.is_live())
}

/// Until `pid` is gone (or a zombie).
async fn gone(pid: u32) -> bool {
    for _ in 0..100 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The live processes whose command line contains `marker`.
fn with_marker(marker: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(marker) && alive(pid)
        })
        .collect()
}

fn status_line(pid: u32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn hostile_alloc_ids_are_refused() {
    for bad in [
        "",
        "../x",
        "..",
        ".",
        "a/b",
        "a b",
        "a\0b",
        "é",
        &"a".repeat(65),
        &"a".repeat(1000),
    ] {
        assert!(
            matches!(AllocId::new(bad), Err(TaskError::InvalidAllocId(_))),
            "{bad:?}"
        );
    }
    for good in ["a", "job-7_x", &"Z9".repeat(32)] {
        assert_eq!(AllocId::new(good).unwrap().as_str(), good);
    }
}

#[tokio::test]
async fn invalid_specs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = Supervisor::new(config(dir.path())).unwrap();
    let mut relative = sh("rel", "true");
    relative.command = "sh".into();
    let mut bad_env = sh("env", "true");
    bad_env.env.insert("A=B".into(), "x".into());
    let mut nul = sh("nul", "true");
    nul.args.push("a\0b".into());
    let mut zero = sh("zero", "true");
    zero.memory_mb = Some(0);
    for spec in [relative, bad_env, nul, zero] {
        assert!(matches!(
            supervisor.start(spec).await,
            Err(TaskError::InvalidSpec(_))
        ));
    }
    assert!(supervisor.statuses().borrow().is_empty());
}

#[tokio::test]
async fn task_runs_with_its_uid_gid_cwd_env_and_logs() {
    if !is_root() {
        println!("skipped: needs root to run a task as uid 65534");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workdir = dir.path().join("work");
    fs::create_dir(&workdir).unwrap();
    fs::set_permissions(&workdir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = config(dir.path());
    config.spiffe_endpoint_socket = Some("unix:///run/test/agent.sock".into());
    let supervisor = Supervisor::new(config).unwrap();
    let mut rx = supervisor.statuses();
    let mut spec = sh(
        "creds",
        "echo \"foo=$FOO sock=$SPIFFE_ENDPOINT_SOCKET home=${HOME-unset}\"; pwd; id -u; id -g; \
         echo oops >&2; echo ready; exec sleep 1000",
    );
    spec.uid = 65534;
    spec.gid = 65534;
    spec.workdir = Some(workdir.clone());
    spec.env.insert("FOO".into(), "bar".into());
    spec.env
        .insert("SPIFFE_ENDPOINT_SOCKET".into(), "overridden".into());
    supervisor.start(spec).await.unwrap();
    let pid = running(&mut rx, "creds").await;
    let (stdout, stderr) = supervisor.log_paths(&id("creds"));
    let out = log_contains(&stdout, "ready").await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "foo=bar sock=unix:///run/test/agent.sock home=unset",
            workdir.to_str().unwrap(),
            "65534",
            "65534",
            "ready"
        ]
    );
    assert_eq!(log_contains(&stderr, "oops").await, "oops\n");
    // The process itself (sh exec'd sleep): ids, no supplementary groups, exact environment.
    assert_eq!(status_line(pid, "Uid"), "65534 65534 65534 65534");
    assert_eq!(status_line(pid, "Gid"), "65534 65534 65534 65534");
    assert_eq!(status_line(pid, "Groups"), "");
    // Read while `sh` may still be exec'ing `sleep`: an exec in progress shows an empty
    // environment for a moment, so wait for the settled one.
    let mut environ = Vec::new();
    for _ in 0..100 {
        environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
        if !environ.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // What the shell adds itself aside, exactly the spec's and the agent's.
    let vars: Vec<String> = environ
        .split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| {
            !v.is_empty()
                && !["PWD=", "OLDPWD=", "SHLVL=", "_="]
                    .iter()
                    .any(|p| v.starts_with(p))
        })
        .collect();
    assert_eq!(
        vars,
        [
            "FOO=bar",
            "SPIFFE_ENDPOINT_SOCKET=unix:///run/test/agent.sock"
        ]
    );
    // Its own process group; stdin is /dev/null; the log files are the agent's, 0600.
    assert_eq!(ProcStat::read(pid).unwrap().pgrp, i64::from(pid));
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
        PathBuf::from("/dev/null")
    );
    for log in [&stdout, &stderr] {
        let meta = fs::metadata(log).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    }
    supervisor.stop(&id("creds")).await.unwrap();
    assert_eq!(
        supervisor.statuses().borrow()[&id("creds")].state,
        TaskState::Stopped
    );
    assert!(gone(pid).await);
}

#[test]
fn one_supervisor_per_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let first = Supervisor::new(config(dir.path())).unwrap();
    assert!(matches!(
        Supervisor::new(config(dir.path())),
        Err(TaskError::StateDirInUse(_))
    ));
    drop(first);
    reopen(dir.path());
}

#[tokio::test]
async fn a_crashing_task_restarts_with_backoff_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = Supervisor::new(config(dir.path())).unwrap();
    let mut rx = supervisor.statuses();
    let mut spec = sh("crash", "echo run; exit 3");
    spec.restart = RestartPolicy {
        mode: RestartMode::OnFailure,
        max_restarts: 2,
        backoff: Duration::from_millis(200),
    };
    let began = Instant::now();
    supervisor.start(spec).await.unwrap();
    let status = finished(&mut rx, "crash").await;
    let took = began.elapsed();
    assert_eq!(status.restarts, 2);
    let TaskState::Failed { code, reason } = &status.state else {
        panic!("{status:?}");
    };
    assert_eq!(*code, Some(3), "{reason}");
    assert_eq!(status.last_exit.unwrap().code, Some(3));
    // Three runs, 200 ms then 400 ms apart (±10 %).
    let (stdout, _) = supervisor.log_paths(&id("crash"));
    assert_eq!(fs::read_to_string(stdout).unwrap(), "run\nrun\nrun\n");
    assert!(took >= Duration::from_millis(540), "{took:?}");
}

#[tokio::test]
async fn never_and_on_failure_after_success_end_exited_with_the_code() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = Supervisor::new(config(dir.path())).unwrap();
    let mut rx = supervisor.statuses();
    supervisor.start(sh("seven", "exit 7")).await.unwrap();
    let mut ok = sh("ok", "exit 0");
    ok.restart.mode = RestartMode::OnFailure;
    ok.restart.max_restarts = 5;
    supervisor.start(ok).await.unwrap();
    let seven = finished(&mut rx, "seven").await;
    assert_eq!(seven.state, TaskState::Exited { code: Some(7) });
    assert_eq!(seven.restarts, 0);
    let ok = finished(&mut rx, "ok").await;
    assert_eq!(ok.state, TaskState::Exited { code: Some(0) });
    assert_eq!(ok.restarts, 0);
    // Nothing is left recorded for a task that ended.
    assert!(supervisor.recorded().is_empty());
}

#[tokio::test]
async fn a_missing_command_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = Supervisor::new(config(dir.path())).unwrap();
    let mut rx = supervisor.statuses();
    let mut spec = sh("missing", "");
    spec.command = "/nonexistent/bin".into();
    supervisor.start(spec).await.unwrap();
    let status = finished(&mut rx, "missing").await;
    let TaskState::Failed { reason, code: None } = status.state else {
        panic!("{status:?}");
    };
    assert!(reason.contains("/nonexistent/bin"), "{reason}");
}

#[tokio::test]
async fn stop_terminates_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = Supervisor::new(config(dir.path())).unwrap();
    let mut rx = supervisor.statuses();
    supervisor
        .start(sh("group", "sleep 1000 & echo $!; wait"))
        .await
        .unwrap();
    let pid = running(&mut rx, "group").await;
    let (stdout, _) = supervisor.log_paths(&id("group"));
    let child: u32 = log_contains(&stdout, "\n").await.trim().parse().unwrap();
    assert!(alive(child));
    assert_eq!(ProcStat::read(child).unwrap().pgrp, i64::from(pid));
    let began = Instant::now();
    supervisor.stop(&id("group")).await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "TERM, not the grace period"
    );
    let status = supervisor
        .statuses()
        .borrow()
        .get("group")
        .cloned()
        .unwrap();
    assert_eq!(status.state, TaskState::Stopped);
    assert_eq!(status.last_exit.unwrap().signal, Some(15));
    assert!(gone(pid).await);
    assert!(gone(child).await, "the task's child died with it");
    // Stopping again is harmless.
    supervisor.stop(&id("group")).await.unwrap();
}

#[tokio::test]
async fn stop_kills_a_task_that_ignores_term_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.stop_grace = Duration::from_millis(500);
    let supervisor = Supervisor::new(config).unwrap();
    let mut rx = supervisor.statuses();
    supervisor
        .start(sh(
            "stubborn",
            "trap '' TERM; echo ready; while :; do sleep 0.1; done",
        ))
        .await
        .unwrap();
    let pid = running(&mut rx, "stubborn").await;
    log_contains(&supervisor.log_paths(&id("stubborn")).0, "ready").await;
    let began = Instant::now();
    supervisor.stop(&id("stubborn")).await.unwrap();
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let status = supervisor
        .statuses()
        .borrow()
        .get("stubborn")
        .cloned()
        .unwrap();
    assert_eq!(status.state, TaskState::Stopped);
    assert_eq!(status.last_exit.unwrap().signal, Some(9));
    assert!(gone(pid).await);
}

#[tokio::test]
async fn starting_a_running_task_again_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = Supervisor::new(config(dir.path())).unwrap();
    let mut rx = supervisor.statuses();
    let marker = format!("marker-{}", dir.path().display());
    let mut spec = sh("twice", "sleep 1000; :");
    spec.args.push(marker.clone());
    supervisor.start(spec.clone()).await.unwrap();
    let pid = running(&mut rx, "twice").await;
    supervisor.start(spec).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(with_marker(&marker), [pid]);
    supervisor.stop(&id("twice")).await.unwrap();
}

#[test]
fn rotation_keeps_the_tail_and_at_most_keep_copies() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stdout.log");
    for round in 0..4u8 {
        let mut data = vec![b'a' + round; 100];
        data.extend_from_slice(b"tail");
        fs::write(&log, &data).unwrap();
        assert!(logs::rotate(&log, 50, 2).unwrap());
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
    }
    let one = fs::read(dir.path().join("stdout.log.1")).unwrap();
    let two = fs::read(dir.path().join("stdout.log.2")).unwrap();
    assert_eq!(one.len(), 50);
    assert!(one.ends_with(b"dtail"), "the newest copy is .1");
    assert!(two.ends_with(b"ctail"));
    assert!(!dir.path().join("stdout.log.3").exists());
    assert!(!dir.path().join("stdout.log.0").exists());
    fs::write(&log, b"small").unwrap();
    assert!(!logs::rotate(&log, 50, 2).unwrap());
}

#[tokio::test]
async fn the_supervisor_bounds_a_chatty_task_s_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.log_max_bytes = 16 * 1024;
    config.log_keep = 1;
    let supervisor = Supervisor::new(config).unwrap();
    let mut rx = supervisor.statuses();
    // Two bursts of ~80 KiB, more than a check interval apart.
    let burst = "i=0; while [ $i -lt 2000 ]; do echo 0123456789012345678901234567890123456789; \
                 i=$((i+1)); done";
    supervisor
        .start(sh(
            "chatty",
            &format!("{burst}; sleep 1.5; {burst}; echo end"),
        ))
        .await
        .unwrap();
    finished(&mut rx, "chatty").await;
    let (stdout, _) = supervisor.log_paths(&id("chatty"));
    let live = fs::metadata(&stdout).unwrap().len();
    let rotated = fs::read_to_string(dir.path().join("state/chatty/stdout.log.1")).unwrap();
    assert!(live <= 16 * 1024, "{live}");
    assert_eq!(rotated.len(), 16 * 1024);
    assert!(rotated.ends_with("end\n"), "the last burst's tail is kept");
    assert!(!dir.path().join("state/chatty/stdout.log.2").exists());
}

#[tokio::test]
async fn a_new_supervisor_adopts_the_running_task_instead_of_starting_another() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("marker-{}", dir.path().display());
    let mut spec = sh("adopt", "echo started; sleep 1000; :");
    spec.args.push(marker.clone());
    let pid = {
        let first = Supervisor::new(config(dir.path())).unwrap();
        let mut rx = first.statuses();
        first.start(spec.clone()).await.unwrap();
        running(&mut rx, "adopt").await
        // Dropped: the process stays.
    };
    log_contains(&dir.path().join("state/adopt/stdout.log"), "started").await;
    let record = Record::load(&dir.path().join("state/adopt")).unwrap();
    assert_eq!(record.pid, pid);
    assert_eq!(record.start_time, ProcStat::read(pid).unwrap().start_time);
    let mode = fs::metadata(dir.path().join("state/adopt/task.json")).unwrap();
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);

    let second = reopen(dir.path());
    assert_eq!(second.recorded(), [id("adopt")]);
    let mut rx = second.statuses();
    second.start(spec).await.unwrap();
    assert_eq!(running(&mut rx, "adopt").await, pid);
    assert!(rx.borrow().get("adopt").unwrap().adopted);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(with_marker(&marker), [pid], "one copy");
    second.stop(&id("adopt")).await.unwrap();
    assert!(gone(pid).await);
    assert_eq!(rx.borrow().get("adopt").unwrap().state, TaskState::Stopped);
    assert!(second.recorded().is_empty());
}

#[tokio::test]
async fn a_recorded_task_the_allocator_dropped_is_stopped_without_a_spec() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("marker-{}", dir.path().display());
    let mut spec = sh("orphan", "sleep 1000; :");
    spec.args.push(marker.clone());
    let pid = {
        let first = Supervisor::new(config(dir.path())).unwrap();
        let mut rx = first.statuses();
        first.start(spec).await.unwrap();
        running(&mut rx, "orphan").await
    };
    let second = reopen(dir.path());
    second.stop(&id("orphan")).await.unwrap();
    assert!(gone(pid).await);
    assert!(with_marker(&marker).is_empty());
    assert!(second.recorded().is_empty());
}

#[tokio::test]
async fn a_reused_pid_is_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let spec = sh("reused", "sleep 1000; :");
    // Another live process under the recorded pid, with another start time.
    let mut other = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let other_pid = other.id();
    let task_dir = dir.path().join("state/reused");
    fs::create_dir_all(&task_dir).unwrap();
    let start_time = ProcStat::read(other_pid).unwrap().start_time;
    Record {
        pid: other_pid,
        start_time: start_time + 1,
        spec_hash: spec_hash(&spec, config.spiffe_endpoint_socket.as_deref()),
        restarts: 0,
    }
    .store(&task_dir)
    .unwrap();
    let supervisor = Supervisor::new(config).unwrap();
    let mut rx = supervisor.statuses();
    supervisor.start(spec).await.unwrap();
    let pid = running(&mut rx, "reused").await;
    assert_ne!(pid, other_pid);
    assert!(!rx.borrow().get("reused").unwrap().adopted);
    assert!(alive(other_pid), "the other process is left alone");
    assert_eq!(Record::load(&task_dir).unwrap().pid, pid);
    supervisor.stop(&id("reused")).await.unwrap();
    assert!(alive(other_pid));
    other.kill().unwrap();
    other.wait().unwrap();
}

#[tokio::test]
async fn a_recorded_task_with_another_spec_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let old = {
        let first = Supervisor::new(config(dir.path())).unwrap();
        let mut rx = first.statuses();
        first.start(sh("changed", "sleep 1000; :")).await.unwrap();
        running(&mut rx, "changed").await
    };
    let second = reopen(dir.path());
    let mut rx = second.statuses();
    second.start(sh("changed", "sleep 999; :")).await.unwrap();
    let new = running(&mut rx, "changed").await;
    assert_ne!(new, old);
    assert!(
        !alive(old),
        "the old spec's process was stopped before the new one started"
    );
    second.stop(&id("changed")).await.unwrap();
}

#[tokio::test]
async fn limits_are_enforced_by_cgroup_v2_or_reported_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = Supervisor::new(config(dir.path())).unwrap();
    let mut rx = supervisor.statuses();
    let mut spec = sh("limited", "sleep 1000; :");
    spec.memory_mb = Some(64);
    spec.cpu_millis = Some(250);
    supervisor.start(spec).await.unwrap();
    let pid = running(&mut rx, "limited").await;
    let limits = rx.borrow().get("limited").unwrap().limits.clone();
    let cgroup = Path::new("/sys/fs/cgroup/ringzero/limited");
    match limits {
        Limits::Enforced => {
            println!("cgroup v2 available: checking the limits");
            assert_eq!(
                fs::read_to_string(cgroup.join("memory.max"))
                    .unwrap()
                    .trim(),
                (64u64 << 20).to_string()
            );
            assert_eq!(
                fs::read_to_string(cgroup.join("cpu.max")).unwrap().trim(),
                "25000 100000"
            );
            let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            assert!(own.contains("/ringzero/limited"), "{own}");
        }
        Limits::Unavailable(reason) => {
            println!("cgroup v2 unavailable here: {reason}");
            assert!(!reason.is_empty());
            assert!(!cgroup.exists());
        }
    }
    supervisor.stop(&id("limited")).await.unwrap();
    assert!(!cgroup.exists(), "the cgroup is removed when the task ends");
}

#[tokio::test]
async fn at_most_max_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = Supervisor::new(config(dir.path())).unwrap();
    let mut rx = supervisor.statuses();
    // Tasks that fail at once: no process each.
    let failing = |n: usize| {
        let mut spec = sh(&format!("t{n}"), "");
        spec.command = "/nonexistent".into();
        spec
    };
    for n in 0..MAX_TASKS {
        supervisor.start(failing(n)).await.unwrap();
    }
    assert!(matches!(
        supervisor.start(failing(MAX_TASKS)).await,
        Err(TaskError::TooManyTasks { max: MAX_TASKS })
    ));
    finished(&mut rx, "t0").await;
    supervisor.forget(&id("t0")).unwrap();
    assert!(!rx.borrow().contains_key("t0"));
    supervisor.start(failing(MAX_TASKS)).await.unwrap();
}

#[test]
fn backoff_doubles_up_to_a_minute() {
    let base = Duration::from_millis(100);
    let near = |d: Duration, want: Duration| d >= want.mul_f64(0.89) && d <= want.mul_f64(1.11);
    assert!(near(backoff(base, 1), base));
    assert!(near(backoff(base, 2), base * 2));
    assert!(near(backoff(base, 5), base * 16));
    assert!(near(backoff(base, 40), Duration::from_secs(60)));
    assert!(near(
        backoff(Duration::from_secs(3600), 1),
        Duration::from_secs(60)
    ));
}

#[test]
fn stat_lines_with_odd_command_names_parse() {
    let line = "42 (a) b (c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
    let stat = ProcStat::parse(line).unwrap();
    assert_eq!(stat.state, 'S');
    assert_eq!(stat.pgrp, 42);
    assert_eq!(stat.start_time, 12345);
    assert!(ProcStat::parse("42 (x) S 1").is_none());
    assert!(ProcStat::parse("garbage").is_none());
}

#[tokio::test]
async fn cgroup_files_hold_the_limits_in_the_kernel_s_units() {
    // A plain directory stands in for `<root>/ringzero`: this checks what is written where,
    // not that the kernel enforces it (that is the test above, on a host with cgroup v2).
    let dir = tempfile::tempdir().unwrap();
    let cgroups = Cgroups::Available(dir.path().to_owned());
    let mut spec = sh("cg", "true");
    spec.memory_mb = Some(64);
    spec.cpu_millis = Some(1500);
    let group = cgroups.create(&spec).unwrap();
    let read = |name: &str| fs::read_to_string(dir.path().join("cg").join(name)).unwrap();
    assert_eq!(read("memory.max"), "67108864");
    assert_eq!(read("cpu.max"), "150000 100000");
    let mut leader = std::process::Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .unwrap();
    group.add(leader.id()).unwrap();
    assert_eq!(read("cgroup.procs"), leader.id().to_string());
    leader.kill().unwrap();
    leader.wait().unwrap();
    assert!(cgroups.existing(&id("cg")).is_some());
    spec.memory_mb = None;
    spec.cpu_millis = Some(1);
    cgroups.create(&spec).unwrap();
    assert_eq!(read("memory.max"), "max");
    assert_eq!(
        read("cpu.max"),
        "1000 100000",
        "the kernel's smallest quota"
    );
    assert!(cgroups.existing(&id("other")).is_none());
    // Unavailable says why.
    let none = Cgroups::detect(Some(dir.path()));
    let Cgroups::Unavailable(reason) = none else {
        panic!("a plain directory is no cgroup2 mount");
    };
    assert!(reason.contains("not a cgroup v2 mount"), "{reason}");
}
