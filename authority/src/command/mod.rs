//! The command set of the security state machine.
//!
//! Every command carries its own [`AuditRecord`]: the state change and the record of who asked
//! for it are one Raft entry, applied in one redb transaction. A [`CommandId`] makes a retried
//! proposal idempotent: the second application returns the first one's response and changes
//! nothing.
//!
//! # Encoding
//!
//! A command is encoded as one version byte followed by the postcard encoding of its body.
//! Postcard's format is specified and stable; enums are encoded by variant index, so variants
//! of [`Op`] and its parts are only ever **appended**, never reordered or removed. A change
//! that cannot be made by appending bumps [`COMMAND_VERSION`] and keeps a decoder for the old
//! version.
//!
//! # Layout
//!
//! - this module: the types ([`Command`], [`Batch`], [`Op`] and its parts, [`Response`],
//!   [`Rejection`], [`Invalid`]) and the [`limits`].
//! - `encoding.rs`: the versioned wire form of a command and of a batch.
//! - `validate.rs`: the state-independent checks ([`Command::validate`]).
//! - `job.rs`: a job's spec ([`Job`]) and its checks.
//! - `alloc.rs`: allocations ([`Placement`], [`AllocUpdate`], their states) and their checks.
//! - `lease.rs`: the scheduler lease's bounds and checks ([`check_lease`]).
//! - `principal.rs`: users and schedulers in the users table ([`sched_key`], [`principal_path`]).
//! - `tests.rs`: unit tests.

mod alloc;
mod encoding;
mod job;
mod lease;
mod principal;
mod validate;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use self::alloc::{
    ALLOC_ENTRY_PREFIX, AllocDesired, AllocState, AllocUpdate, AllocWrite, Placement,
    alloc_entry_id, check_alloc_id, check_alloc_ids, check_placements, check_report,
};
use self::encoding::Envelope;
pub use self::job::{Constraints, Job, Restart, RestartPolicy, job_resource};
pub use self::lease::{LeaseFence, MAX_LEASE_TTL_MS, MIN_LEASE_TTL_MS, check_lease};
pub use self::principal::{
    SCHED_KEY_PREFIX, SCHED_ROLE, check_principal_key, principal_path, sched_key, sched_name,
};

/// A Raft node id. Assigned once when a node joins; never reused.
pub type NodeId = u64;

/// The current encoding version of [`Command`].
pub const COMMAND_VERSION: u8 = 1;

/// Bounds on what one command may carry, checked before proposing and again in apply.
pub mod limits {
    pub const MAX_NAME: usize = 63;
    pub const MAX_TEXT: usize = 2048;
    pub const MAX_SELECTORS: usize = 32;
    pub const MAX_DNS: usize = 32;
    pub const MAX_REVOCATIONS: usize = 1024;
    pub const MAX_KEY: usize = 16 * 1024;
    pub const MAX_RIGHTS: usize = 256;
    pub const MAX_DETAILS: usize = 32;
    /// Mesh policies in the whole state: each agent receives the ones for its identities in
    /// one feed message, so the set stays small enough for one.
    pub const MAX_MESH_POLICIES: usize = 10_000;
    /// Mesh policies with one `to`: the rules one namespace can aim at one identity (or
    /// prefix), so that one namespace cannot swell the feed of the nodes it shares with others.
    pub const MAX_MESH_POLICIES_PER_TO: usize = 256;
    /// Bytes of a mesh policy's `to` or `from` pattern.
    pub const MAX_MESH_PATTERN: usize = 512;
    /// Jobs in the whole state (each at most [`MAX_JOB_BYTES`] encoded).
    pub const MAX_JOBS: usize = 10_000;
    /// Bytes of one job, encoded: bounds what one submit adds to every replica and snapshot.
    pub const MAX_JOB_BYTES: usize = 64 * 1024;
    /// Bytes of a job's command or workdir.
    pub const MAX_JOB_PATH: usize = 4096;
    /// Arguments of a job's command.
    pub const MAX_JOB_ARGS: usize = 256;
    /// Bytes of one argument or environment value.
    pub const MAX_JOB_ARG: usize = 4096;
    /// Environment variables of a job.
    pub const MAX_JOB_ENV: usize = 128;
    /// Bytes of an environment variable's name.
    pub const MAX_JOB_ENV_NAME: usize = 256;
    /// Tasks of one job.
    pub const MAX_JOB_COUNT: u32 = 1000;
    /// A task's CPU request (1000 = one core).
    pub const MAX_JOB_CPU_MILLIS: u32 = 1_024_000;
    /// A task's memory request in MiB (16 TiB).
    pub const MAX_JOB_MEMORY_MB: u32 = 16 * 1024 * 1024;
    /// Node names in a job's constraints.
    pub const MAX_JOB_NODES: usize = 64;
    /// Labels in a job's constraints.
    pub const MAX_JOB_LABELS: usize = 32;
    /// Restarts of one task.
    pub const MAX_JOB_RESTARTS: u32 = 10_000;
    /// The longest wait before a restart (one hour).
    pub const MAX_JOB_BACKOFF_MS: u64 = 3_600_000;
    /// Items in one allocation command (placements, ids or status reports).
    pub const MAX_ALLOC_BATCH: usize = 1000;
    /// Allocations in the whole state.
    pub const MAX_ALLOCS: usize = 100_000;
    /// Allocations on one node: its whole set travels in one feed message.
    pub const MAX_ALLOCS_PER_NODE: usize = 1000;
    /// Bytes of the message an agent reports with an allocation's state.
    pub const MAX_ALLOC_MESSAGE: usize = 1024;
}

/// An id chosen by the proposer; retries of one request reuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CommandId(pub [u8; 16]);

impl CommandId {
    /// A fresh id that sorts by when it was made ([`ringzero_policy::ids::time_ordered`]), so
    /// the command records a batch adds land together at the end of their table, not on a
    /// random page each (a random insert into a table of 100,000s of records copies a leaf and
    /// its branches per command at every apply, on every node).
    pub fn fresh() -> Self {
        // Without an entropy source the id keeps its clock and zeros: it still works, it only
        // loses idempotency protection against a colliding retry.
        Self(
            ringzero_policy::ids::time_ordered(std::time::SystemTime::now())
                .unwrap_or_else(|(b, _)| b),
        )
    }
}

/// 16 random bytes, in hex: entry ids, request ids and temporary file names, which (unlike a
/// [`CommandId`]) carry no clock.
pub(crate) fn random_hex() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    // SystemRandom fails only if the OS has no entropy source.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    hex::encode(b)
}

/// One proposal to the state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "Envelope", try_from = "Envelope")]
pub struct Command {
    pub id: CommandId,
    /// The proposer's clock, in unix milliseconds. Apply decides expiry with this value, never
    /// with its own clock, so every replica decides the same.
    pub time_ms: u64,
    pub audit: AuditRecord,
    pub op: Op,
}

/// What one Raft entry carries: one or more commands, applied in order in the entry's
/// transaction, each with its own audit record and response. A leader groups concurrent
/// proposals into one entry ([`crate::Proposer`]), so one log append and one fsync per node
/// serve many commands.
///
/// Encoded as version byte 2 and the postcard encoding of the commands; an entry of version 1
/// (a single command) decodes as a batch of one.
///
/// A batch is immutable and shares its commands and its wire form: cloning it is a reference
/// count, and the wire form is made once, when the batch is made or decoded. The log store,
/// the replication stream to every follower and each follower's own log then write those
/// bytes instead of copying and re-encoding every command (openraft clones an entry for each
/// reader of the log).
#[derive(Clone)]
pub struct Batch(std::sync::Arc<Encoded>);

struct Encoded {
    commands: Vec<Command>,
    /// The versioned wire form of `commands` (as decoded, for a batch that was).
    wire: Vec<u8>,
}

/// The encoding version of [`Batch`].
pub const BATCH_VERSION: u8 = 2;

/// The most commands one batch may carry.
pub const MAX_BATCH: usize = 256;

impl Batch {
    /// A batch of `commands`, encoded once here.
    pub fn new(commands: Vec<Command>) -> Self {
        let wire = encoding::encode_batch(&commands);
        Self(std::sync::Arc::new(Encoded { commands, wire }))
    }

    /// A batch of one command.
    pub fn one(cmd: Command) -> Self {
        Self::new(vec![cmd])
    }

    /// The commands, in the order they apply.
    pub fn commands(&self) -> &[Command] {
        &self.0.commands
    }

    /// The versioned wire form.
    pub fn wire(&self) -> &[u8] {
        &self.0.wire
    }
}

impl PartialEq for Batch {
    fn eq(&self, other: &Self) -> bool {
        self.commands() == other.commands()
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Batch").field(&self.0.commands).finish()
    }
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {} command(s)", self.0.commands.len())
    }
}

/// What happened, for the audit log. Never holds a secret: tokens appear as revocation ids,
/// join secrets not at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The SPIFFE ID of the caller (its mTLS identity), or `local:<what>` for local acts.
    pub actor: String,
    /// Revocation ids (hex) of the capability the caller presented, authority block first.
    pub revocation_ids: Vec<String>,
    pub operation: String,
    pub resource: String,
    pub decision: AuditDecision,
    /// For a denial, the check that failed.
    pub reason: Option<String>,
    /// The authority node that handled the request.
    pub authority: NodeId,
    pub request_id: String,
    /// Extra facts of the act (serials, key hashes, not-after…).
    pub details: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditDecision {
    Allow,
    Deny,
}

/// The state change. Variants are append-only (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// No state change: the audit record is the whole point (reads, denials, releases).
    AuditOnly,
    /// Publish a public key of an authority node into the trust bundle. Raft assigns its id.
    PublishKey {
        authority: NodeId,
        kind: KeyKind,
        public_der: Vec<u8>,
        not_after_ms: u64,
    },
    /// Change a key's status (published → active → retired, or compromised).
    SetKeyStatus {
        key_id: u64,
        status: KeyStatus,
    },
    /// Record an authority member (on join) or its new address.
    PutAuthority {
        node_id: NodeId,
        name: String,
        addr: String,
    },
    /// Forget an authority member.
    RemoveAuthority {
        node_id: NodeId,
    },
    /// Store a one-time join token: only the SHA-256 of its secret.
    IssueJoinToken {
        token_id: [u8; 16],
        secret_sha256: [u8; 32],
        node_name: String,
        purpose: JoinPurpose,
        expires_ms: u64,
    },
    /// Redeem a join token: compare-and-set inside apply, so of two racing redemptions exactly
    /// one succeeds. Carries the SHA-256 of the presented secret, never the secret.
    RedeemJoinToken {
        token_id: [u8; 16],
        presented_sha256: [u8; 32],
        node_name: String,
    },
    /// Set an agent node's status (enrolled → active; evicted; banned).
    SetNodeStatus {
        name: String,
        status: NodeStatus,
    },
    /// Create or replace a registration entry; apply assigns the revision.
    PutEntry {
        entry: RegistrationEntry,
    },
    DeleteEntry {
        id: String,
    },
    PutUser {
        user: User,
    },
    RemoveUser {
        name: String,
    },
    PutRole {
        role: RoleDef,
    },
    RemoveRole {
        name: String,
    },
    /// Revoke token blocks until `expires_ms` (when the tokens would have expired anyway).
    Revoke {
        ids: Vec<Vec<u8>>,
        expires_ms: u64,
    },
    /// Drop revocations, join tokens and idempotency records past their expiry.
    PurgeExpired,
    /// Drop the live audit records before `up_to` (the caller holds them in a sealed, signed
    /// export whose root the leader checked); the tree keeps their hashes.
    SealAudit {
        up_to: u64,
    },
    /// Record an SVID issued to (or for a workload of) an agent node, before it is released;
    /// refused when the node is no longer active. Evicting or banning the node revokes every
    /// serial recorded for it that has not expired.
    IssueSvid {
        node: String,
        serial: Vec<u8>,
        not_after_ms: u64,
    },
    /// Store a one-time user invite: a join token of purpose [`JoinPurpose::User`] (only the
    /// SHA-256 of its secret, named for the user) and the user it creates when redeemed
    /// (role, namespace). Redeeming it with [`Op::RedeemJoinToken`] creates the user in the
    /// same transaction as the compare-and-set.
    IssueUserInvite {
        token_id: [u8; 16],
        secret_sha256: [u8; 32],
        user: User,
        expires_ms: u64,
    },
    /// Record credentials issued to a user (its SVID serial and its capability's revocation
    /// ids, each with its expiry) before they are released; refused when the user does not
    /// exist (removed meanwhile). Removing the user revokes every unexpired one.
    IssueUserCredential {
        user: String,
        serial: Vec<u8>,
        not_after_ms: u64,
        revocation_ids: Vec<Vec<u8>>,
        expires_ms: u64,
    },
    /// Suspend or resume a user without deleting it: while suspended its certificates open
    /// nothing, it cannot renew, and no token it minted (or one minted from those) is honoured.
    SetUserSuspended {
        name: String,
        suspended: bool,
    },
    /// Record a capability the cluster minted, before it is released: its authority block's
    /// revocation id, the revocation ids of the token presented to mint it (its lineage:
    /// revoking any of them revokes it too), who minted it, for whom, and until when. Refused
    /// when one of the parents is already revoked.
    RecordMint {
        id: Vec<u8>,
        parents: Vec<Vec<u8>>,
        minter: String,
        subject: String,
        expires_ms: u64,
    },
    /// Allow mesh connections from `policy.from` to `policy.to` (idempotent).
    PutMeshPolicy {
        policy: MeshPolicy,
    },
    /// Remove exactly that allow rule; refused `NotFound` when there is none.
    DeleteMeshPolicy {
        policy: MeshPolicy,
    },
    /// Submit a job: stored with version 1, or the next version of the job of that name, its
    /// desired state `Running`, submitted by the command's actor at its time. Refused past
    /// [`limits::MAX_JOBS`].
    PutJob {
        job: Job,
    },
    /// Set a job's desired state to `Stopped`, keeping its record; `NotFound` when absent.
    StopJob {
        namespace: String,
        name: String,
    },
    /// Delete a stopped job; `NotFound` when absent, `JobRunning` when not stopped.
    PurgeJob {
        namespace: String,
        name: String,
    },
    /// Create allocations (desired `Run`, state `Pending`), all or none: each id new, its job
    /// running at `job_version` with `index` < its count, its node active and not drained.
    /// Refused past [`limits::MAX_ALLOCS`] or [`limits::MAX_ALLOCS_PER_NODE`].
    PlaceAllocs {
        allocs: Vec<Placement>,
    },
    /// Desired `Stop` (idempotent per allocation); `NotFound` when one is absent.
    StopAllocs {
        ids: Vec<String>,
    },
    /// State `Lost` (the scheduler's verdict on an unresponsive node); `NotFound` when absent.
    MarkAllocsLost {
        ids: Vec<String>,
    },
    /// Delete allocations that are desired `Stop` and terminal, or whose job is gone.
    RemoveAllocs {
        ids: Vec<String>,
    },
    /// An agent's report: each allocation must be placed on `node` (else `WrongNode`, and
    /// nothing is written); allocations removed meanwhile are skipped.
    ReportAllocStatus {
        node: String,
        updates: Vec<AllocUpdate>,
    },
    /// Drain a node (no new placements) or undo it.
    SetNodeDrain {
        node: String,
        drain: bool,
    },
    /// Take or renew the scheduler lease of `scope` (empty: the cluster) until `time_ms` +
    /// `ttl_ms`: granted when free, expired at `time_ms`, or held by this `holder` and this
    /// command's actor; else `LeaseHeld`. A renewal (same holder, not expired) answers
    /// `Outcome::Lease { renewed: true }` and is the one command that adds no audit record.
    AcquireSchedLease {
        scope: String,
        holder: String,
        ttl_ms: u64,
    },
    /// Give the lease up if `holder` (and the actor) holds it; `NotFound` otherwise.
    ReleaseSchedLease {
        scope: String,
        holder: String,
    },
    /// A place, stop, lost or remove, fenced by the scheduler lease (the form the service
    /// proposes; the four plain variants above are kept for entries written before, and apply
    /// them as then). With `lease`: applied only if that scope's lease is held by its holder,
    /// for this command's actor, at its epoch, not expired at `time_ms`, and the scope covers
    /// every allocation's namespace; else `LeaseLost` (or `AllocRefused` for the scope).
    /// Without: refused with `LeaseHeld` while an unexpired lease covers one of their
    /// namespaces (the cluster's, or the namespace's own).
    FencedAllocWrite {
        lease: Option<LeaseFence>,
        write: AllocWrite,
    },
}

/// A mesh allow rule: workloads whose SPIFFE ID matches `from` may open connections to the
/// workloads whose SPIFFE ID matches `to`. Both are [`ringzero_policy::SpiffeIdPattern`]s in
/// their canonical text form (`spiffe://td/ns/shop/db` or `spiffe://td/ns/shop/*`); `to` is
/// under `ns/…`, never a reserved path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MeshPolicy {
    pub to: String,
    pub from: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyKind {
    X509Ca,
    Biscuit,
    Jwt,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyStatus {
    /// In the bundle, not yet used: verifiers learn it before anything it signs appears.
    Published,
    /// Used to sign.
    Active,
    /// No longer used; kept until what it signed has expired.
    Retired,
    /// Dropped from the bundle at once: nothing it signed verifies.
    Compromised,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinPurpose {
    Agent,
    Authority,
    /// A user invite: `node_name` is the user's name.
    User,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    Active,
    Evicted,
    Banned,
}

/// Maps selectors on a given parent node to a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationEntry {
    pub id: String,
    pub spiffe_id: String,
    /// The node name of the agent allowed to obtain this identity.
    pub parent: String,
    pub selectors: Vec<String>,
    pub ttl_s: u32,
    pub dns_names: Vec<String>,
    /// Assigned by apply; ignored in proposals.
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: String,
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDef {
    pub name: String,
    /// (operation, resource prefix)
    pub rights: Vec<(String, String)>,
}

/// What apply returns for a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The sequence number of the command's audit record.
    pub audit_seq: u64,
    pub outcome: Outcome,
    /// True when this is the stored response of an earlier application of the same id.
    pub replayed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    /// The id Raft assigned to a published key.
    KeyId(u64),
    /// The revision assigned to an entry change.
    Revision(u64),
    /// The command was valid but refused by the state (recorded in the audit log as such).
    Rejected(Rejection),
    /// The scheduler lease was granted until `expires_ms`; `renewed`: by its holder, with no
    /// audit record of its own.
    Lease {
        expires_ms: u64,
        renewed: bool,
    },
}

/// Why apply refused a command. The refusal is deterministic: every replica refuses alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("invalid command: {0}")]
    Invalid(String),
    #[error("not found")]
    NotFound,
    #[error("join token unknown")]
    JoinTokenUnknown,
    #[error("join token already used")]
    JoinTokenUsed,
    #[error("join token expired")]
    JoinTokenExpired,
    #[error("join token secret does not match")]
    JoinTokenMismatch,
    #[error("join token was issued for another node name")]
    JoinTokenWrongName,
    #[error("node name is banned")]
    Banned,
    #[error("the node is not active (evicted or banned)")]
    NodeInactive,
    /// An invite names a user that was created meanwhile (by `AddUser` or another invite):
    /// redeeming it must not change that user's role.
    #[error("the invited user already exists")]
    UserExists,
    /// A token was to be minted from a capability revoked meanwhile.
    #[error("the capability it was minted from is revoked")]
    ParentRevoked,
    /// The user is suspended.
    #[error("the user is suspended")]
    UserSuspended,
    /// A bound on the state's size was reached (e.g. [`limits::MAX_MESH_POLICIES`]).
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// A job was to be purged while its desired state is still running.
    #[error("the job is running: stop it before purging it")]
    JobRunning,
    /// The state forbids this allocation change now (a stale job version, a drained node, an
    /// id in use, an allocation still running).
    #[error("allocation refused: {0}")]
    AllocRefused(String),
    /// An agent reported on an allocation placed on another node.
    #[error("allocation {0} is not placed on this node")]
    WrongNode(String),
    /// The scheduler lease is held by another holder (or caller) until `expires_ms`.
    #[error("the scheduler lease is held by {holder} until {expires_ms} (ms)")]
    LeaseHeld { holder: String, expires_ms: u64 },
    /// A write made under a lease its maker no longer holds (expired, taken over, released,
    /// or never held at that epoch).
    #[error(
        "the scheduler lease of scope {scope:?} is no longer held by {holder} at epoch {epoch}"
    )]
    LeaseLost {
        scope: String,
        holder: String,
        epoch: u64,
    },
}

/// Why a command is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(m: impl Into<String>) -> Invalid {
    Invalid(m.into())
}
