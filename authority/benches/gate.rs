//! What gating costs: the same gated, audited read (`ListNodes`) through the gRPC API of a
//! local 3-node cluster, with the gate on (mTLS identity + capability authorized by `policy`
//! through the verified-token cache + the call's audit record committed through Raft) and
//! with the gate bypassed (test build only: `gate::bypass`, no check, no record), and with only
//! the read's audit record skipped, in one run.
//! The verified-token cache itself, hit vs miss, is `cargo bench -p ringzero-policy --bench
//! token`.
//!
//! `cargo bench -p ringzero-authority --bench gate` (`RINGZERO_BENCH_SECS` per point, default 3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use ringzero_authority::bypass::{self, Mode};
use ringzero_proto::client::Profile;
use ringzero_proto::pb;

mod common;
use common::{closed_loop, secs, three_node_cluster};

async fn point(
    profile: &Profile,
    clients: usize,
    run: Duration,
) -> (f64, Duration, Duration, Duration) {
    closed_loop(profile, clients, run, |mut c, _, _| async move {
        c.call(|mut g| async move { g.list_nodes(pb::ListNodesRequest {}).await })
            .await
            .unwrap();
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
        point(&profile, 4, Duration::from_millis(500)).await;
        println!("ringzero gate bench: {run:?} per point; ListNodes through the gRPC API of 3 nodes in one process");
        for clients in [1, 16] {
            let mut rows = Vec::new();
            for (mode, label) in [
                (Mode::Off, "gated + audited"),
                (Mode::AuditRecords, "capability checked, no record"),
                (Mode::Everything, "gate bypassed"),
            ] {
                bypass::set(mode);
                let r = point(&profile, clients, run).await;
                rows.push(r);
                println!(
                    "{:<46} {:>8.0} calls/s  p50 {:>9.2?}  p99 {:>9.2?}  CPU/call {:>7.0?}",
                    format!("{clients} clients, {label}"),
                    r.0,
                    r.1,
                    r.2,
                    r.3
                );
            }
            println!(
                "{:<46} capability check alone: {:.2}x calls/s, {:.2}x p50 of bypassed",
                format!("{clients} clients"),
                rows[1].0 / rows[2].0,
                rows[1].1.as_secs_f64() / rows[2].1.as_secs_f64()
            );
        }
        bypass::set(Mode::Off);
        let _ = shutdown_tx.send(true);
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
}
