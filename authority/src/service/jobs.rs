//! Jobs: `SubmitJob`, `StopJob`, `GetJob`, `ListJobs`.
//!
//! A job is gated on `sched:submit` / `sched:cancel` / `sched:read` on `ns/<namespace>/<name>`.
//! Submitting one also hands its tasks an identity and a uid, so the caller must be allowed to
//! give them, exactly as for a registration entry: `entry:write` on the SPIFFE ID's path and
//! `entry:select` on `selector/unix/uid/<uid>` (on every node: a job is not tied to one). The
//! SPIFFE ID must lie under `spiffe://TD/ns/<namespace>/`; one elsewhere (another namespace, a
//! reserved `ringzero/…` or `user/…` path) is refused whatever the caller holds, and the refusal
//! is recorded as a denial (`identity_outside_namespace`).
//!
//! A dry run is authorized exactly as a submit and recorded as a read would be (an allowed
//! `sched:submit` audit-only record with the detail `dry_run=true`): nothing else is committed.

use ringzero_policy::{Operation, Resource, SpiffeId};
use ringzero_proto::pb;

use super::entries::entry_resource;
use super::nodes::*;
use super::{AuthorityService, status_of};
use crate::command::{
    AuditDecision, Constraints, Invalid, Job, Op, Outcome, Restart, RestartPolicy, job_resource,
};
use crate::gate::now_ms;
use crate::state::{DesiredState, JobRecord};

/// The job a request carries, in its canonical form: constraint nodes sorted and distinct, an
/// empty workdir absent, the SPIFFE ID re-spelled when it parses. Everything else is taken as
/// given, and checked by [`Job::validate`].
pub(crate) fn job_from_pb(p: &pb::Job) -> Result<Job, Invalid> {
    let mut nodes = p
        .constraints
        .as_ref()
        .map(|c| c.nodes.clone())
        .unwrap_or_default();
    nodes.sort();
    nodes.dedup();
    let restart = p.restart.clone().unwrap_or_default();
    Ok(Job {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        command: p.command.clone(),
        args: p.args.clone(),
        env: p.env.clone().into_iter().collect(),
        workdir: (!p.workdir.is_empty()).then(|| p.workdir.clone()),
        uid: p.uid,
        gid: p.gid,
        count: p.count,
        cpu_millis: p.cpu_millis,
        memory_mb: p.memory_mb,
        constraints: Constraints {
            nodes,
            labels: p
                .constraints
                .as_ref()
                .map(|c| c.labels.clone().into_iter().collect())
                .unwrap_or_default(),
        },
        restart: Restart {
            policy: RestartPolicy::parse(&restart.policy)?,
            max_restarts: restart.max_restarts,
            backoff_ms: restart.backoff_ms,
        },
        spiffe_id: SpiffeId::parse(&p.spiffe_id)
            .map_or_else(|_| p.spiffe_id.clone(), |id| id.to_string()),
    })
}

pub(crate) fn job_to_pb(j: &Job) -> pb::Job {
    pb::Job {
        namespace: j.namespace.clone(),
        name: j.name.clone(),
        command: j.command.clone(),
        args: j.args.clone(),
        env: j.env.clone().into_iter().collect(),
        workdir: j.workdir.clone().unwrap_or_default(),
        uid: j.uid,
        gid: j.gid,
        count: j.count,
        cpu_millis: j.cpu_millis,
        memory_mb: j.memory_mb,
        constraints: Some(pb::JobConstraints {
            nodes: j.constraints.nodes.clone(),
            labels: j.constraints.labels.clone().into_iter().collect(),
        }),
        restart: Some(pb::JobRestart {
            policy: j.restart.policy.as_str().to_owned(),
            max_restarts: j.restart.max_restarts,
            backoff_ms: j.restart.backoff_ms,
        }),
        spiffe_id: j.spiffe_id.clone(),
    }
}

pub(super) fn status_to_pb(r: &JobRecord) -> pb::JobStatus {
    pb::JobStatus {
        job: Some(job_to_pb(&r.job)),
        version: r.version,
        desired: r.desired.as_str().to_owned(),
        submitted_by: r.submitted_by.clone(),
        submitted_at_ms: r.submitted_at_ms,
    }
}

/// The resource `entry:select` is checked on for a job's uid: `selector/unix/uid/<uid>`, on
/// every node (the right's prefix must cover all of `…/node/<n>`).
fn uid_resource(uid: u32) -> Result<Resource, tonic::Status> {
    Resource::from_segments(&["selector", "unix", "uid", &uid.to_string()]).map_err(invalid)
}

impl AuthorityService {
    fn job_record(&self, namespace: &str, name: &str) -> Result<JobRecord, tonic::Status> {
        self.sm
            .reader()
            .map_err(status_of)?
            .job(namespace, name)
            .map_err(status_of)?
            .ok_or_else(|| tonic::Status::not_found(format!("no job {namespace}/{name}")))
    }

    pub(crate) async fn submit_job_impl(
        &self,
        req: tonic::Request<pb::SubmitJobRequest>,
    ) -> Result<tonic::Response<pb::JobReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref();
        let dry_run = r.dry_run;
        let job = job_from_pb(r.job.as_ref().ok_or_else(|| invalid("a job is required"))?)
            .map_err(|e| invalid(format!("job: {e}")))?;
        // Malformed input is refused before anything is decided, and records nothing.
        job.validate_shape()
            .map_err(|e| invalid(format!("job: {e}")))?;
        let id =
            SpiffeId::parse(&job.spiffe_id).map_err(|e| invalid(format!("job: spiffe id: {e}")))?;
        let td = self.gate.trust_domain();
        if !id.is_member_of(td) {
            return Err(invalid(format!("job: {id} is not in trust domain {td}")));
        }
        let resource = job.resource().map_err(invalid)?;
        let allowed = self
            .gate
            .check(&req, Operation::SchedSubmit, &resource, None)
            .await?;
        if let Err(e) = job.validate_identity() {
            // Refused whatever the caller's rights, and recorded: a namespace's job asking for
            // another namespace's or a principal's identity is the attack the check exists for.
            let mut audit = allowed.audit.clone();
            audit.decision = AuditDecision::Deny;
            audit.reason = Some(format!("identity_outside_namespace: {e}"));
            self.gate.record_denial(audit).await;
            return Err(invalid(format!("job: {e}")));
        }
        // The tasks' identity and uid are given as an entry's would be.
        self.gate
            .check(&req, Operation::EntryWrite, &entry_resource(&id)?, None)
            .await?;
        self.gate
            .check(&req, Operation::EntrySelect, &uid_resource(job.uid)?, None)
            .await?;
        job.validate().map_err(|e| invalid(format!("job: {e}")))?;
        let details = vec![
            ("spiffe_id".to_owned(), job.spiffe_id.clone()),
            ("uid".to_owned(), job.uid.to_string()),
            ("gid".to_owned(), job.gid.to_string()),
            ("count".to_owned(), job.count.to_string()),
            ("command".to_owned(), job.command.clone()),
        ];
        if dry_run {
            let mut read = allowed.clone();
            read.audit.details.extend(details);
            read.audit
                .details
                .push(("dry_run".to_owned(), "true".to_owned()));
            self.gate.record(&read).await?;
            let version = self
                .sm
                .reader()
                .map_err(status_of)?
                .job(&job.namespace, &job.name)
                .map_err(status_of)?
                .map_or(1, |p| p.version.saturating_add(1));
            return Ok(tonic::Response::new(pb::JobReply {
                job: Some(status_to_pb(&JobRecord {
                    job,
                    version,
                    desired: DesiredState::Running,
                    submitted_by: allowed.peer.to_string(),
                    submitted_at_ms: now_ms(),
                })),
            }));
        }
        let mut cmd = allowed.command(Op::PutJob { job: job.clone() });
        cmd.audit.details.extend(details);
        let resp = self.propose(cmd).await?;
        super::status::accepted("job submit", resp.outcome)?;
        let stored = self.job_record(&job.namespace, &job.name)?;
        Ok(tonic::Response::new(pb::JobReply {
            job: Some(status_to_pb(&stored)),
        }))
    }

    pub(crate) async fn stop_job_impl(
        &self,
        req: tonic::Request<pb::StopJobRequest>,
    ) -> Result<tonic::Response<pb::JobReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref();
        let (namespace, name, purge) = (r.namespace.clone(), r.name.clone(), r.purge);
        let resource = job_resource(&namespace, &name).map_err(invalid)?;
        let allowed = self
            .gate
            .check(&req, Operation::SchedCancel, &resource, None)
            .await?;
        let op = if purge {
            Op::PurgeJob {
                namespace: namespace.clone(),
                name: name.clone(),
            }
        } else {
            Op::StopJob {
                namespace: namespace.clone(),
                name: name.clone(),
            }
        };
        let mut cmd = allowed.command(op);
        cmd.audit
            .details
            .push(("action".into(), if purge { "purge" } else { "stop" }.into()));
        let resp = self.propose(cmd).await?;
        let what = if purge { "job purge" } else { "job stop" };
        match super::status::accepted(what, resp.outcome)? {
            Outcome::Done => Ok(tonic::Response::new(pb::JobReply { job: None })),
            _ => Ok(tonic::Response::new(pb::JobReply {
                job: Some(status_to_pb(&self.job_record(&namespace, &name)?)),
            })),
        }
    }

    pub(crate) async fn get_job_impl(
        &self,
        req: tonic::Request<pb::GetJobRequest>,
    ) -> Result<tonic::Response<pb::JobReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref();
        let (namespace, name) = (r.namespace.clone(), r.name.clone());
        let resource = job_resource(&namespace, &name).map_err(invalid)?;
        // Decided before the state is read: a caller without the right learns nothing, not
        // even whether the job exists.
        let allowed = self
            .gate
            .check(&req, Operation::SchedRead, &resource, None)
            .await?;
        self.gate.record(&allowed).await?;
        Ok(tonic::Response::new(pb::JobReply {
            job: Some(status_to_pb(&self.job_record(&namespace, &name)?)),
        }))
    }

    pub(crate) async fn list_jobs_impl(
        &self,
        req: tonic::Request<pb::ListJobsRequest>,
    ) -> Result<tonic::Response<pb::ListJobsReply>, tonic::Status> {
        self.require_leader()?;
        let scope =
            Resource::parse(&req.get_ref().scope).map_err(|e| invalid(format!("scope: {e}")))?;
        let allowed = self
            .gate
            .check(&req, Operation::SchedRead, &scope, None)
            .await?;
        self.gate.record(&allowed).await?;
        let jobs = self
            .sm
            .reader()
            .map_err(status_of)?
            .jobs()
            .map_err(status_of)?
            .iter()
            .filter(|r| r.job.resource().is_ok_and(|res| scope.covers(&res)))
            .map(status_to_pb)
            .collect();
        Ok(tonic::Response::new(pb::ListJobsReply { jobs }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_wire_form_round_trips_in_canonical_form() {
        let p = pb::Job {
            namespace: "shop".into(),
            name: "web".into(),
            command: "/usr/bin/web".into(),
            args: vec!["-v".into()],
            env: [("A".to_owned(), "1".to_owned())].into(),
            workdir: String::new(),
            uid: 1000,
            gid: 1000,
            count: 1,
            cpu_millis: None,
            memory_mb: Some(64),
            constraints: Some(pb::JobConstraints {
                nodes: vec!["n2".into(), "n1".into(), "n2".into()],
                labels: Default::default(),
            }),
            restart: None,
            spiffe_id: "spiffe://td/ns/shop/web".into(),
        };
        let job = job_from_pb(&p).unwrap();
        job.validate().unwrap();
        assert_eq!(job.constraints.nodes, ["n1", "n2"]);
        assert_eq!(job.workdir, None);
        assert_eq!(job.restart.policy, RestartPolicy::Never);
        assert_eq!(job_from_pb(&job_to_pb(&job)).unwrap(), job);
        let bad = pb::Job {
            restart: Some(pb::JobRestart {
                policy: "sometimes".into(),
                ..Default::default()
            }),
            ..p
        };
        assert!(job_from_pb(&bad).is_err());
        assert_eq!(uid_resource(0).unwrap().as_str(), "selector/unix/uid/0");
    }
}
