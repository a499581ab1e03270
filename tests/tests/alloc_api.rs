//! Allocations in the authority, real process: an admin (standing in for the scheduler's
//! capability) places a job's allocations on enrolled nodes; `job status` shows them; each
//! node's entry feed carries only its own allocations, with the job's spec; a developer of
//! another namespace can neither place, stop nor list them (denied, audited); a node cannot
//! report on another node's allocation (refused, audited); `ListNodeHealth` shows a connected
//! agent live with the capacity it announced; a drain is shown and audited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use ringzero_policy::TrustDomain;
use ringzero_policy::join::{JoinToken, pin_matches};
use ringzero_policy::svid::{TrustBundle, csr_for, generate_key};
use ringzero_proto::client::{
    AuthorityClient, Credentials, bundle_cas, fetch_bundle_unverified, redeem_join_token,
};
use ringzero_proto::pb;
use ringzero_tests::{SoloAuthority, admin_client, audit, client_of, show};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const TD: &str = "allocs.test";
const A: &str = "aaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbb";

fn id(path: &str) -> String {
    format!("spiffe://{TD}/{path}")
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

fn placement(id: &str, node: &str, version: u64, index: u32) -> pb::AllocPlacement {
    pb::AllocPlacement {
        id: id.into(),
        namespace: "shop".into(),
        job: "web".into(),
        job_version: version,
        index,
        node: node.into(),
        previous: String::new(),
    }
}

async fn place(
    c: &mut AuthorityClient,
    allocs: Vec<pb::AllocPlacement>,
) -> Result<pb::AllocsReply, ringzero_proto::client::ClientError> {
    c.call(|mut g| {
        let r = pb::PlaceAllocsRequest {
            allocs: allocs.clone(),
            lease: None,
        };
        async move { g.place_allocs(r).await }
    })
    .await
}

async fn report(
    node: &mut AuthorityClient,
    id: &str,
    state: pb::AllocState,
) -> Result<pb::ReportAllocStatusReply, ringzero_proto::client::ClientError> {
    let r = pb::ReportAllocStatusRequest {
        updates: vec![pb::AllocStatusUpdate {
            id: id.into(),
            state: state.into(),
            exit_code: None,
            restarts: 1,
            message: "started".into(),
        }],
    };
    node.call(|mut g| {
        let r = r.clone();
        async move { g.report_alloc_status(r).await }
    })
    .await
}

async fn health(c: &mut AuthorityClient) -> pb::ListNodeHealthReply {
    c.call(|mut g| async move { g.list_node_health(pb::ListNodeHealthRequest {}).await })
        .await
        .unwrap()
}

/// The next allocation set on the feed (skipping events without one), as (id, index).
async fn next_allocs(stream: &mut tonic::Streaming<pb::SyncEntriesEvent>) -> pb::NodeAllocSet {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ev = stream.message().await.unwrap().expect("the feed ended");
            if let Some(set) = ev.allocs {
                return set;
            }
        }
    })
    .await
    .expect("no allocation set on the feed within 5 s")
}

#[test]
fn allocations_are_placed_fed_reported_and_confined() {
    let a = SoloAuthority::start("alloc-api", TD);
    let dave = developer(&a, "dave", "other");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut admin = admin_client(&a);
        let mut n1 = enrolled_node(&a, &mut admin, "n1").await;
        let mut n2 = enrolled_node(&a, &mut admin, "n2").await;
        let job = pb::Job {
            namespace: "shop".into(),
            name: "web".into(),
            command: "/usr/bin/web".into(),
            args: vec!["--port".into(), "8080".into()],
            uid: 1000,
            gid: 1000,
            count: 2,
            cpu_millis: Some(500),
            spiffe_id: id("ns/shop/web"),
            ..Default::default()
        };
        let submitted = admin
            .call(|mut g| {
                let job = job.clone();
                async move {
                    g.submit_job(pb::SubmitJobRequest {
                        job: Some(job),
                        dry_run: false,
                    })
                    .await
                }
            })
            .await
            .unwrap();
        assert_eq!(submitted.job.unwrap().version, 1);

        // n1's feed, announcing its capacity: an empty allocation set at first.
        let mut labels = std::collections::HashMap::new();
        labels.insert("zone".to_owned(), "a".to_owned());
        let mut feed1 = n1
            .call(|mut g| {
                let labels = labels.clone();
                async move {
                    g.sync_entries(pb::SyncEntriesRequest {
                        since_revision: 0,
                        cpu_millis: Some(4000),
                        memory_mb: Some(8192),
                        labels,
                        node_api: String::new(),
                    })
                    .await
                }
            })
            .await
            .unwrap();
        assert!(next_allocs(&mut feed1).await.allocs.is_empty());

        // Hostile placements: a stale version, an index past count, an unknown node, a bad id.
        for (p, code) in [
            (placement(A, "n1", 2, 0), tonic::Code::FailedPrecondition),
            (placement(A, "n1", 1, 2), tonic::Code::FailedPrecondition),
            (placement(A, "n9", 1, 0), tonic::Code::FailedPrecondition),
            (
                placement("NOT-AN-ID", "n1", 1, 0),
                tonic::Code::InvalidArgument,
            ),
        ] {
            let e = place(&mut admin, vec![p]).await.unwrap_err();
            assert_eq!(e.code(), Some(code), "{e:?}");
        }
        let placed = place(
            &mut admin,
            vec![placement(A, "n1", 1, 0), placement(B, "n2", 1, 1)],
        )
        .await
        .unwrap();
        assert_eq!(placed.allocs.len(), 2);

        // n1's feed: its own allocation only, with the job's spec.
        let set = next_allocs(&mut feed1).await;
        let ids: Vec<&str> = set.allocs.iter().map(|x| x.id.as_str()).collect();
        assert_eq!(ids, [A]);
        assert_eq!(set.allocs[0].desired, pb::AllocDesired::Run as i32);
        assert_eq!(set.jobs.len(), 1);
        assert_eq!(set.jobs[0].job.as_ref().unwrap().command, "/usr/bin/web");

        // job status shows both.
        let out = a.cli(&["job", "status", "shop/web", "--json"]);
        assert!(out.status.success(), "{}", show(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let allocs = v["allocs"].as_array().unwrap();
        assert_eq!(allocs.len(), 2, "{v}");
        assert!(
            allocs
                .iter()
                .any(|x| x["id"] == A && x["node"] == "n1" && x["state"] == "pending")
        );
        let out = a.cli(&["job", "status", "shop/web"]);
        assert!(out.status.success(), "{}", show(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(B));

        // A node reports on its own allocation, not on another node's.
        let e = report(&mut n1, B, pb::AllocState::Running)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e:?}");
        assert_eq!(
            report(&mut n1, A, pb::AllocState::Running)
                .await
                .unwrap()
                .applied,
            1
        );
        let e = report(&mut n2, A, pb::AllocState::Failed)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e:?}");
        let denied = audit(
            &a,
            &["--decision", "deny", "--actor", &id("ringzero/node/n1")],
        );
        assert!(
            denied.iter().any(|r| r["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with("alloc_on_another_node"))),
            "{denied:#?}"
        );

        // A developer of another namespace: no place, stop or list.
        let mut d = client_of(&dave);
        let e = place(&mut d, vec![placement("cccccccccccccccc", "n1", 1, 1)])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e:?}");
        let e = d
            .call(|mut g| async move {
                g.stop_allocs(pb::AllocIdsRequest {
                    ids: vec![A.into()],
                    lease: None,
                })
                .await
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e:?}");
        let e = d
            .call(|mut g| async move {
                g.list_allocs(pb::ListAllocsRequest {
                    namespace: "shop".into(),
                    ..Default::default()
                })
                .await
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e:?}");
        let denied = audit(&a, &["--decision", "deny", "--actor", &id("user/dave")]);
        for (operation, resource) in [("job:launch", "ns/shop/web"), ("sched:read", "ns/shop")] {
            assert!(
                denied
                    .iter()
                    .any(|r| r["operation"] == operation && r["resource"] == resource),
                "no denial of {operation} on {resource}: {denied:#?}"
            );
        }

        // Stopping reaches n1's feed.
        admin
            .call(|mut g| async move {
                g.stop_allocs(pb::AllocIdsRequest {
                    ids: vec![A.into()],
                    lease: None,
                })
                .await
            })
            .await
            .unwrap();
        let set = next_allocs(&mut feed1).await;
        assert_eq!(set.allocs[0].desired, pb::AllocDesired::Stop as i32);

        // Health: n1 live with its capacity, n2 not; a drain is shown and audited.
        let h = health(&mut admin).await;
        assert!(h.tracking_since_ms > 0);
        let n1h = h.nodes.iter().find(|n| n.name == "n1").unwrap();
        assert!(n1h.live && n1h.last_seen_ms > 0);
        assert_eq!((n1h.cpu_millis, n1h.memory_mb), (Some(4000), Some(8192)));
        assert_eq!(n1h.labels.get("zone").map(String::as_str), Some("a"));
        assert!(!h.nodes.iter().find(|n| n.name == "n2").unwrap().live);
        let out = a.cli(&["node", "drain", "n2"]);
        assert!(out.status.success(), "{}", show(&out));
        let h = health(&mut admin).await;
        let n2h = h.nodes.iter().find(|n| n.name == "n2").unwrap();
        assert!(n2h.drained && n2h.drained_since_ms > 0);
        let e = place(&mut admin, vec![placement("cccccccccccccccc", "n2", 1, 1)])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::FailedPrecondition), "{e:?}");
        let drains = audit(&a, &["--operation", "node:evict", "--decision", "allow"]);
        assert!(
            drains.iter().any(|r| r["resource"] == "node/n2"),
            "{drains:#?}"
        );
        drop(feed1);
    });
}
