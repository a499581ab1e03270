//! The mesh sidecar as real processes: a one-node authority, an enrolled agent whose Workload
//! API socket every uid can reach, entries for chosen uids, and `ringzero mesh sidecar`
//! processes run under those uids (through `setpriv`), each known by its readiness line.
//! Also a loopback target that answers every byte transformed (so that what comes back was
//! produced by the target, not reflected by a proxy), and a tiny HTTP GET for admin ports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_debug_implementations
)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::agent::{agent_cmd, my_uid, spawn_ready_agent};
use crate::{Proc, SoloAuthority, ringzero_bin, ringzero_mesh_bin, show, wait_until};

/// The uid tests run the second sidecar under when they are root: `nobody`.
pub const OTHER_UID: u32 = 65534;

/// How long a sidecar may take to print its readiness line (it waits for its first SVID).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `(uid A, uid B)` for the two-uid tests: this process's uid (root) and [`OTHER_UID`]. `None`,
/// with the reason printed, when the tests cannot run processes under another uid.
pub fn two_uids(test: &str) -> Option<(u32, u32)> {
    let me = my_uid();
    if me != 0 {
        eprintln!("{test}: skipped: running sidecars under a second uid needs root (uid {me})");
        return None;
    }
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !setpriv {
        eprintln!("{test}: skipped: `setpriv` (util-linux) is not installed");
        return None;
    }
    Some((me, OTHER_UID))
}

/// A registration entry to create before the agent starts.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub uid: u32,
    pub ttl: &'static str,
}

/// A one-node authority and one enrolled agent, with the entries given at start.
pub struct MeshCluster {
    pub auth: SoloAuthority,
    pub agent: Proc,
    /// The agent's Workload API socket, in a directory every uid may traverse.
    pub socket: PathBuf,
}

/// The node name of [`MeshCluster::agent`].
pub const NODE: &str = "mesh-node";

/// Creates `entries` for `node`, enrolls it with a fresh join token and starts its agent, with
/// its data in `ROOT/DIR` and its socket at `ROOT/DIR.sock`; returns once the agent is ready.
fn enroll_agent(auth: &SoloAuthority, node: &str, dir: &str, entries: &[Entry]) -> (Proc, PathBuf) {
    let root = auth.root.path();
    let token = auth.node_token(node, "10m");
    for e in entries {
        let out = auth.cli(&[
            "entry",
            "create",
            "--spiffe-id",
            &e.id,
            "--node",
            node,
            "--selector",
            &format!("unix:uid:{}", e.uid),
            "--ttl",
            e.ttl,
        ]);
        assert!(out.status.success(), "entry create: {}", show(&out));
    }
    let socket = root.join(format!("{dir}.sock"));
    let cmd = agent_cmd(
        root,
        &auth.addr,
        Some(&format!("@{}", token.display())),
        &root.join(dir),
        &socket,
    );
    let agent = spawn_ready_agent(
        dir,
        cmd,
        &root.join(format!("{dir}.log")),
        Duration::from_secs(30),
    );
    (agent, socket)
}

/// Another node's agent, enrolled with the same authority, on this machine.
pub struct Node {
    pub name: String,
    pub agent: Proc,
    pub socket: PathBuf,
}

impl Node {
    /// `ringzero agent fetch --socket … --write DIR` as this process: the SVID this node's agent
    /// gives this uid, in `DIR/svid.pem`, `DIR/svid.key` and `DIR/bundle.pem`.
    pub fn fetch_svid(&self, cwd: &Path, dir: &Path) {
        let mut cmd = crate::ringzero(cwd);
        cmd.env_remove("SPIFFE_ENDPOINT_SOCKET")
            .args(["agent", "fetch", "--socket"])
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--write")
            .arg(dir);
        let out = crate::run_timeout(cmd, Duration::from_secs(60));
        assert!(out.status.success(), "agent fetch: {}", show(&out));
    }
}

impl MeshCluster {
    pub fn start(name: &str, td: &str, entries: &[Entry]) -> Self {
        let auth = SoloAuthority::start(name, td);
        let root = auth.root.path().to_path_buf();
        // The test directory is 0700: other uids' sidecars must reach the socket in it (the
        // socket itself is 0666, set by the agent).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711)).unwrap();

        let (agent, socket) = enroll_agent(&auth, NODE, "agent", entries);
        Self {
            auth,
            agent,
            socket,
        }
    }

    pub fn root(&self) -> &Path {
        self.auth.root.path()
    }

    /// Enrolls another node, `name`, with `entries` and starts its agent (its data and socket
    /// beside the first agent's).
    pub fn add_node(&self, name: &str, entries: &[Entry]) -> Node {
        let (agent, socket) = enroll_agent(&self.auth, name, &format!("agent-{name}"), entries);
        Node {
            name: name.to_owned(),
            agent,
            socket,
        }
    }

    /// `unix:///…/agent.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Starts `ringzero mesh sidecar --workload-api … ARGS…` under `uid` and waits for its
    /// readiness line.
    pub fn sidecar(&self, name: &str, uid: u32, args: &[&str]) -> Sidecar {
        self.spawn_sidecar(ringzero_bin(), &["mesh", "sidecar"], name, uid, args)
    }

    /// The same sidecar from the `ringzero-mesh` binary (`ringzero-mesh --workload-api …
    /// ARGS…`).
    pub fn sidecar_alone(&self, name: &str, uid: u32, args: &[&str]) -> Sidecar {
        self.spawn_sidecar(ringzero_mesh_bin(), &[], name, uid, args)
    }

    fn spawn_sidecar(
        &self,
        bin: PathBuf,
        command: &[&str],
        name: &str,
        uid: u32,
        args: &[&str],
    ) -> Sidecar {
        let mut cmd = if uid == my_uid() {
            Command::new(bin)
        } else {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(bin);
            c
        };
        cmd.current_dir(self.root())
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .args(command)
            .args(["--workload-api", &self.endpoint()])
            .args(args);
        Sidecar::spawn(name, cmd, &self.root().join(format!("{name}.log")))
    }
}

/// A running sidecar and the addresses its readiness line names.
pub struct Sidecar {
    pub proc: Proc,
    pub id: String,
    pub inbound: Vec<SocketAddr>,
    pub outbound: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

impl Sidecar {
    /// Spawns `cmd` (a sidecar, or a shell that execs one) and waits for `mesh ready: …`.
    pub fn spawn(name: &str, cmd: Command, log: &Path) -> Self {
        let mut proc = Proc::spawn(name, cmd, log);
        let line = wait_until(
            &format!("{name} to print `mesh ready`"),
            READY_TIMEOUT,
            Duration::from_millis(50),
            || {
                if let Some(status) = proc.exited() {
                    panic!("{name} exited ({status}):\n{}", proc.log());
                }
                proc.log()
                    .lines()
                    .find_map(|l| l.strip_prefix("mesh ready: ").map(str::to_owned))
            },
        );
        let Ready {
            id,
            inbound,
            outbound,
            admin,
        } = parse_ready(&line)
            .unwrap_or_else(|| panic!("{name}: unexpected readiness line {line:?}"));
        Self {
            proc,
            id,
            inbound,
            outbound,
            admin,
        }
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("the sidecar has an admin port")
    }

    /// `GET path` on the admin port: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin(), path)
    }

    /// The value of one `/metrics` sample, e.g.
    /// `ringzero_mesh_refusals_total{direction="inbound",reason="expired"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics");
        metric_in(&body, sample)
    }

    /// `/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The serial of the SVID the sidecar holds now (hex).
    pub fn serial(&self) -> String {
        self.status()["svid"]["serial"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// The value of `sample` in a Prometheus text body.
pub fn metric_in(body: &str, sample: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok()).flatten()
    })
}

/// What a readiness line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub id: String,
    pub inbound: Vec<SocketAddr>,
    pub outbound: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// `SPIFFE-ID, inbound A B, outbound C, admin D` (each list may be `none`).
pub fn parse_ready(line: &str) -> Option<Ready> {
    let mut parts = line.trim().split(", ");
    let id = parts.next()?.to_owned();
    let list = |part: Option<&str>, label: &str| -> Option<Vec<SocketAddr>> {
        let rest = part?.strip_prefix(label)?.trim();
        if rest == "none" {
            return Some(Vec::new());
        }
        rest.split(' ').map(|a| a.parse().ok()).collect()
    };
    let inbound = list(parts.next(), "inbound ")?;
    let outbound = list(parts.next(), "outbound ")?;
    let admin = list(parts.next(), "admin ")?.into_iter().next();
    Some(Ready {
        id,
        inbound,
        outbound,
        admin,
    })
}

/// One HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, body.to_owned())
}

// ---------------------------------------------------------------------------------------------
// TLS callers holding real certificates
// ---------------------------------------------------------------------------------------------

/// A TLS stream to a sidecar.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS 1.3 client presenting the chain `svid_pem` with `key_pem`, accepting only a server
/// `server_id` of trust domain `td` whose CAs are `bundle_pem`.
pub fn pem_client(
    td: &str,
    bundle_pem: &[u8],
    svid_pem: &[u8],
    key_pem: &[u8],
    server_id: &str,
) -> Arc<rustls::ClientConfig> {
    use ringzero_policy::svid::TrustBundle;
    use ringzero_policy::tls::{BundleSource, SpiffeServerVerifier, client_config};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let certs = |pem: &[u8]| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let td = ringzero_policy::TrustDomain::new(td).unwrap();
    let bundle = TrustBundle::new(td, certs(bundle_pem)).unwrap();
    let verifier = SpiffeServerVerifier::new(
        BundleSource::new(bundle),
        ringzero_policy::testing::one_of(&[server_id]),
    );
    let key = PrivateKeyDer::from_pem_slice(key_pem).unwrap();
    Arc::new(client_config(certs(svid_pem), key, verifier).unwrap())
}

/// [`pem_client`] from the files `ringzero agent fetch --write DIR` wrote.
pub fn fetched_client(dir: &Path, td: &str, server_id: &str) -> Arc<rustls::ClientConfig> {
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    pem_client(
        td,
        &read("bundle.pem"),
        &read("svid.pem"),
        &read("svid.key"),
        server_id,
    )
}

/// Connects to `addr` over TLS and sends `ping`: the open stream once the target's answer came
/// back, or how the sidecar refused (a TLS 1.3 server refuses a client certificate after the
/// client's handshake is done, so a refusal shows on the first read).
pub fn tls_open(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<TlsStream, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let name = rustls_pki_types::ServerName::try_from("mesh.invalid").unwrap();
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"ping").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
    assert_eq!(buf.to_vec(), transformed(b"ping"), "the target's answer");
    Ok(tls)
}

/// What the [`Target`] sends back for each byte it receives.
pub fn transformed(data: &[u8]) -> Vec<u8> {
    data.iter().map(|b| b ^ 0xa5).collect()
}

/// A loopback server standing for the app behind an inbound sidecar: answers every byte it
/// reads with [`transformed`] bytes, and half-closes when its peer does. Stops listening when
/// dropped (connections already accepted go on).
pub struct Target {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Target {
    pub fn start() -> Self {
        Self::on("127.0.0.1:0")
    }

    pub fn on(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (Arc::clone(&accepted), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || answer(conn));
            }
        });
        Self {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far (the admin port's readiness probe counts too).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn answer(mut conn: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&transformed(&buf[..n])).is_err() {
                    return;
                }
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then returns and closes the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A deterministic pseudo-random payload.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` on `tcp` (from another thread), half-closes, and reads until the peer
/// closes: returns what came back.
pub fn exchange(tcp: &TcpStream, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut writer = tcp.try_clone()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&data)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::new();
    let read = (&*tcp).read_to_end(&mut back);
    let sent = sender.join().expect("the writer thread");
    read?;
    sent?;
    Ok(back)
}
