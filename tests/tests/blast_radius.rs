//! `ringzero blast-radius` end to end, all real processes: an authority (`authority run`), two
//! enrolled agents (`agent run`), users and tokens made with the CLI. Each answer is computed
//! by the authority from its live state and must follow that state: a node's answer lists
//! exactly its own entries, a user's its role and what it minted (and says when it is
//! suspended), a member's says it reaches everything, a token's flips to revoked when revoked;
//! and the question itself needs audit:read and is audited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use ringzero_tests::agent::{agent_cmd, my_uid, spawn_ready_agent};
use ringzero_tests::{Proc, SoloAuthority, ringzero, run_timeout, show, wait_until};
use serde_json::Value;

const TD: &str = "blast.test";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn as_profile(a: &SoloAuthority, profile: &Path, args: &[&str]) -> Output {
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile").arg(profile).args(args);
    run_timeout(cmd, Duration::from_secs(60))
}

/// `blast-radius ARGS… --json` as the admin, parsed.
fn blast(a: &SoloAuthority, args: &[&str]) -> Value {
    let mut all = vec!["blast-radius"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = a.cli(&all);
    assert!(
        out.status.success(),
        "blast-radius {args:?}: {}",
        show(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("blast-radius {args:?} is not JSON ({e}): {}", show(&out)))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Every field a script may rely on, present with its type, whatever the principal.
fn assert_stable_shape(v: &Value) {
    for key in ["principal", "kind", "status"] {
        assert!(v[key].is_string(), "{key}: {v}");
    }
    for key in [
        "identities",
        "rights",
        "credentials",
        "minted",
        "held",
        "keys",
        "cut_off",
        "notes",
    ] {
        assert!(v[key].is_array(), "{key}: {v}");
    }
    assert!(v["all_identities"].is_boolean(), "{v}");
    assert!(v["until_cut_off"].is_boolean(), "{v}");
    assert!(v["until_ms"].is_u64(), "{v}");
    for i in v["identities"].as_array().unwrap() {
        for key in ["spiffe_id", "via", "entry_id", "parent"] {
            assert!(i[key].is_string(), "identity {key}: {i}");
        }
        assert!(
            i["selectors"].is_array() && i["ttl_seconds"].is_u64(),
            "{i}"
        );
    }
    for r in v["rights"].as_array().unwrap() {
        for key in ["operation", "resource", "source", "bound"] {
            assert!(r[key].is_string(), "right {key}: {r}");
        }
    }
}

fn start_agent(a: &SoloAuthority, name: &str) -> Proc {
    let token = format!("@{}", a.node_token(name, "10m").display());
    let cmd = agent_cmd(
        a.root.path(),
        &a.addr,
        Some(&token),
        &a.root.path().join(format!("agent-{name}")),
        &a.root.path().join(format!("{name}.sock")),
    );
    let log = a.root.path().join(format!("agent-{name}.log"));
    spawn_ready_agent(&format!("agent-{name}"), cmd, &log, Duration::from_secs(30))
}

fn entry(a: &SoloAuthority, id: &str, node: &str, uid: u32) -> String {
    let out = a.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://{TD}/{id}"),
        "--node",
        node,
        "--selector",
        &format!("unix:uid:{uid}"),
        "--ttl",
        "15m",
    ]);
    assert!(out.status.success(), "entry create: {}", show(&out));
    stdout(&out).trim().to_owned()
}

fn entry_ids(v: &Value) -> BTreeSet<String> {
    v["identities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["via"] == "entry")
        .map(|i| i["entry_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn nodes_and_members() {
    let a = SoloAuthority::start("blast-nodes", TD);
    let _n1 = start_agent(&a, "n1");
    let _n2 = start_agent(&a, "n2");
    let uid = my_uid();
    let web = entry(&a, "ns/shop/web", "n1", uid);
    let db = entry(&a, "ns/shop/db", "n1", uid + 1);
    let batch = entry(&a, "ns/batch/job", "n2", uid);

    // Each node's answer lists exactly its own entries, and its own identity.
    let n1 = blast(&a, &["node/n1"]);
    assert_stable_shape(&n1);
    assert_eq!(n1["kind"], "node");
    assert_eq!(n1["status"], "active");
    assert_eq!(entry_ids(&n1), BTreeSet::from([web.clone(), db.clone()]));
    let ids: Vec<&str> = n1["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["spiffe_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&format!("spiffe://{TD}/ringzero/node/n1").as_str()));
    assert!(ids.contains(&format!("spiffe://{TD}/ns/shop/web").as_str()));
    assert!(!ids.contains(&format!("spiffe://{TD}/ns/batch/job").as_str()));
    let web_identity = n1["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["entry_id"] == web.as_str())
        .unwrap();
    assert_eq!(web_identity["ttl_seconds"], 900);
    assert_eq!(
        strings(&web_identity["selectors"]),
        vec![format!("unix:uid:{uid}")]
    );
    // Its rights: what the node capability grants, bound to the node.
    let rights = n1["rights"].as_array().unwrap();
    assert_eq!(rights.len(), 1, "{n1}");
    assert_eq!(rights[0]["operation"], "svid:mint");
    assert_eq!(rights[0]["resource"], "node/n1");
    assert!(
        rights[0]["bound"].as_str().unwrap().contains("node n1"),
        "{n1}"
    );
    // Until: cut off, and what it holds now (its recorded node SVID) lives on until it expires.
    assert_eq!(n1["until_cut_off"], true);
    assert!(n1["until_ms"].as_u64().unwrap() > now_ms(), "{n1}");
    assert!(
        n1["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "svid" && c["revoked"] == false),
        "{n1}"
    );
    let cut = strings(&n1["cut_off"]);
    assert_eq!(cut[0], "ringzero node evict n1", "{n1}");
    assert!(cut.contains(&"ringzero node ban n1".to_owned()));
    assert!(
        strings(&n1["notes"])
            .iter()
            .any(|n| n.contains("already issued stay valid until they expire")),
        "{n1}"
    );

    let n2 = blast(&a, &["node/n2"]);
    assert_eq!(entry_ids(&n2), BTreeSet::from([batch.clone()]));

    // The answer follows the state: evicted, n2 holds nothing valid and can only be banned.
    let out = a.cli(&["node", "evict", "n2"]);
    assert!(out.status.success(), "evict: {}", show(&out));
    let n2 = blast(&a, &["node/n2"]);
    assert_eq!(n2["status"], "evicted");
    assert_eq!(n2["until_cut_off"], false);
    assert_eq!(strings(&n2["cut_off"]), vec!["ringzero node ban n2"]);
    assert_eq!(entry_ids(&n2), BTreeSet::from([batch]));

    // The readable report says the same, with the command to run.
    let out = a.cli(&["blast-radius", "node/n1"]);
    assert!(out.status.success(), "{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.contains("blast radius of node/n1 (node, active)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("spiffe://{TD}/ns/shop/db")),
        "{text}"
    );
    assert!(!text.contains("ns/batch/job"), "{text}");
    assert!(
        text.contains("Cut it off with:\n  ringzero node evict n1"),
        "{text}"
    );

    // An authority member reaches everything until removed, and the answer says how to remove
    // it so that its keys are trusted nowhere.
    let m = blast(&a, &["authority/1"]);
    assert_stable_shape(&m);
    assert_eq!(m["status"], "member");
    assert_eq!(m["all_identities"], true);
    assert_eq!(m["rights"][0]["operation"], "cluster:admin");
    assert_eq!(m["rights"][0]["resource"], "");
    assert_eq!(m["until_cut_off"], true);
    assert_eq!(
        strings(&m["cut_off"]),
        vec!["ringzero authority remove 1 --compromised"]
    );
    assert!(
        strings(&m["notes"])
            .iter()
            .any(|n| n.starts_with("why --compromised")),
        "{m}"
    );
    let kinds: BTreeSet<String> = m["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        kinds.contains("x509-ca") && kinds.contains("biscuit"),
        "{m}"
    );

    // Bad input: exit 2 before any call; an unknown member: exit 1.
    for bad in [
        &["node/a/b"][..],
        &["authority/x"],
        &["token"],
        &["token", "garbage"],
    ] {
        let mut args = vec!["blast-radius"];
        args.extend_from_slice(bad);
        let out = a.cli(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", show(&out));
    }
    let out = a.cli(&["blast-radius", "authority/9"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
}

fn add_user(a: &SoloAuthority, name: &str, role: &[&str]) -> PathBuf {
    let path = a.root.path().join(format!("{name}.profile"));
    let mut args = vec!["user", "add", name];
    args.extend_from_slice(role);
    let p = path.to_string_lossy().into_owned();
    args.extend_from_slice(&["--out", &p]);
    let out = a.cli(&args);
    assert!(out.status.success(), "user add {name}: {}", show(&out));
    path
}

#[test]
fn users_tokens_and_the_gate() {
    let a = SoloAuthority::start("blast-users", TD);
    let alice = add_user(&a, "alice", &["--role", "developer", "--namespace", "shop"]);
    let bob = format!("spiffe://{TD}/user/bob");

    // alice delegates part of her role to bob.
    let out = as_profile(
        &a,
        &alice,
        &["token", "mint", "--for", &bob, "--operation", "logs:read"],
    );
    assert!(out.status.success(), "mint: {}", show(&out));
    let delegated = stdout(&out).trim().to_owned();
    let delegated_id = ringzero_policy::token::revocation_ids(&delegated).unwrap()[0].to_hex();

    // alice's answer: her role's rights as they stand, her credentials, the token she minted.
    let v = blast(&a, &["user/alice"]);
    assert_stable_shape(&v);
    assert_eq!(v["status"], "active");
    let rights: BTreeSet<(String, String)> = v["rights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap().to_owned(),
                r["resource"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for op in ["entry:write", "token:mint", "logs:read", "sched:submit"] {
        assert!(
            rights.contains(&(op.to_owned(), "ns/shop".to_owned())),
            "{op}: {v}"
        );
    }
    assert!(
        rights.contains(&("authority:read".to_owned(), "authority".to_owned())),
        "{v}"
    );
    assert_eq!(v["rights"][0]["source"], "role developer in namespace shop");
    // No entry:select in the built-in role: her own identity only.
    let ids = v["identities"].as_array().unwrap();
    assert_eq!(ids.len(), 1, "{v}");
    assert_eq!(ids[0]["spiffe_id"], format!("spiffe://{TD}/user/alice"));
    // Her role's mesh:policy on her namespace: what she could open through the mesh.
    assert!(
        strings(&v["notes"])
            .iter()
            .any(|n| n.contains("with mesh:policy on ns/shop it can write mesh allow rules")),
        "{v}"
    );
    assert!(
        v["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "capability" && c["revoked"] == false),
        "{v}"
    );
    let minted = v["minted"].as_array().unwrap();
    assert_eq!(minted.len(), 1, "{v}");
    assert_eq!(minted[0]["revocation_id"], delegated_id.as_str());
    assert_eq!(minted[0]["subject"], bob.as_str());
    assert_eq!(minted[0]["rights"], "logs:read on ns/shop");
    assert_eq!(minted[0]["cut_off"], false);
    assert!(minted[0]["expires_ms"].as_u64().unwrap() > now_ms());
    let cut = strings(&v["cut_off"]);
    assert_eq!(cut[0], "ringzero user suspend alice", "{v}");
    assert!(cut.contains(&"ringzero user remove alice".to_owned()));
    assert!(cut.contains(&format!("ringzero token revoke --id {delegated_id}")));

    // The delegated token's own answer: its rights and expiry, minted by alice, valid.
    let token_file = a.root.path().join("delegated.token");
    std::fs::write(&token_file, &delegated).unwrap();
    let token_arg = format!("@{}", token_file.display());
    let t = blast(&a, &["token", &token_arg]);
    assert_stable_shape(&t);
    assert_eq!(t["kind"], "token");
    assert_eq!(t["status"], "valid");
    assert_eq!(t["rights"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(t["rights"][0]["operation"], "logs:read");
    assert_eq!(t["rights"][0]["resource"], "ns/shop");
    let expires = ringzero_policy::token::inspect(&delegated)
        .unwrap()
        .expires_unix
        .unwrap();
    assert_eq!(t["token"]["expires_ms"], expires * 1000);
    assert_eq!(t["until_ms"], expires * 1000);
    assert_eq!(t["token"]["signature"], "verified");
    assert_eq!(t["token"]["minted_by"], format!("spiffe://{TD}/user/alice"));
    assert_eq!(strings(&t["token"]["bound_peers"]), vec![bob.clone()]);
    assert_eq!(
        t["cut_off"][0],
        format!("ringzero token revoke --id {delegated_id}")
    );
    // Never echoed back, and never recorded.
    let out = a.cli(&["blast-radius", "token", &token_arg]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        !show(&out).contains(&delegated),
        "the token was echoed back"
    );
    assert!(
        stdout(&out).contains("Token (never shown)"),
        "{}",
        show(&out)
    );

    // A token attenuated offline: the answer is the intersection of what its blocks allow.
    let out = a.cli(&[
        "token",
        "attenuate",
        &token_arg,
        "--operation",
        "logs:read",
        "--resource",
        "ns/shop/web",
        "--ttl",
        "5m",
    ]);
    assert!(out.status.success(), "attenuate: {}", show(&out));
    let narrowed = stdout(&out).trim().to_owned();
    let narrowed_file = a.root.path().join("narrowed.token");
    std::fs::write(&narrowed_file, &narrowed).unwrap();
    let n = blast(&a, &["token", &format!("@{}", narrowed_file.display())]);
    assert_eq!(n["rights"][0]["resource"], "ns/shop/web", "{n}");
    assert_eq!(n["token"]["blocks"].as_array().unwrap().len(), 2);
    assert_eq!(
        strings(&n["token"]["blocks"][1]["resources"]),
        vec!["ns/shop/web"]
    );
    assert!(n["until_ms"].as_u64().unwrap() <= expires * 1000);

    // Revoked: the token's answer flips.
    let out = a.cli(&["token", "revoke", &token_arg]);
    assert!(out.status.success(), "revoke: {}", show(&out));
    let t = blast(&a, &["token", &token_arg]);
    assert_eq!(t["status"], "revoked", "{t}");
    assert_eq!(t["until_ms"], 0);
    assert_eq!(
        strings(&t["token"]["revoked_blocks"]),
        vec![delegated_id.clone()]
    );
    let n = blast(&a, &["token", &format!("@{}", narrowed_file.display())]);
    assert_eq!(n["status"], "revoked", "an attenuation dies with it: {n}");

    // A second delegation, then alice is suspended: her answer says so, and what she minted is
    // cut off.
    let out = as_profile(
        &a,
        &alice,
        &["token", "mint", "--for", &bob, "--operation", "sched:read"],
    );
    assert!(out.status.success(), "mint: {}", show(&out));
    let second = stdout(&out).trim().to_owned();
    let out = a.cli(&["user", "suspend", "alice"]);
    assert!(out.status.success(), "suspend: {}", show(&out));
    let v = blast(&a, &["user/alice"]);
    assert_eq!(v["status"], "suspended", "{v}");
    assert_eq!(v["until_cut_off"], false);
    assert_eq!(strings(&v["cut_off"]), vec!["ringzero user remove alice"]);
    assert!(
        strings(&v["notes"])
            .iter()
            .any(|n| n.starts_with("suspended:")),
        "{v}"
    );
    assert!(
        v["minted"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["revoked"] == true || m["cut_off"] == true),
        "{v}"
    );
    let second_file = a.root.path().join("second.token");
    std::fs::write(&second_file, &second).unwrap();
    let t = blast(&a, &["token", &format!("@{}", second_file.display())]);
    assert_eq!(t["status"], "cut_off", "{t}");
    assert!(
        t["token"]["cut_off_reason"]
            .as_str()
            .unwrap()
            .contains("suspended"),
        "{t}"
    );

    // Without audit:read the question is refused, and the refusal is on the audit log. (A
    // developer holds no audit:read; carol is not suspended.)
    let carol = add_user(&a, "carol", &["--role", "developer", "--namespace", "shop"]);
    let out = as_profile(&a, &carol, &["blast-radius", "node/n1"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        show(&out)
    );
    assert!(out.stdout.is_empty(), "{}", show(&out));
    let carol_id = format!("spiffe://{TD}/user/carol");
    let record = wait_until(
        "carol's refused blast-radius on the audit log",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let out = a.cli(&[
                "audit",
                "query",
                "--actor",
                &carol_id,
                "--decision",
                "deny",
                "--json",
            ]);
            assert!(out.status.success(), "{}", show(&out));
            stdout(&out)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| r["operation"] == "audit:read" && r["resource"] == "audit")
        },
    );
    assert_eq!(record["decision"], "deny", "{record}");
    // Allowed questions are audited too, naming what was assessed — a token by its revocation
    // ids, never itself.
    let out = a.cli(&["audit", "query", "--operation", "audit:read", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let log = stdout(&out);
    assert!(log.contains("user/alice"), "{log}");
    assert!(log.contains(&delegated_id), "{log}");
    assert!(!log.contains(&delegated), "a token on the audit log");
}
