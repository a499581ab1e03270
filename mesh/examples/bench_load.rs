//! Bench-only load generator for `mesh/bench/run.sh`: the target, the client and the table.
//!
//! ```text
//! bench_load echo ADDR                # the target: echo, or sink (see below), per connection
//! bench_load wait ADDR                # until ADDR accepts a connection (at most 20 s)
//! bench_load rr ADDR N                # N round trips of 1 KiB: p50_us, p99_us
//! bench_load stream ADDR BYTES PID... # BYTES one way through ADDR into the sink: gbps, and
//!                                     # the CPU time of each PID per GB: cpu_ms_per_gb_I
//! bench_load hold ADDR N PID...       # N open connections, then memory of each PID
//! bench_load rss PID...               # memory of each PID (VmRSS and RssAnon, KiB):
//!                                     # {idle,held}_{rss,anon}_kb_I
//! bench_load table FILE CONNS         # medians of "SETUP REP KEY VALUE" lines as a table
//! ```
//!
//! A connection to the target starts with one byte: `e` echoes everything back; `s` reads a
//! big-endian u64 length, swallows that many bytes and answers one byte, so a one-way stream
//! needs no half-close (which TLS proxies treat differently). Measurements print `KEY VALUE`
//! lines. The client side uses blocking sockets, one thread: the same client for every setup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MSG: usize = 1024;
const WARMUP: usize = 200;
const CHUNK: usize = 256 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str {
        args.get(i)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("missing argument {i}; see the file's docs"))
    };
    let addr = || -> SocketAddr { arg(1).parse().expect("ADDR: ip:port") };
    let num = |i: usize| -> usize { arg(i).parse().expect("a number") };
    let pids = |from: usize| -> Vec<u32> {
        args[from..]
            .iter()
            .map(|p| p.parse().expect("PID"))
            .collect()
    };
    match arg(0) {
        "echo" => echo(addr()),
        "wait" => wait(addr()),
        "rr" => rr(addr(), num(2)),
        "stream" => stream(addr(), num(2), &pids(3)),
        "hold" => hold(addr(), num(2), &pids(3)),
        "rss" => print_rss("idle", &pids(1)),
        "table" => table(arg(1), arg(2)),
        other => panic!("unknown command {other}; see the file's docs"),
    }
}

#[tokio::main]
async fn echo(addr: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            let Ok(mode) = s.read_u8().await else { return };
            if mode == b's' {
                let Ok(mut left) = s.read_u64().await else {
                    return;
                };
                while left > 0 {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    match s.read(&mut buf[..want]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => left -= n as u64,
                    }
                }
                let _ = s.write_all(b"k").await;
                return;
            }
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

fn connect(addr: SocketAddr, mode: u8) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&[mode]).unwrap();
    s
}

fn wait(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} does not accept");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rr(addr: SocketAddr, n: usize) {
    let mut s = connect(addr, b'e');
    let msg: Vec<u8> = (0..MSG).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; MSG];
    let mut times = Vec::with_capacity(n);
    for i in 0..n + WARMUP {
        let t = Instant::now();
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
        if i >= WARMUP {
            times.push(t.elapsed());
        }
    }
    assert_eq!(back, msg, "the echo came back altered");
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("p50_us {:.1}", us(times[n / 2]));
    println!("p99_us {:.1}", us(times[n * 99 / 100]));
}

fn stream(addr: SocketAddr, total: usize, pids: &[u32]) {
    let mut s = connect(addr, b's');
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 253) as u8).collect();
    let cpu_before: Vec<u64> = pids.iter().map(|p| cpu_ns(*p)).collect();
    let t = Instant::now();
    s.write_all(&(total as u64).to_be_bytes()).unwrap();
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        s.write_all(&chunk[..n]).unwrap();
        sent += n;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).unwrap();
    println!("gbps {:.3}", total as f64 / t.elapsed().as_secs_f64() / 1e9);
    for (i, (pid, before)) in pids.iter().zip(cpu_before).enumerate() {
        let ms = cpu_ns(*pid).saturating_sub(before) as f64 / 1e6;
        println!("cpu_ms_per_gb_{i} {:.0}", ms / (total as f64 / 1e9));
    }
}

/// CPU time of every thread of `pid` (first field of each /proc/PID/task/TID/schedstat).
fn cpu_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Opens `n` connections, each carried end to end (one byte echoed through it), then reports
/// the resident memory of `pids` while they are all open.
fn hold(addr: SocketAddr, n: usize, pids: &[u32]) {
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = connect(addr, b'e');
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        open.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    print_rss("held", pids);
}

/// A `NAME:   123 kB` line of /proc/PID/status, in KiB.
fn status_kb(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
}

/// Two lines per PID, in order: `WHEN_rss_kb_I KB` (VmRSS) and `WHEN_anon_kb_I KB` (RssAnon,
/// the part not shared with the page cache: heap, stacks, relocated data).
fn print_rss(when: &str, pids: &[u32]) {
    for (i, pid) in pids.iter().enumerate() {
        println!("{when}_rss_kb_{i} {}", status_kb(*pid, "VmRSS"));
        println!("{when}_anon_kb_{i} {}", status_kb(*pid, "RssAnon"));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Medians over repetitions of every `SETUP REP KEY VALUE` line, ratios against `direct`.
/// Expects the lines of each key in the order they were measured.
fn table(path: &str, conns: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut reps: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [setup, rep, key, value] = f[..] else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if !order.iter().any(|s| s == setup) {
            // Direct TCP first: the reference of every ratio.
            let at = if setup == "direct" { 0 } else { order.len() };
            order.insert(at, setup.to_owned());
        }
        reps.entry(setup.to_owned())
            .or_default()
            .insert(rep.to_owned());
        values
            .entry((setup.to_owned(), key.to_owned()))
            .or_default()
            .push(value);
    }
    let get = |setup: &str, key: &str| {
        values
            .get(&(setup.to_owned(), key.to_owned()))
            .map_or(f64::NAN, |v| median(v.clone()))
    };
    let pair = |setup: &str, key: &str, scale: f64, digits: usize| {
        let a = get(setup, &format!("{key}_0")) / scale;
        let b = get(setup, &format!("{key}_1")) / scale;
        if a.is_nan() {
            return "–".to_owned();
        }
        format!("{a:.digits$} / {b:.digits$}")
    };
    let mb = |setup: &str, when: &str| {
        if get(setup, &format!("{when}_rss_kb_0")).is_nan() {
            return "–".to_owned();
        }
        format!(
            "{} ({})",
            pair(setup, &format!("{when}_rss_kb"), 1024.0, 1),
            pair(setup, &format!("{when}_anon_kb"), 1024.0, 1)
        )
    };
    // The k-th round-trip batch of a setup ran right after the k-th of direct TCP: the median
    // of the differences of such pairs is the added latency, whatever the machine's load did
    // between batches.
    let added = |setup: &str| {
        let key = |s: &str| (s.to_owned(), "p50_us".to_owned());
        let (Some(own), Some(direct)) = (values.get(&key(setup)), values.get(&key("direct")))
        else {
            return f64::NAN;
        };
        median(own.iter().zip(direct).map(|(a, d)| a - d).collect())
    };
    let (d50, dgb) = (get("direct", "p50_us"), get("direct", "gbps"));
    println!(
        "| setup | reps | 1 KiB RR p50 µs | p50 over direct (paired) | p99 µs | one stream GB/s | × direct | CPU ms per GB (out / in) | VmRSS idle MB (out / in) (RssAnon) | VmRSS {conns} conns MB (out / in) (RssAnon) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for s in &order {
        let (p50, gb) = (get(s, "p50_us"), get(s, "gbps"));
        if p50.is_nan() {
            // Measured idle only.
            println!(
                "| {s} | {} | – | – | – | – | – | – | {} | – |",
                reps.get(s).map_or(0, |r| r.len()),
                mb(s, "idle")
            );
            continue;
        }
        let (cpu, idle, held) = if s == "direct" {
            ("–".to_owned(), "–".to_owned(), "–".to_owned())
        } else {
            (
                pair(s, "cpu_ms_per_gb", 1.0, 0),
                mb(s, "idle"),
                mb(s, "held"),
            )
        };
        println!(
            "| {s} | {} | {p50:.1} | +{:.1} (×{:.2}) | {:.1} | {gb:.2} | {:.2} | {cpu} | {idle} | {held} |",
            reps.get(s).map_or(0, |r| r.len()),
            added(s),
            p50 / d50,
            get(s, "p99_us"),
            gb / dgb,
        );
    }
}
