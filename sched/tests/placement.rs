//! The placement rules, one behaviour per test, through the public API.

mod support;

use ringzero_sched::{AllocState, Blocked, Desired, PlanLimits, plan};
use support::{alloc, apply, ids, job, labelled, node, placed_on, plan_all};

fn reasons(plan: &ringzero_sched::Plan) -> Vec<(u32, &str)> {
    plan.blocked
        .iter()
        .map(|b| (b.index, b.reason.as_str()))
        .collect()
}

#[test]
fn count_two_on_two_nodes_lands_one_on_each() {
    let plan = plan_all(
        &[job("web", 2, 100, 128)],
        &[node("a", 1000, 1024), node("b", 1000, 1024)],
        &[],
    );
    assert_eq!(placed_on(&plan), ["a", "b"]);
    assert_eq!(plan.place[0].index, 0);
    assert_eq!(plan.place[1].index, 1);
    assert_eq!(plan.place[0].id, "p1");
    assert_eq!(plan.place[1].version, 1);
    assert!(plan.stop.is_empty() && plan.lost.is_empty() && plan.blocked.is_empty());
}

#[test]
fn spread_prefers_fewest_of_the_same_job_then_lower_utilization_then_name() {
    let web = job("web", 2, 100, 0);
    let db = job("db", 1, 600, 0);
    let nodes = [node("a", 10_000, 0), node("b", 1000, 0)];
    // b is busier than a, but a already carries web's index 0: index 1 goes to b.
    let allocs = [
        alloc("w0", &web, 0, "a", AllocState::Running),
        alloc("d0", &db, 0, "b", AllocState::Running),
    ];
    let plan = plan_all(&[web, db.clone()], &nodes, &allocs);
    assert_eq!(placed_on(&plan), ["b"]);
    assert_eq!(plan.place[0].index, 1);

    // No allocation of the job anywhere: the less utilized node wins.
    let nodes = [node("a", 1000, 1000), node("b", 1000, 1000)];
    let allocs = [alloc("d0", &db, 0, "a", AllocState::Running)];
    let plan = plan_all(&[db.clone(), job("api", 1, 100, 0)], &nodes, &allocs);
    assert_eq!(placed_on(&plan), ["b"]);

    // Nothing to tell them apart: the name decides, whatever the input order.
    let plan = plan_all(
        &[job("api", 1, 0, 0)],
        &[node("b", 0, 0), node("a", 0, 0)],
        &[],
    );
    assert_eq!(placed_on(&plan), ["a"]);
}

#[test]
fn node_name_constraint_confines_the_job() {
    let mut web = job("web", 3, 0, 0);
    web.nodes = vec!["b".into()];
    let nodes = [
        node("a", 1000, 1000),
        node("b", 1000, 1000),
        node("c", 1000, 1000),
    ];
    let plan = plan_all(std::slice::from_ref(&web), &nodes, &[]);
    assert_eq!(placed_on(&plan), ["b", "b", "b"]);

    web.nodes = vec!["z".into()];
    let plan = plan_all(&[web], &nodes, &[]);
    assert!(plan.place.is_empty());
    assert_eq!(
        reasons(&plan),
        [
            (0, "no schedulable node among allowed nodes z"),
            (1, "no schedulable node among allowed nodes z"),
            (2, "no schedulable node among allowed nodes z"),
        ]
    );
}

#[test]
fn label_constraint_requires_every_label() {
    let mut web = job("web", 2, 0, 0);
    web.labels = [
        ("zone".to_string(), "a".to_string()),
        ("disk".to_string(), "ssd".to_string()),
    ]
    .into_iter()
    .collect();
    let nodes = [
        labelled(node("n1", 1000, 1000), &[("zone", "a")]),
        labelled(node("n2", 1000, 1000), &[("zone", "a"), ("disk", "ssd")]),
        labelled(node("n3", 1000, 1000), &[("zone", "b"), ("disk", "ssd")]),
    ];
    let plan = plan_all(std::slice::from_ref(&web), &nodes, &[]);
    assert_eq!(placed_on(&plan), ["n2", "n2"]);

    let plan = plan_all(&[web], &nodes[..1], &[]);
    assert_eq!(
        plan.blocked,
        [0, 1]
            .map(|index| Blocked {
                namespace: "ns".into(),
                job: "web".into(),
                index,
                reason: "no node satisfies labels disk=ssd,zone=a".into(),
            })
            .to_vec()
    );
}

#[test]
fn capacity_is_never_overcommitted_and_the_shortfall_is_precise() {
    let plan = plan_all(&[job("web", 3, 400, 0)], &[node("a", 1000, 0)], &[]);
    assert_eq!(placed_on(&plan), ["a", "a"]);
    assert_eq!(
        reasons(&plan),
        [(
            2,
            "insufficient cpu: needs 400 millicores, most free 200 millicores"
        )]
    );

    let plan = plan_all(&[job("web", 2, 0, 512)], &[node("a", 0, 768)], &[]);
    assert_eq!(placed_on(&plan), ["a"]);
    assert_eq!(
        reasons(&plan),
        [(1, "insufficient memory: needs 512 MB, most free 256 MB")]
    );

    // Enough cpu on one node and enough memory on another, but never both.
    let plan = plan_all(
        &[job("web", 1, 500, 500)],
        &[node("a", 1000, 100), node("b", 100, 1000)],
        &[],
    );
    assert_eq!(
        reasons(&plan),
        [(
            0,
            "insufficient capacity: needs 500 millicores and 500 MB together, no node has both \
             (most free 1000 millicores, 1000 MB)"
        )]
    );
}

#[test]
fn existing_allocations_use_capacity_but_stopped_ones_do_not() {
    let db = job("db", 1, 800, 0);
    let web = job("web", 1, 400, 0);
    let mut stopping = alloc("w-old", &web, 0, "a", AllocState::Running);
    stopping.desired = Desired::Stop;
    let allocs = [alloc("d0", &db, 0, "a", AllocState::Running), stopping];
    let plan = plan_all(&[db, web], &[node("a", 1000, 0)], &allocs);
    assert!(plan.place.is_empty());
    assert_eq!(
        reasons(&plan),
        [(
            0,
            "insufficient cpu: needs 400 millicores, most free 200 millicores"
        )]
    );
}

#[test]
fn dead_node_allocations_are_lost_and_replaced_on_the_other_node() {
    let web = job("web", 2, 100, 100);
    let allocs = [
        alloc("w0", &web, 0, "a", AllocState::Running),
        alloc("w1", &web, 1, "b", AllocState::Running),
        alloc("gone", &web, 0, "a", AllocState::Stopped),
    ];
    let mut a = node("a", 1000, 1000);
    a.live = false;
    let plan = plan_all(
        std::slice::from_ref(&web),
        &[a.clone(), node("b", 1000, 1000)],
        &allocs,
    );
    assert_eq!(plan.lost, ["w0"]);
    assert_eq!(placed_on(&plan), ["b"]);
    assert_eq!(plan.place[0].index, 0);
    assert!(plan.stop.is_empty());

    // An evicted node loses its allocations the same way; so does an unknown one.
    a.live = true;
    a.eligible = false;
    let plan = plan_all(std::slice::from_ref(&web), &[a], &allocs);
    assert_eq!(plan.lost, ["w0", "w1"]);
    let plan = plan_all(std::slice::from_ref(&web), &[], &allocs);
    assert_eq!(plan.lost, ["w0", "w1"]);

    // An index that exited is done, even on a node that died since.
    let exited = [alloc("w0", &web, 0, "a", AllocState::Exited { code: 3 })];
    let plan = plan_all(&[job("web", 1, 0, 0)], &[], &exited);
    assert!(plan.is_empty() && plan.blocked.is_empty(), "{plan:?}");
}

#[test]
fn draining_places_a_replacement_then_stops_the_old_allocation() {
    let web = job("web", 1, 100, 100);
    let allocs = [alloc("w0", &web, 0, "a", AllocState::Running)];
    let mut a = node("a", 1000, 1000);
    a.draining = true;
    let plan = plan_all(
        std::slice::from_ref(&web),
        &[a.clone(), node("b", 1000, 1000)],
        &allocs,
    );
    assert_eq!(placed_on(&plan), ["b"]);
    assert_eq!(plan.stop, ["w0"]);
    assert!(plan.lost.is_empty());

    // No room elsewhere: the old allocation keeps running and the move is reported.
    let plan = plan_all(&[web], &[a, node("b", 1000, 50)], &allocs);
    assert!(plan.place.is_empty() && plan.stop.is_empty());
    assert_eq!(
        reasons(&plan),
        [(
            0,
            "cannot move off draining node a (alloc w0 keeps running): \
             insufficient memory: needs 100 MB, most free 50 MB"
        )]
    );
}

#[test]
fn version_bump_stops_and_replaces_every_index() {
    let mut web = job("web", 2, 600, 0);
    let allocs = [
        alloc("w0", &web, 0, "a", AllocState::Running),
        alloc("w1", &web, 1, "b", AllocState::Pending),
    ];
    web.version = 2;
    // Each node only fits one: the old allocations' capacity is released by the stop.
    let plan = plan_all(&[web], &[node("a", 1000, 0), node("b", 1000, 0)], &allocs);
    assert_eq!(plan.stop, ["w0", "w1"]);
    assert_eq!(placed_on(&plan), ["a", "b"]);
    assert!(plan.place.iter().all(|p| p.version == 2));
}

#[test]
fn scale_down_stops_the_highest_indexes() {
    let mut web = job("web", 4, 0, 0);
    let allocs: Vec<_> = (0..4)
        .map(|i| alloc(&format!("w{i}"), &web, i, "a", AllocState::Running))
        .collect();
    web.count = 2;
    let plan = plan_all(&[web], &[node("a", 0, 0)], &allocs);
    assert_eq!(plan.stop, ["w2", "w3"]);
    assert!(plan.place.is_empty() && plan.blocked.is_empty());
}

#[test]
fn stopped_or_absent_job_stops_everything_still_running() {
    let mut web = job("web", 2, 0, 0);
    let mut asked = alloc("w-asked", &web, 1, "a", AllocState::Running);
    asked.desired = Desired::Stop;
    let allocs = [
        alloc("w0", &web, 0, "a", AllocState::Running),
        alloc("w1", &web, 1, "a", AllocState::Pending),
        alloc("w-done", &web, 0, "a", AllocState::Stopped),
        asked,
    ];
    web.running = false;
    let plan = plan_all(&[web], &[node("a", 0, 0)], &allocs);
    assert_eq!(plan.stop, ["w0", "w1"]);
    assert!(plan.place.is_empty() && plan.blocked.is_empty());

    let plan = plan_all(&[], &[node("a", 0, 0)], &allocs);
    assert_eq!(plan.stop, ["w0", "w1"]);
}

#[test]
fn exited_is_done_and_failed_is_reported_not_replaced() {
    let web = job("web", 3, 0, 0);
    let allocs = [
        alloc("w0", &web, 0, "a", AllocState::Exited { code: 0 }),
        alloc("w1", &web, 1, "a", AllocState::Failed),
        alloc("w2-lost", &web, 2, "a", AllocState::Lost),
    ];
    let plan = plan_all(&[web], &[node("a", 0, 0), node("b", 0, 0)], &allocs);
    let placed: Vec<_> = plan.place.iter().map(|p| p.index).collect();
    assert_eq!(placed, [2]);
    assert_eq!(reasons(&plan), [(1, "failed on node a (alloc w1)")]);
    assert!(plan.stop.is_empty() && plan.lost.is_empty());
}

#[test]
fn duplicate_holders_keep_the_running_one() {
    let web = job("web", 1, 0, 0);
    let allocs = [
        alloc("w0-a", &web, 0, "a", AllocState::Pending),
        alloc("w0-b", &web, 0, "b", AllocState::Running),
    ];
    let plan = plan_all(&[web], &[node("a", 0, 0), node("b", 0, 0)], &allocs);
    assert_eq!(plan.stop, ["w0-a"]);
    assert!(plan.place.is_empty());
}

#[test]
fn no_schedulable_node_says_why() {
    let mut a = node("a", 1000, 1000);
    a.live = false;
    let mut b = node("b", 1000, 1000);
    b.draining = true;
    let plan = plan_all(&[job("web", 1, 0, 0)], &[a, b], &[]);
    assert_eq!(
        reasons(&plan),
        [(
            0,
            "no schedulable node: of 2 nodes, 1 not live, 0 not eligible, 1 draining"
        )]
    );
    let plan = plan_all(&[job("web", 1, 0, 0)], &[], &[]);
    assert_eq!(reasons(&plan), [(0, "no nodes enrolled")]);
}

#[test]
fn max_place_defers_the_rest_to_the_next_plan() {
    let web = job("web", 5, 0, 0);
    let nodes = [node("a", 0, 0)];
    let limits = PlanLimits {
        max_place: 2,
        ..PlanLimits::default()
    };
    let first = plan(std::slice::from_ref(&web), &nodes, &[], &limits, &mut ids());
    assert_eq!(first.place.len(), 2);
    assert_eq!(first.deferred, 3);
    let allocs = apply(&[], &first);
    let second = plan(
        std::slice::from_ref(&web),
        &nodes,
        &allocs,
        &limits,
        &mut ids(),
    );
    let indexes: Vec<_> = second.place.iter().map(|p| p.index).collect();
    assert_eq!(indexes, [2, 3]);
    assert_eq!(second.deferred, 1);
}

#[test]
fn applying_a_plan_then_replanning_is_empty() {
    let mut web = job("web", 3, 300, 256);
    let old = [
        alloc("w0", &web, 0, "a", AllocState::Running),
        alloc("w5", &web, 5, "b", AllocState::Running),
    ];
    web.version = 2;
    let mut c = node("c", 1000, 1000);
    c.draining = true;
    let nodes = [node("a", 1000, 1000), node("b", 1000, 1000), c];
    let jobs = [web];
    let first = plan_all(&jobs, &nodes, &old);
    assert!(!first.is_empty());
    let after = apply(&old, &first);
    let second = plan_all(&jobs, &nodes, &after);
    assert!(second.is_empty(), "{second:?}");
}

#[test]
fn max_blocked_caps_the_report_and_counts_the_rest() {
    let limits = PlanLimits {
        max_blocked: 2,
        ..PlanLimits::default()
    };
    let plan = plan(&[job("web", 5, 0, 0)], &[], &[], &limits, &mut ids());
    assert_eq!(
        reasons(&plan),
        [(0, "no nodes enrolled"), (1, "no nodes enrolled")]
    );
    assert_eq!(plan.unreported, 3);
}
