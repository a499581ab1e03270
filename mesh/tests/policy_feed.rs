//! Authority policy and revocations through the agent's mesh extension
//! (`ringzero.mesh.v1.MeshPolicy/Watch`): a fake agent serving both the standard Workload API and
//! the extension on one socket, a real sidecar started with `--allow-from-authority` and no local
//! rule. A policy allowing the caller opens new connections, removing it refuses new ones, and a
//! revoked serial is refused at the handshake; beside an agent without the extension (the
//! fixture's, like SPIRE's) the local rules alone decide.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use ringzero_mesh::config::Settings;
use ringzero_mesh::{Direction, Refusal};
use ringzero_proto::mesh as mpb;
use ringzero_proto::mesh::mesh_policy_server::{MeshPolicy, MeshPolicyServer};
use ringzero_proto::workload as pb;
use ringzero_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

const WEB: &str = "/ns/shop/web";
const DB: &str = "/ns/shop/db";

/// Streams the latest value of `rx` now and after every change, to one client.
fn follow<T: Clone + Send + Sync + 'static>(
    mut rx: watch::Receiver<T>,
) -> ReceiverStream<Result<T, Status>> {
    let (tx, out) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let next = rx.borrow_and_update().clone();
            if tx.send(Ok(next)).await.is_err() {
                return;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    ReceiverStream::new(out)
}

fn has_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get("workload.spiffe.io") {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument("security header missing")),
    }
}

/// A ringzero-like agent: the Workload API and the mesh extension.
#[derive(Clone)]
struct FakeAgent {
    svid: watch::Sender<pb::X509svidResponse>,
    policy: watch::Sender<mpb::MeshPolicyUpdate>,
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for FakeAgent {
    type FetchX509SVIDStream = ReceiverStream<Result<pb::X509svidResponse, Status>>;
    type FetchX509BundlesStream = ReceiverStream<Result<pb::X509BundlesResponse, Status>>;
    type FetchJWTBundlesStream = ReceiverStream<Result<pb::JwtBundlesResponse, Status>>;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        has_header(&req)?;
        Ok(Response::new(follow(self.svid.subscribe())))
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("fake agent"))
    }

    async fn fetch_jwtsvid(
        &self,
        _: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        Err(Status::unimplemented("fake agent"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("fake agent"))
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("fake agent"))
    }
}

#[tonic::async_trait]
impl MeshPolicy for FakeAgent {
    type WatchStream = ReceiverStream<Result<mpb::MeshPolicyUpdate, Status>>;

    async fn watch(
        &self,
        req: Request<mpb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        has_header(&req)?;
        Ok(Response::new(follow(self.policy.subscribe())))
    }
}

fn serve(socket: &Path, agent: FakeAgent) -> AbortOnDrop {
    let listener = UnixListener::bind(socket).unwrap();
    let incoming = ringzero_proto::transport::accept(listener, |s, _| Some(async move { Some(s) }));
    AbortOnDrop(tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(agent.clone()))
            .add_service(MeshPolicyServer::new(agent))
            .serve_with_incoming(incoming)
            .await;
    }))
}

fn rule(to: &str, from: &str) -> mpb::Rule {
    mpb::Rule {
        to: format!("spiffe://{TD}{to}"),
        from: format!("spiffe://{TD}{from}"),
    }
}

/// Connects as `client` and says whether the sidecar let it through to the echo target.
async fn admitted(client: &Svid, ca: &Ca, addr: std::net::SocketAddr) -> bool {
    match tls_connect(&client.client(ca), addr).await {
        Ok(s) => !is_refused(s).await,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_policy_opens_and_closes_new_connections_and_revokes_serials() {
    let ca = Ca::new(TD);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let (svid, _) = watch::channel(ca.svid(DB).response());
    // The policies of other workloads never reach this sidecar; a rule for another `to` that
    // the agent would not send is here to show the sidecar filters by its own ID anyway.
    let (policy, _) = watch::channel(mpb::MeshPolicyUpdate {
        rules: vec![rule("/ns/shop/cache", WEB)],
        revoked_serials: vec![],
    });
    let agent = FakeAgent {
        svid: svid.clone(),
        policy: policy.clone(),
    };
    let _server = serve(&socket, agent);
    let echo = Echo::start().await;
    let db = Running::start(Settings {
        workload_api: Some(format!("unix://{}", socket.display())),
        inbound: vec![format!("127.0.0.1:0={}", echo.addr)],
        allow_from_authority: Some(true),
        admin: Some("127.0.0.1:0".into()),
        ..Settings::default()
    })
    .await;
    let web = ca.svid(WEB);
    let addr = db.inbound[0];
    eventually("the sidecar to serve", || async {
        get(db.admin.unwrap(), "/ready").await.0 == 200
    })
    .await;

    // No local rule, no policy for db: web is refused.
    assert!(!admitted(&web, &ca, addr).await);
    let refused = db.metrics.refusals(Direction::Inbound, Refusal::NotAllowed);
    assert!(refused >= 1, "{refused}");

    // `mesh allow --to db --from web`: new connections open within a second.
    policy.send_replace(mpb::MeshPolicyUpdate {
        rules: vec![rule(DB, WEB), rule("/ns/shop/cache", WEB)],
        revoked_serials: vec![],
    });
    let start = Instant::now();
    eventually("the policy to admit web", || admitted(&web, &ca, addr)).await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let (_, status) = get(db.admin.unwrap(), "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["authority_allow"],
        serde_json::json!([format!("spiffe://{TD}{WEB}")])
    );
    let data = payload(256 * 1024, 7);
    let stream = tls_connect(&web.client(&ca), addr).await.unwrap();
    assert_eq!(round_trip(stream, data.clone()).await, data);
    // Another caller the rule does not name stays out.
    assert!(!admitted(&ca.svid("/ns/shop/batch"), &ca, addr).await);

    // A revoked serial is refused at the handshake, though a policy allows its ID.
    let revoked_web = ca.svid(WEB);
    policy.send_replace(mpb::MeshPolicyUpdate {
        rules: vec![rule(DB, WEB)],
        revoked_serials: vec![mpb::RevokedSerial {
            serial: revoked_web.serial.clone(),
            not_after_ms: u64::MAX,
        }],
    });
    eventually("the serial to be revoked", || async {
        db.revoked.contains(&revoked_web.serial)
    })
    .await;
    assert!(!admitted(&revoked_web, &ca, addr).await);
    assert!(db.metrics.refusals(Direction::Inbound, Refusal::Revoked) >= 1);
    assert!(
        admitted(&web, &ca, addr).await,
        "other serials of web still pass"
    );

    // `mesh deny`: new connections are refused within a second.
    policy.send_replace(mpb::MeshPolicyUpdate {
        rules: vec![],
        revoked_serials: vec![],
    });
    let start = Instant::now();
    eventually("the policy removal to refuse web", || async {
        !admitted(&web, &ca, addr).await
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(!db.revoked.contains(&revoked_web.serial));

    // The sidecar's own identity decides which rules apply: as ns/shop/cache it is protected by
    // the rules for cache only.
    policy.send_replace(mpb::MeshPolicyUpdate {
        rules: vec![rule(DB, "/ns/shop/db-client"), rule("/ns/shop/cache", WEB)],
        revoked_serials: vec![],
    });
    svid.send_replace(ca.svid("/ns/shop/cache").response());
    eventually("the cache identity's rules to apply", || {
        admitted(&web, &ca, addr)
    })
    .await;
    assert!(!admitted(&ca.svid("/ns/shop/db-client"), &ca, addr).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_an_agent_without_the_extension_local_rules_alone_decide() {
    let ca = Ca::new(TD);
    // The fixture's agent serves only the standard Workload API (as SPIRE's does).
    let agent = Agent::start(Some(&ca.svid(DB)));
    let echo = Echo::start().await;
    let db = Running::start(Settings {
        workload_api: Some(agent.endpoint()),
        inbound: vec![format!("127.0.0.1:0={}", echo.addr)],
        allow: vec![format!("spiffe://{TD}{WEB}")],
        admin: Some("127.0.0.1:0".into()),
        ..Settings::default()
    })
    .await;
    eventually("the sidecar to serve", || async {
        get(db.admin.unwrap(), "/ready").await.0 == 200
    })
    .await;
    let addr = db.inbound[0];
    assert!(admitted(&ca.svid(WEB), &ca, addr).await);
    assert!(!admitted(&ca.svid("/ns/shop/batch"), &ca, addr).await);
}
