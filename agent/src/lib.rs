//! # ringzero-agent
//!
//! The node agent, one per machine: it enrolls the node with a pinned one-time join token,
//! keeps the node SVID renewed, receives only the registration entries parented to its own node
//! through an incremental stream, generates workload keys locally, and serves the standard SPIFFE
//! Workload API on a unix socket to processes it attests by peer credentials. It runs the node's
//! allocations (the scheduler's tasks), each task with its own SVID, and serves their logs on its
//! node API, each call gated by a capability and audited before it is served (debug sessions
//! come later).
//!
//! # Layout
//!
//! Every module is private; what other crates use is re-exported here.
//!
//! - `daemon/`: `agent run` — [`run`] enrolls (or loads the stored enrollment), renews the
//!   node SVID, follows the entry sync stream, issues and rotates workload SVIDs and serves the
//!   Workload API until shutdown; an evicted, banned or expired node stops with an
//!   [`AgentError`] (`error.rs`) that says how to recover. `mod.rs` (configuration, startup
//!   and shutdown, the main loop), `startup.rs` (stored credentials or enrollment),
//!   `entries.rs` (applying sync events), `issuance.rs` (workload SVIDs), `renewal.rs` (the
//!   node SVID), `sync.rs` (the sync stream task), `allocs.rs` (the node's allocations run
//!   under the task supervisor, their statuses reported), `servable.rs` (which entries the
//!   cache can serve, reported with `ReportServable` for `entry create --wait`), `backoff.rs`.
//! - `servable_latency.rs`: [`ServableLatency`], the bounded commit-to-servable latency summary
//!   (histogram buckets, count, sum, recent quantiles) a metrics exporter reads, handed out in
//!   [`Ready::servable_latency`].
//! - `enroll.rs`: first contact, the pin checked before the join secret is sent
//!   ([`FirstContact`], from `ringzero_proto::client`).
//! - `state.rs`: the data directory ([`DataDir`]): `node.profile` (credentials, 0600) and
//!   `agent.toml` (node, authorities, last revision and its entries, 0600).
//! - `rotation.rs`: when to renew: half-life ± 10 % of the certificate's actual validity, never
//!   in the past.
//! - `revocations.rs`: the revocation set the authority streams, for verifying capabilities.
//! - `cache.rs`: the in-memory [`SvidCache`] of issued identities and trust bundles, and of the
//!   authority's mesh policies ([`MeshRule`]) and revoked serials, which the sync loop fills and
//!   the Workload API and its mesh extension read (a watch channel of immutable snapshots).
//! - `attest/`: workload attestation of a unix-socket peer into selectors (`Attestor`),
//!   pinned to the process (pidfd, start time, executable) so that pid reuse and exec are
//!   caught: `mod.rs` (attestation and re-verification), `gate.rs` (per-uid bounds on blocking
//!   reads), `digest.rs` (the executable's hash, cached and computed once), `task.rs`
//!   (`ringzero:job:<alloc>` for processes of a task this agent launched), `tests.rs`.
//! - `workload.rs`: the SPIFFE Workload API server ([`serve_workload_api`]) on the generated
//!   code of `ringzero_proto::workload`; `workload/mesh.rs`: ringzero's extension beside it on
//!   the same socket (`ringzero.mesh.v1.MeshPolicy/Watch`: mesh policies for the caller's
//!   identities, revoked serials), for the mesh sidecar.
//! - `tasks/`: the task supervisor ([`Supervisor`]): runs [`TaskSpec`]s as processes in their
//!   own process group, uid and gid, with size-bounded log files, cgroup v2 limits where the
//!   host allows them, restarts per [`RestartPolicy`], and re-adoption after an agent restart:
//!   `mod.rs` (types, the supervisor), `run.rs` (one task's lifecycle), `spawn.rs`, `logs.rs`,
//!   `cgroup.rs`, `adopt.rs` (`task.json` and `/proc`), `tests.rs`.
//! - `node_api/`: the node API over mTLS (`ringzero.node.v1.Node`, `--node-api`): task logs
//!   read by callers holding `logs:read` on the job, every decision committed to the audit
//!   log through the authority (`AppendNodeAudit`) before anything is served, refused while
//!   the revocation feed is stale; `auth.rs`, `read.rs` (tail, since, follow across rotation),
//!   `retention.rs` (logs kept after their allocation left, with age and size limits).
//! - `fetch.rs`: the client behind `ringzero agent fetch` ([`fetch_x509`]); `fetch/jwt.rs`:
//!   [`fetch_jwt`] and [`validate_jwt`], behind `agent fetch --jwt` and `agent validate-jwt`.
//! - `testing.rs` (feature `testing`): helpers for tests and benches, such as an identity
//!   issued by a test CA as the cache holds it.
//!
//! # Example
//!
//! Run an agent that enrolls with a pinned join token on its first start:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use ringzero_agent::{AgentConfig, FirstContact};
//! use ringzero_policy::join::JoinToken;
//!
//! let token = JoinToken::parse(&std::fs::read_to_string("n7.token")?)?;
//! let config = AgentConfig {
//!     authorities: vec!["10.0.0.1:7000".into(), "10.0.0.2:7000".into()],
//!     pin_authority: false, // true: keep these, ignore the bundle's list (behind a proxy)
//!     data_dir: "/var/lib/ringzero-agent".into(),
//!     socket: None, // <data_dir>/workload.sock
//!     join: Some(FirstContact::Pinned(token)),
//!     node_api: None, // or Some("0.0.0.0:7443".parse()?) with an advertised address
//!     node_api_advertise: None,
//!     disable_exec: false,
//!     recording: ringzero_agent::RecordingMode::Strict,
//!     recording_max_bytes: ringzero_agent::DEFAULT_RECORDING_BYTES,
//!     metrics: None, // or Some("127.0.0.1:9091".parse()?): /live, /ready, /metrics
//! };
//! ringzero_agent::run(config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Or serve the Workload API from a cache filled some other way:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use ringzero_agent::SvidCache;
//!
//! let cache = SvidCache::new();
//! // The sync loop calls cache.set_bundle(..) and cache.upsert(..) as SVIDs are issued.
//! let stop = tokio::signal::ctrl_c();
//! ringzero_agent::serve_workload_api(
//!     std::path::Path::new("/run/ringzero/agent.sock"),
//!     cache,
//!     async { let _ = stop.await; },
//! )
//! .await?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
// Nothing public that cannot be named: the surface is exactly what lib.rs re-exports.
#![warn(unnameable_types)]

mod attest;
mod cache;
mod daemon;
mod enroll;
mod error;
mod fetch;
mod metrics;
mod node_api;
mod revocations;
mod rotation;
mod servable_latency;
mod state;
mod tasks;
mod workload;

#[cfg(feature = "testing")]
pub mod testing;

pub use ringzero_proto::client::FirstContact;

pub use self::attest::{current_uid, user_name};
pub use self::cache::{Identity, MeshRule, SvidCache};
pub use self::daemon::{AgentConfig, Ready, run, run_with_ready};
pub use self::error::{AgentError, RecoveryHint};
pub use self::fetch::{
    FetchError, JwtSvid, ValidatedJwt, X509Svid, endpoint_path, fetch_jwt, fetch_x509, validate_jwt,
};
pub use self::node_api::{DEFAULT_RECORDING_BYTES, MIN_RECORDING_BYTES, RecordingMode};
pub use self::servable_latency::{BUCKETS_MS, LatencySummary, RECENT, ServableLatency};
pub use self::state::DataDir;
pub use self::tasks::{
    AllocId, Exit as TaskExit, Limits as TaskLimits, MAX_TASKS, RestartMode, RestartPolicy,
    Supervisor, SupervisorConfig, TaskError, TaskSpec, TaskState, TaskStatus,
};
pub use self::workload::{
    Limits as WorkloadLimits, NO_IDENTITY, SECURITY_HEADER, ServeError,
    bind as bind_workload_socket, serve as serve_workload_api,
};
