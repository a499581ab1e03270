//! `ringzero job …`: jobs in the authority — `run` (submit a TOML job file, or `--dry-run` it),
//! `status`, `list`, `stop [--purge]` and `history` (the job's audit records, through the same
//! code as `audit query`). Placing and running the tasks is the scheduler's and the agents'.

mod exec;
mod logs;

pub(crate) use self::logs::dial;
mod plan;

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use ringzero_policy::NodeName;
use ringzero_proto::job_file::{self, MAX_JOB_FILE};
use ringzero_proto::pb;

use super::session::{explain, format_ms, print_table, refused, runtime, session};
use crate::cli::GlobalArgs;
use crate::failure::{Failure, Outcome, bad_input_msg, failed};

#[derive(Debug, Subcommand)]
pub(crate) enum JobCommand {
    /// Submit a job from a TOML file (or check it with --dry-run).
    #[command(after_help = RUN_HELP)]
    Run(JobRunArgs),
    /// Show one job: its spec, version, desired state and who submitted it.
    #[command(after_help = "\
Needs sched:read on ns/NS/NAME. Each allocation's NODE LIVE (its node's agent feed is open)
is shown when the caller also has node:read on node, else '-' (JSON: node_live null).

Examples:
  ringzero job status shop/web
  ringzero job status shop/web --json")]
    Status(JobShowArgs),
    /// List jobs (those of --namespace only; needs sched:read there, or on everything without).
    #[command(after_help = "\
Examples:
  ringzero job list
  ringzero job list --namespace shop --json")]
    List(JobListArgs),
    /// Stop a job: its desired state becomes stopped and its record is kept; --purge also
    /// deletes it.
    #[command(after_help = "\
Needs sched:cancel on ns/NS/NAME. Stopping is idempotent; --purge stops the job, then deletes its
record (both audited).

Examples:
  ringzero job stop shop/web
  ringzero job stop shop/web --purge")]
    Stop(JobStopArgs),
    /// The audit records of a job: every submit, stop, purge and read of it, allowed or denied.
    #[command(after_help = "\
Needs audit:read. Shows the records whose resource lies under ns/NS/NAME, oldest first, as
`ringzero audit query --resource ns/NS/NAME` would.

Examples:
  ringzero job history shop/web
  ringzero job history shop/web --json --limit 1000")]
    History(JobHistoryArgs),
    /// Read a task's log from the agent that runs it (directly, over mTLS).
    #[command(after_help = logs::LOGS_HELP)]
    Logs(logs::JobLogsArgs),
    /// Run a command in a running task's context (audited, recorded), through its agent.
    #[command(after_help = exec::EXEC_HELP)]
    Exec(exec::JobExecArgs),
}

const RUN_HELP: &str = "\
FILE is TOML ('-' reads stdin; at most 1 MiB; unknown keys are refused):

  namespace = \"shop\"                       # the job is ns/shop/web
  name = \"web\"
  command = \"/usr/bin/web\"                 # absolute path
  args = [\"--port\", \"8080\"]
  env = { RUST_LOG = \"info\" }
  workdir = \"/srv/web\"                     # optional, absolute
  uid = 1000
  gid = 1000
  count = 3                                # 1 to 1000 tasks (default 1)
  cpu_millis = 500                         # optional requests
  memory_mb = 256
  spiffe_id = \"spiffe://example.org/ns/shop/web\"   # under spiffe://TD/ns/<namespace>/
  [constraints]
  nodes = [\"n1\", \"n2\"]
  labels = { zone = \"a\" }
  [restart]
  policy = \"on-failure\"                    # never | on-failure | always
  max_restarts = 5
  backoff = \"10s\"

Needs sched:submit on ns/<namespace>/<name>, and — since the tasks receive that SPIFFE ID and
run as that uid — entry:write on the SPIFFE ID's path and entry:select on
selector/unix/uid/<uid>, as a registration entry would. Submitting a job of an existing name
replaces it (its version goes up) and sets it running. --dry-run is authorized and checked
exactly the same and commits nothing but its audit record (a read, detail dry_run=true); it
then shows the placement the scheduler would make — which index goes to which node, what is
blocked and why, which current allocations the new version replaces — computed over the
current node health, jobs and allocations (reads only; needs node:read on node, else only
the check is shown, exit 0).
Exit 2 when the file or the job is invalid.

Examples:
  ringzero job run web.toml
  ringzero job run web.toml --dry-run --json
  generate-job | ringzero job run -";

#[derive(Debug, Args)]
pub(crate) struct JobRunArgs {
    /// The job file (TOML), or '-' for stdin.
    #[arg(value_name = "FILE")]
    pub(crate) file: String,
    /// Authorize and check the job, print it as it would be stored and the placement the
    /// scheduler would make; commit nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Print the job as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct JobShowArgs {
    /// The job, as NAMESPACE/NAME.
    #[arg(value_name = "NS/NAME", value_parser = parse_job_ref)]
    pub(crate) job: JobRef,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct JobListArgs {
    /// Only the jobs of this namespace.
    #[arg(long, value_name = "NS", value_parser = parse_segment)]
    pub(crate) namespace: Option<String>,
    /// Print a JSON array.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct JobStopArgs {
    /// The job, as NAMESPACE/NAME.
    #[arg(value_name = "NS/NAME", value_parser = parse_job_ref)]
    pub(crate) job: JobRef,
    /// Also delete the job's record once it is stopped.
    #[arg(long)]
    pub(crate) purge: bool,
}

#[derive(Debug, Args)]
pub(crate) struct JobHistoryArgs {
    /// The job, as NAMESPACE/NAME.
    #[arg(value_name = "NS/NAME", value_parser = parse_job_ref)]
    pub(crate) job: JobRef,
    /// At most this many records (1 to 1000000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) limit: u32,
    /// Print JSON lines (one record per line) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `NAMESPACE/NAME`, both path segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobRef {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl JobRef {
    fn resource(&self) -> String {
        format!("ns/{}/{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for JobRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn parse_segment(s: &str) -> Result<String, String> {
    NodeName::parse(s)
        .map(|n| n.as_str().to_owned())
        .map_err(|e| format!("{s:?}: {e}"))
}

fn parse_job_ref(s: &str) -> Result<JobRef, String> {
    let Some((ns, name)) = s.split_once('/') else {
        return Err(format!("{s:?}: expected NAMESPACE/NAME"));
    };
    Ok(JobRef {
        namespace: parse_segment(ns)?,
        name: parse_segment(name)?,
    })
}

pub(crate) fn run(global: &GlobalArgs, cmd: JobCommand) -> Outcome {
    match cmd {
        JobCommand::Run(a) => {
            // The file is read and checked before anything is sent: exit 2 on a bad one.
            let job = read_job(&a.file)?;
            runtime()?.block_on(submit(global, job, a))
        }
        JobCommand::Status(a) => runtime()?.block_on(status(global, a)),
        JobCommand::List(a) => runtime()?.block_on(list(global, a)),
        JobCommand::Stop(a) => runtime()?.block_on(stop(global, a)),
        JobCommand::Logs(a) => runtime()?.block_on(logs::logs(global, a)),
        JobCommand::Exec(a) => runtime()?.block_on(exec::exec(global, a)),
        JobCommand::History(a) => runtime()?.block_on(super::audit::query_resource(
            global,
            a.job.resource(),
            a.limit,
            a.json,
        )),
    }
}

/// Reads at most [`MAX_JOB_FILE`] + 1 bytes of `file` (or stdin for `-`) and parses them.
fn read_job(file: &str) -> Result<pb::Job, Failure> {
    let mut bytes = Vec::new();
    let read = if file == "-" {
        std::io::stdin()
            .take(MAX_JOB_FILE as u64 + 1)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(Path::new(file))
            .and_then(|f| f.take(MAX_JOB_FILE as u64 + 1).read_to_end(&mut bytes))
    };
    let what = if file == "-" { "stdin" } else { file };
    read.map_err(|e| bad_input_msg(format!("reading {what}: {e}")))?;
    if bytes.len() > MAX_JOB_FILE {
        return Err(bad_input_msg(format!(
            "{what}: a job file is at most {MAX_JOB_FILE} bytes"
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| bad_input_msg(format!("{what}: a job file is UTF-8 text")))?;
    job_file::parse(&text).map_err(|e| bad_input_msg(format!("{what}: {e}")))
}

async fn submit(global: &GlobalArgs, job: pb::Job, a: JobRunArgs) -> Outcome {
    let what = format!("job {}/{}", job.namespace, job.name);
    let req = pb::SubmitJobRequest {
        job: Some(job),
        dry_run: a.dry_run,
    };
    let mut s = session(global)?;
    let reply = s
        .client
        .call(|mut c| {
            let req = req.clone();
            async move { c.submit_job(req).await }
        })
        .await
        .map_err(|e| {
            // The authority found the job itself invalid: that is bad input too (exit 2).
            if e.code() == Some(tonic::Code::InvalidArgument) {
                bad_input_msg(explain(&e, &what))
            } else {
                refused(e, &what)
            }
        })?;
    let st = reply
        .job
        .ok_or_else(|| failed(anyhow!("{what}: the authority's reply carries no job")))?;
    // A dry run also shows where the scheduler would put the tasks (reads only).
    let placement = if a.dry_run {
        Some(
            plan::placement(&mut s.client, &st)
                .await
                .map_err(|e| refused(e, &format!("{what}: placement")))?,
        )
    } else {
        None
    };
    s.refresh().await;
    if a.json {
        let mut v = status_json(&st);
        if let Some(p) = &placement {
            v["placement"] = p.as_ref().map_or(serde_json::Value::Null, plan::json);
        }
        println!("{v}");
    } else {
        for line in describe(&st) {
            println!("{line}");
        }
        if let Some(Some(p)) = &placement {
            println!();
            print_table(&plan::rows(p));
        }
    }
    if let Some(p) = &placement {
        eprintln!(
            "dry run: {what} is allowed and valid; it would be version {} (nothing committed)",
            st.version
        );
        match p {
            Some(p) => {
                for note in &p.notes {
                    eprintln!("note: {note}");
                }
                eprintln!(
                    "placement: {} placed, {} blocked, {} stopped",
                    p.place.len(),
                    p.blocked.len(),
                    p.stop.len()
                );
            }
            None => eprintln!(
                "note: the placement needs node:read on node (and sched:read on the job) to be \
                 shown"
            ),
        }
    } else {
        eprintln!("submitted: {what} version {}", st.version);
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(global: &GlobalArgs, a: JobShowArgs) -> Outcome {
    let what = format!("job {}", a.job);
    let req = pb::GetJobRequest {
        namespace: a.job.namespace.clone(),
        name: a.job.name.clone(),
    };
    let mut s = session(global)?;
    let reply = s
        .client
        .call(|mut c| {
            let req = req.clone();
            async move { c.get_job(req).await }
        })
        .await
        .map_err(|e| refused(e, &what))?;
    let st = reply
        .job
        .ok_or_else(|| failed(anyhow!("{what}: the authority's reply carries no job")))?;
    let list = pb::ListAllocsRequest {
        namespace: a.job.namespace.clone(),
        job: a.job.name.clone(),
        node: String::new(),
    };
    let allocs = s
        .client
        .call(|mut c| {
            let req = list.clone();
            async move { c.list_allocs(req).await }
        })
        .await
        .map_err(|e| refused(e, &format!("{what}: allocations")))?;
    let live = if allocs.allocs.is_empty() {
        None
    } else {
        node_liveness(&mut s.client).await
    };
    s.refresh().await;
    let node_live = |a: &pb::Alloc| live.as_ref().and_then(|m| m.get(&a.node).copied());
    if a.json {
        let mut v = status_json(&st);
        v["allocs"] = serde_json::Value::Array(
            allocs
                .allocs
                .iter()
                .map(|x| {
                    let mut j = alloc_json(x);
                    j["node_live"] = node_live(x).into();
                    j
                })
                .collect(),
        );
        v["allocs_truncated"] = allocs.truncated.into();
        println!("{v}");
    } else {
        for line in describe(&st) {
            println!("{line}");
        }
        println!();
        if allocs.allocs.is_empty() {
            println!("no allocations");
        } else {
            print_table(&alloc_rows(&allocs.allocs, &node_live));
        }
        if live.is_none() && !allocs.allocs.is_empty() {
            eprintln!("note: node liveness needs node:read on node");
        }
        if allocs.truncated {
            eprintln!("note: more allocations than one reply holds; the list is cut");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn desired_name(d: i32) -> &'static str {
    match pb::AllocDesired::try_from(d) {
        Ok(pb::AllocDesired::Run) => "run",
        Ok(pb::AllocDesired::Stop) => "stop",
        _ => "?",
    }
}

fn state_name(s: i32) -> &'static str {
    match pb::AllocState::try_from(s) {
        Ok(pb::AllocState::Pending) => "pending",
        Ok(pb::AllocState::Running) => "running",
        Ok(pb::AllocState::Exited) => "exited",
        Ok(pb::AllocState::Failed) => "failed",
        Ok(pb::AllocState::Lost) => "lost",
        Ok(pb::AllocState::Stopped) => "stopped",
        _ => "?",
    }
}

fn alloc_json(a: &pb::Alloc) -> serde_json::Value {
    serde_json::json!({
        "id": a.id,
        "index": a.index,
        "node": a.node,
        "job_version": a.job_version,
        "desired": desired_name(a.desired),
        "state": state_name(a.state),
        "exit_code": a.exit_code,
        "restarts": a.restarts,
        "message": a.message,
        "created_ms": a.created_ms,
        "updated_ms": a.updated_ms,
    })
}

/// Each node's liveness (its agent's feed is open), or `None` when the caller may not read node
/// health or it could not be read: `job status` then shows allocations without it.
async fn node_liveness(
    client: &mut ringzero_proto::client::AuthorityClient,
) -> Option<std::collections::HashMap<String, bool>> {
    if !may_read_nodes(client) {
        return None;
    }
    let health = client
        .call(|mut c| async move { c.list_node_health(pb::ListNodeHealthRequest {}).await })
        .await
        .ok()?;
    Some(health.nodes.into_iter().map(|n| (n.name, n.live)).collect())
}

/// Whether the caller's token grants `node:read` on `node`, read from its authority block
/// without verifying it: only so that a caller who may not read node health is not refused —
/// and audited as a denial — on every `job status` and dry run. The authority still decides.
fn may_read_nodes(client: &ringzero_proto::client::AuthorityClient) -> bool {
    let Some(token) = client.token() else {
        // No token: an mTLS-only caller; let the authority answer.
        return true;
    };
    let Ok(view) = ringzero_policy::token::inspect(token) else {
        return true;
    };
    let Ok(node) = ringzero_policy::Resource::parse("node") else {
        return true;
    };
    view.rights.iter().any(|r| {
        r.operation == ringzero_policy::Operation::NodeRead.as_str()
            && ringzero_policy::Resource::parse(&r.prefix).is_ok_and(|p| p.covers(&node))
    })
}

/// The allocations' table; `live` says whether an allocation's node is live (`None`: unknown).
fn alloc_rows(
    allocs: &[pb::Alloc],
    live: &impl Fn(&pb::Alloc) -> Option<bool>,
) -> Vec<[String; 9]> {
    let mut rows = vec![
        [
            "ID",
            "INDEX",
            "NODE",
            "NODE LIVE",
            "DESIRED",
            "STATE",
            "EXIT",
            "RESTARTS",
            "UPDATED",
        ]
        .map(str::to_owned),
    ];
    let mut sorted: Vec<&pb::Alloc> = allocs.iter().collect();
    sorted.sort_by(|a, b| (a.index, &a.id).cmp(&(b.index, &b.id)));
    for a in sorted {
        rows.push([
            esc(&a.id),
            a.index.to_string(),
            esc(&a.node),
            match live(a) {
                Some(true) => "yes".to_owned(),
                Some(false) => "no".to_owned(),
                None => "-".to_owned(),
            },
            desired_name(a.desired).to_owned(),
            state_name(a.state).to_owned(),
            a.exit_code
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            a.restarts.to_string(),
            format_ms(a.updated_ms),
        ]);
    }
    rows
}

async fn list(global: &GlobalArgs, a: JobListArgs) -> Outcome {
    let scope = a
        .namespace
        .as_ref()
        .map_or_else(String::new, |ns| format!("ns/{ns}"));
    let mut s = session(global)?;
    let reply = s
        .client
        .call(|mut c| {
            let scope = scope.clone();
            async move { c.list_jobs(pb::ListJobsRequest { scope }).await }
        })
        .await
        .map_err(|e| refused(e, "job list"))?;
    s.refresh().await;
    if a.json {
        println!(
            "{}",
            serde_json::Value::Array(reply.jobs.iter().map(status_json).collect())
        );
    } else {
        if reply.jobs.is_empty() {
            eprintln!("no jobs");
        }
        print_table(&job_rows(&reply.jobs));
    }
    Ok(ExitCode::SUCCESS)
}

async fn stop(global: &GlobalArgs, a: JobStopArgs) -> Outcome {
    let what = format!("job {}", a.job);
    let mut s = session(global)?;
    // Stop first (idempotent), then purge: a purge only ever deletes a stopped job.
    for purge in [false, true].into_iter().take(if a.purge { 2 } else { 1 }) {
        let req = pb::StopJobRequest {
            namespace: a.job.namespace.clone(),
            name: a.job.name.clone(),
            purge,
        };
        s.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.stop_job(req).await }
            })
            .await
            .map_err(|e| refused(e, &what))?;
    }
    s.refresh().await;
    if a.purge {
        eprintln!("purged: {what} is stopped and its record deleted");
    } else {
        eprintln!("stopped: {what} (its record is kept; `job stop --purge` deletes it)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Text from the server, with control characters escaped so it cannot rewrite the terminal.
fn esc(s: &str) -> String {
    s.escape_debug().to_string()
}

fn pairs(m: &std::collections::HashMap<String, String>) -> String {
    let mut v: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
        .collect();
    v.sort();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(" ")
    }
}

/// `status` and `run` as lines of `field  value`.
fn describe(st: &pb::JobStatus) -> Vec<String> {
    let j = st.job.clone().unwrap_or_default();
    let c = j.constraints.clone().unwrap_or_default();
    let r = j.restart.clone().unwrap_or_default();
    let mut command = vec![esc(&j.command)];
    command.extend(j.args.iter().map(|a| format!("{:?}", a)));
    let opt = |v: Option<u32>, unit: &str| v.map_or_else(|| "-".into(), |v| format!("{v}{unit}"));
    vec![
        format!("job        {}/{}", esc(&j.namespace), esc(&j.name)),
        format!("version    {}", st.version),
        format!("desired    {}", esc(&st.desired)),
        format!(
            "submitted  {} by {}",
            format_ms(st.submitted_at_ms),
            esc(&st.submitted_by)
        ),
        format!("identity   {}", esc(&j.spiffe_id)),
        format!("run as     uid {} gid {}", j.uid, j.gid),
        format!("command    {}", command.join(" ")),
        format!(
            "workdir    {}",
            if j.workdir.is_empty() {
                "-".into()
            } else {
                esc(&j.workdir)
            }
        ),
        format!("env        {}", pairs(&j.env)),
        format!("count      {}", j.count),
        format!(
            "requests   cpu {} memory {}",
            opt(j.cpu_millis, "m"),
            opt(j.memory_mb, " MiB")
        ),
        format!(
            "nodes      {}",
            if c.nodes.is_empty() {
                "any".into()
            } else {
                esc(&c.nodes.join(", "))
            }
        ),
        format!("labels     {}", pairs(&c.labels)),
        format!(
            "restart    {} (at most {}, backoff {} ms)",
            if r.policy.is_empty() {
                "never".into()
            } else {
                esc(&r.policy)
            },
            r.max_restarts,
            r.backoff_ms
        ),
    ]
}

fn status_json(st: &pb::JobStatus) -> serde_json::Value {
    let j = st.job.clone().unwrap_or_default();
    let c = j.constraints.unwrap_or_default();
    let r = j.restart.unwrap_or_default();
    let sorted = |m: std::collections::HashMap<String, String>| {
        m.into_iter()
            .collect::<std::collections::BTreeMap<String, String>>()
    };
    serde_json::json!({
        "namespace": j.namespace,
        "name": j.name,
        "version": st.version,
        "desired": st.desired,
        "submitted_by": st.submitted_by,
        "submitted_at_ms": st.submitted_at_ms,
        "spiffe_id": j.spiffe_id,
        "command": j.command,
        "args": j.args,
        "env": sorted(j.env),
        "workdir": (!j.workdir.is_empty()).then_some(j.workdir),
        "uid": j.uid,
        "gid": j.gid,
        "count": j.count,
        "cpu_millis": j.cpu_millis,
        "memory_mb": j.memory_mb,
        "constraints": { "nodes": c.nodes, "labels": sorted(c.labels) },
        "restart": {
            "policy": r.policy,
            "max_restarts": r.max_restarts,
            "backoff_ms": r.backoff_ms,
        },
    })
}

fn job_rows(jobs: &[pb::JobStatus]) -> Vec<[String; 8]> {
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "VERSION",
            "DESIRED",
            "COUNT",
            "IDENTITY",
            "SUBMITTED",
            "BY",
        ]
        .map(str::to_owned),
    ];
    for st in jobs {
        let j = st.job.clone().unwrap_or_default();
        rows.push([
            esc(&j.namespace),
            esc(&j.name),
            st.version.to_string(),
            esc(&st.desired),
            j.count.to_string(),
            esc(&j.spiffe_id),
            format_ms(st.submitted_at_ms),
            esc(&st.submitted_by),
        ]);
    }
    rows
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn job_refs_and_output() {
        assert_eq!(
            parse_job_ref("shop/web").unwrap(),
            JobRef {
                namespace: "shop".into(),
                name: "web".into()
            }
        );
        for bad in ["shop", "shop/", "/web", "shop/web/x", "a b/c", "../x"] {
            assert!(parse_job_ref(bad).is_err(), "{bad}");
        }
        let st = pb::JobStatus {
            job: Some(pb::Job {
                namespace: "shop".into(),
                name: "web".into(),
                command: "/bin/web".into(),
                args: vec!["a b".into()],
                spiffe_id: "spiffe://td/ns/shop/web\u{1b}[2J".into(),
                count: 2,
                ..Default::default()
            }),
            version: 3,
            desired: "running".into(),
            submitted_by: "spiffe://td/user/carol".into(),
            submitted_at_ms: 0,
        };
        let lines = describe(&st);
        assert!(lines.iter().any(|l| l.contains("\"a b\"")), "{lines:?}");
        assert!(lines.iter().all(|l| !l.contains('\u{1b}')), "{lines:?}");
        let rows = job_rows(std::slice::from_ref(&st));
        assert_eq!(rows[1][2], "3");
        assert_eq!(status_json(&st)["version"], 3);
        assert_eq!(status_json(&st)["workdir"], serde_json::Value::Null);
    }
}
