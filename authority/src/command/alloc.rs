//! Allocations: one task of a job (`index` < the job's `count`) placed on one node. The
//! scheduler places, stops, marks lost and removes them; the node's agent reports how they run.
//!
//! Every batch holds at most [`limits::MAX_ALLOC_BATCH`] items and is applied all or nothing.

use serde::{Deserialize, Serialize};

use super::{Invalid, invalid, job_resource, limits};
use ringzero_policy::NodeName;

/// What the scheduler wants of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocDesired {
    Run,
    Stop,
}

impl AllocDesired {
    pub fn as_str(self) -> &'static str {
        match self {
            AllocDesired::Run => "run",
            AllocDesired::Stop => "stop",
        }
    }
}

/// What is known of an allocation. Variants are append-only (postcard encodes the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocState {
    /// Placed; the agent has not reported it running yet.
    Pending,
    Running,
    /// Exited with status 0 (or the agent's `exit_code`) and will not be restarted.
    Exited,
    /// Exited abnormally, or could not be started, and will not be restarted.
    Failed,
    /// Set by the scheduler: its node stopped answering. Never reported by an agent.
    Lost,
    /// Stopped because it was desired `Stop`.
    Stopped,
}

impl AllocState {
    pub fn as_str(self) -> &'static str {
        match self {
            AllocState::Pending => "pending",
            AllocState::Running => "running",
            AllocState::Exited => "exited",
            AllocState::Failed => "failed",
            AllocState::Lost => "lost",
            AllocState::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        Ok(match s {
            "pending" => AllocState::Pending,
            "running" => AllocState::Running,
            "exited" => AllocState::Exited,
            "failed" => AllocState::Failed,
            "lost" => AllocState::Lost,
            "stopped" => AllocState::Stopped,
            other => return Err(invalid(format!("unknown allocation state {other:?}"))),
        })
    }

    /// No process runs and none will be started for it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            AllocState::Exited | AllocState::Failed | AllocState::Lost | AllocState::Stopped
        )
    }
}

/// A new allocation, as the scheduler places it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// `[a-z0-9]{16}`, chosen by the scheduler; never reused while the allocation exists.
    pub id: String,
    pub namespace: String,
    pub job: String,
    /// The job's version this allocation runs: the job's current one when placed.
    pub job_version: u64,
    /// Which of the job's `count` tasks (0-based).
    pub index: u32,
    pub node: String,
    /// The allocation this one replaces (a reschedule or an update), if any; informational.
    pub previous: Option<String>,
}

/// One of the scheduler's allocation writes, as carried by [`super::Op::FencedAllocWrite`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocWrite {
    Place(Vec<Placement>),
    Stop(Vec<String>),
    Lost(Vec<String>),
    Remove(Vec<String>),
}

impl AllocWrite {
    /// The checks of the write's own kind ([`check_placements`], [`check_alloc_ids`]).
    pub fn check(&self) -> Result<(), Invalid> {
        match self {
            AllocWrite::Place(allocs) => check_placements(allocs),
            AllocWrite::Stop(ids) => check_alloc_ids("stop", ids),
            AllocWrite::Lost(ids) => check_alloc_ids("lost", ids),
            AllocWrite::Remove(ids) => check_alloc_ids("remove", ids),
        }
    }
}

/// An agent's report on one allocation of its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocUpdate {
    pub id: String,
    /// Anything but `Lost` (the scheduler's verdict, not the agent's).
    pub state: AllocState,
    pub exit_code: Option<i32>,
    pub restarts: u32,
    /// At most [`limits::MAX_ALLOC_MESSAGE`] bytes.
    pub message: String,
}

/// The id of the registration entry apply derives for an allocation: `alloc-<id>`. Entry ids
/// the authority assigns otherwise are hex, so the two never collide; a user-written
/// `PutEntry`/`DeleteEntry` naming an id with this prefix is refused.
pub const ALLOC_ENTRY_PREFIX: &str = "alloc-";

/// `alloc-<id>`: the entry giving allocation `id`'s task its identity.
pub fn alloc_entry_id(id: &str) -> String {
    format!("{ALLOC_ENTRY_PREFIX}{id}")
}

/// `[a-z0-9]{16}`.
pub fn check_alloc_id(id: &str) -> Result<(), Invalid> {
    if id.len() != 16
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(invalid(format!(
            "allocation id {:?} is not 16 of [a-z0-9]",
            id.chars().take(32).collect::<String>()
        )));
    }
    Ok(())
}

fn check_batch(what: &str, n: usize) -> Result<(), Invalid> {
    if n == 0 {
        return Err(invalid(format!("{what}: an empty batch")));
    }
    if n > limits::MAX_ALLOC_BATCH {
        return Err(invalid(format!(
            "{what}: {n} items, at most {} per call",
            limits::MAX_ALLOC_BATCH
        )));
    }
    Ok(())
}

/// Ids of a stop, lost or remove batch: bounded, well-formed, distinct.
pub fn check_alloc_ids(what: &str, ids: &[String]) -> Result<(), Invalid> {
    check_batch(what, ids.len())?;
    let mut seen = std::collections::BTreeSet::new();
    for id in ids {
        check_alloc_id(id)?;
        if !seen.insert(id.as_str()) {
            return Err(invalid(format!("{what}: allocation {id} twice")));
        }
    }
    Ok(())
}

fn check_node(node: &str) -> Result<(), Invalid> {
    NodeName::parse(node)
        .map(|_| ())
        .map_err(|e| invalid(format!("node name {node:?}: {e}")))
}

impl Placement {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_alloc_id(&self.id)?;
        job_resource(&self.namespace, &self.job)?;
        check_node(&self.node)?;
        if self.job_version == 0 {
            return Err(invalid("job version 0 does not exist"));
        }
        if self.index >= limits::MAX_JOB_COUNT {
            return Err(invalid(format!(
                "index {} is past any job's count",
                self.index
            )));
        }
        if let Some(p) = &self.previous {
            check_alloc_id(p)?;
        }
        Ok(())
    }
}

/// A placement batch: bounded, each placement well-formed, ids distinct.
pub fn check_placements(allocs: &[Placement]) -> Result<(), Invalid> {
    check_batch("place", allocs.len())?;
    let mut seen = std::collections::BTreeSet::new();
    for a in allocs {
        a.validate()?;
        if !seen.insert(a.id.as_str()) {
            return Err(invalid(format!("place: allocation {} twice", a.id)));
        }
    }
    Ok(())
}

/// A report batch: the node's name, bounded, ids distinct, no `Lost`, messages bounded.
pub fn check_report(node: &str, updates: &[AllocUpdate]) -> Result<(), Invalid> {
    check_node(node)?;
    check_batch("report", updates.len())?;
    let mut seen = std::collections::BTreeSet::new();
    for u in updates {
        check_alloc_id(&u.id)?;
        if !seen.insert(u.id.as_str()) {
            return Err(invalid(format!("report: allocation {} twice", u.id)));
        }
        if u.state == AllocState::Lost {
            return Err(invalid(
                "report: an agent does not report an allocation lost",
            ));
        }
        if u.message.len() > limits::MAX_ALLOC_MESSAGE {
            return Err(invalid(format!(
                "report: a message of more than {} bytes",
                limits::MAX_ALLOC_MESSAGE
            )));
        }
        if u.message.contains('\0') {
            return Err(invalid("report: a message holds NUL"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    pub(crate) fn placement(id: &str) -> Placement {
        Placement {
            id: id.into(),
            namespace: "shop".into(),
            job: "web".into(),
            job_version: 1,
            index: 0,
            node: "n1".into(),
            previous: None,
        }
    }

    #[test]
    fn ids_are_sixteen_lowercase_alphanumerics() {
        check_alloc_id("0123456789abcdef").unwrap();
        for bad in [
            "",
            "0123456789abcde",
            "0123456789abcdefa",
            "0123456789ABCDEF",
            "0123456789abcde-",
            "0123456789abcd\0e",
            "../../../../etc/",
        ] {
            assert!(check_alloc_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostile_placements_are_refused() {
        check_placements(&[placement("aaaaaaaaaaaaaaaa")]).unwrap();
        assert!(check_placements(&[]).is_err());
        let many: Vec<_> = (0..=limits::MAX_ALLOC_BATCH)
            .map(|i| placement(&format!("{i:016}")))
            .collect();
        assert!(check_placements(&many).is_err(), "oversized batch");
        assert!(check_placements(&many[..limits::MAX_ALLOC_BATCH]).is_ok());
        let twice = [placement("aaaaaaaaaaaaaaaa"), placement("aaaaaaaaaaaaaaaa")];
        assert!(check_placements(&twice).is_err());
        let mut p = placement("aaaaaaaaaaaaaaaa");
        p.node = "../n1".into();
        assert!(p.validate().is_err());
        let mut p = placement("aaaaaaaaaaaaaaaa");
        p.namespace = "a/b".into();
        assert!(p.validate().is_err());
        let mut p = placement("aaaaaaaaaaaaaaaa");
        p.job_version = 0;
        assert!(p.validate().is_err());
        let mut p = placement("aaaaaaaaaaaaaaaa");
        p.index = limits::MAX_JOB_COUNT;
        assert!(p.validate().is_err());
        let mut p = placement("aaaaaaaaaaaaaaaa");
        p.previous = Some("x".into());
        assert!(p.validate().is_err());
    }

    #[test]
    fn hostile_reports_are_refused() {
        let u = |id: &str, state| AllocUpdate {
            id: id.into(),
            state,
            exit_code: None,
            restarts: 0,
            message: String::new(),
        };
        check_report("n1", &[u("aaaaaaaaaaaaaaaa", AllocState::Running)]).unwrap();
        assert!(check_report("n1", &[u("aaaaaaaaaaaaaaaa", AllocState::Lost)]).is_err());
        assert!(check_report("", &[u("aaaaaaaaaaaaaaaa", AllocState::Running)]).is_err());
        assert!(check_report("n1", &[u("bad", AllocState::Running)]).is_err());
        let mut long = u("aaaaaaaaaaaaaaaa", AllocState::Failed);
        long.message = "x".repeat(limits::MAX_ALLOC_MESSAGE + 1);
        assert!(check_report("n1", &[long]).is_err());
        assert!(check_alloc_ids("stop", &[]).is_err());
        assert!(
            check_alloc_ids(
                "stop",
                &["aaaaaaaaaaaaaaaa".into(), "aaaaaaaaaaaaaaaa".into()]
            )
            .is_err()
        );
        assert_eq!(AllocState::parse("running").unwrap().as_str(), "running");
        assert!(AllocState::parse("zombie").is_err());
    }
}
