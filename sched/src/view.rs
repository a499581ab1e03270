//! What the planner sees: nodes, jobs and allocations, independent of the wire format (the
//! daemon converts from the authority's protobuf messages).

use std::collections::BTreeMap;

/// An enrolled node and its capacity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// CPU capacity in millicores.
    pub cpu_millis: u64,
    /// Memory capacity in MB.
    pub memory_mb: u64,
    /// The agent heartbeats.
    pub live: bool,
    /// The operator asked to move work off this node.
    pub draining: bool,
    /// Enrolled, active and not evicted.
    pub eligible: bool,
}

impl NodeView {
    /// Allocations on this node keep running (otherwise they are lost).
    pub(crate) fn keeps_allocs(&self) -> bool {
        self.live && self.eligible
    }

    /// New allocations may land here.
    pub(crate) fn schedulable(&self) -> bool {
        self.keeps_allocs() && !self.draining
    }
}

/// A job's placement-relevant spec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobView {
    pub namespace: String,
    pub name: String,
    pub version: u64,
    pub count: u32,
    /// CPU request per allocation in millicores (0: none).
    pub cpu_millis: u32,
    /// Memory request per allocation in MB (0: none).
    pub memory_mb: u32,
    /// Node names the job may run on (empty: any node).
    pub nodes: Vec<String>,
    /// Labels a node must all carry.
    pub labels: BTreeMap<String, String>,
    /// Desired state: `false` once the job is stopped.
    pub running: bool,
}

impl JobView {
    /// The job's name and label constraints admit `node`.
    pub(crate) fn admits(&self, node: &NodeView) -> bool {
        self.allows_name(&node.name) && self.labels_match(node)
    }

    pub(crate) fn allows_name(&self, node: &str) -> bool {
        self.nodes.is_empty() || self.nodes.iter().any(|n| n == node)
    }

    pub(crate) fn labels_match(&self, node: &NodeView) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
    }
}

/// What the scheduler wants of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Desired {
    Run,
    Stop,
}

/// What the node reports of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllocState {
    Pending,
    Running,
    /// Ended on its own with this exit code: done, never replaced.
    Exited {
        code: i32,
    },
    /// The restart policy gave up on its node.
    Failed,
    /// Its node died or was evicted.
    Lost,
    /// Stopped on request.
    Stopped,
}

impl AllocState {
    /// Nothing runs any more: the allocation holds no capacity and is never acted on again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, AllocState::Pending | AllocState::Running)
    }
}

/// One placed instance (`index`) of a job version on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocView {
    pub id: String,
    pub namespace: String,
    pub job: String,
    pub version: u64,
    pub index: u32,
    pub node: String,
    pub desired: Desired,
    pub state: AllocState,
}
