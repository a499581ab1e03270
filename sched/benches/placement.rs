//! Placement throughput: 1,000 queued allocations (10 jobs × 100) on 3, 100 and 1,000 nodes,
//! and a replan of a steady state of 10,000 allocations with nothing to do.
//!
//! `cargo bench -p ringzero-sched --bench placement -- --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringzero_sched::{AllocState, AllocView, Desired, JobView, NodeView, PlanLimits, plan};

fn nodes(n: usize) -> Vec<NodeView> {
    (0..n)
        .map(|i| NodeView {
            name: format!("node-{i:04}"),
            labels: [("zone".to_string(), format!("z{}", i % 3))]
                .into_iter()
                .collect(),
            cpu_millis: 64_000,
            memory_mb: 262_144,
            live: true,
            draining: false,
            eligible: true,
        })
        .collect()
}

fn jobs(n: usize, count: u32) -> Vec<JobView> {
    (0..n)
        .map(|i| JobView {
            namespace: format!("ns{}", i % 4),
            name: format!("job-{i:03}"),
            version: 1,
            count,
            cpu_millis: 100,
            memory_mb: 128,
            nodes: Vec::new(),
            labels: BTreeMap::new(),
            running: true,
        })
        .collect()
}

fn counter() -> impl FnMut() -> String {
    let mut next = 0u64;
    move || {
        next += 1;
        format!("alloc-{next:08}")
    }
}

fn place_queued(c: &mut Criterion) {
    let mut group = c.benchmark_group("place_1000_queued");
    group.throughput(Throughput::Elements(1_000));
    let jobs = jobs(10, 100);
    for n in [3, 100, 1_000] {
        let nodes = nodes(n);
        let sample = plan(&jobs, &nodes, &[], &PlanLimits::UNLIMITED, &mut counter());
        assert_eq!(sample.place.len(), 1_000, "every allocation fits");
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{n}_nodes")),
            &nodes,
            |b, nodes| {
                b.iter(|| {
                    plan(
                        black_box(&jobs),
                        black_box(nodes),
                        &[],
                        &PlanLimits::UNLIMITED,
                        &mut counter(),
                    )
                })
            },
        );
    }
    group.finish();
}

fn replan_steady(c: &mut Criterion) {
    let jobs = jobs(100, 100);
    let nodes = nodes(1_000);
    let placed = plan(&jobs, &nodes, &[], &PlanLimits::UNLIMITED, &mut counter());
    let allocs: Vec<AllocView> = placed
        .place
        .into_iter()
        .map(|p| AllocView {
            id: p.id,
            namespace: p.namespace,
            job: p.job,
            version: p.version,
            index: p.index,
            node: p.node,
            desired: Desired::Run,
            state: AllocState::Running,
        })
        .collect();
    assert_eq!(allocs.len(), 10_000);
    let steady = plan(
        &jobs,
        &nodes,
        &allocs,
        &PlanLimits::UNLIMITED,
        &mut counter(),
    );
    assert!(
        steady.is_empty() && steady.blocked.is_empty(),
        "steady state"
    );

    let mut group = c.benchmark_group("replan_steady");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("10000_allocs_1000_nodes", |b| {
        b.iter(|| {
            plan(
                black_box(&jobs),
                black_box(&nodes),
                black_box(&allocs),
                &PlanLimits::UNLIMITED,
                &mut counter(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, place_queued, replan_steady);
criterion_main!(benches);
