//! Allocations: `PlaceAllocs`, `StopAllocs`, `MarkAllocsLost`, `RemoveAllocs` (the scheduler's,
//! `job:launch` on `ns/<namespace>/<job>` of every allocation touched), `ListAllocs`
//! (`sched:read` on the namespace or job, plus `node:read` when filtering by node),
//! `ReportAllocStatus` (the node's own agent, gated like `SyncEntries`), `ListNodeHealth`
//! (`node:read`) and `SetNodeDrain` (`node:evict` on `node/<name>`); and the allocation set
//! the entry feed hands a node.
//!
//! Each of the four writes is proposed as `Op::FencedAllocWrite`, with the lease the request
//! names (the scheduler's) or none (an operator's): apply decides whether the lease still
//! holds, in log order (see `state::lease::fence`).
//!
//! The ids of a stop, lost or remove batch are looked up before deciding (the job to check is
//! the allocation's): an unknown id answers `NotFound`. Ids are 16 random characters chosen by
//! the scheduler, so this tells a caller nothing it could guess.

use std::collections::{BTreeMap, BTreeSet};

use ringzero_policy::{NodeName, Operation, Resource};
use ringzero_proto::pb;

use super::jobs::job_to_pb;
use super::nodes::*;
use super::{AuthorityService, status_of};
use crate::command::{
    AllocDesired, AllocState, AllocUpdate, AllocWrite, AuditDecision, LeaseFence, Op, Placement,
    check_alloc_ids, check_placements, check_report, job_resource,
};
use crate::state::{AllocRecord, StateReader};

/// Allocations in one `ListAllocs` reply.
const MAX_LIST: usize = 10_000;

fn desired_pb(d: AllocDesired) -> pb::AllocDesired {
    match d {
        AllocDesired::Run => pb::AllocDesired::Run,
        AllocDesired::Stop => pb::AllocDesired::Stop,
    }
}

fn state_pb(s: AllocState) -> pb::AllocState {
    match s {
        AllocState::Pending => pb::AllocState::Pending,
        AllocState::Running => pb::AllocState::Running,
        AllocState::Exited => pb::AllocState::Exited,
        AllocState::Failed => pb::AllocState::Failed,
        AllocState::Lost => pb::AllocState::Lost,
        AllocState::Stopped => pb::AllocState::Stopped,
    }
}

fn state_from_pb(s: i32) -> Result<AllocState, tonic::Status> {
    Ok(match pb::AllocState::try_from(s) {
        Ok(pb::AllocState::Pending) => AllocState::Pending,
        Ok(pb::AllocState::Running) => AllocState::Running,
        Ok(pb::AllocState::Exited) => AllocState::Exited,
        Ok(pb::AllocState::Failed) => AllocState::Failed,
        Ok(pb::AllocState::Stopped) => AllocState::Stopped,
        _ => {
            return Err(invalid(
                "an update's state must be pending, running, exited, failed or stopped",
            ));
        }
    })
}

pub(crate) fn alloc_to_pb(r: &AllocRecord) -> pb::Alloc {
    pb::Alloc {
        id: r.id.clone(),
        namespace: r.namespace.clone(),
        job: r.job.clone(),
        job_version: r.job_version,
        index: r.index,
        node: r.node.clone(),
        desired: desired_pb(r.desired).into(),
        state: state_pb(r.state).into(),
        exit_code: r.exit_code,
        restarts: r.restarts,
        created_ms: r.created_ms,
        updated_ms: r.updated_ms,
        message: r.message.clone(),
        previous: r.previous.clone().unwrap_or_default(),
        placed_by: r.placed_by.clone(),
        desired_ms: r.desired_ms,
        reported_ms: r.reported_ms,
        // Filled where the caller may reach the node (ListAllocs).
        node_api: String::new(),
    }
}

/// The allocations the feed hands `node`: its own, and once per job the spec at the version
/// they run (absent when the job moved on or is gone).
pub(crate) fn node_alloc_set(
    reader: &StateReader,
    node: &str,
) -> Result<pb::NodeAllocSet, tonic::Status> {
    let allocs = reader.allocs_of_node(node).map_err(status_of)?;
    let mut jobs = BTreeMap::new();
    for a in &allocs {
        let key = (a.namespace.clone(), a.job.clone(), a.job_version);
        if jobs.contains_key(&key) {
            continue;
        }
        let spec = reader
            .job(&a.namespace, &a.job)
            .map_err(status_of)?
            .filter(|j| j.version == a.job_version)
            .map(|j| pb::JobStatus {
                job: Some(job_to_pb(&j.job)),
                version: j.version,
                desired: j.desired.as_str().to_owned(),
                submitted_by: j.submitted_by.clone(),
                submitted_at_ms: j.submitted_at_ms,
            });
        jobs.insert(key, spec);
    }
    Ok(pb::NodeAllocSet {
        allocs: allocs
            .iter()
            .map(|a| pb::NodeAlloc {
                id: a.id.clone(),
                namespace: a.namespace.clone(),
                job: a.job.clone(),
                job_version: a.job_version,
                index: a.index,
                desired: desired_pb(a.desired).into(),
                state: state_pb(a.state).into(),
                exit_code: a.exit_code,
            })
            .collect(),
        jobs: jobs.into_values().flatten().collect(),
    })
}

/// Which id-batch call.
#[derive(Clone, Copy)]
enum IdsOp {
    Stop,
    Lost,
    Remove,
}

impl AuthorityService {
    /// `job:launch` on each distinct job; the first decision's record rides in the command,
    /// with the jobs and allocation ids in its details.
    async fn launch_gate<T>(
        &self,
        req: &tonic::Request<T>,
        jobs: &BTreeSet<(String, String)>,
    ) -> Result<crate::gate::Allowed, tonic::Status> {
        let mut first = None;
        for (ns, job) in jobs {
            let resource = job_resource(ns, job).map_err(invalid)?;
            let allowed = self
                .gate
                .check(req, Operation::JobLaunch, &resource, None)
                .await?;
            first.get_or_insert(allowed);
        }
        first.ok_or_else(|| invalid("an empty batch"))
    }

    fn allocs_by_id(&self, ids: &[String]) -> Result<Vec<AllocRecord>, tonic::Status> {
        let reader = self.sm.reader().map_err(status_of)?;
        ids.iter()
            .map(|id| {
                reader
                    .alloc(id)
                    .map_err(status_of)?
                    .ok_or_else(|| tonic::Status::not_found(format!("no allocation {id}")))
            })
            .collect()
    }

    fn allocs_reply(&self, ids: &[String]) -> Result<pb::AllocsReply, tonic::Status> {
        let reader = self.sm.reader().map_err(status_of)?;
        let mut allocs = Vec::new();
        for id in ids {
            if let Some(r) = reader.alloc(id).map_err(status_of)? {
                allocs.push(alloc_to_pb(&r));
            }
        }
        Ok(pb::AllocsReply {
            allocs,
            allocs_revision: reader.alloc_changes_revision().map_err(status_of)?,
        })
    }

    pub(crate) async fn place_allocs_impl(
        &self,
        req: tonic::Request<pb::PlaceAllocsRequest>,
    ) -> Result<tonic::Response<pb::AllocsReply>, tonic::Status> {
        self.require_leader()?;
        let allocs: Vec<Placement> = req
            .get_ref()
            .allocs
            .iter()
            .map(|p| Placement {
                id: p.id.clone(),
                namespace: p.namespace.clone(),
                job: p.job.clone(),
                job_version: p.job_version,
                index: p.index,
                node: p.node.clone(),
                previous: (!p.previous.is_empty()).then(|| p.previous.clone()),
            })
            .collect();
        check_placements(&allocs).map_err(invalid)?;
        let jobs = allocs
            .iter()
            .map(|a| (a.namespace.clone(), a.job.clone()))
            .collect();
        let allowed = self.launch_gate(&req, &jobs).await?;
        let ids: Vec<String> = allocs.iter().map(|a| a.id.clone()).collect();
        let lease = fence_of(req.get_ref().lease.as_ref())?;
        let mut cmd = allowed.command(Op::FencedAllocWrite {
            lease: lease.clone(),
            write: AllocWrite::Place(allocs),
        });
        details(&mut cmd.audit, "place", &jobs, &ids, lease.as_ref());
        let resp = self.propose(cmd).await?;
        super::status::accepted("allocation placement", resp.outcome)?;
        Ok(tonic::Response::new(self.allocs_reply(&ids)?))
    }

    async fn ids_call(
        &self,
        req: tonic::Request<pb::AllocIdsRequest>,
        which: IdsOp,
    ) -> Result<tonic::Response<pb::AllocsReply>, tonic::Status> {
        self.require_leader()?;
        let ids = req.get_ref().ids.clone();
        let lease = fence_of(req.get_ref().lease.as_ref())?;
        let (name, write) = match which {
            IdsOp::Stop => ("stop", AllocWrite::Stop(ids.clone())),
            IdsOp::Lost => ("lost", AllocWrite::Lost(ids.clone())),
            IdsOp::Remove => ("remove", AllocWrite::Remove(ids.clone())),
        };
        check_alloc_ids(name, &ids).map_err(invalid)?;
        let jobs = self
            .allocs_by_id(&ids)?
            .into_iter()
            .map(|a| (a.namespace, a.job))
            .collect();
        let allowed = self.launch_gate(&req, &jobs).await?;
        let mut cmd = allowed.command(Op::FencedAllocWrite {
            lease: lease.clone(),
            write,
        });
        details(&mut cmd.audit, name, &jobs, &ids, lease.as_ref());
        let resp = self.propose(cmd).await?;
        super::status::accepted("allocation change", resp.outcome)?;
        Ok(tonic::Response::new(self.allocs_reply(&ids)?))
    }

    pub(crate) async fn stop_allocs_impl(
        &self,
        req: tonic::Request<pb::AllocIdsRequest>,
    ) -> Result<tonic::Response<pb::AllocsReply>, tonic::Status> {
        self.ids_call(req, IdsOp::Stop).await
    }

    pub(crate) async fn mark_allocs_lost_impl(
        &self,
        req: tonic::Request<pb::AllocIdsRequest>,
    ) -> Result<tonic::Response<pb::AllocsReply>, tonic::Status> {
        self.ids_call(req, IdsOp::Lost).await
    }

    pub(crate) async fn remove_allocs_impl(
        &self,
        req: tonic::Request<pb::AllocIdsRequest>,
    ) -> Result<tonic::Response<pb::AllocsReply>, tonic::Status> {
        self.ids_call(req, IdsOp::Remove).await
    }

    pub(crate) async fn list_allocs_impl(
        &self,
        req: tonic::Request<pb::ListAllocsRequest>,
    ) -> Result<tonic::Response<pb::ListAllocsReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref().clone();
        let scope = match (r.namespace.is_empty(), r.job.is_empty()) {
            (true, true) => Resource::parse("").map_err(invalid)?,
            (true, false) => return Err(invalid("a job needs its namespace")),
            (false, true) => Resource::from_segments(&["ns", &r.namespace]).map_err(invalid)?,
            (false, false) => job_resource(&r.namespace, &r.job).map_err(invalid)?,
        };
        let node = (!r.node.is_empty())
            .then(|| NodeName::parse(&r.node).map_err(invalid))
            .transpose()?;
        let allowed = self
            .gate
            .check(&req, Operation::SchedRead, &scope, None)
            .await?;
        if let Some(n) = &node {
            self.gate
                .check(&req, Operation::NodeRead, &node_resource(n)?, None)
                .await?;
        }
        self.gate.record(&allowed).await?;
        let reader = self.sm.reader().map_err(status_of)?;
        let found = match (&node, r.namespace.is_empty()) {
            (Some(n), _) => reader.allocs_of_node(n.as_str()),
            (None, false) => reader.allocs_of_job(
                &r.namespace,
                (!r.job.is_empty()).then_some(r.job.as_str()),
                MAX_LIST + 1,
            ),
            (None, true) => reader.allocs(MAX_LIST + 1),
        }
        .map_err(status_of)?;
        // Where each node serves its node API, so that a caller allowed to read an
        // allocation can reach its agent directly (`job logs`).
        let node_apis = self.health.node_apis();
        let mut allocs: Vec<pb::Alloc> = found
            .iter()
            .filter(|a| {
                (r.namespace.is_empty() || a.namespace == r.namespace)
                    && (r.job.is_empty() || a.job == r.job)
            })
            .map(|a| pb::Alloc {
                node_api: node_apis.get(&a.node).cloned().unwrap_or_default(),
                ..alloc_to_pb(a)
            })
            .collect();
        let truncated = allocs.len() > MAX_LIST;
        allocs.truncate(MAX_LIST);
        Ok(tonic::Response::new(pb::ListAllocsReply {
            allocs,
            truncated,
        }))
    }

    pub(crate) async fn report_alloc_status_impl(
        &self,
        req: tonic::Request<pb::ReportAllocStatusRequest>,
    ) -> Result<tonic::Response<pb::ReportAllocStatusReply>, tonic::Status> {
        self.require_leader()?;
        let (name, allowed) = self.gate_agent(&req).await?;
        if !self.health.admit_report(name.as_str()) {
            return Err(tonic::Status::resource_exhausted(format!(
                "at most {} reports per second per node",
                super::health::REPORTS_PER_SECOND
            )));
        }
        let updates = req
            .get_ref()
            .updates
            .iter()
            .map(|u| {
                Ok(AllocUpdate {
                    id: u.id.clone(),
                    state: state_from_pb(u.state)?,
                    exit_code: u.exit_code,
                    restarts: u.restarts,
                    message: u.message.clone(),
                })
            })
            .collect::<Result<Vec<_>, tonic::Status>>()?;
        check_report(name.as_str(), &updates).map_err(invalid)?;
        let reader = self.sm.reader().map_err(status_of)?;
        let mut changed = Vec::new();
        for u in updates {
            let Some(r) = reader.alloc(&u.id).map_err(status_of)? else {
                continue;
            };
            if r.node != name.as_str() {
                // A node speaking for another node's workload: refused and recorded.
                let mut audit = allowed.audit.clone();
                audit.decision = AuditDecision::Deny;
                audit.reason = Some(format!("alloc_on_another_node: {} is on {}", r.id, r.node));
                self.gate.record_denial(audit).await;
                return Err(tonic::Status::permission_denied(format!(
                    "allocation {} is not placed on node {name}",
                    r.id
                )));
            }
            let same = r.state == u.state
                && r.exit_code == u.exit_code
                && r.restarts == u.restarts
                && r.message == u.message;
            if !same {
                changed.push(u);
            }
        }
        let applied = changed.len() as u32;
        if !changed.is_empty() {
            let mut cmd = allowed.command(Op::ReportAllocStatus {
                node: name.to_string(),
                updates: changed,
            });
            cmd.audit
                .details
                .push(("action".into(), "alloc_report".into()));
            let resp = self.propose(cmd).await?;
            super::status::accepted("allocation report", resp.outcome)?;
        }
        Ok(tonic::Response::new(pb::ReportAllocStatusReply { applied }))
    }

    pub(crate) async fn list_node_health_impl(
        &self,
        req: tonic::Request<pb::ListNodeHealthRequest>,
    ) -> Result<tonic::Response<pb::ListNodeHealthReply>, tonic::Status> {
        let reader = self
            .read_gated(&req, Operation::NodeRead, &super::res("node")?)
            .await?;
        let term = self.raft.metrics().borrow().current_term;
        let (tracking_since_ms, nodes) =
            super::sched_watch::node_health(&reader, &self.health, term, true)?;
        Ok(tonic::Response::new(pb::ListNodeHealthReply {
            nodes,
            tracking_since_ms,
        }))
    }

    pub(crate) async fn set_node_drain_impl(
        &self,
        req: tonic::Request<pb::SetNodeDrainRequest>,
    ) -> Result<tonic::Response<pb::SetNodeDrainReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref();
        let (name, drain) = (NodeName::parse(&r.name).map_err(invalid)?, r.drain);
        let allowed = self
            .gate
            .check(&req, Operation::NodeEvict, &node_resource(&name)?, None)
            .await?;
        let mut cmd = allowed.command(Op::SetNodeDrain {
            node: name.to_string(),
            drain,
        });
        cmd.audit.details.push((
            "action".into(),
            if drain { "drain" } else { "undrain" }.into(),
        ));
        let resp = self.propose(cmd).await?;
        super::status::accepted("node drain", resp.outcome)?;
        Ok(tonic::Response::new(pb::SetNodeDrainReply {}))
    }
}

/// The lease a write is made under, checked.
fn fence_of(lease: Option<&pb::SchedLeaseFence>) -> Result<Option<LeaseFence>, tonic::Status> {
    let Some(l) = lease else {
        return Ok(None);
    };
    let f = LeaseFence {
        scope: l.scope.clone(),
        holder: l.holder.clone(),
        epoch: l.epoch,
    };
    f.check().map_err(invalid)?;
    Ok(Some(f))
}

/// The jobs and allocation ids a command touched, and the lease it was made under, in its
/// audit record (ids cut at 64).
fn details(
    audit: &mut crate::command::AuditRecord,
    action: &str,
    jobs: &BTreeSet<(String, String)>,
    ids: &[String],
    lease: Option<&LeaseFence>,
) {
    let d = &mut audit.details;
    d.push(("action".into(), format!("alloc_{action}")));
    if let Some(l) = lease {
        d.push(("lease_scope".into(), l.scope.clone()));
        d.push(("lease_holder".into(), l.holder.clone()));
        d.push(("lease_epoch".into(), l.epoch.to_string()));
    }
    d.push(("count".into(), ids.len().to_string()));
    let mut names: Vec<String> = jobs.iter().map(|(n, j)| format!("{n}/{j}")).collect();
    names.truncate(8);
    d.push(("jobs".into(), names.join(",")));
    let shown: Vec<&str> = ids.iter().take(64).map(String::as_str).collect();
    d.push(("allocs".into(), shown.join(",")));
}
