//! The scheduler's lease: only its holder plans and writes. Renewed every ttl/3; lost when a
//! renewal is refused or when no renewal succeeded before the lease would expire by this
//! process's own clock (it then stops writing even if the authority is unreachable).
//!
//! Every write carries the lease's epoch ([`Lease::fence`]): the authority refuses, in log
//! order, a write whose lease has since expired or changed holder, so a paused or partitioned
//! scheduler cannot land a pass after its standby took over.

use std::time::{Duration, Instant};

use ringzero_proto::client::{AuthorityClient, ClientError};
use ringzero_proto::pb;

/// What this process knows of its lease.
#[derive(Debug)]
pub(crate) struct Lease {
    scope: String,
    holder: String,
    ttl: Duration,
    /// When the lease ends by our clock: the time of the request that last renewed it plus the
    /// ttl, minus a margin for clock rate differences. `None`: not held.
    until: Option<Instant>,
    renewed_at: Option<Instant>,
    /// The fencing token the authority gave with the lease (0: none yet).
    epoch: u64,
}

/// The outcome of one [`Lease::tick`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseEvent {
    /// Nothing changed.
    Same,
    /// Just acquired (or re-acquired).
    Acquired,
    /// Held by someone else: who and until when (unix ms, the leader's clock).
    HeldBy(String, u64),
    /// Lost: refused, or not renewed in time.
    Lost(String),
}

impl Lease {
    pub(crate) fn new(scope: String, holder: String, ttl: Duration) -> Self {
        Lease {
            scope,
            holder,
            ttl,
            until: None,
            renewed_at: None,
            epoch: 0,
        }
    }

    /// The lease to write under: `None` when not held by our clock (or given without an
    /// epoch, by an authority that predates them: then wait for a renewal to bring one).
    pub(crate) fn fence(&self) -> Option<pb::SchedLeaseFence> {
        (self.held() && self.epoch != 0).then(|| pb::SchedLeaseFence {
            scope: self.scope.clone(),
            holder: self.holder.clone(),
            epoch: self.epoch,
        })
    }

    pub(crate) fn holder(&self) -> &str {
        &self.holder
    }

    /// Held now, by our clock.
    pub(crate) fn held(&self) -> bool {
        self.until.is_some_and(|u| Instant::now() < u)
    }

    /// Acquires or renews when due (not held, or ttl/3 since the last renewal).
    pub(crate) async fn tick(&mut self, client: &mut AuthorityClient) -> LeaseEvent {
        let was_held = self.held();
        if !was_held && self.until.is_some() {
            self.until = None;
            return LeaseEvent::Lost("not renewed before it expired".into());
        }
        let due = match self.renewed_at {
            Some(at) if was_held => at.elapsed() >= self.ttl / 3,
            _ => true,
        };
        if !due {
            return LeaseEvent::Same;
        }
        let started = Instant::now();
        let req = pb::AcquireSchedLeaseRequest {
            scope: self.scope.clone(),
            holder: self.holder.clone(),
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
        };
        match client
            .call(|mut c| {
                let req = req.clone();
                async move { c.acquire_sched_lease(req).await }
            })
            .await
        {
            Ok(lease) => {
                super::metrics::metrics().answered();
                // What the leader said remains, counted from before we asked, less a tenth of
                // the ttl for clocks that run at different rates.
                let remaining = Duration::from_millis(lease.remaining_ms).min(self.ttl);
                self.until = Some(started + remaining.saturating_sub(self.ttl / 10));
                self.renewed_at = Some(started);
                self.epoch = lease.epoch;
                if was_held {
                    LeaseEvent::Same
                } else {
                    LeaseEvent::Acquired
                }
            }
            Err(e) if e.code() == Some(tonic::Code::FailedPrecondition) => {
                super::metrics::metrics().answered();
                self.until = None;
                let (holder, until) = held_by(&e);
                if was_held {
                    LeaseEvent::Lost(format!("taken by {holder}"))
                } else {
                    LeaseEvent::HeldBy(holder, until)
                }
            }
            // Unreachable or refused otherwise: keep what we have until it runs out.
            Err(e) => {
                if was_held {
                    tracing::warn!(error = %e, "could not renew the scheduler lease");
                    LeaseEvent::Same
                } else {
                    LeaseEvent::HeldBy(format!("unknown ({e})"), 0)
                }
            }
        }
    }

    /// Forgets the lease at once: a write made under it was refused as no longer held.
    pub(crate) fn forget(&mut self) {
        self.until = None;
    }

    /// Gives the lease up, if held (on a clean shutdown).
    pub(crate) async fn release(
        &mut self,
        client: &mut AuthorityClient,
    ) -> Result<(), ClientError> {
        if self.until.take().is_none() {
            return Ok(());
        }
        let req = pb::ReleaseSchedLeaseRequest {
            scope: self.scope.clone(),
            holder: self.holder.clone(),
        };
        client
            .call(|mut c| {
                let req = req.clone();
                async move { c.release_sched_lease(req).await }
            })
            .await?;
        Ok(())
    }
}

/// The holder and expiry in a refusal's message (`… held by H until T …`), best effort.
fn held_by(e: &ClientError) -> (String, u64) {
    let ClientError::Status { message, .. } = e else {
        return (e.to_string(), 0);
    };
    let mut words = message.split_whitespace();
    let mut holder = String::from("another scheduler");
    let mut until = 0;
    while let Some(w) = words.next() {
        match w {
            "by" => {
                if let Some(h) = words.next() {
                    holder = h.to_owned();
                }
            }
            "until" => {
                until = words
                    .next()
                    .and_then(|t| {
                        t.trim_end_matches(|c: char| !c.is_ascii_digit())
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0);
            }
            _ => {}
        }
    }
    (holder, until)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_names_holder_and_expiry() {
        let e = ClientError::Status {
            code: tonic::Code::FailedPrecondition,
            message: "refused: the scheduler lease is held by host-1-abc until 1700000000000 (ms)"
                .into(),
        };
        assert_eq!(held_by(&e), ("host-1-abc".to_string(), 1_700_000_000_000));
    }
}
