//! `job run --dry-run`: the placement the scheduler would make for the job as it would be
//! stored, computed here with [`ringzero_sched::plan`] over the authority's current state (node
//! health, jobs and allocations) converted as the scheduler daemon converts it. Only reads.

use std::time::SystemTime;

use ringzero_proto::client::{AuthorityClient, ClientError};
use ringzero_proto::pb;
use ringzero_sched::daemon::{self, Snapshot};
use ringzero_sched::{PlanLimits, plan};

use super::esc;

/// The scheduler daemon's default `--lost-after`: a node whose feed has been down longer is
/// lost and gets nothing.
fn lost_after_ms() -> u64 {
    u64::try_from(daemon::Config::default().lost_after.as_millis()).unwrap_or(u64::MAX)
}

/// What a submit of the job would lead the scheduler to do with it.
#[derive(Debug, Default)]
pub(super) struct Placement {
    /// (index, node, the node's feed is down but not yet for long: placed once it is back).
    pub(super) place: Vec<(u32, String, bool)>,
    /// (index, reason).
    pub(super) blocked: Vec<(u32, String)>,
    /// The job's current allocations the new version replaces (or that are lost).
    pub(super) stop: Vec<pb::Alloc>,
    /// What the view lacks (said on stderr and in the JSON).
    pub(super) notes: Vec<String>,
}

/// The placement, or `None` when the caller may not read node health (`node:read`).
pub(super) async fn placement(
    client: &mut AuthorityClient,
    st: &pb::JobStatus,
) -> Result<Option<Placement>, ClientError> {
    let Some(job) = st.job.as_ref() else {
        return Ok(None);
    };
    if !super::may_read_nodes(client) {
        return Ok(None);
    }
    let health = match client
        .call(|mut c| async move { c.list_node_health(pb::ListNodeHealthRequest {}).await })
        .await
    {
        Ok(h) => h,
        Err(e) if denied(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut notes = Vec::new();
    // The widest view the caller may read: every job sharing the nodes uses their capacity.
    let scopes = [
        (String::new(), String::new()),
        (job.namespace.clone(), String::new()),
        (job.namespace.clone(), job.name.clone()),
    ];
    let mut read = None;
    for (ns, name) in scopes {
        match list(client, &ns, &name).await {
            Ok(r) => {
                if !ns.is_empty() {
                    notes.push(format!(
                        "capacity used by jobs outside {} is not counted (reading them needs \
                         sched:read on everything)",
                        if name.is_empty() {
                            format!("ns/{ns}")
                        } else {
                            format!("ns/{ns}/{name}")
                        }
                    ));
                }
                read = Some(r);
                break;
            }
            Err(e) if denied(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    let Some((jobs, allocs)) = read else {
        return Ok(None);
    };
    if allocs.truncated {
        notes.push(
            "more allocations than one reply holds: the placement is from a partial view".into(),
        );
    }
    let mut jobs: Vec<pb::JobStatus> = jobs
        .into_iter()
        .filter(|j| {
            j.job
                .as_ref()
                .is_none_or(|o| (&o.namespace, &o.name) != (&job.namespace, &job.name))
        })
        .collect();
    jobs.push(st.clone());
    let snapshot = Snapshot {
        jobs,
        allocs: allocs.allocs,
        health,
    };
    let mut p = decide(&snapshot, &job.namespace, &job.name, now_ms());
    p.notes.splice(0..0, notes);
    Ok(Some(p))
}

/// The plan of `snapshot` at `now_ms`, restricted to job `ns/name`. Pure.
fn decide(snapshot: &Snapshot, ns: &str, name: &str, now_ms: u64) -> Placement {
    let v = daemon::views(snapshot, now_ms, lost_after_ms());
    let mut n = 0u64;
    let mut ids = || {
        n += 1;
        format!("new-{n}")
    };
    // Unlimited: what the scheduler does over its next passes, not only the first.
    let planned = plan(
        &v.jobs,
        &v.nodes,
        &v.allocs,
        &PlanLimits::UNLIMITED,
        &mut ids,
    );
    let ours = |a_ns: &str, a_job: &str| a_ns == ns && a_job == name;
    let mut place: Vec<(u32, String, bool)> = planned
        .place
        .iter()
        .filter(|p| ours(&p.namespace, &p.job))
        .map(|p| (p.index, p.node.clone(), v.in_grace.contains(&p.node)))
        .collect();
    place.sort();
    let mut blocked: Vec<(u32, String)> = planned
        .blocked
        .iter()
        .filter(|b| ours(&b.namespace, &b.job))
        .map(|b| (b.index, b.reason.clone()))
        .collect();
    blocked.sort();
    let mut stop: Vec<pb::Alloc> = snapshot
        .allocs
        .iter()
        .filter(|a| ours(&a.namespace, &a.job))
        .filter(|a| planned.stop.contains(&a.id) || planned.lost.contains(&a.id))
        .cloned()
        .collect();
    stop.sort_by(|a, b| (a.index, &a.id).cmp(&(b.index, &b.id)));
    let mut notes = Vec::new();
    if planned.unreported > 0 {
        notes.push(format!(
            "{} more blocked indexes not listed",
            planned.unreported
        ));
    }
    Placement {
        place,
        blocked,
        stop,
        notes,
    }
}

fn denied(e: &ClientError) -> bool {
    e.code() == Some(tonic::Code::PermissionDenied)
}

type Listed = (Vec<pb::JobStatus>, pb::ListAllocsReply);

/// Jobs and allocations of the cluster (`ns` empty), a namespace, or one job.
async fn list(client: &mut AuthorityClient, ns: &str, name: &str) -> Result<Listed, ClientError> {
    let scope = match (ns.is_empty(), name.is_empty()) {
        (true, _) => String::new(),
        (false, true) => format!("ns/{ns}"),
        (false, false) => format!("ns/{ns}/{name}"),
    };
    let jobs = client
        .call(|mut c| {
            let scope = scope.clone();
            async move { c.list_jobs(pb::ListJobsRequest { scope }).await }
        })
        .await?
        .jobs;
    let req = pb::ListAllocsRequest {
        namespace: ns.to_owned(),
        job: name.to_owned(),
        node: String::new(),
    };
    let allocs = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.list_allocs(req).await }
        })
        .await?;
    Ok((jobs, allocs))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn json(p: &Placement) -> serde_json::Value {
    serde_json::json!({
        "place": p.place.iter().map(|(index, node, waits)| serde_json::json!({
            "index": index, "node": node, "waits_for_node_feed": waits,
        })).collect::<Vec<_>>(),
        "blocked": p.blocked.iter().map(|(index, reason)| serde_json::json!({
            "index": index, "reason": reason,
        })).collect::<Vec<_>>(),
        "stop": p.stop.iter().map(|a| serde_json::json!({
            "id": a.id, "index": a.index, "node": a.node, "job_version": a.job_version,
        })).collect::<Vec<_>>(),
        "notes": p.notes,
    })
}

/// INDEX, NODE, ACTION rows, by index.
pub(super) fn rows(p: &Placement) -> Vec<[String; 3]> {
    let mut body: Vec<(u32, u8, [String; 3])> = Vec::new();
    for (index, node, waits) in &p.place {
        let action = if *waits {
            "place (once the node's feed is back)"
        } else {
            "place"
        };
        body.push((*index, 0, [index.to_string(), esc(node), action.to_owned()]));
    }
    for (index, reason) in &p.blocked {
        body.push((
            *index,
            1,
            [
                index.to_string(),
                "-".into(),
                format!("blocked: {}", esc(reason)),
            ],
        ));
    }
    for a in &p.stop {
        body.push((
            a.index,
            2,
            [
                a.index.to_string(),
                esc(&a.node),
                format!("stop {} (version {})", esc(&a.id), a.job_version),
            ],
        ));
    }
    body.sort_by_key(|a| (a.0, a.1));
    let mut rows = vec![["INDEX", "NODE", "ACTION"].map(str::to_owned)];
    rows.extend(body.into_iter().map(|(_, _, r)| r));
    rows
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn node(name: &str, live: bool) -> pb::NodeHealth {
        pb::NodeHealth {
            name: name.into(),
            status: "active".into(),
            live,
            cpu_millis: Some(1000),
            memory_mb: Some(1000),
            ..Default::default()
        }
    }

    fn job(name: &str, version: u64, count: u32, memory_mb: u32) -> pb::JobStatus {
        pb::JobStatus {
            job: Some(pb::Job {
                namespace: "shop".into(),
                name: name.into(),
                count,
                memory_mb: Some(memory_mb),
                ..Default::default()
            }),
            version,
            desired: "running".into(),
            ..Default::default()
        }
    }

    fn alloc(id: &str, job: &str, version: u64, index: u32, node: &str) -> pb::Alloc {
        pb::Alloc {
            id: id.into(),
            namespace: "shop".into(),
            job: job.into(),
            job_version: version,
            index,
            node: node.into(),
            desired: pb::AllocDesired::Run as i32,
            state: pb::AllocState::Running as i32,
            ..Default::default()
        }
    }

    #[test]
    fn spreads_replaces_the_old_version_and_counts_other_jobs() {
        // Version 2 of web replaces its version-1 allocation; db fills most of n1's memory.
        let s = Snapshot {
            jobs: vec![job("web", 2, 3, 400), job("db", 1, 1, 800)],
            allocs: vec![
                alloc("old", "web", 1, 0, "n1"),
                alloc("db0", "db", 1, 0, "n1"),
            ],
            health: pb::ListNodeHealthReply {
                nodes: vec![node("n1", true), node("n2", true)],
                tracking_since_ms: 0,
            },
        };
        let p = decide(&s, "shop", "web", 1_000_000);
        let placed: Vec<(u32, &str)> = p.place.iter().map(|(i, n, _)| (*i, n.as_str())).collect();
        assert_eq!(placed, [(0, "n2"), (1, "n2")]);
        assert_eq!(p.blocked.len(), 1);
        assert_eq!(p.blocked[0].0, 2);
        assert!(p.blocked[0].1.contains("memory"), "{:?}", p.blocked);
        assert_eq!(p.stop.len(), 1);
        assert_eq!(p.stop[0].id, "old");
        let rows = rows(&p);
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[1][0], "0");
        assert!(rows.iter().any(|r| r[2].starts_with("stop old")));
        let j = json(&p);
        assert_eq!(j["place"][1]["node"], "n2");
        assert_eq!(j["blocked"][0]["index"], 2);
    }
}
