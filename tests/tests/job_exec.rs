//! `ringzero job exec` against a real authority and real agents serving their node API: a
//! developer of the namespace (who reads logs) is refused exec and the denial is audited; an
//! operator's exec runs as the task's uid; `-i` carries stdin; `-t` gets a pty; the session's
//! recording on the node matches the length and SHA-256 of its `exec.end` record, and `audit
//! session verify` says so (and fails on a tampered recording); the arguments never reach the
//! audit log or the agent's log; an agent run with `--disable-exec` refuses; with the authority
//! gone, exec fails closed and nothing is started. A command that cannot start still gets its
//! `exec.end`; a session whose recording hits the node's per-session limit is ended (strict).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use ringzero_proto::client::AuthorityClient;
use ringzero_tests::jobs::{self, add_user, place_by_hand};
use ringzero_tests::{SoloAuthority, admin_client, audit, ringzero, run_timeout, show, wait_until};

const TD: &str = "jobexec.test";
const WEB: &str = "e1e1e1e1e1e1e1e1";
const WEB2: &str = "e2e2e2e2e2e2e2e2";
/// The task's uid and gid: not the agent's (root).
const TASK_UID: u32 = 65534;

fn submit(a: &SoloAuthority) {
    let text = format!(
        r#"namespace = "shop"
name = "web"
count = 2
command = "/bin/sh"
args = ["-c", "echo up; exec sleep 3600"]
env = {{ PATH = "/usr/bin:/bin", WEB_MODE = "exec-test" }}
uid = {TASK_UID}
gid = {TASK_UID}
spiffe_id = "spiffe://{TD}/ns/shop/web"

[restart]
policy = "never"
"#
    );
    let file = a.root.path().join("web.toml");
    std::fs::write(&file, text).unwrap();
    let out = a.cli(&["job", "run", &file.to_string_lossy()]);
    assert!(out.status.success(), "job run: {}", show(&out));
}

async fn place(c: &mut AuthorityClient, id: &str, index: u32, node: &str) {
    place_by_hand(c, id, "shop", "web", index, node).await;
}

/// `ringzero --profile P job exec ARGS…` with `stdin`.
fn exec(a: &SoloAuthority, profile: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile")
        .arg(profile)
        .args(["job", "exec"])
        .args(args);
    match stdin {
        None => run_timeout(cmd, Duration::from_secs(60)),
        Some(input) => {
            use std::io::Write;
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        }
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A detail of an audit record, wherever the JSON keeps it (`{"k": v}` or `["k", v]`).
fn detail(v: &serde_json::Value, key: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => m.iter().find_map(|(k, x)| {
            if k == key {
                x.as_str().map(ToOwned::to_owned)
            } else {
                detail(x, key)
            }
        }),
        serde_json::Value::Array(xs) => {
            if xs.len() == 2 && xs[0].as_str() == Some(key) {
                return xs[1].as_str().map(ToOwned::to_owned);
            }
            xs.iter().find_map(|x| detail(x, key))
        }
        _ => None,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

#[test]
fn job_exec_is_gated_audited_recorded_and_fails_closed() {
    let mut a = SoloAuthority::start("job-exec", TD);
    // n1 caps each recording at 8 KiB, so the strict-recording case below is cheap to reach.
    let (_n1, dir1, log1) = jobs::start_node_agent(&a, "n1", &["--recording-max-bytes", "8192"]);
    let (_n2, _dir2, log2) = jobs::start_node_agent(&a, "n2", &["--disable-exec"]);
    submit(&a);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = admin_client(&a);
        place(&mut c, WEB, 0, "n1").await;
        place(&mut c, WEB2, 1, "n2").await;
    });
    let log = dir1.join("tasks").join(WEB).join("stdout.log");
    wait_until(
        "the task to run",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("up"))
        },
    );

    // A developer of the namespace reads logs but may not exec; the refusal is audited.
    let carol = add_user(&a, "carol", "developer", Some("shop"));
    let logs = wait_until(
        "the node API address to be known",
        Duration::from_secs(20),
        Duration::from_millis(300),
        || {
            let mut cmd = ringzero(a.root.path());
            cmd.arg("--profile")
                .arg(&carol)
                .args(["job", "logs", "shop/web", "--alloc", WEB]);
            let out = run_timeout(cmd, Duration::from_secs(30));
            out.status.success().then_some(out)
        },
    );
    assert_eq!(text(&logs), "up\n");
    let out = exec(
        &a,
        &carol,
        &[
            "shop/web", "--alloc", WEB, "--reason", "curious", "--", "id", "-u",
        ],
        None,
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied"),
        "{}",
        show(&out)
    );
    let carol_id = format!("spiffe://{TD}/user/carol");
    wait_until(
        "carol's refused exec to be recorded",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            audit(&a, &["--decision", "deny"])
                .iter()
                .any(|r| {
                    r["actor"] == carol_id.as_str()
                        && r["operation"] == "debug:attach"
                        && r["resource"] == "ns/shop/web"
                })
                .then_some(())
        },
    );

    // An operator's exec runs as the task's uid, in its environment.
    let olga = add_user(&a, "olga", "operator", None);
    let base = ["shop/web", "--alloc", WEB, "--reason", "INC-7: check uid"];
    let with = |rest: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(rest.iter().copied()).collect()
    };
    let out = exec(&a, &olga, &with(&["--", "id", "-u"]), None);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text(&out), format!("{TASK_UID}\n"));
    let out = exec(
        &a,
        &olga,
        &with(&["--", "sh", "-c", "echo $WEB_MODE; id -G"]),
        None,
    );
    assert_eq!(
        text(&out),
        format!("exec-test\n{TASK_UID}\n"),
        "{}",
        show(&out)
    );
    // The remote exit code is ours.
    let out = exec(&a, &olga, &with(&["--", "sh", "-c", "exit 7"]), None);
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));

    // A command that cannot start: refused, and its exec.start is closed by an exec.end.
    let out = exec(&a, &olga, &with(&["--", "/nonexistent/rz-cmd"]), None);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot start"),
        "{}",
        show(&out)
    );

    // Strict recording: output past the recording's limit ends the session at once (the
    // command would otherwise sleep 30 s) rather than let it run unrecorded.
    let began = Instant::now();
    let out = exec(
        &a,
        &olga,
        &with(&[
            "--",
            "sh",
            "-c",
            "head -c 65536 /dev/zero | tr '\\0' x; sleep 30",
        ]),
        None,
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("recording_failed"),
        "{}",
        show(&out)
    );
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "the session outlived its failed recording: {:?}",
        began.elapsed()
    );
    let ended: Vec<(String, String)> = wait_until(
        "the spawn failure's and the cut session's exec.end",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            let ends: Vec<(String, String)> = audit(&a, &["--resource", "ns/shop/web"])
                .iter()
                .filter(|r| r.to_string().contains("exec.end"))
                .filter_map(|r| Some((detail(r, "req.ended_by")?, detail(r, "req.recording")?)))
                .collect();
            let spawn = ends.iter().any(|(by, _)| by == "spawn_failed");
            let cut = ends
                .iter()
                .any(|(by, rec)| by.starts_with("recording_failed") && rec == "incomplete");
            (spawn && cut).then_some(ends)
        },
    );
    assert!(!ended.is_empty());

    // -i: stdin round trip.
    let out = exec(
        &a,
        &olga,
        &with(&["-i", "--", "cat"]),
        Some("hello-stdin\nline 2\n"),
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text(&out), "hello-stdin\nline 2\n");

    // -t: a pty.
    let out = exec(&a, &olga, &with(&["-t", "--", "tty"]), None);
    assert!(out.status.success(), "{}", show(&out));
    assert!(text(&out).contains("/dev/pts/"), "{}", show(&out));

    // A secret argument: run, but never in the audit log nor in the agent's log.
    let secret = "s3cr3t-ARG-9f41c2";
    let out = exec(&a, &olga, &with(&["--", "echo", secret]), None);
    assert_eq!(text(&out), format!("{secret}\n"), "{}", show(&out));
    let all = a.cli(&["audit", "query", "--json", "--limit", "10000"]);
    assert!(all.status.success(), "{}", show(&all));
    let all_text = text(&all);
    assert!(all_text.contains("exec.start"), "no exec.start: {all_text}");
    assert!(!all_text.contains(secret), "the argv reached the audit log");
    assert!(
        !std::fs::read_to_string(&log1).unwrap().contains(secret),
        "the argv reached the agent's log"
    );

    // Every exec.end names its recording's length and SHA-256, which match the file on the
    // node; `audit session verify` agrees, and refuses a tampered recording.
    let olga_id = format!("spiffe://{TD}/user/olga");
    let ends: Vec<_> = audit(&a, &["--resource", "ns/shop/web", "--decision", "allow"])
        .into_iter()
        .filter(|r| r["actor"] == olga_id.as_str() && r.to_string().contains("exec.end"))
        .collect();
    assert!(ends.len() >= 6, "exec.end records: {ends:?}");
    let sessions = dir1.join("sessions");
    for r in &ends {
        let id = detail(r, "req.session").unwrap();
        let bytes = std::fs::read(sessions.join(format!("{id}.cast"))).unwrap();
        assert_eq!(detail(r, "req.sha256").unwrap(), sha256_hex(&bytes));
        assert_eq!(
            detail(r, "req.bytes").unwrap(),
            bytes.len().to_string(),
            "{r}"
        );
        let mode = std::fs::metadata(sessions.join(format!("{id}.cast")))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap();
        assert_eq!(mode, 0o600);
    }
    // The secret run's recording holds its output (the recording is what it is for).
    let secret_end = ends
        .iter()
        .find(|r| {
            let id = detail(r, "req.session").unwrap();
            std::fs::read_to_string(sessions.join(format!("{id}.cast")))
                .unwrap()
                .contains(secret)
        })
        .expect("a recording of the secret run");
    let secret_session = detail(secret_end, "req.session").unwrap();
    session_verify(&a, &olga, &secret_session, &sessions);

    // --disable-exec: refused, audited as exec_disabled.
    let out = exec(
        &a,
        &olga,
        &["shop/web", "--alloc", WEB2, "--reason", "x", "--", "true"],
        None,
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exec_disabled"),
        "{}",
        show(&out)
    );
    wait_until(
        "the exec_disabled refusal to be recorded",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            audit(&a, &["--decision", "deny"])
                .iter()
                .any(|r| r["actor"] == olga_id.as_str() && r.to_string().contains("exec_disabled"))
                .then_some(())
        },
    );
    assert!(!std::fs::read_to_string(&log2).unwrap().contains(secret));

    // The authority gone: exec.start cannot be committed, so nothing starts.
    let marker = a.root.path().join("started-without-audit");
    let marker_s = marker.to_string_lossy().into_owned();
    let node_api = node_api_of(&a);
    a.proc.terminate(Duration::from_secs(15));
    // The CLI needs the authority to find the allocation; ask the agent straight.
    let refused = rt.block_on(exec_direct(&olga, &node_api, WEB, &marker_s));
    assert_eq!(refused, tonic::Code::Unavailable);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!marker.exists(), "a command ran without its audit record");
}

/// `audit session verify` (and `show`) of `session`, then again after tampering with it.
fn session_verify(a: &SoloAuthority, profile: &Path, session: &str, sessions: &Path) {
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile")
        .arg(profile)
        .args(["audit", "session", "verify", session]);
    let out = run_timeout(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "verify: {}", show(&out));
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile")
        .arg(profile)
        .args(["audit", "session", "show", session]);
    let out = run_timeout(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "show: {}", show(&out));
    assert!(text(&out).contains("\"version\":2"), "{}", show(&out));
    let path = sessions.join(format!("{session}.cast"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"[9.9,\"o\",\"forged\"]\n");
    std::fs::write(&path, &bytes).unwrap();
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile")
        .arg(profile)
        .args(["audit", "session", "verify", session]);
    let out = run_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "tampered: {}", show(&out));
}

/// The node-API address of WEB's node.
fn node_api_of(a: &SoloAuthority) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { jobs::node_api_of(&mut admin_client(a), "shop", "web", "n1").await })
}

/// `Exec` straight to the agent (`touch MARKER`); the code it ends with.
async fn exec_direct(profile: &Path, addr: &str, alloc: &str, marker: &str) -> tonic::Code {
    use ringzero_proto::node::{ExecInput, ExecStart, exec_input};
    let mut c = jobs::node_client(profile, TD, "n1", addr);
    let start = ExecInput {
        input: Some(exec_input::Input::Start(ExecStart {
            alloc_id: alloc.into(),
            argv: vec!["/usr/bin/touch".into(), marker.into()],
            reason: "authority down".into(),
            tty: false,
            window: None,
        })),
    };
    match c.exec(tokio_stream::iter(vec![start])).await {
        Err(s) => s.code(),
        Ok(mut stream) => match stream.get_mut().message().await {
            Err(s) => s.code(),
            Ok(m) => panic!("started: {m:?}"),
        },
    }
}
