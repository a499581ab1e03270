//! Bench-only helper for `mesh/bench/run.sh`: one CA, two SVIDs (`/ns/bench/web` for the
//! outbound side, `/ns/bench/db` for the inbound side), served over two Workload API sockets,
//! and the same certificates as PEM files for the stunnel4 pair, so both pairs authenticate
//! with identical keys and chains.
//!
//! ```text
//! cargo run --release -p ringzero-mesh --example bench_wl -- DIR
//! ```
//! writes `DIR/{ca.pem,web.pem,web.key,db.pem,db.key}`, links `DIR/web.sock` and
//! `DIR/db.sock` to the two Workload API sockets, prints `ready` and serves until SIGTERM or
//! Ctrl-C. The CA, Workload API server and SVIDs are the integration tests' fixture.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;

use base64::Engine as _;
use common::{Agent, Ca, Svid, TD};

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write_pems(dir: &Path, name: &str, svid: &Svid) {
    let chain: String = svid.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    std::fs::write(dir.join(format!("{name}.pem")), chain).unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        pem("PRIVATE KEY", &svid.key),
    )
    .unwrap();
}

fn link(dir: &Path, name: &str, agent: &Agent) {
    let path = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&path);
    std::os::unix::fs::symlink(&agent.socket, path).unwrap();
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: bench_wl DIR (output directory)");
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).unwrap();

    let ca = Ca::new(TD);
    let web = ca.svid_at(
        "/ns/bench/web",
        std::time::SystemTime::now(),
        std::time::Duration::from_secs(12 * 3600),
    );
    let db = ca.svid_at(
        "/ns/bench/db",
        std::time::SystemTime::now(),
        std::time::Duration::from_secs(12 * 3600),
    );
    std::fs::write(dir.join("ca.pem"), pem("CERTIFICATE", ca.ca.cert_der())).unwrap();
    write_pems(dir, "web", &web);
    write_pems(dir, "db", &db);

    // Agent::start binds before returning: the links lead to listening sockets.
    let web_agent = Agent::start(Some(&web));
    let db_agent = Agent::start(Some(&db));
    link(dir, "web", &web_agent);
    link(dir, "db", &db_agent);
    println!("ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Dropping the agents removes their temp dirs.
}
