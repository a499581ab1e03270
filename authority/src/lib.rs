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
//! - [`command`]: the typed, versioned command set, its validation and encoding.
//! - `state`: the tables, the deterministic `apply`, and [`StateReader`] for reads.
//! - [`store`]: [`LogStore`](store::LogStore) and [`StateMachineStore`](store::StateMachineStore),
//!   openraft's v2 storage traits on redb, with file-streamed snapshots.
//! - [`node`]: bootstrap, join and run a node; [`admin_socket`]: the break-glass admin socket.
//! - [`testing`] (feature `testing`): an in-process cluster whose network can drop, delay,
//!   partition and reorder messages, and whose nodes restart from their redb files.
//!
//! The gRPC service, per-node keys and the gating layer arrive with the "Authority service"
//! issue. See `ARCHITECTURE.md`.
#![forbid(unsafe_code)]

pub mod command;
pub mod first_contact;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gate;
pub mod keys;
pub mod net;
pub mod node;
mod private_fs;
mod proposer;
mod raft_guard;
pub mod removal;
pub mod service;
mod state;
pub mod store;
mod types;

#[cfg(feature = "testing")]
pub mod testing;

pub use self::node::admin_socket;
pub use self::proposer::{ProposeError, Proposer, propose};
pub use self::state::{
    AuditQuery, AuditTree, AuthorityRecord, COMMAND_ID_RETENTION_MS, EntryChange, JoinTokenRecord,
    KeyRecord, NodeRecord, StateError, StateReader, StoredAudit, UserInvite, audit_entry,
};
pub use self::types::*;

/// The openraft configuration ringzero runs with, validated.
pub fn raft_config(cluster_name: &str) -> Result<openraft::Config, Box<openraft::ConfigError>> {
    openraft::Config {
        cluster_name: cluster_name.to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        // Snapshot every 5,000 entries; keep 1,000 entries behind it so a follower slightly
        // behind catches up from the log rather than a snapshot.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        snapshot_max_chunk_size: 1024 * 1024,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    }
    .validate()
    .map_err(Box::new)
}
