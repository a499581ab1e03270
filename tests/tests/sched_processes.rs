//! The scheduler daemon, real processes: an authority, two agents and `ringzero sched run`
//! with a profile of the built-in `scheduler` role. A job of count 2 gets one allocation on
//! each node; killing one agent (SIGKILL) gets its allocation marked LOST after `--lost-after`
//! and replaced on the other node; `job stop` gets them stopped; the scheduler's own profile
//! cannot add a user, apply a role or create an entry (denied and audited); of two schedulers
//! only the lease holder writes, and killing it lets the standby take over within
//! ttl + interval; SIGTERM releases the lease and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ringzero_proto::client::{AuthorityClient, Profile};
use ringzero_proto::pb;
use ringzero_tests::agent::{agent_cmd, my_uid, spawn_ready_agent};
use ringzero_tests::{Proc, SoloAuthority, ringzero, show, wait_until};

const TD: &str = "sched.test";
const LEASE_TTL: Duration = Duration::from_secs(3);
const INTERVAL: Duration = Duration::from_millis(300);

fn admin_client(a: &SoloAuthority) -> AuthorityClient {
    let p = Profile::from_toml(&std::fs::read_to_string(&a.profile).unwrap()).unwrap();
    AuthorityClient::new(p.credentials().unwrap(), p.authorities.clone())
}

fn allocs(a: &SoloAuthority) -> Vec<pb::Alloc> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut c = admin_client(a);
    rt.block_on(
        c.call(|mut g| async move { g.list_allocs(pb::ListAllocsRequest::default()).await }),
    )
    .unwrap()
    .allocs
}

fn start_agent(a: &SoloAuthority, name: &str) -> Proc {
    let token = a.node_token(name, "10m");
    let token = format!("@{}", token.display());
    let dir = a.root.path().join(format!("agent-{name}"));
    let socket = a.root.path().join(format!("{name}.sock"));
    let cmd = agent_cmd(a.root.path(), &a.addr, Some(&token), &dir, &socket);
    let log = a.root.path().join(format!("agent-{name}.log"));
    spawn_ready_agent(&format!("agent-{name}"), cmd, &log, Duration::from_secs(30))
}

fn sched_cmd(a: &SoloAuthority, profile: &Path, name: &str) -> Command {
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile").arg(profile).args([
        "sched",
        "run",
        "--interval",
        "300ms",
        "--lost-after",
        "2s",
        "--lease-ttl",
        "3s",
        "--name",
        name,
    ]);
    cmd
}

fn job_file(a: &SoloAuthority, name: &str, count: u32) -> String {
    let uid = my_uid();
    let path = a.root.path().join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "namespace = \"shop\"\nname = \"{name}\"\ncommand = \"/bin/sleep\"\n\
             args = [\"120\"]\nuid = {uid}\ngid = {uid}\ncount = {count}\n\
             spiffe_id = \"spiffe://{TD}/ns/shop/{name}\"\n"
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn audit(a: &SoloAuthority, filters: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["audit", "query", "--json", "--limit", "10000"];
    args.extend_from_slice(filters);
    let out = a.cli(&args);
    assert!(out.status.success(), "audit query: {}", show(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn as_sched(a: &SoloAuthority, profile: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile").arg(profile).args(args);
    ringzero_tests::run_timeout(cmd, Duration::from_secs(60))
}

fn running_of<'a>(all: &'a [pb::Alloc], job: &str) -> Vec<&'a pb::Alloc> {
    all.iter()
        .filter(|x| x.job == job && x.desired == pb::AllocDesired::Run as i32)
        .filter(|x| x.state != pb::AllocState::Lost as i32)
        .collect()
}

#[test]
fn scheduler_places_replaces_stops_and_fails_over() {
    let a = SoloAuthority::start("sched-proc", TD);
    let sched_profile: PathBuf = a.root.path().join("sched1.profile");
    let out = a.cli(&[
        "user",
        "add",
        "sched1",
        "--role",
        "scheduler",
        "--out",
        &sched_profile.to_string_lossy(),
    ]);
    assert!(out.status.success(), "user add sched1: {}", show(&out));
    let _n1 = start_agent(&a, "n1");
    let mut n2 = start_agent(&a, "n2");

    // --once --dry-run with nothing to do: prints a plan, writes nothing.
    let out = as_sched(&a, &sched_profile, &["sched", "run", "--dry-run", "--json"]);
    assert!(out.status.success(), "dry run: {}", show(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["written"], false);

    let log_a = a.root.path().join("sched-a.log");
    let mut sched_a = Proc::spawn("sched-a", sched_cmd(&a, &sched_profile, "sched-a"), &log_a);
    wait_until(
        "sched-a to hold the lease",
        Duration::from_secs(20),
        INTERVAL,
        || {
            assert!(sched_a.is_running(), "sched-a exited: {}", sched_a.log());
            sched_a.log().contains("lease acquired").then_some(())
        },
    );
    let log_b = a.root.path().join("sched-b.log");
    let mut sched_b = Proc::spawn("sched-b", sched_cmd(&a, &sched_profile, "sched-b"), &log_b);
    wait_until(
        "sched-b to stand by",
        Duration::from_secs(20),
        INTERVAL,
        || sched_b.log().contains("standing by").then_some(()),
    );

    // A job of count 2: one allocation on each node.
    let out = a.cli(&["job", "run", &job_file(&a, "web", 2)]);
    assert!(out.status.success(), "job run: {}", show(&out));
    let placed = wait_until(
        "web placed on n1 and n2",
        Duration::from_secs(20),
        INTERVAL,
        || {
            let all = allocs(&a);
            let web = running_of(&all, "web");
            let mut nodes: Vec<String> = web.iter().map(|x| x.node.clone()).collect();
            nodes.sort();
            (nodes == ["n1", "n2"]).then(|| all.clone())
        },
    );
    for x in &placed {
        assert_eq!(x.placed_by, format!("spiffe://{TD}/user/sched1"));
        assert_eq!(x.id.len(), 16);
    }
    // Only the holder wrote.
    assert!(!sched_b.log().contains("plan written"), "{}", sched_b.log());
    assert!(sched_a.log().contains("plan written"), "{}", sched_a.log());

    // The scheduler's own profile: no user, role or entry rights (denied, audited).
    let roles = a.root.path().join("evil.toml");
    std::fs::write(
        &roles,
        "[[role]]\nname = \"evil\"\nrights = [ { operation = \"user:write\", resource = \"user\" } ]\n",
    )
    .unwrap();
    let mallory = a.root.path().join("mallory.profile");
    let attempts: [&[&str]; 3] = [
        &[
            "user",
            "add",
            "mallory",
            "--role",
            "admin",
            "--out",
            mallory.to_str().unwrap(),
        ],
        &["role", "apply", roles.to_str().unwrap()],
        &[
            "entry",
            "create",
            "--spiffe-id",
            &format!("spiffe://{TD}/ns/shop/evil"),
            "--node",
            "n1",
            "--selector",
            "unix:uid:0",
        ],
    ];
    for args in attempts {
        let out = as_sched(&a, &sched_profile, args);
        assert!(
            !out.status.success(),
            "{args:?} was allowed: {}",
            show(&out)
        );
    }
    let sched_id = format!("spiffe://{TD}/user/sched1");
    let denied = audit(&a, &["--decision", "deny", "--actor", &sched_id]);
    for op in ["user:write", "role:write", "entry:write"] {
        assert!(
            denied.iter().any(|r| r["operation"] == op),
            "no denial of {op} recorded: {denied:?}"
        );
    }

    // Kill n2's agent: after --lost-after its allocation is LOST (and stopped), and the index
    // runs again on n1.
    let on_n2 = placed
        .iter()
        .find(|x| x.node == "n2" && x.job == "web")
        .unwrap()
        .clone();
    n2.kill9();
    let killed = Instant::now();
    wait_until(
        "n2's allocation lost and replaced on n1",
        Duration::from_secs(30),
        INTERVAL,
        || {
            let all = allocs(&a);
            let old = all.iter().find(|x| x.id == on_n2.id)?;
            let lost = old.state == pb::AllocState::Lost as i32
                && old.desired == pb::AllocDesired::Stop as i32;
            let web = running_of(&all, "web");
            let replaced = web.len() == 2
                && web.iter().all(|x| x.node == "n1")
                && web.iter().any(|x| x.index == on_n2.index);
            (lost && replaced).then_some(())
        },
    );
    let replaced_after = killed.elapsed();
    assert!(
        replaced_after >= Duration::from_secs(2),
        "lost before --lost-after: {replaced_after:?}"
    );
    eprintln!("lost and replaced {replaced_after:?} after the agent was killed");

    // job stop: the scheduler stops its allocations.
    let out = a.cli(&["job", "stop", "shop/web"]);
    assert!(out.status.success(), "job stop: {}", show(&out));
    wait_until(
        "web's allocations stopped",
        Duration::from_secs(20),
        INTERVAL,
        || {
            let all = allocs(&a);
            all.iter()
                .filter(|x| x.job == "web")
                .all(|x| x.desired == pb::AllocDesired::Stop as i32)
                .then_some(())
        },
    );

    // Kill the lease holder: the standby takes over within ttl + interval (plus its polling
    // and the ttl/10 margin), and places a new job.
    sched_a.kill9();
    let killed = Instant::now();
    wait_until(
        "sched-b to take over",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || sched_b.log().contains("lease acquired").then_some(()),
    );
    let took_over = killed.elapsed();
    eprintln!("standby took over {took_over:?} after the holder was killed");
    assert!(
        took_over <= LEASE_TTL + INTERVAL + Duration::from_secs(2),
        "took {took_over:?}"
    );
    let out = a.cli(&["job", "run", &job_file(&a, "api", 1)]);
    assert!(out.status.success(), "job run: {}", show(&out));
    wait_until(
        "api placed by sched-b",
        Duration::from_secs(20),
        INTERVAL,
        || (running_of(&allocs(&a), "api").len() == 1).then_some(()),
    );

    // The lease changed hands once each way; renewals added no records.
    let leases = audit(&a, &["--operation", "job:launch", "--resource", "ns"]);
    let grants = leases
        .iter()
        .filter(|r| r.to_string().contains("sched_lease_acquire"))
        .count();
    assert_eq!(grants, 2, "{leases:?}");

    // SIGTERM: the lease is released, exit 0.
    let status = sched_b
        .terminate(Duration::from_secs(10))
        .expect("sched-b exits");
    assert!(status.success(), "{status:?}: {}", sched_b.log());
    assert!(
        sched_b.log().contains("lease released"),
        "{}",
        sched_b.log()
    );
    let released = audit(&a, &["--operation", "job:launch", "--resource", "ns"]);
    assert!(
        released
            .iter()
            .any(|r| r.to_string().contains("sched_lease_release")),
        "{released:?}"
    );
}
