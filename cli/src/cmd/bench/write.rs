//! `ringzero bench write`: N closed-loop clients, each with its own connection, calling
//! `CreateJoinToken` back to back — a real write: gated on the leader, audited, replicated —
//! for a warmup and then a measured window.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use ring::rand::{SecureRandom, SystemRandom};
use ringzero_proto::client::{AuthorityClient, ClientError};
use ringzero_proto::pb;
use ringzero_telemetry::load::{CpuProbe, Report, Shape, closed_loop};

use crate::args::parse_duration;
use crate::cli::GlobalArgs;
use crate::cmd::session::session;
use crate::failure::{Failure, Outcome, failed};

pub(super) const HELP: &str = "\
Each client has its own connection (mTLS with the profile's SVID, the profile's capability or
--token) and calls CreateJoinToken back to back: a join token for an agent node named
bench-<run>-<client>-<i>, redeemable for 1 second. It is a real write — gated on the leader
(node:enroll), audited, replicated by Raft and made durable before it is answered — so the rate is
bounded by the same gate as every client's. The authority purges expired join tokens: a run leaves
only its audit records behind, one per write (and per refusal). Mind that before running it
against a production cluster.

Calls completing during the warmup (default 1s; it also opens the connections) or after the window
are not counted. Failures are counted by gRPC code and do not stop the run; it fails (exit 1) only
if no write succeeded.

CPU: for each authority address that is local, the process listening on it is found through /proc
(/proc/net/tcp, /proc/*/fd) and its user+system time over the window is shown, with µs per write;
n/a when the node is remote or another user's process. This process's own CPU is shown too.
Progress goes to stderr, the figures to stdout (one JSON object with --json).

Examples:
  ringzero --profile admin.profile bench write --clients 16 --duration 10s
  ringzero bench write --clients 64 --duration 30s --warmup 5s --json > run.json";

/// The most closed-loop clients (each holds a connection to the leader).
const MAX_CLIENTS: u16 = 1024;

#[derive(Debug, Args)]
pub(crate) struct WriteArgs {
    /// Closed-loop clients, each with its own connection (1–1024).
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_CLIENTS)))]
    pub(crate) clients: u16,
    /// How long to measure, after the warmup (100ms to 1h).
    #[arg(long, value_parser = parse_window, default_value = "10s")]
    pub(crate) duration: Duration,
    /// How long to call before measuring (0s to 10m).
    #[arg(long, value_parser = parse_warmup, default_value = "1s")]
    pub(crate) warmup: Duration,
    /// Print one JSON object with every figure.
    #[arg(long)]
    pub(crate) json: bool,
}

fn parse_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err("must be from 100ms to 1h".into());
    }
    Ok(d)
}

fn parse_warmup(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > Duration::from_secs(600) {
        return Err("must be at most 10m".into());
    }
    Ok(d)
}

/// The node name of write `i` of client `client`: unique per run, and a valid node name
/// (at most 6 + 8 + 1 + 4 + 1 + 20 = 40 of the 63 bytes allowed).
fn node_name(run: &str, client: usize, i: u64) -> String {
    format!("bench-{run}-{client}-{i}")
}

/// The class a failed call is counted under: its gRPC code, or `Transport` when no
/// authority answered.
fn error_class(e: &ClientError) -> String {
    match (e.code(), e) {
        (Some(code), _) => format!("{code:?}"),
        (None, ClientError::Transport(_)) => "Transport".into(),
        (None, _) => "Client".into(),
    }
}

/// One write: an agent join token of 1 s for `name`.
async fn write(mut c: AuthorityClient, name: String) -> (AuthorityClient, Result<(), String>) {
    let r = c
        .call(|mut g| {
            let req = pb::CreateJoinTokenRequest {
                purpose: "agent".into(),
                node_name: name.clone(),
                ttl_seconds: 1,
                namespace: String::new(),
            };
            async move { g.create_join_token(req).await }
        })
        .await;
    (c, r.map(|_| ()).map_err(|e| error_class(&e)))
}

/// Every address the session may call and every member the refreshed profile names: the CPU
/// probe looks for each one's process.
fn probe_addresses(global: &GlobalArgs, profile_addrs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = global.authority.clone();
    for a in profile_addrs {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

/// The Raft term the cluster reports (`Status`), if the caller may ask.
async fn raft_term(c: &mut AuthorityClient) -> Option<u64> {
    c.call(|mut g| async move { g.status(pb::StatusRequest {}).await })
        .await
        .ok()
        .map(|r| r.term)
}

pub(super) async fn run(global: &GlobalArgs, a: WriteArgs) -> Outcome {
    let mut s = session(global)?;
    // Learn every member's address (for the CPU probe) and check the credentials work.
    s.refresh().await;
    let mut id = [0u8; 4];
    SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| failed(anyhow!("no randomness for the run id")))?;
    let run_id: Arc<str> = hex::encode(id).into();
    let clients = (0..a.clients)
        .map(|_| s.new_client(global))
        .collect::<Result<Vec<_>, Failure>>()?;
    let probe = CpuProbe::new(&probe_addresses(global, &s.profile.authorities));
    let shape = Shape {
        warmup: a.warmup,
        duration: a.duration,
    };
    eprintln!(
        "bench write {run_id}: {} clients, {} warmup + {} measured, {} authority address(es), {} local process(es) found",
        a.clients,
        humantime::format_duration(a.warmup),
        humantime::format_duration(a.duration),
        probe.pids().len(),
        probe.pids().iter().flatten().count(),
    );
    let term_before = raft_term(&mut s.client).await;
    let run = run_id.clone();
    let (summary, before, after) = closed_loop(
        clients,
        shape,
        move |c, client, i| write(c, node_name(&run, client, i)),
        || probe.sample(),
    )
    .await;
    let terms = match (term_before, raft_term(&mut s.client).await) {
        (Some(b), Some(a)) => Some((b, a)),
        _ => None,
    };
    let report = Report {
        target: "ringzero".into(),
        clients: usize::from(a.clients),
        shape,
        cpu: probe.usage(&before, &after),
        summary,
        terms,
    };
    if report.summary.calls == 0 {
        return Err(failed(anyhow!(
            "no write succeeded in the window:\n{}",
            report.render_text().trim_end()
        )));
    }
    let text = if a.json {
        format!("{}\n", report.to_json())
    } else {
        report.render_text()
    };
    // A closed pipe ends the output quietly.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use ringzero_policy::NodeName;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn the_longest_node_name_is_valid() {
        let name = node_name("ffffffff", usize::from(MAX_CLIENTS) - 1, u64::MAX);
        assert!(NodeName::parse(&name).is_ok(), "{name}");
        assert_eq!(name.len(), 40);
    }

    #[test]
    fn failures_are_classed_by_code() {
        let status = ClientError::from(tonic::Status::permission_denied("no"));
        assert_eq!(error_class(&status), "PermissionDenied");
        assert_eq!(
            error_class(&ClientError::Transport("x".into())),
            "Transport"
        );
        assert_eq!(error_class(&ClientError::NoAddress), "Client");
    }

    fn parse(args: &[&str]) -> Result<WriteArgs, clap::Error> {
        let mut argv = vec!["ringzero", "bench", "write"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv)?;
        match cli.command {
            Command::Bench(crate::cmd::bench::BenchCommand::Write(a)) => Ok(a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_are_bounded() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            (a.clients, a.duration, a.warmup),
            (1, Duration::from_secs(10), Duration::from_secs(1))
        );
        let a = parse(&[
            "--clients",
            "64",
            "--duration",
            "3s",
            "--warmup",
            "0s",
            "--json",
        ])
        .unwrap();
        assert_eq!(
            (a.clients, a.duration, a.warmup, a.json),
            (64, Duration::from_secs(3), Duration::ZERO, true)
        );
        for bad in [
            &["--clients", "0"][..],
            &["--clients", "1025"],
            &["--clients", "-1"],
            &["--duration", "0s"],
            &["--duration", "2h"],
            &["--duration", "soon"],
            &["--warmup", "11m"],
        ] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            // clap exits 2 on usage errors, as EXIT_CODES says.
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn probe_looks_at_overrides_and_members() {
        let global = crate::cli::GlobalArgs {
            profile: None,
            authority: vec!["127.0.0.1:1".into()],
            token: None,
            log_json: false,
        };
        let members = ["127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()];
        assert_eq!(
            probe_addresses(&global, &members),
            vec!["127.0.0.1:1", "127.0.0.1:2"]
        );
    }
}
