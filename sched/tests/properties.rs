//! Properties of `plan` over generated clusters: idempotence, no over-commit, feasibility of
//! every placement, determinism and independence from input order.

mod support;

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use ringzero_sched::{AllocState, AllocView, Desired, JobView, NodeView, Plan, PlanLimits, plan};
use support::{apply, ids, plan_all};

const ZONES: [&str; 2] = ["a", "b"];

fn zone(z: Option<usize>) -> BTreeMap<String, String> {
    z.map(|z| ("zone".to_string(), ZONES[z].to_string()))
        .into_iter()
        .collect()
}

fn nodes() -> impl Strategy<Value = Vec<NodeView>> {
    prop::collection::vec(
        (
            0u64..4_000,
            0u64..4_096,
            prop::bool::weighted(0.85),
            prop::bool::weighted(0.15),
            prop::bool::weighted(0.9),
            prop::option::of(0usize..2),
        ),
        0..6,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (cpu, mem, live, draining, eligible, z))| NodeView {
                name: format!("n{i}"),
                labels: zone(z),
                cpu_millis: cpu,
                memory_mb: mem,
                live,
                draining,
                eligible,
            })
            .collect()
    })
}

fn jobs() -> impl Strategy<Value = Vec<JobView>> {
    prop::collection::vec(
        (
            1u64..3,
            0u32..6,
            prop_oneof![Just(0u32), 1u32..1_500],
            prop_oneof![Just(0u32), 1u32..1_500],
            prop::collection::vec(0usize..7, 0..3),
            prop::option::of(0usize..2),
            prop::bool::weighted(0.85),
        ),
        0..4,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(
                |(i, (version, count, cpu, mem, allowed, z, running))| JobView {
                    namespace: "ns".into(),
                    name: format!("j{i}"),
                    version,
                    count,
                    cpu_millis: cpu,
                    memory_mb: mem,
                    nodes: allowed.into_iter().map(|n| format!("n{n}")).collect(),
                    labels: zone(z),
                    running,
                },
            )
            .collect()
    })
}

fn state() -> impl Strategy<Value = AllocState> {
    prop_oneof![
        3 => Just(AllocState::Running),
        2 => Just(AllocState::Pending),
        1 => (0i32..3).prop_map(|code| AllocState::Exited { code }),
        1 => Just(AllocState::Failed),
        1 => Just(AllocState::Lost),
        1 => Just(AllocState::Stopped),
    ]
}

/// Existing allocations: some of jobs that exist, some of a job that does not ("j5"), some on
/// an unknown node ("n6"), versions old and current.
fn allocs() -> impl Strategy<Value = Vec<AllocView>> {
    prop::collection::vec(
        (
            0usize..6,
            1u64..3,
            0u32..7,
            0usize..7,
            prop::bool::weighted(0.8),
            state(),
        ),
        0..16,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (job, version, index, node, run, state))| AllocView {
                id: format!("a{i:02}"),
                namespace: "ns".into(),
                job: format!("j{job}"),
                version,
                index,
                node: format!("n{node}"),
                desired: if run { Desired::Run } else { Desired::Stop },
                state,
            })
            .collect()
    })
}

/// Requests on each node of the allocations that will keep running: desired `Run`, not
/// terminal, at the version of a running job.
fn usage(jobs: &[JobView], allocs: &[AllocView]) -> HashMap<String, (u64, u64)> {
    let mut used: HashMap<String, (u64, u64)> = HashMap::new();
    for a in allocs {
        let job = jobs.iter().find(|j| j.name == a.job);
        let holds = |j: &&JobView| {
            j.running
                && j.version == a.version
                && a.index < j.count
                && a.desired == Desired::Run
                && !a.state.is_terminal()
        };
        if let Some(job) = job.filter(holds) {
            let entry = used.entry(a.node.clone()).or_default();
            entry.0 += u64::from(job.cpu_millis);
            entry.1 += u64::from(job.memory_mb);
        }
    }
    used
}

fn replan(jobs: &[JobView], nodes: &[NodeView], allocs: &[AllocView], first: &Plan) -> Plan {
    plan_all(jobs, nodes, &apply(allocs, first))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn applying_a_plan_then_replanning_writes_nothing(
        jobs in jobs(), nodes in nodes(), allocs in allocs(),
    ) {
        let first = plan_all(&jobs, &nodes, &allocs);
        let second = replan(&jobs, &nodes, &allocs, &first);
        prop_assert!(second.is_empty(), "first {first:?}\nsecond {second:?}");
        // The same indexes stay blocked (reasons may quote free capacity that later jobs took).
        let keys = |p: &Plan| -> Vec<(String, u32)> {
            p.blocked.iter().map(|b| (b.job.clone(), b.index)).collect()
        };
        prop_assert_eq!(keys(&second), keys(&first));
    }

    #[test]
    fn placements_never_overcommit_a_node(
        jobs in jobs(), nodes in nodes(), allocs in allocs(),
    ) {
        let first = plan_all(&jobs, &nodes, &allocs);
        let before = usage(&jobs, &allocs);
        let after = usage(&jobs, &apply(&allocs, &first));
        for node in &nodes {
            let (cpu, mem) = after.get(&node.name).copied().unwrap_or((0, 0));
            let (cpu0, mem0) = before.get(&node.name).copied().unwrap_or((0, 0));
            // A node may already be over-committed (its capacity shrank); a plan never adds to it.
            prop_assert!(cpu <= node.cpu_millis.max(cpu0), "{} cpu {cpu}", node.name);
            prop_assert!(mem <= node.memory_mb.max(mem0), "{} mem {mem}", node.name);
            if before.is_empty() {
                prop_assert!(cpu <= node.cpu_millis && mem <= node.memory_mb);
            }
        }
    }

    #[test]
    fn every_placement_satisfies_the_job(
        jobs in jobs(), nodes in nodes(), allocs in allocs(),
    ) {
        let first = plan_all(&jobs, &nodes, &allocs);
        for p in &first.place {
            let job = jobs.iter().find(|j| j.name == p.job);
            let node = nodes.iter().find(|n| n.name == p.node);
            let (Some(job), Some(node)) = (job, node) else {
                return Err(TestCaseError::fail(format!("unknown job or node in {p:?}")));
            };
            prop_assert!(job.running && p.version == job.version && p.index < job.count);
            prop_assert!(node.live && node.eligible && !node.draining);
            prop_assert!(job.nodes.is_empty() || job.nodes.contains(&node.name));
            prop_assert!(job.labels.iter().all(|(k, v)| node.labels.get(k) == Some(v)));
        }
        let mut ids: Vec<&str> = first.place.iter().map(|p| p.id.as_str()).collect();
        ids.dedup();
        prop_assert_eq!(ids.len(), first.place.len());
    }

    #[test]
    fn the_same_input_in_any_order_gives_the_same_plan(
        jobs in jobs(), nodes in nodes(), allocs in allocs(),
    ) {
        let first = plan_all(&jobs, &nodes, &allocs);
        prop_assert_eq!(&plan_all(&jobs, &nodes, &allocs), &first);
        let jobs_r: Vec<JobView> = jobs.iter().rev().cloned().collect();
        let nodes_r: Vec<NodeView> = nodes.iter().rev().cloned().collect();
        let allocs_r: Vec<AllocView> = allocs.iter().rev().cloned().collect();
        prop_assert_eq!(&plan_all(&jobs_r, &nodes_r, &allocs_r), &first);
    }

    #[test]
    fn batches_place_a_prefix_and_defer_the_rest(
        jobs in jobs(), nodes in nodes(), allocs in allocs(), max_place in 0usize..4,
    ) {
        let all = plan_all(&jobs, &nodes, &allocs);
        let limits = PlanLimits { max_place, max_blocked: usize::MAX };
        let batch = plan(&jobs, &nodes, &allocs, &limits, &mut ids());
        prop_assert!(batch.place.len() <= max_place);
        prop_assert_eq!(&batch.place[..], &all.place[..batch.place.len()]);
        prop_assert_eq!(&batch.lost, &all.lost);
        if batch.deferred == 0 {
            prop_assert_eq!(&batch, &all);
        }
    }
}
