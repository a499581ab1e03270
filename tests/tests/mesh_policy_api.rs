//! Mesh policy in the authority, real processes: `mesh allow` / `mesh deny` / `mesh policy list`
//! gated on `mesh:policy` on the path of `--to` (a developer decides for its own namespace and
//! no other), every refusal recorded in the audit log, a `--to` outside `ns/…` refused whatever
//! the caller holds; the entry feed hands an agent exactly the policies protecting its own
//! node's identities; and a real agent (`agent run`) hands them on its socket, through ringzero's
//! mesh extension, to the workload attested for that identity.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ringzero_policy::TrustDomain;
use ringzero_policy::join::{JoinToken, pin_matches};
use ringzero_policy::svid::{TrustBundle, csr_for, generate_key};
use ringzero_proto::client::{
    AuthorityClient, Credentials, bundle_cas, fetch_bundle_unverified, redeem_join_token,
};
use ringzero_proto::pb;
use ringzero_tests::{
    Proc, SoloAuthority, admin_client, audit, ringzero, run_timeout, show, wait_until,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const TD: &str = "meshpol.test";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn as_user(a: &SoloAuthority, profile: &Path, args: &[&str]) -> Output {
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile").arg(profile).args(args);
    run_timeout(cmd, Duration::from_secs(60))
}

fn developer(a: &SoloAuthority, name: &str, namespace: &str) -> PathBuf {
    let path = a.root.path().join(format!("{name}.profile"));
    let out = a.cli(&[
        "user",
        "add",
        name,
        "--role",
        "developer",
        "--namespace",
        namespace,
        "--out",
        &path.to_string_lossy(),
    ]);
    assert!(out.status.success(), "user add {name}: {}", show(&out));
    path
}

fn id(path: &str) -> String {
    format!("spiffe://{TD}/{path}")
}

fn policies(a: &SoloAuthority, profile: &Path, scope: &str) -> Vec<(String, String)> {
    let out = as_user(
        a,
        profile,
        &["mesh", "policy", "list", "--scope", scope, "--json"],
    );
    assert!(out.status.success(), "mesh policy list: {}", show(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["to"].as_str().unwrap().to_owned(),
                p["from"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn mesh_policy_is_gated_on_the_to_namespace_and_audited() {
    let a = SoloAuthority::start("mesh-policy-gate", TD);
    let carol = developer(&a, "carol", "shop");
    let dave = developer(&a, "dave", "other");
    let (db, web) = (id("ns/shop/db"), id("ns/shop/web"));

    // carol protects her own namespace's workload.
    let out = as_user(&a, &carol, &["mesh", "allow", "--to", &db, "--from", &web]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(policies(&a, &carol, "ns/shop"), [(db.clone(), web.clone())]);
    let allowed = audit(&a, &["--operation", "mesh:policy", "--decision", "allow"]);
    assert!(
        allowed.iter().any(|r| r["actor"] == id("user/carol")
            && r["resource"] == "ns/shop/db"
            && r["details"].to_string().contains(&web)),
        "{allowed:#?}"
    );

    // dave (a developer of ns/other) may neither add nor remove a rule protecting ns/shop, nor
    // list shop's rules; each refusal is in the log.
    let attacker = id("ns/other/x");
    let out = as_user(
        &a,
        &dave,
        &["mesh", "allow", "--to", &db, "--from", &attacker],
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("mesh:policy"), "{}", show(&out));
    let out = as_user(&a, &dave, &["mesh", "deny", "--to", &db, "--from", &web]);
    assert!(!out.status.success(), "{}", show(&out));
    let out = as_user(
        &a,
        &dave,
        &["mesh", "allow", "--to", &id("ns/*"), "--from", &attacker],
    );
    assert!(!out.status.success(), "{}", show(&out));
    let out = as_user(&a, &dave, &["mesh", "policy", "list", "--scope", "ns/shop"]);
    assert!(!out.status.success(), "{}", show(&out));
    let denied = audit(&a, &["--decision", "deny", "--actor", &id("user/dave")]);
    for (operation, resource) in [
        ("mesh:policy", "ns/shop/db"),
        ("mesh:policy", "ns"),
        ("mesh:read", "ns/shop"),
    ] {
        assert!(
            denied
                .iter()
                .any(|r| r["operation"] == operation && r["resource"] == resource),
            "no denial of {operation} on {resource}: {denied:#?}"
        );
    }
    assert_eq!(policies(&a, &carol, "ns/shop"), [(db.clone(), web.clone())]);
    // dave's own namespace is his to protect.
    let out = as_user(
        &a,
        &dave,
        &["mesh", "allow", "--to", &id("ns/other/*"), "--from", &web],
    );
    assert!(out.status.success(), "{}", show(&out));

    // A reserved or non-namespace `to` is refused even to the admin, and recorded.
    for to in [id("ringzero/authority/1"), id("user/carol"), id("*")] {
        let out = a.cli(&["mesh", "allow", "--to", &to, "--from", &web]);
        assert!(!out.status.success(), "{to}: {}", show(&out));
    }
    let refused = audit(&a, &["--operation", "mesh:policy", "--decision", "deny"]);
    assert!(
        refused
            .iter()
            .any(|r| r["resource"] == "ringzero/authority/1"
                && r["reason"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("not_a_namespace"))),
        "{refused:#?}"
    );
    // Other trust domains and malformed patterns are refused before anything is decided.
    let out = a.cli(&[
        "mesh",
        "allow",
        "--to",
        "spiffe://other.test/ns/shop/db",
        "--from",
        &web,
    ]);
    assert!(!out.status.success(), "{}", show(&out));
    // A malformed rule in carol's own namespace (a bare trust domain as --from names no
    // workload) is invalid input: refused, and not recorded as a namespace denial.
    let before = audit(&a, &["--operation", "mesh:policy", "--decision", "deny"]).len();
    let bare = format!("spiffe://{TD}");
    let out = as_user(&a, &carol, &["mesh", "allow", "--to", &db, "--from", &bare]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("names no workload"), "{}", show(&out));
    let after = audit(&a, &["--operation", "mesh:policy", "--decision", "deny"]);
    assert_eq!(after.len(), before, "{after:#?}");

    // The admin sees every rule; carol removes hers.
    assert_eq!(policies(&a, &a.profile, "").len(), 2);
    let out = as_user(&a, &carol, &["mesh", "deny", "--to", &db, "--from", &web]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(policies(&a, &carol, "ns/shop").is_empty());
    // Removing it again: not found.
    let out = as_user(&a, &carol, &["mesh", "deny", "--to", &db, "--from", &web]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("not found"), "{}", show(&out));
}

/// Enrolls node `name` as an agent would (pinned bundle, local key) and returns its client.
async fn enrolled_node(
    a: &SoloAuthority,
    admin: &mut AuthorityClient,
    name: &str,
) -> AuthorityClient {
    let node_name = name.to_owned();
    let token = admin
        .call(|mut g| {
            let node_name = node_name.clone();
            async move {
                g.create_join_token(pb::CreateJoinTokenRequest {
                    purpose: "agent".into(),
                    node_name,
                    ttl_seconds: 600,
                    namespace: String::new(),
                })
                .await
            }
        })
        .await
        .unwrap()
        .token;
    let token = JoinToken::parse(&token).unwrap();
    let cas = bundle_cas(&fetch_bundle_unverified(&a.addr).await.unwrap());
    assert!(pin_matches(&token.pin, &cas));
    let td = TrustDomain::new(TD).unwrap();
    let bundle = TrustBundle::new(td.clone(), cas).unwrap();
    let key = generate_key().unwrap();
    let csr = csr_for(&key, &td.id_with_path(&["ringzero", "node", name]).unwrap()).unwrap();
    let reply = redeem_join_token(&a.addr, &bundle, &token, &csr)
        .await
        .unwrap();
    let chain = reply
        .svid_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let creds = Credentials::new(
        td,
        bundle,
        chain,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        Some(reply.token),
    );
    AuthorityClient::new(creds, vec![a.addr.clone()])
}

async fn entry(admin: &mut AuthorityClient, path: &str, node: &str, uid: u32) {
    let req = pb::PutEntryRequest {
        spiffe_id: id(path),
        parent: node.into(),
        selectors: vec![format!("unix:uid:{uid}")],
        ttl_seconds: 600,
        ..Default::default()
    };
    admin
        .call(|mut g| {
            let r = req.clone();
            async move { g.create_entry(r).await }
        })
        .await
        .unwrap();
}

async fn mesh(admin: &mut AuthorityClient, allow: bool, to: &str, from: &str) {
    let req = pb::MeshPolicyRequest {
        to: id(to),
        from: id(from),
    };
    admin
        .call(|mut g| {
            let r = req.clone();
            async move {
                if allow {
                    g.mesh_allow(r).await
                } else {
                    g.mesh_deny(r).await
                }
            }
        })
        .await
        .unwrap();
}

async fn feed(node: &mut AuthorityClient) -> tonic::Streaming<pb::SyncEntriesEvent> {
    node.call(|mut g| async move {
        g.sync_entries(pb::SyncEntriesRequest {
            since_revision: 0,
            ..Default::default()
        })
        .await
    })
    .await
    .unwrap()
}

/// The next mesh policy set on the feed (skipping events without one), as `(to, from)` paths.
async fn next_policies(
    stream: &mut tonic::Streaming<pb::SyncEntriesEvent>,
) -> Vec<(String, String)> {
    let strip = |s: &str| s.trim_start_matches(&format!("spiffe://{TD}/")).to_owned();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ev = stream.message().await.unwrap().expect("the feed ended");
            if let Some(set) = ev.mesh_policies {
                let mut v: Vec<(String, String)> = set
                    .policies
                    .iter()
                    .map(|p| (strip(&p.to), strip(&p.from)))
                    .collect();
                v.sort();
                return v;
            }
        }
    })
    .await
    .expect("no mesh policies on the feed within 5 s")
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn each_agent_receives_only_the_policies_protecting_its_identities() {
    let a = SoloAuthority::start("mesh-policy-feed", TD);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut admin = admin_client(&a);
        let mut n1 = enrolled_node(&a, &mut admin, "n1").await;
        let mut n2 = enrolled_node(&a, &mut admin, "n2").await;
        entry(&mut admin, "ns/shop/db", "n1", 1001).await;
        entry(&mut admin, "ns/shop/web", "n2", 1002).await;
        mesh(&mut admin, true, "ns/shop/db", "ns/shop/web").await;
        mesh(&mut admin, true, "ns/shop/web", "ns/edge/*").await;
        mesh(&mut admin, true, "ns/other/*", "ns/shop/web").await;

        let mut f1 = feed(&mut n1).await;
        let mut f2 = feed(&mut n2).await;
        assert_eq!(
            next_policies(&mut f1).await,
            pairs(&[("ns/shop/db", "ns/shop/web")])
        );
        assert_eq!(
            next_policies(&mut f2).await,
            pairs(&[("ns/shop/web", "ns/edge/*")])
        );

        // A new rule for n1's identity is pushed to n1.
        mesh(&mut admin, true, "ns/shop/*", "ns/shop/*").await;
        assert_eq!(
            next_policies(&mut f1).await,
            pairs(&[("ns/shop/*", "ns/shop/*"), ("ns/shop/db", "ns/shop/web")])
        );
        // `mesh deny` removes it from the feed.
        mesh(&mut admin, false, "ns/shop/db", "ns/shop/web").await;
        assert_eq!(
            next_policies(&mut f1).await,
            pairs(&[("ns/shop/*", "ns/shop/*")])
        );
        // A new entry on n1 brings the rules protecting it.
        entry(&mut admin, "ns/other/a", "n1", 1003).await;
        assert_eq!(
            next_policies(&mut f1).await,
            pairs(&[("ns/other/*", "ns/shop/web"), ("ns/shop/*", "ns/shop/*")])
        );
        // n2 saw ns/shop/* arrive (it protects web too) and nothing of n1's others.
        assert_eq!(
            next_policies(&mut f2).await,
            pairs(&[("ns/shop/*", "ns/shop/*"), ("ns/shop/web", "ns/edge/*")])
        );
    });
}

#[test]
fn a_real_agent_hands_its_workload_the_policies_for_its_identity() {
    use std::os::unix::fs::MetadataExt;
    let a = SoloAuthority::start("mesh-policy-agent", TD);
    let out = a.cli(&["node", "token", "--name", "n7", "--ttl", "10m"]);
    assert!(out.status.success(), "node token: {}", show(&out));
    let token = a.root.path().join("n7.token");
    std::fs::write(&token, stdout(&out).lines().last().unwrap().trim()).unwrap();
    let socket = a.root.path().join("n7.sock");
    let mut cmd = ringzero(a.root.path());
    cmd.args(["agent", "run", "--authority", &a.addr])
        .arg("--join-token")
        .arg(format!("@{}", token.display()))
        .arg("--data-dir")
        .arg(a.root.path().join("agent-n7"))
        .arg("--socket")
        .arg(&socket);
    let mut agent = Proc::spawn("agent-n7", cmd, &a.root.path().join("agent-n7.log"));
    wait_until(
        "the agent to be ready",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            assert!(agent.is_running(), "the agent exited: {}", agent.log());
            agent.log().contains("agent ready").then_some(())
        },
    );
    // This test process is ns/test/me on n7; ns/test/other is someone else's.
    let uid = tempfile::NamedTempFile::new()
        .unwrap()
        .as_file()
        .metadata()
        .unwrap()
        .uid();
    let me = id("ns/test/me");
    for (path, uid) in [("ns/test/me", uid), ("ns/test/other", uid.wrapping_add(1))] {
        let out = a.cli(&[
            "entry",
            "create",
            "--spiffe-id",
            &id(path),
            "--node",
            "n7",
            "--selector",
            &format!("unix:uid:{uid}"),
        ]);
        assert!(out.status.success(), "entry create: {}", show(&out));
    }
    let web = id("ns/test/web");
    for (to, from) in [(me.as_str(), web.as_str()), (&id("ns/test/other"), &web)] {
        let out = a.cli(&["mesh", "allow", "--to", to, "--from", from]);
        assert!(out.status.success(), "{}", show(&out));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use ringzero_proto::mesh as mpb;
        let channel = ringzero_proto::transport::unix_channel(&socket)
            .await
            .unwrap();
        let mut client = mpb::mesh_policy_client::MeshPolicyClient::new(channel);
        let mut req = tonic::Request::new(mpb::WatchRequest {});
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        let mut stream = client.watch(req).await.unwrap().into_inner();
        let mut next_rules = async || {
            tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("no update within 10 s")
                .unwrap()
                .expect("the stream ended")
                .rules
                .into_iter()
                .map(|r| (r.to, r.from))
                .collect::<Vec<_>>()
        };
        // Only the rule protecting this process's own identity, never other's.
        let mut rules = next_rules().await;
        while rules.is_empty() {
            rules = next_rules().await;
        }
        assert_eq!(rules, [(me.clone(), web.clone())]);
        let out = a.cli(&["mesh", "deny", "--to", &me, "--from", &web]);
        assert!(out.status.success(), "{}", show(&out));
        assert!(next_rules().await.is_empty());
    });
    agent.terminate(Duration::from_secs(10));
}
