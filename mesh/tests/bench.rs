//! A quick in-process measurement, not a timed test: direct TCP against an outbound+inbound
//! sidecar pair on 127.0.0.1, for 1 KiB request/response round trips (p50, p99) and one-stream
//! throughput. Run with
//! `cargo test -p ringzero-mesh --release --test bench -- --ignored --nocapture`.
//! (Client, sidecars and target share one process and runtime; the benchmark with separate
//! processes, stunnel4 and RSS is `mesh/bench/run.sh`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use ringzero_mesh::config::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn round_trips(addr: SocketAddr, n: usize) -> (Duration, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let msg = payload(1024, 9);
    let mut back = vec![0u8; 1024];
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let t = Instant::now();
        s.write_all(&msg).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        if i >= 100 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    (times[n / 2], times[n * 99 / 100])
}

async fn throughput(addr: SocketAddr, total: usize) -> f64 {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut r, mut w) = s.into_split();
    let chunk = payload(256 * 1024, 3);
    let t = Instant::now();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < total {
            w.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        w
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < total {
        let n = r.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got += n;
    }
    let _w = writer.await.unwrap();
    // Echoed: every byte crossed the path twice.
    (2 * total) as f64 / t.elapsed().as_secs_f64() / 1e9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
async fn direct_tcp_against_a_sidecar_pair() {
    let ca = Ca::new(TD);
    let web_agent = Agent::start(Some(&ca.svid("/ns/shop/web")));
    let db_agent = Agent::start(Some(&ca.svid("/ns/shop/db")));
    let echo = Echo::start().await;
    let db = Running::start(Settings {
        workload_api: Some(db_agent.endpoint()),
        inbound: vec![format!("127.0.0.1:0={}", echo.addr)],
        allow: vec![format!("spiffe://{TD}/ns/shop/web")],
        ..Settings::default()
    })
    .await;
    let web = Running::start(Settings {
        workload_api: Some(web_agent.endpoint()),
        outbound: vec![format!(
            "127.0.0.1:0={}@spiffe://{TD}/ns/shop/db",
            db.inbound[0]
        )],
        ..Settings::default()
    })
    .await;
    // Warm up (first SVIDs, first handshake).
    let _ = round_trips(web.outbound[0], 10).await;

    let n = 20_000;
    let total = 512 * 1024 * 1024;
    for (name, addr) in [("direct TCP", echo.addr), ("sidecar pair", web.outbound[0])] {
        let (p50, p99) = round_trips(addr, n).await;
        let gbps = throughput(addr, total).await;
        println!("{name:>12}: 1 KiB RR p50 {p50:?} p99 {p99:?}; one stream {gbps:.2} GB/s");
    }
}
