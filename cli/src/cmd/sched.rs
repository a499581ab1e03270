//! `ringzero sched …`: the scheduler daemon (`ringzero_sched::daemon`) and its identity.
//!
//! - `run` with its own identity (`--data-dir D`, enrolled once with `--join-token`, renewed
//!   by itself: `identity`), or with the global profile, authority and token (a user with the
//!   `scheduler` role, or an admin); `--once` plans once and prints the plan, `--dry-run`
//!   writes nothing.
//! - `token`, `list`, `remove`: enrolling schedulers, listing them, cutting one off (`admin`).

mod admin;
mod identity;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use ringzero_sched::daemon::{self, Config, PassReport};

use super::session::{print_table, runtime, session};
use crate::args::{JsonArgs, parse_duration};
use crate::cli::GlobalArgs;
use crate::daemon::{init_logging, shutdown_signal};
use crate::failure::{Failure, Outcome, bad_input_msg, failed};

#[derive(Debug, Subcommand)]
pub(crate) enum SchedCommand {
    /// Run the scheduler: place, stop and mark lost allocations while holding the lease.
    #[command(after_help = RUN_HELP)]
    Run(SchedRunArgs),
    /// Issue a one-time token enrolling a scheduler with its own identity (prints it alone on
    /// the last line of stdout).
    #[command(after_help = TOKEN_HELP)]
    Token(admin::SchedTokenArgs),
    /// List the enrolled schedulers: name, namespace (* for the whole cluster), status.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile sched list
  ringzero sched list --json")]
    List(JsonArgs),
    /// Remove a scheduler: its certificates and capabilities (and tokens minted from them) are
    /// revoked; it fails at its next call.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile sched remove sched")]
    Remove(admin::SchedNameArg),
}

const TOKEN_HELP: &str = "\
Needs cluster:admin: the scheduler it enrolls may place allocations (job:launch) in its
namespace, or everywhere without --namespace. The token is pinned to the cluster's CA like a
node's join token and works once; the scheduler's SVID is spiffe://TD/ringzero/sched/NAME and
its capability holds exactly the built-in scheduler role's rights, bound to that SVID.

Examples:
  ringzero --profile admin.profile sched token > sched.token
  ringzero sched token --name sched-shop --namespace shop --ttl 1h > sched-shop.token
  ringzero sched token --json";

const RUN_HELP: &str = "\
The scheduler reads jobs (ListJobs), allocations (ListAllocs) and node health (ListNodeHealth),
plans (ringzero_sched::plan) and writes the plan: MarkAllocsLost, PlaceAllocs, StopAllocs and
RemoveAllocs, in batches of at most 1,000. It plans again at once while placements remain,
else every --interval. Only the holder of the scheduler lease plans: run two for failover; the
standby takes over within --lease-ttl of the holder's death. SIGTERM releases the lease, exit 0.

A node is called lost (its allocations marked LOST, stopped and placed elsewhere) only when its
entry feed has been down for --lost-after, counted from both its last sign of life and the time
the current authority leader began tracking feeds.

Credentials, either:
- its own identity (spiffe://TD/ringzero/sched/NAME) in --data-dir: the first start redeems a
  token from `ringzero sched token` (the pin is checked before the secret is sent; the key is
  generated here), later starts reuse the directory (0700; profile.toml 0600). The credentials
  last 1h and are renewed at half-life. `ringzero --profile DIR/profile.toml …` presents them.
- or a profile (--profile) of a principal with the built-in scheduler role (sched:read,
  job:launch, node:read on node; --namespace confines it to one namespace), e.g. a user from
  `ringzero user invite sched1 --role scheduler` and `ringzero login`.

Examples:
  ringzero sched run --join-token @sched.token --authority 10.0.0.1:7000 --data-dir /var/lib/ringzero/sched
  ringzero sched run --data-dir /var/lib/ringzero/sched          # a restart: no token needed
  ringzero --profile sched1.profile sched run
  ringzero --profile sched1.profile sched run --interval 2s --lost-after 30s --name sched-a
  ringzero --profile sched1.profile sched run --once --dry-run      # show what it would do
  ringzero --profile sched1.profile sched run --once --json";

#[derive(Debug, Args)]
pub(crate) struct SchedRunArgs {
    /// Run with the scheduler's own identity kept in DIR (created 0700) instead of --profile.
    #[arg(long, value_name = "DIR", env = "RINGZERO_SCHED_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// The one-time token from `ringzero sched token`, for the first start with --data-dir
    /// (TOKEN, @FILE or -).
    #[arg(long, value_name = "TOKEN|@FILE|-", requires = "data_dir")]
    pub(crate) join_token: Option<String>,
    /// With --data-dir: the lifetime asked for the credentials (10s to 1h; renewed at half).
    #[arg(long, default_value = "1h", value_parser = parse_credential_ttl)]
    pub(crate) credential_ttl: Duration,
    /// Between passes when nothing is left to place.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) interval: Duration,
    /// How long a node's feed must be down before its allocations are marked lost.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub(crate) lost_after: Duration,
    /// The scheduler lease's time to live (renewed every third of it; 1s to 5m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) lease_ttl: Duration,
    /// The lease holder's name (default: <hostname>-<pid>-<random>).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// Schedule only this namespace's jobs (the role's namespace), with its own lease.
    #[arg(long, value_name = "NS")]
    pub(crate) namespace: Option<String>,
    /// One pass: plan, write (unless --dry-run), print the plan, exit.
    #[arg(long)]
    pub(crate) once: bool,
    /// Compute and print the plan; write nothing and take no lease (implies --once).
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// With --once: print the plan as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Serve /live, /ready and /metrics (Prometheus text, unauthenticated) on ADDR, such as
    /// 127.0.0.1:9092. Off unless given. /ready: the authority answered a lease request
    /// within twice the lease ttl.
    #[arg(long, value_name = "ADDR", conflicts_with = "once")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
}

pub(crate) fn run(global: &GlobalArgs, cmd: SchedCommand) -> Outcome {
    match cmd {
        SchedCommand::Run(a) => run_sched(global, a),
        SchedCommand::Token(a) => admin::token(global, a),
        SchedCommand::List(a) => admin::list(global, a),
        SchedCommand::Remove(a) => admin::remove(global, a),
    }
}

/// A scheduler credential's lifetime: 10s to 1h (the authority grants at most 1h).
fn parse_credential_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(10) || d > Duration::from_secs(3600) {
        return Err("must be from 10s to 1h".into());
    }
    Ok(d)
}

fn holder_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn config(a: &SchedRunArgs) -> Result<Config, Failure> {
    let mut errors = Vec::new();
    if a.interval.is_zero() {
        errors.push("--interval must be positive".to_string());
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&a.lease_ttl) {
        errors.push("--lease-ttl: 1s to 5m".to_string());
    }
    if let Some(n) = &a.name
        && !holder_ok(n)
    {
        errors.push("--name: 1 to 128 of [A-Za-z0-9._-]".to_string());
    }
    if let Some(ns) = &a.namespace
        && ringzero_policy::Resource::from_segments(&["ns", ns]).is_err()
    {
        errors.push(format!("--namespace {ns:?}: not a path segment"));
    }
    if a.json && !(a.once || a.dry_run) {
        errors.push("--json needs --once or --dry-run".to_string());
    }
    if !errors.is_empty() {
        return Err(bad_input_msg(errors.join("; ")));
    }
    let holder = match &a.name {
        Some(n) => n.clone(),
        None => daemon::default_holder().map_err(failed)?,
    };
    Ok(Config {
        interval: a.interval,
        lost_after: a.lost_after,
        lease_ttl: a.lease_ttl,
        holder,
        namespace: a.namespace.clone(),
        dry_run: a.dry_run,
        ..Config::default()
    })
}

fn run_sched(global: &GlobalArgs, a: SchedRunArgs) -> Outcome {
    let cfg = config(&a)?;
    if let Some(dir) = a.data_dir.clone() {
        return run_own_identity(global, a, cfg, &dir);
    }
    let s = session(global)?;
    let rt = runtime()?;
    if a.once || a.dry_run {
        return rt.block_on(async move {
            let mut client = s.client;
            let report = daemon::once(&mut client, &cfg)
                .await
                .map_err(|e| failed(anyhow!("{e}")))?;
            print_report(&report, a.json);
            Ok(ExitCode::SUCCESS)
        });
    }
    init_logging(global.log_json);
    rt.block_on(async move {
        serve_metrics(a.metrics, &cfg).await?;
        daemon::run(s.client, cfg, shutdown_signal())
            .await
            .map_err(|e| failed(anyhow!("{e}")))
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `sched run --data-dir D`: the scheduler's own identity, enrolled or loaded, renewed beside
/// the daemon.
fn run_own_identity(
    global: &GlobalArgs,
    a: SchedRunArgs,
    cfg: Config,
    dir: &std::path::Path,
) -> Outcome {
    if global.profile.is_some() || global.token.is_some() {
        return Err(bad_input_msg(
            "--data-dir runs with the scheduler's own credentials: drop --profile and --token",
        ));
    }
    let rt = runtime()?;
    rt.block_on(async move {
        let id = identity::load_or_enroll(
            dir,
            a.join_token.as_deref(),
            &global.authority,
            a.credential_ttl.as_secs(),
        )
        .await?;
        let mut client = id.client()?;
        if a.once || a.dry_run {
            let report = daemon::once(&mut client, &cfg)
                .await
                .map_err(|e| failed(anyhow!("{e}")))?;
            print_report(&report, a.json);
            return Ok(ExitCode::SUCCESS);
        }
        init_logging(global.log_json);
        serve_metrics(a.metrics, &cfg).await?;
        let (tx, rx) = tokio::sync::watch::channel(id.profile.clone());
        let renewal = tokio::spawn(id.renew_forever(tx));
        let result = daemon::run_renewed(client, cfg, shutdown_signal(), Some(rx)).await;
        renewal.abort();
        result.map_err(|e| failed(anyhow!("{e}")))?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Serves the scheduler's /live, /ready and /metrics on `addr`, when given.
async fn serve_metrics(addr: Option<std::net::SocketAddr>, cfg: &Config) -> Result<(), Failure> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let listener = crate::daemon::bind(&addr.to_string()).await?;
    tracing::info!(bound = ?listener.local_addr().ok(), "metrics endpoint listening");
    let health = daemon::SchedHealth {
        lease_ttl: cfg.lease_ttl,
    };
    tokio::spawn(ringzero_telemetry::serve(
        listener,
        std::sync::Arc::new(health),
    ));
    Ok(())
}

fn print_report(r: &PassReport, json: bool) {
    if json {
        let v = serde_json::json!({
            "written": r.written,
            "place": r.place.iter().map(|p| serde_json::json!({
                "id": p.id, "namespace": p.namespace, "job": p.job, "version": p.version,
                "index": p.index, "node": p.node,
            })).collect::<Vec<_>>(),
            "stop": r.stop,
            "lost": r.lost,
            "remove": r.remove,
            "blocked": r.blocked.iter().map(|b| serde_json::json!({
                "namespace": b.namespace, "job": b.job, "index": b.index, "reason": b.reason,
            })).collect::<Vec<_>>(),
            "deferred": r.deferred,
            "unreported": r.unreported,
            "nodes_in_grace": r.in_grace,
        });
        println!("{v}");
        return;
    }
    let mut rows = vec![[
        "ACTION".to_string(),
        "ALLOC".to_string(),
        "JOB".to_string(),
        "NODE / REASON".to_string(),
    ]];
    for p in &r.place {
        rows.push([
            "place".into(),
            p.id.clone(),
            format!("{}/{}[{}]@v{}", p.namespace, p.job, p.index, p.version),
            p.node.clone(),
        ]);
    }
    for (what, ids) in [("lost", &r.lost), ("stop", &r.stop), ("remove", &r.remove)] {
        for id in ids {
            rows.push([what.into(), id.clone(), String::new(), String::new()]);
        }
    }
    for b in &r.blocked {
        rows.push([
            "blocked".into(),
            String::new(),
            format!("{}/{}[{}]", b.namespace, b.job, b.index),
            b.reason.clone(),
        ]);
    }
    print_table(&rows);
    println!(
        "{} place, {} stop, {} lost, {} remove, {} blocked, {} deferred{}",
        r.place.len(),
        r.stop.len(),
        r.lost.len(),
        r.remove.len(),
        r.blocked.len() + r.unreported,
        r.deferred,
        if r.written {
            ""
        } else {
            " (dry run: nothing written)"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_ttls_are_short() {
        assert!(parse_credential_ttl("1h").is_ok());
        assert!(parse_credential_ttl("10s").is_ok());
        assert!(parse_credential_ttl("2h").is_err());
        assert!(parse_credential_ttl("5s").is_err());
    }

    #[test]
    fn holder_names() {
        assert!(holder_ok("host-12-abc.d_e"));
        assert!(!holder_ok(""));
        assert!(!holder_ok("a b"));
        assert!(!holder_ok(&"a".repeat(129)));
    }
}
