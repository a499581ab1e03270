//! The authority's decisions reaching a running sidecar, all real processes: an authority, one
//! or two enrolled agents on this machine, and `ringzero mesh sidecar` with an inbound listener
//! in front of a loopback target. Callers hold real certificates — an SVID another node's
//! agent issued (`ringzero agent fetch --write`), a user's profile certificate — and connect
//! with a rustls client.
//!
//! - `mesh allow` opens the sidecar to a caller no local rule admits, `mesh deny` closes it to
//!   new connections again, each within a second or two;
//! - `node evict` (the compromised-node case) and `user remove` revoke serials in the
//!   authority; the agent's mesh extension hands them to the sidecar, which refuses the
//!   still-valid certificates at the handshake (`revoked`) and closes the connections open
//!   with them.
//!
//! Everything runs under this test's uid (no root needed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringzero_tests::agent::my_uid;
use ringzero_tests::mesh::{
    Entry, MeshCluster, Node, Sidecar, Target, TlsStream, fetched_client, pem_client, tls_open,
    transformed,
};
use ringzero_tests::{show, wait_until};

const TD: &str = "meshrev.test";
const DB: &str = "spiffe://meshrev.test/ns/shop/db";
const WEB: &str = "spiffe://meshrev.test/ns/shop/web";

/// How long a change in the authority may take to reach a sidecar's next handshake (the
/// claim is "within a second"; the margin is for a loaded machine).
const PROPAGATION: Duration = Duration::from_secs(3);

fn refusals(reason: &str) -> String {
    format!("ringzero_mesh_refusals_total{{direction=\"inbound\",reason=\"{reason}\"}}")
}

fn counted(db: &Sidecar, reason: &str) -> f64 {
    db.metric(&refusals(reason)).unwrap_or(0.0)
}

/// Waits (a refusal is counted as the handshake fails, which the client may see first) until
/// the sidecar has counted at least `n` refusals for `reason`; returns the count.
fn counted_at_least(db: &Sidecar, reason: &str, n: f64) -> f64 {
    wait_until(
        &format!("{} >= {n}", refusals(reason)),
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Some(counted(db, reason)).filter(|c| *c >= n),
    )
}

/// The sidecar (db) in front of its target, a node whose agent serves it, and the second node
/// whose agent issues the caller's SVID (web), all for this test's uid.
/// (Fields drop in order: the sidecar stops before the agents.)
struct Setup {
    db: Sidecar,
    target: Target,
    web_node: Node,
    cluster: MeshCluster,
}

impl Setup {
    fn start(name: &str, sidecar_args: &[&str]) -> Self {
        let uid = my_uid();
        let entry = |id: &str| Entry {
            id: id.into(),
            uid,
            ttl: "1h",
        };
        let cluster = MeshCluster::start(name, TD, &[entry(DB)]);
        let web_node = cluster.add_node("web-node", &[entry(WEB)]);
        let target = Target::start();
        let inbound = format!("127.0.0.1:0={}", target.addr);
        let mut args = vec!["--inbound", &inbound, "--admin", "127.0.0.1:0"];
        args.extend_from_slice(sidecar_args);
        let db = cluster.sidecar("db", uid, &args);
        assert_eq!(db.id, DB);
        Self {
            db,
            target,
            web_node,
            cluster,
        }
    }

    fn inbound(&self) -> SocketAddr {
        self.db.inbound[0]
    }

    /// The client of web: the SVID the second node's agent gives this uid, fetched into files
    /// as a workload would.
    fn web_client(&self) -> Arc<rustls::ClientConfig> {
        let dir = self.cluster.root().join("web-svid");
        self.web_node.fetch_svid(self.cluster.root(), &dir);
        let text = std::fs::read_to_string(dir.join("svid.pem")).unwrap();
        assert!(text.contains("BEGIN CERTIFICATE"), "{text}");
        fetched_client(&dir, TD, DB)
    }

    fn cli_ok(&self, args: &[&str]) {
        let out = self.cluster.auth.cli(args);
        assert!(out.status.success(), "{args:?}: {}", show(&out));
    }
}

/// Connects with `config` every 50 ms until `want` says yes about the outcome, at most
/// `within`: how long that took.
fn until(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    within: Duration,
    what: &str,
    want: impl Fn(&Result<TlsStream, String>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let outcome = tls_open(addr, Arc::clone(config));
        if want(&outcome) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what}: not within {within:?}; last outcome {:?}",
            outcome.map(|_| "connected")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One round trip on a live stream.
fn ping(tls: &mut TlsStream) -> std::io::Result<()> {
    tls.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf)?;
    assert_eq!(buf.to_vec(), transformed(b"ping"));
    Ok(())
}

/// Waits up to `within` for the sidecar to close `tls` (a read ends or fails).
fn closed_within(tls: &mut TlsStream, within: Duration) -> Duration {
    let started = Instant::now();
    tls.sock.set_read_timeout(Some(within)).unwrap();
    let _ = tls.write_all(b"ping");
    let mut buf = [0u8; 4];
    loop {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                assert!(started.elapsed() < within, "still open after {within:?}");
                std::thread::sleep(Duration::from_millis(50));
                let _ = tls.write_all(b"ping");
            }
        }
    }
    let took = started.elapsed();
    assert!(took < within, "still open after {took:?}");
    took
}

#[test]
fn a_policy_added_with_mesh_allow_opens_the_sidecar_and_mesh_deny_closes_it_to_new_connections() {
    // No local rule: only the authority's policies admit anyone.
    let s = Setup::start("mesh-rev-policy", &["--allow-from-authority"]);
    let web = s.web_client();

    // Before any policy, web's valid SVID is refused for its ID.
    tls_open(s.inbound(), Arc::clone(&web))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(counted_at_least(&s.db, "id_not_allowed", 1.0), 1.0);
    let reached = s.target.accepted();

    s.cli_ok(&["mesh", "allow", "--to", DB, "--from", WEB]);
    let opened = until(s.inbound(), &web, PROPAGATION, "mesh allow", Result::is_ok);
    eprintln!("mesh allow took effect after {opened:?}");
    let status = s.db.status();
    assert_eq!(
        status["authority_allow"],
        serde_json::json!([WEB]),
        "{status}"
    );
    assert!(s.target.accepted() > reached);
    let mut live = tls_open(s.inbound(), Arc::clone(&web)).unwrap();

    // A policy for another workload's `--to` does not open db.
    s.cli_ok(&[
        "mesh",
        "allow",
        "--to",
        "spiffe://meshrev.test/ns/shop/cache",
        "--from",
        "spiffe://meshrev.test/ns/shop/*",
    ]);

    s.cli_ok(&["mesh", "deny", "--to", DB, "--from", WEB]);
    let before = counted(&s.db, "id_not_allowed");
    let closed = until(s.inbound(), &web, PROPAGATION, "mesh deny", Result::is_err);
    eprintln!("mesh deny took effect after {closed:?}");
    counted_at_least(&s.db, "id_not_allowed", before + 1.0);
    let status = s.db.status();
    assert_eq!(status["authority_allow"], serde_json::json!([]), "{status}");
    // Still refused, for its ID, a moment later: the other policy never admitted web at db.
    std::thread::sleep(Duration::from_millis(500));
    tls_open(s.inbound(), Arc::clone(&web))
        .map(|_| ())
        .unwrap_err();
    // A policy applies to handshakes: a connection opened while allowed goes on (until
    // --max-conn-age, its certificate's expiry or a revocation).
    ping(&mut live).expect("a live connection outlasts mesh deny");
}

#[test]
fn a_revoked_serial_of_an_evicted_node_is_refused_and_its_connection_closed() {
    // db admits web by a local rule; web's SVID comes from the second node's agent.
    let s = Setup::start("mesh-rev-evict", &["--allow", WEB]);
    let web = s.web_client();
    let mut live = tls_open(s.inbound(), Arc::clone(&web)).unwrap();
    tls_open(s.inbound(), Arc::clone(&web)).unwrap();
    assert_eq!(s.db.status()["revoked_serials"], 0);

    // The node that issued web's SVID is compromised: evicting it revokes every certificate
    // it was issued, web's still-valid SVID among them.
    let started = Instant::now();
    s.cli_ok(&["node", "evict", &s.web_node.name]);
    let err = until(
        s.inbound(),
        &web,
        PROPAGATION,
        "the revocation",
        Result::is_err,
    );
    eprintln!("the eviction reached the sidecar after {err:?}");
    counted_at_least(&s.db, "revoked", 1.0);
    assert_eq!(counted(&s.db, "id_not_allowed"), 0.0);
    assert!(s.db.status()["revoked_serials"].as_u64().unwrap() >= 1);
    // The connection open with it is closed too.
    let took = closed_within(&mut live, PROPAGATION);
    eprintln!(
        "the live connection closed {took:?} after the check ({:?} after the eviction)",
        started.elapsed()
    );
    let log = s.db.proc.log();
    assert!(log.contains("revoked"), "{log}");
}

#[test]
fn a_removed_users_certificate_is_refused_and_its_connection_closed() {
    let s = Setup::start(
        "mesh-rev-user",
        &["--allow", "spiffe://meshrev.test/user/*"],
    );
    let profile = s.cluster.root().join("alice.profile");
    s.cli_ok(&[
        "user",
        "add",
        "alice",
        "--role",
        "auditor",
        "--out",
        &profile.to_string_lossy(),
    ]);
    let p = ringzero_proto::client::Profile::from_toml(&std::fs::read_to_string(&profile).unwrap())
        .unwrap();
    let alice = pem_client(
        TD,
        p.bundle_pem.as_bytes(),
        p.svid_pem.as_bytes(),
        p.key_pem.as_bytes(),
        DB,
    );
    let mut live = tls_open(s.inbound(), Arc::clone(&alice)).unwrap();

    s.cli_ok(&["user", "remove", "alice"]);
    let err = until(
        s.inbound(),
        &alice,
        PROPAGATION,
        "the revocation",
        Result::is_err,
    );
    eprintln!("user remove reached the sidecar after {err:?}");
    counted_at_least(&s.db, "revoked", 1.0);
    closed_within(&mut live, PROPAGATION);
}
