//! Jobs in the authority, real processes: `job run` / `status` / `list` / `stop [--purge]` /
//! `history` gated on `sched:*` on `ns/<ns>/<name>`, plus `entry:write` on the job's SPIFFE ID
//! and `entry:select` on its uid at submit; every write and every refusal in the audit log; a
//! job's identity outside its namespace refused whatever the caller holds; malformed job files
//! refused with exit 2 before anything is written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ringzero_tests::{SoloAuthority, audit, ringzero, run_timeout, run_timeout_stdin, show};

const TD: &str = "jobs.test";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn as_user(a: &SoloAuthority, profile: &Path, args: &[&str]) -> Output {
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile").arg(profile).args(args);
    run_timeout(cmd, Duration::from_secs(60))
}

fn add_user(a: &SoloAuthority, name: &str, role: &[&str]) -> PathBuf {
    let path = a.root.path().join(format!("{name}.profile"));
    let mut args = vec!["user", "add", name];
    args.extend_from_slice(role);
    let out_arg = path.to_string_lossy().into_owned();
    args.extend_from_slice(&["--out", &out_arg]);
    let out = a.cli(&args);
    assert!(out.status.success(), "user add {name}: {}", show(&out));
    path
}

fn id(path: &str) -> String {
    format!("spiffe://{TD}/{path}")
}

/// A job file for `ns/name`, running as `spiffe_id` and `uid`.
fn job_toml(ns: &str, name: &str, spiffe_id: &str, uid: u32) -> String {
    format!(
        r#"namespace = "{ns}"
name = "{name}"
command = "/usr/bin/web"
args = ["--port", "8080"]
env = {{ RUST_LOG = "info" }}
uid = {uid}
gid = {uid}
count = 3
memory_mb = 128
spiffe_id = "{spiffe_id}"

[constraints]
nodes = ["n2", "n1"]

[restart]
policy = "on-failure"
max_restarts = 5
backoff = "2s"
"#
    )
}

fn write_job(a: &SoloAuthority, file: &str, text: &str) -> String {
    let path = a.root.path().join(file);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn status(a: &SoloAuthority, profile: &Path, job: &str) -> serde_json::Value {
    let out = as_user(a, profile, &["job", "status", job, "--json"]);
    assert!(out.status.success(), "job status {job}: {}", show(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn list(a: &SoloAuthority, profile: &Path, namespace: Option<&str>) -> Vec<String> {
    let mut args = vec!["job", "list", "--json"];
    if let Some(ns) = namespace {
        args.extend_from_slice(&["--namespace", ns]);
    }
    let out = as_user(a, profile, &args);
    assert!(out.status.success(), "job list: {}", show(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|j| {
            format!(
                "{}/{}",
                j["namespace"].as_str().unwrap(),
                j["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn jobs_are_submitted_stopped_purged_and_audited() {
    let a = SoloAuthority::start("job-admin", TD);
    let admin = a.profile.clone();
    let file = write_job(
        &a,
        "web.toml",
        &job_toml("shop", "web", &id("ns/shop/web"), 1000),
    );

    // A dry run is checked and answered, and commits nothing but its audit record.
    let out = a.cli(&["job", "run", &file, "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["constraints"]["nodes"], serde_json::json!(["n1", "n2"]));
    assert!(list(&a, &admin, None).is_empty());

    // Submitted: version 1, running, by the admin; then again: version 2.
    let out = a.cli(&["job", "run", &file]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("version 1"), "{}", show(&out));
    let st = status(&a, &admin, "shop/web");
    assert_eq!(st["version"], 1);
    assert_eq!(st["desired"], "running");
    assert_eq!(st["submitted_by"], id("user/admin"));
    assert_eq!(st["spiffe_id"], id("ns/shop/web"));
    assert_eq!(st["count"], 3);
    assert_eq!(st["restart"]["backoff_ms"], 2000);
    assert_eq!(st["env"]["RUST_LOG"], "info");
    // stdin works too.
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile").arg(&admin).args(["job", "run", "-"]);
    let text = job_toml("shop", "web", &id("ns/shop/web"), 1000);
    let out = run_timeout_stdin(&mut cmd, Some(text.as_bytes()), Duration::from_secs(60));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(status(&a, &admin, "shop/web")["version"], 2);
    let table = a.cli(&["job", "list"]);
    assert!(stdout(&table).contains("NAMESPACE"), "{}", show(&table));
    assert!(stdout(&table).contains("shop"), "{}", show(&table));
    assert_eq!(list(&a, &admin, Some("shop")), ["shop/web"]);
    assert!(list(&a, &admin, Some("other")).is_empty());

    // Stop keeps the record; purge deletes it.
    let out = a.cli(&["job", "stop", "shop/web"]);
    assert!(out.status.success(), "{}", show(&out));
    let st = status(&a, &admin, "shop/web");
    assert_eq!(st["desired"], "stopped");
    assert_eq!(st["version"], 2);
    let out = a.cli(&["job", "stop", "shop/web", "--purge"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(list(&a, &admin, None).is_empty());
    let out = a.cli(&["job", "status", "shop/web"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("not found"), "{}", show(&out));
    let out = a.cli(&["job", "stop", "shop/web"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));

    // Every step is in the log, under the job's resource.
    let records = audit(&a, &["--resource", "ns/shop/web"]);
    let count = |op: &str, detail: &str| {
        records
            .iter()
            .filter(|r| {
                r["operation"] == op
                    && r["decision"] == "allow"
                    && r["details"].to_string().contains(detail)
            })
            .count()
    };
    assert_eq!(count("sched:submit", "dry_run"), 1, "{records:#?}");
    assert_eq!(count("sched:submit", "/usr/bin/web"), 3, "{records:#?}");
    // Two stops that applied, and the one refused as not found (recorded as such).
    assert!(count("sched:cancel", "stop") >= 2, "{records:#?}");
    assert_eq!(count("sched:cancel", "purge"), 1, "{records:#?}");
    assert!(count("sched:read", "") >= 4, "{records:#?}");
    // `job history` is the same query.
    let out = a.cli(&["job", "history", "shop/web", "--json", "--limit", "1000"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stdout(&out).lines().count() >= records.len(),
        "{}",
        show(&out)
    );
    let out = a.cli(&["job", "history", "shop/web"]);
    assert!(stdout(&out).contains("sched:cancel"), "{}", show(&out));

    // The admin may not run a job of shop as another namespace's or a reserved identity: refused
    // and recorded.
    for (spiffe, file) in [
        (id("ns/other/web"), "x1.toml"),
        (id("ringzero/authority/1"), "x2.toml"),
        (id("user/admin"), "x3.toml"),
    ] {
        let f = write_job(&a, file, &job_toml("shop", "x", &spiffe, 1000));
        let out = a.cli(&["job", "run", &f]);
        assert_eq!(out.status.code(), Some(2), "{spiffe}: {}", show(&out));
    }
    let refused = audit(&a, &["--resource", "ns/shop/x", "--decision", "deny"]);
    assert!(
        refused.iter().any(|r| r["reason"]
            .as_str()
            .is_some_and(|s| s.starts_with("identity_outside_namespace"))),
        "{refused:#?}"
    );
    assert!(list(&a, &admin, None).is_empty());
}

#[test]
fn namespaces_are_confined_and_denials_audited() {
    let a = SoloAuthority::start("job-ns", TD);
    // carol: jobs, entries and uid 1000 in shop (the built-in developer role selects no uid).
    let roles = a.root.path().join("shop.toml");
    std::fs::write(
        &roles,
        "[[role]]\nname = \"shop-runner\"\nrights = [ \
         { operation = \"sched:submit\", resource = \"ns/shop\" }, \
         { operation = \"sched:cancel\", resource = \"ns/shop\" }, \
         { operation = \"sched:read\", resource = \"ns/shop\" }, \
         { operation = \"entry:write\", resource = \"ns/shop\" }, \
         { operation = \"entry:select\", resource = \"selector/unix/uid/1000\" }, \
         { operation = \"authority:read\", resource = \"authority\" } ]\n",
    )
    .unwrap();
    let out = a.cli(&["role", "apply", roles.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let carol = add_user(&a, "carol", &["--role", "shop-runner"]);
    // dave: a developer of namespace other.
    let dave = add_user(&a, "dave", &["--role", "developer", "--namespace", "other"]);

    let web = write_job(
        &a,
        "web.toml",
        &job_toml("shop", "web", &id("ns/shop/web"), 1000),
    );
    let out = as_user(&a, &carol, &["job", "run", &web]);
    assert!(
        out.status.success(),
        "carol in her namespace: {}",
        show(&out)
    );
    assert_eq!(
        status(&a, &carol, "shop/web")["submitted_by"],
        id("user/carol")
    );

    // dave may not submit into shop, stop, purge, read or list shop's jobs.
    let out = as_user(&a, &dave, &["job", "run", &web]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("sched:submit"), "{}", show(&out));
    for args in [
        &["job", "stop", "shop/web"][..],
        &["job", "stop", "shop/web", "--purge"],
        &["job", "status", "shop/web"],
        &["job", "list", "--namespace", "shop"],
        &["job", "list"],
    ] {
        let out = as_user(&a, &dave, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", show(&out));
    }
    assert_eq!(status(&a, &carol, "shop/web")["desired"], "running");
    // dave's own namespace, but as shop's identity (or with no uid right): refused too.
    let stolen = write_job(
        &a,
        "stolen.toml",
        &job_toml("other", "x", &id("ns/shop/web"), 1000),
    );
    let out = as_user(&a, &dave, &["job", "run", &stolen]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let own = write_job(
        &a,
        "own.toml",
        &job_toml("other", "x", &id("ns/other/x"), 1000),
    );
    let out = as_user(&a, &dave, &["job", "run", &own]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("entry:select"), "{}", show(&out));
    let denied = audit(&a, &["--decision", "deny", "--actor", &id("user/dave")]);
    for (operation, resource) in [
        ("sched:submit", "ns/shop/web"),
        ("sched:cancel", "ns/shop/web"),
        ("sched:read", "ns/shop/web"),
        ("sched:read", "ns/shop"),
        ("sched:read", ""),
        ("sched:submit", "ns/other/x"),
        ("entry:select", "selector/unix/uid/1000"),
    ] {
        assert!(
            denied
                .iter()
                .any(|r| r["operation"] == operation && r["resource"] == resource),
            "no denial of {operation} on {resource:?}: {denied:#?}"
        );
    }

    // carol may not run a shop job as other's identity, nor as a uid she was not given.
    let other_id = write_job(
        &a,
        "o.toml",
        &job_toml("shop", "api", &id("ns/other/api"), 1000),
    );
    let out = as_user(&a, &carol, &["job", "run", &other_id]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let root_uid = write_job(
        &a,
        "r.toml",
        &job_toml("shop", "api", &id("ns/shop/api"), 0),
    );
    let out = as_user(&a, &carol, &["job", "run", &root_uid, "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        stderr(&out).contains("entry:select on selector/unix/uid/0"),
        "{}",
        show(&out)
    );
    let denied = audit(&a, &["--decision", "deny", "--actor", &id("user/carol")]);
    assert!(
        denied.iter().any(|r| r["resource"] == "ns/shop/api"
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with("identity_outside_namespace"))),
        "{denied:#?}"
    );
    assert!(
        denied
            .iter()
            .any(|r| r["operation"] == "entry:select" && r["resource"] == "selector/unix/uid/0"),
        "{denied:#?}"
    );
    assert_eq!(list(&a, &carol, Some("shop")), ["shop/web"]);

    // carol stops and purges her own job.
    let out = as_user(&a, &carol, &["job", "stop", "shop/web", "--purge"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(list(&a, &carol, Some("shop")).is_empty());
}

#[test]
fn malformed_job_files_exit_2_and_write_nothing() {
    let a = SoloAuthority::start("job-bad", TD);
    let good = job_toml("shop", "bad", &id("ns/shop/bad"), 1000);
    let cases = [
        ("unknown key", good.replace("memory_mb", "memory_MB")),
        ("not toml", "namespace = \n[[[".to_owned()),
        ("missing uid", good.replace("uid = 1000\n", "")),
        ("negative uid", good.replace("uid = 1000", "uid = -1")),
        ("bad backoff", good.replace("\"2s\"", "\"2 fortnights\"")),
        // Parsed, then refused by the authority's checks.
        ("count 0", good.replace("count = 3", "count = 0")),
        ("count 100000", good.replace("count = 3", "count = 100000")),
        (
            "relative command",
            good.replace("/usr/bin/web", "usr/bin/web"),
        ),
        ("bad name", good.replace("name = \"bad\"", "name = \"b/d\"")),
        (
            "too many args",
            good.replace(
                "args = [\"--port\", \"8080\"]",
                &format!("args = [{}]", vec!["\"a\""; 300].join(",")),
            ),
        ),
        (
            "oversized job",
            good.replace(
                "args = [\"--port\", \"8080\"]",
                &format!(
                    "args = [{}]",
                    vec![format!("\"{}\"", "a".repeat(4000)); 20].join(",")
                ),
            ),
        ),
    ];
    for (what, text) in &cases {
        let f = write_job(&a, "bad.toml", text);
        let out = a.cli(&["job", "run", &f]);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", show(&out));
        assert!(!stderr(&out).trim().is_empty(), "{what}: {}", show(&out));
    }
    // A file past 1 MiB, a missing file, a directory.
    let f = write_job(&a, "huge.toml", &format!("{good}#{}", "x".repeat(1 << 20)));
    let out = a.cli(&["job", "run", &f]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(stderr(&out).contains("at most"), "{}", show(&out));
    for f in ["/nonexistent/job.toml", "/"] {
        let out = a.cli(&["job", "run", f]);
        assert_eq!(out.status.code(), Some(2), "{f}: {}", show(&out));
    }
    let out = a.cli(&["job", "status", "no-slash"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    // Nothing was written: no job, no write in the log.
    assert!(list(&a, &a.profile, None).is_empty());
    let records = audit(&a, &["--resource", "ns/shop/bad"]);
    assert!(
        records.iter().all(|r| r["operation"] != "sched:submit"),
        "{records:#?}"
    );
}
