//! The node API when the agent's revocation feed is cut: the agent reaches the authority only
//! through an in-test TCP proxy (`--pin-authority` keeps it there after the bundle lists the
//! authority's own address).
//! 1. Silence the feed's connection while new connections still pass (a middlebox that lost
//!    the flow without a reset): the agent's watchdog drops the silent stream 25 s after its
//!    last word and dials again, before the revocation set goes stale, so reads keep being
//!    served.
//! 2. Silence everything, new connections too (a partition): nothing is served, and once the
//!    feed is staler than the bound (30 s) reads are refused as `stale_revocations`
//!    (Unavailable) before any audit append is tried.
//! 3. Lift the partition: the agent reconnects and reads are served again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringzero_tests::agent::{agent_cmd, spawn_ready_agent};
use ringzero_tests::jobs::place_by_hand;
use ringzero_tests::{SoloAuthority, admin_client, show, wait_until};

const TD: &str = "feedcut.test";
const WEB: &str = "f1f1f1f1f1f1f1f1";

/// A loopback TCP proxy to one upstream. `cut` silences every connection open at that moment
/// (bytes dropped both ways, sockets held open: a middlebox that lost the flow), so the agent's
/// long-lived feed stream hears nothing while new connections still pass. `partition` also
/// silences every connection opened after it. `restore` lifts the partition and resets the
/// silenced connections, so the agent reconnects its feed.
struct Proxy {
    addr: String,
    conns: Arc<Mutex<Vec<Conn>>>,
    accepted: Arc<AtomicUsize>,
    partitioned: Arc<AtomicBool>,
}

struct Conn {
    silenced: Arc<AtomicBool>,
    down: TcpStream,
    up: TcpStream,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let partitioned = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let (c, n, part) = (conns.clone(), accepted.clone(), partitioned.clone());
        std::thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { continue };
                let Ok(up) = TcpStream::connect(&upstream) else {
                    continue;
                };
                n.fetch_add(1, Ordering::SeqCst);
                let silenced = Arc::new(AtomicBool::new(part.load(Ordering::SeqCst)));
                pipe(
                    down.try_clone().unwrap(),
                    up.try_clone().unwrap(),
                    silenced.clone(),
                );
                pipe(
                    up.try_clone().unwrap(),
                    down.try_clone().unwrap(),
                    silenced.clone(),
                );
                c.lock().unwrap().push(Conn { silenced, down, up });
            }
        });
        Proxy {
            addr,
            conns,
            accepted,
            partitioned,
        }
    }

    /// Silences every connection open now; later ones pass.
    fn cut(&self) {
        for conn in self.conns.lock().unwrap().iter() {
            conn.silenced.store(true, Ordering::SeqCst);
        }
    }

    /// Silences every connection, open now or opened later, until `restore`.
    fn partition(&self) {
        self.partitioned.store(true, Ordering::SeqCst);
        self.cut();
    }

    /// Lifts a partition and resets the silenced connections.
    fn restore(&self) {
        self.partitioned.store(false, Ordering::SeqCst);
        let mut conns = self.conns.lock().unwrap();
        for conn in conns.iter().filter(|c| c.silenced.load(Ordering::SeqCst)) {
            let _ = conn.down.shutdown(Shutdown::Both);
            let _ = conn.up.shutdown(Shutdown::Both);
        }
        conns.retain(|c| !c.silenced.load(Ordering::SeqCst));
    }
}

/// Copies `from` to `to` in a thread until either side closes; drops what it reads while
/// `silenced`.
fn pipe(mut from: TcpStream, mut to: TcpStream, silenced: Arc<AtomicBool>) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if silenced.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

type Client = ringzero_tests::jobs::NodeClient;

fn node_client(profile: &Path, addr: &str) -> Client {
    ringzero_tests::jobs::node_client(profile, TD, "n1", addr)
}

/// `ReadLogs` of WEB: the first chunk's text, or the error.
async fn read(c: &mut Client) -> Result<String, tonic::Status> {
    ringzero_tests::jobs::first_log_chunk(c, WEB).await
}

#[test]
fn a_silent_feed_is_replaced_a_partitioned_one_refuses_after_the_bound_and_a_restored_one_serves_again()
 {
    let started = Instant::now();
    let a = SoloAuthority::start("node-api-feed-cut", TD);
    let proxy = Proxy::start(&a.addr);
    let token = a.node_token("n1", "10m");
    let dir = a.root.path().join("agent-n1");
    let mut cmd = agent_cmd(
        a.root.path(),
        &proxy.addr,
        Some(&format!("@{}", token.display())),
        &dir,
        &a.root.path().join("n1.sock"),
    );
    cmd.args(["--pin-authority", "--node-api", "127.0.0.1:0"]);
    let log = a.root.path().join("agent-n1.log");
    let agent = spawn_ready_agent("agent-n1", cmd, &log, Duration::from_secs(20));

    ringzero_tests::jobs::run_shop_job(&a, TD, "web", "echo line1; exec sleep 3600", 0, 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node_api = rt.block_on(async {
        let mut c = admin_client(&a);
        place_by_hand(&mut c, WEB, "shop", "web", 0, "n1").await;
        ringzero_tests::jobs::wait_for_node_api(&mut c, "shop", "web", "n1").await
    });
    let web_log = dir.join("tasks").join(WEB).join("stdout.log");
    wait_until(
        "the web task to log",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            std::fs::read_to_string(&web_log)
                .ok()
                .filter(|t| t.contains("line1"))
        },
    );
    let carol = a.root.path().join("carol.profile");
    let out = a.cli(&[
        "user",
        "add",
        "carol",
        "--role",
        "developer",
        "--namespace",
        "shop",
        "--out",
        &carol.to_string_lossy(),
    ]);
    assert!(out.status.success(), "user add carol: {}", show(&out));

    // The feed is up: served. The agent's authority connections all go through the proxy.
    // Built inside the runtime: the channel's connection task runs on it.
    let mut client = rt.block_on(async { node_client(&carol, &node_api) });
    let served = rt.block_on(read(&mut client));
    assert_eq!(served.unwrap(), "line1\n", "agent log: {}", agent.log());
    assert!(proxy.accepted.load(Ordering::SeqCst) > 0);
    assert!(
        agent.log().contains("authority addresses pinned"),
        "the bundle listed the authority's own address and the agent kept the proxy: {}",
        agent.log()
    );

    // Cut the feed's connection; new connections pass. The watchdog replaces the silent stream
    // before the revocation set goes stale: every read is served meanwhile.
    proxy.cut();
    let cut = Instant::now();
    let silent_line = "entry sync stream silent past its heartbeats";
    loop {
        let r = rt.block_on(read(&mut client));
        assert_eq!(
            r.as_deref().ok(),
            Some("line1\n"),
            "a read {:?} after the feed's connection went silent: {r:?}; agent log: {}",
            cut.elapsed(),
            agent.log()
        );
        if agent.log().contains(silent_line) {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(45),
            "the silent feed was not replaced 45 s after the cut: {}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let redialled_after = cut.elapsed();
    // The last word was at most one heartbeat (10 s) before the cut: no alarm before ~15 s.
    assert!(
        redialled_after >= Duration::from_secs(14),
        "the watchdog fired only {redialled_after:?} after the cut"
    );
    // Served on the new stream, past the point where the old one would have gone stale.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        rt.block_on(read(&mut client)).as_deref().ok(),
        Some("line1\n"),
        "agent log: {}",
        agent.log()
    );

    // Partition: nothing reaches the authority. Nothing is served (no audit record can be
    // committed); once the feed is staler than the bound the refusal names the stale feed.
    proxy.partition();
    let cut = Instant::now();
    let refusal = loop {
        let e = rt
            .block_on(read(&mut client))
            .expect_err("a read was served with the authority unreachable");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        if e.message().starts_with("stale_revocations") {
            break e;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "reads not refused as stale 60 s after the partition: {e:?}; {}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let refused_after = cut.elapsed();
    assert!(
        refused_after >= Duration::from_secs(15),
        "refused as stale only {refused_after:?} after the partition: {refusal:?}"
    );

    // Lift the partition: the agent reconnects through the proxy and reads are served again.
    proxy.restore();
    let restored = Instant::now();
    let back = loop {
        match rt.block_on(read(&mut client)) {
            Ok(text) => break text,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                assert!(
                    restored.elapsed() < Duration::from_secs(45),
                    "still refused 45 s after the feed was restored: {e:?}; agent log: {}",
                    agent.log()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(back, "line1\n");
    eprintln!(
        "silent feed replaced {redialled_after:?} after the cut; refused as stale {refused_after:?} after the partition, served again {:?} after the restore, {:?} in all",
        restored.elapsed(),
        started.elapsed()
    );
}
