//! Helpers shared by the authority benches.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringzero_authority::testing::{Cluster, audit_only};

/// Seconds per measured point: `RINGZERO_BENCH_SECS`, default 3.
pub(crate) fn secs() -> Duration {
    Duration::from_secs_f64(
        std::env::var("RINGZERO_BENCH_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3.0),
    )
}

/// (p50, p99) of `lat`, which it sorts.
pub(crate) fn percentiles(lat: &mut [Duration]) -> (Duration, Duration) {
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

/// `proposers` tasks writing audit-only commands through the in-process cluster for `run`:
/// (commands/s, p50, p99, commits).
pub(crate) async fn cluster_point(
    cluster: Arc<Cluster>,
    proposers: usize,
    run: Duration,
) -> (f64, Duration, Duration, usize) {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..proposers {
        let c = cluster.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0;
            while start.elapsed() < run {
                let t = Instant::now();
                c.write(audit_only(&format!("p{p}-{i}")), Duration::from_secs(10))
                    .await
                    .expect("write");
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("proposer"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = all.len();
    let (p50, p99) = percentiles(&mut all);
    (n as f64 / elapsed, p50, p99, n)
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat` (clock ticks
/// of 10 ms). Quoted per write, it is much less sensitive to other load than a rate is.
pub(crate) fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ")" (0-based 11, 12).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}
