//! Jobs in the replicated state: the spec a caller submits ([`Job`]) and its checks.
//!
//! A job names what to run (`command`, `args`, `env`, `workdir`), as whom (`uid`, `gid`, and the
//! SPIFFE ID its tasks receive), how many (`count`), with which requests and constraints, and
//! how to restart. Every field is bounded ([`limits`]) and in one canonical spelling, checked
//! before proposing and again in apply, like every command. Later slices place jobs and run
//! them; their allocations live in tables of their own, so this record stays as it is.

use std::collections::BTreeMap;

use ringzero_policy::{NodeName, Resource, SpiffeId};
use serde::{Deserialize, Serialize};

use super::{Invalid, invalid, limits};

/// What a job's tasks do when they exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Never restarted.
    #[default]
    Never,
    /// Restarted after a non-zero exit or a signal.
    OnFailure,
    /// Restarted after any exit.
    Always,
}

impl RestartPolicy {
    /// The name used on the wire and in job files.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }

    /// Parses `never`, `on-failure` or `always` (empty: `never`).
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "" | "never" => Ok(RestartPolicy::Never),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "always" => Ok(RestartPolicy::Always),
            other => Err(invalid(format!(
                "restart policy {other:?}: expected never, on-failure or always"
            ))),
        }
    }
}

/// How a job's tasks are restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Restart {
    pub policy: RestartPolicy,
    /// At most this many restarts per task ([`limits::MAX_JOB_RESTARTS`]).
    pub max_restarts: u32,
    /// Wait this long before a restart ([`limits::MAX_JOB_BACKOFF_MS`]).
    pub backoff_ms: u64,
}

/// Where a job's tasks may run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Constraints {
    /// Node names, sorted and distinct (empty: any node).
    pub nodes: Vec<String>,
    /// Labels a node must carry.
    pub labels: BTreeMap<String, String>,
}

/// A job as submitted. Maps are ordered, so a job has one encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub namespace: String,
    pub name: String,
    /// An absolute, normalized path.
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Absolute and normalized, when given.
    pub workdir: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub count: u32,
    pub cpu_millis: Option<u32>,
    pub memory_mb: Option<u32>,
    pub constraints: Constraints,
    pub restart: Restart,
    /// The SPIFFE ID every task receives, under `spiffe://TD/ns/<namespace>/`.
    pub spiffe_id: String,
}

fn check_segment(what: &str, s: &str) -> Result<(), Invalid> {
    NodeName::parse(s)
        .map(|_| ())
        .map_err(|e| invalid(format!("{what} {s:?}: {e}")))
}

fn check_text(what: &str, s: &str, max: usize) -> Result<(), Invalid> {
    if s.len() > max {
        return Err(invalid(format!("{what} longer than {max} bytes")));
    }
    if s.contains('\0') {
        return Err(invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

/// An absolute path in one spelling: starts with `/`, no empty, `.` or `..` segment, no
/// trailing `/` (except the root itself), no NUL.
fn check_abs_path(what: &str, p: &str) -> Result<(), Invalid> {
    check_text(what, p, limits::MAX_JOB_PATH)?;
    let Some(rest) = p.strip_prefix('/') else {
        return Err(invalid(format!("{what} {p:?} is not an absolute path")));
    };
    if rest.is_empty() {
        return Ok(());
    }
    if rest
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(invalid(format!(
            "{what} {p:?} is not normalized (no //, /./, /../ or trailing /)"
        )));
    }
    Ok(())
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn check_env_name(k: &str) -> Result<(), Invalid> {
    let mut chars = k.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        || k.len() > limits::MAX_JOB_ENV_NAME
    {
        return Err(invalid(format!(
            "env name {:?}: letters, digits and _, not starting with a digit, at most {} bytes",
            k.escape_debug().to_string(),
            limits::MAX_JOB_ENV_NAME
        )));
    }
    Ok(())
}

/// A node label key or value: a path segment of at most 63 bytes (`[A-Za-z0-9._-]`).
fn check_label(k: &str, v: &str) -> Result<(), Invalid> {
    check_segment("label", k)?;
    check_segment("label value", v)
}

impl Job {
    /// Every check: [`Job::validate_shape`] and [`Job::validate_identity`].
    pub fn validate(&self) -> Result<(), Invalid> {
        self.validate_shape()?;
        self.validate_identity().map(|_| ())
    }

    /// The checks of everything but where its identity lies: names, paths, bounds, canonical
    /// spelling, and the size of the whole job.
    pub fn validate_shape(&self) -> Result<(), Invalid> {
        check_segment("namespace", &self.namespace)?;
        check_segment("job name", &self.name)?;
        check_abs_path("command", &self.command)?;
        if self.args.len() > limits::MAX_JOB_ARGS {
            return Err(invalid(format!(
                "at most {} arguments",
                limits::MAX_JOB_ARGS
            )));
        }
        for a in &self.args {
            check_text("an argument", a, limits::MAX_JOB_ARG)?;
        }
        if self.env.len() > limits::MAX_JOB_ENV {
            return Err(invalid(format!(
                "at most {} environment variables",
                limits::MAX_JOB_ENV
            )));
        }
        for (k, v) in &self.env {
            check_env_name(k)?;
            check_text("an env value", v, limits::MAX_JOB_ARG)?;
        }
        if let Some(w) = &self.workdir {
            check_abs_path("workdir", w)?;
        }
        // (uid_t)-1 means "leave unchanged" to setresuid: never an identity to run as.
        if self.uid == u32::MAX || self.gid == u32::MAX {
            return Err(invalid("uid and gid must be below 4294967295"));
        }
        if self.count == 0 || self.count > limits::MAX_JOB_COUNT {
            return Err(invalid(format!(
                "count must be between 1 and {}",
                limits::MAX_JOB_COUNT
            )));
        }
        if self
            .cpu_millis
            .is_some_and(|c| c == 0 || c > limits::MAX_JOB_CPU_MILLIS)
        {
            return Err(invalid(format!(
                "cpu_millis must be between 1 and {}",
                limits::MAX_JOB_CPU_MILLIS
            )));
        }
        if self
            .memory_mb
            .is_some_and(|m| m == 0 || m > limits::MAX_JOB_MEMORY_MB)
        {
            return Err(invalid(format!(
                "memory_mb must be between 1 and {}",
                limits::MAX_JOB_MEMORY_MB
            )));
        }
        let c = &self.constraints;
        if c.nodes.len() > limits::MAX_JOB_NODES || c.labels.len() > limits::MAX_JOB_LABELS {
            return Err(invalid(format!(
                "at most {} nodes and {} labels in constraints",
                limits::MAX_JOB_NODES,
                limits::MAX_JOB_LABELS
            )));
        }
        for n in &c.nodes {
            check_segment("node", n)?;
        }
        if c.nodes.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid("constraint nodes must be sorted and distinct"));
        }
        for (k, v) in &c.labels {
            check_label(k, v)?;
        }
        let r = &self.restart;
        if r.max_restarts > limits::MAX_JOB_RESTARTS || r.backoff_ms > limits::MAX_JOB_BACKOFF_MS {
            return Err(invalid(format!(
                "restart: at most {} restarts and a backoff of at most {} ms",
                limits::MAX_JOB_RESTARTS,
                limits::MAX_JOB_BACKOFF_MS
            )));
        }
        check_text("spiffe id", &self.spiffe_id, limits::MAX_TEXT)?;
        let size = postcard::to_stdvec(self).map_or(usize::MAX, |b| b.len());
        if size > limits::MAX_JOB_BYTES {
            return Err(invalid(format!(
                "the job is {size} bytes encoded; at most {}",
                limits::MAX_JOB_BYTES
            )));
        }
        Ok(())
    }

    /// The job's SPIFFE ID, checked: canonical, not reserved, and under
    /// `spiffe://TD/ns/<namespace>/` with at least one segment below the namespace, so a
    /// namespace's jobs only ever run as that namespace's workloads.
    pub fn validate_identity(&self) -> Result<SpiffeId, Invalid> {
        let id = SpiffeId::parse(&self.spiffe_id)
            .map_err(|e| invalid(format!("spiffe id {:?}: {e}", self.spiffe_id)))?;
        if id.to_string() != self.spiffe_id {
            return Err(invalid(format!(
                "spiffe id {:?} is not in canonical form ({id})",
                self.spiffe_id
            )));
        }
        let segments: Vec<&str> = id.segments().collect();
        let under = matches!(segments.as_slice(), ["ns", ns, _, ..] if *ns == self.namespace);
        if !under || id.is_reserved() {
            return Err(invalid(format!(
                "spiffe id {id}: a job of namespace {} runs as spiffe://{}/ns/{}/…, never as \
                 another namespace's or a reserved identity",
                self.namespace,
                id.trust_domain_name(),
                self.namespace
            )));
        }
        Ok(id)
    }

    /// The resource the job's rights are checked on: `ns/<namespace>/<name>`.
    pub fn resource(&self) -> Result<Resource, Invalid> {
        job_resource(&self.namespace, &self.name)
    }
}

/// `ns/<namespace>/<name>`, both checked as path segments.
pub fn job_resource(namespace: &str, name: &str) -> Result<Resource, Invalid> {
    check_segment("namespace", namespace)?;
    check_segment("job name", name)?;
    Resource::from_segments(&["ns", namespace, name]).map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    pub(crate) fn job() -> Job {
        Job {
            namespace: "shop".into(),
            name: "web".into(),
            command: "/usr/bin/web".into(),
            args: vec!["--port".into(), "8080".into()],
            env: [("RUST_LOG".to_owned(), "info".to_owned())].into(),
            workdir: Some("/srv/web".into()),
            uid: 1000,
            gid: 1000,
            count: 3,
            cpu_millis: Some(500),
            memory_mb: Some(256),
            constraints: Constraints {
                nodes: vec!["n1".into(), "n2".into()],
                labels: [("zone".to_owned(), "a".to_owned())].into(),
            },
            restart: Restart {
                policy: RestartPolicy::OnFailure,
                max_restarts: 5,
                backoff_ms: 1000,
            },
            spiffe_id: "spiffe://td/ns/shop/web".into(),
        }
    }

    #[test]
    fn a_sound_job_passes() {
        let j = job();
        j.validate().unwrap();
        assert_eq!(j.resource().unwrap().as_str(), "ns/shop/web");
        assert_eq!(
            j.validate_identity().unwrap().to_string(),
            "spiffe://td/ns/shop/web"
        );
    }

    type Mutation = Box<dyn Fn(&mut Job)>;

    #[test]
    fn hostile_jobs_are_refused() {
        let cases: Vec<(&str, Mutation)> = vec![
            ("bad namespace", Box::new(|j| j.namespace = "a/b".into())),
            ("empty name", Box::new(|j| j.name = String::new())),
            ("dot name", Box::new(|j| j.name = "..".into())),
            ("long name", Box::new(|j| j.name = "x".repeat(64))),
            (
                "relative command",
                Box::new(|j| j.command = "bin/web".into()),
            ),
            ("bare command", Box::new(|j| j.command = "web".into())),
            (
                "dotdot command",
                Box::new(|j| j.command = "/usr/../bin/sh".into()),
            ),
            (
                "double slash",
                Box::new(|j| j.command = "/usr//bin/web".into()),
            ),
            (
                "trailing slash",
                Box::new(|j| j.command = "/usr/bin/".into()),
            ),
            (
                "nul command",
                Box::new(|j| j.command = "/usr/bin/w\0eb".into()),
            ),
            (
                "relative workdir",
                Box::new(|j| j.workdir = Some("srv".into())),
            ),
            ("count 0", Box::new(|j| j.count = 0)),
            ("count 100000", Box::new(|j| j.count = 100_000)),
            ("cpu 0", Box::new(|j| j.cpu_millis = Some(0))),
            ("memory huge", Box::new(|j| j.memory_mb = Some(u32::MAX))),
            ("uid -1", Box::new(|j| j.uid = u32::MAX)),
            ("gid -1", Box::new(|j| j.gid = u32::MAX)),
            (
                "too many args",
                Box::new(|j| j.args = vec!["a".into(); limits::MAX_JOB_ARGS + 1]),
            ),
            (
                "oversized arg",
                Box::new(|j| j.args = vec!["a".repeat(limits::MAX_JOB_ARG + 1)]),
            ),
            ("nul arg", Box::new(|j| j.args = vec!["a\0b".into()])),
            (
                "oversized job",
                Box::new(|j| j.args = vec!["a".repeat(limits::MAX_JOB_ARG); 40]),
            ),
            (
                "too many env",
                Box::new(|j| {
                    j.env = (0..=limits::MAX_JOB_ENV)
                        .map(|i| (format!("V{i}"), String::new()))
                        .collect();
                }),
            ),
            (
                "bad env name",
                Box::new(|j| j.env = [("A=B".to_owned(), "x".to_owned())].into()),
            ),
            (
                "digit env name",
                Box::new(|j| j.env = [("1A".to_owned(), "x".to_owned())].into()),
            ),
            (
                "unsorted nodes",
                Box::new(|j| j.constraints.nodes = vec!["n2".into(), "n1".into()]),
            ),
            (
                "duplicate nodes",
                Box::new(|j| j.constraints.nodes = vec!["n1".into(), "n1".into()]),
            ),
            (
                "bad node",
                Box::new(|j| j.constraints.nodes = vec!["a b".into()]),
            ),
            (
                "bad label",
                Box::new(|j| j.constraints.labels = [("a/b".to_owned(), "x".to_owned())].into()),
            ),
            (
                "restart storm",
                Box::new(|j| j.restart.max_restarts = limits::MAX_JOB_RESTARTS + 1),
            ),
            (
                "backoff forever",
                Box::new(|j| j.restart.backoff_ms = u64::MAX),
            ),
            (
                "other namespace's id",
                Box::new(|j| j.spiffe_id = "spiffe://td/ns/other/web".into()),
            ),
            (
                "prefix namespace's id",
                Box::new(|j| j.spiffe_id = "spiffe://td/ns/shopping/web".into()),
            ),
            (
                "the namespace itself",
                Box::new(|j| j.spiffe_id = "spiffe://td/ns/shop".into()),
            ),
            (
                "reserved authority id",
                Box::new(|j| j.spiffe_id = "spiffe://td/ringzero/authority/1".into()),
            ),
            (
                "reserved node id",
                Box::new(|j| j.spiffe_id = "spiffe://td/ringzero/node/n1".into()),
            ),
            (
                "user id",
                Box::new(|j| j.spiffe_id = "spiffe://td/user/alice".into()),
            ),
            (
                "non-canonical id",
                Box::new(|j| j.spiffe_id = "spiffe://TD/ns/shop/web".into()),
            ),
            (
                "not an id",
                Box::new(|j| j.spiffe_id = "ns/shop/web".into()),
            ),
            (
                "dotdot id",
                Box::new(|j| j.spiffe_id = "spiffe://td/ns/shop/../other/web".into()),
            ),
        ];
        for (what, mutate) in cases {
            let mut j = job();
            mutate(&mut j);
            assert!(j.validate().is_err(), "{what} passed");
        }
    }

    #[test]
    fn restart_policies_round_trip() {
        for p in [
            RestartPolicy::Never,
            RestartPolicy::OnFailure,
            RestartPolicy::Always,
        ] {
            assert_eq!(RestartPolicy::parse(p.as_str()).unwrap(), p);
        }
        assert_eq!(RestartPolicy::parse("").unwrap(), RestartPolicy::Never);
        assert!(RestartPolicy::parse("sometimes").is_err());
    }
}
