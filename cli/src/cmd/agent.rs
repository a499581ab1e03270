//! `ringzero agent run`, `ringzero agent fetch` and `ringzero agent validate-jwt`.

mod jwt;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use clap::{Args, Subcommand};
use ringzero_agent::{AgentConfig, AgentError, FirstContact, Ready};
use ringzero_agent::{X509Svid, endpoint_path, fetch_x509};
use rustls_pki_types::CertificateDer;

use super::session::runtime;
use crate::args::parse_duration;
use crate::cli::GlobalArgs;
use crate::daemon::{init_logging, shutdown_signal};
use crate::failure::{Failure, Outcome, bad_input, bad_input_msg, failed};
use crate::input::read_secret;

#[derive(Debug, Subcommand)]
pub(crate) enum AgentCommand {
    /// Run the agent: enroll (first start), keep the node SVID renewed, sync entries, issue and
    /// rotate workload SVIDs, serve the SPIFFE Workload API.
    #[command(after_help = "\
The first start needs a join token (from `ringzero node token --name NAME` on an admin machine);
later starts reuse the credentials in the data directory and need none. The token's pin is
checked against the authority before its secret is sent; --bundle FILE checks against a given
bundle instead. Prints `agent ready: node N, E entries, I SVIDs, socket /abs/path` on stderr
once the Workload API serves and the first sync completed.

Examples:
  ringzero agent run --authority 10.0.0.1:7000,10.0.0.2:7000 --join-token @n7.token \\
      --data-dir /var/lib/ringzero-agent
  ringzero agent run --data-dir /var/lib/ringzero-agent     # a restart: no token needed
  ringzero agent run --authority A --join-token - --data-dir D < n7.token
  ringzero agent run --authority proxy.example:7000 --pin-authority --data-dir D")]
    Run(AgentRunArgs),
    /// Fetch this process's X.509-SVIDs from the Workload API (like `spire-agent api fetch x509`).
    #[command(after_help = "\
Examples:
  ringzero agent fetch                                   # socket from SPIFFE_ENDPOINT_SOCKET
  ringzero agent fetch --socket /var/lib/ringzero-agent/workload.sock --write /run/my-service
  ringzero agent fetch --json
  ringzero agent fetch --jwt --audience db.shop.internal > token  # the token alone on stdout
  ringzero agent fetch --jwt --audience A --audience B --spiffe-id spiffe://example.org/ns/shop/web")]
    Fetch(AgentFetchArgs),
    /// Validate a JWT-SVID through the Workload API (like `spire-agent api validate jwt`):
    /// prints its claims.
    #[command(after_help = "\
Examples:
  ringzero agent validate-jwt @token --audience db.shop.internal
  ringzero agent validate-jwt - --audience db.shop.internal --json < token")]
    ValidateJwt(jwt::AgentValidateJwtArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AgentRunArgs {
    /// Where the agent keeps its key, SVID, capability and synced state (created; files 0600).
    #[arg(long, value_name = "DIR", env = "RINGZERO_AGENT_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// The one-time join token, for the first start (TOKEN, @FILE or -).
    #[arg(long, value_name = "TOKEN|@FILE|-")]
    pub(crate) join_token: Option<String>,
    /// The Workload API socket (default DIR/workload.sock).
    #[arg(long, value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// Trust this bundle (PEM CA certificates) instead of checking the join token's pin.
    #[arg(long, value_name = "FILE")]
    pub(crate) bundle: Option<PathBuf>,
    /// Send the join secret without verifying the authority first. Only for throwaway clusters.
    #[arg(long)]
    pub(crate) insecure_skip_pin: bool,
    /// Serve the node API (task logs over mTLS, each call gated by a capability and audited)
    /// on ADDR, such as 0.0.0.0:7443. Off unless given.
    #[arg(long, value_name = "ADDR")]
    pub(crate) node_api: Option<std::net::SocketAddr>,
    /// The node API address announced to the authority, for clients to reach (host:port;
    /// default the bound address, unless it is unspecified like 0.0.0.0).
    #[arg(long, value_name = "HOST:PORT", requires = "node_api")]
    pub(crate) node_api_advertise: Option<String>,
    /// Refuse every `job exec` on this node (each refusal audited as exec_disabled).
    #[arg(long)]
    pub(crate) disable_exec: bool,
    /// Keep the authority addresses the agent starts with (--authority, or the ones stored at
    /// enrollment) instead of switching to the members listed in the trust bundle: for an agent
    /// that reaches the authorities through a proxy or NAT.
    #[arg(long)]
    pub(crate) pin_authority: bool,
    /// When writing an exec session's recording fails: strict ends the session; best-effort
    /// goes on and marks the recording incomplete in the exec.end audit record.
    #[arg(long, value_name = "MODE", default_value = "strict", value_parser = ["strict", "best-effort"])]
    pub(crate) recording: String,
    /// The most bytes one exec session's recording may hold (at least 4096). Past it the
    /// recording fails: strict ends the session (ended_by recording_failed), best-effort goes
    /// on unrecorded. Recordings themselves are kept 30 days, at most 4 GiB per node.
    #[arg(long, value_name = "BYTES", default_value_t = ringzero_agent::DEFAULT_RECORDING_BYTES,
          value_parser = clap::value_parser!(u64).range(ringzero_agent::MIN_RECORDING_BYTES..))]
    pub(crate) recording_max_bytes: u64,
    /// Serve /live, /ready and /metrics (Prometheus text, unauthenticated) on ADDR, such as
    /// 127.0.0.1:9091. Off unless given. /ready: enrolled, first sync done, and the
    /// authority's feed heard within 30 s.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub(crate) struct AgentFetchArgs {
    /// The Workload API socket: a path or unix:///path.
    #[arg(long, value_name = "PATH|unix:///PATH", env = "SPIFFE_ENDPOINT_SOCKET")]
    pub(crate) socket: Option<String>,
    /// Also write svid.pem, svid.key (0600) and bundle.pem of the default SVID into DIR.
    #[arg(long, value_name = "DIR")]
    pub(crate) write: Option<PathBuf>,
    /// How long to wait for an answer.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub(crate) timeout: Duration,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Fetch JWT-SVIDs instead (needs --audience): the token alone on the last line of stdout.
    #[arg(long)]
    pub(crate) jwt: bool,
    /// An audience of the JWT-SVID (repeatable).
    #[arg(long, value_name = "AUDIENCE", requires = "jwt")]
    pub(crate) audience: Vec<String>,
    /// Only this identity's JWT-SVID.
    #[arg(long, value_name = "SPIFFE_ID", requires = "jwt")]
    pub(crate) spiffe_id: Option<String>,
}

pub(crate) fn run(global: &GlobalArgs, cmd: AgentCommand) -> Outcome {
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            AgentCommand::Run(a) => run_agent(global, a).await,
            AgentCommand::Fetch(a) if a.jwt => jwt::fetch(a).await,
            AgentCommand::Fetch(a) => fetch(a).await,
            AgentCommand::ValidateJwt(a) => jwt::validate(a).await,
        }
    })
}

/// `path` made absolute against the current directory.
pub(crate) fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(path).map_err(|e| bad_input(anyhow!("{}: {e}", path.display())))
}

/// Writes `text` to stdout; a closed stdout (`| head`) is not an error worth a panic.
pub(crate) fn print_out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// The readiness line on stderr, which scripts and tests wait for.
pub(crate) fn ready_line(r: &Ready) -> String {
    let node_api = r
        .node_api
        .map(|a| format!(", node API {a}"))
        .unwrap_or_default();
    format!(
        "agent ready: node {}, {} entries, {} SVIDs, socket {}{node_api}",
        r.node,
        r.entries,
        r.identities,
        r.socket.display()
    )
}

/// An agent error as a CLI failure, with its exit code.
pub(crate) fn agent_failed(e: AgentError) -> Failure {
    Failure {
        code: e.exit_code(),
        error: e.into(),
    }
}

fn first_contact(a: &AgentRunArgs) -> Result<Option<FirstContact>, Failure> {
    if a.bundle.is_some() && a.insecure_skip_pin {
        return Err(bad_input_msg(
            "--bundle and --insecure-skip-pin exclude each other",
        ));
    }
    let Some(arg) = &a.join_token else {
        if a.bundle.is_some() || a.insecure_skip_pin {
            return Err(bad_input_msg(
                "--bundle and --insecure-skip-pin only apply with --join-token",
            ));
        }
        return Ok(None);
    };
    let text = zeroize::Zeroizing::new(read_secret(arg).map_err(bad_input)?);
    let token = ringzero_policy::join::JoinToken::parse(&text).map_err(bad_input)?;
    Ok(Some(match (&a.bundle, a.insecure_skip_pin) {
        (Some(path), _) => FirstContact::Bundle(token, super::session::bundle_file(path)?),
        (None, true) => FirstContact::InsecureNoPin(token),
        (None, false) => FirstContact::Pinned(token),
    }))
}

async fn run_agent(global: &GlobalArgs, a: AgentRunArgs) -> Outcome {
    init_logging(global.log_json);
    let join = first_contact(&a)?;
    let data_dir = absolute(&a.data_dir)?;
    let socket = a.socket.as_deref().map(absolute).transpose()?;
    let config = AgentConfig {
        authorities: global.authority.clone(),
        pin_authority: a.pin_authority,
        data_dir,
        socket,
        join,
        node_api: a.node_api,
        node_api_advertise: a.node_api_advertise.clone(),
        disable_exec: a.disable_exec,
        recording: if a.recording == "best-effort" {
            ringzero_agent::RecordingMode::BestEffort
        } else {
            ringzero_agent::RecordingMode::Strict
        },
        recording_max_bytes: a.recording_max_bytes,
        metrics: a.metrics,
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<Ready>();
    let announce = tokio::spawn(async move {
        if let Ok(r) = rx.await {
            println!("SPIFFE_ENDPOINT_SOCKET=unix://{}", r.socket.display());
            eprintln!("{}", ready_line(&r));
        }
    });
    let result = ringzero_agent::run_with_ready(config, Some(tx), shutdown_signal()).await;
    announce.abort();
    result.map_err(agent_failed)?;
    Ok(ExitCode::SUCCESS)
}

async fn fetch(a: AgentFetchArgs) -> Outcome {
    let endpoint = a.socket.ok_or_else(|| {
        bad_input_msg("no Workload API socket: pass --socket PATH or set SPIFFE_ENDPOINT_SOCKET")
    })?;
    let socket = endpoint_path(&endpoint).map_err(bad_input)?;
    let started = std::time::Instant::now();
    let svids = fetch_x509(&socket, a.timeout).await.map_err(failed)?;
    let took = started.elapsed();
    if let Some(dir) = &a.write {
        let default = svids
            .first()
            .ok_or_else(|| failed(anyhow!("the Workload API sent no SVID")))?;
        std::fs::create_dir_all(dir).map_err(|e| failed(anyhow!("{}: {e}", dir.display())))?;
        default.write_to(dir).map_err(failed)?;
    }
    let mut out = String::new();
    if a.json {
        let rows: Vec<serde_json::Value> = svids.iter().map(svid_json).collect();
        out = serde_json::to_string_pretty(&rows).map_err(failed)?;
        out.push('\n');
    } else {
        out.push_str(&format!(
            "Received {} svid{} after {:.1?}\n",
            svids.len(),
            if svids.len() == 1 { "" } else { "s" },
            took
        ));
        for s in &svids {
            out.push('\n');
            for line in svid_lines(s) {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    print_out(&out);
    if let Some(dir) = &a.write {
        eprintln!(
            "wrote svid.pem, svid.key (0600) and bundle.pem to {}",
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

fn not_before(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    use x509_parser::prelude::FromDer;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    let secs = u64::try_from(c.validity().not_before.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn svid_lines(s: &X509Svid) -> Vec<String> {
    let mut out = vec![format!("SPIFFE ID:         {}", s.spiffe_id)];
    if !s.hint.is_empty() {
        out.push(format!("Hint:              {}", s.hint));
    }
    if let Some(nb) = s.chain.first().and_then(not_before) {
        out.push(format!("SVID Valid After:  {}", rfc3339(nb)));
    }
    let left = s
        .not_after
        .duration_since(SystemTime::now())
        .map(|d| {
            humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
        })
        .unwrap_or_else(|_| "expired".into());
    out.push(format!(
        "SVID Valid Until:  {} (in {left})",
        rfc3339(s.not_after)
    ));
    for (i, ca) in s.bundle.iter().enumerate() {
        out.push(format!(
            "CA #{} Valid Until: {}",
            i + 1,
            ca_not_after(ca).map_or_else(|| "?".into(), rfc3339)
        ));
    }
    out
}

fn ca_not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    use x509_parser::prelude::FromDer;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    let secs = u64::try_from(c.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn svid_json(s: &X509Svid) -> serde_json::Value {
    serde_json::json!({
        "spiffe_id": s.spiffe_id.to_string(),
        "hint": s.hint,
        "not_before": s.chain.first().and_then(not_before).map(rfc3339),
        "not_after": rfc3339(s.not_after),
        "chain_len": s.chain.len(),
        "bundle_len": s.bundle.len(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn times_print_as_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn the_ready_line_is_stable() {
        let r = Ready {
            node: "n7".into(),
            spiffe_id: ringzero_policy::SpiffeId::parse("spiffe://td/ringzero/node/n7").unwrap(),
            entries: 2,
            identities: 1,
            socket: "/run/a.sock".into(),
            node_api: None,
            servable_latency: Default::default(),
        };
        assert_eq!(
            ready_line(&r),
            "agent ready: node n7, 2 entries, 1 SVIDs, socket /run/a.sock"
        );
        let r = Ready {
            node_api: Some(([127, 0, 0, 1], 7443).into()),
            ..r
        };
        assert!(ready_line(&r).ends_with(", node API 127.0.0.1:7443"));
    }
}
