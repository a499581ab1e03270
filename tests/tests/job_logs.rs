//! `ringzero job logs` against a real authority and a real agent serving its node API: the
//! admin and a developer of the namespace read a task's log (`--tail`, `--stderr`, `-f`
//! receiving lines written after the call); the allow record is in the audit log; a developer
//! of another namespace is denied and the denial is in `audit query --decision deny`; a token
//! attenuated to job A cannot read job B; someone else's token (bound to another SPIFFE ID) is
//! refused; a revoked token is refused within the staleness bound; and once the authority is
//! gone the agent refuses to serve (its audit record cannot be committed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ringzero_proto::client::AuthorityClient;
use ringzero_tests::agent::{agent_cmd, spawn_ready_agent};
use ringzero_tests::jobs::{self, place_by_hand, token_of};
use ringzero_tests::{
    Proc, SoloAuthority, admin_client, audit, ringzero, run_timeout, show, wait_until,
};

const TD: &str = "joblogs.test";
const WEB: &str = "w1w1w1w1w1w1w1w1";
const DB: &str = "d2d2d2d2d2d2d2d2";
/// A second allocation of `shop/db`.
const DB2: &str = "d3d3d3d3d3d3d3d3";

fn submit(a: &SoloAuthority, name: &str, script: &str) {
    let text = format!(
        r#"namespace = "shop"
name = "{name}"
command = "/bin/sh"
args = ["-c", {script:?}]
env = {{ PATH = "/usr/bin:/bin" }}
uid = 0
gid = 0
spiffe_id = "spiffe://{TD}/ns/shop/{name}"

[restart]
policy = "never"
"#
    );
    let file = a.root.path().join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let out = a.cli(&["job", "run", &file.to_string_lossy()]);
    assert!(out.status.success(), "job run {name}: {}", show(&out));
}

async fn place(c: &mut AuthorityClient, id: &str, job: &str) {
    place_by_hand(c, id, "shop", job, 0, "n1").await;
}

fn add_user(a: &SoloAuthority, name: &str, ns: &str) -> PathBuf {
    jobs::add_user(a, name, "developer", Some(ns))
}

/// `ringzero --profile P [--token @FILE] job logs ARGS…`.
fn logs(a: &SoloAuthority, profile: &Path, token: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile").arg(profile);
    if let Some(t) = token {
        cmd.arg("--token").arg(format!("@{}", t.display()));
    }
    cmd.args(["job", "logs"]).args(args);
    run_timeout(cmd, Duration::from_secs(60))
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_token(a: &SoloAuthority, name: &str, token: &str) -> PathBuf {
    let path = a.root.path().join(name);
    std::fs::write(&path, token).unwrap();
    path
}

#[test]
fn job_logs_are_gated_audited_and_fail_closed() {
    let mut a = SoloAuthority::start("job-logs", TD);
    let token = a.node_token("n1", "10m");
    let dir = a.root.path().join("agent-n1");
    let socket = a.root.path().join("n1.sock");
    let mut cmd = agent_cmd(
        a.root.path(),
        &a.addr,
        Some(&format!("@{}", token.display())),
        &dir,
        &socket,
    );
    cmd.args(["--node-api", "127.0.0.1:0"]);
    let log = a.root.path().join("agent-n1.log");
    let _agent: Proc = spawn_ready_agent("agent-n1", cmd, &log, Duration::from_secs(20));

    submit(
        &a,
        "web",
        "echo line1; echo line2; echo line3; echo err1 >&2; exec sleep 3600",
    );
    // Two allocations of db: `--all` reads both.
    jobs::run_shop_job(&a, TD, "db", "echo db-secret; exec sleep 3600", 0, 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = admin_client(&a);
        place(&mut c, WEB, "web").await;
        place(&mut c, DB, "db").await;
        place_by_hand(&mut c, DB2, "shop", "db", 1, "n1").await;
    });
    let web_log = dir.join("tasks").join(WEB).join("stdout.log");
    wait_until(
        "the web task to log",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            std::fs::read_to_string(&web_log)
                .ok()
                .filter(|t| t.contains("line3"))
        },
    );

    // The admin reads everything, the last line, stderr.
    let admin = a.profile.clone();
    let out = wait_until(
        "the node API address to be known",
        Duration::from_secs(20),
        Duration::from_millis(300),
        || {
            let out = logs(&a, &admin, None, &["shop/web"]);
            out.status.success().then_some(out)
        },
    );
    assert_eq!(text(&out), "line1\nline2\nline3\n");
    let out = logs(&a, &admin, None, &["shop/web", "--tail", "1"]);
    assert_eq!(text(&out), "line3\n", "{}", show(&out));
    let out = logs(&a, &admin, None, &["shop/web", "--alloc", WEB, "--stderr"]);
    assert_eq!(text(&out), "err1\n", "{}", show(&out));

    // Two allocations: one must be picked, or --all reads both, each line prefixed.
    let out = logs(&a, &admin, None, &["shop/db"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(show(&out).contains("--alloc"), "{}", show(&out));
    let both = wait_until(
        "both db allocations to log",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            let out = logs(&a, &admin, None, &["shop/db", "--all"]);
            let mut lines: Vec<String> = text(&out).lines().map(str::to_owned).collect();
            lines.sort();
            (out.status.success() && lines.len() == 2).then_some(lines)
        },
    );
    assert_eq!(
        both,
        [format!("[{DB}] db-secret"), format!("[{DB2}] db-secret")]
    );

    // A developer of the namespace reads; the allow record names them and the job.
    let carol = add_user(&a, "carol", "shop");
    let out = logs(&a, &carol, None, &["shop/web", "--tail", "2"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text(&out), "line2\nline3\n");
    let carol_id = format!("spiffe://{TD}/user/carol");
    let allowed = audit(&a, &["--resource", "ns/shop/web", "--decision", "allow"]);
    assert!(
        allowed.iter().any(|r| r["actor"] == carol_id.as_str()
            && r["operation"] == "logs:read"
            && r.to_string().contains(WEB)),
        "no allow record of carol's read: {allowed:?}"
    );

    // Follow: a line written after the call arrives.
    let mut follow_cmd = ringzero(a.root.path());
    follow_cmd
        .arg("--profile")
        .arg(&carol)
        .args(["job", "logs", "shop/web", "-f", "--tail", "1"]);
    let follow_log = a.root.path().join("follow.log");
    let mut follower = Proc::spawn("follow", follow_cmd, &follow_log);
    wait_until(
        "the follower to print the last line",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || follower.log().contains("line3").then_some(()),
    );
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&web_log)
            .unwrap();
        writeln!(f, "appended-after").unwrap();
    }
    wait_until(
        "the follower to receive the new line",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || follower.log().contains("appended-after").then_some(()),
    );
    follower.kill9();

    // Another namespace's developer: denied, and the denial is audited.
    let dave = add_user(&a, "dave", "other");
    let out = logs(&a, &dave, None, &["shop/web", "--alloc", WEB]);
    assert!(!out.status.success(), "{}", show(&out));
    let dave_id = format!("spiffe://{TD}/user/dave");
    // dave cannot even list the allocations (the authority refuses sched:read), so ask the
    // agent directly: with dave's own token (no right on shop), then with carol's token over
    // dave's SVID (bound to another SPIFFE ID). Both refused, both recorded.
    let node_api = node_api_of(&a);
    let refused = rt.block_on(read_direct(&dave, &node_api, token_of(&dave), WEB));
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let carol_token = write_token(&a, "carol.token", &token_of(&carol));
    let refused = rt.block_on(read_direct(&dave, &node_api, token_of(&carol), WEB));
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("peer_mismatch"), "{refused:?}");
    let out = logs(&a, &dave, Some(&carol_token), &["shop/web", "--alloc", WEB]);
    assert!(!out.status.success(), "{}", show(&out));
    // Denial records are sent off the call's path (the agent's denial window): wait for them.
    wait_until(
        "dave's two refused reads to be recorded",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            let denied = audit(&a, &["--decision", "deny"]);
            let agent_denials: Vec<_> = denied
                .iter()
                .filter(|r| {
                    r["actor"] == dave_id.as_str()
                        && r["operation"] == "logs:read"
                        && r["resource"] == "ns/shop/web"
                })
                .collect();
            (agent_denials
                .iter()
                .any(|r| r.to_string().contains("peer_mismatch"))
                && agent_denials
                    .iter()
                    .any(|r| !r.to_string().contains("peer_mismatch")))
            .then_some(())
        },
    );

    // A token attenuated to job web cannot read job db.
    let out = a.cli(&[
        "token",
        "attenuate",
        &token_of(&carol),
        "--resource",
        "ns/shop/web",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let web_only = write_token(&a, "web-only.token", text(&out).trim());
    let out = logs(&a, &carol, Some(&web_only), &["shop/web", "--alloc", WEB]);
    assert!(out.status.success(), "{}", show(&out));
    let out = logs(&a, &carol, Some(&carol_token), &["shop/db", "--alloc", DB]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text(&out), "db-secret\n");
    // (The CLI lists allocations with sched:read first; the attenuated token lacks it on
    // shop/db, so ask the agent directly for DB with the web-only token.)
    let refused = rt.block_on(read_direct(&carol, &node_api, text_of(&web_only), DB));
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("resource"), "{refused:?}");

    // Revoked: refused within the staleness bound.
    let out = a.cli(&["token", "revoke", &format!("@{}", web_only.display())]);
    assert!(out.status.success(), "{}", show(&out));
    wait_until(
        "the revoked token to be refused by the agent",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let out = logs(&a, &carol, Some(&web_only), &["shop/web", "--alloc", WEB]);
            (!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("revoked"))
                .then_some(())
        },
    );

    // The authority gone: nothing can be recorded, so nothing is served.
    a.proc.terminate(Duration::from_secs(15));
    let refused = rt.block_on(read_direct(&admin, &node_api, token_of(&admin), WEB));
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
}

fn text_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// The node API address the authority lists for the web allocation.
fn node_api_of(a: &SoloAuthority) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { jobs::node_api_of(&mut admin_client(a), "shop", "web", "n1").await })
}

/// `ReadLogs` straight to the agent with `profile`'s SVID and `token`; the error it ends with.
async fn read_direct(profile: &Path, addr: &str, token: String, alloc: &str) -> tonic::Status {
    let mut c = jobs::node_client_presenting(profile, &token, TD, "n1", addr);
    match jobs::first_log_chunk(&mut c, alloc).await {
        Err(s) => s,
        Ok(text) => panic!("served: {text:?}"),
    }
}
