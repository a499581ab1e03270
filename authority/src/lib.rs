//! # ringzero-authority
//!
//! The cluster's root of trust: 3 or 5 authority nodes replicate one security state machine with
//! openraft on durable redb storage. The state machine holds the trust bundle (each node's own
//! signing CA, Biscuit root key and JWT key — no private key is ever shared), the authority
//! members, enrolled agent nodes, one-time join tokens, registration entries, users and roles,
//! revocations, and the append-only audit log. Every command carries its own audit record,
//! applied in the same redb transaction as its effect.
//!
//! # Layout
//!
//! The replicated state:
//! - [`command`] (`command/`): the typed, versioned command set (`mod.rs`), its wire encoding
//!   (`encoding`) and its state-independent validation (`validate`), `tests`; `types`: the
//!   openraft type configuration.
//! - `state/`: the tables (`mod.rs`), the deterministic `apply`, the audit log's tree and
//!   indexes (`audit_log`), token lineage and revocation that follows it (`lineage`), mesh
//!   policies (`mesh`), jobs (`jobs`), allocations and node drains (`allocs`), the scheduler
//!   lease (`lease`), shared row
//!   helpers (`rows`), [`StateReader`] for reads (`read`), and `tests`.
//! - [`store`] (`store/`): openraft's v2 storage traits — [`LogStore`](store::LogStore)
//!   (`log`: the in-memory tail and the writer thread; `segments`: the entries' append-only
//!   segment files; the vote and purge point in redb) and
//!   [`StateMachineStore`](store::StateMachineStore) (`sm`, on redb, with file-streamed
//!   snapshots); `private_fs`: the data directory stays 0700/0600.
//! - `proposer`: [`propose`] one command, or group concurrent ones into one entry
//!   ([`Proposer`]).
//!
//! The network:
//! - `net/`: Raft over gRPC over mTLS — `client` (openraft's network: a leader's appends to each
//!   member on one `AppendStream`, votes and snapshots unary), `server` (the member-only Raft
//!   service and its admission); `raft_guard`: what a Raft message must
//!   be before openraft sees it ([`check_append`]), and where refusals are reported;
//!   `takeover`: a follower with the longer log stands at once when a lagging survivor of a
//!   dead leader stands first (no split vote).
//! - `service/`: the Authority gRPC API by concept — core (`mod.rs`), `bundle` (the keys it
//!   carries, how long a retired CA stays), `rotation` (`RotateKeys`), `jwt` (JWT-SVIDs),
//!   `servable` (agents' servable revisions and `entry create --wait`), `membership`
//!   (join tokens, redemption, join, remove, status), `nodes` (agents and workload SVIDs),
//!   `entries`, `feed` (the agents' entry feed), `jobs`, `allocs` (allocations, node health
//!   and drains), `health` (the leader's in-memory view of its agents' feeds), `node_audit`
//!   (`AppendNodeAudit`: agents' node-API audit records), `lease` (the
//!   scheduler lease), `users`, `scheds` (schedulers: users-table principals
//!   `ringzero/sched/<name>` with a token, listing and removal),
//!   `tokens` (roles, delegation, revocation), `audit`, `blast` (blast radius: `blast.rs` with the request and shared
//!   helpers, `blast/` with the reach of a `node` or authority member, a `user`, a `token`),
//!   and `status`, the one place refusals become gRPC statuses.
//! - `gate/`: every API call's authorization and audit record (`mod.rs`), and the denial
//!   windows (`windows`);
//!   `first_contact`: what an unauthenticated redemption costs, bounded per source address.
//! - `metrics`: the node's `/metrics` families and `/ready` (served by `ringzero-telemetry`).
//! - `keys`: a node's own CA, Biscuit, JWT and audit keys; `key_sync`: staging them when the
//!   leader asks (`PrepareKeys`) and swapping to them once the replicated state activates them.
//!
//! A node's life:
//! - [`node`] (`node/`): bootstrap, join and run a node (`layout`, `parts`, `bootstrap`, `join`,
//!   `serve`, `tasks`, `admin` credentials), [`admin_socket`]: the break-glass admin socket;
//!   `removal`: a removed member destroys its own keys.
//!
//! For tests: `testing` (feature `testing`): an in-process cluster whose network can drop,
//! delay, partition and reorder messages, and whose nodes restart from their redb files;
//! `fuzzing` (feature `fuzzing`): entry points for cargo-fuzz. See `ARCHITECTURE.md`.
#![forbid(unsafe_code)]

pub mod command;
mod first_contact;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod gate;
mod key_sync;
mod keys;
mod metrics;
mod net;
pub mod node;
mod private_fs;
mod proposer;
mod raft_guard;
mod removal;
mod service;
mod state;
pub mod store;
mod takeover;
mod types;

#[cfg(feature = "testing")]
pub mod testing;

pub use self::gate::DENIAL_WINDOW;
#[cfg(feature = "testing")]
pub use self::gate::bypass;
pub use self::node::admin_socket;
pub use self::proposer::{ProposeError, Proposer, propose};
pub use self::raft_guard::check_append;
pub use self::state::{
    AllocRecord, AuditQuery, AuditTree, AuthorityRecord, COMMAND_ID_RETENTION_MS, DesiredState,
    DrainRecord, EntryChange, JobRecord, JoinTokenRecord, KeyRecord, MeshPolicyRecord, NodeRecord,
    StateError, StateReader, StoredAudit, UserInvite, audit_entry,
};
pub use self::types::*;

/// How often a leader heartbeats and how long followers wait before electing, in
/// milliseconds: the `[raft]` table of a node's `node.toml`. Every member should run the same
/// values.
///
/// openraft lets a follower that heard from its leader stand for election only after
/// `election_timeout_max` (the leader's lease) plus its own timeout, drawn once from
/// `[election_timeout_min, election_timeout_max]`, checked on a tick of 1.5 heartbeats. With
/// the defaults (50 / 150–200 ms) a crashed leader is noticed 350–475 ms after its last
/// heartbeat — etcd's defaults (100 ms heartbeat, 1 s election) take over a second. On links
/// with round trips near the heartbeat, raise all three (etcd's tuning guide: heartbeat about
/// the round trip, election timeout about 10× it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 200,
        }
    }
}

impl RaftTiming {
    /// Why these values are refused: a heartbeat of 10 ms–10 s, an election timeout of at least
    /// two heartbeats, a range that is not empty, and at most a minute.
    pub fn check(&self) -> Result<(), String> {
        let Self {
            heartbeat_ms: h,
            election_timeout_min_ms: lo,
            election_timeout_max_ms: hi,
        } = *self;
        if !(10..=10_000).contains(&h) {
            return Err(format!("heartbeat_ms = {h}: must be within 10–10000"));
        }
        if lo < 2 * h {
            return Err(format!(
                "election_timeout_min_ms = {lo}: must be at least two heartbeats ({})",
                2 * h
            ));
        }
        if hi <= lo || hi > 60_000 {
            return Err(format!(
                "election_timeout_max_ms = {hi}: must be above election_timeout_min_ms ({lo}) \
                 and at most 60000"
            ));
        }
        Ok(())
    }
}

/// The openraft configuration ringzero runs with, validated.
pub fn raft_config(
    cluster_name: &str,
    timing: RaftTiming,
) -> Result<openraft::Config, Box<openraft::ConfigError>> {
    openraft::Config {
        cluster_name: cluster_name.to_owned(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_timeout_min_ms,
        election_timeout_max: timing.election_timeout_max_ms,
        // Snapshot every 20,000 entries (etcd 3.4 defaults to 100,000): a snapshot writes the
        // whole state, audit log included, so under light load — one command per entry — a
        // smaller interval spent a growing share of every write on snapshots. The log between
        // snapshots is segment files, cheap to keep. Keep 1,000 entries behind a snapshot so a
        // follower slightly behind catches up from the log rather than a snapshot.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20_000),
        max_in_snapshot_log_to_keep: 1000,
        snapshot_max_chunk_size: 1024 * 1024,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    }
    .validate()
    .map_err(Box::new)
}
