//! ringzero's mesh extension on the Workload API socket (`ringzero.mesh.v1.MeshPolicy/Watch`):
//! admitted like the standard API (security header, attestation), it hands a caller the mesh
//! policies protecting the identities it was attested for — never another workload's — and the
//! revoked serials, and streams every change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use ringzero_agent::testing::Serving;
use ringzero_agent::{MeshRule, SvidCache, WorkloadLimits};
use ringzero_policy::selector::Selector;
use ringzero_policy::svid::SigningCa;
use ringzero_policy::{SpiffeId, SpiffeIdPattern, TrustDomain};
use ringzero_proto::mesh as pb;
use ringzero_proto::mesh::mesh_policy_client::MeshPolicyClient;
use ringzero_proto::transport::unix_channel;

const TIMEOUT: Duration = Duration::from_secs(20);

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn rule(to: &str, from: &str) -> MeshRule {
    MeshRule {
        to: SpiffeIdPattern::parse(to).unwrap(),
        from: SpiffeIdPattern::parse(from).unwrap(),
    }
}

fn watch_request(header: bool) -> tonic::Request<pb::WatchRequest> {
    let mut req = tonic::Request::new(pb::WatchRequest {});
    if header {
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
    }
    req
}

fn rules_of(u: &pb::MeshPolicyUpdate) -> Vec<(String, String)> {
    u.rules
        .iter()
        .map(|r| (r.to.clone(), r.from.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_only_for_the_callers_identities_and_every_change_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let ca = SigningCa::self_signed(
        &td(),
        "test-ca",
        Duration::from_secs(24 * 3600),
        SystemTime::now(),
        None,
    )
    .unwrap();
    let cache = SvidCache::new();
    cache.set_bundle(td(), vec![ca.cert_der().clone()]);
    let me = rustix::process::getuid().as_raw();
    let id = |path: &str| SpiffeId::parse(&format!("spiffe://example.org/{path}")).unwrap();
    // This process is ns/shop/db; another uid's workload on the node is ns/shop/cache.
    cache.upsert(ringzero_agent::testing::identity(
        &ca,
        "db",
        id("ns/shop/db"),
        vec![Selector::uid(me)],
    ));
    cache.upsert(ringzero_agent::testing::identity(
        &ca,
        "cache",
        id("ns/shop/cache"),
        vec![Selector::uid(me.wrapping_add(1))],
    ));
    let serving = Serving::start(&socket, cache.clone(), WorkloadLimits::default())
        .await
        .unwrap();

    let mut client = MeshPolicyClient::new(unix_channel(&socket).await.unwrap());
    // Without the Workload API's security header: refused, as the standard methods are.
    let refused = client.watch(watch_request(false)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    let mut stream = client
        .watch(watch_request(true))
        .await
        .unwrap()
        .into_inner();
    // Before the agent holds the authority's policies and serials (its first sync), nothing is
    // sent: an empty set would tell the sidecar nothing is revoked.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.message())
            .await
            .is_err(),
        "an update before the first sync"
    );
    cache.set_mesh_rules(vec![
        rule(
            "spiffe://example.org/ns/shop/db",
            "spiffe://example.org/ns/shop/web",
        ),
        rule(
            "spiffe://example.org/ns/shop/cache",
            "spiffe://example.org/ns/shop/db",
        ),
        rule("spiffe://example.org/ns/other/*", "spiffe://example.org/*"),
    ]);
    let far = u64::try_from(
        (SystemTime::now() + Duration::from_secs(3600))
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    cache.set_revoked_serials(BTreeMap::from([(vec![7; 16], far), (vec![8; 16], 1)]));
    let first = tokio::time::timeout(TIMEOUT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Only the rule protecting this caller's own identity; not ns/shop/cache's (another uid's
    // workload on the same node), not ns/other's.
    assert_eq!(
        rules_of(&first),
        [(
            "spiffe://example.org/ns/shop/db".to_owned(),
            "spiffe://example.org/ns/shop/web".to_owned()
        )]
    );
    // The revoked serials, without the expired one.
    assert_eq!(first.revoked_serials.len(), 1);
    assert_eq!(first.revoked_serials[0].serial, vec![7; 16]);

    // A change that does not concern this caller sends nothing; one that does is streamed.
    cache.set_mesh_rules(vec![
        rule(
            "spiffe://example.org/ns/shop/db",
            "spiffe://example.org/ns/shop/web",
        ),
        rule("spiffe://example.org/ns/other/*", "spiffe://example.org/*"),
    ]);
    cache.set_mesh_rules(vec![
        rule(
            "spiffe://example.org/ns/shop/*",
            "spiffe://example.org/ns/shop/*",
        ),
        rule("spiffe://example.org/ns/other/*", "spiffe://example.org/*"),
    ]);
    let next = tokio::time::timeout(TIMEOUT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        rules_of(&next),
        [(
            "spiffe://example.org/ns/shop/*".to_owned(),
            "spiffe://example.org/ns/shop/*".to_owned()
        )]
    );
    // Removing the rule is streamed as an empty set.
    cache.set_mesh_rules(vec![]);
    let gone = tokio::time::timeout(TIMEOUT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(gone.rules.is_empty());
    assert_eq!(gone.revoked_serials.len(), 1);

    // A caller with no identity on the node learns no rule at all.
    cache.set_mesh_rules(vec![rule(
        "spiffe://example.org/ns/shop/*",
        "spiffe://example.org/ns/shop/*",
    )]);
    let back = tokio::time::timeout(TIMEOUT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back.rules.len(), 1);
    cache.remove("db");
    let none = tokio::time::timeout(TIMEOUT, async {
        loop {
            let u = stream.message().await.unwrap().unwrap();
            if u.rules.is_empty() {
                return u;
            }
        }
    })
    .await
    .unwrap();
    assert!(none.rules.is_empty());
    drop(stream);
    serving.stop(TIMEOUT).await.unwrap();
}
