//! The scheduler's watch stream, real processes: an authority and one agent.
//!
//! - `WatchSched` (as a scheduler-role user) sends a snapshot at open, then one after a job
//!   submit and one after an allocation change — and none while nothing changes, even when
//!   another caller's audited read commits a record meanwhile.
//! - `ringzero sched run` follows the stream: with nothing changing for 5 s, the audit log
//!   gains no record from the scheduler (it polled three audited reads per pass before), while
//!   a `job run` still gets placed within about a second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ringzero_proto::client::{AuthorityClient, Profile};
use ringzero_proto::pb;
use ringzero_tests::agent::{agent_cmd, my_uid, spawn_ready_agent};
use ringzero_tests::{Proc, SoloAuthority, ringzero, show, wait_until};

const TD: &str = "watch.test";

fn client_for(profile: &Path) -> AuthorityClient {
    let p = Profile::from_toml(&std::fs::read_to_string(profile).unwrap()).unwrap();
    AuthorityClient::new(p.credentials().unwrap(), p.authorities.clone())
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

fn job_file(a: &SoloAuthority, name: &str) -> String {
    let uid = my_uid();
    let path = a.root.path().join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "namespace = \"shop\"\nname = \"{name}\"\ncommand = \"/bin/sleep\"\n\
             args = [\"120\"]\nuid = {uid}\ngid = {uid}\ncount = 1\n\
             spiffe_id = \"spiffe://{TD}/ns/shop/{name}\"\n"
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn scheduler_user(a: &SoloAuthority) -> PathBuf {
    let profile = a.root.path().join("sched1.profile");
    let out = a.cli(&[
        "user",
        "add",
        "sched1",
        "--role",
        "scheduler",
        "--out",
        &profile.to_string_lossy(),
    ]);
    assert!(out.status.success(), "user add sched1: {}", show(&out));
    profile
}

/// The audit records whose actor is `actor`.
fn records_of(a: &SoloAuthority, actor: &str) -> usize {
    let out = a.cli(&[
        "audit", "query", "--json", "--limit", "10000", "--actor", actor,
    ]);
    assert!(out.status.success(), "audit query: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// The next complete snapshot within `within` (heartbeats skipped), or `None`.
async fn next_snapshot(
    stream: &mut tonic::Streaming<pb::SchedSnapshot>,
    within: Duration,
) -> Option<pb::SchedSnapshot> {
    let deadline = tokio::time::Instant::now() + within;
    let mut whole: Option<pb::SchedSnapshot> = None;
    loop {
        let part = tokio::time::timeout_at(deadline, stream.message())
            .await
            .ok()?
            .expect("the stream stays up")
            .expect("the stream does not end");
        if part.heartbeat {
            continue;
        }
        let w = whole.get_or_insert_with(|| pb::SchedSnapshot {
            sequence: part.sequence,
            allocs_revision: part.allocs_revision,
            ..Default::default()
        });
        assert_eq!(
            w.sequence, part.sequence,
            "parts of one snapshot stay together"
        );
        w.jobs.extend(part.jobs);
        w.allocs.extend(part.allocs);
        w.nodes.extend(part.nodes);
        if part.complete {
            return whole;
        }
    }
}

#[test]
fn the_watch_pushes_on_change_only_and_an_idle_scheduler_writes_no_audit_record() {
    let a = SoloAuthority::start("sched-watch", TD);
    let profile = scheduler_user(&a);
    let _n1 = start_agent(&a, "n1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // ---- the stream itself ----
    let sched_id = format!("spiffe://{TD}/user/sched1");
    let before_open = records_of(&a, &sched_id);
    let mut c = client_for(&profile);
    let mut stream = rt
        .block_on(c.call(|mut g| async move {
            g.watch_sched(pb::WatchSchedRequest {
                namespace: String::new(),
            })
            .await
        }))
        .unwrap();
    let first = rt
        .block_on(next_snapshot(&mut stream, Duration::from_secs(10)))
        .expect("a snapshot at open");
    assert!(first.jobs.is_empty() && first.allocs.is_empty());
    assert!(
        first.nodes.iter().any(|n| n.name == "n1" && n.live),
        "{:?}",
        first.nodes
    );
    // Opening was audited once.
    assert_eq!(
        records_of(&a, &sched_id),
        before_open + 1,
        "one record for the open"
    );

    // Nothing changes: nothing is pushed, even though this audited read commits a record.
    let out = a.cli(&["job", "list"]);
    assert!(out.status.success(), "job list: {}", show(&out));
    assert!(
        rt.block_on(next_snapshot(&mut stream, Duration::from_secs(2)))
            .is_none(),
        "no snapshot while nothing changes"
    );

    // A job submit: pushed.
    let submitted = Instant::now();
    let out = a.cli(&["job", "run", &job_file(&a, "web")]);
    assert!(out.status.success(), "job run: {}", show(&out));
    let s = rt
        .block_on(next_snapshot(&mut stream, Duration::from_secs(5)))
        .expect("a snapshot after the submit");
    assert_eq!(s.jobs.len(), 1, "{:?}", s.jobs);
    assert!(s.sequence > first.sequence);
    eprintln!("snapshot after job run: {:?}", submitted.elapsed());

    // An allocation change (an operator's placement): pushed.
    let mut admin = client_for(&a.profile);
    let placed = rt
        .block_on(admin.call(|mut g| async move {
            g.place_allocs(pb::PlaceAllocsRequest {
                allocs: vec![pb::AllocPlacement {
                    id: "watchtest0000001".into(),
                    namespace: "shop".into(),
                    job: "web".into(),
                    job_version: 1,
                    index: 0,
                    node: "n1".into(),
                    previous: String::new(),
                }],
                lease: None,
            })
            .await
        }))
        .unwrap();
    let s = rt
        .block_on(next_snapshot(&mut stream, Duration::from_secs(5)))
        .expect("a snapshot after the placement");
    assert_eq!(s.allocs.len(), 1);
    assert!(s.allocs_revision >= placed.allocs_revision);
    // The agent runs it and reports: pushed too; then quiet again.
    wait_until(
        "the agent's report pushed",
        Duration::from_secs(20),
        Duration::ZERO,
        || {
            rt.block_on(next_snapshot(&mut stream, Duration::from_secs(1)))
                .filter(|s| {
                    s.allocs
                        .iter()
                        .any(|x| x.state == pb::AllocState::Running as i32)
                })
                .map(|_| ())
        },
    );
    let quiet = rt.block_on(async {
        // Reports may trail the first running state by a moment.
        while next_snapshot(&mut stream, Duration::from_secs(2))
            .await
            .is_some()
        {}
        next_snapshot(&mut stream, Duration::from_secs(3)).await
    });
    assert!(quiet.is_none(), "no snapshot once nothing changes");
    drop(stream);
    let out = a.cli(&["job", "stop", "shop/web"]);
    assert!(out.status.success(), "job stop: {}", show(&out));

    // ---- the scheduler daemon on the stream ----
    let log = a.root.path().join("sched.log");
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile").arg(&profile).args([
        "sched",
        "run",
        "--interval",
        "300ms",
        "--lost-after",
        "2s",
        "--lease-ttl",
        "3s",
        "--name",
        "sched-w",
    ]);
    let mut sched = Proc::spawn("sched", cmd, &log);
    wait_until(
        "the scheduler to follow the watch",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            assert!(sched.is_running(), "sched exited: {}", sched.log());
            sched.log().contains("scheduler watch open").then_some(())
        },
    );
    let out = a.cli(&["job", "run", &job_file(&a, "api")]);
    assert!(out.status.success(), "job run: {}", show(&out));
    let running = |job: &str| {
        let mut c = client_for(&a.profile);
        rt.block_on(
            c.call(|mut g| async move { g.list_allocs(pb::ListAllocsRequest::default()).await }),
        )
        .unwrap()
        .allocs
        .into_iter()
        .any(|x| {
            x.job == job
                && x.desired == pb::AllocDesired::Run as i32
                && x.state == pb::AllocState::Running as i32
        })
    };
    wait_until(
        "api running",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || running("api").then_some(()),
    );
    // Let the web allocation's stop and the reports settle, then stay idle for 5 s.
    std::thread::sleep(Duration::from_secs(3));
    let before = records_of(&a, &sched_id);
    std::thread::sleep(Duration::from_secs(5));
    let after = records_of(&a, &sched_id);
    assert_eq!(
        after,
        before,
        "an idle scheduler added audit records: {}",
        sched.log()
    );
    eprintln!("idle scheduler: {} audit records in 5 s", after - before);

    // Still placed at once.
    let started = Instant::now();
    let out = a.cli(&["job", "run", &job_file(&a, "cart")]);
    assert!(out.status.success(), "job run: {}", show(&out));
    let placed = wait_until(
        "cart placed",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let mut c = client_for(&a.profile);
            let all = rt
                .block_on(c.call(|mut g| async move {
                    g.list_allocs(pb::ListAllocsRequest::default()).await
                }))
                .unwrap()
                .allocs;
            all.iter()
                .any(|x| x.job == "cart" && x.desired == pb::AllocDesired::Run as i32)
                .then(|| started.elapsed())
        },
    );
    eprintln!("job run -> placed: {placed:?}");
    assert!(
        placed < Duration::from_millis(2500),
        "placed after {placed:?}"
    );
    assert!(sched.is_running(), "{}", sched.log());
    let status = sched.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", sched.log());
}
