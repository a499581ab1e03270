//! `entry create|update --wait` end to end, all real processes: an authority, an agent enrolled
//! as n7, and a workload (this test) fetching through the Workload API. `--wait` returns only
//! once the agent holds the SVID (the fetch right after succeeds at once, no retry); an entry on
//! a node whose agent is down times out naming the node; only callers allowed to read the
//! entry may wait on it, only agents report; waits are bounded in time and number.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ringzero_proto::pb;
use ringzero_tests::agent::{agent_cmd, my_uid, spawn_ready_agent};
use ringzero_tests::{Proc, SoloAuthority, admin_client, client_of, show};

const TD: &str = "entrywait.test";

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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The SPIFFE IDs the Workload API hands this process now, in one fetch (no retry).
fn fetch_once(rt: &tokio::runtime::Runtime, socket: &Path) -> Result<Vec<String>, String> {
    rt.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
            .await
            .map_err(|e| e.to_string())?;
        let svids = client
            .fetch_all_x509_svids()
            .await
            .map_err(|e| e.to_string())?;
        Ok(svids.iter().map(|s| s.spiffe_id().to_string()).collect())
    })
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn create_wait_returns_once_a_workload_can_fetch_and_update_wait_too() {
    let a = SoloAuthority::start("entry-wait", TD);
    let (agent, _dir, socket) = start_agent(&a, "n7");
    let rt = runtime();
    assert!(
        fetch_once(&rt, &socket).is_err(),
        "no identity before the entry exists"
    );

    let uid = format!("unix:uid:{}", my_uid());
    let web = format!("spiffe://{TD}/ns/test/web");
    let out = a.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &web,
        "--node",
        "n7",
        "--selector",
        &uid,
        "--wait=20s",
    ]);
    assert!(out.status.success(), "entry create --wait: {}", show(&out));
    assert!(
        stderr(&out).contains("servable on node n7"),
        "{}",
        show(&out)
    );
    let id = stdout(&out);
    assert_eq!(id.len(), 32, "the id alone on stdout: {id:?}");
    // Right after --wait returned: one fetch, no retry, gets the identity.
    let ids = fetch_once(&rt, &socket).unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(ids, vec![web.clone()]);

    // An update with --wait: the next fetch already carries the new identity.
    let api = format!("spiffe://{TD}/ns/test/api");
    let out = a.cli(&["entry", "update", &id, "--spiffe-id", &api, "--wait"]);
    assert!(out.status.success(), "entry update --wait: {}", show(&out));
    let ids = fetch_once(&rt, &socket).unwrap();
    assert_eq!(ids, vec![api], "{}", agent.log());
}

#[test]
fn wait_on_a_node_without_a_running_agent_times_out_naming_it() {
    let a = SoloAuthority::start("entry-wait-down", TD);
    let uid = format!("unix:uid:{}", my_uid());

    // A node that never enrolled.
    let started = Instant::now();
    let out = a.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://{TD}/ns/test/ghost"),
        "--node",
        "n9",
        "--selector",
        &uid,
        "--wait=2s",
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert_eq!(
        stdout(&out).len(),
        32,
        "the entry was created: its id is printed"
    );
    let err = stderr(&out);
    assert!(err.contains("timed out after 2s"), "{err}");
    assert!(err.contains("node n9"), "{err}");
    assert!(err.contains("is its agent running"), "{err}");
    assert!(took < Duration::from_secs(15), "bounded: {took:?}");

    // An agent that ran, then stopped: its last report stands for what it could serve then,
    // never for a newer entry.
    let (mut agent, _dir, _socket) = start_agent(&a, "n7");
    let out = a.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://{TD}/ns/test/first"),
        "--node",
        "n7",
        "--selector",
        &uid,
        "--wait=20s",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    agent.terminate(Duration::from_secs(10));
    let out = a.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://{TD}/ns/test/second"),
        "--node",
        "n7",
        "--selector",
        &uid,
        "--wait=2s",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("node n7: its agent serves up to revision"),
        "{err}"
    );
    assert!(err.contains("no entry feed from it is open"), "{err}");
}

/// One `WaitEntryServable` call with `client`.
async fn wait_call(
    client: &mut ringzero_proto::client::AuthorityClient,
    id: &str,
    timeout_ms: u32,
) -> Result<pb::WaitEntryServableReply, ringzero_proto::client::ClientError> {
    let req = pb::WaitEntryServableRequest {
        id: id.to_owned(),
        revision: 0,
        timeout_ms,
    };
    client
        .call(|mut c| {
            let req = req.clone();
            async move { c.wait_entry_servable(req).await }
        })
        .await
}

#[test]
fn only_readers_wait_only_agents_report_and_waits_are_bounded() {
    let a = SoloAuthority::start("entry-wait-bounds", TD);
    let (_agent, dir, _socket) = start_agent(&a, "n7");
    let uid = format!("unix:uid:{}", my_uid());
    let out = a.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://{TD}/ns/test/ghost"),
        "--node",
        "n9",
        "--selector",
        &uid,
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let ghost = stdout(&out);
    let rt = runtime();

    rt.block_on(async {
        // An agent's credentials (svid:mint on its node) may not wait on entries.
        let mut node = client_of(&dir.join("node.profile"));
        let e = wait_call(&mut node, &ghost, 100).await.unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");

        // Only an agent reports, for the node of its own certificate.
        let mut admin = admin_client(&a);
        let e = admin
            .call(|mut c| async move {
                c.report_servable(pb::ReportServableRequest {
                    revision: u64::MAX,
                    unservable: Vec::new(),
                })
                .await
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
        // A report past the bounds is refused.
        let too_many = pb::ReportServableRequest {
            revision: 1,
            unservable: vec![
                pb::UnservableEntry {
                    id: "e".into(),
                    revision: 1,
                    reason: "x".into(),
                };
                65
            ],
        };
        let e = node
            .call(|mut c| {
                let r = too_many.clone();
                async move { c.report_servable(r).await }
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");

        // A timeout past the cap is cut to 10 s: the call answers "pending", not later.
        let started = Instant::now();
        let r = wait_call(&mut admin, &ghost, 600_000).await.unwrap();
        let took = started.elapsed();
        assert!(!r.servable);
        assert_eq!(r.nodes.len(), 1);
        assert_eq!(r.nodes[0].node, "n9");
        assert_eq!(r.nodes[0].state, "pending");
        assert!(!r.nodes[0].live);
        assert!(
            took >= Duration::from_secs(9) && took < Duration::from_secs(14),
            "capped at 10 s: {took:?}"
        );

        // At most 16 waits at once per caller: of 20 concurrent ones, 4 are refused at once.
        let mut calls = Vec::new();
        for _ in 0..20 {
            let mut c = admin_client(&a);
            let id = ghost.clone();
            calls.push(tokio::spawn(
                async move { wait_call(&mut c, &id, 3000).await },
            ));
        }
        let mut refused = 0;
        let mut pending = 0;
        for c in calls {
            match c.await.unwrap() {
                Ok(r) => {
                    assert!(!r.servable);
                    pending += 1;
                }
                Err(e) => {
                    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted), "{e}");
                    refused += 1;
                }
            }
        }
        assert_eq!((pending, refused), (16, 4));
    });
}
