//! Committed commands/s and commit latency through an in-process 3-node cluster on durable
//! redb, at 1, 16 and 64 concurrent proposers, with the raw redb durable-commit rate measured in
//! the same run as the baseline.
//!
//! `cargo bench -p ringzero-authority --bench raft` (`RINGZERO_BENCH_SECS` per point, default 3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, TableDefinition};
use ringzero_authority::testing::Cluster;

mod common;
use common::{cluster_point, percentiles, secs};

const TABLE: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("bench");

/// One durable redb transaction per record: the floor under every Raft append.
fn raw_redb(run: Duration) -> (f64, Duration, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::create(dir.path().join("raw.redb")).expect("db");
    let value = vec![7u8; 300];
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < run {
        let t = Instant::now();
        let tx = db.begin_write().expect("tx");
        tx.open_table(TABLE)
            .expect("table")
            .insert(i, value.as_slice())
            .expect("insert");
        tx.commit().expect("commit");
        lat.push(t.elapsed());
        i += 1;
    }
    let rate = i as f64 / start.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(&mut lat);
    (rate, p50, p99)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let run = secs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("ringzero raft bench: {run:?} per point, 3 nodes in one process, durable redb");
    let (raw, p50, p99) = raw_redb(run);
    println!(
        "{:<34} {:>10.0} commits/s   p50 {:>8.2?}   p99 {:>8.2?}",
        "raw redb durable commit (baseline)", raw, p50, p99
    );
    rt.block_on(async {
        let config = ringzero_authority::raft_config("bench", Default::default()).expect("config");
        let cluster = Arc::new(Cluster::start(3, config, 1).await.expect("cluster"));
        cluster.leader(&[], Duration::from_secs(10)).await.expect("leader");
        // Warm up.
        cluster_point(cluster.clone(), 4, Duration::from_millis(500)).await;
        for proposers in [1, 16, 64] {
            let (rate, p50, p99, n) = cluster_point(cluster.clone(), proposers, run).await;
            println!(
                "{:<34} {:>10.0} commands/s  p50 {:>8.2?}   p99 {:>8.2?}   ({n} commits, {:.2}x raw redb)",
                format!("3-node cluster, {proposers} proposers"),
                rate,
                p50,
                p99,
                rate / raw,
            );
        }
    });
}
