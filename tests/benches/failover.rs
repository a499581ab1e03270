//! Leader failover on real processes: a 3-voter authority cluster of `ringzero authority run`
//! processes, one client writing back to back (`CreateJoinToken` through the leader-hint
//! client every CLI command uses), and the leader `kill -9`ed KILLS times. Each kill reports:
//! - **resume**: from the SIGKILL to the first write acknowledged by another node — what a
//!   client sees, election and leader discovery included;
//! - **elected**: from the SIGKILL to a survivor reporting itself a writable leader;
//! - the term change (1 is one election; more is a split vote, or a candidate refused for its
//!   log answered by the `takeover` of a member with the longer one);
//! - **at restart**: term changes while the killed node came back and caught up — each one a
//!   healthy leader deposed by a returning member (should be none).
//!
//! Between kills the killed node is restarted and caught up, so every kill starts from three
//! healthy voters, matched within a few entries, with the same leader for a further second. The run is done twice in one invocation: with the timings of a node's
//! `[raft]` table as released (`RaftTiming::default`), and with the former fixed timings
//! (100 ms heartbeat, 300–600 ms election) as the baseline.
//!
//! `cargo bench -p ringzero-tests --bench failover [-- KILLS]` (default 20). Prints each kill,
//! then min / p50 / p90 / max per configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringzero_authority::RaftTiming;
use ringzero_proto::client::AuthorityClient;
use ringzero_proto::pb;
use ringzero_tests::cluster::*;
use ringzero_tests::wait_until;

/// A write acknowledged: when, and by which address.
type Acks = Arc<Mutex<Vec<(Instant, String)>>>;

fn main() {
    let kills: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let baseline = RaftTiming {
        heartbeat_ms: 100,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
    };
    let mut reports = Vec::new();
    for (label, timing) in [
        ("default", RaftTiming::default()),
        ("baseline 100/300-600", baseline),
    ] {
        reports.push((label, timing, run(label, timing, kills)));
    }
    println!();
    println!("failover over {kills} kills of the leader (ms):");
    println!(
        "{:<22} {:>14} {:>24} {:>24} {:>10} {:>10}",
        "timing",
        "hb/elect ms",
        "resume min/p50/p90/max",
        "elected min/p50/p90/max",
        "elections",
        "at restart"
    );
    for (label, t, r) in &reports {
        println!(
            "{:<22} {:>14} {:>24} {:>24} {:>10} {:>10}",
            label,
            format!(
                "{}/{}-{}",
                t.heartbeat_ms, t.election_timeout_min_ms, t.election_timeout_max_ms
            ),
            spread(r.iter().map(|k| k.resume).collect()),
            spread(r.iter().map(|k| k.elected).collect()),
            r.iter().map(|k| k.terms).sum::<u64>(),
            r.iter().map(|k| k.after_restart).sum::<u64>(),
        );
    }
}

struct Kill {
    resume: Duration,
    elected: Duration,
    terms: u64,
    /// Term changes while the killed node restarted and caught up: each one a healthy leader
    /// deposed by a returning member.
    after_restart: u64,
}

/// Waits for three healthy voters: one leader, every member matched within a few entries of
/// the others (the writer keeps writing), then a second past any returning member's election
/// timeout, the same leader throughout. Returns the term.
fn settle(c: &Cluster) -> u64 {
    let healthy = || {
        let ms = c.try_members()?;
        let leaders: Vec<_> = ms.iter().filter(|m| m.state == "leader").collect();
        let matched: Vec<u64> = ms.iter().map(|m| m.matched_index).collect::<Option<_>>()?;
        let spread = matched.iter().max()? - matched.iter().min()?;
        (leaders.len() == 1 && ms.len() == 3 && spread <= 20).then(|| leaders[0].id)
    };
    loop {
        let leader = wait_until(
            "three healthy voters",
            Duration::from_secs(15),
            Duration::from_millis(20),
            healthy,
        );
        let t = term(c);
        std::thread::sleep(Duration::from_secs(1));
        if healthy() == Some(leader) && term(c) == t {
            return t;
        }
    }
}

fn spread(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_millis();
    format!("{}/{}/{}/{}", at(0.0), at(0.5), at(0.9), at(1.0))
}

fn set_timing(c: &mut Cluster, t: RaftTiming) {
    c.stop_all();
    for n in &c.nodes {
        let path = n.dir.join("node.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: String = text.split("\n[raft]").next().unwrap().trim_end().to_owned();
        std::fs::write(
            &path,
            format!(
                "{kept}\n\n[raft]\nheartbeat_ms = {}\nelection_timeout_min_ms = {}\n\
                 election_timeout_max_ms = {}\n",
                t.heartbeat_ms, t.election_timeout_min_ms, t.election_timeout_max_ms
            ),
        )
        .unwrap();
    }
    for n in &mut c.nodes {
        n.start();
    }
    c.wait_writable(Duration::from_secs(15));
}

fn term(c: &Cluster) -> u64 {
    c.status_json()["term"].as_u64().expect("term in status")
}

fn run(label: &str, timing: RaftTiming, kills: usize) -> Vec<Kill> {
    let mut c = Cluster::with_voters("failover-bench", 3);
    set_timing(&mut c, timing);
    let profile = c.profile();
    let acks: Acks = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acks, stop) = (acks.clone(), stop.clone());
        let creds = profile.credentials().unwrap();
        let addrs = profile.authorities.clone();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut client = AuthorityClient::new(creds, addrs);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let req = pb::CreateJoinTokenRequest {
                        purpose: "agent".into(),
                        node_name: format!("failover-{i}"),
                        ttl_seconds: 1,
                        namespace: String::new(),
                    };
                    let ok = client
                        .call(|mut g| {
                            let req = req.clone();
                            async move { g.create_join_token(req).await }
                        })
                        .await
                        .is_ok();
                    if ok {
                        let at = client.current_address().unwrap_or_default().to_owned();
                        acks.lock().unwrap().push((Instant::now(), at));
                    }
                }
            })
        })
    };
    let mut out: Vec<Kill> = Vec::new();
    let mut settled_term = None;
    for k in 0..kills {
        let term_before = settle(&c);
        // Anything past the kill's own elections came from the restart.
        if let (Some(last), Some(t)) = (out.last_mut(), settled_term) {
            last.after_restart = term_before - t;
        }
        let old = c.leader();
        let old_addr = c.nodes[old].addr.clone();
        let survivors: Vec<String> = (0..3)
            .filter(|i| *i != old)
            .map(|i| c.nodes[i].addr.clone())
            .collect();
        let t0 = Instant::now();
        c.nodes[old].kill9();
        let poller = {
            let profile = profile.clone();
            std::thread::spawn(move || {
                poll_new_leader(&profile, survivors, t0, Duration::from_secs(15))
            })
        };
        let resume = wait_until(
            "a write acknowledged by a new leader",
            Duration::from_secs(15),
            Duration::from_millis(5),
            || {
                acks.lock()
                    .unwrap()
                    .iter()
                    .find(|(at, addr)| *at > t0 && *addr != old_addr)
                    .map(|(at, _)| *at - t0)
            },
        );
        let (elected, _) = poller.join().unwrap().expect("a new leader");
        let terms = term(&c) - term_before;
        eprintln!(
            "{label} kill {k}: resume {} ms, elected {} ms, term +{terms}",
            resume.as_millis(),
            elected.as_millis()
        );
        out.push(Kill {
            resume,
            elected,
            terms,
            after_restart: 0,
        });
        settled_term = Some(term_before + terms);
        c.nodes[old].start();
    }
    let t = settle(&c);
    if let (Some(last), Some(before)) = (out.last_mut(), settled_term) {
        last.after_restart = t - before;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    out
}
