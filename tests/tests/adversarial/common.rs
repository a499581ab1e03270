//! What every attacker group shares: running named cases, calling the CLI as someone, reading
//! the audit log's denials, token surgery, and connections from a chosen source address.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ringzero_policy::audit::{AuditEntry, Decision};
use ringzero_proto::client::Profile;
use ringzero_tests::cluster::{CLI_TIMEOUT, Cluster, stderr, stdout};
use ringzero_tests::{ringzero, run_timeout, run_timeout_stdin, show};

use crate::cases::{CASES, SKIPPED_MARK};

// ---------------------------------------------------------------------------------------------
// Named cases
// ---------------------------------------------------------------------------------------------

/// One attacker group's run: its cases, in order, each named in the index.
pub(crate) struct Group {
    attacker: &'static str,
    ran: std::cell::RefCell<BTreeSet<&'static str>>,
    started: Instant,
    /// Where to ask for the audit log's last record before each case (directory, admin
    /// profile), so that a case only counts the denials it caused.
    audit: Option<(PathBuf, PathBuf)>,
}

thread_local! {
    /// The last audit record before the running case began (see [`denials`]).
    static MARK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Group {
    /// A group whose cases check denials in `c`'s audit log.
    pub(crate) fn new(attacker: &'static str, c: &Cluster) -> Self {
        let mut g = Self::without_audit(attacker);
        g.audit = Some((c.path().to_path_buf(), c.profile.clone()));
        g
    }

    /// A group whose cases do not read the audit log.
    pub(crate) fn without_audit(attacker: &'static str) -> Self {
        assert!(
            CASES.iter().any(|c| c.attacker == attacker),
            "no case of attacker {attacker:?} in the index"
        );
        eprintln!("[adversarial] === {attacker}");
        Self {
            attacker,
            ran: Default::default(),
            started: Instant::now(),
            audit: None,
        }
    }

    /// The sequence number of the audit log's last record now (the query's own record).
    fn mark(&self) -> u64 {
        let Some((dir, profile)) = &self.audit else {
            return 0;
        };
        let mut cmd = ringzero(dir);
        cmd.arg("--profile")
            .arg(profile)
            .args(["audit", "tail", "-n", "1", "--json"]);
        let out = ok(run_timeout(cmd, CLI_TIMEOUT), "audit tail");
        stdout(&out).lines().last().map_or(0, |l| {
            AuditEntry::from_leaf_bytes(l.as_bytes()).unwrap().seq
        })
    }

    fn indexed(&self, name: &'static str) {
        assert!(
            CASES
                .iter()
                .any(|c| c.attacker == self.attacker && c.name == name),
            "case {name:?} of {:?} is not in the index (cases.rs)",
            self.attacker
        );
        assert!(
            self.ran.borrow_mut().insert(name),
            "case {name:?} ran twice"
        );
    }

    /// Runs one attack; a failure is re-raised naming the attacker and the case.
    pub(crate) fn case(&self, name: &'static str, f: impl FnOnce()) {
        self.indexed(name);
        MARK.set(self.mark());
        let t = Instant::now();
        eprintln!("[adversarial] {}: {name} ...", self.attacker);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(()) => eprintln!(
                "[adversarial] {}: {name}: refused as expected ({:.1?})",
                self.attacker,
                t.elapsed()
            ),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                panic!("CASE FAILED: {}: {name}\n{msg}", self.attacker);
            }
        }
    }

    /// Records a case that cannot run here (and says why); it still counts as indexed.
    pub(crate) fn skip(&self, name: &'static str, why: &str) {
        self.indexed(name);
        eprintln!(
            "[adversarial] {}: {name}: {SKIPPED_MARK} ({why})",
            self.attacker
        );
    }

    /// Every indexed case of this attacker ran.
    pub(crate) fn finish(self) {
        let ran = self.ran.borrow();
        let missing: Vec<&str> = CASES
            .iter()
            .filter(|c| c.attacker == self.attacker && !ran.contains(c.name))
            .map(|c| c.name)
            .collect();
        assert!(
            missing.is_empty(),
            "{}: indexed cases that did not run: {missing:#?}",
            self.attacker
        );
        eprintln!(
            "[adversarial] === {}: {} cases in {:.1?}",
            self.attacker,
            ran.len(),
            self.started.elapsed()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The CLI as someone
// ---------------------------------------------------------------------------------------------

/// `ringzero --profile PROFILE ARGS…` in the cluster's directory.
pub(crate) fn as_profile(c: &Cluster, profile: &Path, args: &[&str]) -> Output {
    let mut cmd = ringzero(c.path());
    cmd.arg("--profile").arg(profile).args(args);
    run_timeout(cmd, CLI_TIMEOUT)
}

/// Succeeds, or fails the case with the command's output.
pub(crate) fn ok(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what}: {}", show(&out));
    out
}

/// Exit 1 (refused, not a usage error) with every needle in stderr.
pub(crate) fn refused(out: &Output, needles: &[&str], what: &str) {
    assert_eq!(out.status.code(), Some(1), "{what}: {}", show(out));
    let err = stderr(out);
    for n in needles {
        assert!(err.contains(n), "{what}: no {n:?} in: {}", show(out));
    }
}

pub(crate) fn read_profile(path: &Path) -> Profile {
    Profile::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Writes `p` (mode 0600) as `name` in the cluster's directory.
pub(crate) fn write_profile(c: &Cluster, name: &str, p: &Profile) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = c.path().join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.write_all(p.to_toml().unwrap().as_bytes()).unwrap();
    path
}

/// `user add NAME ROLE… --out NAME.profile` by the admin; the profile's path.
pub(crate) fn add_user(c: &Cluster, name: &str, role: &[&str]) -> PathBuf {
    let path = c.path().join(format!("{name}.profile"));
    let out_arg = path.display().to_string();
    let mut args = vec!["user", "add", name];
    args.extend_from_slice(role);
    args.extend_from_slice(&["--out", &out_arg]);
    ok(c.cli(&args), &format!("user add {name}"));
    path
}

/// `token attenuate - ARGS…` (offline) of `token`.
pub(crate) fn attenuate(c: &Cluster, token: &str, args: &[&str]) -> String {
    let mut cmd = ringzero(c.path());
    cmd.args(["token", "attenuate", "-"]).args(args);
    let out = run_timeout_stdin(&mut cmd, Some(token.as_bytes()), CLI_TIMEOUT);
    stdout(&ok(out, "attenuate")).trim().to_owned()
}

/// The last line of stdout: where the CLI prints a token, invite or id.
pub(crate) fn last_line(out: &Output) -> String {
    stdout(out)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Writes `text` to a file in the cluster's directory and returns `@FILE`.
pub(crate) fn at_file(c: &Cluster, name: &str, text: &str) -> String {
    let path = c.path().join(name);
    std::fs::write(&path, text).unwrap();
    format!("@{}", path.display())
}

/// `spiffe://TD/<path>`.
pub(crate) fn id(path: &str) -> String {
    format!("spiffe://{}/{path}", ringzero_tests::cluster::TD)
}

/// `spiffe://TD/<path>`, parsed.
pub(crate) fn spiffe_id(path: &str) -> ringzero_policy::SpiffeId {
    ringzero_policy::SpiffeId::parse(&id(path)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The audit log
// ---------------------------------------------------------------------------------------------

/// The denials recorded since the running case began, through the admin profile: an earlier
/// case's record never stands in for this one's.
pub(crate) fn denials(c: &Cluster) -> Vec<AuditEntry> {
    let mark = MARK.get();
    records(c, &["--decision", "deny"])
        .into_iter()
        .filter(|d| d.seq > mark)
        .collect()
}

/// Records matching the `audit query` filters `args`, oldest first.
pub(crate) fn records(c: &Cluster, args: &[&str]) -> Vec<AuditEntry> {
    let mut all = vec!["audit", "query", "--json", "--limit", "10000"];
    all.extend_from_slice(args);
    let out = ok(c.cli(&all), "audit query");
    stdout(&out)
        .lines()
        .map(|l| AuditEntry::from_leaf_bytes(l.as_bytes()).unwrap())
        .collect()
}

/// The denial by `actor` on `operation` whose reason starts with `code`: it must be in the log
/// (the first of each distinct denial is committed before the caller is answered).
pub(crate) fn audited(c: &Cluster, actor: &str, operation: &str, code: &str) -> AuditEntry {
    let all = denials(c);
    all.iter()
        .rev()
        .find(|d| {
            d.decision == Decision::Deny
                && d.actor == actor
                && d.operation == operation
                && d.reason.as_deref().is_some_and(|r| r.starts_with(code))
        })
        .cloned()
        .unwrap_or_else(|| {
            let mine: Vec<String> = all
                .iter()
                .filter(|d| d.actor == actor)
                .map(|d| format!("{} {} {:?}", d.operation, d.resource, d.reason))
                .collect();
            panic!("no denial of {operation} by {actor} with reason {code}…; theirs: {mine:#?}")
        })
}

/// The denial by `actor` on `operation` whose reason starts with one of `codes`.
pub(crate) fn audited_any(c: &Cluster, actor: &str, operation: &str, codes: &[&str]) -> String {
    let all = denials(c);
    all.iter()
        .rev()
        .filter(|d| d.actor == actor && d.operation == operation)
        .filter_map(|d| d.reason.clone())
        .find(|r| codes.iter().any(|code| r.starts_with(code)))
        .unwrap_or_else(|| panic!("no denial of {operation} by {actor} naming one of {codes:?}"))
}

/// The leader's last applied log index, by `authority status --json` (which itself commits one
/// audit record before it reads the index).
pub(crate) fn last_applied(c: &Cluster) -> u64 {
    c.status_json()["last_applied"].as_u64().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Token surgery (biscuit-auth's wire types, as any holder of a token can decode it)
// ---------------------------------------------------------------------------------------------

pub(crate) use biscuit_auth::format::schema::Biscuit as WireToken;

pub(crate) fn decode_token(token: &str) -> WireToken {
    use base64::Engine;
    use biscuit_prost::Message;
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(token.trim())
        .unwrap();
    WireToken::decode(bytes.as_slice()).unwrap()
}

pub(crate) fn encode_token(t: &WireToken) -> String {
    use base64::Engine;
    use biscuit_prost::Message;
    base64::engine::general_purpose::URL_SAFE.encode(t.encode_to_vec())
}

/// Appends a block written in Datalog to `token`, offline, as any holder can.
pub(crate) fn append_block(token: &str, code: &str) -> String {
    biscuit_auth::UnverifiedBiscuit::from_base64(token)
        .unwrap()
        .append(
            biscuit_auth::builder::BlockBuilder::new()
                .code(code)
                .unwrap(),
        )
        .unwrap()
        .to_base64()
        .unwrap()
}

/// The block of the reported CPU attack: 18 facts and one check joining six atoms that never
/// match (about 34 million combinations before the block whitelist existed).
pub(crate) fn attack_block() -> String {
    let mut s = String::new();
    for i in 0..18 {
        s.push_str(&format!("f({i});\n"));
    }
    s.push_str(
        "check if f($a), f($b), f($c), f($d), f($e), f($g), \
         $a + $b + $c + $d + $e + $g == -1;\n",
    );
    s
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// A lazily connecting channel to `addr` whose TCP connections come from `src` (a loopback
/// address other than 127.0.0.1, to play a second client host).
pub(crate) fn channel_from(
    src: Ipv4Addr,
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
) -> tonic::transport::Channel {
    let target: SocketAddr = addr.parse().unwrap();
    let mut cfg = Arc::unwrap_or_clone(tls);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let connector = connector.clone();
        async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(src.into(), 0))?;
            let tcp = socket.connect(target).await?;
            let name = rustls_pki_types::ServerName::try_from("ringzero.invalid")
                .map_err(std::io::Error::other)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    }))
}

/// Whether this test process runs as root (some attacks need a second uid).
pub(crate) fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().metadata().unwrap().uid() == 0
    })
}

/// Runs `probe` repeatedly on another thread while `attack` runs; returns the slowest probe.
pub(crate) fn while_probing<T>(
    probe: impl Fn() + Send + Sync,
    attack: impl FnOnce() -> T,
) -> (T, Duration) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut worst = Duration::ZERO;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) || n == 0 {
                let t = Instant::now();
                probe();
                worst = worst.max(t.elapsed());
                n += 1;
            }
            worst
        });
        let r = attack();
        stop.store(true, Ordering::SeqCst);
        (r, h.join().unwrap())
    })
}
