//! Committed writes/s and p50/p99 latency through the gRPC API of a local 3-node cluster —
//! real gRPC over mTLS on loopback, gating and audit on every call, durable redb — at 1, 16 and
//! 64 concurrent clients, with the in-process Raft figure (no network, no gating) measured in the
//! same run.
//!
//! The write is `CreateJoinToken` for an agent node: a gated, audited, replicated command.
//! All three nodes and the clients share this process and its 2 cores.
//!
//! `cargo bench -p ringzero-authority --bench grpc` (`RINGZERO_BENCH_SECS` per point, default 3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use ringzero_authority::testing::Cluster;
use ringzero_proto::client::{AuthorityClient, Profile};
use ringzero_proto::pb;

mod common;
use common::{closed_loop, cluster_point, cpu_time, secs, three_node_cluster};

async fn write(c: &mut AuthorityClient, name: String) {
    c.call(|mut g| {
        let req = pb::CreateJoinTokenRequest {
            purpose: "agent".into(),
            node_name: name.clone(),
            ttl_seconds: 60,
            namespace: String::new(),
        };
        async move { g.create_join_token(req).await }
    })
    .await
    .unwrap();
}

async fn grpc_point(
    profile: &Profile,
    clients: usize,
    run: Duration,
) -> (f64, Duration, Duration, Duration) {
    closed_loop(profile, clients, run, |mut c, t, i| async move {
        write(&mut c, format!("b{t}-{i}")).await;
        c
    })
    .await
}

fn main() {
    let run = secs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (profile, shutdown_tx) = three_node_cluster(dir.path()).await;
        println!("ringzero gRPC bench: {run:?} per point; 3 authority nodes on loopback in one process; durable redb; mTLS + capability + audit per write");
        // Warm up connections and caches.
        grpc_point(&profile, 4, Duration::from_millis(500)).await;
        let mut results = Vec::new();
        for clients in [1, 16, 64] {
            let (rate, p50, p99, cpu) = grpc_point(&profile, clients, run).await;
            println!(
                "{:<36} {:>8.0} writes/s   p50 {:>9.2?}   p99 {:>9.2?}   CPU/write {:>7.0?}",
                format!("gRPC API, {clients} clients"),
                rate,
                p50,
                p99,
                cpu
            );
            results.push(rate);
        }
        let _ = shutdown_tx.send(true);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let config = ringzero_authority::raft_config("bench", Default::default()).unwrap();
        let cluster = Arc::new(Cluster::start(3, config, 1).await.unwrap());
        cluster.leader(&[], Duration::from_secs(10)).await.unwrap();
        let cpu = cpu_time();
        let (rate, p50, p99, n) = cluster_point(cluster, 64, run).await;
        let cpu = (cpu_time() - cpu) / n.max(1) as u32;
        println!(
            "{:<36} {:>8.0} commits/s  p50 {:>9.2?}   p99 {:>9.2?}   CPU/write {:>7.0?}   (gRPC at 64 = {:.2}x)",
            "in-process Raft, 64 proposers",
            rate,
            p50,
            p99,
            cpu,
            results[2] / rate
        );
    });
}
