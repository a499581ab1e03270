//! Commit-to-servable on real processes (an authority, an agent, loopback), built with the bench
//! profile. N entries are created one after another for the agent's node, each followed by
//! `WaitEntryServable` on one admin connection:
//! - **commit → servable (waiter)**: from `CreateEntry`'s reply (the write is committed) to
//!   `WaitEntryServable`'s "servable" — what `entry create --wait` adds to a create: the feed,
//!   the agent's `MintSvids` (with its audit commit), its `ReportServable`, the wake-up;
//! - **commit → servable (agent)**: what the agent itself records
//!   (`ringzero_agent::ServableLatency`), from the entry's `changed_ms` to its
//!   SVID in the cache, read from its debug log;
//! - **`entry create --wait` (CLI)**: the whole command, a process per run (profile, TLS).
//!
//! `cargo bench -p ringzero-tests --bench entry_wait [-- N]` (default 200; the CLI runs are
//! N/10). Target: p99 ≤ 100 ms commit → servable on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use ringzero_proto::pb;
use ringzero_tests::agent::{agent_cmd, my_uid, spawn_ready_agent};
use ringzero_tests::{SoloAuthority, admin_client, show};

const TD: &str = "entrywait.bench";

fn quantiles(mut xs: Vec<Duration>) -> String {
    xs.sort_unstable();
    let q = |p: usize| xs[((xs.len() * p).div_ceil(100)).max(1) - 1];
    format!(
        "n={:4}  p50 {:6.1} ms  p90 {:6.1} ms  p99 {:6.1} ms  max {:6.1} ms",
        xs.len(),
        q(50).as_secs_f64() * 1e3,
        q(90).as_secs_f64() * 1e3,
        q(99).as_secs_f64() * 1e3,
        xs[xs.len() - 1].as_secs_f64() * 1e3
    )
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    let a = SoloAuthority::start("entry-wait-bench", TD);
    let token = a.node_token("n1", "10m");
    let dir = a.root.path().join("agent-n1");
    let socket = a.root.path().join("n1.sock");
    let token = format!("@{}", token.display());
    let mut cmd = agent_cmd(a.root.path(), &a.addr, Some(&token), &dir, &socket);
    cmd.env(
        "RINGZERO_LOG",
        "info,ringzero_agent::daemon::servable=debug",
    );
    let log = a.root.path().join("agent-n1.log");
    let agent = spawn_ready_agent("agent-n1", cmd, &log, Duration::from_secs(30));
    let uid = format!("unix:uid:{}", my_uid());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let waited = rt.block_on(async {
        let mut c = admin_client(&a);
        let mut waited = Vec::with_capacity(n);
        for i in 0..n + 5 {
            let req = pb::PutEntryRequest {
                spiffe_id: format!("spiffe://{TD}/ns/bench/e{i}"),
                parent: "n1".into(),
                selectors: vec![uid.clone()],
                ..Default::default()
            };
            let entry = c
                .call(|mut g| {
                    let req = req.clone();
                    async move { g.create_entry(req).await }
                })
                .await
                .unwrap()
                .entry
                .unwrap();
            let committed = Instant::now();
            let wait = pb::WaitEntryServableRequest {
                id: entry.id.clone(),
                revision: entry.revision,
                timeout_ms: 10_000,
            };
            let r = c
                .call(|mut g| {
                    let wait = wait.clone();
                    async move { g.wait_entry_servable(wait).await }
                })
                .await
                .unwrap();
            assert!(r.servable, "entry {i} not servable: {r:?}");
            // The first few warm up connections and caches.
            if i >= 5 {
                waited.push(committed.elapsed());
            }
        }
        waited
    });

    let cli_runs = (n / 10).max(1);
    let mut cli = Vec::with_capacity(cli_runs);
    for i in 0..cli_runs {
        let started = Instant::now();
        let out = a.cli(&[
            "entry",
            "create",
            "--spiffe-id",
            &format!("spiffe://{TD}/ns/bench/cli{i}"),
            "--node",
            "n1",
            "--selector",
            &uid,
            "--wait=10s",
        ]);
        assert!(out.status.success(), "{}", show(&out));
        cli.push(started.elapsed());
    }

    let agent_side: Vec<Duration> = agent
        .log()
        .lines()
        .filter(|l| l.contains("identity servable"))
        .filter_map(|l| {
            let v = l.split("latency_ms=").nth(1)?;
            let ms: u64 = v
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()?;
            Some(Duration::from_millis(ms))
        })
        .collect();

    println!("entry_wait ({n} entries, one agent, loopback):");
    println!("  commit → servable (waiter)  {}", quantiles(waited));
    if agent_side.is_empty() {
        println!("  commit → servable (agent)   (no debug lines in the agent's log)");
    } else {
        println!("  commit → servable (agent)   {}", quantiles(agent_side));
    }
    println!("  entry create --wait (CLI)   {}", quantiles(cli));
}
