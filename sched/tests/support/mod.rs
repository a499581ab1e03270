//! Fixtures shared by the scheduler's tests: views, an id generator, and a plan applied the
//! way the daemon will apply it.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use ringzero_sched::{AllocState, AllocView, Desired, JobView, NodeView, Plan, PlanLimits, plan};

pub fn node(name: &str, cpu_millis: u64, memory_mb: u64) -> NodeView {
    NodeView {
        name: name.into(),
        labels: BTreeMap::new(),
        cpu_millis,
        memory_mb,
        live: true,
        draining: false,
        eligible: true,
    }
}

pub fn labelled(mut node: NodeView, labels: &[(&str, &str)]) -> NodeView {
    node.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    node
}

pub fn job(name: &str, count: u32, cpu_millis: u32, memory_mb: u32) -> JobView {
    JobView {
        namespace: "ns".into(),
        name: name.into(),
        version: 1,
        count,
        cpu_millis,
        memory_mb,
        nodes: Vec::new(),
        labels: BTreeMap::new(),
        running: true,
    }
}

pub fn alloc(id: &str, job: &JobView, index: u32, node: &str, state: AllocState) -> AllocView {
    AllocView {
        id: id.into(),
        namespace: job.namespace.clone(),
        job: job.name.clone(),
        version: job.version,
        index,
        node: node.into(),
        desired: Desired::Run,
        state,
    }
}

/// Ids `p0`, `p1`, ... in call order.
pub fn ids() -> impl FnMut() -> String {
    let mut next = 0u64;
    move || {
        next += 1;
        format!("p{next}")
    }
}

/// Plan with no cap and ids `p1`, `p2`, ...
pub fn plan_all(jobs: &[JobView], nodes: &[NodeView], allocs: &[AllocView]) -> Plan {
    plan(jobs, nodes, allocs, &PlanLimits::UNLIMITED, &mut ids())
}

/// Apply a plan's effects as the daemon will: new allocations desired `Run` and `Pending`,
/// stops desired `Stop`, losses state `Lost`.
pub fn apply(allocs: &[AllocView], plan: &Plan) -> Vec<AllocView> {
    let mut out: Vec<AllocView> = allocs
        .iter()
        .cloned()
        .map(|mut a| {
            if plan.stop.contains(&a.id) {
                a.desired = Desired::Stop;
            }
            if plan.lost.contains(&a.id) {
                a.state = AllocState::Lost;
            }
            a
        })
        .collect();
    out.extend(plan.place.iter().map(|p| AllocView {
        id: p.id.clone(),
        namespace: p.namespace.clone(),
        job: p.job.clone(),
        version: p.version,
        index: p.index,
        node: p.node.clone(),
        desired: Desired::Run,
        state: AllocState::Pending,
    }));
    out
}

/// The node names of a plan's placements, in order.
pub fn placed_on(plan: &Plan) -> Vec<&str> {
    plan.place.iter().map(|p| p.node.as_str()).collect()
}
