//! `ringzero agent run`: enrollment, the node SVID's renewal, the entry sync, workload SVID
//! issuance and rotation, and the Workload API, until shutdown or until an operator must act.
//!
//! - **Node SVID**: renewed at half-life (± 10 %) with a fresh key through `RenewNode`; the new
//!   key, SVID, token and bundle replace the old ones in one atomic write.
//! - **Sync**: one `SyncEntries` stream, resumed from the last revision after every reconnect
//!   (a task of its own, following leader changes through the client's address list). Bundle
//!   changes arrive on the same stream.
//! - **Issuance**: every entry needing an SVID (new, changed, or due for rotation) is batched
//!   into `MintSvids` calls of at most [`MINT_BATCH`] CSRs; keys never leave this process.
//!   Each SVID then has its own timer at half-life ± 10 % of its actual validity.
//! - **Allocations**: the node's allocations (sent by the feed) run under a task
//!   [`Supervisor`](crate::tasks::Supervisor) over `<data_dir>/tasks`, each task with
//!   `SPIFFE_ENDPOINT_SOCKET` set to this agent's socket; their statuses go back through
//!   `ReportAllocStatus`.
//! - **Servable**: the highest entry revision up to which every entry of the node has a valid
//!   SVID in the cache (or was found unservable, with why) goes back through `ReportServable`,
//!   which `entry create --wait` waits on; each live change's commit-to-servable latency goes
//!   to [`ServableLatency`](crate::ServableLatency) ([`Ready::servable_latency`]).
//! - **Errors**: eviction, a ban or an expired node SVID stop the agent with the recovery
//!   recipe ([`AgentError`]); anything else is retried with backoff while the cache keeps
//!   serving.
//!
//! # Layout
//!
//! - this file: [`AgentConfig`], [`Ready`], [`run`] (startup and shutdown), the agent's state
//!   and its main loop.
//! - `startup.rs`: the stored credentials, or enrollment on the first start.
//! - `entries.rs`: applying sync events: entries held and dropped, the bundle, the saved state.
//! - `issuance.rs`: workload SVIDs: their timers and batched `MintSvids` calls.
//! - `renewal.rs`: the node SVID's renewal.
//! - `sync.rs`: the `SyncEntries` stream task.
//! - `allocs.rs`: the allocations' task: starting and stopping them, reporting their statuses.
//! - `servable.rs`: which entries the cache can serve (the servable revision, unservable
//!   entries, commit-to-servable latency), reported to the authority with `ReportServable`.
//! - `backoff.rs`: exponential backoff with jitter.

pub(crate) mod allocs;
mod backoff;
mod entries;
mod issuance;
mod renewal;
mod servable;
mod startup;
mod sync;

pub(crate) use self::sync::ClientSetup;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ringzero_policy::selector::Selector;
use ringzero_policy::{SpiffeId, TrustDomain};
use ringzero_proto::client::{AuthorityClient, ClientError, FirstContact};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use self::backoff::Backoff;
use self::sync::{SyncMsg, sync_task};
use crate::cache::SvidCache;
use crate::error::{AgentError, RecoveryHint, Verdict, classify};
use crate::rotation::Validity;
use crate::state::{DataDir, NodeCredentials, StoredEntry};
use crate::workload;

/// The most CSRs in one `MintSvids` call.
pub(crate) const MINT_BATCH: usize = 256;
/// How long before retrying an SVID the authority refused.
const REFUSED_RETRY: Duration = Duration::from_secs(30);
/// The least time between two issuances for one entry: a guard against reissue loops (an SVID
/// that is "due" the moment it arrives).
const MIN_REISSUE: Duration = Duration::from_secs(1);
/// A new or changed entry waits this long before issuance, so that a burst of changes (a
/// deployment creating many entries) shares one `MintSvids` call.
const CHANGE_DELAY: Duration = Duration::from_millis(50);
/// Timers due within this window are served in the same batch.
const COALESCE: Duration = Duration::from_millis(250);

/// What `agent run` is told.
#[derive(Debug)]
pub struct AgentConfig {
    /// Authority addresses (host:port). Empty: the ones stored at enrollment.
    pub authorities: Vec<String>,
    /// Keep the addresses the agent starts with (`authorities`, or the stored ones) and ignore
    /// the authority list the trust bundle carries: for an agent that reaches the authorities
    /// through a proxy or NAT, whose members' own addresses it cannot dial.
    pub pin_authority: bool,
    /// The data directory (created; mode `0711`, files `0600`).
    pub data_dir: PathBuf,
    /// The Workload API socket; default `<data_dir>/workload.sock`.
    pub socket: Option<PathBuf>,
    /// How to enroll when the data directory holds no credentials yet. Ignored once enrolled.
    pub join: Option<FirstContact>,
    /// Where to serve the node API (task logs over mTLS); `None`: not served.
    pub node_api: Option<std::net::SocketAddr>,
    /// The address announced to the authority for the node API (`host:port`); default the
    /// bound address, unless it is unspecified (`0.0.0.0`), when nothing is announced.
    pub node_api_advertise: Option<String>,
    /// Refuse every exec on this node (audited as `exec_disabled`).
    pub disable_exec: bool,
    /// What a failed write of an exec session's recording does.
    pub recording: crate::node_api::RecordingMode,
    /// The most bytes one exec session's recording may hold (at least 4 KiB); past it the
    /// write fails, and `recording` decides what happens.
    pub recording_max_bytes: u64,
    /// Where to serve `/live`, `/ready` and `/metrics`; `None`: not served.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Reported once: the Workload API serves and the first sync (and the SVIDs it called for)
/// completed.
#[derive(Debug, Clone)]
pub struct Ready {
    pub node: String,
    pub spiffe_id: SpiffeId,
    /// Registration entries parented to this node.
    pub entries: usize,
    /// Identities in the cache (entries with an SVID).
    pub identities: usize,
    pub socket: PathBuf,
    /// Where the node API listens, when it is served.
    pub node_api: Option<std::net::SocketAddr>,
    /// Commit-to-servable latencies of the entry changes this agent follows, for metrics.
    pub servable_latency: crate::ServableLatency,
}

/// Runs the agent until `shutdown` completes (`Ok`) or an operator must act (`Err`).
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    run_with_ready(config, None, shutdown).await
}

/// [`run`], sending [`Ready`] on `ready` once the socket serves and the first sync completed.
pub async fn run_with_ready(
    config: AgentConfig,
    ready: Option<oneshot::Sender<Ready>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let dir = DataDir::open(&config.data_dir)?;
    let socket = config
        .socket
        .clone()
        .unwrap_or_else(|| dir.default_socket());

    // 1. Credentials: stored, or enroll now.
    let (node, creds, addrs) = startup::load_or_enroll(&dir, &config).await?;
    if addrs.is_empty() {
        return Err(AgentError::Config(
            "no authority address (--authority ADDR[,ADDR…])".into(),
        ));
    }
    let hint = RecoveryHint {
        node: node.clone(),
        data_dir: dir.path().to_path_buf(),
        authorities: addrs.join(","),
    };
    let td = creds.trust_domain.clone();
    let node_id = td
        .id_with_path(&["ringzero", "node", node.as_str()])
        .map_err(|e| AgentError::Corrupt(e.to_string()))?;
    let node_validity = creds
        .chain
        .first()
        .and_then(|c| Validity::of(c, SystemTime::now()))
        .ok_or_else(|| AgentError::Corrupt("the node SVID does not parse".into()))?;
    if node_validity.expired_at(SystemTime::now()) {
        return Err(AgentError::Expired(hint));
    }

    // 2. What was synced before the restart (only if it was this node's).
    let (entries, revision) = match dir.load_state()? {
        Some(s) if s.node == node && s.trust_domain == td.as_str() => (s.entries, s.revision),
        _ => (Vec::new(), 0),
    };

    // 3. The Workload API, from the start: clients get "no identity issued" until the first
    //    sync fills the cache, and retry.
    let cache = SvidCache::new();
    cache.set_bundle(td.clone(), creds.bundle.clone());
    let mut tasks_config = crate::tasks::SupervisorConfig::new(dir.path().join("tasks"));
    tasks_config.spiffe_endpoint_socket = Some(format!("unix://{}", socket.display()));
    let supervisor = Arc::new(
        crate::tasks::Supervisor::new(tasks_config)
            .map_err(|e| AgentError::Config(format!("task supervisor: {e}")))?,
    );
    let listener = workload::bind(&socket).await?;
    info!(socket = %socket.display(), "Workload API listening");
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let setup = Arc::new(ClientSetup {
        creds: creds.clone(),
        addrs: addrs.clone(),
    });
    let (setup_tx, setup_rx) = watch::channel(setup);
    let server = tokio::spawn(workload::serve_listener(
        listener,
        cache.clone(),
        crate::attest::Attestor::new().with_tasks(supervisor.statuses()),
        workload::Limits::default(),
        Some(Arc::new(workload::JwtIssuer::new(setup_rx.clone()))),
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));

    // 4. The sync stream in its own task, the rest here.
    let (sync_tx, sync_rx) = mpsc::channel(64);
    let allocs_setup = setup_rx.clone();
    let (allocs_tx, allocs_rx) = watch::channel(None);
    let (keys_tx, keys_rx) = watch::channel(ringzero_policy::token::KeySet::new());
    let revocations = crate::revocations::RevocationSet::new();
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(addr) = config.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| AgentError::Config(format!("metrics on {addr}: {e}")))?;
        info!(bound = ?listener.local_addr().ok(), "metrics endpoint listening");
        let health = crate::metrics::AgentHealth {
            cache: cache.clone(),
            revocations: revocations.clone(),
            serving: Arc::clone(&serving),
        };
        tokio::spawn(ringzero_telemetry::serve(listener, Arc::new(health)));
    }

    // 5. The node API, when asked for: bound before the feed opens, so that its address is
    //    announced with it.
    let mut node_api_task = None;
    let mut node_api_addr = None;
    let mut announce = String::new();
    if let Some(addr) = config.node_api {
        let name = ringzero_policy::NodeName::parse(&node)
            .map_err(|e| AgentError::Corrupt(e.to_string()))?;
        let api = crate::node_api::NodeApi::new(
            name,
            setup_rx.clone(),
            keys_rx,
            revocations.clone(),
            allocs_rx.clone(),
            dir.path(),
            crate::node_api::ExecSettings {
                enabled: !config.disable_exec,
                recording: config.recording,
                recording_max_bytes: config.recording_max_bytes,
                supervisor: Some(supervisor.clone()),
            },
        );
        let listener = crate::node_api::bind(addr)
            .await
            .map_err(|e| AgentError::Config(format!("node API on {addr}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| AgentError::Config(format!("node API: {e}")))?;
        announce = match &config.node_api_advertise {
            Some(a) => a.clone(),
            None if bound.ip().is_unspecified() => {
                warn!(%bound, "node API bound to an unspecified address and no --node-api-advertise: not announced");
                String::new()
            }
            None => bound.to_string(),
        };
        info!(%bound, announced = %announce, "node API listening");
        node_api_addr = Some(bound);
        let mut stop = stop_tx.subscribe();
        node_api_task = Some(tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::node_api::serve(api.clone(), listener, stopped).await {
                warn!(error = %e, "node API stopped");
            }
        }));
        tokio::spawn(crate::node_api::retention_task(
            dir.path().join("tasks"),
            dir.path().join("node-api"),
            dir.path().join("sessions"),
            allocs_rx.clone(),
            crate::node_api::Retention::default(),
        ));
    }
    let (connected_tx, connected_rx) = watch::channel(0u64);
    let (servable_tx, servable_rx) = watch::channel(ringzero_proto::pb::ReportServableRequest {
        revision,
        unservable: Vec::new(),
    });
    let reporter = tokio::spawn(servable::report_task(
        servable_rx,
        setup_rx.clone(),
        connected_rx,
    ));
    let sync = tokio::spawn(sync_task(
        setup_rx,
        revision,
        sync_tx,
        hint.clone(),
        announce,
        connected_tx,
    ));
    let servable_latency = crate::ServableLatency::new();
    let alloc_runner = tokio::spawn(allocs::alloc_task(supervisor, allocs_rx, allocs_setup));

    let mut agent = Agent {
        client: AuthorityClient::new(creds.client_credentials()?, addrs.clone()),
        dir,
        hint,
        node,
        node_id,
        td,
        creds,
        addrs,
        pin_authority: config.pin_authority,
        node_validity,
        node_renew_at: Instant::now(),
        node_backoff: Backoff::default(),
        mint_backoff: Backoff::default(),
        setup_tx,
        cache,
        entries: BTreeMap::new(),
        revision,
        timers: BTreeSet::new(),
        due: HashMap::new(),
        full_sync: None,
        synced: false,
        ready,
        serving,
        revocations,
        keys_tx,
        socket,
        node_api_addr,
        allocs_tx,
        servable: servable::Servability::new(servable_latency.clone()),
        servable_tx,
        servable_latency,
    };
    agent.schedule_node_renewal();
    for e in entries {
        agent.hold(e, 0);
    }
    agent.publish_servable();

    let result = tokio::select! {
        r = agent.run(sync_rx) => r,
        () = shutdown => Ok(()),
    };
    sync.abort();
    reporter.abort();
    // Tasks keep running: the next agent adopts them.
    alloc_runner.abort();
    let _ = stop_tx.send(true);
    if let Some(t) = node_api_task {
        let _ = t.await;
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "Workload API stopped with an error"),
        Err(e) => warn!(error = %e, "Workload API task failed"),
    }
    if let Err(e) = &result {
        error!(error = %e, "agent stopped");
    } else {
        info!("agent stopped");
    }
    result
}

/// A registration entry as held: stored form plus what it parses to (`None` when it does not
/// parse: held, persisted, never issued).
struct Held {
    entry: StoredEntry,
    parsed: Option<(SpiffeId, Vec<Selector>)>,
}

struct Agent {
    dir: DataDir,
    hint: RecoveryHint,
    node: String,
    node_id: SpiffeId,
    td: TrustDomain,
    creds: NodeCredentials,
    addrs: Vec<String>,
    /// Ignore the bundle's authority addresses (`AgentConfig::pin_authority`).
    pin_authority: bool,
    client: AuthorityClient,
    node_validity: Validity,
    node_renew_at: Instant,
    node_backoff: Backoff,
    mint_backoff: Backoff,
    setup_tx: watch::Sender<Arc<ClientSetup>>,
    cache: SvidCache,
    entries: BTreeMap<String, Held>,
    revision: u64,
    /// Issuance timers: (when, entry id), and each entry's current one.
    timers: BTreeSet<(Instant, String)>,
    due: HashMap<String, Instant>,
    /// During a sync from revision 0: the entries seen so far; on `synced`, every other held
    /// entry is dropped.
    full_sync: Option<HashSet<String>>,
    synced: bool,
    ready: Option<oneshot::Sender<Ready>>,
    /// Set with `synced`, for the metrics endpoint's `/ready`.
    serving: Arc<std::sync::atomic::AtomicBool>,
    socket: PathBuf,
    /// Revoked capabilities, followed from the feed, for the node's verifiers.
    revocations: crate::revocations::RevocationSet,
    /// The bundle's Biscuit keys, for the node API's verifier.
    keys_tx: watch::Sender<ringzero_policy::token::KeySet>,
    node_api_addr: Option<std::net::SocketAddr>,
    /// The node's allocations, for the allocations' task (`None` until the feed sends them).
    allocs_tx: watch::Sender<Option<Arc<ringzero_proto::pb::NodeAllocSet>>>,
    /// Which entries the cache can serve, and the report of it for the reporting task.
    servable: servable::Servability,
    servable_tx: watch::Sender<ringzero_proto::pb::ReportServableRequest>,
    servable_latency: crate::ServableLatency,
}

impl Agent {
    async fn run(&mut self, mut sync_rx: mpsc::Receiver<SyncMsg>) -> Result<(), AgentError> {
        loop {
            let next = self.timers.first().map(|(t, _)| *t);
            tokio::select! {
                msg = sync_rx.recv() => match msg {
                    Some(SyncMsg::Reset) => self.full_sync = Some(HashSet::new()),
                    Some(SyncMsg::Event(ev)) => self.apply(ev).await?,
                    Some(SyncMsg::Fatal(e)) => return Err(e),
                    None => return Err(AgentError::Corrupt("the sync task ended".into())),
                },
                () = tokio::time::sleep_until(self.node_renew_at) => self.renew_node().await?,
                () = sleep_until_opt(next), if self.synced && next.is_some() => {
                    self.issue_due().await?;
                }
            }
            self.publish_servable();
        }
    }

    /// Hands the reporting task the current report, when it changed.
    fn publish_servable(&self) {
        let report = self.servable.report(self.revision);
        self.servable_tx.send_if_modified(|current| {
            if *current == report {
                false
            } else {
                *current = report;
                true
            }
        });
    }

    /// Stops on a fatal error; logs a transient one.
    fn verdict(&self, e: &ClientError, doing: &str, retry: Duration) -> Result<(), AgentError> {
        match classify(e, &self.hint) {
            Verdict::Fatal(f) => Err(f),
            Verdict::Retry => {
                warn!(error = %e, retry_in = ?retry, "{doing} failed; retrying");
                Ok(())
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
