//! Cross-crate integration tests live in `tests/`; this library holds what they share for
//! driving real processes: locating (and building) the `ringzero` binary, picking free ports,
//! spawning daemons with their output in log files, killing every process on drop, running
//! commands under a deadline, and polling with deadlines instead of fixed sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod agent;
pub mod cluster;
pub mod impostor;
pub mod jobs;
pub mod load;
pub mod mesh;
pub mod probe;

use std::ffi::OsStr;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

/// The `ringzero` binary, built first (once per test process) so that the tests never run a
/// stale binary: `cargo test -p ringzero-tests` does not build other packages' binaries.
///
/// Set `RINGZERO_BIN` to use a given binary instead (no build).
pub fn ringzero_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("RINGZERO_BIN") {
            return PathBuf::from(p);
        }
        build_cli();
        assert_cmd::cargo::cargo_bin("ringzero")
    })
    .clone()
}

/// The `ringzero-mesh` binary (the sidecar alone), built with and found beside
/// [`ringzero_bin`].
pub fn ringzero_mesh_bin() -> PathBuf {
    ringzero_bin().with_file_name("ringzero-mesh")
}

/// Runs `cargo build -p ringzero-cli` for the profile this test binary was built with.
fn build_cli() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "ringzero-cli",
        "--bin",
        "ringzero",
        "--bin",
        "ringzero-mesh",
    ]);
    // target/<profile>/deps/<test binary>: build the same profile.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .filter(|p| p.ends_with("deps"))
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(OsStr::to_str)
        .unwrap_or("debug")
        .to_owned();
    match profile_dir.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        cmd.current_dir(dir);
    }
    // Cargo sets these for the test process. Build scripts may track them (ring's tracks
    // CARGO_MANIFEST_DIR): inherited, they would make this build and a build from a shell
    // rebuild each other's artifacts every time.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name)
        {
            cmd.env_remove(name);
        }
    }
    let status = cmd.status().expect("running cargo build -p ringzero-cli");
    assert!(
        status.success(),
        "cargo build -p ringzero-cli failed: {status}"
    );
}

/// A `Command` for the `ringzero` binary, run in `cwd`, with the `RINGZERO_*` client settings of
/// the environment cleared (each test passes its own).
pub fn ringzero(cwd: &Path) -> Command {
    let mut cmd = Command::new(ringzero_bin());
    cmd.current_dir(cwd);
    cmd.env_remove("RINGZERO_PROFILE")
        .env_remove("RINGZERO_AUTHORITY")
        .env_remove("RINGZERO_TOKEN");
    cmd
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// A free TCP port on 127.0.0.1.
///
/// A port picked by binding `127.0.0.1:0` comes from the ephemeral range, from which the kernel
/// also takes the source ports of outgoing connections: between releasing it and a daemon
/// binding it, a client connection could take it. So ports are picked below the ephemeral
/// range (from a per-process starting point), and checked by binding them; `:0` is the fallback.
pub fn free_port() -> u16 {
    const FIRST: u16 = 10_000;
    static NEXT: AtomicU16 = AtomicU16::new(u16::MAX);
    let span = ephemeral_low().clamp(FIRST + 1024, 65_000) - FIRST;
    // Spread concurrent test processes over the range.
    let _ = NEXT.compare_exchange(
        u16::MAX,
        (std::process::id() % u32::from(span)) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..512 {
        let port = FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(32768)
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A child process that is killed (SIGKILL) and reaped when dropped, so that a failing test
/// leaves nothing running. Its stdout and stderr go to a log file.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdin closed (unless set) and stdout+stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Self {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("opening a log file");
        let err = out.try_clone().expect("cloning a log file");
        cmd.stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// Wraps a child spawned elsewhere (for instance with piped stdin).
    pub fn from_child(name: &str, child: Child, log: &Path) -> Self {
        Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("process already reaped")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; waits up to `grace` for the process to exit, then SIGKILLs it. Returns the exit
    /// status if the process exited by itself, `None` if it had to be killed.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        if let Ok(Some(status)) = c.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `cmd` to completion with stdout and stderr captured, killing it after `timeout`.
/// Panics if it does not finish in time.
pub fn run_timeout(mut cmd: Command, timeout: Duration) -> Output {
    run_timeout_stdin(&mut cmd, None, timeout)
}

/// Like [`run_timeout`], writing `stdin` to the process first.
pub fn run_timeout_stdin(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if let Some(bytes) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(bytes).expect("writing stdin");
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("waiting for a command"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let out = rx.recv_timeout(Duration::from_secs(5));
            panic!(
                "{cmd:?} did not finish within {timeout:?}; output: {:?}",
                out.ok().and_then(Result::ok).map(|o| show(&o))
            );
        }
    }
}

/// stdout and stderr of `out`, for assertion messages.
/// A client presenting the credentials of the profile file at `profile`.
pub fn client_of(profile: &Path) -> ringzero_proto::client::AuthorityClient {
    let text = std::fs::read_to_string(profile).expect("profile readable");
    let p = ringzero_proto::client::Profile::from_toml(&text).expect("profile parses");
    ringzero_proto::client::AuthorityClient::new(
        p.credentials().expect("profile credentials"),
        p.authorities.clone(),
    )
}

/// A client presenting the admin profile of `a`.
pub fn admin_client(a: &SoloAuthority) -> ringzero_proto::client::AuthorityClient {
    client_of(&a.profile)
}

/// `audit query --json --limit 10000 FILTERS…` as the admin of `a`: one JSON value a record.
pub fn audit(a: &SoloAuthority, filters: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["audit", "query", "--json", "--limit", "10000"];
    args.extend_from_slice(filters);
    let out = a.cli(&args);
    assert!(out.status.success(), "audit query: {}", show(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit query prints JSON lines"))
        .collect()
}

pub fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `f` every `every` until it returns `Some`, or panics naming `what` after `timeout`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// A temporary directory for one test, removed when dropped unless `RINGZERO_KEEP_TMP` is set
/// (then its path is printed, for looking at the logs of a failed run).
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
    _guard: Option<tempfile::TempDir>,
}

impl TestDir {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rz-{name}-"))
            .tempdir()
            .expect("creating a temp dir");
        if std::env::var_os("RINGZERO_KEEP_TMP").is_some() {
            let path = dir.keep();
            eprintln!("{name}: keeping {}", path.display());
            return Self { path, _guard: None };
        }
        Self {
            path: dir.path().to_path_buf(),
            _guard: Some(dir),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

// ---------------------------------------------------------------------------------------------
// A one-node authority
// ---------------------------------------------------------------------------------------------

/// A one-node authority process: bootstrapped with the binary, then served by
/// `ringzero authority run`. Killed when dropped.
#[derive(Debug)]
pub struct SoloAuthority {
    pub root: TestDir,
    pub dir: PathBuf,
    pub addr: String,
    pub profile: PathBuf,
    pub trust_domain: String,
    pub proc: Proc,
    /// Extra flags of `authority run`.
    pub run_args: Vec<String>,
}

impl SoloAuthority {
    /// Bootstraps and starts the node; returns once `authority status` succeeds.
    pub fn start(name: &str, trust_domain: &str) -> Self {
        Self::start_with(name, trust_domain, &[])
    }

    /// [`start`](Self::start), with `extra` flags for `authority run` (kept on restarts).
    pub fn start_with(name: &str, trust_domain: &str, extra: &[&str]) -> Self {
        let root = TestDir::new(name);
        let dir = root.path().join("n1");
        let addr = free_addr();
        let mut cmd = ringzero(root.path());
        cmd.args(["authority", "bootstrap", "--trust-domain", trust_domain])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", &addr]);
        let out = run_timeout(cmd, Duration::from_secs(60));
        assert!(out.status.success(), "bootstrap: {}", show(&out));
        let profile = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let run_args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let proc = Self::run(root.path(), &dir, &run_args);
        let s = Self {
            root,
            dir,
            addr,
            profile,
            trust_domain: trust_domain.to_owned(),
            proc,
            run_args,
        };
        s.wait_writable(
            "the authority to accept writes",
            Duration::from_secs(20),
            Duration::from_millis(50),
        );
        s
    }

    /// `ringzero authority run --data-dir DIR` in `root`, logging to `n1.log`.
    fn run(root: &Path, dir: &Path, extra: &[String]) -> Proc {
        let mut cmd = ringzero(root);
        cmd.args(["authority", "run", "--data-dir"])
            .arg(dir)
            .args(extra);
        Proc::spawn("n1", cmd, &root.join("n1.log"))
    }

    /// Polls `authority status` every `every` until it succeeds; panics naming `what` after
    /// `timeout`.
    fn wait_writable(&self, what: &str, timeout: Duration, every: Duration) {
        wait_until(what, timeout, every, || {
            self.cli(&["authority", "status"])
                .status
                .success()
                .then_some(())
        });
    }

    /// `ringzero --profile P ARGS…`, run to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = ringzero(self.root.path());
        cmd.arg("--profile").arg(&self.profile).args(args);
        run_timeout(cmd, Duration::from_secs(60))
    }

    /// `node token --name NAME --ttl TTL`: the token, written to `NAME.token` in the test's
    /// directory; returns that file.
    pub fn node_token(&self, name: &str, ttl: &str) -> PathBuf {
        let out = self.cli(&["node", "token", "--name", name, "--ttl", ttl]);
        assert!(out.status.success(), "node token: {}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        let token = text.lines().last().expect("a token line").trim();
        let path = self.root.path().join(format!("{name}.token"));
        std::fs::write(&path, token).unwrap();
        path
    }

    /// Stops the node (SIGTERM), runs `between` on its data directory while it is down, and
    /// starts it again; returns once it accepts writes.
    pub fn restart_with(&mut self, between: impl FnOnce(&Path)) {
        assert!(
            self.proc.terminate(Duration::from_secs(15)).is_some(),
            "the node did not stop on SIGTERM"
        );
        between(&self.dir);
        self.proc = Self::run(self.root.path(), &self.dir, &self.run_args);
        self.wait_writable(
            "the restarted authority to accept writes",
            Duration::from_secs(30),
            Duration::from_millis(100),
        );
    }
}

/// `cp -a FROM TO`: a copy with modes and times, as an attacker or a backup takes it.
pub fn cp_a(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}
