//! The node API's former known gaps, against a real authority and a real agent: a burst of
//! denials from one caller costs a few audit records and does not starve a legitimate read
//! (the agent's per-caller denial window); proof of possession (someone else's valid token over
//! your own SVID) is refused as `peer_mismatch` and recorded naming the presenting peer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ringzero_tests::jobs::{self, place_by_hand, token_of};
use ringzero_tests::{Proc, SoloAuthority, admin_client, audit, wait_until};

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
    let (agent, dir, _log) = jobs::start_node_agent(&a, "n1", &[]);
    jobs::run_shop_job(&a, TD, "web", "echo line1; exec sleep 3600", 0, 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node_api = rt.block_on(async {
        let mut c = admin_client(&a);
        place_by_hand(&mut c, WEB, "shop", "web", 0, "n1").await;
        jobs::wait_for_node_api(&mut c, "shop", "web", "n1").await
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
    let carol = jobs::add_user(&a, "carol", "developer", Some("shop"));
    let dave = jobs::add_user(&a, "dave", "developer", Some("other"));
    Cluster {
        a,
        _agent: agent,
        node_api,
        carol,
        dave,
    }
}

type Client = jobs::NodeClient;

/// A node-API client over `profile`'s SVID presenting `token`.
fn node_client(profile: &Path, addr: &str, token: &str) -> Client {
    jobs::node_client_presenting(profile, token, TD, "n1", addr)
}

/// `ReadLogs` of WEB: the first chunk's text, or the error.
async fn read(c: &mut Client) -> Result<String, tonic::Status> {
    jobs::first_log_chunk(c, WEB).await
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
        let mut client = node_client(&c.dave, &c.node_api, &token_of(&c.dave));
        // One call first, so that the connection has the server's SETTINGS (at most 64
        // concurrent streams) before the burst: until then the client may open more, and the
        // server resets those with REFUSED_STREAM (seen once on a fresh clone).
        let e = read(&mut client).await.expect_err("dave is refused");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        let mut refused = 1;
        let mut calls = tokio::task::JoinSet::new();
        for _ in 1..200 {
            let mut client = client.clone();
            calls.spawn(async move { read(&mut client).await });
        }
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
