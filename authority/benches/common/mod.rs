//! Helpers shared by the authority benches.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringzero_authority::node::{self, FirstContact};
use ringzero_authority::testing::{Cluster, audit_only};
use ringzero_policy::TrustDomain;
use ringzero_proto::client::{AuthorityClient, Profile};
use ringzero_proto::pb;

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

pub(crate) async fn listener() -> (tokio::net::TcpListener, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

pub(crate) fn client(profile: &Profile) -> AuthorityClient {
    AuthorityClient::new(profile.credentials().unwrap(), profile.authorities.clone())
}

/// Bootstraps node 1 in `dir`, joins nodes 2 and 3 (real gRPC over mTLS on loopback, durable
/// redb, all in this process), and returns the admin profile and the sender that stops them.
pub(crate) async fn three_node_cluster(
    dir: &std::path::Path,
) -> (Profile, tokio::sync::watch::Sender<bool>) {
    let td = TrustDomain::new("bench.example").unwrap();
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let (l1, a1) = listener().await;
    let profile_path = node::bootstrap(&td, &dir.join("n1"), &a1, Duration::from_secs(3600))
        .await
        .unwrap();
    let n1 = dir.join("n1");
    let s1 = stop(shutdown_rx.clone());
    tokio::spawn(async move { node::run(&n1, l1, s1).await.unwrap() });
    let profile = Profile::from_toml(&std::fs::read_to_string(&profile_path).unwrap()).unwrap();
    let mut admin = client(&profile);
    for n in 2..=3 {
        let token = admin
            .call(|mut g| async move {
                g.create_join_token(pb::CreateJoinTokenRequest {
                    purpose: "authority".into(),
                    node_name: String::new(),
                    ttl_seconds: 600,
                    namespace: String::new(),
                })
                .await
            })
            .await
            .unwrap()
            .token;
        let token = ringzero_policy::join::JoinToken::parse(&token).unwrap();
        let (l, addr) = listener().await;
        let d = dir.join(format!("n{n}"));
        let (peer, s) = (a1.clone(), stop(shutdown_rx.clone()));
        tokio::spawn(async move {
            node::join(&d, &addr, l, &peer, FirstContact::Pinned(token), s)
                .await
                .unwrap()
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = admin
                .call(|mut g| async move { g.members(pb::MembersRequest {}).await })
                .await
                .unwrap();
            if m.members.iter().filter(|m| m.role == "voter").count() == n {
                break;
            }
            assert!(Instant::now() < deadline, "node {n} did not join");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (profile, shutdown_tx)
}

/// `clients` tasks, each with its own client of `profile`, calling `call(client, task, i)` back to
/// back for `run`: (calls/s, p50, p99, CPU per call). `call` hands its client back.
pub(crate) async fn closed_loop<F, Fut>(
    profile: &Profile,
    clients: usize,
    run: Duration,
    call: F,
) -> (f64, Duration, Duration, Duration)
where
    F: Fn(AuthorityClient, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = AuthorityClient> + Send,
{
    let start = Instant::now();
    let cpu = cpu_time();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..clients {
        let mut c = client(profile);
        let call = call.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while start.elapsed() < run {
                let s = Instant::now();
                c = call(c, t, i).await;
                lat.push(s.elapsed());
                i += 1;
            }
            lat
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("client task"));
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu) / all.len().max(1) as u32;
    let (p50, p99) = percentiles(&mut all);
    (rate, p50, p99, cpu)
}
