//! Choosing a node for one allocation: which nodes are feasible, which of them spreads the job
//! best, and, when none is, a precise reason.

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::ledger::Usage;
use crate::view::{JobView, NodeView};

/// The nodes a job's constraints admit, ignoring capacity: schedulable, name allowed, labels
/// matching. Computed once per job that needs placements. Cost: O(nodes · labels).
pub(crate) fn candidates(job: &JobView, nodes: &[&NodeView]) -> Result<Vec<usize>, String> {
    let admitted: Vec<usize> = (0..nodes.len())
        .filter(|&n| nodes[n].schedulable() && job.admits(nodes[n]))
        .collect();
    if admitted.is_empty() {
        return Err(why_none_admitted(job, nodes));
    }
    Ok(admitted)
}

/// Name the first constraint, in the order they are checked, that no node passes.
fn why_none_admitted(job: &JobView, nodes: &[&NodeView]) -> String {
    if nodes.is_empty() {
        return "no nodes enrolled".to_string();
    }
    let schedulable: Vec<&NodeView> = nodes.iter().copied().filter(|n| n.schedulable()).collect();
    if schedulable.is_empty() {
        let count = |f: fn(&NodeView) -> bool| nodes.iter().filter(|n| f(n)).count();
        return format!(
            "no schedulable node: of {} nodes, {} not live, {} not eligible, {} draining",
            nodes.len(),
            count(|n| !n.live),
            count(|n| !n.eligible),
            count(|n| n.live && n.eligible && n.draining),
        );
    }
    let allowed: Vec<&NodeView> = schedulable
        .into_iter()
        .filter(|n| job.allows_name(&n.name))
        .collect();
    if allowed.is_empty() {
        return format!(
            "no schedulable node among allowed nodes {}",
            job.nodes.join(", ")
        );
    }
    let labels: Vec<String> = job.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let among = if job.nodes.is_empty() {
        String::new()
    } else {
        format!(" among allowed nodes {}", job.nodes.join(", "))
    };
    format!("no node satisfies labels {}{among}", labels.join(","))
}

/// Pick the feasible node that spreads the job best: fewest allocations of this job, then
/// lowest utilization after placing, then name. Cost: O(candidates).
pub(crate) fn choose(
    job: &JobView,
    candidates: &[usize],
    nodes: &[&NodeView],
    used: &[Usage],
    per_node: &HashMap<usize, u32>,
) -> Result<usize, String> {
    let cpu = u64::from(job.cpu_millis);
    let mem = u64::from(job.memory_mb);
    let mut best: Option<(usize, u32, Fraction)> = None;
    for &n in candidates {
        let node = nodes[n];
        let usage = used[n];
        if free(node.cpu_millis, usage.cpu_millis) < cpu
            || free(node.memory_mb, usage.memory_mb) < mem
        {
            continue;
        }
        let spread = per_node.get(&n).copied().unwrap_or(0);
        let utilization = Fraction::new(usage.cpu_millis.saturating_add(cpu), node.cpu_millis).max(
            Fraction::new(usage.memory_mb.saturating_add(mem), node.memory_mb),
        );
        let better = match &best {
            None => true,
            Some((b, b_spread, b_util)) => spread
                .cmp(b_spread)
                .then_with(|| utilization.cmp(b_util))
                .then_with(|| node.name.cmp(&nodes[*b].name))
                .is_lt(),
        };
        if better {
            best = Some((n, spread, utilization));
        }
    }
    best.map(|(n, _, _)| n)
        .ok_or_else(|| why_no_capacity(job, candidates, nodes, used))
}

fn free(capacity: u64, used: u64) -> u64 {
    capacity.saturating_sub(used)
}

/// Every admitted node lacks capacity: say which resource, how much is needed and the most
/// any node has free.
fn why_no_capacity(
    job: &JobView,
    candidates: &[usize],
    nodes: &[&NodeView],
    used: &[Usage],
) -> String {
    let cpu = u64::from(job.cpu_millis);
    let mem = u64::from(job.memory_mb);
    let free_cpu = |&n: &usize| free(nodes[n].cpu_millis, used[n].cpu_millis);
    let free_mem = |&n: &usize| free(nodes[n].memory_mb, used[n].memory_mb);
    let most_cpu = candidates.iter().map(free_cpu).max().unwrap_or(0);
    let most_mem = candidates.iter().map(free_mem).max().unwrap_or(0);
    if most_cpu < cpu {
        format!("insufficient cpu: needs {cpu} millicores, most free {most_cpu} millicores")
    } else if most_mem < mem {
        format!("insufficient memory: needs {mem} MB, most free {most_mem} MB")
    } else {
        format!(
            "insufficient capacity: needs {cpu} millicores and {mem} MB together, no node has both \
             (most free {most_cpu} millicores, {most_mem} MB)"
        )
    }
}

/// `used / capacity`, compared exactly; a non-zero use of zero capacity is infinite.
#[derive(Debug, Clone, Copy)]
struct Fraction {
    num: u64,
    den: u64,
}

impl Fraction {
    fn new(used: u64, capacity: u64) -> Self {
        match (used, capacity) {
            (0, _) => Fraction { num: 0, den: 1 },
            (_, 0) => Fraction { num: 1, den: 0 },
            (num, den) => Fraction { num, den },
        }
    }
}

impl Ord for Fraction {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.den, other.den) {
            (0, 0) => Ordering::Equal,
            (0, _) => Ordering::Greater,
            (_, 0) => Ordering::Less,
            _ => (u128::from(self.num) * u128::from(other.den))
                .cmp(&(u128::from(other.num) * u128::from(self.den))),
        }
    }
}

impl PartialOrd for Fraction {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Fraction {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Fraction {}
