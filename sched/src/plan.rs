//! The plan: what to place, stop and mark lost, and what could not be placed and why.

use crate::ledger::{self, Ledger};
use crate::place;
use crate::view::{AllocView, JobView, NodeView};

/// The default cap on placements per plan.
pub const DEFAULT_MAX_PLACE: usize = 1_000;

/// The default cap on blocked indexes reported per plan.
pub const DEFAULT_MAX_BLOCKED: usize = 1_000;

/// Bounds on one plan, so the daemon writes in batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Placements per plan; indexes beyond it are counted in [`Plan::deferred`].
    pub max_place: usize,
    /// Blocked indexes reported per plan; the rest are counted in [`Plan::unreported`].
    pub max_blocked: usize,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            max_place: DEFAULT_MAX_PLACE,
            max_blocked: DEFAULT_MAX_BLOCKED,
        }
    }
}

impl PlanLimits {
    /// No cap on placements or reports (for tests and small clusters).
    pub const UNLIMITED: PlanLimits = PlanLimits {
        max_place: usize::MAX,
        max_blocked: usize::MAX,
    };
}

/// A new allocation to write (desired `Run`, state `Pending`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlloc {
    pub id: String,
    pub namespace: String,
    pub job: String,
    pub version: u64,
    pub index: u32,
    pub node: String,
}

/// An index of a job that wants an allocation and could not get one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub namespace: String,
    pub job: String,
    pub index: u32,
    pub reason: String,
}

/// The changes that bring allocations in line with jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// New allocations, in (namespace, job, index) order.
    pub place: Vec<NewAlloc>,
    /// Allocation ids to set desired `Stop`, sorted.
    pub stop: Vec<String>,
    /// Allocation ids to mark `Lost` (their node is not live or not eligible), sorted.
    pub lost: Vec<String>,
    /// Indexes that could not be placed, with the reason; a report, not an effect.
    pub blocked: Vec<Blocked>,
    /// Indexes left for a later plan because [`PlanLimits::max_place`] was reached.
    pub deferred: usize,
    /// Blocked indexes not listed because [`PlanLimits::max_blocked`] was reached.
    pub unreported: usize,
}

impl Plan {
    /// Nothing to write: no placement, stop or loss (blocked indexes may remain).
    pub fn is_empty(&self) -> bool {
        self.place.is_empty() && self.stop.is_empty() && self.lost.is_empty()
    }
}

/// Plan placements for `jobs` on `nodes` given the current `allocs`. Pure and deterministic:
/// the same input (in any order, names being distinct) gives the same plan, with ids drawn from
/// `ids` in placement order. Cost: O(allocs + jobs·nodes + placements·nodes).
pub fn plan(
    jobs: &[JobView],
    nodes: &[NodeView],
    allocs: &[AllocView],
    limits: &PlanLimits,
    ids: &mut impl FnMut() -> String,
) -> Plan {
    let Ledger {
        nodes,
        mut used,
        jobs,
        mut stop,
        mut lost,
    } = ledger::index(jobs, nodes, allocs);
    let mut plan = Plan::default();

    for ((namespace, name), mut slots) in jobs {
        let job = slots.job;
        let blocked = |index: u32, reason: String| Blocked {
            namespace: namespace.to_string(),
            job: name.to_string(),
            index,
            reason,
        };
        // Computed on the first index that needs a node; a job that fails once fails for the
        // rest of this plan, since capacity only shrinks as the plan places.
        let mut candidates: Option<Result<Vec<usize>, String>> = None;
        let mut failure: Option<String> = None;
        for index in 0..job.count {
            let moving = match slots.held.get(&index) {
                Some(holder) if !holder.draining => continue,
                Some(holder) => Some(holder.alloc),
                None if slots.exited.contains_key(&index) => continue,
                None => {
                    if let Some(failed) = slots.failed.get(&index) {
                        let reason =
                            format!("failed on node {} (alloc {})", failed.node, failed.id);
                        report(&mut plan, limits, blocked(index, reason));
                        continue;
                    }
                    None
                }
            };
            if plan.place.len() >= limits.max_place {
                plan.deferred += 1;
                continue;
            }
            let chosen = match &failure {
                Some(reason) => Err(reason.clone()),
                None => match candidates.get_or_insert_with(|| place::candidates(job, &nodes)) {
                    Ok(c) => place::choose(job, c, &nodes, &used, &slots.per_node),
                    Err(reason) => Err(reason.clone()),
                },
            };
            match chosen {
                Ok(n) => {
                    used[n].add(job);
                    *slots.per_node.entry(n).or_default() += 1;
                    plan.place.push(NewAlloc {
                        id: ids(),
                        namespace: namespace.to_string(),
                        job: name.to_string(),
                        version: job.version,
                        index,
                        node: nodes[n].name.clone(),
                    });
                    if let Some(old) = moving {
                        stop.push(old.id.clone());
                    }
                }
                Err(reason) => {
                    failure = Some(reason.clone());
                    let reason = match moving {
                        Some(old) => format!(
                            "cannot move off draining node {} (alloc {} keeps running): {reason}",
                            old.node, old.id
                        ),
                        None => reason,
                    };
                    report(&mut plan, limits, blocked(index, reason));
                }
            }
        }
    }

    stop.sort_unstable();
    lost.sort_unstable();
    plan.stop = stop;
    plan.lost = lost;
    plan
}

fn report(plan: &mut Plan, limits: &PlanLimits, blocked: Blocked) {
    if plan.blocked.len() < limits.max_blocked {
        plan.blocked.push(blocked);
    } else {
        plan.unreported += 1;
    }
}
