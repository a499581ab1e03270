//! The state indexed once per plan: nodes by name, allocations by job and index, capacity used
//! per node. Every later step looks things up here instead of scanning all allocations.

use std::collections::{BTreeMap, HashMap};

use crate::view::{AllocState, AllocView, Desired, JobView, NodeView};

/// A job key: (namespace, name).
pub(crate) type JobKey<'a> = (&'a str, &'a str);

/// Capacity requested on one node by the allocations that keep running after this plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) cpu_millis: u64,
    pub(crate) memory_mb: u64,
}

impl Usage {
    pub(crate) fn add(&mut self, job: &JobView) {
        self.cpu_millis = self.cpu_millis.saturating_add(u64::from(job.cpu_millis));
        self.memory_mb = self.memory_mb.saturating_add(u64::from(job.memory_mb));
    }
}

/// The allocation that holds an index of a job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Holder<'a> {
    pub(crate) alloc: &'a AllocView,
    /// On a draining node: it runs until a replacement is placed, then is stopped.
    pub(crate) draining: bool,
}

/// One running job's allocations, by index.
#[derive(Debug)]
pub(crate) struct JobSlots<'a> {
    pub(crate) job: &'a JobView,
    pub(crate) held: HashMap<u32, Holder<'a>>,
    /// Indexes whose current-version allocation exited: done.
    pub(crate) exited: HashMap<u32, &'a AllocView>,
    /// Indexes whose current-version allocation failed (lowest id kept).
    pub(crate) failed: HashMap<u32, &'a AllocView>,
    /// How many held allocations of this job each node carries (for spread).
    pub(crate) per_node: HashMap<usize, u32>,
}

/// Everything the planner knows, indexed.
#[derive(Debug)]
pub(crate) struct Ledger<'a> {
    /// Distinct nodes (first of each name wins).
    pub(crate) nodes: Vec<&'a NodeView>,
    /// Capacity used per node, parallel to `nodes`.
    pub(crate) used: Vec<Usage>,
    /// Running jobs in (namespace, name) order (first of each key wins).
    pub(crate) jobs: BTreeMap<JobKey<'a>, JobSlots<'a>>,
    /// Allocations to set desired `Stop`.
    pub(crate) stop: Vec<String>,
    /// Allocations to mark `Lost`.
    pub(crate) lost: Vec<String>,
}

/// Index the input and decide everything that needs no placement: which allocations are lost,
/// which are stopped, and which one holds each index. Cost: O(nodes + jobs + allocs).
pub(crate) fn index<'a>(
    jobs: &'a [JobView],
    nodes: &'a [NodeView],
    allocs: &'a [AllocView],
) -> Ledger<'a> {
    let mut by_name: HashMap<&'a str, usize> = HashMap::with_capacity(nodes.len());
    let mut distinct = Vec::with_capacity(nodes.len());
    for node in nodes {
        if !by_name.contains_key(node.name.as_str()) {
            by_name.insert(&node.name, distinct.len());
            distinct.push(node);
        }
    }

    let mut known: HashMap<JobKey<'a>, &'a JobView> = HashMap::with_capacity(jobs.len());
    for job in jobs {
        known.entry((&job.namespace, &job.name)).or_insert(job);
    }
    let mut slots: BTreeMap<JobKey<'a>, JobSlots<'a>> = known
        .iter()
        .filter(|(_, job)| job.running)
        .map(|(key, job)| {
            let slots = JobSlots {
                job,
                held: HashMap::new(),
                exited: HashMap::new(),
                failed: HashMap::new(),
                per_node: HashMap::new(),
            };
            (*key, slots)
        })
        .collect();

    let mut stop = Vec::new();
    let mut lost = Vec::new();
    // Allocations that may hold an index, before duplicates are resolved.
    let mut contenders: HashMap<(JobKey<'a>, u32), Vec<(&'a AllocView, usize)>> = HashMap::new();

    for alloc in allocs {
        let key = (alloc.namespace.as_str(), alloc.job.as_str());
        let current = slots
            .get_mut(&key)
            .filter(|s| s.job.version == alloc.version && alloc.index < s.job.count);
        // A terminal allocation counts wherever its node is: an exit is an exit.
        if alloc.state.is_terminal() {
            if let (Some(slots), Desired::Run) = (current, alloc.desired) {
                let record = match alloc.state {
                    AllocState::Exited { .. } => &mut slots.exited,
                    AllocState::Failed => &mut slots.failed,
                    _ => continue,
                };
                let kept = record.entry(alloc.index).or_insert(alloc);
                if alloc.id < kept.id {
                    *kept = alloc;
                }
            }
            continue;
        }
        let node = by_name.get(alloc.node.as_str()).copied();
        let Some(node) = node.filter(|&n| distinct[n].keeps_allocs()) else {
            lost.push(alloc.id.clone());
            continue;
        };
        if alloc.desired == Desired::Stop {
            // Already asked to stop: the agent is on it.
            continue;
        }
        if current.is_some() {
            contenders
                .entry((key, alloc.index))
                .or_default()
                .push((alloc, node));
        } else {
            // Job absent or stopped, old version, or index past the count.
            stop.push(alloc.id.clone());
        }
    }

    let mut used = vec![Usage::default(); distinct.len()];
    for ((key, index), mut allocs) in contenders {
        let Some(slots) = slots.get_mut(&key) else {
            continue;
        };
        // Prefer a node that is not draining, then a running allocation, then the lowest id.
        allocs.sort_by(|(a, an), (b, bn)| {
            let rank = |alloc: &AllocView, node: usize| {
                (distinct[node].draining, alloc.state != AllocState::Running)
            };
            rank(a, *an)
                .cmp(&rank(b, *bn))
                .then_with(|| a.id.cmp(&b.id))
        });
        let mut rest = allocs.into_iter();
        if let Some((alloc, node)) = rest.next() {
            slots.held.insert(
                index,
                Holder {
                    alloc,
                    draining: distinct[node].draining,
                },
            );
            used[node].add(slots.job);
            *slots.per_node.entry(node).or_default() += 1;
        }
        // Duplicates of an index: one is enough.
        stop.extend(rest.map(|(alloc, _)| alloc.id.clone()));
    }

    Ledger {
        nodes: distinct,
        used,
        jobs: slots,
        stop,
        lost,
    }
}
