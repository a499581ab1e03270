//! `AcquireSchedLease` and `ReleaseSchedLease` (`job:launch` on `ns`, or on `ns/<scope>`): one
//! active scheduler per scope.
//!
//! Raft writes are bounded: a standby asking for a lease held by another is answered from the
//! leader's state without a write (and without a record: a refused poll is a read of who
//! holds the lease), and a holder renewing less than ttl/3 after its last renewal gets the
//! lease as it stands. So a scheduler costs at most one write per ttl/3, and only a change of
//! holder (and a release) adds an audit record. Apply decides again (compare-and-set by the
//! command's time), so two racing standbys cannot both win.

use ringzero_policy::{Operation, Resource};
use ringzero_proto::pb;

use super::status::{accepted, invalid, rejected};
use super::{AuthorityService, status_of};
use crate::command::{Op, Rejection, check_lease};
use crate::gate::now_ms;
use crate::state::LeaseRecord;

fn lease_resource(scope: &str) -> Result<Resource, tonic::Status> {
    if scope.is_empty() {
        Resource::parse("ns").map_err(invalid)
    } else {
        Resource::from_segments(&["ns", scope]).map_err(invalid)
    }
}

fn lease_pb(scope: &str, r: &LeaseRecord, now: u64) -> pb::SchedLease {
    pb::SchedLease {
        scope: scope.to_owned(),
        holder: r.holder.clone(),
        actor: r.actor.clone(),
        expires_ms: r.expires_ms,
        acquired_ms: r.acquired_ms,
        renewed_ms: r.renewed_ms,
        ttl_ms: r.ttl_ms,
        remaining_ms: r.expires_ms.saturating_sub(now),
        epoch: r.epoch,
    }
}

impl AuthorityService {
    pub(crate) async fn acquire_sched_lease_impl(
        &self,
        req: tonic::Request<pb::AcquireSchedLeaseRequest>,
    ) -> Result<tonic::Response<pb::SchedLease>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref().clone();
        check_lease(&r.scope, &r.holder, Some(r.ttl_ms)).map_err(invalid)?;
        let allowed = self
            .gate
            .check(&req, Operation::JobLaunch, &lease_resource(&r.scope)?, None)
            .await?;
        let actor = allowed.audit.actor.clone();
        let now = now_ms();
        let current = self
            .sm
            .reader()
            .map_err(status_of)?
            .sched_lease(&r.scope)
            .map_err(status_of)?;
        if let Some(c) = &current {
            if c.held_by(&r.holder, &actor, now) {
                if c.ttl_ms == r.ttl_ms && now < c.renewed_ms.saturating_add(c.ttl_ms / 3) {
                    return Ok(tonic::Response::new(lease_pb(&r.scope, c, now)));
                }
            } else if now < c.expires_ms {
                return Err(rejected(
                    "refused",
                    &Rejection::LeaseHeld {
                        holder: c.holder.clone(),
                        expires_ms: c.expires_ms,
                    },
                ));
            }
        }
        let mut cmd = allowed.command(Op::AcquireSchedLease {
            scope: r.scope.clone(),
            holder: r.holder.clone(),
            ttl_ms: r.ttl_ms,
        });
        let d = &mut cmd.audit.details;
        d.push(("action".into(), "sched_lease_acquire".into()));
        d.push(("holder".into(), r.holder.clone()));
        if let Some(c) = current.filter(|c| c.holder != r.holder || c.actor != actor) {
            d.push(("previous_holder".into(), c.holder));
        }
        let answered = cmd.time_ms;
        let resp = self.propose(cmd).await?;
        accepted("refused", resp.outcome)?;
        let lease = self
            .sm
            .reader()
            .map_err(status_of)?
            .sched_lease(&r.scope)
            .map_err(status_of)?
            .ok_or_else(|| super::status::internal("the lease vanished after it was granted"))?;
        Ok(tonic::Response::new(lease_pb(&r.scope, &lease, answered)))
    }

    pub(crate) async fn release_sched_lease_impl(
        &self,
        req: tonic::Request<pb::ReleaseSchedLeaseRequest>,
    ) -> Result<tonic::Response<pb::ReleaseSchedLeaseReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref().clone();
        check_lease(&r.scope, &r.holder, None).map_err(invalid)?;
        let allowed = self
            .gate
            .check(&req, Operation::JobLaunch, &lease_resource(&r.scope)?, None)
            .await?;
        let held = self
            .sm
            .reader()
            .map_err(status_of)?
            .sched_lease(&r.scope)
            .map_err(status_of)?
            .is_some_and(|c| c.held_by(&r.holder, &allowed.audit.actor, now_ms()));
        if !held {
            return Ok(tonic::Response::new(pb::ReleaseSchedLeaseReply {
                released: false,
            }));
        }
        let mut cmd = allowed.command(Op::ReleaseSchedLease {
            scope: r.scope.clone(),
            holder: r.holder.clone(),
        });
        cmd.audit
            .details
            .push(("action".into(), "sched_lease_release".into()));
        cmd.audit.details.push(("holder".into(), r.holder));
        let resp = self.propose(cmd).await?;
        let released = accepted("refused", resp.outcome).is_ok();
        Ok(tonic::Response::new(pb::ReleaseSchedLeaseReply {
            released,
        }))
    }
}
