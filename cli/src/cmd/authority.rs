//! `ringzero authority …`: bootstrap, run and join authority nodes, manage the members.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use ringzero_authority::node::{self, FirstContact};
use ringzero_policy::TrustDomain;
use ringzero_proto::client::Profile;
use ringzero_proto::pb;

use super::profile::write_profile;
use super::session::{call_failed, print_table, runtime, session};
use crate::args::{JsonArgs, parse_duration, parse_user_ttl};
use crate::cli::GlobalArgs;
use crate::daemon::{bind, init_logging, shutdown_signal};
use crate::failure::{EXIT_FAILED, Outcome, bad_input, bad_input_msg, failed};
use crate::input::read_secret;

#[derive(Debug, Subcommand)]
pub(crate) enum AuthorityCommand {
    /// Initialize the first node of a new cluster, write the admin profile, and exit.
    #[command(after_help = "\
Examples:
  ringzero authority bootstrap --trust-domain example.org --data-dir /var/lib/ringzero --listen 10.0.0.1:7000
  ringzero authority run --data-dir /var/lib/ringzero")]
    Bootstrap(BootstrapArgs),
    /// Serve an authority node (first start after bootstrap, and every restart).
    #[command(after_help = "\
Examples:
  ringzero authority run --data-dir /var/lib/ringzero")]
    Run(RunArgs),
    /// Issue a one-time token for a new authority node (prints it alone on the last line).
    #[command(after_help = "\
Examples:
  T=$(ringzero --profile admin.profile authority join-token --ttl 10m)")]
    JoinToken(JoinTokenArgs),
    /// Create a node by joining an existing cluster, then keep serving it.
    #[command(after_help = "\
Examples:
  ringzero authority join --peer 10.0.0.1:7000 --token @join.token --data-dir /var/lib/ringzero --listen 10.0.0.2:7000
  ringzero authority join --peer 10.0.0.1:7000 --token - --bundle bundle.pem --data-dir D --listen ADDR")]
    Join(JoinArgs),
    /// List the members: id, address, role, state, last contact, matched index.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile authority members
  ringzero --profile admin.profile authority members --json")]
    Members(JsonArgs),
    /// Remove a member; --compromised also marks its keys compromised in the bundle at once.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile authority remove 3
  ringzero --profile admin.profile authority remove 3 --compromised")]
    Remove(RemoveArgs),
    /// Rotate a member's keys (the leader's, or any member's with --node): prepare, publish,
    /// wait one propagation window, activate, retire the old ones (SPIRE's prepared/active/old).
    /// Agents, workloads and tokens see no interruption; the node's own SVID is re-issued from
    /// its new CA without a restart.
    #[command(after_help = "\
The leader gates (cluster:admin) and audits the call. Each new key is generated on the node
whose key it is (the leader asks another member over the members-only Raft service; private
keys never leave their node) and published in the trust bundle one propagation window before
it signs anything, so every agent feed and profile has it first. The node swaps when the
replicated state activates the key; the old key is then retired: it stays in the bundle and
verifies what it signed before, and its private key is destroyed.

Examples:
  ringzero --profile admin.profile authority rotate-keys
  ringzero --profile admin.profile authority rotate-keys --node 2
  ringzero --profile admin.profile authority rotate-keys --kind ca --kind jwt --propagation 1m
  ringzero --profile admin.profile authority rotate-keys --json")]
    RotateKeys(RotateKeysArgs),
    /// Exit 0 only when a leader is known and accepts writes.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile authority status")]
    Status(JsonArgs),
    /// Break-glass: get a fresh admin profile from the authority node running on this machine.
    #[command(after_help = "\
Run as root on the machine of the leader node: talks to the node's local admin socket
(DIR/admin.sock, root only, checked by the kernel's peer credentials), which issues a new admin
key, SVID and capability. Every request, granted or refused, is in the audit log.

Examples:
  sudo ringzero authority admin-profile --data-dir /var/lib/ringzero --out /root/admin.profile
  sudo ringzero authority admin-profile --data-dir /var/lib/ringzero --out admin.profile --ttl 1h --force")]
    AdminProfile(AdminProfileArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AdminProfileArgs {
    /// The data directory of the authority node running here.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
    /// Where to write the admin profile (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Lifetime of the credential (default 24h, at most 7d).
    #[arg(long, value_parser = parse_user_ttl)]
    pub(crate) ttl: Option<Duration>,
    /// Replace --out if it exists.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BootstrapArgs {
    /// The trust domain of the new cluster (e.g. example.org).
    #[arg(long)]
    pub(crate) trust_domain: TrustDomain,
    /// Where the node keeps its keys and state (created; must not hold a node yet).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
    /// host:port this node listens on and peers reach it at.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: String,
    /// Lifetime of the admin credential (default 24h, at most 7d; renew it with `login`).
    #[arg(long, value_parser = parse_user_ttl, default_value = "24h")]
    pub(crate) admin_ttl: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
    /// Serve /live, /ready and /metrics (Prometheus text, unauthenticated) on ADDR, such as
    /// 127.0.0.1:9090. Off unless given. /ready: a leader is known and this node's log is
    /// applied to within 1,000 entries.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub(crate) struct JoinTokenArgs {
    /// How long the token may be redeemed (at most 24h).
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub(crate) ttl: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// An existing member's address.
    #[arg(long, value_name = "ADDR")]
    pub(crate) peer: String,
    /// The join token (TOKEN, @FILE or -).
    #[arg(long, value_name = "TOKEN|@FILE|-")]
    pub(crate) token: String,
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
    /// host:port this node listens on and peers reach it at.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: String,
    /// Trust this bundle (PEM) instead of checking the token's pin.
    #[arg(long, value_name = "FILE")]
    pub(crate) bundle: Option<PathBuf>,
    /// Send the secret without verifying the authority first. Only for throwaway clusters.
    #[arg(long)]
    pub(crate) insecure_skip_pin: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RemoveArgs {
    /// The node id to remove.
    pub(crate) node: u64,
    /// Mark the node's keys compromised at once: everything it issued stops verifying.
    #[arg(long)]
    pub(crate) compromised: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RotateKeysArgs {
    /// The member whose keys rotate (default: the leader).
    #[arg(long)]
    pub(crate) node: Option<u64>,
    /// Which keys: ca, biscuit, jwt, audit (repeatable; default: all four).
    #[arg(long = "kind", value_parser = ["ca", "biscuit", "jwt", "audit"])]
    pub(crate) kinds: Vec<String>,
    /// How long each new key is in the bundle before it signs (default 30s: twice the agents'
    /// 10 s feed heartbeat, plus margin).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) propagation: Option<std::time::Duration>,
    /// Print one JSON object per step.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn run(global: &GlobalArgs, cmd: AuthorityCommand) -> Outcome {
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            AuthorityCommand::Bootstrap(a) => bootstrap(a).await,
            AuthorityCommand::Run(a) => serve(global, &a.data_dir, a.metrics).await,
            AuthorityCommand::Join(a) => join(global, a).await,
            AuthorityCommand::JoinToken(a) => join_token(global, a.ttl).await,
            AuthorityCommand::Members(a) => members(global, a).await,
            AuthorityCommand::Remove(a) => remove(global, a).await,
            AuthorityCommand::RotateKeys(a) => rotate_keys(global, a).await,
            AuthorityCommand::Status(a) => status(global, a).await,
            AuthorityCommand::AdminProfile(a) => admin_profile(a).await,
        }
    })
}

async fn bootstrap(a: BootstrapArgs) -> Outcome {
    let profile = node::bootstrap(&a.trust_domain, &a.data_dir, &a.listen, a.admin_ttl)
        .await
        .map_err(failed)?;
    eprintln!(
        "initialized authority node 1 of trust domain {} in {}",
        a.trust_domain,
        a.data_dir.display()
    );
    eprintln!(
        "admin profile: {} (mode 0600; the admin credential expires in {})",
        profile.display(),
        humantime::format_duration(a.admin_ttl)
    );
    eprintln!();
    eprintln!("next:");
    eprintln!(
        "  ringzero authority run --data-dir {}",
        a.data_dir.display()
    );
    eprintln!("  export RINGZERO_PROFILE={}", profile.display());
    eprintln!("  ringzero authority status");
    eprintln!("  ringzero authority join-token            # then, on another machine:");
    eprintln!(
        "  ringzero authority join --peer {} --token @TOKENFILE --data-dir D --listen ADDR",
        a.listen
    );
    println!("{}", profile.display());
    Ok(ExitCode::SUCCESS)
}

async fn serve(global: &GlobalArgs, dir: &Path, metrics: Option<SocketAddr>) -> Outcome {
    init_logging(global.log_json);
    let listen = node::listen_address(dir).map_err(bad_input)?;
    let listener = bind(&listen).await?;
    let metrics = match metrics {
        Some(addr) => {
            let l = bind(&addr.to_string()).await?;
            let bound = l
                .local_addr()
                .map_or_else(|_| addr.to_string(), |a| a.to_string());
            tracing::info!(%bound, "metrics endpoint listening");
            Some(l)
        }
        None => None,
    };
    tracing::info!(%listen, data_dir = %dir.display(), "authority node serving");
    node::run_with_metrics(dir, listener, metrics, shutdown_signal())
        .await
        .map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}

async fn join(global: &GlobalArgs, a: JoinArgs) -> Outcome {
    init_logging(global.log_json);
    let text = read_secret(&a.token).map_err(bad_input)?;
    let token = ringzero_policy::join::JoinToken::parse(&text).map_err(bad_input)?;
    let contact = match (&a.bundle, a.insecure_skip_pin) {
        (Some(_), true) => {
            return Err(bad_input_msg(
                "--bundle and --insecure-skip-pin exclude each other",
            ));
        }
        (Some(path), false) => FirstContact::Bundle(token, super::session::bundle_file(path)?),
        (None, true) => FirstContact::InsecureNoPin(token),
        (None, false) => FirstContact::Pinned(token),
    };
    let listener = bind(&a.listen).await?;
    tracing::info!(peer = %a.peer, listen = %a.listen, "joining");
    node::join(
        &a.data_dir,
        &a.listen,
        listener,
        &a.peer,
        contact,
        shutdown_signal(),
    )
    .await
    .map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}

async fn join_token(global: &GlobalArgs, ttl: Duration) -> Outcome {
    let mut s = session(global)?;
    let reply = s
        .client
        .call(|mut c| async move {
            c.create_join_token(pb::CreateJoinTokenRequest {
                purpose: "authority".into(),
                node_name: String::new(),
                ttl_seconds: ttl.as_secs(),
                namespace: String::new(),
            })
            .await
        })
        .await
        .map_err(call_failed)?;
    s.refresh().await;
    eprintln!(
        "join token for a new authority node; one use, expires at unix time {}",
        reply.expires_unix
    );
    println!("{}", reply.token);
    Ok(ExitCode::SUCCESS)
}

async fn members(global: &GlobalArgs, a: JsonArgs) -> Outcome {
    let mut s = session(global)?;
    let reply = s
        .client
        .call(|mut c| async move { c.members(pb::MembersRequest {}).await })
        .await
        .map_err(call_failed)?;
    s.refresh().await;
    if a.json {
        let rows: Vec<serde_json::Value> = reply
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.node_id,
                    "address": m.address,
                    "role": m.role,
                    "state": m.state,
                    "last_contact_ms": m.last_contact_ms,
                    "matched_index": m.matched_index,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "ID".to_owned(),
        "ADDRESS".into(),
        "ROLE".into(),
        "STATE".into(),
        "LAST_CONTACT".into(),
        "MATCHED_INDEX".into(),
    ]];
    for m in &reply.members {
        rows.push([
            m.node_id.to_string(),
            m.address.clone(),
            m.role.clone(),
            m.state.clone(),
            m.last_contact_ms.map_or("-".into(), |ms| format!("{ms}ms")),
            m.matched_index.map_or("-".into(), |i| i.to_string()),
        ]);
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

async fn rotate_keys(global: &GlobalArgs, a: RotateKeysArgs) -> Outcome {
    let mut s = session(global)?;
    let req = pb::RotateKeysRequest {
        node_id: a.node.unwrap_or(0),
        kinds: a.kinds.clone(),
        propagation_ms: a
            .propagation
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let mut events = s
        .client
        .call(|mut c| {
            let req = req.clone();
            async move { c.rotate_keys(req).await }
        })
        .await
        .map_err(call_failed)?;
    if !a.json {
        eprintln!(
            "rotating keys of {}; each new key is published {} before it signs",
            a.node.map_or("the leader".into(), |n| format!("node {n}")),
            a.propagation
                .map_or("30s".into(), |d| humantime::format_duration(d).to_string())
        );
    }
    while let Some(e) = events
        .message()
        .await
        .map_err(|st| failed(anyhow::anyhow!("rotate-keys: {}", st.message())))?
    {
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "node": e.node_id,
                    "kind": e.kind,
                    "step": e.step,
                    "old_key_id": e.old_key_id,
                    "new_key_id": e.new_key_id,
                    "at": crate::cmd::session::rfc3339_ms(e.at_ms),
                    "detail": e.detail,
                })
            );
        } else if e.step != "done" {
            let old = if e.old_key_id == 0 {
                "-".to_owned()
            } else {
                e.old_key_id.to_string()
            };
            println!(
                "{}  node {}  {:<7}  {:<9}  key {} -> {}  {}",
                crate::cmd::session::rfc3339_ms(e.at_ms),
                e.node_id,
                e.kind,
                e.step,
                old,
                e.new_key_id,
                e.detail
            );
        }
    }
    s.refresh().await;
    if !a.json {
        eprintln!(
            "done: the new keys sign; `ringzero bundle show` prints the bundle, old keys retired in it"
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn remove(global: &GlobalArgs, a: RemoveArgs) -> Outcome {
    let mut s = session(global)?;
    let (node_id, compromised) = (a.node, a.compromised);
    s.client
        .call(|mut c| async move {
            c.remove_member(pb::RemoveMemberRequest {
                node_id,
                compromised,
            })
            .await
        })
        .await
        .map_err(call_failed)?;
    s.refresh().await;
    if compromised {
        eprintln!(
            "removed node {node_id}; its keys are published as compromised and trusted nowhere \
             any more: everything it issued must be reissued"
        );
    } else {
        eprintln!(
            "removed node {node_id}: its keys are retired. Nothing they sign from now on opens \
             anything on the authority; what node {node_id} issued before stays valid until it \
             expires, and node {node_id} deletes its own keys as soon as it learns it was \
             removed.\n\
             If node {node_id}'s machine, disk or backups may be in someone else's hands (lost, \
             stolen, breached, or decommissioned without wiping), run \
             `ringzero authority remove {node_id} --compromised` now: its keys are then trusted \
             nowhere at once, and everything it issued must be reissued."
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(global: &GlobalArgs, a: JsonArgs) -> Outcome {
    let mut s = session(global)?;
    let reply = s
        .client
        .call(|mut c| async move { c.status(pb::StatusRequest {}).await })
        .await
        .map_err(call_failed)?;
    s.refresh().await;
    let expiring: Vec<serde_json::Value> = reply
        .expiring_keys
        .iter()
        .map(|k| {
            serde_json::json!({
                "key_id": k.key_id,
                "authority": k.authority,
                "kind": k.kind,
                "status": k.status,
                "not_after": crate::cmd::session::rfc3339_ms(k.not_after_ms),
                "not_after_ms": k.not_after_ms,
            })
        })
        .collect();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "node_id": reply.node_id,
                "leader_id": reply.leader_id,
                "leader_address": reply.leader_address,
                "term": reply.term,
                "last_applied": reply.last_applied,
                "last_log_index": reply.last_log_index,
                "writable": reply.writable,
                "ready": reply.ready,
                "not_ready": reply.not_ready,
                "expiring_keys": expiring,
            })
        );
    } else {
        if !reply.ready {
            eprintln!(
                "warning: node {} is not ready: {}",
                reply.node_id, reply.not_ready
            );
        }
        for k in &reply.expiring_keys {
            eprintln!(
                "warning: the {} {} key {} of authority {} expires {} (within 30 days): rotate it with `ringzero authority rotate-keys` (see the README: key lifecycle)",
                k.status,
                k.kind,
                k.key_id,
                k.authority,
                crate::cmd::session::rfc3339_ms(k.not_after_ms),
            );
        }
        println!(
            "leader: node {} at {} (term {}, applied {}), {}",
            reply.leader_id.map_or("-".into(), |l| l.to_string()),
            reply.leader_address,
            reply.term,
            reply.last_applied,
            if reply.writable {
                "accepting writes"
            } else {
                "NOT accepting writes"
            }
        );
    }
    Ok(if reply.writable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// Break-glass: a fresh admin profile from the local node's admin socket (root only).
async fn admin_profile(a: AdminProfileArgs) -> Outcome {
    if !a.force && a.out.exists() {
        return Err(bad_input_msg(format!(
            "{} exists (use --force to replace it)",
            a.out.display()
        )));
    }
    let text = ringzero_authority::admin_socket::request_admin_profile(&a.data_dir, a.ttl)
        .await
        .map_err(failed)?;
    let profile = Profile::from_toml(&text)
        .map_err(|e| failed(anyhow!("the authority sent a bad profile: {e}")))?;
    write_profile(&a.out, &profile, a.force)?;
    eprintln!(
        "admin profile written to {} (0600); this was recorded in the audit log",
        a.out.display()
    );
    println!("{}", a.out.display());
    Ok(ExitCode::SUCCESS)
}
