//! Running the node's allocations: the feed's `NodeAllocSet` turned into [`Supervisor`] calls,
//! and the supervisor's statuses turned into `ReportAllocStatus` calls, in a task of its own
//! (a stop waits out its grace period; the main loop never waits on it).
//!
//! - **Start** every allocation desired RUN whose job spec (at the allocation's version) is in
//!   the set, once: the supervisor restarts it per its policy; a task that ended stays ended.
//!   One whose reported state (carried in the set) is already terminal — EXITED, FAILED,
//!   STOPPED, LOST — is never started: after an agent restart, a finished task stays
//!   finished.
//! - **Stop** every allocation desired STOP, or no longer in the set (then forget it once it
//!   ended). An allocation desired RUN whose spec is missing (its job was resubmitted or
//!   purged) is left as it is: the scheduler replaces or stops it.
//! - **After a restart**, the supervisor adopts the recorded process of each allocation it is
//!   asked to start again (no duplicate), and every recorded allocation not in the first set is
//!   stopped.
//! - **Reports**: changes only, at most one call per [`REPORT_EVERY`], at most
//!   [`MAX_REPORT`] updates per call, only for allocations of the current set (the authority
//!   refuses a whole batch naming another node's allocation). A failed call is retried with
//!   what changed since.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ringzero_proto::client::AuthorityClient;
use ringzero_proto::pb;
use tokio::sync::watch;
use tracing::{info, warn};

use super::sync::ClientSetup;
use crate::tasks::{
    AllocId, Limits, RestartMode, RestartPolicy, Supervisor, TaskSpec, TaskState, TaskStatus,
};

/// The least time between two `ReportAllocStatus` calls (the authority allows 5 per second).
pub(super) const REPORT_EVERY: Duration = Duration::from_secs(1);
/// The most updates in one call (the authority's bound).
pub(super) const MAX_REPORT: usize = 1000;
/// The longest message reported (the authority's bound is 1024 bytes).
const MAX_MESSAGE: usize = 1024;

/// The allocation loop: runs until `sets` closes.
pub(super) async fn alloc_task(
    supervisor: Arc<Supervisor>,
    mut sets: watch::Receiver<Option<Arc<pb::NodeAllocSet>>>,
    mut setup: watch::Receiver<Arc<ClientSetup>>,
) {
    let mut runner = Runner {
        supervisor,
        launched: HashSet::new(),
        current: HashSet::new(),
        first: true,
    };
    let mut statuses = runner.supervisor.statuses();
    let mut sent: HashMap<String, pb::AllocStatusUpdate> = HashMap::new();
    let mut client: Option<AuthorityClient> = None;
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = sets.changed() => {
                if changed.is_err() {
                    return;
                }
                let set = sets.borrow_and_update().clone();
                if let Some(set) = set {
                    runner.reconcile(&set).await;
                }
            }
            _ = tick.tick() => {
                let all = statuses.borrow_and_update().clone();
                let updates = changed_updates(&all, &runner.current, &sent);
                if updates.is_empty() {
                    continue;
                }
                if setup.has_changed().unwrap_or(false) {
                    client = None;
                }
                let c = match &mut client {
                    Some(c) => c,
                    None => {
                        // Marks the credentials seen: `has_changed` above then fires only on
                        // the next rotation, not on every tick.
                        let current = setup.borrow_and_update().clone();
                        match current.creds.client_credentials() {
                            Ok(creds) => client.insert(AuthorityClient::new(creds, current.addrs.clone())),
                            Err(e) => {
                                warn!(error = %e, "cannot report allocation statuses");
                                continue;
                            }
                        }
                    }
                };
                for chunk in updates.chunks(MAX_REPORT) {
                    let req = pb::ReportAllocStatusRequest { updates: chunk.to_vec() };
                    let r = c
                        .call(|mut g| {
                            let req = req.clone();
                            async move { g.report_alloc_status(req).await }
                        })
                        .await;
                    match r {
                        Ok(_) => {
                            for u in chunk {
                                sent.insert(u.id.clone(), u.clone());
                            }
                        }
                        Err(e) => {
                            // Retried at the next tick, with whatever changed meanwhile.
                            warn!(error = %e, updates = chunk.len(), "reporting allocation statuses failed");
                            break;
                        }
                    }
                }
                sent.retain(|id, _| runner.current.contains(id));
            }
        }
    }
}

struct Runner {
    supervisor: Arc<Supervisor>,
    /// Allocations started by this agent process (started once; never again).
    launched: HashSet<String>,
    /// The allocations of the last set.
    current: HashSet<String>,
    first: bool,
}

impl Runner {
    async fn reconcile(&mut self, set: &pb::NodeAllocSet) {
        let specs: BTreeMap<(&str, &str, u64), &pb::Job> = set
            .jobs
            .iter()
            .filter_map(|j| {
                let job = j.job.as_ref()?;
                Some(((job.namespace.as_str(), job.name.as_str(), j.version), job))
            })
            .collect();
        let mut keep = HashSet::new();
        let mut stop = Vec::new();
        for a in &set.allocs {
            let Ok(id) = AllocId::new(a.id.clone()) else {
                warn!(alloc = %a.id.chars().take(64).collect::<String>(), "malformed allocation id; ignored");
                continue;
            };
            keep.insert(a.id.clone());
            if a.desired != pb::AllocDesired::Run as i32 {
                stop.push(id);
                continue;
            }
            if self.launched.contains(&a.id) {
                continue;
            }
            if ended(a.state) {
                // Its task ended before this agent process started (the set carries what was
                // reported): starting it would run a finished task again.
                if self.first {
                    info!(alloc = %a.id, state = a.state, "allocation already ended; not started again");
                }
                continue;
            }
            let Some(job) = specs.get(&(a.namespace.as_str(), a.job.as_str(), a.job_version))
            else {
                // Resubmitted or purged since: keep what runs, the scheduler decides.
                continue;
            };
            match task_spec(id, job) {
                Ok(spec) => match self.supervisor.start(spec).await {
                    Ok(()) => {
                        info!(alloc = %a.id, job = %format!("{}/{}", a.namespace, a.job), "allocation started");
                        self.launched.insert(a.id.clone());
                    }
                    Err(e) => warn!(alloc = %a.id, error = %e, "cannot start allocation"),
                },
                Err(e) => warn!(alloc = %a.id, error = %e, "cannot run allocation"),
            }
        }
        let mut gone: Vec<AllocId> = self
            .current
            .iter()
            .filter(|id| !keep.contains(*id))
            .filter_map(|id| AllocId::new(id.clone()).ok())
            .collect();
        if std::mem::take(&mut self.first) {
            // Processes recorded by an earlier agent whose allocation is gone.
            gone.extend(
                self.supervisor
                    .recorded()
                    .into_iter()
                    .filter(|id| !keep.contains(id.as_str())),
            );
        }
        for id in &gone {
            self.launched.remove(id.as_str());
        }
        self.current = keep;
        for (id, forget) in stop
            .into_iter()
            .map(|id| (id, false))
            .chain(gone.into_iter().map(|id| (id, true)))
        {
            let supervisor = self.supervisor.clone();
            tokio::spawn(async move {
                if let Err(e) = supervisor.stop(&id).await {
                    warn!(alloc = %id, error = %e, "cannot stop allocation");
                }
                if forget {
                    let _ = supervisor.forget(&id);
                }
            });
        }
    }
}

/// A reported state after which no process runs for the allocation, nor will be started:
/// EXITED, FAILED, STOPPED, or LOST (the scheduler's verdict; it replaces the allocation).
fn ended(state: i32) -> bool {
    matches!(
        pb::AllocState::try_from(state),
        Ok(pb::AllocState::Exited
            | pb::AllocState::Failed
            | pb::AllocState::Stopped
            | pb::AllocState::Lost)
    )
}

/// The task of an allocation of `job`.
pub(crate) fn task_spec(alloc_id: AllocId, job: &pb::Job) -> Result<TaskSpec, String> {
    let restart = job.restart.clone().unwrap_or_default();
    let mode = match restart.policy.as_str() {
        "" | "never" => RestartMode::Never,
        "on-failure" => RestartMode::OnFailure,
        "always" => RestartMode::Always,
        other => {
            return Err(format!(
                "unknown restart policy {:?}",
                other.chars().take(32).collect::<String>()
            ));
        }
    };
    Ok(TaskSpec {
        alloc_id,
        command: PathBuf::from(&job.command),
        args: job.args.clone(),
        env: job.env.clone().into_iter().collect(),
        workdir: (!job.workdir.is_empty()).then(|| PathBuf::from(&job.workdir)),
        uid: job.uid,
        gid: job.gid,
        cpu_millis: job.cpu_millis,
        memory_mb: job.memory_mb,
        restart: RestartPolicy {
            mode,
            max_restarts: restart.max_restarts,
            backoff: Duration::from_millis(restart.backoff_ms),
        },
    })
}

/// What to report of a task; `None` while it is pending (starting, or between restarts).
pub(super) fn update_of(id: &str, s: &TaskStatus) -> Option<pb::AllocStatusUpdate> {
    let limits = match &s.limits {
        Limits::Enforced => String::new(),
        Limits::Unavailable(why) => format!("limits unavailable: {why}"),
    };
    let (state, exit_code, message) = match &s.state {
        TaskState::Pending => return None,
        TaskState::Running { .. } => (pb::AllocState::Running, None, limits),
        TaskState::Exited { code } => (pb::AllocState::Exited, *code, String::new()),
        TaskState::Failed { reason, code } => (pb::AllocState::Failed, *code, reason.clone()),
        TaskState::Stopped => (pb::AllocState::Stopped, None, String::new()),
    };
    Some(pb::AllocStatusUpdate {
        id: id.to_owned(),
        state: state as i32,
        exit_code,
        restarts: s.restarts,
        message: truncate(message, MAX_MESSAGE),
    })
}

/// The updates of the allocations in `current` that differ from what was `sent`.
fn changed_updates(
    all: &BTreeMap<AllocId, TaskStatus>,
    current: &HashSet<String>,
    sent: &HashMap<String, pb::AllocStatusUpdate>,
) -> Vec<pb::AllocStatusUpdate> {
    all.iter()
        .filter(|(id, _)| current.contains(id.as_str()))
        .filter_map(|(id, s)| update_of(id.as_str(), s))
        .filter(|u| sent.get(&u.id) != Some(u))
        .collect()
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn status(state: TaskState) -> TaskStatus {
        TaskStatus {
            state,
            restarts: 2,
            started_at: None,
            finished_at: None,
            last_exit: None,
            limits: Limits::Unavailable("no cgroup v2".into()),
            adopted: false,
        }
    }

    #[test]
    fn only_terminal_reported_states_block_a_start() {
        for s in [
            pb::AllocState::Exited,
            pb::AllocState::Failed,
            pb::AllocState::Stopped,
            pb::AllocState::Lost,
        ] {
            assert!(ended(s as i32), "{s:?}");
        }
        for s in [
            pb::AllocState::Unspecified,
            pb::AllocState::Pending,
            pb::AllocState::Running,
        ] {
            assert!(!ended(s as i32), "{s:?}");
        }
        assert!(!ended(99));
    }

    #[test]
    fn statuses_map_to_reports() {
        let a = "aaaaaaaaaaaaaaaa";
        assert!(update_of(a, &status(TaskState::Pending)).is_none());
        let r = update_of(a, &status(TaskState::Running { pid: 7 })).unwrap();
        assert_eq!(r.state, pb::AllocState::Running as i32);
        assert_eq!(r.restarts, 2);
        assert_eq!(r.message, "limits unavailable: no cgroup v2");
        let e = update_of(a, &status(TaskState::Exited { code: Some(3) })).unwrap();
        assert_eq!(
            (e.state, e.exit_code),
            (pb::AllocState::Exited as i32, Some(3))
        );
        let f = update_of(
            a,
            &status(TaskState::Failed {
                reason: "é".repeat(1000),
                code: Some(1),
            }),
        )
        .unwrap();
        assert_eq!(f.state, pb::AllocState::Failed as i32);
        assert!(f.message.len() <= MAX_MESSAGE);
        let s = update_of(a, &status(TaskState::Stopped)).unwrap();
        assert_eq!(s.state, pb::AllocState::Stopped as i32);
    }

    #[test]
    fn only_changes_of_current_allocations_are_reported() {
        let (a, b) = ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb");
        let mut all = BTreeMap::new();
        all.insert(
            AllocId::new(a).unwrap(),
            status(TaskState::Running { pid: 1 }),
        );
        all.insert(
            AllocId::new(b).unwrap(),
            status(TaskState::Running { pid: 2 }),
        );
        let current: HashSet<String> = [a.to_owned()].into();
        let mut sent = HashMap::new();
        let u = changed_updates(&all, &current, &sent);
        assert_eq!(u.len(), 1);
        sent.insert(a.to_owned(), u[0].clone());
        assert!(changed_updates(&all, &current, &sent).is_empty());
        all.insert(
            AllocId::new(a).unwrap(),
            status(TaskState::Exited { code: Some(0) }),
        );
        assert_eq!(changed_updates(&all, &current, &sent).len(), 1);
    }

    #[test]
    fn job_specs_become_tasks() {
        let job = pb::Job {
            command: "/bin/sh".into(),
            args: vec!["-c".into(), "exit 3".into()],
            uid: 1000,
            gid: 100,
            memory_mb: Some(64),
            restart: Some(pb::JobRestart {
                policy: "on-failure".into(),
                max_restarts: 4,
                backoff_ms: 500,
            }),
            ..Default::default()
        };
        let spec = task_spec(AllocId::new("aaaaaaaaaaaaaaaa").unwrap(), &job).unwrap();
        assert_eq!(spec.restart.mode, RestartMode::OnFailure);
        assert_eq!(spec.restart.backoff, Duration::from_millis(500));
        assert_eq!((spec.uid, spec.gid, spec.memory_mb), (1000, 100, Some(64)));
        assert!(spec.workdir.is_none());
        let never = pb::Job {
            restart: None,
            ..job.clone()
        };
        let spec = task_spec(AllocId::new("aaaaaaaaaaaaaaaa").unwrap(), &never).unwrap();
        assert_eq!(spec.restart.mode, RestartMode::Never);
        let bad = pb::Job {
            restart: Some(pb::JobRestart {
                policy: "sometimes".into(),
                ..Default::default()
            }),
            ..job
        };
        assert!(task_spec(AllocId::new("aaaaaaaaaaaaaaaa").unwrap(), &bad).is_err());
    }
}
