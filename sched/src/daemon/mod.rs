//! The scheduler daemon: follows jobs, allocations and node health on the authority's
//! `WatchSched` stream (one audited open; snapshots pushed on change), plans, and writes the
//! plan back, while it holds the scheduler lease. It keeps no state of its own beyond the
//! latest snapshot, so it can be restarted anywhere. Against an authority without the stream
//! it reads them every pass instead (`ListJobs`, `ListAllocs`, `ListNodeHealth`).
//!
//! - `convert`: the authority's messages as views; which nodes are lost yet; what to stop
//!   because it was lost and what to remove.
//! - `watch`: the stream, its parts assembled into snapshots.
//! - `follow`: the latest snapshot, reconnects, and when to plan again without reading.
//! - `lease`: acquiring, renewing and releasing the lease.
//! - `write`: allocation ids and batched writes.

mod convert;
mod follow;
mod lease;
mod metrics;
mod watch;
mod write;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use ring::rand::SystemRandom;
use ringzero_proto::client::{AuthorityClient, ClientError, Profile};
use ringzero_proto::pb;

pub use self::convert::{Snapshot, Views, alloc_view, job_view, node_view, views};
use self::lease::{Lease, LeaseEvent};
pub use self::metrics::SchedHealth;
use self::write::IdsCall;
pub use self::write::{MAX_BATCH, alloc_id};
use crate::plan::{Blocked, NewAlloc, PlanLimits};

/// How the daemon runs (parsed by the binary).
#[derive(Debug, Clone)]
pub struct Config {
    /// Between passes when nothing was deferred.
    pub interval: Duration,
    /// How long a node's feed must be down (and the leader tracking feeds) before its
    /// allocations are marked lost.
    pub lost_after: Duration,
    /// The lease's time to live; renewed every third of it.
    pub lease_ttl: Duration,
    /// The lease holder's name.
    pub holder: String,
    /// Only this namespace's jobs and allocations (`None`: the whole cluster).
    pub namespace: Option<String>,
    /// How long a stopped, terminal allocation stays before it is removed.
    pub remove_after: Duration,
    /// Compute plans, write nothing (and take no lease).
    pub dry_run: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval: Duration::from_secs(1),
            lost_after: Duration::from_secs(15),
            lease_ttl: Duration::from_secs(10),
            holder: String::new(),
            namespace: None,
            remove_after: Duration::from_secs(300),
            dry_run: false,
        }
    }
}

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error("authority: {0}")]
    Authority(#[from] ClientError),
    #[error("the operating system's random source failed")]
    Random,
    #[error("the authority listed more than {0} allocations: refusing to plan from a partial view")]
    Truncated(usize),
    #[error("the scheduler lease is held by {0}")]
    LeaseHeld(String),
}

/// What one pass planned, and what it wrote.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    pub place: Vec<NewAlloc>,
    pub stop: Vec<String>,
    pub lost: Vec<String>,
    pub remove: Vec<String>,
    pub blocked: Vec<Blocked>,
    /// Placements left for the next pass (the plan's cap, or a node in its grace period).
    pub deferred: usize,
    pub unreported: usize,
    /// Nodes whose feed is down, still within `lost_after`.
    pub in_grace: Vec<String>,
    /// Whether the plan was written (false for a dry run).
    pub written: bool,
}

impl PassReport {
    pub fn is_empty(&self) -> bool {
        self.place.is_empty()
            && self.stop.is_empty()
            && self.lost.is_empty()
            && self.remove.is_empty()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Reads what a pass needs: jobs, allocations and node health.
pub async fn read(
    client: &mut AuthorityClient,
    namespace: Option<&str>,
) -> Result<Snapshot, DaemonError> {
    let scope = namespace.map(|n| format!("ns/{n}")).unwrap_or_default();
    let jobs = client
        .call(|mut c| {
            let scope = scope.clone();
            async move { c.list_jobs(pb::ListJobsRequest { scope }).await }
        })
        .await?
        .jobs;
    let ns = namespace.unwrap_or_default().to_owned();
    let allocs = client
        .call(|mut c| {
            let namespace = ns.clone();
            async move {
                c.list_allocs(pb::ListAllocsRequest {
                    namespace,
                    ..Default::default()
                })
                .await
            }
        })
        .await?;
    if allocs.truncated {
        return Err(DaemonError::Truncated(allocs.allocs.len()));
    }
    let health = client
        .call(|mut c| async move { c.list_node_health(pb::ListNodeHealthRequest {}).await })
        .await?;
    Ok(Snapshot {
        jobs,
        allocs: allocs.allocs,
        health,
    })
}

/// Plans from a snapshot at `now_ms`: the planner's plan, minus placements on nodes in their
/// grace period (counted as deferred), plus the lost allocations to stop and the old stopped
/// ones to remove. Pure given `ids`.
pub fn decide(
    s: &Snapshot,
    cfg: &Config,
    now_ms: u64,
    ids: &mut impl FnMut() -> String,
) -> PassReport {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let v = views(s, now_ms, ms(cfg.lost_after));
    let plan = crate::plan(&v.jobs, &v.nodes, &v.allocs, &PlanLimits::default(), ids);
    let (place, waiting): (Vec<NewAlloc>, Vec<NewAlloc>) = plan
        .place
        .into_iter()
        .partition(|p| !v.in_grace.contains(&p.node));
    let mut stop = plan.stop;
    for id in convert::lost_to_stop(&s.allocs)
        .into_iter()
        .chain(plan.lost.iter().cloned())
    {
        if !stop.contains(&id) {
            stop.push(id);
        }
    }
    stop.sort();
    PassReport {
        place,
        stop,
        lost: plan.lost,
        remove: convert::to_remove(&s.allocs, now_ms, ms(cfg.remove_after)),
        blocked: plan.blocked,
        deferred: plan.deferred + waiting.len(),
        unreported: plan.unreported,
        in_grace: v.in_grace.into_iter().collect(),
        written: false,
    }
}

/// One pass: read, plan, and (unless `cfg.dry_run`) write under `lease` — losses, placements,
/// stops, removals. The first error from the authority ends the pass (a write under a lease
/// lost meanwhile is refused, and nothing of it lands). Without a lease it only plans.
pub async fn pass(
    client: &mut AuthorityClient,
    cfg: &Config,
    lease: Option<&pb::SchedLeaseFence>,
) -> Result<PassReport, DaemonError> {
    let snapshot = read(client, cfg.namespace.as_deref()).await?;
    plan_and_write(client, cfg, &snapshot, lease)
        .await
        .map(|(r, _)| r)
}

/// Plans from `snapshot` and (unless `cfg.dry_run`) writes under `lease`; also returns the
/// authority's allocation revision after the writes (0 when nothing was written).
async fn plan_and_write(
    client: &mut AuthorityClient,
    cfg: &Config,
    snapshot: &Snapshot,
    lease: Option<&pb::SchedLeaseFence>,
) -> Result<(PassReport, u64), DaemonError> {
    let rng = SystemRandom::new();
    let mut failed = false;
    let mut ids = || {
        alloc_id(&rng).unwrap_or_else(|| {
            failed = true;
            String::new()
        })
    };
    let mut report = decide(snapshot, cfg, now_ms(), &mut ids);
    if failed {
        return Err(DaemonError::Random);
    }
    let Some(lease) = lease.filter(|_| !cfg.dry_run) else {
        return Ok((report, 0));
    };
    let mut revision = write::ids(client, IdsCall::Lost, &report.lost, lease).await?;
    revision = revision.max(write::place(client, &report.place, lease).await?);
    revision = revision.max(write::ids(client, IdsCall::Stop, &report.stop, lease).await?);
    revision = revision.max(write::ids(client, IdsCall::Remove, &report.remove, lease).await?);
    report.written = true;
    Ok((report, revision))
}

/// One pass, as `sched run --once`: under the lease (taken, then released), or without it for
/// a dry run, which writes nothing.
pub async fn once(client: &mut AuthorityClient, cfg: &Config) -> Result<PassReport, DaemonError> {
    if cfg.dry_run {
        return pass(client, cfg, None).await;
    }
    let scope = cfg.namespace.clone().unwrap_or_default();
    let mut lease = Lease::new(scope, cfg.holder.clone(), cfg.lease_ttl);
    match lease.tick(client).await {
        LeaseEvent::Acquired | LeaseEvent::Same if lease.held() => {}
        LeaseEvent::HeldBy(holder, until_ms) => {
            return Err(DaemonError::LeaseHeld(format!(
                "{holder} until {until_ms} (ms)"
            )));
        }
        other => return Err(DaemonError::LeaseHeld(format!("{other:?}"))),
    }
    let Some(fence) = lease.fence() else {
        return Err(DaemonError::LeaseHeld(
            "the authority gave the lease without an epoch".into(),
        ));
    };
    let report = pass(client, cfg, Some(&fence)).await;
    if let Err(e) = lease.release(client).await {
        tracing::warn!(error = %e, "could not release the scheduler lease (it expires)");
    }
    report
}

/// Logs each blocked reason of a job at most once a minute (a small, bounded memory: the
/// daemon's only state, and never needed for a decision).
#[derive(Debug, Default)]
struct BlockedLog {
    last: BTreeMap<(String, String, String), Instant>,
}

impl BlockedLog {
    const EVERY: Duration = Duration::from_secs(60);
    const MAX: usize = 1_000;

    fn log(&mut self, blocked: &[Blocked], unreported: usize) {
        if self.last.len() > Self::MAX {
            self.last.clear();
        }
        let mut per_reason: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
        for b in blocked {
            *per_reason
                .entry((b.namespace.as_str(), b.job.as_str(), b.reason.as_str()))
                .or_default() += 1;
        }
        for ((ns, job, reason), n) in per_reason {
            let key = (ns.to_owned(), job.to_owned(), reason.to_owned());
            if self
                .last
                .get(&key)
                .is_some_and(|t| t.elapsed() < Self::EVERY)
            {
                continue;
            }
            tracing::warn!(namespace = ns, job, indexes = n, reason, "blocked");
            self.last.insert(key, Instant::now());
        }
        if unreported > 0 {
            tracing::warn!(unreported, "more blocked indexes than one plan reports");
        }
    }
}

/// Runs until `shutdown` resolves: holds the lease (renewing it every ttl/3, or waiting for it
/// as a standby), and while holding it follows the authority's `WatchSched` stream and plans
/// on every snapshot, and again without reading when a grace or removal deadline passes or
/// `interval` went by. It never plans from a snapshot older than its own last writes. Against
/// an authority without the stream (`Unimplemented`) it polls every `interval` instead. It
/// releases the lease on the way out.
pub async fn run(
    client: AuthorityClient,
    cfg: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_renewed(client, cfg, shutdown, None).await
}

/// [`run`], presenting the credentials of each profile `renewed` publishes from the next call
/// on (a scheduler with its own identity renews them beside the daemon). The lease stays held
/// across a renewal: it is bound to the caller's SPIFFE ID, which a renewal keeps. The stream
/// is opened again with the new certificate (one audit record per renewal).
pub async fn run_renewed(
    mut client: AuthorityClient,
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    mut renewed: Option<tokio::sync::watch::Receiver<Profile>>,
) -> Result<(), DaemonError> {
    let scope = cfg.namespace.clone().unwrap_or_default();
    let mut lease = Lease::new(scope, cfg.holder.clone(), cfg.lease_ttl);
    let mut blocked = BlockedLog::default();
    let mut waiting_logged = false;
    let mut follow = follow::Follow::default();
    let mut planned_at = Instant::now();
    // The deadline (unix ms) the last wait was cut short for.
    let mut deadline: Option<u64> = None;
    tokio::pin!(shutdown);
    tracing::info!(holder = lease.holder(), "scheduler started");
    loop {
        let mut again = cfg.interval;
        if let Some(rx) = renewed.as_mut()
            && rx.has_changed().unwrap_or(false)
        {
            match rx.borrow_and_update().credentials() {
                Ok(creds) => {
                    client.set_credentials(creds);
                    follow.close();
                    tracing::info!("presenting renewed credentials");
                }
                Err(e) => tracing::warn!(error = %e, "renewed credentials unusable"),
            }
        }
        match lease.tick(&mut client).await {
            LeaseEvent::Acquired => {
                tracing::info!(
                    holder = lease.holder(),
                    "scheduler lease acquired: planning"
                );
                waiting_logged = false;
            }
            LeaseEvent::Lost(why) => tracing::warn!(%why, "scheduler lease lost: standing by"),
            LeaseEvent::HeldBy(holder, until_ms) if !waiting_logged => {
                tracing::info!(%holder, until_ms, "standing by: the lease is held");
                waiting_logged = true;
            }
            _ => {}
        }
        let fence = lease.fence();
        metrics::metrics().lease(fence.is_some());
        if fence.is_some() {
            follow.ensure_open(&mut client, &cfg).await;
            follow.drain();
        } else {
            // A standby holds no stream.
            follow.close();
        }
        let pass_started = Instant::now();
        let outcome = match &fence {
            None => None,
            Some(fence) if follow.polling => Some(pass(&mut client, &cfg, Some(fence)).await),
            Some(fence) => {
                let due = follow.fresh
                    || planned_at.elapsed() >= cfg.interval
                    || deadline.is_some_and(|d| now_ms() >= d);
                match follow.plannable().filter(|_| due).cloned() {
                    None => None,
                    Some(w) => {
                        follow.fresh = false;
                        planned_at = Instant::now();
                        let r = plan_and_write(&mut client, &cfg, &w.snapshot, Some(fence)).await;
                        Some(r.map(|(report, revision)| {
                            if !report.is_empty() {
                                // Plan next from a snapshot that includes these writes.
                                follow.min_revision =
                                    revision.max(w.allocs_revision.saturating_add(1));
                            }
                            report
                        }))
                    }
                }
            }
        };
        if let Some(o) = &outcome {
            let (label, changes) = match o {
                Ok(r) => (
                    if r.is_empty() { "nothing" } else { "written" },
                    [
                        ("place", r.place.len()),
                        ("stop", r.stop.len()),
                        ("lost", r.lost.len()),
                        ("remove", r.remove.len()),
                    ],
                ),
                Err(_) => (
                    "error",
                    [("place", 0), ("stop", 0), ("lost", 0), ("remove", 0)],
                ),
            };
            metrics::metrics().pass(label, pass_started.elapsed(), changes);
        }
        match outcome {
            None => {}
            Some(Ok(r)) => {
                if !r.is_empty() {
                    tracing::info!(
                        placed = r.place.len(),
                        stopped = r.stop.len(),
                        lost = r.lost.len(),
                        removed = r.remove.len(),
                        deferred = r.deferred,
                        "plan written"
                    );
                }
                blocked.log(&r.blocked, r.unreported);
                if follow.polling && r.deferred > 0 && !r.place.is_empty() {
                    again = Duration::ZERO;
                }
            }
            Some(Err(DaemonError::Authority(e))) if lease_lost(&e) => {
                lease.forget();
                follow.close();
                tracing::warn!(error = %e, "scheduler lease lost (a write was refused): standing by");
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "pass ended; retrying next pass");
                // Some of it may have landed: start over from a snapshot taken after it.
                follow.close();
            }
        }
        // While waiting, renewals stay due every ttl/3 at the latest; following the stream,
        // also the next deadline a plan depends on, and a reconnect.
        let mut wait = again.min(cfg.lease_ttl / 3);
        deadline = None;
        if fence.is_some() && !follow.polling {
            if let Some(w) = follow.plannable()
                && let Some(at) = follow::next_deadline(&w.snapshot, &cfg, now_ms())
            {
                wait = wait.min(Duration::from_millis(at.saturating_sub(now_ms())));
                deadline = Some(at);
            }
            if let Some(r) = follow.retry_in() {
                wait = wait.min(r);
            }
        }
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(wait) => {}
            () = follow.next() => {}
        }
    }
    follow.close();
    if let Err(e) = lease.release(&mut client).await {
        tracing::warn!(error = %e, "could not release the scheduler lease (it expires)");
    } else {
        tracing::info!("scheduler stopped; lease released");
    }
    Ok(())
}

/// The authority refused a write because its lease is no longer held (`LeaseLost`).
fn lease_lost(e: &ClientError) -> bool {
    matches!(e, ClientError::Status { code: tonic::Code::FailedPrecondition, message }
        if message.contains("is no longer held by"))
}

/// A default lease holder name: `<hostname>-<pid>-<random>`.
pub fn default_holder() -> Result<String, DaemonError> {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(64)
        .collect();
    let rand = alloc_id(&SystemRandom::new()).ok_or(DaemonError::Random)?;
    Ok(format!(
        "{}-{}-{}",
        if host.is_empty() { "host" } else { &host },
        std::process::id(),
        &rand[..8]
    ))
}

#[cfg(test)]
mod tests {
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

    fn job(count: u32) -> pb::JobStatus {
        pb::JobStatus {
            job: Some(pb::Job {
                namespace: "shop".into(),
                name: "web".into(),
                count,
                ..Default::default()
            }),
            version: 1,
            desired: "running".into(),
            ..Default::default()
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("{n:016}")
        }
    }

    #[test]
    fn placements_wait_for_a_node_in_grace_and_lost_ones_are_stopped() {
        let alloc = pb::Alloc {
            id: "x".repeat(16),
            namespace: "shop".into(),
            job: "web".into(),
            job_version: 1,
            index: 0,
            node: "b".into(),
            desired: pb::AllocDesired::Run as i32,
            state: pb::AllocState::Running as i32,
            ..Default::default()
        };
        let mut b = node("b", false);
        b.last_seen_ms = 95_000;
        let s = Snapshot {
            jobs: vec![job(2)],
            allocs: vec![alloc],
            health: pb::ListNodeHealthReply {
                nodes: vec![node("a", true), b.clone()],
                tracking_since_ms: 0,
            },
        };
        let cfg = Config::default();
        // b in grace: its allocation is kept, index 1 goes to a.
        let r = decide(&s, &cfg, 100_000, &mut ids());
        assert!(r.lost.is_empty() && r.stop.is_empty());
        assert_eq!(r.place.len(), 1);
        assert_eq!(r.place[0].node, "a");
        assert_eq!(r.in_grace, ["b"]);
        // 15 s after b was last seen: lost, stopped, and index 0 placed on a.
        let r = decide(&s, &cfg, 110_000, &mut ids());
        assert_eq!(r.lost, ["x".repeat(16)]);
        assert_eq!(r.stop, ["x".repeat(16)]);
        assert_eq!(r.place.len(), 2);
        assert!(r.place.iter().all(|p| p.node == "a"));
    }

    #[test]
    fn nothing_placed_on_a_node_in_grace() {
        let mut b = node("b", false);
        b.last_seen_ms = 95_000;
        let s = Snapshot {
            jobs: vec![job(1)],
            allocs: vec![],
            health: pb::ListNodeHealthReply {
                nodes: vec![b],
                tracking_since_ms: 0,
            },
        };
        let r = decide(&s, &Config::default(), 100_000, &mut ids());
        assert!(r.place.is_empty());
        assert_eq!(r.deferred, 1);
    }

    #[test]
    fn default_holder_is_host_pid_random() {
        let h = default_holder().unwrap();
        assert!(h.contains(&format!("-{}-", std::process::id())), "{h}");
    }
}
