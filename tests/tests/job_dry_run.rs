//! `job run FILE --dry-run` shows the placement it would make, real processes: an authority
//! and two agents. A job of count 2 is shown with index 0 and 1 on different nodes (JSON and
//! table), and nothing is written: no job, no allocation, and the admin's audit records of the
//! dry run are reads only (the dry-run submit, job, allocation and node-health reads). A caller
//! without `node:read` gets the check, a note that the placement needs it, and exit 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ringzero_proto::client::{AuthorityClient, Profile};
use ringzero_proto::pb;
use ringzero_tests::agent::{agent_cmd, my_uid, spawn_ready_agent};
use ringzero_tests::{Proc, SoloAuthority, audit, ringzero, run_timeout, show, wait_until};

const TD: &str = "dryrun.test";

fn start_agent(a: &SoloAuthority, name: &str) -> Proc {
    let token = a.node_token(name, "10m");
    let token = format!("@{}", token.display());
    let dir = a.root.path().join(format!("agent-{name}"));
    let socket = a.root.path().join(format!("{name}.sock"));
    let cmd = agent_cmd(a.root.path(), &a.addr, Some(&token), &dir, &socket);
    let log = a.root.path().join(format!("agent-{name}.log"));
    spawn_ready_agent(&format!("agent-{name}"), cmd, &log, Duration::from_secs(30))
}

fn job_file(a: &SoloAuthority, uid: u32) -> String {
    let path = a.root.path().join("web.toml");
    std::fs::write(
        &path,
        format!(
            "namespace = \"shop\"\nname = \"web\"\ncommand = \"/bin/sleep\"\n\
             args = [\"120\"]\nuid = {uid}\ngid = {uid}\ncount = 2\n\
             spiffe_id = \"spiffe://{TD}/ns/shop/web\"\n"
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn all_allocs(a: &SoloAuthority) -> Vec<pb::Alloc> {
    let p = Profile::from_toml(&std::fs::read_to_string(&a.profile).unwrap()).unwrap();
    let mut c = AuthorityClient::new(p.credentials().unwrap(), p.authorities.clone());
    let rt = ringzero_tests::cluster::runtime();
    rt.block_on(
        c.call(|mut g| async move { g.list_allocs(pb::ListAllocsRequest::default()).await }),
    )
    .unwrap()
    .allocs
}

fn as_user(a: &SoloAuthority, profile: &Path, args: &[&str]) -> Output {
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile").arg(profile).args(args);
    run_timeout(cmd, Duration::from_secs(60))
}

fn dry_run_json(a: &SoloAuthority, file: &str) -> serde_json::Value {
    let out = a.cli(&["job", "run", file, "--dry-run", "--json"]);
    assert!(out.status.success(), "dry run: {}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_dry_run_shows_the_placement_and_writes_nothing() {
    let a = SoloAuthority::start("job-dry-run", TD);
    let _n1 = start_agent(&a, "n1");
    let _n2 = start_agent(&a, "n2");
    let uid = my_uid();
    let file = job_file(&a, uid);
    let admin_id = format!("spiffe://{TD}/user/admin");
    let before = audit(&a, &["--actor", &admin_id]).len();

    // Both agents' feeds open: index 0 and 1 on different nodes.
    let plan = wait_until(
        "the dry run to place both indexes",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            let v = dry_run_json(&a, &file);
            (v["placement"]["place"].as_array()?.len() == 2).then_some(v)
        },
    );
    assert_eq!(plan["version"], 1, "{plan}");
    let place = plan["placement"]["place"].as_array().unwrap();
    assert_eq!(place[0]["index"], 0, "{plan}");
    assert_eq!(place[1]["index"], 1, "{plan}");
    let nodes: Vec<&str> = place.iter().map(|p| p["node"].as_str().unwrap()).collect();
    assert_ne!(nodes[0], nodes[1], "{plan}");
    assert!(nodes.iter().all(|n| ["n1", "n2"].contains(n)), "{plan}");
    assert!(plan["placement"]["blocked"].as_array().unwrap().is_empty());
    assert!(plan["placement"]["stop"].as_array().unwrap().is_empty());

    // The table says the same.
    let out = a.cli(&["job", "run", &file, "--dry-run"]);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("INDEX"), "{}", show(&out));
    let placed: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with("place"))
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(placed.len(), 2, "{}", show(&out));
    assert_ne!(placed[0], placed[1], "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing committed"),
        "{}",
        show(&out)
    );

    // Nothing written: no job, no allocation.
    let out = a.cli(&["job", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = a.cli(&["job", "status", "shop/web"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let records = audit(&a, &["--actor", &admin_id]);
    let dry: Vec<&serde_json::Value> = records[before..]
        .iter()
        .filter(|r| r["operation"] != "audit:read" && r["operation"] != "authority:read")
        .collect();
    assert!(!dry.is_empty(), "{records:#?}");
    for r in &dry {
        let op = r["operation"].as_str().unwrap();
        match op {
            "sched:submit" => assert!(r["details"].to_string().contains("dry_run"), "{r}"),
            "sched:read" | "node:read" => {}
            _ => panic!("a dry run recorded {op}: {r}"),
        }
    }
    assert!(
        dry.iter().any(|r| r["operation"] == "node:read"),
        "{dry:#?}"
    );
    let allocs = all_allocs(&a);
    assert!(allocs.is_empty(), "{allocs:#?}");

    // A caller who may check the job but not read nodes: the check, a note, exit 0.
    let roles = a.root.path().join("shop.toml");
    std::fs::write(
        &roles,
        format!(
            "[[role]]\nname = \"shop-runner\"\nrights = [ \
             {{ operation = \"sched:submit\", resource = \"ns/shop\" }}, \
             {{ operation = \"sched:read\", resource = \"ns/shop\" }}, \
             {{ operation = \"entry:write\", resource = \"ns/shop\" }}, \
             {{ operation = \"entry:select\", resource = \"selector/unix/uid/{uid}\" }}, \
             {{ operation = \"authority:read\", resource = \"authority\" }} ]\n"
        ),
    )
    .unwrap();
    let out = a.cli(&["role", "apply", roles.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let carol: PathBuf = a.root.path().join("carol.profile");
    let out = a.cli(&[
        "user",
        "add",
        "carol",
        "--role",
        "shop-runner",
        "--out",
        &carol.to_string_lossy(),
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let out = as_user(&a, &carol, &["job", "run", &file, "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 1, "{v}");
    assert!(v["placement"].is_null(), "{v}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs node:read"),
        "{}",
        show(&out)
    );
}
