//! The node API's figures, on real processes (an authority, an agent serving its node API, the
//! CLI), built with the bench profile:
//! - `job logs` of a 100 MB log: time to first byte and throughput, through the CLI;
//! - `job exec -- true`: the round trip with both audit commits (exec.start before the spawn,
//!   exec.end after the exit), p50/p99, straight to the agent over one connection and through
//!   the CLI (a process per run: profile, `ListAllocs`, a new mTLS connection).
//!
//! `cargo bench -p ringzero-tests --bench node_api [-- RUNS]` (RUNS: exec round trips per mode,
//! default 50; log reads are 5). Prints medians; the machine is noisy, so compare within one run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::time::{Duration, Instant};

use ringzero_proto::node::{ExecInput, ExecStart, exec_input, exec_output};
use ringzero_tests::jobs::{
    add_user, node_client, place_by_hand, run_shop_job, start_node_agent, wait_for_node_api,
};
use ringzero_tests::{SoloAuthority, admin_client, ringzero, run_timeout, show, wait_until};

const TD: &str = "nodeapi.bench";
const LOGS: &str = "b1b1b1b1b1b1b1b1";
const SHELL: &str = "b2b2b2b2b2b2b2b2";

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    let a = SoloAuthority::start("node-api-bench", TD);
    let (_agent, dir, _log) = start_node_agent(&a, "n1", &[]);
    run_shop_job(&a, TD, "logs", "echo start", 0, 1);
    run_shop_job(&a, TD, "shell", "echo up; exec sleep 3600", 65534, 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rt.block_on(async {
        let mut c = admin_client(&a);
        place_by_hand(&mut c, LOGS, "shop", "logs", 0, "n1").await;
        place_by_hand(&mut c, SHELL, "shop", "shell", 0, "n1").await;
        wait_for_node_api(&mut c, "shop", "shell", "n1").await
    });
    let task_log = |alloc: &str| dir.join("tasks").join(alloc).join("stdout.log");
    for (alloc, word) in [(LOGS, "start"), (SHELL, "up")] {
        let path = task_log(alloc);
        wait_until(
            "the tasks to log",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                std::fs::read_to_string(&path)
                    .ok()
                    .filter(|t| t.contains(word))
            },
        );
    }
    logs_100mb(&a, &task_log(LOGS));
    exec_round_trip(&a, &rt, &addr, runs);
}

/// The median of `v`, and the value at quantile `q`.
fn quantiles(mut v: Vec<Duration>, q: f64) -> (Duration, Duration) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(q))
}

fn logs_100mb(a: &SoloAuthority, log: &std::path::Path) {
    // The task has ended (it only echoes), so rotation leaves the file whole.
    wait_until(
        "the logs task to end",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let out = a.cli(&["job", "status", "shop/logs", "--json"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("\"exited\"")
                .then_some(())
        },
    );
    let line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklm\n";
    let mut big = String::with_capacity(100 << 20);
    while big.len() < 100_000_000 {
        big.push_str(line);
    }
    std::fs::write(log, &big).unwrap();
    let (mut first_bytes, mut wholes) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let start = Instant::now();
        let mut child = ringzero(a.root.path())
            .arg("--profile")
            .arg(&a.profile)
            .args(["job", "logs", "shop/logs"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let (mut total, mut first) = (0usize, None);
        loop {
            let n = out.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            first.get_or_insert_with(|| start.elapsed());
            total += n;
        }
        wholes.push(start.elapsed());
        assert!(child.wait().unwrap().success());
        assert_eq!(total, big.len());
        first_bytes.push(first.unwrap());
    }
    let (ttfb, _) = quantiles(first_bytes, 1.0);
    let (whole, worst) = quantiles(wholes, 1.0);
    println!(
        "job logs, 100 MB log, 5 reads: first byte p50 {ttfb:.1?}; whole log p50 {whole:.1?} ({:.0} MB/s), max {worst:.1?}",
        big.len() as f64 / 1e6 / whole.as_secs_f64()
    );
}

fn exec_round_trip(a: &SoloAuthority, rt: &tokio::runtime::Runtime, addr: &str, runs: usize) {
    let olga = add_user(a, "olga", "operator", None);
    let mut c = {
        let _in_rt = rt.enter();
        node_client(&olga, TD, "n1", addr)
    };
    // Paced: each exec costs two of the node's 20 AppendNodeAudit calls per second.
    let pace = Duration::from_millis(150);
    let mut direct = Vec::new();
    for _ in 0..runs {
        std::thread::sleep(pace);
        let start = Instant::now();
        let first = ExecInput {
            input: Some(exec_input::Input::Start(ExecStart {
                alloc_id: SHELL.into(),
                argv: vec!["true".into()],
                reason: "bench".into(),
                tty: false,
                window: None,
            })),
        };
        let code = rt.block_on(async {
            let mut s = c
                .exec(tokio_stream::iter(vec![first]))
                .await
                .unwrap()
                .into_inner();
            loop {
                if let Some(exec_output::Output::Exit(x)) =
                    s.message().await.unwrap().unwrap().output
                {
                    return x.code;
                }
            }
        });
        assert_eq!(code, 0);
        direct.push(start.elapsed());
    }
    let mut cli = Vec::new();
    for _ in 0..runs {
        std::thread::sleep(pace);
        let start = Instant::now();
        let mut cmd = ringzero(a.root.path());
        cmd.arg("--profile").arg(&olga).args([
            "job",
            "exec",
            "shop/shell",
            "--alloc",
            SHELL,
            "--reason",
            "bench",
            "--",
            "true",
        ]);
        let out = run_timeout(cmd, Duration::from_secs(60));
        assert!(out.status.success(), "{}", show(&out));
        cli.push(start.elapsed());
    }
    let (d50, d99) = quantiles(direct, 0.99);
    let (c50, c99) = quantiles(cli, 0.99);
    println!("exec true ({runs} runs), straight to the agent: p50 {d50:.1?}, p99 {d99:.1?}");
    println!("exec true ({runs} runs), through the CLI:       p50 {c50:.1?}, p99 {c99:.1?}");
}
