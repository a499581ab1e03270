//! `ringzero bench write` against a real single-node authority process: the JSON report has a
//! rate, no errors, ordered percentiles, and the node's process and CPU found through /proc.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ringzero_tests::{SoloAuthority, show};

#[test]
fn bench_write_reports_rate_latency_and_the_nodes_cpu() {
    let a = SoloAuthority::start("bench-write", "bench.test");
    let out = a.cli(&[
        "bench",
        "write",
        "--clients",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "500ms",
        "--json",
    ]);
    assert!(out.status.success(), "bench write: {}", show(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("one JSON object: {e}\n{}", show(&out)));
    assert_eq!(j["target"], "ringzero");
    assert_eq!(j["clients"], 4);
    assert_eq!(j["duration_seconds"], 1.0);
    assert!(j["writes_per_second"].as_f64().unwrap() > 0.0, "{j}");
    assert!(j["writes"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["errors"]["total"], 0, "{j}");
    let lat = |k: &str| j["latency_ms"][k].as_f64().unwrap();
    assert!(lat("p50") > 0.0, "{j}");
    assert!(
        lat("p50") <= lat("p99") && lat("p99") <= lat("p99_9") && lat("p99_9") <= lat("max"),
        "{j}"
    );
    let nodes = j["cpu"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{j}");
    assert_eq!(nodes[0]["address"], a.addr.as_str());
    assert_eq!(nodes[0]["pid"], a.proc.pid(), "{j}");
    assert!(nodes[0]["cpu_seconds"].as_f64().is_some(), "{j}");
    assert!(j["cpu"]["bench"]["cpu_seconds"].as_f64().is_some(), "{j}");
    // A single node keeps its term: no election during the run.
    assert_eq!(j["raft_term"]["changes"], 0, "{j}");

    // Every write was audited: the records of this run are in the log.
    let out = a.cli(&[
        "audit",
        "query",
        "--json",
        "--limit",
        "5",
        "--operation",
        "node:enroll",
    ]);
    assert!(out.status.success(), "audit query: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bench-"),
        "{}",
        show(&out)
    );

    // Bad flags: usage error.
    let out = a.cli(&["bench", "write", "--clients", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}
