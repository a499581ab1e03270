//! `ringzero dev`: a whole single-machine cluster in one process — one authority node, one
//! enrolled agent, the scheduler (with the admin profile), and a registration entry for the
//! calling user.
//!
//! Data layout: `D/authority` (the authority node, `admin.profile` in it) and `D/agent` (the
//! agent's data directory, `workload.sock` in it). A second run with the same `D` starts both
//! again with no new bootstrap, enrollment or entry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use ringzero_agent::{AgentConfig, DataDir, FirstContact};
use ringzero_agent::{current_uid, user_name};
use ringzero_authority::node;
use ringzero_policy::{SpiffeId, TrustDomain};
use ringzero_proto::client::{AuthorityClient, Profile};
use ringzero_proto::pb;
use tokio::sync::oneshot;

use super::agent::{absolute, agent_failed, print_out, ready_line};
use super::session::{explain, runtime};
use crate::cli::GlobalArgs;
use crate::daemon::{bind, init_logging, shutdown_signal};
use crate::failure::{Failure, Outcome, failed};
use crate::input::read_bounded;

/// The `dev` help's closing text.
pub(crate) const HELP: &str = "\
Runs one authority node, one enrolled agent and the scheduler (with the admin's credentials; a
real cluster's scheduler has its own identity: `ringzero sched token`) in this process, with
data in DIR
(a new temporary directory, removed at exit, when not given), and creates a registration entry
spiffe://TD/ns/dev/<your user name> for your uid. Prints SPIFFE_ENDPOINT_SOCKET=… and the
admin profile's path on stdout, with commands to try (among them a job whose task fetches its
own SVID, and two mesh sidecars in front of an app, on ports free at the time), then serves
until Ctrl-C. Run it again with the same
--data-dir to pick up where it left off.

Examples:
  ringzero dev
  ringzero dev --data-dir ~/.ringzero-dev --listen 127.0.0.1:7000
  # in another shell, with the two lines it printed exported:
  ringzero agent fetch
  ringzero entry list";

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Keep the cluster's data here (reused when it exists). Default: a new temporary directory,
    /// removed at exit.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Where the authority listens (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub(crate) listen: String,
    /// The trust domain of a new cluster.
    #[arg(long, default_value = "dev.ringzero.internal")]
    pub(crate) trust_domain: TrustDomain,
}

/// The agent node's name.
const NODE: &str = "dev";
/// How long the agent's join token stays redeemable.
const JOIN_TTL: Duration = Duration::from_secs(600);
/// The SVID lifetime of the entry created for the caller.
const ENTRY_TTL: u32 = 3600;
/// How long to wait for the authority to accept writes.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn run(global: &GlobalArgs, a: DevArgs) -> Outcome {
    let rt = runtime()?;
    rt.block_on(dev(global, a))
}

async fn dev(global: &GlobalArgs, a: DevArgs) -> Outcome {
    init_logging(global.log_json);
    // Kept until the end of this function: dropping it removes the temporary directory.
    let (root, temp) = match &a.data_dir {
        Some(d) => (absolute(d)?, None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("ringzero-dev-")
                .tempdir()
                .map_err(|e| failed(anyhow!("creating a temporary directory: {e}")))?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    DataDir::open(&root).map_err(agent_failed)?; // 0711, like the agent's: the socket below must be reachable
    let auth_dir = root.join("authority");
    let agent_dir = root.join("agent");

    // 1. The authority: bootstrap once, then serve it in a task.
    let (listener, addr, profile_path) = start_authority(&a, &auth_dir).await?;
    let metrics = crate::daemon::bind("127.0.0.1:0").await?;
    if let Ok(m) = metrics.local_addr() {
        eprintln!("metrics: authority http://{m}/metrics (and /ready, /live)");
    }
    let (auth_stop, auth_stopped) = oneshot::channel::<()>();
    let dir = auth_dir.clone();
    let mut authority = tokio::spawn(async move {
        node::run_with_metrics(&dir, listener, Some(metrics), async {
            let _ = auth_stopped.await;
        })
        .await
    });

    // An authority that stops on its own (its database locked by another process, say) ends
    // everything at once, with its error.
    let outcome = tokio::select! {
        o = with_authority(&root, &agent_dir, &addr, &profile_path, temp.is_some()) => o,
        r = &mut authority => {
            return match r {
                Ok(Ok(())) => Err(failed(anyhow!("the authority stopped unexpectedly"))),
                Ok(Err(e)) => Err(failed(anyhow!("authority: {e}"))),
                Err(e) => Err(failed(anyhow!("authority task failed: {e}"))),
            };
        }
    };

    // Last: the authority.
    let _ = auth_stop.send(());
    match tokio::time::timeout(Duration::from_secs(20), &mut authority).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("authority stopped with an error: {e}"),
        Ok(Err(e)) => eprintln!("authority task failed: {e}"),
        Err(_) => {
            authority.abort();
            eprintln!("authority did not stop within 20s");
        }
    }
    if let Some(t) = temp {
        let shown = t.path().display().to_string();
        if t.close().is_ok() {
            eprintln!("removed {shown}");
        }
    }
    outcome
}

async fn start_authority(
    a: &DevArgs,
    auth_dir: &Path,
) -> Result<(tokio::net::TcpListener, String, PathBuf), Failure> {
    let profile_path = auth_dir.join("admin.profile");
    if auth_dir.join("node.toml").exists() {
        let addr = node::listen_address(auth_dir).map_err(failed)?;
        if a.listen != "127.0.0.1:0" && a.listen != addr {
            eprintln!(
                "note: {} already listens on {addr}; --listen {} ignored",
                auth_dir.display(),
                a.listen
            );
        }
        let listener = bind(&addr).await?;
        eprintln!("authority: reusing {}", auth_dir.display());
        return Ok((listener, addr, profile_path));
    }
    // Bind first, so that port 0 becomes a real port the node can advertise.
    let listener = bind(&a.listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| failed(anyhow!("listener address: {e}")))?
        .to_string();
    let written = node::bootstrap(&a.trust_domain, auth_dir, &addr, node::ADMIN_TTL)
        .await
        .map_err(failed)?;
    eprintln!(
        "authority: bootstrapped trust domain {} in {}",
        a.trust_domain,
        auth_dir.display()
    );
    Ok((listener, addr, written))
}

/// Everything while the authority runs: admin setup, the agent, waiting for Ctrl-C.
async fn with_authority(
    root: &Path,
    agent_dir: &Path,
    addr: &str,
    profile_path: &Path,
    temporary: bool,
) -> Outcome {
    let text = read_bounded(profile_path).map_err(failed)?;
    let profile = Profile::from_toml(&text)
        .map_err(|e| failed(anyhow!("{}: {e}", profile_path.display())))?;
    let td = TrustDomain::new(&profile.trust_domain).map_err(failed)?;
    let creds = profile
        .credentials()
        .map_err(|e| failed(anyhow!("{}: {e}", profile_path.display())))?;
    let mut admin = AuthorityClient::new(creds, vec![addr.to_owned()]);
    wait_writable(&mut admin).await?;

    let uid = current_uid();
    let workload_id = workload_id(&td, uid)?;
    let enrolled = DataDir::open(agent_dir)
        .map_err(agent_failed)?
        .is_enrolled();

    // 2. The caller's entry (before the agent starts, so its first sync has it), then a join
    //    token if the agent has not enrolled yet. On a restart with an expired admin profile
    //    these calls fail: the agent still runs on its own credentials.
    if let Err(e) = ensure_entry(&mut admin, &workload_id, uid).await {
        if !enrolled {
            return Err(e);
        }
        eprintln!("warning: {:#}", e.error);
    }
    let join = if enrolled {
        None
    } else {
        let reply = admin
            .call(|mut c| async move {
                c.create_join_token(pb::CreateJoinTokenRequest {
                    purpose: "agent".into(),
                    node_name: NODE.into(),
                    ttl_seconds: JOIN_TTL.as_secs(),
                    namespace: String::new(),
                })
                .await
            })
            .await
            .map_err(|e| failed(anyhow!(explain(&e, "creating the agent's join token"))))?;
        let token = ringzero_policy::join::JoinToken::parse(&zeroize::Zeroizing::new(reply.token))
            .map_err(failed)?;
        // The real first-contact path: the pin is checked before the secret is sent.
        Some(FirstContact::Pinned(token))
    };

    // 3. The agent, in a task. Its metrics port is picked now, so it can be printed.
    let agent_metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| failed(anyhow!("picking a metrics port: {e}")))?;
    eprintln!("metrics: agent http://{agent_metrics}/metrics");
    let config = AgentConfig {
        authorities: vec![addr.to_owned()],
        pin_authority: false,
        data_dir: agent_dir.to_path_buf(),
        socket: None,
        join,
        // The dev cluster serves task logs on loopback.
        node_api: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        node_api_advertise: None,
        disable_exec: false,
        recording: ringzero_agent::RecordingMode::Strict,
        recording_max_bytes: ringzero_agent::DEFAULT_RECORDING_BYTES,
        metrics: Some(agent_metrics),
    };
    let (ready_tx, ready_rx) = oneshot::channel();
    let (agent_stop, agent_stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(ringzero_agent::run_with_ready(
        config,
        Some(ready_tx),
        async {
            let _ = agent_stopped.await;
        },
    ));

    // 4. The scheduler, with the admin's credentials, in a task of its own.
    let (sched_stop, sched_stopped) = oneshot::channel::<()>();
    let sched_client = AuthorityClient::new(
        profile
            .credentials()
            .map_err(|e| failed(anyhow!("{}: {e}", profile_path.display())))?,
        vec![addr.to_owned()],
    );
    let sched_config = ringzero_sched::daemon::Config {
        holder: format!("dev-{}", std::process::id()),
        ..Default::default()
    };
    let sched_metrics = crate::daemon::bind("127.0.0.1:0").await?;
    if let Ok(m) = sched_metrics.local_addr() {
        eprintln!("metrics: scheduler http://{m}/metrics");
    }
    tokio::spawn(ringzero_telemetry::serve(
        sched_metrics,
        std::sync::Arc::new(ringzero_sched::daemon::SchedHealth {
            lease_ttl: sched_config.lease_ttl,
        }),
    ));
    let sched = tokio::spawn(ringzero_sched::daemon::run(
        sched_client,
        sched_config,
        async {
            let _ = sched_stopped.await;
        },
    ));
    let job = Example {
        root,
        agent_dir,
        workload: &workload_id,
        uid,
    };
    let outcome = serve(
        agent,
        agent_stop,
        ready_rx,
        root,
        addr,
        profile_path,
        temporary,
        &job,
    )
    .await;
    // The scheduler stops first (it releases its lease while the authority still runs).
    let _ = sched_stop.send(());
    match tokio::time::timeout(Duration::from_secs(10), sched).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("scheduler stopped with an error: {e}"),
        Ok(Err(e)) => eprintln!("scheduler task failed: {e}"),
        Err(_) => eprintln!("scheduler did not stop within 10s"),
    }
    outcome
}

type AgentTask = tokio::task::JoinHandle<Result<(), ringzero_agent::AgentError>>;

/// Until Ctrl-C / SIGTERM, or until the agent stops on its own; then the agent stops.
#[allow(clippy::too_many_arguments)]
async fn serve(
    mut agent: AgentTask,
    agent_stop: oneshot::Sender<()>,
    ready_rx: oneshot::Receiver<ringzero_agent::Ready>,
    root: &Path,
    addr: &str,
    profile_path: &Path,
    temporary: bool,
    job: &Example<'_>,
) -> Outcome {
    let signal = shutdown_signal();
    tokio::pin!(signal);
    tokio::select! {
        r = ready_rx => match r {
            Ok(ready) => {
                eprintln!("{}", ready_line(&ready));
                print_banner(root, addr, profile_path, &ready.socket, job, temporary);
            }
            // The agent stopped before it was ready: its result says why.
            Err(_) => return agent_result(agent.await, root),
        },
        r = &mut agent => return agent_result(r, root),
        () = &mut signal => {
            let _ = agent_stop.send(());
            return agent_result(agent.await, root);
        }
    }

    // 5. Serve until Ctrl-C / SIGTERM, or until the agent stops on its own.
    tokio::select! {
        r = &mut agent => return agent_result(r, root),
        () = &mut signal => {}
    }
    let _ = agent_stop.send(());
    agent_result(agent.await, root)
}

fn agent_result(
    r: Result<Result<(), ringzero_agent::AgentError>, tokio::task::JoinError>,
    root: &Path,
) -> Outcome {
    use ringzero_agent::AgentError;
    match r {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e @ AgentError::Banned(_))) => Err(failed(anyhow!(
            "{e}\nwith `ringzero dev`, the node name is fixed: start over with another --data-dir"
        ))),
        Ok(Err(e @ (AgentError::Evicted(_) | AgentError::Expired(_)))) => Err(failed(anyhow!(
            "{e}\nwith `ringzero dev`, all it takes is: rm -r {} && ringzero dev --data-dir {}",
            root.join("agent").display(),
            root.display()
        ))),
        Ok(Err(e)) => Err(agent_failed(e)),
        Err(e) => Err(failed(anyhow!("agent task failed: {e}"))),
    }
}

/// `spiffe://TD/ns/dev/<user name>`, or `…/uid-N` when the name is unknown or unusable.
fn workload_id(td: &TrustDomain, uid: u32) -> Result<SpiffeId, Failure> {
    if let Some(name) = user_name(uid)
        && let Ok(id) = td.id_with_path(&["ns", "dev", name.as_str()])
    {
        return Ok(id);
    }
    td.id_with_path(&["ns", "dev", &format!("uid-{uid}")])
        .map_err(failed)
}

/// Waits until the authority has a leader that accepts writes.
async fn wait_writable(admin: &mut AuthorityClient) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let status = admin
            .call(|mut c| async move { c.status(pb::StatusRequest {}).await })
            .await;
        match status {
            Ok(s) if s.writable => return Ok(()),
            Ok(_) => {}
            Err(e) if e.code() == Some(tonic::Code::Unauthenticated) => {
                return Err(failed(anyhow!(explain(&e, "calling the authority"))));
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(failed(anyhow!(
                    "the authority did not become ready: {}",
                    explain(&e, "status")
                )));
            }
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(failed(anyhow!(
                "the authority did not become ready within {READY_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates the caller's entry unless one with this SPIFFE ID is parented to the dev node.
async fn ensure_entry(admin: &mut AuthorityClient, id: &SpiffeId, uid: u32) -> Result<(), Failure> {
    let wanted = id.to_string();
    let list_id = wanted.clone();
    let existing = admin
        .call(move |mut c| {
            let spiffe_id = list_id.clone();
            async move {
                c.list_entries(pb::ListEntriesRequest {
                    parent: NODE.into(),
                    spiffe_id,
                    page_token: String::new(),
                    page_size: 100,
                })
                .await
            }
        })
        .await
        .map_err(|e| failed(anyhow!(explain(&e, "listing entries"))))?;
    if existing.entries.iter().any(|e| e.spiffe_id == wanted) {
        return Ok(());
    }
    let req = pb::PutEntryRequest {
        id: String::new(),
        spiffe_id: wanted,
        parent: NODE.into(),
        selectors: vec![format!("unix:uid:{uid}")],
        ttl_seconds: ENTRY_TTL,
        dns_names: Vec::new(),
        allow_weak_selectors: false,
    };
    admin
        .call(move |mut c| {
            let req = req.clone();
            async move { c.create_entry(req).await }
        })
        .await
        .map_err(|e| failed(anyhow!(explain(&e, "creating the entry"))))?;
    eprintln!("created entry {id} for uid {uid} on node {NODE}");
    Ok(())
}

/// What the job example needs.
struct Example<'a> {
    root: &'a Path,
    agent_dir: &'a Path,
    workload: &'a SpiffeId,
    uid: u32,
}

/// Writes `ROOT/hello.toml`: a job in namespace `dev` whose one task runs this binary's
/// `agent fetch` (the agent hands it `SPIFFE_ENDPOINT_SOCKET`) and so prints the SPIFFE ID the
/// authority derived for its allocation; returns the example's text. The task waits 2 s first:
/// the agent mints the allocation's SVID once the derived entry reaches it, which can be just
/// after the task starts.
fn job_example(job: &Example<'_>) -> String {
    use std::os::unix::fs::MetadataExt;
    let path = job.root.join("hello.toml");
    let td = job.workload.trust_domain();
    let (Ok(exe), Ok(meta)) = (std::env::current_exe(), std::fs::metadata(job.root)) else {
        return String::new();
    };
    let script = format!(
        "sleep 2; exec '{}' agent fetch",
        exe.display().to_string().replace('\'', "'\\''")
    );
    let text = format!(
        "namespace = \"dev\"\nname = \"hello\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\n\
         uid = {uid}\ngid = {gid}\ncount = 1\nspiffe_id = \"spiffe://{td}/ns/dev/hello\"\n",
        uid = job.uid,
        gid = meta.gid(),
    );
    if std::fs::write(&path, text).is_err() {
        return String::new();
    }
    format!(
        "
A job: the scheduler places it on node {NODE}, the agent runs its task, which fetches its own
SVID (spiffe://{td}/ns/dev/hello, from the entry the authority derives from the allocation):
  ringzero job run {job_file}
  ringzero job status dev/hello   # its allocation: running, then exited 0
  cat {tasks}/*/stdout.log   # the task's SVIDs: spiffe://{td}/ns/dev/hello (and your uid's)
  ringzero job stop dev/hello --purge
",
        job_file = path.display(),
        tasks = job.agent_dir.join("tasks").display(),
    )
}

fn print_banner(
    root: &Path,
    addr: &str,
    profile: &Path,
    socket: &Path,
    job: &Example<'_>,
    temporary: bool,
) {
    let workload = job.workload;
    let socket = format!("unix://{}", socket.display());
    let profile = profile.display();
    let kept = if temporary {
        " (a temporary directory, removed at exit)"
    } else {
        ""
    };
    let mut out = format!(
        "\
ringzero dev: one authority on {addr}, agent node {NODE}, the scheduler
data: {root}{kept}

SPIFFE_ENDPOINT_SOCKET={socket}
RINGZERO_PROFILE={profile}

Try, in another shell:
  export SPIFFE_ENDPOINT_SOCKET={socket} RINGZERO_PROFILE={profile}
  ringzero agent fetch                # your SVID: {workload}
  ringzero agent fetch --write ./svid # svid.pem, svid.key, bundle.pem
  ringzero entry list
  ringzero node list
  ringzero authority members
",
        root = root.display()
    );
    if temporary {
        out.push_str("  (pass --data-dir DIR to keep the cluster between runs)\n");
    }
    out.push_str(&job_example(job));
    out.push_str(&mesh_example(workload));
    out.push_str(
        "\nThe scheduler runs here with the admin's credentials; on a real cluster it has its own\n\
         identity (spiffe://TD/ringzero/sched/NAME): `ringzero sched token`, then\n\
         `ringzero sched run --join-token @FILE --data-dir DIR` (see `ringzero sched run --help`).\n",
    );
    out.push_str("\nCtrl-C stops the agent and the scheduler, then the authority.\n");
    print_out(&out);
}

/// Ports the mesh example prefers: the app, the inbound sidecar, the outbound sidecar, the
/// inbound sidecar's admin server.
const MESH_PORTS: [u16; 4] = [8080, 8443, 9000, 9901];

/// A two-sidecar example with the caller's own identity on both sides (the dev entry covers
/// one uid): an outbound sidecar lends it to an app's client, an inbound sidecar admits only it
/// in front of the app. Each port is the preferred one when that is free now, or another free
/// one, so that the commands work as printed.
fn mesh_example(workload: &SpiffeId) -> String {
    let [app, inbound, outbound, admin] = free_ports(MESH_PORTS);
    format!(
        "
A mesh: an app behind two sidecars that speak mTLS as {workload}
(same identity on both sides; each command in its own shell, with the exports above):
  python3 -m http.server {app} --bind 127.0.0.1   # the app: any TCP server on 127.0.0.1:{app}
  ringzero mesh sidecar --inbound 127.0.0.1:{inbound}=127.0.0.1:{app} --allow {workload} --admin 127.0.0.1:{admin}
  ringzero mesh sidecar --outbound 127.0.0.1:{outbound}=127.0.0.1:{inbound}@{workload}
  curl -s http://127.0.0.1:{outbound}/   # the app, through the outbound and inbound sidecars
  curl -s http://127.0.0.1:{admin}/metrics   # the inbound sidecar's counters
"
    )
}

/// For each preferred port, that port if it can be bound on 127.0.0.1 now, else a free one
/// the system picks; all different.
fn free_ports<const N: usize>(preferred: [u16; N]) -> [u16; N] {
    // Held until every port is chosen, so that a port picked by the system is not picked twice.
    let mut held = Vec::with_capacity(N);
    preferred.map(|port| {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .or_else(|_| std::net::TcpListener::bind(("127.0.0.1", 0)));
        let chosen = listener
            .as_ref()
            .ok()
            .and_then(|l| l.local_addr().ok())
            .map_or(port, |a| a.port());
        held.push(listener);
        chosen
    })
}
