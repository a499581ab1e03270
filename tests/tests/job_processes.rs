//! Jobs run by a real agent, each task with its own SVID: an authority, an agent, a job whose
//! task fetches its SVID through the Workload API (`ringzero agent fetch`) and prints it; its
//! allocation placed with the admin's token (standing in for the scheduler). The task's log
//! shows its own identity, `job status` shows it running on a live node, a process of the same
//! uid that is not the task gets no such SVID, stopping the allocation ends the process and
//! removes its entry, and a task exiting with 3 under `never` is reported exited with 3. A
//! user-written entry naming a `ringzero:` selector is refused. After the agent is killed
//! (`job status` then shows its node down) and restarted on the same data directory, a task
//! that already exited (0, under `never`) is not run again and stays EXITED, and a
//! long-running task is adopted, not duplicated. A task that exits 3 every time under
//! `on-failure` with at most 2 restarts runs 3 times and is reported FAILED with restarts 2 and
//! exit code 3. With two agents and two jobs of the same uid, each task — whether the other
//! job's task is on the other node or the same one — fetches only its own job's SVID, never
//! the other's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ringzero_proto::client::{AuthorityClient, Profile};
use ringzero_proto::pb;
use ringzero_tests::agent::{agent_cmd, spawn_ready_agent};
use ringzero_tests::{Proc, SoloAuthority, ringzero_bin, show, wait_until};

const TD: &str = "jobproc.test";
const A: &str = "a1a1a1a1a1a1a1a1";
const B: &str = "b2b2b2b2b2b2b2b2";
/// The task's `sleep` argument, to find its process.
const MARK: &str = "3171";

fn start_agent(a: &SoloAuthority, name: &str) -> (Proc, PathBuf, PathBuf) {
    let token = a.node_token(name, "10m");
    let dir = a.root.path().join(format!("agent-{name}"));
    let socket = a.root.path().join(format!("{name}.sock"));
    let token = format!("@{}", token.display());
    let cmd = agent_cmd(a.root.path(), &a.addr, Some(&token), &dir, &socket);
    let log = a.root.path().join(format!("agent-{name}.log"));
    let p = spawn_ready_agent(&format!("agent-{name}"), cmd, &log, Duration::from_secs(20));
    (p, dir, socket)
}

fn admin(a: &SoloAuthority) -> AuthorityClient {
    let p = Profile::from_toml(&std::fs::read_to_string(&a.profile).unwrap()).unwrap();
    AuthorityClient::new(p.credentials().unwrap(), p.authorities.clone())
}

fn submit(a: &SoloAuthority, name: &str, args: &[&str]) {
    submit_with(a, name, args, 1, "policy = \"never\"");
}

/// Submits job `shop/<name>` of `count` tasks of `/bin/sh ARGS` as uid 0, with the `[restart]`
/// table's body `restart`.
fn submit_with(a: &SoloAuthority, name: &str, args: &[&str], count: u32, restart: &str) {
    let args: Vec<String> = args.iter().map(|s| format!("{s:?}")).collect();
    let text = format!(
        r#"namespace = "shop"
name = "{name}"
command = "/bin/sh"
args = [{}]
env = {{ PATH = "/usr/bin:/bin" }}
uid = 0
gid = 0
count = {count}
spiffe_id = "spiffe://{TD}/ns/shop/{name}"

[restart]
{restart}
"#,
        args.join(", ")
    );
    let file = a.root.path().join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let out = a.cli(&["job", "run", &file.to_string_lossy()]);
    assert!(out.status.success(), "job run {name}: {}", show(&out));
}

async fn stop(c: &mut AuthorityClient, id: &str) {
    let ids = vec![id.to_owned()];
    c.call(|mut g| {
        let ids = ids.clone();
        async move {
            g.stop_allocs(pb::AllocIdsRequest { ids, lease: None })
                .await
        }
    })
    .await
    .unwrap();
}

async fn place(c: &mut AuthorityClient, id: &str, job: &str) {
    place_on(c, id, job, 0, "n1").await;
}

/// Places index `index` of version 1 of `shop/<job>` on `node`, as the scheduler would.
async fn place_on(c: &mut AuthorityClient, id: &str, job: &str, index: u32, node: &str) {
    let p = pb::AllocPlacement {
        id: id.into(),
        namespace: "shop".into(),
        job: job.into(),
        job_version: 1,
        index,
        node: node.into(),
        previous: String::new(),
    };
    c.call(|mut g| {
        let r = pb::PlaceAllocsRequest {
            allocs: vec![p.clone()],
            lease: None,
        };
        async move { g.place_allocs(r).await }
    })
    .await
    .unwrap();
}

/// The allocation `id` of `job` as `job status --json` shows it.
fn alloc_status(a: &SoloAuthority, job: &str, id: &str) -> Option<serde_json::Value> {
    let out = a.cli(&["job", "status", &format!("shop/{job}"), "--json"]);
    assert!(out.status.success(), "job status: {}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["allocs"]
        .as_array()?
        .iter()
        .find(|x| x["id"] == id)
        .cloned()
}

fn wait_state(a: &SoloAuthority, job: &str, id: &str, state: &str) -> serde_json::Value {
    wait_until(
        &format!("{job}/{id} to be reported {state}"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || alloc_status(a, job, id).filter(|s| s["state"] == state),
    )
}

/// Pids of processes whose command line is `sleep MARK`.
fn marked_sleeps() -> Vec<u32> {
    sleeps_marked(MARK)
}

/// Pids of processes whose command line is `sleep <mark>`.
fn sleeps_marked(mark: &str) -> Vec<u32> {
    let want = format!("sleep\0{mark}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want.as_bytes())
        })
        .collect()
}

fn fetch_as_stranger(socket: &Path) -> std::process::Output {
    std::process::Command::new(ringzero_bin())
        .args(["agent", "fetch", "--timeout", "3s", "--socket"])
        .arg(socket)
        .output()
        .unwrap()
}

#[test]
fn tasks_run_with_their_own_svid() {
    let a = SoloAuthority::start("job-proc", TD);
    let (agent, data_dir, socket) = start_agent(&a, "n1");
    let web = format!("spiffe://{TD}/ns/shop/web");

    // Only the authority derives ringzero: selectors.
    let out = a.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &web,
        "--node",
        "n1",
        "--selector",
        &format!("ringzero:job:{A}"),
        "--selector",
        "unix:uid:0",
    ]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("reserved"), "{}", show(&out));

    let bin = ringzero_bin();
    let script = format!(
        "for i in $(seq 1 150); do {bin} agent fetch --timeout 2s && break; sleep 0.2; done; \
         exec sleep {MARK}",
        bin = bin.display()
    );
    submit(&a, "web", &["-c", &script]);
    submit(&a, "three", &["-c", "exit 3"]);

    let rt = ringzero_tests::cluster::runtime();
    let mut admin = admin(&a);
    rt.block_on(place(&mut admin, A, "web"));

    // The task fetched its own SVID through the agent's socket.
    let log = data_dir.join("tasks").join(A).join("stdout.log");
    wait_until(
        "the task to print its SPIFFE ID",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains(&web).then_some(())
        },
    );
    let running = wait_state(&a, "web", A, "running");
    assert_eq!(running["desired"], "run", "{running}");
    assert_eq!(running["node_live"], true, "{running}");
    assert_eq!(marked_sleeps().len(), 1, "one task process");

    // This test process has the task's uid (0) but is not in its process group.
    let out = fetch_as_stranger(&socket);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&web),
        "{}",
        show(&out)
    );

    // Stopping the allocation ends the process and removes its entry.
    rt.block_on(async {
        admin
            .call(|mut g| async move {
                g.stop_allocs(pb::AllocIdsRequest {
                    ids: vec![A.into()],
                    lease: None,
                })
                .await
            })
            .await
            .unwrap();
    });
    wait_state(&a, "web", A, "stopped");
    wait_until(
        "the task process to end",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || marked_sleeps().is_empty().then_some(()),
    );
    let entry = rt.block_on(admin.call(|mut g| async move {
        g.get_entry(pb::GetEntryRequest {
            id: format!("alloc-{A}"),
        })
        .await
    }));
    assert_eq!(
        entry.unwrap_err().code(),
        Some(tonic::Code::NotFound),
        "the allocation's entry is gone"
    );

    // A task exiting with 3 under `never`.
    rt.block_on(place(&mut admin, B, "three"));
    let exited = wait_state(&a, "three", B, "exited");
    assert_eq!(exited["exit_code"], 3, "{exited}");
    assert_eq!(exited["restarts"], 0, "{exited}");
    drop(agent);
}

#[test]
fn a_restarted_agent_neither_reruns_nor_duplicates_tasks() {
    const ONCE: &str = "c3c3c3c3c3c3c3c3";
    const LONG: &str = "d4d4d4d4d4d4d4d4";
    const LONG_MARK: &str = "3172";
    let a = SoloAuthority::start("job-restart", TD);
    let (mut agent, data_dir, socket) = start_agent(&a, "n1");
    submit(&a, "once", &["-c", "echo ran-once"]);
    submit(&a, "long", &["-c", &format!("exec sleep {LONG_MARK}")]);
    let rt = ringzero_tests::cluster::runtime();
    let mut admin = admin(&a);
    rt.block_on(place(&mut admin, ONCE, "once"));
    rt.block_on(place(&mut admin, LONG, "long"));
    let exited = wait_state(&a, "once", ONCE, "exited");
    assert_eq!(exited["exit_code"], 0, "{exited}");
    wait_state(&a, "long", LONG, "running");
    let before = sleeps_marked(LONG_MARK);
    assert_eq!(before.len(), 1, "one long task process");
    let out_log = data_dir.join("tasks").join(ONCE).join("stdout.log");
    let runs = || {
        std::fs::read_to_string(&out_log)
            .unwrap_or_default()
            .matches("ran-once")
            .count()
    };
    assert_eq!(runs(), 1);

    // The agent dies (its tasks do not): `job status` shows its node down; it starts again on
    // the same data directory.
    agent.kill9();
    wait_until(
        "job status to show the node down",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || (alloc_status(&a, "long", LONG)?["node_live"] == false).then_some(()),
    );
    let cmd = agent_cmd(a.root.path(), &a.addr, None, &data_dir, &socket);
    let log = a.root.path().join("agent-n1-again.log");
    let agent = spawn_ready_agent("agent-n1-again", cmd, &log, Duration::from_secs(20));
    wait_until(
        "the restarted agent to skip the ended allocation",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || agent.log().contains("not started again").then_some(()),
    );
    // Give a wrongly started task time to show itself.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(runs(), 1, "the exited task ran again");
    let still = alloc_status(&a, "once", ONCE).unwrap();
    assert_eq!(still["state"], "exited", "{still}");
    assert_eq!(still["exit_code"], 0, "{still}");
    // The long task: the same single process, adopted and still reported running.
    assert_eq!(sleeps_marked(LONG_MARK), before, "adopted, not duplicated");
    let long = wait_until(
        "job status to show the node live again",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || alloc_status(&a, "long", LONG).filter(|l| l["node_live"] == true),
    );
    assert_eq!(long["state"], "running", "{long}");

    rt.block_on(stop(&mut admin, LONG));
    wait_until(
        "the long task to end",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || sleeps_marked(LONG_MARK).is_empty().then_some(()),
    );
    drop(agent);
}

#[test]
fn a_crashed_task_restarts_per_policy() {
    const CRASH: &str = "e5e5e5e5e5e5e5e5";
    let a = SoloAuthority::start("job-crash", TD);
    let (agent, data_dir, _socket) = start_agent(&a, "n1");
    submit_with(
        &a,
        "crash",
        &["-c", "echo crash-run; exit 3"],
        1,
        "policy = \"on-failure\"\nmax_restarts = 2\nbackoff = \"1s\"",
    );
    let rt = ringzero_tests::cluster::runtime();
    let mut admin = admin(&a);
    rt.block_on(place(&mut admin, CRASH, "crash"));
    // Runs at once, then after about 1 s and 2 s of backoff: failed after two restarts.
    let failed = wait_state(&a, "crash", CRASH, "failed");
    assert_eq!(failed["exit_code"], 3, "{failed}");
    assert_eq!(failed["restarts"], 2, "{failed}");
    assert_eq!(failed["desired"], "run", "{failed}");
    let log = data_dir.join("tasks").join(CRASH).join("stdout.log");
    let runs = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("crash-run")
            .count()
    };
    assert_eq!(runs(), 3, "one run and two restarts");
    // Failed is final: no fourth run.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs(), 3, "a failed task ran again");
    let still = alloc_status(&a, "crash", CRASH).unwrap();
    assert_eq!(still["state"], "failed", "{still}");
    drop(agent);
}

#[test]
fn each_task_gets_its_own_svid_and_nobody_elses() {
    // alpha[0] on n1, beta[0] on n2 (one job per node); alpha[1] on n2 and beta[1] on n1 (both
    // jobs on each node). Every task runs as uid 0, like this test.
    const ALPHA: [&str; 2] = ["f6f6f6f6f6f6f6f6", "a7a7a7a7a7a7a7a7"];
    const BETA: [&str; 2] = ["b8b8b8b8b8b8b8b8", "c9c9c9c9c9c9c9c9"];
    let a = SoloAuthority::start("job-svids", TD);
    let (agent1, dir1, _) = start_agent(&a, "n1");
    let (agent2, dir2, _) = start_agent(&a, "n2");
    let alpha = format!("spiffe://{TD}/ns/shop/alpha");
    let beta = format!("spiffe://{TD}/ns/shop/beta");
    // Each task fetches its SVIDs again and again, so fetches after every entry exists count.
    let script = format!(
        "while :; do {bin} agent fetch --timeout 2s; sleep 0.5; done",
        bin = ringzero_bin().display()
    );
    let restart = "policy = \"never\"";
    submit_with(&a, "alpha", &["-c", &script], 2, restart);
    submit_with(&a, "beta", &["-c", &script], 2, restart);
    let rt = ringzero_tests::cluster::runtime();
    let mut admin = admin(&a);
    rt.block_on(async {
        place_on(&mut admin, ALPHA[0], "alpha", 0, "n1").await;
        place_on(&mut admin, BETA[0], "beta", 0, "n2").await;
        place_on(&mut admin, ALPHA[1], "alpha", 1, "n2").await;
        place_on(&mut admin, BETA[1], "beta", 1, "n1").await;
    });
    let tasks = [
        (ALPHA[0], &dir1, "alpha", &alpha, &beta),
        (BETA[0], &dir2, "beta", &beta, &alpha),
        (ALPHA[1], &dir2, "alpha", &alpha, &beta),
        (BETA[1], &dir1, "beta", &beta, &alpha),
    ];
    let log = |dir: &Path, id: &str| {
        std::fs::read_to_string(dir.join("tasks").join(id).join("stdout.log")).unwrap_or_default()
    };
    for (id, _, job, _, _) in tasks {
        wait_state(&a, job, id, "running");
    }
    // Every task has received its own SVID at least twice: the later fetches came after all
    // four allocations (and their entries) existed.
    for (id, dir, _, own, _) in tasks {
        wait_until(
            &format!("task {id} to fetch its SVID twice"),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || (log(dir, id).matches(own.as_str()).count() >= 2).then_some(()),
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    for (id, dir, _, own, other) in tasks {
        let text = log(dir, id);
        assert!(text.contains(own.as_str()), "{id}: {text}");
        assert!(!text.contains(other.as_str()), "{id} got {other}: {text}");
    }

    rt.block_on(async {
        for id in ALPHA.iter().chain(&BETA) {
            stop(&mut admin, id).await;
        }
    });
    for (id, _, job, _, _) in tasks {
        wait_state(&a, job, id, "stopped");
    }
    drop((agent1, agent2));
}
