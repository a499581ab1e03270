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

use serde::{Deserialize, Serialize};

use ringzero_policy::{NodeName, Operation, Resource, SpiffeId};

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
}

/// A random id chosen by the proposer; retries of one request reuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CommandId(pub [u8; 16]);

impl CommandId {
    /// A fresh random id.
    pub fn random() -> Self {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 16];
        // SystemRandom fails only if the OS has no entropy source; an all-zero id then still
        // works, it only loses idempotency protection against a colliding retry.
        let _ = ring::rand::SystemRandom::new().fill(&mut b);
        Self(b)
    }
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "Envelope", try_from = "Envelope")]
pub struct Batch(pub Vec<Command>);

/// The encoding version of [`Batch`].
pub const BATCH_VERSION: u8 = 2;

/// The most commands one batch may carry.
pub const MAX_BATCH: usize = 256;

impl Batch {
    /// A batch of one command.
    pub fn one(cmd: Command) -> Self {
        Self(vec![cmd])
    }

    /// The versioned wire form.
    pub fn encode(&self) -> Vec<u8> {
        Envelope::from(self.clone()).0
    }

    /// Decodes a batch (or a version-1 single command), refusing unknown versions, oversized
    /// batches and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Invalid> {
        Self::try_from(Envelope(bytes.to_vec()))
    }
}

impl From<Batch> for Envelope {
    fn from(b: Batch) -> Self {
        let body: Vec<CommandV1> = b.0.into_iter().map(CommandV1::from).collect();
        let mut out = vec![BATCH_VERSION];
        // As for a single command: an encoding failure leaves a batch that decodes as invalid.
        if let Ok(bytes) = postcard::to_stdvec(&body) {
            out.extend_from_slice(&bytes);
        }
        Envelope(out)
    }
}

impl TryFrom<Envelope> for Batch {
    type Error = Invalid;
    fn try_from(e: Envelope) -> Result<Self, Invalid> {
        match e.0.split_first() {
            Some((&COMMAND_VERSION, _)) => Ok(Batch(vec![Command::try_from(e)?])),
            Some((&BATCH_VERSION, body)) => {
                let (cmds, rest): (Vec<CommandV1>, &[u8]) = postcard::take_from_bytes(body)
                    .map_err(|err| invalid(format!("decode: {err}")))?;
                if !rest.is_empty() {
                    return Err(invalid("trailing bytes after batch"));
                }
                if cmds.len() > MAX_BATCH {
                    return Err(invalid("batch too large"));
                }
                Ok(Batch(cmds.into_iter().map(Command::from).collect()))
            }
            Some((v, _)) => Err(invalid(format!("unknown entry version {v}"))),
            None => Err(invalid("empty entry")),
        }
    }
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {} command(s)", self.0.len())
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
}

/// Why a command is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(m: impl Into<String>) -> Invalid {
    Invalid(m.into())
}

fn check_len(what: &str, s: &str, max: usize) -> Result<(), Invalid> {
    if s.len() > max {
        return Err(invalid(format!("{what} longer than {max} bytes")));
    }
    Ok(())
}

fn check_node_name(s: &str) -> Result<(), Invalid> {
    NodeName::parse(s)
        .map(|_| ())
        .map_err(|e| invalid(format!("node name {s:?}: {e}")))
}

impl Command {
    /// Checks everything that does not depend on state. Run before proposing and again in
    /// apply, so a malformed entry that reached the log anyway is refused the same way by every
    /// replica.
    pub fn validate(&self) -> Result<(), Invalid> {
        let a = &self.audit;
        check_len("actor", &a.actor, limits::MAX_TEXT)?;
        check_len("operation", &a.operation, limits::MAX_TEXT)?;
        check_len("resource", &a.resource, limits::MAX_TEXT)?;
        check_len("request id", &a.request_id, limits::MAX_TEXT)?;
        if let Some(r) = &a.reason {
            check_len("reason", r, limits::MAX_TEXT)?;
        }
        if a.revocation_ids.len() > 64 || a.details.len() > limits::MAX_DETAILS {
            return Err(invalid("audit record too large"));
        }
        for (k, v) in &a.details {
            check_len("detail", k, 64)?;
            check_len("detail", v, limits::MAX_TEXT)?;
        }
        match &self.op {
            Op::AuditOnly
            | Op::PurgeExpired
            | Op::RemoveAuthority { .. }
            | Op::SealAudit { .. } => Ok(()),
            Op::IssueSvid { node, serial, .. } => {
                check_node_name(node)?;
                check_serial(serial)
            }
            Op::IssueUserInvite { user, .. } => user.validate(),
            Op::IssueUserCredential {
                user,
                serial,
                revocation_ids,
                ..
            } => {
                check_node_name(user)?;
                check_serial(serial)?;
                if revocation_ids.is_empty() || revocation_ids.len() > 64 {
                    return Err(invalid("a capability has 1 to 64 revocation ids"));
                }
                if revocation_ids.iter().any(|i| i.is_empty() || i.len() > 128) {
                    return Err(invalid("revocation id size"));
                }
                Ok(())
            }
            Op::PublishKey { public_der, .. } => {
                if public_der.is_empty() || public_der.len() > limits::MAX_KEY {
                    return Err(invalid("public key size"));
                }
                Ok(())
            }
            Op::SetKeyStatus { .. } => Ok(()),
            Op::PutAuthority { name, addr, .. } => {
                check_node_name(name)?;
                check_len("address", addr, 255)
            }
            Op::IssueJoinToken { node_name, .. } | Op::RedeemJoinToken { node_name, .. } => {
                check_node_name(node_name)
            }
            Op::SetNodeStatus { name, .. } => check_node_name(name),
            Op::SetUserSuspended { name, .. } => check_node_name(name),
            Op::RecordMint {
                id,
                parents,
                minter,
                subject,
                ..
            } => {
                if id.is_empty() || id.len() > 128 {
                    return Err(invalid("revocation id size"));
                }
                if parents.len() > 64 || parents.iter().any(|p| p.is_empty() || p.len() > 128) {
                    return Err(invalid("a token has at most 64 parents of 1 to 128 bytes"));
                }
                check_len("minter", minter, limits::MAX_TEXT)?;
                check_len("subject", subject, limits::MAX_TEXT)
            }
            Op::PutEntry { entry } => entry.validate(),
            Op::DeleteEntry { id } => check_entry_id(id),
            Op::PutUser { user } => user.validate(),
            Op::RemoveUser { name } | Op::RemoveRole { name } => check_node_name(name),
            Op::PutRole { role } => {
                check_node_name(&role.name)?;
                if role.rights.len() > limits::MAX_RIGHTS {
                    return Err(invalid("too many rights"));
                }
                for (op, prefix) in &role.rights {
                    op.parse::<Operation>()
                        .map_err(|e| invalid(e.to_string()))?;
                    Resource::parse(prefix).map_err(|e| invalid(e.to_string()))?;
                }
                Ok(())
            }
            Op::Revoke { ids, .. } => {
                if ids.is_empty() || ids.len() > limits::MAX_REVOCATIONS {
                    return Err(invalid("revocation count"));
                }
                if ids.iter().any(|i| i.is_empty() || i.len() > 128) {
                    return Err(invalid("revocation id size"));
                }
                Ok(())
            }
        }
    }

    /// Encodes the command (version byte + postcard).
    pub fn encode(&self) -> Vec<u8> {
        Envelope::from(self.clone()).0
    }

    /// Decodes a command, refusing unknown versions and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Invalid> {
        Self::try_from(Envelope(bytes.to_vec()))
    }
}

fn check_serial(serial: &[u8]) -> Result<(), Invalid> {
    if serial.is_empty() || serial.len() > 20 {
        return Err(invalid("a certificate serial is 1 to 20 bytes"));
    }
    Ok(())
}

impl User {
    /// Checks the name (a node-name-like segment), the role name and the namespace.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_node_name(&self.name)?;
        check_len("role", &self.role, limits::MAX_NAME)?;
        if self.role.is_empty() {
            return Err(invalid("a user needs a role"));
        }
        if let Some(ns) = &self.namespace {
            check_node_name(ns)?;
        }
        Ok(())
    }
}

fn check_entry_id(id: &str) -> Result<(), Invalid> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(invalid("entry id must be 1-64 of [A-Za-z0-9-]"));
    }
    Ok(())
}

impl RegistrationEntry {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_entry_id(&self.id)?;
        let id =
            SpiffeId::parse(&self.spiffe_id).map_err(|e| invalid(format!("spiffe id: {e}")))?;
        if id.is_reserved() {
            // `ringzero/…` and `user/…` name principals the authority enrolls itself (authority
            // members, nodes, users, system services); an entry carrying one would let whoever
            // selects a process there impersonate that principal.
            return Err(invalid(format!(
                "spiffe id {id}: the paths ringzero/… and user/… are reserved for principals \
                 the authority enrolls itself"
            )));
        }
        check_node_name(&self.parent)?;
        if self.selectors.is_empty() || self.selectors.len() > limits::MAX_SELECTORS {
            return Err(invalid("an entry needs 1 to 32 selectors"));
        }
        for s in &self.selectors {
            check_len("selector", s, 512)?;
            if !s.contains(':') {
                return Err(invalid(format!("selector {s:?} is not type:value")));
            }
        }
        if self.dns_names.len() > limits::MAX_DNS {
            return Err(invalid("too many DNS names"));
        }
        for d in &self.dns_names {
            check_len("dns name", d, 253)?;
        }
        Ok(())
    }
}

/// The versioned wire form of a command.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct Envelope(#[serde(with = "serde_bytes_compat")] Vec<u8>);

#[derive(Serialize, Deserialize)]
struct CommandV1 {
    id: CommandId,
    time_ms: u64,
    audit: AuditRecord,
    op: Op,
}

impl From<Command> for CommandV1 {
    fn from(c: Command) -> Self {
        CommandV1 {
            id: c.id,
            time_ms: c.time_ms,
            audit: c.audit,
            op: c.op,
        }
    }
}

impl From<CommandV1> for Command {
    fn from(v1: CommandV1) -> Self {
        Command {
            id: v1.id,
            time_ms: v1.time_ms,
            audit: v1.audit,
            op: v1.op,
        }
    }
}

impl From<Command> for Envelope {
    fn from(c: Command) -> Self {
        let body = CommandV1::from(c);
        let mut out = vec![COMMAND_VERSION];
        // Encoding into a Vec cannot fail for these types (no maps with non-string keys, no
        // unsized sequences); an error would leave only the version byte, which decodes as an
        // invalid command rather than a different one.
        if let Ok(bytes) = postcard::to_stdvec(&body) {
            out.extend_from_slice(&bytes);
        }
        Envelope(out)
    }
}

impl TryFrom<Envelope> for Command {
    type Error = Invalid;
    fn try_from(e: Envelope) -> Result<Self, Invalid> {
        match e.0.split_first() {
            Some((&COMMAND_VERSION, body)) => {
                let (v1, rest): (CommandV1, &[u8]) = postcard::take_from_bytes(body)
                    .map_err(|err| invalid(format!("decode: {err}")))?;
                if !rest.is_empty() {
                    return Err(invalid("trailing bytes after command"));
                }
                Ok(Command::from(v1))
            }
            Some((v, _)) => Err(invalid(format!("unknown command version {v}"))),
            None => Err(invalid("empty command")),
        }
    }
}

/// Serializes a byte vector as a byte string (compact in postcard, readable in JSON).
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn audit() -> AuditRecord {
        AuditRecord {
            actor: "spiffe://td/user/admin".into(),
            revocation_ids: vec!["ab".into()],
            operation: "node:enroll".into(),
            resource: "node/n1".into(),
            decision: AuditDecision::Allow,
            reason: None,
            authority: 1,
            request_id: "r1".into(),
            details: vec![],
        }
    }

    #[test]
    fn batches_round_trip_and_read_single_commands() {
        let c = |n: u8| Command {
            id: CommandId([n; 16]),
            time_ms: u64::from(n),
            audit: audit(),
            op: Op::AuditOnly,
        };
        let b = Batch(vec![c(1), c(2), c(3)]);
        let bytes = b.encode();
        assert_eq!(bytes[0], BATCH_VERSION);
        assert_eq!(Batch::decode(&bytes).unwrap(), b);
        // An entry written before batching (version 1) is a batch of one.
        assert_eq!(Batch::decode(&c(9).encode()).unwrap(), Batch::one(c(9)));
        assert!(Batch::decode(&[]).is_err());
        assert!(Batch::decode(&[3, 0]).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Batch::decode(&trailing).is_err());
        assert!(Batch::decode(&bytes[..bytes.len() - 1]).is_err());
        let huge = Batch((0..=MAX_BATCH).map(|i| c(i as u8)).collect()).encode();
        assert!(Batch::decode(&huge).is_err());
    }

    #[test]
    fn encoding_round_trips_and_is_versioned() {
        let c = Command {
            id: CommandId([7; 16]),
            time_ms: 42,
            audit: audit(),
            op: Op::SetNodeStatus {
                name: "n1".into(),
                status: NodeStatus::Banned,
            },
        };
        let bytes = c.encode();
        assert_eq!(bytes[0], COMMAND_VERSION);
        assert_eq!(Command::decode(&bytes).unwrap(), c);
        // Through serde (as openraft stores it) too.
        let via = postcard::to_stdvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<Command>(&via).unwrap(), c);
        let mut future = bytes.clone();
        future[0] = 99;
        assert!(Command::decode(&future).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Command::decode(&trailing).is_err());
        assert!(Command::decode(&[]).is_err());
        assert!(Command::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn validation_refuses_bad_commands() {
        let mk = |op| Command {
            id: CommandId([0; 16]),
            time_ms: 0,
            audit: audit(),
            op,
        };
        assert!(
            mk(Op::SetNodeStatus {
                name: "a/b".into(),
                status: NodeStatus::Active
            })
            .validate()
            .is_err()
        );
        assert!(
            mk(Op::Revoke {
                ids: vec![],
                expires_ms: 0
            })
            .validate()
            .is_err()
        );
        let entry = RegistrationEntry {
            id: "e1".into(),
            spiffe_id: "spiffe://td/ns/a/web".into(),
            parent: "n1".into(),
            selectors: vec!["unix:uid:1000".into()],
            ttl_s: 3600,
            dns_names: vec![],
            revision: 0,
        };
        assert!(
            mk(Op::PutEntry {
                entry: entry.clone()
            })
            .validate()
            .is_ok()
        );
        let bad = RegistrationEntry {
            spiffe_id: "http://x".into(),
            ..entry.clone()
        };
        assert!(mk(Op::PutEntry { entry: bad }).validate().is_err());
        let bad = RegistrationEntry {
            selectors: vec![],
            ..entry
        };
        assert!(mk(Op::PutEntry { entry: bad }).validate().is_err());
        let role = RoleDef {
            name: "ci".into(),
            rights: vec![("logs:write".into(), "ns".into())],
        };
        assert!(mk(Op::PutRole { role }).validate().is_err());
    }
}
