//! The node API's former known gaps, against a real authority and a real agent: a burst of
//! denials from one caller costs a few audit records and does not starve a legitimate read
//! (the agent's per-caller denial window); proof of possession (someone else's valid token over
//! your own SVID) is refused as `peer_mismatch` and recorded naming the presenting peer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ringzero_proto::client::AuthorityClient;
use ringzero_proto::node::node_client::NodeClient;
use ringzero_proto::pb;
use ringzero_tests::agent::{agent_cmd, spawn_ready_agent};
use ringzero_tests::jobs::{self, place_by_hand, token_of};
use ringzero_tests::{Proc, SoloAuthority, admin_client, audit, show, wait_until};

const TD: &str = "nodegaps.test";
const WEB: &str = "w1w1w1w1w1w1w1w1";

struct Cluster {
    a: SoloAuthority,
    _agent: Proc,
    node_api: String,
    carol: PathBuf,
    dave: PathBuf,
}

/// An authority, agent n1 serving its node API, job shop/web placed on it and logging, carol
/// (developer of shop) and dave (developer of other).
fn cluster(name: &str) -> Cluster {
    let a = SoloAuthority::start(name, TD);
    let token = a.node_token("n1", "10m");
    let dir = a.root.path().join("agent-n1");
    let mut cmd = agent_cmd(
        a.root.path(),
        &a.addr,
        Some(&format!("@{}", token.display())),
        &dir,
        &a.root.path().join("n1.sock"),
    );
    cmd.args(["--node-api", "127.0.0.1:0"]);
    let log = a.root.path().join("agent-n1.log");
    let agent = spawn_ready_agent("agent-n1", cmd, &log, Duration::from_secs(20));
    let job = a.root.path().join("web.toml");
    std::fs::write(
        &job,
        format!(
            r#"namespace = "shop"
name = "web"
command = "/bin/sh"
args = ["-c", "echo line1; exec sleep 3600"]
env = {{ PATH = "/usr/bin:/bin" }}
uid = 0
gid = 0
spiffe_id = "spiffe://{TD}/ns/shop/web"

[restart]
policy = "never"
"#
        ),
    )
    .unwrap();
    let out = a.cli(&["job", "run", &job.to_string_lossy()]);
    assert!(out.status.success(), "job run: {}", show(&out));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node_api = rt.block_on(async {
        let mut c = admin_client(&a);
        place(&mut c).await;
        wait_for_node_api(&mut c).await
    });
    let web_log = dir.join("tasks").join(WEB).join("stdout.log");
    wait_until(
        "the web task to log",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            std::fs::read_to_string(&web_log)
                .ok()
                .filter(|t| t.contains("line1"))
        },
    );
    let carol = add_user(&a, "carol", "shop");
    let dave = add_user(&a, "dave", "other");
    Cluster {
        a,
        _agent: agent,
        node_api,
        carol,
        dave,
    }
}

async fn place(c: &mut AuthorityClient) {
    place_by_hand(c, WEB, "shop", "web", 0, "n1").await;
}

async fn wait_for_node_api(c: &mut AuthorityClient) -> String {
    for _ in 0..100 {
        let reply = c
            .call(|mut g| async move {
                g.list_allocs(pb::ListAllocsRequest {
                    namespace: "shop".into(),
                    job: "web".into(),
                    node: String::new(),
                })
                .await
            })
            .await
            .unwrap();
        if let Some(a) = reply.allocs.iter().find(|a| !a.node_api.is_empty()) {
            return a.node_api.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the node API address was never announced");
}

fn add_user(a: &SoloAuthority, name: &str, ns: &str) -> PathBuf {
    jobs::add_user(a, name, "developer", Some(ns))
}

/// Adds the capability to every call (clonable, so one channel serves concurrent calls).
#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

type Client =
    NodeClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

/// A node-API client over `profile`'s SVID presenting `token`.
fn node_client(profile: &Path, addr: &str, token: &str) -> Client {
    let p = ringzero_proto::client::Profile::from_toml(&std::fs::read_to_string(profile).unwrap())
        .unwrap();
    let creds = p.credentials().unwrap();
    let server =
        ringzero_policy::SpiffeIdPattern::parse(&format!("spiffe://{TD}/ringzero/node/n1"))
            .unwrap();
    let tls = creds.tls_to(server).unwrap();
    let channel = ringzero_proto::transport::channel(addr, tls, Duration::from_secs(5)).unwrap();
    let bearer = format!("Bearer {token}").parse().unwrap();
    NodeClient::with_interceptor(channel, Bearer(bearer))
}

/// `ReadLogs` of WEB: the first chunk's text, or the error.
async fn read(c: &mut Client) -> Result<String, tonic::Status> {
    let req = ringzero_proto::node::ReadLogsRequest {
        alloc_id: WEB.into(),
        ..Default::default()
    };
    let mut stream = c.read_logs(req).await?.into_inner();
    match stream.message().await? {
        Some(chunk) => Ok(String::from_utf8_lossy(&chunk.data).into_owned()),
        None => Ok(String::new()),
    }
}

/// The value of detail `key` of an audit record printed by `audit query --json`.
fn detail(r: &serde_json::Value, key: &str) -> Option<String> {
    let details = &r["details"];
    if let Some(pairs) = details.as_array() {
        return pairs
            .iter()
            .find(|p| p[0] == key)
            .and_then(|p| p[1].as_str().map(str::to_owned));
    }
    details[key].as_str().map(str::to_owned)
}

/// Dave's denied log reads of shop/web in the audit log.
fn dave_denials(a: &SoloAuthority) -> Vec<serde_json::Value> {
    let dave_id = format!("spiffe://{TD}/user/dave");
    audit(a, &["--decision", "deny"])
        .into_iter()
        .filter(|r| {
            r["actor"] == dave_id.as_str()
                && r["operation"] == "logs:read"
                && r["resource"] == "ns/shop/web"
        })
        .collect()
}

#[test]
fn a_burst_of_denials_costs_a_few_records_and_starves_no_one() {
    let c = cluster("node-api-burst");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // 200 denied reads from dave (his own token: no right on shop), all at once.
    let refused = rt.block_on(async {
        let client = node_client(&c.dave, &c.node_api, &token_of(&c.dave));
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let mut client = client.clone();
            calls.spawn(async move { read(&mut client).await });
        }
        let mut refused = 0;
        while let Some(r) = calls.join_next().await {
            let e = r.unwrap().expect_err("dave is refused");
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
            refused += 1;
        }
        refused
    });
    assert_eq!(refused, 200);
    // A legitimate read right after is served.
    let served = rt.block_on(async {
        let mut carol = node_client(&c.carol, &c.node_api, &token_of(&c.carol));
        read(&mut carol).await
    });
    assert_eq!(served.unwrap(), "line1\n");
    // The first denial is recorded at once; the window's summary counts the rest (`count=199`).
    let summary = wait_until(
        "the denial window's summary",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let all = dave_denials(&c.a);
            all.iter()
                .any(|r| detail(r, "req.count").is_some())
                .then_some(all)
        },
    );
    assert!(summary.len() <= 3, "too many denial records: {summary:?}");
    let counted: u64 = summary
        .iter()
        .map(|r| detail(r, "req.count").map_or(1, |n| n.parse::<u64>().unwrap()))
        .sum();
    assert_eq!(counted, 200, "every denial is accounted for: {summary:?}");
}

#[test]
fn someone_elses_token_over_your_svid_is_refused_and_recorded_as_peer_mismatch() {
    let c = cluster("node-api-pop");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // carol's token allows logs:read on shop/web, but it is bound to carol: dave presents it.
    let refused = rt.block_on(async {
        let mut as_dave = node_client(&c.dave, &c.node_api, &token_of(&c.carol));
        read(&mut as_dave).await
    });
    let e = refused.expect_err("carol's token over dave's SVID is refused");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().starts_with("peer_mismatch"), "{e:?}");
    let record = wait_until(
        "the peer_mismatch record",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            dave_denials(&c.a).into_iter().find(|r| {
                r["reason"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("peer_mismatch"))
            })
        },
    );
    assert_eq!(detail(&record, "alloc").as_deref(), Some(WEB), "{record}");
    assert_eq!(detail(&record, "node").as_deref(), Some("n1"), "{record}");
    assert_eq!(
        detail(&record, "reported_by"),
        Some(format!("spiffe://{TD}/ringzero/node/n1")),
        "{record}"
    );
    // The same token over carol's own SVID is served.
    let served = rt.block_on(async {
        let mut as_carol = node_client(&c.carol, &c.node_api, &token_of(&c.carol));
        read(&mut as_carol).await
    });
    assert_eq!(served.unwrap(), "line1\n");
}
