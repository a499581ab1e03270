//! The job file: the TOML a user writes for `ringzero job run`, read into a [`pb::Job`].
//!
//! ```toml
//! namespace = "shop"
//! name = "web"
//! command = "/usr/bin/web"
//! args = ["--port", "8080"]
//! env = { RUST_LOG = "info" }
//! workdir = "/srv/web"
//! uid = 1000
//! gid = 1000
//! count = 3
//! cpu_millis = 500
//! memory_mb = 256
//! spiffe_id = "spiffe://example.org/ns/shop/web"
//!
//! [constraints]
//! nodes = ["n1", "n2"]
//! labels = { zone = "a" }
//!
//! [restart]
//! policy = "on-failure"   # never | on-failure | always
//! max_restarts = 5
//! backoff = "10s"         # ms, s, m or h
//! ```
//!
//! Unknown keys are refused (a misspelt `memory_MB` must not silently mean "no request"), the
//! text is bounded ([`MAX_JOB_FILE`]), and `count` defaults to 1. Only the file's syntax is
//! checked here: the authority checks the job itself, before deciding and again in apply.
//!
//! ```
//! let job = ringzero_proto::job_file::parse(
//!     "namespace = \"shop\"\nname = \"web\"\ncommand = \"/bin/true\"\nuid = 1000\ngid = 1000\n\
//!      spiffe_id = \"spiffe://td/ns/shop/web\"\n",
//! )
//! .unwrap();
//! assert_eq!(job.count, 1);
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::pb;

/// The largest job file read (1 MiB); the authority's bound on a job is smaller still.
pub const MAX_JOB_FILE: usize = 1024 * 1024;

/// Why a job file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobFileError {
    #[error("the job file is larger than {MAX_JOB_FILE} bytes")]
    TooLarge,
    #[error("{0}")]
    Syntax(String),
    #[error("restart backoff {0:?}: expected a number with ms, s, m or h (e.g. 500ms, 10s)")]
    Backoff(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    namespace: String,
    name: String,
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    workdir: Option<String>,
    uid: u32,
    gid: u32,
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    cpu_millis: Option<u32>,
    #[serde(default)]
    memory_mb: Option<u32>,
    spiffe_id: String,
    #[serde(default)]
    constraints: ConstraintsFile,
    #[serde(default)]
    restart: RestartFile,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConstraintsFile {
    #[serde(default)]
    nodes: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartFile {
    #[serde(default)]
    policy: String,
    #[serde(default)]
    max_restarts: u32,
    #[serde(default)]
    backoff: Option<String>,
}

/// `500ms`, `10s`, `2m`, `1h` (or a bare number of milliseconds) as milliseconds.
pub fn parse_backoff(s: &str) -> Result<u64, JobFileError> {
    let bad = || JobFileError::Backoff(s.chars().take(64).collect());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() || digits.len() > 12 {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

/// Reads a job file's text into the job it describes.
pub fn parse(text: &str) -> Result<pb::Job, JobFileError> {
    if text.len() > MAX_JOB_FILE {
        return Err(JobFileError::TooLarge);
    }
    let f: JobFile = toml::from_str(text).map_err(|e| JobFileError::Syntax(e.to_string()))?;
    let backoff_ms = match &f.restart.backoff {
        Some(b) => parse_backoff(b)?,
        None => 0,
    };
    Ok(pb::Job {
        namespace: f.namespace,
        name: f.name,
        command: f.command,
        args: f.args,
        env: f.env.into_iter().collect(),
        workdir: f.workdir.unwrap_or_default(),
        uid: f.uid,
        gid: f.gid,
        count: f.count,
        cpu_millis: f.cpu_millis,
        memory_mb: f.memory_mb,
        constraints: Some(pb::JobConstraints {
            nodes: f.constraints.nodes,
            labels: f.constraints.labels.into_iter().collect(),
        }),
        restart: Some(pb::JobRestart {
            policy: f.restart.policy,
            max_restarts: f.restart.max_restarts,
            backoff_ms,
        }),
        spiffe_id: f.spiffe_id,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const FULL: &str = r#"
namespace = "shop"
name = "web"
command = "/usr/bin/web"
args = ["--port", "8080"]
env = { RUST_LOG = "info" }
workdir = "/srv/web"
uid = 1000
gid = 1001
count = 3
cpu_millis = 500
memory_mb = 256
spiffe_id = "spiffe://td/ns/shop/web"

[constraints]
nodes = ["n1", "n2"]
labels = { zone = "a" }

[restart]
policy = "on-failure"
max_restarts = 5
backoff = "10s"
"#;

    #[test]
    fn a_full_file_is_read() {
        let j = parse(FULL).unwrap();
        assert_eq!(j.args, ["--port", "8080"]);
        assert_eq!(j.env["RUST_LOG"], "info");
        assert_eq!((j.uid, j.gid, j.count), (1000, 1001, 3));
        assert_eq!(j.memory_mb, Some(256));
        assert_eq!(j.constraints.unwrap().labels["zone"], "a");
        let r = j.restart.unwrap();
        assert_eq!(
            (r.policy.as_str(), r.max_restarts, r.backoff_ms),
            ("on-failure", 5, 10_000)
        );
    }

    #[test]
    fn hostile_files_are_refused() {
        for text in [
            // Unknown keys, at the top and in tables.
            &FULL.replace("memory_mb", "memory_MB"),
            &FULL.replace("max_restarts", "max_restart"),
            &format!("{FULL}\n[extra]\nx = 1\n"),
            // Missing required keys, wrong types, out of range.
            &FULL.replace("uid = 1000\n", ""),
            &FULL.replace("uid = 1000", "uid = \"root\""),
            &FULL.replace("uid = 1000", "uid = -1"),
            &FULL.replace("count = 3", "count = 99999999999"),
            &FULL.replace("backoff = \"10s\"", "backoff = \"10 parsecs\""),
            &FULL.replace("backoff = \"10s\"", "backoff = \"99999999999999999999h\""),
            "not toml at all [",
            "",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
        let huge = format!("{FULL}#{}", "x".repeat(MAX_JOB_FILE));
        assert_eq!(parse(&huge), Err(JobFileError::TooLarge));
    }

    #[test]
    fn backoffs() {
        assert_eq!(parse_backoff("500ms").unwrap(), 500);
        assert_eq!(parse_backoff("2m").unwrap(), 120_000);
        assert_eq!(parse_backoff("1h").unwrap(), 3_600_000);
        assert_eq!(parse_backoff("250").unwrap(), 250);
        for bad in ["", "s", "-1s", "1d", "1.5s", "9999999999999s"] {
            assert!(parse_backoff(bad).is_err(), "{bad}");
        }
    }
}
