//! Attackers on an agent node: the node itself compromised (root on it: the agent's key, SVID
//! and capability in its data directory), and a workload process on it (its own SVID from the
//! Workload API, perhaps a token stolen from elsewhere).
//!
//! A real agent (`ringzero agent run`) enrolls with `ringzero node token`; the attacker then
//! reads `node.profile` from its data directory and calls the authority as the node.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ringzero_policy::svid::{TrustBundle, Usage, csr_for, generate_key, validate_svid};
use ringzero_proto::client::{AuthorityClient, Profile};
use ringzero_proto::pb;
use ringzero_tests::agent::{agent_cmd, my_uid, spawn_ready_agent};
use ringzero_tests::cluster::*;
use ringzero_tests::{Proc, ringzero, run_timeout, show, wait_until};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::common::*;

const NODE: &str = "compromised agent node";
const WORKLOAD: &str = "compromised workload process";

/// Enrolls agent `name` with `node token` and `agent run`; returns it once ready.
fn start_agent(c: &Cluster, name: &str) -> (Proc, PathBuf, PathBuf) {
    let token = last_line(&ok(
        c.cli(&["node", "token", "--name", name, "--ttl", "10m"]),
        "node token",
    ));
    let token = at_file(c, &format!("{name}.token"), &token);
    let dir = c.path().join(format!("agent-{name}"));
    let socket = c.path().join(format!("{name}.sock"));
    let cmd = agent_cmd(c.path(), &c.nodes[0].addr, Some(&token), &dir, &socket);
    let log = c.path().join(format!("agent-{name}.log"));
    let p = spawn_ready_agent(&format!("agent-{name}"), cmd, &log, Duration::from_secs(30));
    (p, dir, socket)
}

/// `agent fetch --write DIR` until the workload's SVID is there; the SVID as a TLS client
/// presents it.
fn fetch_svid(c: &Cluster, socket: &Path, want: &str) -> Svid {
    let dir = c.path().join("fetched");
    wait_until(
        "the workload SVID",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let mut cmd = ringzero(c.path());
            cmd.args(["agent", "fetch", "--json", "--timeout", "3s", "--socket"])
                .arg(socket)
                .arg("--write")
                .arg(&dir);
            let out = run_timeout(cmd, CLI_TIMEOUT);
            (out.status.success() && stdout(&out).contains(want)).then_some(())
        },
    );
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("svid.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("svid.key")).unwrap();
    Svid { chain, key }
}

fn node_client(p: &Profile, addr: &str) -> AuthorityClient {
    AuthorityClient::new(p.credentials().unwrap(), vec![addr.to_owned()])
}

async fn mint(
    node: &mut AuthorityClient,
    entry_id: &str,
) -> Result<pb::MintedSvid, ringzero_proto::client::ClientError> {
    let key = generate_key().unwrap();
    let csr = csr_for(&key, &spiffe_id("csr")).unwrap();
    let req = pb::MintSvidsRequest {
        requests: vec![pb::SvidRequest {
            entry_id: entry_id.into(),
            csr,
        }],
    };
    let reply = node
        .call(|mut g| {
            let r = req.clone();
            async move { g.mint_svids(r).await }
        })
        .await?;
    Ok(reply.svids.into_iter().next().unwrap())
}

/// A call that only needs the gate: `ListNodes` (`node:read`) over `svid` with `token`.
async fn list_nodes_over(
    addr: &str,
    admin: &Profile,
    svid: &Svid,
    token: &str,
) -> Result<(), tonic::Status> {
    pb::authority_client::AuthorityClient::new(channel(addr, mtls(admin, svid)))
        .list_nodes(with_bearer(pb::ListNodesRequest {}, Some(token)))
        .await
        .map(|_| ())
}

#[test]
fn compromised_agent_node_and_workload_process() {
    let c = Cluster::new("adv-nodes");
    let admin = c.profile();
    let addr = c.nodes[0].addr.clone();
    let rt = runtime();
    let uid = my_uid().to_string();
    let (mut agent, agent_dir, socket) = start_agent(&c, "n7");
    let web = id("ns/app/web");
    let entry = |spiffe_id: &str, node: &str| {
        last_line(&ok(
            c.cli(&[
                "entry",
                "create",
                "--spiffe-id",
                spiffe_id,
                "--node",
                node,
                "--selector",
                &format!("unix:uid:{uid}"),
            ]),
            "entry create",
        ))
    };
    let web_entry = entry(&web, "n7");
    // Another node's workload: the prize.
    let db_entry = entry(&id("ns/payments/db"), "n8");
    let workload = fetch_svid(&c, &socket, &web);
    let node_profile = read_profile(&agent_dir.join("node.profile"));
    let node_id = id("ringzero/node/n7");

    let g = Group::new(WORKLOAD, &c);
    g.case(
        "a workload SVID with the admin's stolen token is refused as peer_mismatch",
        || {
            let r = rt.block_on(async {
                pb::authority_client::AuthorityClient::new(channel(&addr, mtls(&admin, &workload)))
                    .status(with_bearer(pb::StatusRequest {}, Some(&admin.token)))
                    .await
            });
            let s = r.expect_err("the admin's token over a workload SVID");
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            assert!(s.message().contains("bound to another peer"), "{s:?}");
            audited(&c, &web, "authority:read", "peer_mismatch");
        },
    );

    g.case(
        "a workload SVID cannot act as its agent: MintSvids is refused for a non-node identity",
        || {
            let mut as_agent = AuthorityClient::new(
                ringzero_proto::client::Credentials::new(
                    td(),
                    TrustBundle::new(td(), admin.bundle_certs().unwrap()).unwrap(),
                    workload.chain.clone(),
                    workload.key.clone_key(),
                    Some(node_profile.token.clone()),
                ),
                vec![addr.clone()],
            );
            let e = rt
                .block_on(mint(&mut as_agent, &web_entry))
                .expect_err("a workload minted SVIDs");
            assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
            assert!(e.to_string().contains("not an agent node identity"), "{e}");
        },
    );

    if is_root() && Path::new("/usr/bin/setpriv").exists() {
        g.case(
            "a Workload API caller of another uid gets no identity",
            || {
                use std::os::unix::fs::PermissionsExt;
                // Let uid 65534 reach the socket (the agent makes it 0666) — and nothing else.
                std::fs::set_permissions(c.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
                let mut cmd = std::process::Command::new("/usr/bin/setpriv");
                cmd.current_dir("/")
                    .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                    .arg(ringzero_tests::ringzero_bin())
                    .args(["agent", "fetch", "--json", "--timeout", "3s", "--socket"])
                    .arg(&socket);
                let out = run_timeout(cmd, CLI_TIMEOUT);
                assert_eq!(out.status.code(), Some(1), "uid 65534: {}", show(&out));
                assert!(show(&out).contains("no identity issued"), "{}", show(&out));
                assert!(!stdout(&out).contains("spiffe://"), "{}", show(&out));
            },
        );
    } else {
        g.skip(
            "a Workload API caller of another uid gets no identity",
            "needs root and setpriv to run a second uid",
        );
    }
    g.finish();

    let g = Group::new(NODE, &c);
    let mut node = node_client(&node_profile, &addr);
    g.case(
        "MintSvids for another node's entry is refused and audited",
        || {
            let own = rt.block_on(mint(&mut node, &web_entry)).unwrap();
            assert!(own.error.is_empty(), "its own entry: {}", own.error);
            let stolen = rt.block_on(mint(&mut node, &db_entry)).unwrap();
            assert!(stolen.svid_chain.is_empty(), "n8's SVID was issued to n7");
            assert!(stolen.error.contains("not parented"), "{}", stolen.error);
            let all = denials(&c);
            assert!(
                all.iter().any(|d| d.actor == node_id
                    && d.operation == "svid:mint"
                    && d.resource == "node/n8"
                    && d.reason
                        .as_deref()
                        .is_some_and(|r| r.contains("parented to another node"))),
                "the attempt is not audited"
            );
        },
    );

    g.case(
        "a MintSvids batch over the 256-CSR cap is refused whole, nothing issued",
        || {
            let issued = || records(&c, &["--operation", "svid:mint", "--decision", "allow"]).len();
            let before = issued();
            let key = generate_key().unwrap();
            let csr = csr_for(&key, &spiffe_id("csr")).unwrap();
            let req = pb::MintSvidsRequest {
                requests: (0..257)
                    .map(|_| pb::SvidRequest {
                        entry_id: web_entry.clone(),
                        csr: csr.clone(),
                    })
                    .collect(),
            };
            let e = rt
                .block_on(node.call(|mut g| {
                    let r = req.clone();
                    async move { g.mint_svids(r).await }
                }))
                .expect_err("257 CSRs in one call");
            assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");
            assert!(e.to_string().contains("at most 256"), "{e}");
            assert_eq!(issued(), before, "an SVID of the refused batch was issued");
        },
    );

    let node_profile_path = agent_dir.join("node.profile");
    g.case(
        "the node's credentials cannot list the nodes (node:read)",
        || {
            let out = as_profile(&c, &node_profile_path, &["node", "list"]);
            refused(&out, &["permission denied"], "node list");
            audited_any(
                &c,
                &node_id,
                "node:read",
                &["no_matching_right", "node_mismatch"],
            );
        },
    );

    g.case(
        "the node's credentials cannot create an entry, not even for itself (entry:write)",
        || {
            let evil = id("ns/app/evil");
            let out = as_profile(
                &c,
                &node_profile_path,
                &[
                    "entry",
                    "create",
                    "--spiffe-id",
                    &evil,
                    "--node",
                    "n7",
                    "--selector",
                    "unix:uid:0",
                ],
            );
            refused(&out, &["permission denied"], "entry create");
            audited_any(
                &c,
                &node_id,
                "entry:write",
                &["no_matching_right", "node_mismatch"],
            );
        },
    );

    g.case(
        "the node's token presented over a workload SVID of that node is refused as peer_mismatch",
        || {
            let s = rt
                .block_on(list_nodes_over(
                    &addr,
                    &admin,
                    &workload,
                    &node_profile.token,
                ))
                .expect_err("the node's token over its workload's SVID");
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            assert!(s.message().contains("bound to another peer"), "{s:?}");
            audited(&c, &web, "node:read", "peer_mismatch");
        },
    );

    g.case(
        "a RenewNode CSR naming another node still yields only the node's own identity",
        || {
            let key = generate_key().unwrap();
            let csr = csr_for(&key, &spiffe_id("ringzero/node/n8")).unwrap();
            let reply = rt
                .block_on(node.call(|mut g| {
                    let csr = csr.clone();
                    async move { g.renew_node(pb::RenewNodeRequest { csr }).await }
                }))
                .unwrap();
            let chain: Vec<CertificateDer<'static>> = reply
                .svid_chain
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            let bundle = TrustBundle::new(td(), admin.bundle_certs().unwrap()).unwrap();
            let v = validate_svid(&chain, &bundle, SystemTime::now(), Usage::Client).unwrap();
            assert_eq!(v.id.as_str(), node_id);
        },
    );

    g.case(
        "the entry feed shows the node its own entries only, never another node's",
        || {
            let first = rt.block_on(async {
                let mut feed = node
                    .call(|mut g| async move {
                        g.sync_entries(pb::SyncEntriesRequest {
                            since_revision: 0,
                            ..Default::default()
                        })
                        .await
                    })
                    .await
                    .unwrap();
                tokio::time::timeout(Duration::from_secs(5), feed.message())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap()
            });
            let ids: Vec<&str> = first.upserts.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(ids, [web_entry.as_str()], "{first:?}");
            assert!(first.upserts.iter().all(|e| e.parent == "n7"));
        },
    );

    g.case(
        "after node evict the node's certificate and token are refused and the agent stops",
        || {
            ok(c.cli(&["node", "evict", "n7"]), "evict");
            let e = rt
                .block_on(mint(&mut node, &web_entry))
                .expect_err("an evicted node minted an SVID");
            assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
            assert!(e.to_string().contains("evicted"), "{e}");
            let key = generate_key().unwrap();
            let csr = csr_for(&key, &spiffe_id("ringzero/node/n7")).unwrap();
            let e = rt
                .block_on(node.call(|mut g| {
                    let csr = csr.clone();
                    async move { g.renew_node(pb::RenewNodeRequest { csr }).await }
                }))
                .expect_err("an evicted node renewed");
            assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
            let status = wait_until(
                "the evicted agent to stop",
                Duration::from_secs(20),
                Duration::from_millis(100),
                || agent.exited(),
            );
            assert!(!status.success(), "{}", agent.log());
        },
    );
    g.finish();
}
