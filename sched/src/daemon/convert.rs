//! The authority's messages as the planner's views, and the daemon's own decisions around the
//! plan: which nodes are lost yet, which placements wait for a node's feed, which allocations
//! to stop because they were lost, and which to remove.

use std::collections::BTreeSet;

use ringzero_proto::pb;

use crate::view::{AllocState, AllocView, Desired, JobView, NodeView};

/// What the daemon read in one pass.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub jobs: Vec<pb::JobStatus>,
    pub allocs: Vec<pb::Alloc>,
    pub health: pb::ListNodeHealthReply,
}

/// The views for [`crate::plan`], and the nodes whose feed is down but not yet for long
/// enough to call them lost.
#[derive(Debug, Clone, Default)]
pub struct Views {
    pub jobs: Vec<JobView>,
    pub nodes: Vec<NodeView>,
    pub allocs: Vec<AllocView>,
    /// Nodes treated as live (their allocations are kept) although no feed is open: their
    /// last sign of life, or the leader's start of tracking, is less than `lost_after` ago.
    /// Nothing new is placed on them.
    pub in_grace: BTreeSet<String>,
}

/// A job as the planner sees it. A job without its spec (never sent by the authority) wants
/// nothing.
pub fn job_view(s: &pb::JobStatus) -> Option<JobView> {
    let j = s.job.as_ref()?;
    let c = j.constraints.clone().unwrap_or_default();
    Some(JobView {
        namespace: j.namespace.clone(),
        name: j.name.clone(),
        version: s.version,
        count: j.count,
        cpu_millis: j.cpu_millis.unwrap_or(0),
        memory_mb: j.memory_mb.unwrap_or(0),
        nodes: c.nodes,
        labels: c.labels.into_iter().collect(),
        running: s.desired == "running",
    })
}

/// A node as the planner sees it: eligible when active, draining when drained, capacity as its
/// agent reported it (none reported: none, so only jobs without requests fit). Live when its
/// feed is open, or while `now` is within `lost_after_ms` of both its last sign of life and
/// the leader's start of tracking (`in_grace` then).
pub fn node_view(
    h: &pb::NodeHealth,
    tracking_since_ms: u64,
    now_ms: u64,
    lost_after_ms: u64,
) -> (NodeView, bool) {
    let since = h.last_seen_ms.max(tracking_since_ms);
    let in_grace = !h.live && now_ms < since.saturating_add(lost_after_ms);
    let view = NodeView {
        name: h.name.clone(),
        labels: h
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cpu_millis: u64::from(h.cpu_millis.unwrap_or(0)),
        memory_mb: h.memory_mb.unwrap_or(0),
        live: h.live || in_grace,
        draining: h.drained,
        eligible: h.status == "active",
    };
    (view, in_grace)
}

/// An allocation as the planner sees it. An unknown desired state counts as `Run` and an
/// unknown state as `Pending`, so an allocation the daemon does not understand keeps its
/// capacity and is never placed twice.
pub fn alloc_view(a: &pb::Alloc) -> AllocView {
    let desired = match pb::AllocDesired::try_from(a.desired) {
        Ok(pb::AllocDesired::Stop) => Desired::Stop,
        _ => Desired::Run,
    };
    let state = match pb::AllocState::try_from(a.state) {
        Ok(pb::AllocState::Running) => AllocState::Running,
        Ok(pb::AllocState::Exited) => AllocState::Exited {
            code: a.exit_code.unwrap_or(0),
        },
        Ok(pb::AllocState::Failed) => AllocState::Failed,
        Ok(pb::AllocState::Lost) => AllocState::Lost,
        Ok(pb::AllocState::Stopped) => AllocState::Stopped,
        _ => AllocState::Pending,
    };
    AllocView {
        id: a.id.clone(),
        namespace: a.namespace.clone(),
        job: a.job.clone(),
        version: a.job_version,
        index: a.index,
        node: a.node.clone(),
        desired,
        state,
    }
}

/// Every view of a snapshot at `now_ms`.
pub fn views(s: &Snapshot, now_ms: u64, lost_after_ms: u64) -> Views {
    let mut in_grace = BTreeSet::new();
    let nodes = s
        .health
        .nodes
        .iter()
        .map(|h| {
            let (v, grace) = node_view(h, s.health.tracking_since_ms, now_ms, lost_after_ms);
            if grace {
                in_grace.insert(v.name.clone());
            }
            v
        })
        .collect();
    Views {
        jobs: s.jobs.iter().filter_map(job_view).collect(),
        nodes,
        allocs: s.allocs.iter().map(alloc_view).collect(),
        in_grace,
    }
}

/// Allocations marked lost but still desired `Run`: stopped, so that an agent that comes back
/// does not run them beside their replacements.
pub(crate) fn lost_to_stop(allocs: &[pb::Alloc]) -> Vec<String> {
    allocs
        .iter()
        .filter(|a| {
            a.state == pb::AllocState::Lost as i32 && a.desired == pb::AllocDesired::Run as i32
        })
        .map(|a| a.id.clone())
        .collect()
}

/// Allocations desired `Stop`, terminal, and unchanged for `keep_ms`: removed from the state.
pub(crate) fn to_remove(allocs: &[pb::Alloc], now_ms: u64, keep_ms: u64) -> Vec<String> {
    let terminal = [
        pb::AllocState::Exited,
        pb::AllocState::Failed,
        pb::AllocState::Lost,
        pb::AllocState::Stopped,
    ];
    allocs
        .iter()
        .filter(|a| {
            a.desired == pb::AllocDesired::Stop as i32
                && terminal.iter().any(|t| *t as i32 == a.state)
                && a.updated_ms.max(a.desired_ms).saturating_add(keep_ms) <= now_ms
        })
        .map(|a| a.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(name: &str, live: bool, last_seen_ms: u64) -> pb::NodeHealth {
        pb::NodeHealth {
            name: name.into(),
            status: "active".into(),
            live,
            last_seen_ms,
            cpu_millis: Some(2000),
            memory_mb: Some(4096),
            labels: [("zone".to_string(), "a".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_is_lost_only_after_the_grace_of_both_clocks() {
        // Live feed: live, whatever the clocks say.
        let (v, g) = node_view(&health("a", true, 0), 0, 1_000_000, 15_000);
        assert!(v.live && !g);
        assert_eq!((v.cpu_millis, v.memory_mb), (2000, 4096));
        assert_eq!(v.labels["zone"], "a");
        assert!(v.eligible && !v.draining);
        // Seen 10 s ago, leader tracking for long: in grace.
        let (v, g) = node_view(&health("a", false, 90_000), 0, 100_000, 15_000);
        assert!(v.live && g);
        // Seen 20 s ago: lost.
        let (v, g) = node_view(&health("a", false, 80_000), 0, 100_000, 15_000);
        assert!(!v.live && !g);
        // Never seen by a leader that started tracking 5 s ago: in grace.
        let (v, g) = node_view(&health("a", false, 0), 95_000, 100_000, 15_000);
        assert!(v.live && g);
        // Seen long ago, but the leader only started tracking 14.999 s ago: in grace.
        let (v, _) = node_view(&health("a", false, 1), 85_001, 100_000, 15_000);
        assert!(v.live);
        let (v, _) = node_view(&health("a", false, 1), 85_000, 100_000, 15_000);
        assert!(!v.live);
    }

    #[test]
    fn status_drain_and_missing_capacity() {
        let mut h = health("a", true, 0);
        h.status = "evicted".into();
        h.drained = true;
        h.cpu_millis = None;
        h.memory_mb = None;
        let (v, _) = node_view(&h, 0, 0, 15_000);
        assert!(!v.eligible && v.draining);
        assert_eq!((v.cpu_millis, v.memory_mb), (0, 0));
    }

    #[test]
    fn jobs_and_allocs() {
        let status = pb::JobStatus {
            job: Some(pb::Job {
                namespace: "shop".into(),
                name: "web".into(),
                count: 3,
                cpu_millis: Some(250),
                constraints: Some(pb::JobConstraints {
                    nodes: vec!["n1".into()],
                    labels: [("zone".to_string(), "a".to_string())].into(),
                }),
                ..Default::default()
            }),
            version: 4,
            desired: "running".into(),
            ..Default::default()
        };
        let j = job_view(&status).unwrap();
        assert_eq!(
            (j.version, j.count, j.cpu_millis, j.memory_mb),
            (4, 3, 250, 0)
        );
        assert!(j.running);
        assert_eq!(j.nodes, ["n1"]);
        let stopped = pb::JobStatus {
            desired: "stopped".into(),
            ..status.clone()
        };
        assert!(!job_view(&stopped).unwrap().running);
        assert!(job_view(&pb::JobStatus::default()).is_none());

        let a = pb::Alloc {
            id: "a".into(),
            desired: pb::AllocDesired::Stop as i32,
            state: pb::AllocState::Exited as i32,
            exit_code: Some(3),
            ..Default::default()
        };
        let v = alloc_view(&a);
        assert_eq!(v.desired, Desired::Stop);
        assert_eq!(v.state, AllocState::Exited { code: 3 });
        // Unknown values keep capacity: Run and Pending.
        let odd = pb::Alloc {
            desired: 99,
            state: 0,
            ..a
        };
        let v = alloc_view(&odd);
        assert_eq!((v.desired, v.state), (Desired::Run, AllocState::Pending));
    }

    #[test]
    fn lost_are_stopped_and_old_terminal_stops_removed() {
        let mk = |id: &str, desired: pb::AllocDesired, state: pb::AllocState, at: u64| pb::Alloc {
            id: id.into(),
            desired: desired as i32,
            state: state as i32,
            updated_ms: at,
            desired_ms: at,
            ..Default::default()
        };
        use pb::AllocDesired::{Run, Stop};
        use pb::AllocState::*;
        let allocs = [
            mk("lost-run", Run, Lost, 0),
            mk("lost-stop", Stop, Lost, 0),
            mk("running", Run, Running, 0),
            mk("stopping", Stop, Running, 0),
            mk("stopped-old", Stop, Stopped, 1_000),
            mk("stopped-new", Stop, Stopped, 50_000),
            mk("exited-run", Run, Exited, 0),
        ];
        assert_eq!(lost_to_stop(&allocs), ["lost-run"]);
        assert_eq!(
            to_remove(&allocs, 61_000, 60_000),
            ["lost-stop", "stopped-old"]
        );
    }

    #[test]
    fn views_collects_grace() {
        let s = Snapshot {
            health: pb::ListNodeHealthReply {
                nodes: vec![health("a", true, 0), health("b", false, 95_000)],
                tracking_since_ms: 0,
            },
            ..Snapshot::default()
        };
        let v = views(&s, 100_000, 15_000);
        assert_eq!(v.nodes.len(), 2);
        assert!(v.in_grace.contains("b") && !v.in_grace.contains("a"));
    }
}
