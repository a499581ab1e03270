//! `ringzero job logs`: finds the job's allocations and their nodes' node-API addresses through
//! the authority (`ListAllocs`), then reads each log **directly** from the agent that runs it,
//! over mTLS with the caller's own SVID and capability — no proxy, so the caller stays the
//! peer its token may be bound to — and accepts only that node's SVID
//! (`spiffe://TD/ringzero/node/<node>`).

use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use clap::Args;
use ringzero_proto::node::node_client::NodeClient;
use ringzero_proto::node::{LogStream, ReadLogsRequest};
use ringzero_proto::pb;

use super::{JobRef, parse_job_ref};
use crate::args::parse_duration;
use crate::cli::GlobalArgs;
use crate::cmd::session::{Session, refused, session};
use crate::failure::{Failure, Outcome, bad_input_msg, failed};

/// With `--all`, a line longer than this is cut in pieces (each prefixed).
const MAX_LINE: usize = 256 * 1024;

/// How long to wait for the agent's connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub(crate) struct JobLogsArgs {
    /// The job, as NAMESPACE/NAME.
    #[arg(value_name = "NS/NAME", value_parser = parse_job_ref)]
    pub(crate) job: JobRef,
    /// The allocation (needed when the job has several, unless --all).
    #[arg(long, value_name = "ID", conflicts_with = "all")]
    pub(crate) alloc: Option<String>,
    /// Every allocation of the job at once, each read from its own node, each line prefixed
    /// with `[ALLOC] `.
    #[arg(long)]
    pub(crate) all: bool,
    /// Read stderr instead of stdout.
    #[arg(long)]
    pub(crate) stderr: bool,
    /// Keep printing what the task writes (until interrupted, or the allocation leaves its
    /// node).
    #[arg(short = 'f', long)]
    pub(crate) follow: bool,
    /// Only the last N lines (at most 100000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) tail: Option<u32>,
    /// Only log files written within DURATION (30s, 10m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) since: Option<Duration>,
}

pub(crate) const LOGS_HELP: &str = "\
Needs logs:read on ns/NS/NAME, checked by the agent of the allocation's node (and sched:read on
it to find the allocation). The CLI connects to that agent directly, with your SVID and
capability; the agent records the read in the audit log before it sends a byte, and refuses
while it cannot (authority unreachable) or while its revocation feed is over 30 s old.
Logs outlive the task: agents keep them for 24 h after the allocation stops.

With --all, every allocation is read at once (each from its own node) and each line is
prefixed with [ALLOC]; an allocation that cannot be read is reported on stderr and the exit
code is 1, while the others go on.

Examples:
  ringzero job logs shop/web --tail 100
  ringzero job logs shop/web --all -f --tail 10
  ringzero job logs shop/web --alloc k3j9x0c2m4n6p8q1 --stderr -f
  ringzero job logs shop/web --since 1h";

/// A client of the node API with the caller's bearer capability.
pub(crate) type Client =
    NodeClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

/// Adds `authorization: Bearer …` to each call.
#[derive(Debug, Clone)]
pub(crate) struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Finds the job's allocation (the one named, or its only one) through the authority and
/// connects to the node API of its agent, accepting only that node's SVID.
pub(super) async fn connect(
    s: &mut Session,
    job: &JobRef,
    alloc: Option<&str>,
) -> Result<(Client, pb::Alloc), Failure> {
    let what = format!("job {job}");
    let allocs = list_allocs(s, job).await?;
    let alloc = match alloc {
        Some(id) => allocs
            .into_iter()
            .find(|x| x.id == *id)
            .ok_or_else(|| failed(anyhow!("{what} has no allocation {id}")))?,
        None => {
            let mut allocs = allocs;
            match allocs.len() {
                0 => return Err(failed(anyhow!("{what} has no allocations"))),
                1 => allocs.remove(0),
                _ => {
                    let ids: Vec<String> = allocs
                        .iter()
                        .map(|x| format!("{} (node {})", x.id, x.node))
                        .collect();
                    return Err(bad_input_msg(format!(
                        "{what} has {} allocations; pick one with --alloc: {}",
                        ids.len(),
                        ids.join(", ")
                    )));
                }
            }
        }
    };
    Ok((dial_alloc(s, &alloc)?, alloc))
}

/// The job's allocations, through the authority.
async fn list_allocs(s: &mut Session, job: &JobRef) -> Result<Vec<pb::Alloc>, Failure> {
    let list = pb::ListAllocsRequest {
        namespace: job.namespace.clone(),
        job: job.name.clone(),
        node: String::new(),
    };
    Ok(s.client
        .call(|mut c| {
            let req = list.clone();
            async move { c.list_allocs(req).await }
        })
        .await
        .map_err(|e| refused(e, &format!("job {job}: allocations")))?
        .allocs)
}

/// Connects to the node API of the node that runs `alloc`.
fn dial_alloc(s: &Session, alloc: &pb::Alloc) -> Result<Client, Failure> {
    if alloc.node_api.is_empty() {
        return Err(failed(anyhow!(
            "allocation {} is on node {}, whose agent announces no node API (not connected, or \
             started without --node-api)",
            alloc.id,
            alloc.node
        )));
    }
    dial(s, &alloc.node, &alloc.node_api)
}

/// Connects to `node`'s node API at `addr` with the caller's SVID and the capability the session
/// presents (`--token`, already read once by [`session`], overriding the profile's), accepting
/// only `spiffe://TD/ringzero/node/<node>`.
pub(crate) fn dial(s: &Session, node: &str, addr: &str) -> Result<Client, Failure> {
    let mut creds = s
        .profile
        .credentials()
        .map_err(|e| crate::failure::bad_input(anyhow!("profile: {e}")))?;
    // Not `read_secret` again: `--token -` has consumed stdin already.
    creds.token = s.client.token().map(str::to_owned);
    let server = ringzero_policy::SpiffeIdPattern::parse(&format!(
        "spiffe://{}/ringzero/node/{}",
        creds.trust_domain, node
    ))
    .map_err(|e| failed(anyhow!("node {}: {e}", node)))?;
    let tls = creds
        .tls_to(server)
        .map_err(|e| failed(anyhow!("TLS: {e}")))?;
    let channel = ringzero_proto::transport::channel(addr, tls, CONNECT_TIMEOUT)
        .map_err(|e| failed(anyhow!("node {} at {}: {e}", node, addr)))?;
    let bearer = match &creds.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| bad_input_msg("the token has characters not allowed in metadata"))?,
        ),
        None => None,
    };
    Ok(NodeClient::with_interceptor(channel, Bearer(bearer)))
}

/// The read `a` asks for, of allocation `alloc_id`.
fn request(a: &JobLogsArgs, alloc_id: &str) -> ReadLogsRequest {
    let since_ms = a
        .since
        .and_then(|d| SystemTime::now().checked_sub(d))
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    ReadLogsRequest {
        alloc_id: alloc_id.to_owned(),
        stream: if a.stderr {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        }
        .into(),
        tail_lines: a.tail.unwrap_or(0),
        since_ms,
        follow: a.follow,
    }
}

pub(crate) async fn logs(global: &GlobalArgs, a: JobLogsArgs) -> Outcome {
    let mut s = session(global)?;
    if a.all {
        return logs_all(&mut s, &a).await;
    }
    let (mut client, alloc) = connect(&mut s, &a.job, a.alloc.as_deref()).await?;
    let req = request(&a, &alloc.id);
    let on = format!("node {} ({})", alloc.node, alloc.node_api);
    let mut stream = client
        .read_logs(req)
        .await
        .map_err(|st| denied(&st, &format!("logs of allocation {}", alloc.id), &on))?
        .into_inner();
    s.refresh().await;
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                if out
                    .write_all(&chunk.data)
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    // A closed stdout (`| head`): done.
                    return Ok(std::process::ExitCode::SUCCESS);
                }
            }
            Ok(None) => return Ok(std::process::ExitCode::SUCCESS),
            Err(st) => {
                return Err(denied(
                    &st,
                    &format!("logs of allocation {}", alloc.id),
                    &on,
                ));
            }
        }
    }
}

/// `job logs --all`: every allocation read at once, each from its own node; lines are
/// prefixed with `[ALLOC] ` and written whole, so the allocations' lines interleave but never
/// mix. A failed allocation is reported on stderr; the others go on.
async fn logs_all(s: &mut Session, a: &JobLogsArgs) -> Outcome {
    use std::io::Write;
    let allocs = list_allocs(s, &a.job).await?;
    if allocs.is_empty() {
        return Err(failed(anyhow!("job {} has no allocations", a.job)));
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Result<Vec<u8>, String>)>(64);
    let mut failures = 0usize;
    for alloc in allocs {
        let mut client = match dial_alloc(s, &alloc) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ringzero: [{}] {:#}", alloc.id, e.error);
                failures += 1;
                continue;
            }
        };
        let (tx, req) = (tx.clone(), request(a, &alloc.id));
        tokio::spawn(async move {
            let on = format!("node {} ({})", alloc.node, alloc.node_api);
            let what = format!("logs of allocation {}", alloc.id);
            let mut stream = match client.read_logs(req).await {
                Ok(r) => r.into_inner(),
                Err(st) => {
                    let _ = tx
                        .send((
                            alloc.id,
                            Err(format!("{:#}", denied(&st, &what, &on).error)),
                        ))
                        .await;
                    return;
                }
            };
            let mut pending: Vec<u8> = Vec::new();
            loop {
                match stream.message().await {
                    Ok(Some(chunk)) => {
                        pending.extend_from_slice(&chunk.data);
                        let whole = match pending.iter().rposition(|&b| b == b'\n') {
                            Some(end) => {
                                let rest = pending.split_off(end + 1);
                                std::mem::replace(&mut pending, rest)
                            }
                            // A line longer than this is cut, so memory stays bounded.
                            None if pending.len() > MAX_LINE => {
                                let mut cut = std::mem::take(&mut pending);
                                cut.push(b'\n');
                                cut
                            }
                            None => continue,
                        };
                        if tx.send((alloc.id.clone(), Ok(whole))).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(st) => {
                        let _ = tx
                            .send((
                                alloc.id.clone(),
                                Err(format!("{:#}", denied(&st, &what, &on).error)),
                            ))
                            .await;
                        return;
                    }
                }
            }
            if !pending.is_empty() {
                pending.push(b'\n');
                let _ = tx.send((alloc.id, Ok(pending))).await;
            }
        });
    }
    drop(tx);
    s.refresh().await;
    while let Some((id, got)) = rx.recv().await {
        match got {
            Ok(lines) => {
                let mut out = std::io::stdout().lock();
                let mut text = Vec::with_capacity(lines.len() + 32);
                for line in lines.split_inclusive(|&b| b == b'\n') {
                    text.extend_from_slice(format!("[{id}] ").as_bytes());
                    text.extend_from_slice(line);
                }
                if out.write_all(&text).and_then(|()| out.flush()).is_err() {
                    return Ok(std::process::ExitCode::SUCCESS);
                }
            }
            Err(e) => {
                eprintln!("ringzero: [{id}] {e}");
                failures += 1;
            }
        }
    }
    Ok(if failures == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// `what` names the call and its allocation ("logs of allocation ID").
pub(super) fn denied(st: &tonic::Status, what: &str, on: &str) -> Failure {
    let kind = match st.code() {
        tonic::Code::PermissionDenied => "denied",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::NotFound => "not found",
        tonic::Code::ResourceExhausted => "busy",
        _ => "failed",
    };
    let reach = if st.code() == tonic::Code::Unavailable && st.message().contains("transport") {
        " (node unreachable)"
    } else {
        ""
    };
    failed(anyhow!("{what} on {on}: {kind}{reach}: {}", st.message()))
}
