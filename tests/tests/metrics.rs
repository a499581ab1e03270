//! `/metrics`, `/ready` and `/live` of `authority run`, `agent run` and `sched run`, each
//! started with `--metrics ADDR` as real processes; every scrape is parsed with a Prometheus
//! text-format parser (`prometheus-parse`), and the families the operators' dashboards need are
//! there with plausible values after a workload fetched its SVID. `authority status --json`
//! reports the same health.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use ringzero_tests::agent::my_uid;
use ringzero_tests::jobs::start_node_agent;
use ringzero_tests::mesh::http_get;
use ringzero_tests::{Proc, SoloAuthority, free_addr, ringzero, run_timeout, show, wait_until};

const TD: &str = "metrics.test";

/// Scrapes `addr` and parses it; panics unless it answers 200 in the text format.
fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not the Prometheus text format: {e}\n{body}"))
}

/// The value of the sample `name` whose labels include `labels` (a counter, a gauge or an
/// untyped sample; a histogram's count).
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

fn ready(addr: SocketAddr) -> (u16, String) {
    http_get(addr, "/ready")
}

#[test]
fn every_daemon_serves_parseable_metrics_and_probes() {
    let auth_m: SocketAddr = free_addr().parse().unwrap();
    let a = SoloAuthority::start_with("metrics", TD, &["--metrics", &auth_m.to_string()]);
    let agent_m: SocketAddr = free_addr().parse().unwrap();
    let (agent, _dir, _log) = start_node_agent(&a, "n1", &["--metrics", &agent_m.to_string()]);

    // A workload of this uid fetches its SVID through the agent.
    let me = format!("spiffe://{TD}/ns/test/me");
    let out = a.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &me,
        "--node",
        "n1",
        "--selector",
        &format!("unix:uid:{}", my_uid()),
    ]);
    assert!(out.status.success(), "entry create: {}", show(&out));
    let socket = a.root.path().join("n1.sock");
    wait_until(
        "the workload to fetch its SVID",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let mut cmd = ringzero(a.root.path());
            cmd.args(["agent", "fetch", "--socket"]).arg(&socket);
            run_timeout(cmd, Duration::from_secs(10))
                .status
                .success()
                .then_some(())
        },
    );

    // The scheduler, with the admin's profile.
    let sched_m: SocketAddr = free_addr().parse().unwrap();
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile").arg(&a.profile).args([
        "sched",
        "run",
        "--name",
        "s1",
        "--metrics",
        &sched_m.to_string(),
    ]);
    let sched = Proc::spawn("sched", cmd, &a.root.path().join("sched.log"));

    // The authority.
    assert_eq!(http_get(auth_m, "/live").0, 200);
    assert_eq!(ready(auth_m).0, 200, "{:?}", ready(auth_m));
    let s = scrape(auth_m);
    assert!(value(&s, "ringzero_raft_term", &[]).unwrap() >= 1.0);
    assert_eq!(value(&s, "ringzero_raft_is_leader", &[]), Some(1.0));
    assert_eq!(value(&s, "ringzero_raft_leader", &[]), Some(1.0));
    let applied = value(&s, "ringzero_raft_applied_index", &[]).unwrap();
    assert!(applied >= 1.0 && value(&s, "ringzero_raft_apply_lag", &[]).unwrap() <= 1000.0);
    assert!(value(&s, "ringzero_raft_writes_total", &[]).unwrap() >= 1.0);
    assert!(value(&s, "ringzero_raft_write_seconds", &[]).unwrap() >= 1.0);
    assert!(value(&s, "ringzero_raft_batch_commands", &[]).unwrap() >= 1.0);
    assert!(
        value(
            &s,
            "ringzero_gate_decisions_total",
            &[("operation", "entry:write"), ("decision", "allow")]
        )
        .unwrap()
            >= 1.0,
        "{:?}",
        s.samples
    );
    assert!(value(&s, "ringzero_svids_issued_total", &[("kind", "workload")]).unwrap() >= 1.0);
    assert_eq!(
        value(&s, "ringzero_join_attempts_total", &[("outcome", "joined")]),
        Some(1.0)
    );
    assert_eq!(value(&s, "ringzero_entries", &[]), Some(1.0));
    assert!(value(&s, "ringzero_audit_tree_size", &[]).unwrap() >= 3.0);
    for kind in ["x509-ca", "biscuit", "jwt", "audit"] {
        let secs = value(&s, "ringzero_key_expiry_seconds", &[("kind", kind)])
            .unwrap_or_else(|| panic!("no expiry of the {kind} key"));
        assert!(secs > 30.0 * 86400.0, "{kind}: {secs}");
        assert_eq!(
            value(&s, "ringzero_key_expiring_soon", &[("kind", kind)]),
            Some(0.0)
        );
    }
    // A denial is counted too.
    let bogus = a.root.path().join("bogus.token");
    std::fs::write(&bogus, "not-a-token").unwrap();
    let out = a.cli(&["--token", &format!("@{}", bogus.display()), "entry", "list"]);
    assert!(!out.status.success());
    let s = scrape(auth_m);
    assert!(
        s.samples
            .iter()
            .any(|x| x.metric == "ringzero_gate_decisions_total"
                && x.labels.get("decision") == Some("deny")),
        "no deny counted: {:?}",
        s.samples
    );

    // `authority status --json` tells a script the same.
    let out = a.cli(&["authority", "status", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["ready"], true, "{st}");
    assert_eq!(st["writable"], true, "{st}");
    assert!(st["last_log_index"].as_u64().unwrap() >= st["last_applied"].as_u64().unwrap());
    assert_eq!(st["expiring_keys"], serde_json::json!([]), "{st}");

    // The agent.
    assert_eq!(
        ready(agent_m).0,
        200,
        "{:?} {}",
        ready(agent_m),
        agent.log()
    );
    let s = scrape(agent_m);
    assert_eq!(value(&s, "ringzero_agent_cached_svids", &[]), Some(1.0));
    assert_eq!(value(&s, "ringzero_agent_ready", &[]), Some(1.0));
    let expiry = value(&s, "ringzero_agent_svid_earliest_expiry_seconds", &[]).unwrap();
    assert!(expiry > 60.0, "{expiry}");
    let stale = value(&s, "ringzero_agent_feed_staleness_seconds", &[]).unwrap();
    assert!((0.0..30.0).contains(&stale), "{stale}");
    assert!(value(&s, "ringzero_agent_feed_events_total", &[]).unwrap() >= 1.0);
    assert!(
        value(
            &s,
            "ringzero_agent_workload_fetch_seconds",
            &[("method", "FetchX509SVID")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        value(&s, "ringzero_agent_workload_connections", &[]),
        Some(0.0)
    );
    // The entry reached this agent on its live feed: its commit-to-servable time is observed.
    assert!(value(&s, "ringzero_agent_entry_servable_seconds", &[]).unwrap() >= 1.0);

    // The scheduler takes its lease and says so.
    wait_until(
        "the scheduler to hold its lease and be ready",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let s = scrape(sched_m);
            (ready(sched_m).0 == 200 && value(&s, "ringzero_sched_lease_held", &[]) == Some(1.0))
                .then_some(())
        },
    );
    assert_eq!(http_get(sched_m, "/nothing").0, 404);
    drop(sched);
}
