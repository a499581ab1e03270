//! An in-process authority cluster for tests and benchmarks.
//!
//! Real openraft nodes on real, durable redb files; only the network is simulated: a
//! [`Router`] delivers RPCs between nodes and can drop, delay (and so reorder) and partition
//! them. A node can be stopped and restarted from its files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    ClientWriteError, InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, ServerState};
use rand::{Rng, SeedableRng};

use crate::command::{AuditDecision, AuditRecord, Command, CommandId, Op, Response};
use crate::store::{self, StateMachineStore};
use crate::{NodeId, Raft, StateError, StateReader, TypeConfig};

/// Network faults, applied to every message (requests and responses alike).
#[derive(Debug)]
pub struct Faults {
    /// Pairs that cannot talk (both directions are listed separately).
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    /// Probability that a message is lost.
    pub drop_rate: f64,
    /// Each message is delayed uniformly up to this; differing delays reorder messages.
    pub max_delay: Duration,
    rng: rand::rngs::StdRng,
}

impl Faults {
    fn new(seed: u64) -> Self {
        Self {
            blocked: BTreeSet::new(),
            drop_rate: 0.0,
            max_delay: Duration::ZERO,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }
}

/// Delivers RPCs between in-process nodes, through [`Faults`].
pub struct Router {
    nodes: Mutex<BTreeMap<NodeId, Raft>>,
    faults: Mutex<Faults>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NetFault(String);

impl Router {
    fn new(seed: u64) -> Self {
        Self {
            nodes: Mutex::new(BTreeMap::new()),
            faults: Mutex::new(Faults::new(seed)),
        }
    }

    /// Changes the faults in force.
    pub fn with_faults<T>(&self, f: impl FnOnce(&mut Faults) -> T) -> T {
        f(&mut self.faults.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Cuts every link between `a` and `b` (sets of nodes), both directions.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        self.with_faults(|f| {
            for &x in a {
                for &y in b {
                    f.blocked.insert((x, y));
                    f.blocked.insert((y, x));
                }
            }
        });
    }

    /// Restores every link and stops dropping and delaying.
    pub fn heal(&self) {
        self.with_faults(|f| {
            f.blocked.clear();
            f.drop_rate = 0.0;
            f.max_delay = Duration::ZERO;
        });
    }

    /// One hop from `from` to `to`: waits the delay, or fails as a lost or blocked message.
    async fn hop(&self, from: NodeId, to: NodeId) -> Result<(), NetFault> {
        let (blocked, lost, delay) = self.with_faults(|f| {
            let lost = f.drop_rate > 0.0 && f.rng.random_bool(f.drop_rate.clamp(0.0, 1.0));
            let delay = if f.max_delay.is_zero() {
                Duration::ZERO
            } else {
                f.max_delay.mul_f64(f.rng.random::<f64>())
            };
            (f.blocked.contains(&(from, to)), lost, delay)
        });
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if blocked {
            return Err(NetFault(format!("{from} -> {to}: partitioned")));
        }
        if lost {
            return Err(NetFault(format!("{from} -> {to}: message lost")));
        }
        Ok(())
    }

    async fn deliver(&self, from: NodeId, to: NodeId) -> Result<Raft, NetFault> {
        self.hop(from, to).await?;
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&to)
            .cloned()
            .ok_or_else(|| NetFault(format!("node {to} is down")))
    }
}

fn unreachable<E: std::error::Error>(e: NetFault) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&e))
}

/// One node's view of the network.
#[derive(Debug, Clone)]
pub struct RouterNetwork {
    from: NodeId,
    router: Arc<Router>,
}

/// A connection from one node to another.
#[derive(Debug)]
pub struct RouterConnection {
    from: NodeId,
    to: NodeId,
    router: Arc<Router>,
}

impl RaftNetworkFactory<TypeConfig> for RouterNetwork {
    type Network = RouterConnection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        RouterConnection {
            from: self.from,
            to: target,
            router: self.router.clone(),
        }
    }
}

impl RouterConnection {
    /// Delivers one request to the target node and its answer back, each hop through the
    /// faults.
    async fn forward<Resp, E, Fut>(
        &self,
        call: impl FnOnce(Raft) -> Fut,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Fut: std::future::Future<Output = Result<Resp, RaftError<NodeId, E>>>,
        E: std::error::Error,
    {
        let raft = self
            .router
            .deliver(self.from, self.to)
            .await
            .map_err(unreachable)?;
        let resp = call(raft)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))?;
        self.router
            .hop(self.to, self.from)
            .await
            .map_err(unreachable)?;
        Ok(resp)
    }
}

impl RaftNetwork<TypeConfig> for RouterConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.forward(|raft| async move { raft.append_entries(rpc).await })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.forward(|raft| async move { raft.install_snapshot(rpc).await })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.forward(|raft| async move { raft.vote(rpc).await })
            .await
    }
}

struct Running {
    raft: Raft,
    sm: StateMachineStore,
}

/// An in-process cluster on durable storage under one directory.
pub struct Cluster {
    pub router: Arc<Router>,
    config: Arc<openraft::Config>,
    base: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    running: BTreeMap<NodeId, Running>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("base", &self.base)
            .field("running", &self.running.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("storage: {0}")]
    State(#[from] StateError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

fn raft_err(e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Raft(e.to_string())
}

/// Fast timers for tests: elections settle in a few hundred milliseconds.
pub fn test_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(500),
        max_in_snapshot_log_to_keep: 50,
        snapshot_max_chunk_size: 16 * 1024,
        ..Default::default()
    }
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) in a fresh temporary directory and makes them one cluster of
    /// voters.
    pub async fn start(n: u64, config: openraft::Config, seed: u64) -> Result<Self, HarnessError> {
        let tmp = tempfile::tempdir()
            .map_err(|e| HarnessError::State(StateError::Storage(e.to_string())))?;
        let mut c = Self {
            router: Arc::new(Router::new(seed)),
            config: Arc::new(config.validate().map_err(raft_err)?),
            base: tmp.path().to_path_buf(),
            _tmp: Some(tmp),
            running: BTreeMap::new(),
        };
        for id in 1..=n {
            c.start_node(id).await?;
        }
        let members: BTreeMap<NodeId, BasicNode> = (1..=n).map(|id| (id, node(id))).collect();
        c.raft(1)?.initialize(members).await.map_err(raft_err)?;
        Ok(c)
    }

    /// Starts (or restarts) node `id` from its files.
    pub async fn start_node(&mut self, id: NodeId) -> Result<(), HarnessError> {
        let dir = self.base.join(format!("node-{id}"));
        // A just-stopped node's files may still be held by its last tasks for a moment.
        let mut tries = 0;
        let (log, sm) = loop {
            match store::open(&dir) {
                Ok(s) => break s,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let net = RouterNetwork {
            from: id,
            router: self.router.clone(),
        };
        let raft = Raft::new(id, self.config.clone(), net, log, sm.clone())
            .await
            .map_err(raft_err)?;
        self.router
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, raft.clone());
        self.running.insert(id, Running { raft, sm });
        Ok(())
    }

    /// Stops node `id` (as a crash would, from the others' point of view).
    pub async fn stop_node(&mut self, id: NodeId) -> Result<(), HarnessError> {
        self.router
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(r) = self.running.remove(&id) {
            r.raft.shutdown().await.map_err(raft_err)?;
        }
        Ok(())
    }

    pub async fn restart_node(&mut self, id: NodeId) -> Result<(), HarnessError> {
        self.stop_node(id).await?;
        self.start_node(id).await
    }

    /// The ids of running nodes.
    pub fn running(&self) -> Vec<NodeId> {
        self.running.keys().copied().collect()
    }

    pub fn raft(&self, id: NodeId) -> Result<&Raft, HarnessError> {
        self.running
            .get(&id)
            .map(|r| &r.raft)
            .ok_or_else(|| HarnessError::Raft(format!("node {id} is not running")))
    }

    /// A consistent read of node `id`'s state machine.
    pub fn reader(&self, id: NodeId) -> Result<StateReader, HarnessError> {
        let r = self
            .running
            .get(&id)
            .ok_or_else(|| HarnessError::Raft(format!("node {id} is not running")))?;
        Ok(r.sm.reader()?)
    }

    /// A node that believes it leads, among `among` (all running nodes when empty), within
    /// `timeout`.
    pub async fn leader(
        &self,
        among: &[NodeId],
        timeout: Duration,
    ) -> Result<NodeId, HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            for (id, r) in &self.running {
                if !among.is_empty() && !among.contains(id) {
                    continue;
                }
                let m = r.raft.metrics().borrow().clone();
                if m.state == ServerState::Leader && m.current_leader == Some(*id) {
                    return Ok(*id);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HarnessError::Timeout("no leader".into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Proposes `cmd` through whichever node leads, following leader hints and retrying the
    /// same command (same id: retries are idempotent) until `timeout`.
    pub async fn write(&self, cmd: Command, timeout: Duration) -> Result<Response, HarnessError> {
        self.write_via(&[], cmd, timeout).await
    }

    /// Like [`Cluster::write`], but only through the nodes in `via` (all when empty).
    pub async fn write_via(
        &self,
        via: &[NodeId],
        cmd: Command,
        timeout: Duration,
    ) -> Result<Response, HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut target: Option<NodeId> = None;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(HarnessError::Timeout("write not committed".into()));
            }
            let id = match target {
                Some(t)
                    if self.running.contains_key(&t) && (via.is_empty() || via.contains(&t)) =>
                {
                    t
                }
                _ => match self.leader(via, deadline - now).await {
                    Ok(l) => l,
                    Err(e) => return Err(e),
                },
            };
            let raft = self.raft(id)?.clone();
            let attempt = tokio::time::timeout(
                Duration::from_millis(700).min(deadline.saturating_duration_since(now)),
                crate::propose(&raft, cmd.clone()),
            )
            .await;
            match attempt {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(crate::ProposeError::Invalid(e))) => {
                    return Err(HarnessError::Raft(format!("invalid command: {e}")));
                }
                Ok(Err(crate::ProposeError::Raft(RaftError::APIError(
                    ClientWriteError::ForwardToLeader(f),
                )))) => {
                    target = f.leader_id;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(Err(_)) | Err(_) => {
                    target = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for (id, r) in &self.running {
            let mut rx = r.raft.metrics();
            loop {
                if rx.borrow().last_applied.is_some_and(|l| l.index >= index) {
                    break;
                }
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(HarnessError::Timeout(format!(
                        "node {id} did not apply {index}"
                    )));
                }
                let _ = tokio::time::timeout(left, rx.changed()).await;
            }
        }
        Ok(())
    }

    /// The highest log index any running node has.
    pub fn max_log_index(&self) -> u64 {
        self.running
            .values()
            .filter_map(|r| r.raft.metrics().borrow().last_log_index)
            .max()
            .unwrap_or(0)
    }

    /// Adds node `id` as a learner (starting it first if needed), through the leader.
    pub async fn add_learner(&mut self, id: NodeId, timeout: Duration) -> Result<(), HarnessError> {
        if !self.running.contains_key(&id) {
            self.start_node(id).await?;
        }
        let leader = self.leader(&[], timeout).await?;
        self.raft(leader)?
            .add_learner(id, node(id), true)
            .await
            .map_err(raft_err)?;
        Ok(())
    }

    /// Changes the voter set, through the leader.
    pub async fn change_voters(
        &self,
        voters: &[NodeId],
        timeout: Duration,
    ) -> Result<(), HarnessError> {
        let leader = self.leader(&[], timeout).await?;
        let set: BTreeSet<NodeId> = voters.iter().copied().collect();
        self.raft(leader)?
            .change_membership(set, false)
            .await
            .map_err(raft_err)?;
        Ok(())
    }
}

/// The address record of node `id` in the in-process network.
pub fn node(id: NodeId) -> BasicNode {
    BasicNode {
        addr: format!("in-process-{id}"),
    }
}

/// A command that changes nothing but appends an audit record named `request_id`.
pub fn audit_only(request_id: &str) -> Command {
    Command {
        id: CommandId::fresh(),
        time_ms: 0,
        audit: AuditRecord {
            actor: "spiffe://test/user/tester".into(),
            revocation_ids: vec![],
            operation: "audit:read".into(),
            resource: "audit".into(),
            decision: AuditDecision::Allow,
            reason: None,
            authority: 0,
            request_id: request_id.into(),
            details: vec![],
        },
        op: Op::AuditOnly,
    }
}
