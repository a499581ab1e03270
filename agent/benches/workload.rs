//! The SPIFFE Workload API server under load: fetch latency from the identity cache, and the
//! fan-out of one rotation to 1,000 open `FetchX509SVID` streams.
//!
//! The server is the real one (`testing::Serving`: the Workload API server with the default
//! attestor: `SO_PEERCRED`, pidfd, `/proc` reads through its gate — no executable read, since
//! no entry selects a path or hash — and re-verification before every message) on a temp unix
//! socket, serving an `SvidCache` holding real P-256 SVIDs issued by a
//! `ringzero_policy::svid::SigningCa`, each for an entry selecting `unix:uid:<this process's
//! uid>`, so every identity in the cache is the caller's.
//!
//! 1. **Fetch latency**, with 1 and 50 identities in the cache (every message carries all of
//!    them: 1 or 50 SVIDs, keys and bundles), single client and 16 concurrent clients; a fetch is
//!    a `FetchX509SVID` call up to its first message:
//!    - *new connection per fetch* — connect, HTTP/2 handshake, attestation, call, first message,
//!      close: what `spire-agent api fetch` or any short-lived process costs the agent;
//!    - *long-lived connection, new stream per fetch* — one connection per client, opened
//!      before timing, a new stream for every fetch (the attestation is paid once);
//!    - *`ringzero agent fetch` client* — `fetch::fetch_x509` (new connection, and the client
//!      validates every SVID against its bundle), single client.
//! 2. **1,000 concurrent streams on one agent**: 1,000 `FetchX509SVID` streams, 16 per
//!    connection (the default `WorkloadLimits::max_streams_per_connection`, so 63 connections,
//!    within the default 128 per uid), and once more as 1,000 connections with one stream each (for
//!    that point only the limits are raised to 2,048 connections, 2,048 per uid, as 1,000
//!    separate workload processes would need). After every stream has its first message, one
//!    identity is rotated (`SvidCache::upsert` with a freshly issued certificate) and the time
//!    until each stream receives the new certificate is recorded: p50/p99/max per stream, and the
//!    total fan-out (upsert until the last stream has it). Each of these points runs alone in a
//!    fresh child process (this executable, re-run with `RINGZERO_BENCH_FANOUT_POINT=<n>`), so
//!    that its RSS starts clean. RSS is `VmRSS` of that process, which holds the server *and*
//!    the clients: the delta covers both ends of every connection and stream.
//!
//! 3. **Many streams on one agent, the agent alone**: the server runs in a child process and
//!    the `FetchX509SVID` streams come from a second process, so the server's `VmRSS` growth is
//!    the agent's cost per open stream: 10,000 streams 16 per connection (625 connections from
//!    one uid, the limits raised to 1,024), and 4,000 streams one per connection (as 4,000
//!    workload processes would open them; limits raised to 4,096). Then one rotation: the time
//!    from the upsert until every stream has its new message (wall clock; both processes on
//!    this machine), and the server's CPU time per stream meanwhile.
//!
//! The allocator is mimalloc, as in the `ringzero` binary. Except in 3, server, clients and
//! the tokio runtime (2 worker threads) share this process and
//! its cores, so client-side decoding is part of every figure. The open-file soft limit is raised to the
//! hard limit first (each connection costs 4 descriptors here: the client and server ends of
//! the socket, and the attestation's pidfd and `/proc/<pid>` directory).
//!
//! `cargo bench -p ringzero-agent --bench workload` (`RINGZERO_BENCH_SECS` per latency point,
//! default 3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ringzero_agent::testing::Serving;
use ringzero_agent::{Identity, SECURITY_HEADER, SvidCache, WorkloadLimits, fetch_x509};
use ringzero_policy::selector::Selector;
use ringzero_policy::svid::SigningCa;
use ringzero_policy::testing::CaBuilder;
use ringzero_policy::{SpiffeId, TrustDomain};
use ringzero_proto::transport::unix_channel;
use ringzero_proto::workload as pb;
use ringzero_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// The allocator of the `ringzero` binary, which runs the agent: memory and CPU figures are
/// the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TIMEOUT: Duration = Duration::from_secs(60);

type Client = SpiffeWorkloadApiClient<Channel>;

fn secs() -> Duration {
    Duration::from_secs_f64(
        std::env::var("RINGZERO_BENCH_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3.0),
    )
}

/// (p50, p99, max) of `lat`, which it sorts.
fn percentiles(lat: &mut [Duration]) -> (Duration, Duration, Duration) {
    if lat.is_empty() {
        return (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    }
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99), lat[lat.len() - 1])
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// `VmRSS` of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Raises the open-file soft limit to the hard limit; (soft before, soft after, hard).
fn raise_nofile() -> (Option<u64>, Option<u64>, Option<u64>) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current != before.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: before.maximum,
                maximum: before.maximum,
            },
        );
    }
    let after = getrlimit(Resource::Nofile);
    (before.current, after.current, after.maximum)
}

fn shown(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// A fresh key and SVID for entry `entry`, selecting this process's uid.
fn identity(ca: &SigningCa, entry: &str) -> Identity {
    let id = SpiffeId::parse(&format!("spiffe://example.org/bench/{entry}")).unwrap();
    ringzero_agent::testing::identity(ca, entry, id, vec![Selector::uid(my_uid())])
}

fn entry(i: usize) -> String {
    format!("id-{i:03}")
}

struct Server {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    cache: SvidCache,
    ca: SigningCa,
    serving: Serving,
}

impl Server {
    /// A server whose cache holds `identities` identities of this process.
    async fn start(identities: usize, limits: WorkloadLimits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let cache = SvidCache::new();
        let ca = CaBuilder::new(&td(), "bench-ca")
            .made_at(SystemTime::now())
            .build();
        cache.set_bundle(td(), vec![ca.cert_der().clone()]);
        cache.replace_all((0..identities).map(|i| identity(&ca, &entry(i))).collect());
        let serving = Serving::start(&socket, cache.clone(), limits)
            .await
            .unwrap();
        Self {
            _dir: dir,
            socket,
            cache,
            ca,
            serving,
        }
    }

    async fn stop(self) {
        self.serving.stop(TIMEOUT).await.unwrap();
    }
}

async fn connect(socket: &Path) -> Result<Client, String> {
    let channel = unix_channel(socket).await.map_err(|e| e.to_string())?;
    Ok(SpiffeWorkloadApiClient::new(channel).max_decoding_message_size(32 * 1024 * 1024))
}

fn request() -> tonic::Request<pb::X509svidRequest> {
    let mut req = tonic::Request::new(pb::X509svidRequest {});
    req.metadata_mut().insert(
        SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

/// Opens a `FetchX509SVID` stream on `client`.
async fn open(client: &mut Client) -> Result<tonic::Streaming<pb::X509svidResponse>, String> {
    Ok(client
        .fetch_x509svid(request())
        .await
        .map_err(|e| e.to_string())?
        .into_inner())
}

/// One `FetchX509SVID` call up to its first message (the stream is then dropped); the number of
/// SVIDs in it.
async fn fetch_first(client: &mut Client) -> Result<usize, String> {
    let mut stream = open(client).await?;
    let first = stream
        .message()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("stream ended without a message")?;
    Ok(first.svids.len())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    NewConnection,
    NewStream,
    FetchClient,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::NewConnection => "new connection per fetch",
            Mode::NewStream => "long-lived conn, new stream/fetch",
            Mode::FetchClient => "fetch_x509 (new conn + validation)",
        }
    }
}

struct Point {
    rate: f64,
    p50: Duration,
    p99: Duration,
    cpu: Duration,
    errors: usize,
}

/// `clients` tasks fetching in `mode` for `run`; every answer must carry `svids` SVIDs.
async fn fetch_point(
    socket: &Path,
    mode: Mode,
    clients: usize,
    svids: usize,
    run: Duration,
) -> Point {
    let mut long_lived = Vec::new();
    for _ in 0..clients {
        long_lived.push(if mode == Mode::NewStream {
            Some(connect(socket).await.unwrap())
        } else {
            None
        });
    }
    let start = Instant::now();
    let cpu = cpu_time();
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in long_lived {
        let socket = socket.to_path_buf();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            while start.elapsed() < run {
                let s = Instant::now();
                let got = match (&mut conn, mode) {
                    (Some(client), _) => fetch_first(client).await,
                    (None, Mode::FetchClient) => fetch_x509(&socket, TIMEOUT)
                        .await
                        .map(|v| v.len())
                        .map_err(|e| e.to_string()),
                    (None, _) => match connect(&socket).await {
                        Ok(mut client) => fetch_first(&mut client).await,
                        Err(e) => Err(e),
                    },
                };
                match got {
                    Ok(n) if n == svids => lat.push(s.elapsed()),
                    Ok(n) => panic!("{n} SVIDs, expected {svids}"),
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("fetch error ({}): {e}", mode.label());
                        }
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (lat, e) = r.unwrap();
        all.extend(lat);
        errors += e;
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu) / u32::try_from(all.len().max(1)).unwrap_or(u32::MAX);
    let (p50, p99, _) = percentiles(&mut all);
    Point {
        rate,
        p50,
        p99,
        cpu,
        errors,
    }
}

struct FanOut {
    connections: usize,
    open_time: Duration,
    rss_before: u64,
    rss_open: u64,
    rss_rotated: u64,
    upsert: Duration,
    p50: Duration,
    p99: Duration,
    /// The last stream's arrival: the total fan-out time.
    max: Duration,
    /// CPU time of the measuring process from the upsert to the last arrival: the server and
    /// the clients in 2, the server alone in 3.
    cpu: Duration,
}

/// How a child process reports a fan-out point to the parent (one line).
const FAN_OUT_TAG: &str = "FANOUT";

impl FanOut {
    fn encode(&self) -> String {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        format!(
            "{FAN_OUT_TAG} {} {} {} {} {} {} {} {} {} {}",
            self.connections,
            ns(self.open_time),
            self.rss_before,
            self.rss_open,
            self.rss_rotated,
            ns(self.upsert),
            ns(self.p50),
            ns(self.p99),
            ns(self.max),
            ns(self.cpu),
        )
    }

    fn decode(output: &str) -> Option<Self> {
        let line = output.lines().find_map(|l| l.strip_prefix(FAN_OUT_TAG))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let d = |i: usize| Duration::from_nanos(v[i]);
        (v.len() == 10).then(|| Self {
            connections: usize::try_from(v[0]).unwrap_or(usize::MAX),
            open_time: d(1),
            rss_before: v[2],
            rss_open: v[3],
            rss_rotated: v[4],
            upsert: d(5),
            p50: d(6),
            p99: d(7),
            max: d(8),
            cpu: d(9),
        })
    }
}

/// Set to a fan-out point's index in a child process: it runs that point alone and reports it.
const CHILD_ENV: &str = "RINGZERO_BENCH_FANOUT_POINT";
/// Streams in each fan-out point.
const STREAMS: usize = 1000;

/// The fan-out points: (label, identities in the cache, streams per connection, limits).
fn fan_out_points() -> Vec<(&'static str, usize, usize, WorkloadLimits)> {
    let default = WorkloadLimits::default();
    let per_conn = usize::try_from(default.max_streams_per_connection).unwrap_or(1);
    let raised = WorkloadLimits {
        max_connections: 2048,
        max_connections_per_uid: 2048,
        ..default
    };
    vec![
        ("1 identity, 16 streams/conn", 1, per_conn, default),
        ("50 identities, 16 streams/conn", 50, per_conn, default),
        ("1 identity, 1 stream/conn (limits 2048)", 1, 1, raised),
    ]
}

/// `streams` streams, `per_conn` per connection, on a server with `identities` identities;
/// then one rotation.
async fn fan_out(
    streams: usize,
    per_conn: usize,
    identities: usize,
    limits: WorkloadLimits,
) -> FanOut {
    let server = Server::start(identities, limits).await;
    // The first connection hashes this (large) executable; keep that out of the figures.
    fetch_first(&mut connect(&server.socket).await.unwrap())
        .await
        .unwrap();
    let rotated = identity(&server.ca, &entry(0));
    let new_leaf = Arc::new(rotated.chain[0].to_vec());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_kib();

    let opening = Instant::now();
    let connections = streams.div_ceil(per_conn);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let mut tasks = tokio::task::JoinSet::new();
    let mut opened = 0;
    for _ in 0..connections {
        let client = connect(&server.socket).await.unwrap();
        for _ in 0..per_conn.min(streams - opened) {
            opened += 1;
            let mut client = client.clone();
            let ready = ready_tx.clone();
            let leaf = Arc::clone(&new_leaf);
            tasks.spawn(async move {
                let mut stream = open(&mut client).await.unwrap();
                let first = stream.message().await.unwrap().unwrap();
                assert_eq!(first.svids.len(), identities);
                ready.send(()).unwrap();
                loop {
                    let msg = stream
                        .message()
                        .await
                        .unwrap()
                        .expect("stream ended before the rotation");
                    if msg
                        .svids
                        .iter()
                        .any(|s| s.x509_svid.starts_with(leaf.as_slice()))
                    {
                        // Keep the stream (and its connection) open until every stream has it.
                        return (Instant::now(), stream, client);
                    }
                }
            });
        }
    }
    drop(ready_tx);
    for _ in 0..streams {
        tokio::time::timeout(TIMEOUT, ready_rx.recv())
            .await
            .expect("streams did not all get their first message")
            .expect("a stream task failed");
    }
    let open_time = opening.elapsed();
    let rss_open = rss_kib();

    let cpu0 = cpu_time();
    let t0 = Instant::now();
    server.cache.upsert(rotated);
    let upsert = t0.elapsed();
    let mut arrivals = Vec::with_capacity(streams);
    let mut keep = Vec::with_capacity(streams);
    while let Some(done) = tokio::time::timeout(TIMEOUT, tasks.join_next())
        .await
        .expect("rotation did not reach every stream")
    {
        let (at, stream, client) = done.unwrap();
        arrivals.push(at.duration_since(t0));
        keep.push((stream, client));
    }
    assert_eq!(arrivals.len(), streams);
    let cpu = cpu_time() - cpu0;
    let rss_rotated = rss_kib();
    let (p50, p99, max) = percentiles(&mut arrivals);
    drop(keep);
    server.stop().await;
    FanOut {
        connections,
        open_time,
        rss_before,
        rss_open,
        rss_rotated,
        upsert,
        p50,
        p99,
        max,
        cpu,
    }
}

/// Set in the server process of an agent-alone point (3): its index in [`AGENT_ALONE`].
const AGENT_ALONE_ENV: &str = "RINGZERO_BENCH_AGENT_ALONE";
/// Set in its client process: `<socket> <streams> <per connection>`.
const CLIENTS_ENV: &str = "RINGZERO_BENCH_CLIENTS";
/// The agent-alone points: (label, streams, streams per connection). 4,000 connections of one
/// stream each take 16,000 descriptors between the two processes (the server holds a pidfd and
/// a `/proc` directory per connection), within a 20,000 limit.
const AGENT_ALONE: [(&str, usize, usize); 2] = [
    ("10000 streams, 16/conn (limits 1024)", 10_000, 16),
    ("4000 streams, 1/conn (limits 4096)", 4_000, 1),
];

fn unix_nanos() -> u64 {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    u64::try_from(d.as_nanos()).unwrap()
}

/// The client process of point 3: opens `streams` streams, `per_conn` per connection, prints
/// `READY` once each has its first message, then `DONE <arrival unix ns>…` (sorted) once each has
/// a second one (the rotation), and keeps them open until stdin closes.
async fn many_clients(socket: &Path, streams: usize, per_conn: usize) {
    use std::io::Write;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
    let mut opened = 0;
    let mut keep = Vec::new();
    while opened < streams {
        let client = connect(socket).await.unwrap();
        for _ in 0..per_conn.min(streams - opened) {
            opened += 1;
            let mut client = client.clone();
            let (ready, done) = (ready_tx.clone(), done_tx.clone());
            keep.push(tokio::spawn(async move {
                let mut stream = open(&mut client).await.unwrap();
                stream.message().await.unwrap().unwrap();
                ready.send(()).unwrap();
                stream.message().await.unwrap().expect("a rotation");
                done.send(unix_nanos()).unwrap();
                // Held open until the process exits.
                std::future::pending::<()>().await;
                drop((stream, client));
            }));
        }
    }
    for _ in 0..streams {
        ready_rx.recv().await.unwrap();
    }
    println!("READY");
    std::io::stdout().flush().unwrap();
    let mut arrivals = Vec::with_capacity(streams);
    for _ in 0..streams {
        arrivals.push(
            tokio::time::timeout(TIMEOUT, done_rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    arrivals.sort_unstable();
    let line: Vec<String> = arrivals.iter().map(u64::to_string).collect();
    println!("DONE {}", line.join(" "));
    std::io::stdout().flush().unwrap();
    // Until the server has measured: it closes our stdin.
    tokio::task::spawn_blocking(|| {
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
    })
    .await
    .unwrap()
    .unwrap();
    drop(keep);
}

/// The server process of a point of 3: `streams` streams, `per_conn` per connection.
async fn agent_alone(streams: usize, per_conn: usize) -> FanOut {
    use std::io::BufRead;
    let connections = streams.div_ceil(per_conn);
    let room = connections.next_power_of_two();
    let limits = WorkloadLimits {
        max_connections: room,
        max_connections_per_uid: room,
        max_streams_per_connection: u32::try_from(per_conn.max(16)).unwrap(),
        ..WorkloadLimits::default()
    };
    let server = Server::start(1, limits).await;
    fetch_first(&mut connect(&server.socket).await.unwrap())
        .await
        .unwrap();
    let rotated = identity(&server.ca, &entry(0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_kib();
    let opening = Instant::now();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env_remove(AGENT_ALONE_ENV)
        .env(
            CLIENTS_ENV,
            format!("{} {streams} {per_conn}", server.socket.display()),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (line_tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if line_tx.send(l).is_err() {
                break;
            }
        }
    });
    let ready = tokio::time::timeout(TIMEOUT, lines.recv()).await.unwrap();
    assert_eq!(ready.as_deref(), Some("READY"), "the client process failed");
    let open_time = opening.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_open = rss_kib();

    let t0 = unix_nanos();
    let cpu0 = cpu_time();
    let s = Instant::now();
    server.cache.upsert(rotated);
    let upsert = s.elapsed();
    let done = tokio::time::timeout(TIMEOUT, lines.recv())
        .await
        .unwrap()
        .unwrap();
    let mut arrivals: Vec<Duration> = done
        .strip_prefix("DONE ")
        .expect("DONE")
        .split(' ')
        .map(|v| Duration::from_nanos(v.parse::<u64>().unwrap().saturating_sub(t0)))
        .collect();
    assert_eq!(arrivals.len(), streams);
    let cpu = cpu_time() - cpu0;
    let rss_rotated = rss_kib();
    drop(child.stdin.take());
    child.wait().unwrap();
    let (p50, p99, max) = percentiles(&mut arrivals);
    server.stop().await;
    FanOut {
        connections,
        open_time,
        rss_before,
        rss_open,
        rss_rotated,
        upsert,
        p50,
        p99,
        max,
        cpu,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs this executable with `env` = the point's index, and prints the fan-out it reports.
fn report_point(label: &str, (env, i): (&str, usize), streams: usize) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .env(env, i.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "point {label} failed: {stdout}");
    let f = FanOut::decode(&stdout).expect("no fan-out report from the child");
    let grown = f.rss_open.saturating_sub(f.rss_before);
    println!(
        "{:<40} {:>6} {:>9.0?} {:>7.1}MiB {:>10.1} {:>10.1?} {:>10.2?} {:>10.2?} {:>10.2?} {:>10.1}",
        label,
        f.connections,
        f.open_time,
        mib(grown),
        grown as f64 / streams as f64,
        f.upsert,
        f.p50,
        f.p99,
        f.max,
        f.cpu.as_secs_f64() * 1e6 / streams as f64,
    );
    println!(
        "{:<40} RSS {:.1} MiB before, {:.1} MiB with the streams open, {:.1} MiB after the rotation",
        "",
        mib(f.rss_before),
        mib(f.rss_open),
        mib(f.rss_rotated),
    );
}

fn main() {
    let run = secs();
    let (soft_before, soft, hard) = raise_nofile();
    if let Ok(spec) = std::env::var(CLIENTS_ENV) {
        let v: Vec<&str> = spec.split(' ').collect();
        let (socket, streams, per_conn) = (
            Path::new(v[0]),
            v[1].parse().unwrap(),
            v[2].parse().unwrap(),
        );
        runtime().block_on(many_clients(socket, streams, per_conn));
        return;
    }
    if let Ok(point) = std::env::var(AGENT_ALONE_ENV) {
        let (_, streams, per_conn) = AGENT_ALONE[point.parse::<usize>().unwrap()];
        let f = runtime().block_on(agent_alone(streams, per_conn));
        println!("{}", f.encode());
        return;
    }
    if let Ok(point) = std::env::var(CHILD_ENV) {
        let (_, identities, per_conn, limits) = fan_out_points()[point.parse::<usize>().unwrap()];
        let f = runtime().block_on(fan_out(STREAMS, per_conn, identities, limits));
        println!("{}", f.encode());
        return;
    }
    println!(
        "ringzero Workload API bench: {run:?} per latency point; server and clients in one process, 2 runtime threads, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "open-file limit: soft {} -> {} (hard {})",
        shown(soft_before),
        shown(soft),
        shown(hard)
    );

    // 2. Fan-out, each point in a fresh child process so that its RSS starts clean.
    println!();
    println!(
        "{STREAMS} concurrent FetchX509SVID streams, then one identity rotated (upsert); RSS = server + clients (one process)"
    );
    println!(
        "{:<40} {:>6} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "",
        "conns",
        "open all",
        "RSS +open",
        "KiB/strm",
        "upsert",
        "p50",
        "p99",
        "max=total",
        "CPU µs/strm"
    );
    for (i, (label, ..)) in fan_out_points().into_iter().enumerate() {
        report_point(label, (CHILD_ENV, i), STREAMS);
    }

    // 3. The agent alone with many streams.
    println!();
    println!(
        "FetchX509SVID streams from another process, 1 identity, then one rotation; RSS = the agent's server process alone"
    );
    for (i, (label, streams, _)) in AGENT_ALONE.into_iter().enumerate() {
        report_point(label, (AGENT_ALONE_ENV, i), streams);
    }

    runtime().block_on(async {
        // 1. Fetch latency.
        println!();
        println!("FetchX509SVID, first message");
        for identities in [1, 50] {
            let server = Server::start(identities, WorkloadLimits::default()).await;
            // Warm up: the executable hash, connections, allocator.
            fetch_point(
                &server.socket,
                Mode::NewConnection,
                4,
                identities,
                Duration::from_millis(500),
            )
            .await;
            for (mode, clients) in [
                (Mode::NewConnection, 1),
                (Mode::NewConnection, 16),
                (Mode::NewStream, 1),
                (Mode::NewStream, 16),
                (Mode::FetchClient, 1),
            ] {
                let p = fetch_point(&server.socket, mode, clients, identities, run).await;
                println!(
                    "{:<52} {:>8.0} fetches/s   p50 {:>9.2?}   p99 {:>9.2?}   CPU/fetch {:>7.0?}{}",
                    format!(
                        "{identities} SVID{}, {}, {clients} client{}",
                        if identities == 1 { "" } else { "s" },
                        mode.label(),
                        if clients == 1 { "" } else { "s" }
                    ),
                    p.rate,
                    p.p50,
                    p.p99,
                    p.cpu,
                    if p.errors > 0 {
                        format!("   ERRORS {}", p.errors)
                    } else {
                        String::new()
                    },
                );
            }
            server.stop().await;
        }
    });
}
