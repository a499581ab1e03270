//! A cluster of real authority processes for tests: bootstrap, join, crash, restart, forge
//! callers. Every process is owned by a [`Proc`] that SIGKILLs it when dropped.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_debug_implementations
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringzero_authority::store::StateMachineStore;
use ringzero_authority::{JoinTokenRecord, NodeId, StoredAudit, TypeConfig};
use ringzero_policy::TrustDomain;
use ringzero_policy::join::JoinToken;
use ringzero_policy::svid::{SigningCa, TrustBundle};
use ringzero_policy::testing::{
    SvidBuilder, anonymous_client_config, chain_and_key_pem, one_of, spiffe_id, trust_domain,
};
use ringzero_policy::tls::{BundleSource, SpiffeServerVerifier};
use ringzero_proto::client::Profile;
use ringzero_proto::pb;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Proc, TestDir, free_addr, ringzero, run_timeout, show, wait_until};

pub const TD: &str = "example.org";
/// The most one CLI call may take. The client's own retry loop is bounded well below this.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a node may take to stop after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a join may take until the new node is a voter.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
pub const POLL: Duration = Duration::from_millis(50);

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// A cluster of processes
// ---------------------------------------------------------------------------------------------

/// One authority node: its data directory, address, log, and process when running.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub addr: String,
    pub log: PathBuf,
    pub proc: Option<Proc>,
}

impl Node {
    pub fn new(root: &Path, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            dir: root.join(name),
            addr: free_addr(),
            log: root.join(format!("{name}.log")),
            proc: None,
        }
    }

    /// `ringzero authority run --data-dir D`.
    pub fn start(&mut self) {
        assert!(self.proc.is_none(), "{} is already running", self.name);
        let mut cmd = ringzero(self.dir.parent().unwrap());
        cmd.args(["authority", "run", "--data-dir"]).arg(&self.dir);
        self.proc = Some(Proc::spawn(&self.name, cmd, &self.log));
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// SIGTERM, and the node must exit within [`STOP_GRACE`].
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let status = p.terminate(STOP_GRACE);
            assert!(
                status.is_some(),
                "{} did not stop within {STOP_GRACE:?} of SIGTERM; log:\n{}",
                self.name,
                p.log()
            );
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    pub fn node_id(&self) -> NodeId {
        let text = std::fs::read_to_string(self.dir.join("node.toml")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("node_id = "))
            .and_then(|v| v.trim().parse().ok())
            .expect("node_id in node.toml")
    }

    /// The replicated state as this (stopped) node holds it.
    pub fn state(&self) -> State {
        assert!(self.proc.is_none(), "{} must be stopped first", self.name);
        State::read(&self.dir)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// What a stopped node's state machine holds.
pub struct State {
    pub tokens: Vec<JoinTokenRecord>,
    pub audit: Vec<StoredAudit>,
}

impl State {
    pub fn read(dir: &Path) -> Self {
        let sm = StateMachineStore::open(&dir.join("raft/state.redb"), &dir.join("raft/snapshots"))
            .unwrap();
        let r = sm.reader().unwrap();
        Self {
            tokens: r.join_tokens().unwrap(),
            audit: r.audit(0, usize::MAX).unwrap(),
        }
    }

    pub fn token(&self, text: &str) -> Option<&JoinTokenRecord> {
        let hash = JoinToken::parse(text).unwrap().secret_sha256();
        self.tokens.iter().find(|t| t.secret_sha256 == hash)
    }

    /// The audit records of every attempt to redeem one join token.
    pub fn redemptions(&self, text: &str) -> Vec<&StoredAudit> {
        let id = hex::encode(JoinToken::parse(text).unwrap().id);
        self.audit
            .iter()
            .filter(|a| a.record.operation == "node:enroll" && a.record.request_id == id)
            .collect()
    }

    pub fn issued(&self, text: &str) -> bool {
        let id = hex::encode(JoinToken::parse(text).unwrap().id);
        self.audit.iter().any(|a| {
            a.record
                .details
                .iter()
                .any(|(k, v)| k == "token_id" && *v == id)
        })
    }
}

/// A row of `authority members --json`.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: NodeId,
    pub address: String,
    pub role: String,
    pub state: String,
    pub matched_index: Option<u64>,
}

pub fn parse_members(json: &str) -> Vec<Member> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_else(|e| {
        panic!("members --json printed {json:?}: {e}");
    });
    v.as_array()
        .expect("an array")
        .iter()
        .map(|m| Member {
            id: m["id"].as_u64().unwrap(),
            address: m["address"].as_str().unwrap().to_owned(),
            role: m["role"].as_str().unwrap().to_owned(),
            state: m["state"].as_str().unwrap().to_owned(),
            matched_index: m["matched_index"].as_u64(),
        })
        .collect()
}

/// A test's cluster: node 1 bootstrapped here, more joined on demand.
pub struct Cluster {
    pub root: TestDir,
    pub nodes: Vec<Node>,
    pub profile: PathBuf,
}

impl Cluster {
    /// Bootstraps node `n1`, starts it, and waits until it accepts writes.
    pub fn new(name: &str) -> Self {
        let root = TestDir::new(name);
        let mut n1 = Node::new(root.path(), "n1");
        let mut cmd = ringzero(root.path());
        cmd.args(["authority", "bootstrap", "--trust-domain", TD, "--data-dir"])
            .arg(&n1.dir)
            .args(["--listen", &n1.addr]);
        let out = run_timeout(cmd, CLI_TIMEOUT);
        assert!(out.status.success(), "bootstrap: {}", show(&out));
        let profile = PathBuf::from(stdout(&out).trim());
        assert!(profile.ends_with("admin.profile"), "{}", show(&out));
        n1.start();
        let c = Self {
            root,
            nodes: vec![n1],
            profile,
        };
        c.wait_writable(Duration::from_secs(15));
        c
    }

    /// A cluster of `n` voters.
    pub fn with_voters(name: &str, n: usize) -> Self {
        let mut c = Self::new(name);
        for _ in 1..n {
            c.join();
        }
        c
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// `ringzero --profile P ARGS…`
    pub fn cli_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = ringzero(self.path());
        cmd.arg("--profile").arg(&self.profile).args(args);
        cmd
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        run_timeout(self.cli_cmd(args), CLI_TIMEOUT)
    }

    pub fn status_ok(&self) -> bool {
        self.cli(&["authority", "status"]).status.success()
    }

    pub fn wait_writable(&self, timeout: Duration) {
        wait_until("a leader accepting writes", timeout, POLL, || {
            self.status_ok().then_some(())
        });
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = self.cli(&["authority", "status", "--json"]);
        assert!(out.status.success(), "status: {}", show(&out));
        serde_json::from_str(stdout(&out).trim()).unwrap()
    }

    pub fn try_members(&self) -> Option<Vec<Member>> {
        let out = self.cli(&["authority", "members", "--json"]);
        out.status.success().then(|| parse_members(&stdout(&out)))
    }

    pub fn members(&self) -> Vec<Member> {
        let out = self.cli(&["authority", "members", "--json"]);
        assert!(out.status.success(), "members: {}", show(&out));
        parse_members(&stdout(&out))
    }

    /// A new authority join token, through the profile.
    pub fn join_token(&self, ttl: &str) -> String {
        let out = self.cli(&["authority", "join-token", "--ttl", ttl]);
        assert!(out.status.success(), "join-token: {}", show(&out));
        let text = stdout(&out);
        let token = text.lines().last().expect("a token line").trim().to_owned();
        JoinToken::parse(&token).unwrap_or_else(|e| panic!("{token:?}: {e}"));
        token
    }

    /// A fresh node directory and address (nothing started).
    pub fn add_node(&mut self) -> usize {
        let name = format!("n{}", self.nodes.len() + 1);
        self.nodes.push(Node::new(self.path(), &name));
        self.nodes.len() - 1
    }

    /// The `authority join` command for node `i` through `peer`, with the token in a file.
    pub fn join_cmd(&self, i: usize, peer: &str, token_arg: &str) -> Command {
        let n = &self.nodes[i];
        let mut cmd = ringzero(self.path());
        cmd.args(["authority", "join", "--peer", peer, "--token", token_arg])
            .arg("--data-dir")
            .arg(&n.dir)
            .args(["--listen", &n.addr]);
        cmd
    }

    pub fn token_file(&self, token: &str) -> String {
        let path = self.path().join(format!(
            "token-{}",
            &hex::encode(JoinToken::parse(token).unwrap().id)[..8]
        ));
        std::fs::write(&path, token).unwrap();
        format!("@{}", path.display())
    }

    /// Starts `authority join` for node `i` (which keeps serving once joined).
    pub fn spawn_join(&mut self, i: usize, peer: &str, token: &str) {
        let arg = self.token_file(token);
        let cmd = self.join_cmd(i, peer, &arg);
        let n = &mut self.nodes[i];
        n.proc = Some(Proc::spawn(&n.name, cmd, &n.log));
    }

    /// Runs a join for node `i` that must fail; returns its output.
    pub fn failed_join(&self, i: usize, peer: &str, token: &str) -> Output {
        let arg = self.token_file(token);
        let out = run_timeout(self.join_cmd(i, peer, &arg), CLI_TIMEOUT);
        assert!(!out.status.success(), "the join succeeded: {}", show(&out));
        assert!(
            !self.nodes[i].dir.join("node.toml").exists(),
            "a refused join left a node directory behind"
        );
        out
    }

    /// Joins a new node through node 1's address and waits until it is a voter.
    pub fn join(&mut self) -> usize {
        let token = self.join_token("10m");
        let i = self.add_node();
        let peer = self.nodes[0].addr.clone();
        self.spawn_join(i, &peer, &token);
        self.wait_voter(i);
        i
    }

    pub fn wait_voter(&mut self, i: usize) {
        let addr = self.nodes[i].addr.clone();
        let deadline = Instant::now() + JOIN_TIMEOUT;
        loop {
            if let Some(ms) = self.try_members()
                && ms.iter().any(|m| m.address == addr && m.role == "voter")
            {
                return;
            }
            if let Some(p) = self.nodes[i].proc.as_mut()
                && let Some(status) = p.exited()
            {
                panic!(
                    "{} exited ({status}) instead of joining:\n{}",
                    self.nodes[i].name,
                    self.nodes[i].log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become a voter within {JOIN_TIMEOUT:?}:\n{}",
                self.nodes[i].name,
                self.nodes[i].log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the node `members` reports as leader.
    pub fn leader(&self) -> usize {
        let ms = self.members();
        let leaders: Vec<&Member> = ms.iter().filter(|m| m.state == "leader").collect();
        assert_eq!(leaders.len(), 1, "{ms:?}");
        self.index_of(&leaders[0].address)
    }

    pub fn index_of(&self, addr: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.addr == addr)
            .unwrap_or_else(|| panic!("no node at {addr}"))
    }

    /// Waits until every member has matched the same log index.
    pub fn wait_replicated(&self, timeout: Duration) -> Vec<Member> {
        wait_until(
            "every member to match the same index",
            timeout,
            POLL,
            || {
                let ms = self.try_members()?;
                let first = ms.first()?.matched_index?;
                ms.iter()
                    .all(|m| m.matched_index == Some(first))
                    .then_some(ms)
            },
        )
    }

    pub fn stop_all(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }

    pub fn profile(&self) -> Profile {
        Profile::from_toml(&std::fs::read_to_string(&self.profile).unwrap()).unwrap()
    }

    /// Node `i`'s CA, which can issue any SVID of the trust domain (for forging callers).
    pub fn node_ca(&self, i: usize) -> SigningCa {
        ca_of_keys(&self.nodes[i].dir.join("keys"))
    }
}

/// The CA whose certificate and key are in `keys` (a node's `keys/`, or a copy of it).
pub fn ca_of_keys(keys: &Path) -> SigningCa {
    let cert = std::fs::read(keys.join("ca.der")).unwrap();
    let key = std::fs::read(keys.join("ca.key")).unwrap();
    SigningCa::from_der(&cert, &key, vec![]).unwrap()
}

/// Kills the nodes before the directory they run in is removed (fields drop after this).
impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Direct gRPC callers
// ---------------------------------------------------------------------------------------------

pub fn td() -> TrustDomain {
    trust_domain(TD)
}

/// An SVID and its key, as a TLS client presents them.
pub struct Svid {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Svid {
    /// The profile's (admin) SVID.
    pub fn of_profile(p: &Profile) -> Self {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(p.svid_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(p.key_pem.as_bytes()).unwrap();
        Self { chain, key }
    }

    /// An SVID for `id` issued by `ca`.
    pub fn forge(ca: &SigningCa, id: &str) -> Self {
        Self::forge_for(ca, id, Duration::from_secs(3600))
    }

    /// An SVID for `id` issued by `ca` that expires `ttl` from now (to the second).
    pub fn forge_for(ca: &SigningCa, id: &str, ttl: Duration) -> Self {
        let svid = SvidBuilder::new(ca, &spiffe_id(id)).ttl(ttl).issue();
        Self {
            chain: svid.chain(),
            key: svid.private_key(),
        }
    }

    /// The chain and the key as PEM, as a profile holds them.
    pub fn pem(&self) -> (String, String) {
        chain_and_key_pem(&self.chain, &self.key)
    }
}

/// Verifies that the server is an authority node of the profile's bundle.
pub fn authority_verifier(profile: &Profile) -> Arc<SpiffeServerVerifier> {
    let bundle = TrustBundle::new(td(), profile.bundle_certs().unwrap()).unwrap();
    SpiffeServerVerifier::new(
        BundleSource::new(bundle),
        one_of(&[&format!("spiffe://{TD}/ringzero/authority/*")]),
    )
}

/// mTLS presenting `svid`, trusting the profile's bundle.
pub fn mtls(profile: &Profile, svid: &Svid) -> Arc<rustls::ClientConfig> {
    Arc::new(
        ringzero_policy::tls::client_config(
            svid.chain.clone(),
            svid.key.clone_key(),
            authority_verifier(profile),
        )
        .unwrap(),
    )
}

/// TLS without a client certificate, trusting the profile's bundle.
pub fn anonymous_tls(profile: &Profile) -> Arc<rustls::ClientConfig> {
    anonymous_client_config(authority_verifier(profile))
}

pub fn channel(addr: &str, tls: Arc<rustls::ClientConfig>) -> tonic::transport::Channel {
    ringzero_proto::transport::channel(addr, tls, Duration::from_secs(3)).unwrap()
}

pub fn with_bearer<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req.set_timeout(Duration::from_secs(10));
    req
}

/// Polls `Status` on each of `addrs` (every 20 ms, 300 ms per call, no client-side retry or
/// backoff) until one answers `writable`; returns the time since `since`. This is the election
/// time itself: the first moment a survivor has won an election and committed an entry.
pub fn poll_new_leader(
    profile: &Profile,
    addrs: Vec<String>,
    since: Instant,
    timeout: Duration,
) -> Option<(Duration, String)> {
    let rt = runtime();
    let tls = mtls(profile, &Svid::of_profile(profile));
    let token = profile.token.clone();
    rt.block_on(async move {
        let clients: Vec<_> = addrs
            .iter()
            .map(|a| {
                (
                    a.clone(),
                    pb::authority_client::AuthorityClient::new(channel(a, tls.clone())),
                )
            })
            .collect();
        while since.elapsed() < timeout {
            for (addr, c) in &clients {
                let mut c = c.clone();
                let call = c.status(with_bearer(pb::StatusRequest {}, Some(&token)));
                if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(300), call).await
                    && r.get_ref().writable
                {
                    return Some((since.elapsed(), addr.clone()));
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    })
}

/// A postcard-encoded AppendEntries from `leader` at `term`: a heartbeat that, if accepted,
/// would make every node follow `leader`.
pub fn forged_append_entries(term: u64, leader: NodeId) -> Vec<u8> {
    let rpc = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: openraft::Vote::new_committed(term, leader),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    postcard::to_stdvec(&rpc).unwrap()
}

pub fn forged_vote(term: u64, candidate: NodeId) -> Vec<u8> {
    let rpc =
        openraft::raft::VoteRequest::<NodeId>::new(openraft::Vote::new(term, candidate), None);
    postcard::to_stdvec(&rpc).unwrap()
}

/// Completes the client side of a TLS handshake with `tls`, then reads: returns the error the
/// server's answer produces (a fatal alert when it rejects the client certificate).
pub async fn tls_alert(addr: &str, tls: Arc<rustls::ClientConfig>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = Arc::unwrap_or_clone(tls);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("ringzero.invalid").unwrap();
    let mut stream = match connector.connect(name, tcp).await {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
        Ok(Ok(0)) => "closed without an alert".into(),
        Ok(Ok(n)) => format!("the server answered {n} bytes"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer".into(),
    }
}
