//! Jobs run by a real agent, each task with its own SVID: an authority, an agent, a job whose
//! task fetches its SVID through the Workload API (`ringzero agent fetch`) and prints it; its
//! allocation placed with the admin's token (standing in for the scheduler). The task's log
//! shows its own identity, `job status` shows it running, a process of the same uid that is not
//! the task gets no such SVID, stopping the allocation ends the process and removes its entry,
//! and a task exiting with 3 under `never` is reported exited with 3. A user-written entry
//! naming a `ringzero:` selector is refused.
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
    let args: Vec<String> = args.iter().map(|s| format!("{s:?}")).collect();
    let text = format!(
        r#"namespace = "shop"
name = "{name}"
command = "/bin/sh"
args = [{}]
env = {{ PATH = "/usr/bin:/bin" }}
uid = 0
gid = 0
count = 1
spiffe_id = "spiffe://{TD}/ns/shop/{name}"

[restart]
policy = "never"
"#,
        args.join(", ")
    );
    let file = a.root.path().join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let out = a.cli(&["job", "run", &file.to_string_lossy()]);
    assert!(out.status.success(), "job run {name}: {}", show(&out));
}

async fn place(c: &mut AuthorityClient, id: &str, job: &str) {
    let p = pb::AllocPlacement {
        id: id.into(),
        namespace: "shop".into(),
        job: job.into(),
        job_version: 1,
        index: 0,
        node: "n1".into(),
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
    let want = format!("sleep\0{MARK}\0");
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
