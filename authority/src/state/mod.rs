//! The cluster's security state in redb: tables, the deterministic `apply` of a command, and
//! reads.
//!
//! Every table maps bytes to bytes: keys are encoded so that byte order is the order wanted
//! (big-endian integers, `parent \0 id` compounds), values are postcard records. One uniform
//! shape keeps snapshots (a stream of `(table, key, value)`) independent of what the tables
//! hold.

mod allocs;
mod apply;
mod jobs;
mod lease;
mod lineage;
mod mesh;
mod read;
mod rows;

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::command::{
    AuditRecord, JoinPurpose, KeyKind, KeyStatus, NodeStatus, Outcome, RegistrationEntry, Response,
    RoleDef, User,
};
use crate::types::NodeId;

mod audit_log;
pub use self::allocs::{AllocRecord, DrainRecord};
pub(crate) use self::apply::Applier;
pub use self::audit_log::{AuditQuery, AuditTree, audit_entry};
pub use self::jobs::{DesiredState, JobRecord};
pub(crate) use self::lease::LeaseRecord;
pub use self::mesh::MeshPolicyRecord;
pub use self::read::StateReader;
pub(crate) use self::rows::meta_put;

pub(crate) type Raw = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// Counters, the last applied log id and the last membership.
pub(crate) const META: Raw = TableDefinition::new("meta");
/// key id (u64 BE) → [`KeyRecord`]
pub(crate) const KEYS: Raw = TableDefinition::new("keys");
/// node id (u64 BE) → [`AuthorityRecord`]
pub(crate) const AUTHORITIES: Raw = TableDefinition::new("authorities");
/// node name → [`NodeRecord`]
pub(crate) const NODES: Raw = TableDefinition::new("nodes");
/// token id (16 bytes) → [`JoinTokenRecord`]
pub(crate) const JOIN_TOKENS: Raw = TableDefinition::new("join_tokens");
/// entry id → [`RegistrationEntry`]
pub(crate) const ENTRIES: Raw = TableDefinition::new("entries");
/// `parent \0 entry id` → empty: the entries of one node, by index
pub(crate) const ENTRIES_BY_PARENT: Raw = TableDefinition::new("entries_by_parent");
/// `parent \0 revision (u64 BE)` → [`EntryChange`]: each node's change feed
pub(crate) const ENTRY_CHANGES: Raw = TableDefinition::new("entry_changes");
/// user name → [`User`]
pub(crate) const USERS: Raw = TableDefinition::new("users");
/// role name → [`RoleDef`]
pub(crate) const ROLES: Raw = TableDefinition::new("roles");
/// revocation id → expiry (unix ms, u64 BE)
pub(crate) const REVOCATIONS: Raw = TableDefinition::new("revocations");
/// sequence (u64 BE) → [`StoredAudit`]
pub(crate) const AUDIT: Raw = TableDefinition::new("audit");
/// command id → [`CommandRecord`]: idempotency
pub(crate) const COMMANDS: Raw = TableDefinition::new("commands");
/// sequence (u64 BE) → the record's RFC 6962 leaf hash (32 bytes); kept after sealing
pub(crate) const AUDIT_LEAVES: Raw = TableDefinition::new("audit_leaves");
/// `level (u8) ‖ index (u64 BE)` → hash of the perfect subtree of 2^level leaves at that index
pub(crate) const AUDIT_NODES: Raw = TableDefinition::new("audit_nodes");
/// `actor \0 seq (u64 BE)` → empty
pub(crate) const AUDIT_BY_ACTOR: Raw = TableDefinition::new("audit_by_actor");
/// `operation \0 seq (u64 BE)` → empty
pub(crate) const AUDIT_BY_OPERATION: Raw = TableDefinition::new("audit_by_operation");
/// seq (u64 BE) → empty: the denials
pub(crate) const AUDIT_DENIALS: Raw = TableDefinition::new("audit_denials");
/// `time (u64 BE) ‖ seq (u64 BE)` → empty
pub(crate) const AUDIT_BY_TIME: Raw = TableDefinition::new("audit_by_time");
/// `node \0 serial` → not-after (unix ms, u64 BE): the SVIDs issued for an agent node
pub(crate) const NODE_SERIALS: Raw = TableDefinition::new("node_serials");
/// serial → not-after (unix ms, u64 BE): serials revoked by evicting or banning their node
pub(crate) const REVOKED_SERIALS: Raw = TableDefinition::new("revoked_serials");
/// `user \0 serial` → not-after (unix ms, u64 BE): the SVIDs issued to a user
pub(crate) const USER_SERIALS: Raw = TableDefinition::new("user_serials");
/// `user \0 revocation id` → expiry (unix ms, u64 BE): the capabilities issued to a user
pub(crate) const USER_TOKENS: Raw = TableDefinition::new("user_tokens");
/// invite token id (16 bytes) → [`UserInvite`]: the user an unredeemed invite creates
pub(crate) const USER_INVITES: Raw = TableDefinition::new("user_invites");

/// entry id → the revision at which the entry was created (u64 BE); updates keep it.
pub(crate) const ENTRY_CREATED: Raw = TableDefinition::new("entry_created");
/// entry id → when its last change was proposed (the command's time, unix ms, u64 BE): agents
/// measure commit-to-servable from it. Absent for entries written before the table existed.
pub(crate) const ENTRY_CHANGED_MS: Raw = TableDefinition::new("entry_changed_ms");

/// user name → since (unix ms, u64 BE): suspended users
pub(crate) const SUSPENDED_USERS: Raw = TableDefinition::new("suspended_users");
/// authority-block revocation id → [`MintRecord`]: every capability the cluster minted
pub(crate) const MINTED: Raw = TableDefinition::new("minted");
/// `len(parent) (u8) ‖ parent ‖ child` → child's expiry (unix ms, u64 BE): which minted tokens
/// each revocation id begot
pub(crate) const MINT_CHILDREN: Raw = TableDefinition::new("mint_children");
/// key id (u64 BE) → when it was retired (unix ms, u64 BE)
pub(crate) const KEY_RETIRED: Raw = TableDefinition::new("key_retired");

/// `to \0 from` → [`MeshPolicyRecord`]: the mesh allow rules
pub(crate) const MESH_POLICIES: Raw = TableDefinition::new("mesh_policies");

/// `namespace \0 name` → [`JobRecord`]: the jobs
pub(crate) const JOBS: Raw = TableDefinition::new("jobs");

/// allocation id → [`AllocRecord`] (versioned): the allocations
pub(crate) const ALLOCS: Raw = TableDefinition::new("allocs");
/// `node \0 id` → empty: the allocations of one node
pub(crate) const ALLOCS_BY_NODE: Raw = TableDefinition::new("allocs_by_node");
/// `namespace \0 job \0 id` → empty: the allocations of one job
pub(crate) const ALLOCS_BY_JOB: Raw = TableDefinition::new("allocs_by_job");
/// node name → [`DrainRecord`] (versioned): drained nodes
pub(crate) const NODE_DRAINS: Raw = TableDefinition::new("node_drains");
/// scope (empty: the cluster) → [`LeaseRecord`] (versioned): the scheduler lease
pub(crate) const SCHED_LEASE: Raw = TableDefinition::new("sched_lease");

/// Every table, with the tag it carries in snapshots. Tags are stable: never reuse one.
pub(crate) const TABLES: &[(u8, Raw)] = &[
    (1, META),
    (2, KEYS),
    (3, AUTHORITIES),
    (4, NODES),
    (5, JOIN_TOKENS),
    (6, ENTRIES),
    (7, ENTRIES_BY_PARENT),
    (8, ENTRY_CHANGES),
    (9, USERS),
    (10, ROLES),
    (11, REVOCATIONS),
    (12, AUDIT),
    (13, COMMANDS),
    (14, AUDIT_LEAVES),
    (15, AUDIT_NODES),
    (16, AUDIT_BY_ACTOR),
    (17, AUDIT_BY_OPERATION),
    (18, AUDIT_DENIALS),
    (19, AUDIT_BY_TIME),
    (20, NODE_SERIALS),
    (21, REVOKED_SERIALS),
    (22, USER_SERIALS),
    (23, USER_TOKENS),
    (24, USER_INVITES),
    (25, ENTRY_CREATED),
    (26, SUSPENDED_USERS),
    (27, MINTED),
    (28, MINT_CHILDREN),
    (29, KEY_RETIRED),
    (30, MESH_POLICIES),
    (31, JOBS),
    (32, ALLOCS),
    (33, ALLOCS_BY_NODE),
    (34, ALLOCS_BY_JOB),
    (35, NODE_DRAINS),
    (36, SCHED_LEASE),
    (37, ENTRY_CHANGED_MS),
];

pub(crate) const META_LAST_APPLIED: &str = "last_applied";
pub(crate) const META_MEMBERSHIP: &str = "membership";
pub(crate) const CTR_AUDIT: &str = "ctr:audit";
pub(crate) const CTR_KEY: &str = "ctr:key";
pub(crate) const CTR_REVISION: &str = "ctr:revision";
/// `issued_until:<authority id>`: the latest not-after (unix ms) of any SVID recorded as issued
/// by that member; a removed member's CA is trusted by verifiers outside the authority until
/// then, and not after.
pub(crate) const META_ISSUED_UNTIL: &str = "issued_until:";
/// Records before this sequence were sealed (exported, then dropped from the live state).
pub(crate) const META_AUDIT_SEALED: &str = "audit:sealed";

/// How long a command id is remembered for idempotent retries.
pub const COMMAND_ID_RETENTION_MS: u64 = 24 * 3600 * 1000;

/// A public key in the trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: u64,
    pub authority: NodeId,
    pub kind: KeyKind,
    pub public_der: Vec<u8>,
    pub status: KeyStatus,
    pub not_after_ms: u64,
    pub published_ms: u64,
}

/// A capability the cluster minted: who minted it (a SPIFFE ID, or `authority` for credentials
/// the authority issues itself), for whom, from which capability, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintRecord {
    pub parents: Vec<Vec<u8>>,
    pub minter: String,
    pub subject: String,
    pub expires_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityRecord {
    pub node_id: NodeId,
    pub name: String,
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub status: NodeStatus,
    pub since_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub secret_sha256: [u8; 32],
    pub node_name: String,
    pub purpose: JoinPurpose,
    pub expires_ms: u64,
    pub used: bool,
}

/// The user a pending invite creates when it is redeemed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInvite {
    pub user: User,
    pub expires_ms: u64,
}

/// One change in a node's entry feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryChange {
    pub revision: u64,
    pub entry_id: String,
    /// The entry is gone from this parent (deleted, or moved to another node).
    pub removed: bool,
}

/// An audit record as stored: the command's record plus where and how it was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAudit {
    pub seq: u64,
    pub log_index: u64,
    pub time_ms: u64,
    pub record: AuditRecord,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CommandRecord {
    pub(crate) time_ms: u64,
    pub(crate) response: Response,
}

pub(crate) fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// `a \0 b`: names never contain NUL, so the split is unambiguous and prefix scans by `a \0`
/// find exactly `a`'s rows.
pub(crate) fn compound(a: &str, b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b);
    k
}

/// Errors reading or writing the state. Any of these means the node's storage is broken, not
/// that a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("corrupt record in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StateError {
            fn from(e: $t) -> Self { StateError::Storage(e.to_string()) }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::TableError,
    redb::StorageError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError
);

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StateError> {
    postcard::to_stdvec(v).map_err(|e| StateError::Storage(format!("encode: {e}")))
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
    table: &'static str,
    bytes: &[u8],
) -> Result<T, StateError> {
    postcard::from_bytes(bytes).map_err(|e| StateError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

/// Creates every table, so readers never meet a missing one.
pub(crate) fn create_tables(db: &redb::Database) -> Result<(), StateError> {
    let tx = db.begin_write()?;
    for (_, def) in TABLES {
        tx.open_table(*def)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests;
