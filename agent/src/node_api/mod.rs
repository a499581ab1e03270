//! The agent's node API (`ringzero.node.v1.Node`) over mTLS: the node SVID as the server
//! identity (rotating with it), client SVIDs that chain to the trust bundle, and a capability on
//! every call: `ReadLogs`, `Exec` (recorded sessions) and `GetRecording`.
//!
//! Every call is decided here (`auth.rs`). An allowed call is recorded through the authority's
//! `AppendNodeAudit` **before** anything is served; an append that does not commit fails the
//! call (`Unavailable`). A denied call is refused at once and its record goes through the
//! per-caller denial windows (`denials.rs`), which bound what one caller's denials cost the
//! node's audit budget. Privileged calls are refused while the revocation feed is
//! staler than [`MAX_STALENESS`](crate::revocations::MAX_STALENESS). An allowed follow stops
//! when the feed goes stale, its capability is revoked or expires, the caller leaves, or the
//! allocation leaves the node.
//!
//! # Layout
//!
//! - this file: [`NodeApi`] (what the server reads), [`serve`], the service.
//! - `auth.rs`: the decision.
//! - `denials.rs`: denial records, folded per caller and sent off the call's path.
//! - `read.rs`: reading a log (tail, since, follow across rotation).
//! - `exec.rs`: `Exec` (a command in a task's context, recorded) and `GetRecording`;
//!   `child.rs` its process (pipes or a pty), `recording.rs` its recording.
//! - `retention.rs`: logs outlive their task: kept for a retention period, within a size cap.

mod auth;
mod child;
mod denials;
mod exec;
mod read;
mod recording;
mod retention;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ringzero_policy::token::KeySet;
use ringzero_policy::{NodeName, Operation, SpiffeId};
use ringzero_proto::client::AuthorityClient;
use ringzero_proto::node::node_server::{Node, NodeServer};
use ringzero_proto::node::{LogChunk, LogStream, ReadLogsRequest};
use ringzero_proto::pb;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

pub(crate) use self::auth::biscuit_keys;
pub(crate) use self::exec::ExecSettings;
pub use self::recording::{DEFAULT_RECORDING_BYTES, MIN_RECORDING_BYTES, RecordingMode};
pub(crate) use self::retention::{Retention, retention_task};
use crate::daemon::ClientSetup;
use crate::revocations::RevocationSet;

/// Concurrent reads per caller (SPIFFE ID), and in all.
const PER_CALLER: u32 = 4;
const TOTAL: u32 = 64;
/// How long the audit append may take before the call fails.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the node API reads: shared with the agent's loop, which keeps them current.
#[derive(Clone)]
pub(crate) struct NodeApi {
    pub node: NodeName,
    /// The node's credentials and the authority addresses (rotated by the agent).
    pub setup: watch::Receiver<Arc<ClientSetup>>,
    /// The bundle's Biscuit keys.
    pub keys: watch::Receiver<KeySet>,
    pub revocations: RevocationSet,
    /// The node's allocations as the feed last sent them.
    pub allocs: watch::Receiver<Option<Arc<pb::NodeAllocSet>>>,
    /// `<data_dir>/tasks`: each allocation's log files.
    pub tasks_dir: PathBuf,
    /// `<data_dir>/node-api`: which job each allocation ran, kept as long as its logs.
    pub meta_dir: PathBuf,
    active: Arc<Mutex<HashMap<SpiffeId, u32>>>,
    /// Exec: on or off, recording mode, the tasks.
    pub exec: ExecSettings,
    /// `<data_dir>/sessions`: exec recordings.
    pub sessions_dir: PathBuf,
    exec_active: Arc<Mutex<HashMap<SpiffeId, u32>>>,
    denials: denials::Denials,
}

impl NodeApi {
    pub(crate) fn new(
        node: NodeName,
        setup: watch::Receiver<Arc<ClientSetup>>,
        keys: watch::Receiver<KeySet>,
        revocations: RevocationSet,
        allocs: watch::Receiver<Option<Arc<pb::NodeAllocSet>>>,
        data_dir: &std::path::Path,
        exec: ExecSettings,
    ) -> Self {
        let (denials, sender) = denials::Denials::new(setup.clone());
        tokio::spawn(sender);
        Self {
            node,
            denials,
            setup,
            keys,
            revocations,
            allocs,
            tasks_dir: data_dir.join("tasks"),
            meta_dir: data_dir.join("node-api"),
            active: Arc::default(),
            exec,
            sessions_dir: data_dir.join("sessions"),
            exec_active: Arc::default(),
        }
    }

    /// The allocation's namespace and job: from the feed's current set, or — once it left the
    /// node, while its logs are kept — from what was recorded when it was seen.
    fn job_of(&self, alloc: &str) -> Option<(String, String)> {
        if let Some(a) = self
            .allocs
            .borrow()
            .as_ref()
            .and_then(|set| set.allocs.iter().find(|a| a.id == alloc))
        {
            return Some((a.namespace.clone(), a.job.clone()));
        }
        retention::recorded_job(&self.meta_dir, alloc)
    }

    fn on_node(&self, alloc: &str) -> bool {
        self.allocs
            .borrow()
            .as_ref()
            .is_some_and(|s| s.allocs.iter().any(|a| a.id == alloc))
    }

    /// The audit record of a decision on a log read.
    fn record(alloc: &str, v: &auth::Verdict, r: &ReadLogsRequest) -> pb::NodeAuditRecord {
        let detail = [
            ("stream".to_owned(), stream_name(r.stream).to_owned()),
            ("tail".to_owned(), r.tail_lines.to_string()),
            ("since_ms".to_owned(), r.since_ms.to_string()),
            ("follow".to_owned(), r.follow.to_string()),
        ]
        .into();
        v.record(alloc, "logs.read", detail)
    }

    /// Commits the record of an allowed call through the authority; the call fails otherwise.
    async fn audit(&self, record: pb::NodeAuditRecord) -> Result<(), tonic::Status> {
        let setup = self.setup.borrow().clone();
        let creds = setup
            .creds
            .client_credentials()
            .map_err(|e| tonic::Status::unavailable(format!("audit: {e}")))?;
        let mut client = AuthorityClient::new(creds, setup.addrs.clone());
        let call = client.call(move |mut c| {
            let req = pb::AppendNodeAuditRequest {
                records: vec![record.clone()],
            };
            async move { c.append_node_audit(req).await }
        });
        match tokio::time::timeout(AUDIT_TIMEOUT, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(tonic::Status::unavailable(format!(
                "the audit record could not be committed, so nothing is served: {e}"
            ))),
            Err(_) => Err(tonic::Status::unavailable(
                "the audit record could not be committed in time, so nothing is served",
            )),
        }
    }

    /// Takes one of the caller's concurrent-read slots.
    fn admit(&self, caller: &SpiffeId) -> Option<Slot> {
        admit_in(&self.active, caller, PER_CALLER, TOTAL)
    }

    /// Takes the caller's exec session slot.
    fn admit_exec(&self, caller: &SpiffeId) -> Option<Slot> {
        admit_in(&self.exec_active, caller, exec::PER_CALLER, exec::TOTAL)
    }

    /// The task of an allocation on this node, as the feed describes it.
    fn task_spec(&self, id: &crate::tasks::AllocId) -> Option<crate::tasks::TaskSpec> {
        let set = self.allocs.borrow().clone()?;
        let a = set.allocs.iter().find(|a| a.id == id.as_str())?;
        let job = set.jobs.iter().find_map(|j| {
            let job = j.job.as_ref()?;
            (job.namespace == a.namespace && job.name == a.job && j.version == a.job_version)
                .then_some(job)
        })?;
        crate::daemon::allocs::task_spec(id.clone(), job).ok()
    }
}

fn admit_in(
    map: &Arc<Mutex<HashMap<SpiffeId, u32>>>,
    caller: &SpiffeId,
    per_caller: u32,
    total: u32,
) -> Option<Slot> {
    let mut active = map.lock().unwrap_or_else(PoisonError::into_inner);
    let all: u32 = active.values().sum();
    let mine = active.entry(caller.clone()).or_default();
    if *mine >= per_caller || all >= total {
        return None;
    }
    *mine += 1;
    Some(Slot {
        active: map.clone(),
        caller: caller.clone(),
    })
}

struct Slot {
    active: Arc<Mutex<HashMap<SpiffeId, u32>>>,
    caller: SpiffeId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = active.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                active.remove(&self.caller);
            }
        }
    }
}

fn stream_name(s: i32) -> &'static str {
    match LogStream::try_from(s) {
        Ok(LogStream::Stderr) => "stderr",
        _ => "stdout",
    }
}

fn alloc_id_ok(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[tonic::async_trait]
impl Node for NodeApi {
    type ReadLogsStream = ReceiverStream<Result<LogChunk, tonic::Status>>;
    type ExecStream = exec::ExecStream;
    type GetRecordingStream = exec::RecordingStream;

    async fn exec(
        &self,
        req: tonic::Request<tonic::Streaming<ringzero_proto::node::ExecInput>>,
    ) -> Result<tonic::Response<Self::ExecStream>, tonic::Status> {
        exec::exec(self, req).await
    }

    async fn get_recording(
        &self,
        req: tonic::Request<ringzero_proto::node::GetRecordingRequest>,
    ) -> Result<tonic::Response<Self::GetRecordingStream>, tonic::Status> {
        exec::get_recording(self, req).await
    }

    async fn read_logs(
        &self,
        req: tonic::Request<ReadLogsRequest>,
    ) -> Result<tonic::Response<Self::ReadLogsStream>, tonic::Status> {
        let peer = ringzero_proto::transport::peer(&req);
        let token = auth::bearer(&req);
        let r = req.into_inner();
        if !alloc_id_ok(&r.alloc_id) || LogStream::try_from(r.stream).is_err() {
            return Err(tonic::Status::invalid_argument(
                "alloc_id must be [a-z0-9]{16}, stream stdout or stderr",
            ));
        }
        let Some((namespace, job)) = self.job_of(&r.alloc_id) else {
            return Err(tonic::Status::not_found(format!(
                "no allocation {} on node {}",
                r.alloc_id, self.node
            )));
        };
        let Some(resource) = auth::job_resource(&namespace, &job) else {
            return Err(tonic::Status::internal("the allocation's job is malformed"));
        };
        let keys = self.keys.borrow().clone();
        let verdict = auth::decide(
            &peer,
            token,
            keys,
            &self.revocations,
            Operation::LogsRead,
            &resource,
            &self.node,
        )
        .await;
        let record = Self::record(&r.alloc_id, &verdict, &r);
        if let Some(why) = &verdict.denied {
            info!(caller = %verdict.caller, alloc = %r.alloc_id, reason = %why, "log read denied");
            // Refused at once; the record is folded per caller and sent off this path.
            let who = auth::caller_key(&peer).map_or_else(
                || {
                    peer.addr
                        .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
                },
                |id| id.to_string(),
            );
            self.denials.record(&who, record);
            return Err(if why.starts_with("stale_revocations") {
                tonic::Status::unavailable(why.clone())
            } else {
                tonic::Status::permission_denied(why.clone())
            });
        }
        // The slot first: a call refused for want of one costs no audit append (the node's
        // budget) and is not recorded as an allowed read that was never served.
        let Some(slot) = auth::caller_key(&peer).and_then(|c| self.admit(&c)) else {
            return Err(tonic::Status::resource_exhausted(format!(
                "at most {PER_CALLER} log reads per caller and {TOTAL} in all"
            )));
        };
        self.audit(record).await?;
        info!(caller = %verdict.caller, alloc = %r.alloc_id, follow = r.follow, "log read");
        let dir = self.tasks_dir.join(&r.alloc_id);
        let live = dir.join(if stream_name(r.stream) == "stderr" {
            "stderr.log"
        } else {
            "stdout.log"
        });
        let read = read::LogRead {
            live,
            tail_lines: r.tail_lines,
            since: (r.since_ms > 0)
                .then(|| std::time::UNIX_EPOCH + Duration::from_millis(r.since_ms)),
            follow: r.follow,
        };
        let api = self.clone();
        let alloc = r.alloc_id.clone();
        let stop: read::Stop = Box::new(move || {
            if let Err(why) = auth::still_allowed(&verdict, &api.revocations) {
                return Some(Err(tonic::Status::permission_denied(why)));
            }
            (!api.on_node(&alloc)).then_some(Ok(()))
        });
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            read::stream(&read, &tx, &stop);
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves the node API on `listener` until `shutdown`, presenting the node SVID of `api.setup`
/// (re-read whenever the agent renews it) and trusting its bundle.
pub(crate) async fn serve(
    api: NodeApi,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    use ringzero_policy::tls::{BundleSource, PeerMatch, RotatingCert, SpiffeClientVerifier};
    let mut setup = api.setup.clone();
    let (bundle, cert) = {
        let s = setup.borrow_and_update().clone();
        let c = s.creds.client_credentials().map_err(|e| e.to_string())?;
        let key = s.creds.private_key().map_err(|e| e.to_string())?;
        (
            BundleSource::new(c.bundle.clone()),
            RotatingCert::new(s.creds.chain.clone(), key).map_err(|e| e.to_string())?,
        )
    };
    let verifier = SpiffeClientVerifier::new(bundle.clone(), PeerMatch::AnyInTrustDomain);
    let config = ringzero_policy::tls::rotating_server_config(cert.clone(), verifier)
        .map_err(|e| e.to_string())?;
    // Follow the node SVID's renewals and the bundle's changes.
    let rotate = tokio::spawn(async move {
        while setup.changed().await.is_ok() {
            let s = setup.borrow_and_update().clone();
            match (s.creds.client_credentials(), s.creds.private_key()) {
                (Ok(c), Ok(key)) => {
                    bundle.replace(c.bundle.clone());
                    if let Err(e) = cert.replace(s.creds.chain.clone(), key) {
                        warn!(error = %e, "node API: the renewed node SVID is unusable");
                    }
                }
                _ => warn!("node API: the new credentials are unusable"),
            }
        }
    });
    let policy = ringzero_proto::transport::ServerPolicy::default();
    let result = policy
        .server()
        .layer(ringzero_proto::transport::RefuseExpiredLayer)
        .add_service(NodeServer::new(api))
        .serve_with_incoming_shutdown(policy.incoming(listener, Arc::new(config)), shutdown)
        .await
        .map_err(|e| e.to_string());
    rotate.abort();
    result
}

/// Binds the node API's listener.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
