//! End-to-end workload SVID issuance: agents → a local 3-node authority (real gRPC over mTLS,
//! gating, durable redb) → every SVID's audit record committed through Raft → certificates
//! back. Measured as SVIDs/s and per-call p50/p99, for batches of CSRs from concurrent agents,
//! with single-CSR calls as the baseline in the same run.
//!
//! CSRs are made before the clock starts: key generation happens on the agents' machines, and
//! here every agent shares this process's 2 cores with all three authority nodes.
//!
//! `cargo bench -p ringzero-authority --bench svid` (`RINGZERO_BENCH_SECS` per point, default 3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use ringzero_policy::join::JoinToken;
use ringzero_policy::svid::{TrustBundle, csr_for, generate_key};
use ringzero_policy::{SpiffeId, TrustDomain};
use ringzero_proto::client::{AuthorityClient, Credentials, bundle_cas, redeem_join_token};
use ringzero_proto::pb;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

mod common;

/// The allocator of the `ringzero` binary, which runs the authority: CPU figures are the
/// product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use common::{client, cpu_time, percentiles, secs, three_node_cluster};

/// Enrolls agent `name` with a fresh join token and returns its client.
async fn agent(admin: &mut AuthorityClient, addr: &str, name: &str) -> AuthorityClient {
    let n = name.to_owned();
    let token = admin
        .call(|mut g| {
            let node_name = n.clone();
            async move {
                g.create_join_token(pb::CreateJoinTokenRequest {
                    purpose: "agent".into(),
                    node_name,
                    ttl_seconds: 600,
                    namespace: String::new(),
                })
                .await
            }
        })
        .await
        .unwrap()
        .token;
    let token = JoinToken::parse(&token).unwrap();
    let bundle = ringzero_proto::client::fetch_bundle_unverified(addr)
        .await
        .unwrap();
    let td = TrustDomain::new("bench.example").unwrap();
    let bundle = TrustBundle::new(td.clone(), bundle_cas(&bundle)).unwrap();
    let key = generate_key().unwrap();
    let csr = csr_for(&key, &td.id_with_path(&["ringzero", "node", name]).unwrap()).unwrap();
    let reply = redeem_join_token(addr, &bundle, &token, &csr)
        .await
        .unwrap();
    let creds = Credentials::new(
        td,
        bundle,
        reply
            .svid_chain
            .into_iter()
            .map(CertificateDer::from)
            .collect(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        Some(reply.token),
    );
    AuthorityClient::new(creds, vec![addr.to_owned()])
}

type Agent = (AuthorityClient, Vec<pb::SvidRequest>);

/// Runs every agent for `run`; returns (SVIDs/s, p50, p99, CPU per SVID) and the agents.
async fn point(
    agents: Vec<Agent>,
    batch: usize,
    run: Duration,
) -> ((f64, Duration, Duration, Duration), Vec<Agent>) {
    let start = Instant::now();
    let cpu = cpu_time();
    let mut tasks = tokio::task::JoinSet::new();
    for (mut c, pool) in agents {
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut svids = 0usize;
            let mut i = 0usize;
            while start.elapsed() < run {
                let requests: Vec<pb::SvidRequest> = (0..batch)
                    .map(|k| pool[(i + k) % pool.len()].clone())
                    .collect();
                i += batch;
                let t = Instant::now();
                let reply = c
                    .call(|mut g| {
                        let requests = requests.clone();
                        async move { g.mint_svids(pb::MintSvidsRequest { requests }).await }
                    })
                    .await
                    .unwrap();
                lat.push(t.elapsed());
                assert!(reply.svids.iter().all(|s| s.error.is_empty()));
                svids += reply.svids.len();
            }
            (svids, lat, (c, pool))
        });
    }
    let mut all = Vec::new();
    let mut total = 0;
    let mut back = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (n, lat, agent) = r.unwrap();
        total += n;
        all.extend(lat);
        back.push(agent);
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu) / total.max(1) as u32;
    let (p50, p99) = percentiles(&mut all);
    ((rate, p50, p99, cpu), back)
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
        let mut admin = client(&profile);
        let addr = profile.authorities[0].clone();
        let td = "bench.example";
        let mut agents = Vec::new();
        for a in 0..8 {
            let name = format!("agent{a}");
            let mut c = agent(&mut admin, &addr, &name).await;
            let mut pool = Vec::new();
            for w in 0..32 {
                let req = pb::PutEntryRequest {
                    spiffe_id: format!("spiffe://{td}/ns/bench/{name}-w{w}"),
                    parent: name.clone(),
                    selectors: vec![format!("unix:uid:{}", 1000 + w)],
                    ttl_seconds: 3600,
                    ..Default::default()
                };
                let entry = admin
                    .call(|mut g| {
                        let r = req.clone();
                        async move { g.create_entry(r).await }
                    })
                    .await
                    .unwrap()
                    .entry
                    .unwrap();
                let key = generate_key().unwrap();
                let any = SpiffeId::parse(&format!("spiffe://{td}/csr")).unwrap();
                pool.push(pb::SvidRequest {
                    entry_id: entry.id,
                    csr: csr_for(&key, &any).unwrap(),
                });
            }
            // Warm the connection.
            let warm = vec![pool[0].clone()];
            c.call(|mut g| {
                let requests = warm.clone();
                async move { g.mint_svids(pb::MintSvidsRequest { requests }).await }
            })
            .await
            .unwrap();
            agents.push((c, pool));
        }
        println!(
            "ringzero SVID issuance bench: {run:?} per point; 3 authority nodes in one process; \
             every SVID audited through Raft before release"
        );
        let mut baseline = 0.0;
        // `RINGZERO_BENCH_BATCHES=64` runs one point alone (for a profile).
        let batches: Vec<usize> = std::env::var("RINGZERO_BENCH_BATCHES")
            .ok()
            .map(|v| v.split(',').filter_map(|b| b.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 8, 16, 64]);
        for batch in batches {
            let label = match batch {
                1 => "8 agents, 1 CSR per call".to_owned(),
                n => format!("8 agents, {n} CSRs per call"),
            };
            let ((rate, p50, p99, cpu), back) = point(agents, batch, run).await;
            agents = back;
            if baseline == 0.0 {
                baseline = rate;
            }
            println!(
                "{label:<30} {rate:>8.0} SVIDs/s  call p50 {p50:>9.2?}  p99 {p99:>9.2?}  \
                 CPU/SVID {cpu:>7.0?}  ({:.2}x the first point)",
                rate / baseline
            );
        }
        let _ = shutdown_tx.send(true);
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
}
