//! Randomized fault schedules: partitions, message loss, delay (and so reordering), crashes and
//! restarts, while a client writes. Afterwards every node holds the same log, every
//! acknowledged command is in it exactly once, and no command is in it twice.
//!
//! `RINGZERO_FAULT_SCHEDULES` sets how many schedules run (default 200);
//! `RINGZERO_FAULT_SEED=<seed>` replays one schedule (the seed is printed on failure).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use ringzero_authority::NodeId;
use ringzero_authority::testing::{Cluster, audit_only, test_config};

const WRITE_TIMEOUT: Duration = Duration::from_millis(600);

async fn run_schedule(seed: u64) -> Result<usize, String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut c = Cluster::start(3, test_config(), seed)
        .await
        .map_err(|e| e.to_string())?;
    let all: Vec<NodeId> = vec![1, 2, 3];
    let mut stopped: BTreeSet<NodeId> = BTreeSet::new();
    let mut attempted = BTreeSet::new();
    let mut acked = Vec::new();
    for step in 0..10 {
        match rng.random_range(0..7) {
            0 => {
                let lonely = all[rng.random_range(0..3)];
                let rest: Vec<NodeId> = all.iter().copied().filter(|&n| n != lonely).collect();
                c.router.partition(&[lonely], &rest);
            }
            1 => c.router.heal(),
            2 => {
                let drop_rate = rng.random_range(0.0..0.3);
                let delay = Duration::from_millis(rng.random_range(0..30));
                c.router.with_faults(|f| {
                    f.drop_rate = drop_rate;
                    f.max_delay = delay;
                });
            }
            3 => {
                let n = all[rng.random_range(0..3)];
                if !stopped.contains(&n) {
                    c.restart_node(n).await.map_err(|e| e.to_string())?;
                }
            }
            4 if stopped.is_empty() => {
                let n = all[rng.random_range(0..3)];
                c.stop_node(n).await.map_err(|e| e.to_string())?;
                stopped.insert(n);
            }
            5 => {
                if let Some(&n) = stopped.iter().next() {
                    c.start_node(n).await.map_err(|e| e.to_string())?;
                    stopped.remove(&n);
                }
            }
            _ => {}
        }
        for k in 0..2 {
            let id = format!("s{seed}-{step}-{k}");
            attempted.insert(id.clone());
            if c.write(audit_only(&id), WRITE_TIMEOUT).await.is_ok() {
                acked.push(id);
            }
        }
    }
    // Heal everything, bring every node back, and make the leader commit in its own term.
    c.router.heal();
    for n in stopped {
        c.start_node(n).await.map_err(|e| e.to_string())?;
    }
    c.write(audit_only("final"), common::T)
        .await
        .map_err(|e| format!("final write: {e}"))?;
    let log = common::try_converged(&c).await?;
    for id in &acked {
        let n = log.iter().filter(|x| *x == id).count();
        if n != 1 {
            return Err(format!("acknowledged {id} appears {n} times"));
        }
    }
    let mut seen = BTreeSet::new();
    for id in &log {
        if !seen.insert(id) {
            return Err(format!("{id} applied twice"));
        }
        if id != "final" && !attempted.contains(id) {
            return Err(format!("{id} was never proposed"));
        }
    }
    Ok(acked.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_committed_command_is_lost_or_applied_twice() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let (first, count) = match env("RINGZERO_FAULT_SEED") {
        Some(seed) => (seed, 1),
        None => (0x5EED_0000, env("RINGZERO_FAULT_SCHEDULES").unwrap_or(200)),
    };
    let gate = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for seed in first..first + count {
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            (seed, run_schedule(seed).await)
        });
    }
    let mut acked_total = 0;
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((_, Ok(n))) => acked_total += n,
            Ok((seed, Err(e))) => failures.push(format!(
                "schedule {seed} failed: {e}\n  replay: RINGZERO_FAULT_SEED={seed} cargo test -p ringzero-authority --test fault_schedules"
            )),
            Err(e) => failures.push(format!("a schedule panicked: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{count} schedules, {acked_total} acknowledged writes, all present exactly once");
    assert!(acked_total > 0);
}
