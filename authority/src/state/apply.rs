//! Applying log entries: deterministic, inside the caller's write transaction.

use openraft::EntryPayload;
use redb::{ReadableTable, WriteTransaction};
use subtle::ConstantTimeEq;

use super::rows::*;
use super::*;
use crate::command::{Command, Op, Rejection};
use crate::types::{Entry, StoredMembership};

/// One apply call: its write transaction, with the tables every command writes (the audit
/// log's and the command records) opened once for all the entries it applies. They are closed
/// before an op that opens them itself (sealing the audit log, purging command records).
pub(crate) struct Applier<'t> {
    tx: &'t WriteTransaction,
    held: Option<Held<'t>>,
    /// Whether an applied op may have changed the key records or the revocations.
    trust_changed: bool,
}

struct Held<'t> {
    audit: super::audit_log::AuditTables<'t>,
    commands: redb::Table<'t, &'static [u8], &'static [u8]>,
}

impl<'t> Applier<'t> {
    pub(crate) fn new(tx: &'t WriteTransaction) -> Self {
        Self {
            tx,
            held: None,
            trust_changed: false,
        }
    }

    /// Whether a command applied so far may have changed the key records or the revocations
    /// ([`changes_trust`]): the watchers of that material need to look again only then.
    pub(crate) fn trust_changed(&self) -> bool {
        self.trust_changed
    }

    fn held(&mut self) -> Result<&mut Held<'t>, StateError> {
        let held = match self.held.take() {
            Some(held) => held,
            None => Held {
                audit: super::audit_log::AuditTables::open(self.tx)?,
                commands: self.tx.open_table(COMMANDS)?,
            },
        };
        Ok(self.held.insert(held))
    }

    /// Applies one log entry and records it as the last applied.
    pub(crate) fn apply_entry(&mut self, entry: &Entry) -> Result<Vec<Response>, StateError> {
        let response = match &entry.payload {
            EntryPayload::Blank => Vec::new(),
            EntryPayload::Normal(batch) => {
                let mut out = Vec::with_capacity(batch.commands().len());
                for cmd in batch.commands() {
                    out.push(self.apply_command(entry.log_id.index, cmd)?);
                }
                out
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                meta_put(self.tx, META_MEMBERSHIP, &encode(&stored)?)?;
                Vec::new()
            }
        };
        meta_put(self.tx, META_LAST_APPLIED, &encode(&Some(entry.log_id))?)?;
        Ok(response)
    }

    /// Applies a command and its audit record, or replays the stored response of an earlier
    /// application of the same command id.
    pub(crate) fn apply_command(
        &mut self,
        log_index: u64,
        cmd: &Command,
    ) -> Result<Response, StateError> {
        let tx = self.tx;
        if let Some(prev) = self.held()?.commands.get(&cmd.id.0[..])? {
            let prev: CommandRecord = decode("commands", prev.value())?;
            return Ok(Response {
                replayed: true,
                ..prev.response
            });
        }
        let outcome = match cmd.validate() {
            Err(e) => Outcome::Rejected(Rejection::Invalid(e.0)),
            Ok(()) => {
                if opens_held_tables(&cmd.op) {
                    self.held = None;
                }
                self.trust_changed |= changes_trust(&cmd.op);
                apply_op(tx, cmd)?
            }
        };
        // A lease renewal by its holder is the one command without a record of its own (its
        // grant was recorded; renewals are bounded to one per ttl/3 per scheduler by the
        // service): its response names the latest record instead.
        let seq = if matches!(outcome, Outcome::Lease { renewed: true, .. }) {
            counter(tx, CTR_AUDIT)?.saturating_sub(1)
        } else {
            // Sequence numbers start at 0: a record's sequence is its leaf index in the audit
            // tree.
            let seq = next_counter(tx, CTR_AUDIT)? - 1;
            self.held()?.audit.append(&StoredAudit {
                seq,
                log_index,
                time_ms: cmd.time_ms,
                record: cmd.audit.clone(),
                outcome: outcome.clone(),
            })?;
            seq
        };
        let response = Response {
            audit_seq: seq,
            outcome,
            replayed: false,
        };
        let record = encode(&CommandRecord {
            time_ms: cmd.time_ms,
            response: response.clone(),
        })?;
        self.held()?
            .commands
            .insert(&cmd.id.0[..], record.as_slice())?;
        Ok(response)
    }
}

/// Whether `op` opens the tables an [`Applier`] holds.
fn opens_held_tables(op: &Op) -> bool {
    matches!(op, Op::SealAudit { .. } | Op::PurgeExpired)
}

/// Whether applying `op` may change the key records or the revocations: the material the TLS
/// bundle, the gate's token cache and the key files follow. Every op is named (no catch-all),
/// so a new op has to be placed here; the state tests check every op they apply against it
/// (see [`apply_command`]).
fn changes_trust(op: &Op) -> bool {
    match op {
        // Key records.
        Op::PublishKey { .. } | Op::SetKeyStatus { .. } => true,
        // Revocations: directly, by expiry, or a removed user's capabilities.
        Op::Revoke { .. } | Op::PurgeExpired | Op::RemoveUser { .. } => true,
        Op::AuditOnly
        | Op::PutAuthority { .. }
        | Op::RemoveAuthority { .. }
        | Op::IssueJoinToken { .. }
        | Op::RedeemJoinToken { .. }
        | Op::SetNodeStatus { .. }
        | Op::PutEntry { .. }
        | Op::DeleteEntry { .. }
        | Op::PutUser { .. }
        | Op::PutRole { .. }
        | Op::RemoveRole { .. }
        | Op::SealAudit { .. }
        | Op::IssueSvid { .. }
        | Op::IssueUserInvite { .. }
        | Op::IssueUserCredential { .. }
        | Op::SetUserSuspended { .. }
        | Op::RecordMint { .. }
        | Op::PutMeshPolicy { .. }
        | Op::DeleteMeshPolicy { .. }
        | Op::PutJob { .. }
        | Op::StopJob { .. }
        | Op::PurgeJob { .. }
        | Op::PlaceAllocs { .. }
        | Op::StopAllocs { .. }
        | Op::MarkAllocsLost { .. }
        | Op::RemoveAllocs { .. }
        | Op::ReportAllocStatus { .. }
        | Op::SetNodeDrain { .. }
        | Op::AcquireSchedLease { .. }
        | Op::ReleaseSchedLease { .. }
        | Op::FencedAllocWrite { .. } => false,
    }
}

/// Applies one command in its own [`Applier`] (tests), with the held tables already open as
/// they are for every command after an apply call's first: every op the state tests run is
/// thereby checked not to open a held table itself (redb refuses a table opened twice). Each
/// is also checked against [`changes_trust`]: an op that changed the key records or the
/// revocations must be one it names.
#[cfg(test)]
pub(crate) fn apply_command(
    tx: &WriteTransaction,
    log_index: u64,
    cmd: &Command,
) -> Result<Response, StateError> {
    /// The key records' and revocations' rows, each key followed by its value.
    fn trust_rows(tx: &WriteTransaction) -> Result<Vec<Vec<u8>>, StateError> {
        let mut rows = Vec::new();
        for table in [KEYS, REVOCATIONS] {
            for row in tx.open_table(table)?.iter()? {
                let (k, v) = row?;
                rows.push(k.value().to_vec());
                rows.push(v.value().to_vec());
            }
        }
        Ok(rows)
    }
    let before = trust_rows(tx)?;
    let mut applier = Applier::new(tx);
    applier.held()?;
    let response = applier.apply_command(log_index, cmd)?;
    drop(applier);
    assert!(
        changes_trust(&cmd.op) || trust_rows(tx)? == before,
        "{:?} changed the keys or revocations but changes_trust does not name it",
        cmd.op
    );
    Ok(response)
}

fn rejected(r: Rejection) -> Result<Outcome, StateError> {
    Ok(Outcome::Rejected(r))
}

/// The state change of one valid command. Checks come first; a rejection writes nothing.
fn apply_op(tx: &WriteTransaction, cmd: &Command) -> Result<Outcome, StateError> {
    let now = cmd.time_ms;
    match &cmd.op {
        Op::AuditOnly => Ok(Outcome::Done),
        Op::PublishKey {
            authority,
            kind,
            public_der,
            not_after_ms,
        } => {
            let id = next_counter(tx, CTR_KEY)?;
            put(
                tx,
                KEYS,
                &be(id),
                &KeyRecord {
                    id,
                    authority: *authority,
                    kind: *kind,
                    public_der: public_der.clone(),
                    status: KeyStatus::Published,
                    not_after_ms: *not_after_ms,
                    published_ms: now,
                },
            )?;
            Ok(Outcome::KeyId(id))
        }
        Op::SetKeyStatus { key_id, status } => {
            let Some(mut rec) = get::<KeyRecord>(tx, KEYS, "keys", &be(*key_id))? else {
                return rejected(Rejection::NotFound);
            };
            if rec.status == KeyStatus::Compromised && *status != KeyStatus::Compromised {
                return rejected(Rejection::Invalid(
                    "a compromised key stays compromised".into(),
                ));
            }
            if *status == KeyStatus::Retired && rec.status != KeyStatus::Retired {
                tx.open_table(KEY_RETIRED)?
                    .insert(&be(*key_id)[..], &be(now)[..])?;
            }
            rec.status = *status;
            put(tx, KEYS, &be(*key_id), &rec)?;
            Ok(Outcome::Done)
        }
        Op::PutAuthority {
            node_id,
            name,
            addr,
        } => {
            put(
                tx,
                AUTHORITIES,
                &be(*node_id),
                &AuthorityRecord {
                    node_id: *node_id,
                    name: name.clone(),
                    addr: addr.clone(),
                },
            )?;
            Ok(Outcome::Done)
        }
        Op::RemoveAuthority { node_id } => {
            if remove(tx, AUTHORITIES, &be(*node_id))? {
                Ok(Outcome::Done)
            } else {
                rejected(Rejection::NotFound)
            }
        }
        Op::IssueJoinToken {
            token_id,
            secret_sha256,
            node_name,
            purpose,
            expires_ms,
        } => {
            if *purpose == JoinPurpose::Agent && is_banned(tx, node_name)? {
                return rejected(Rejection::Banned);
            }
            if get::<JoinTokenRecord>(tx, JOIN_TOKENS, "join_tokens", token_id)?.is_some() {
                return rejected(Rejection::Invalid("join token id already exists".into()));
            }
            put(
                tx,
                JOIN_TOKENS,
                token_id,
                &JoinTokenRecord {
                    secret_sha256: *secret_sha256,
                    node_name: node_name.clone(),
                    purpose: *purpose,
                    expires_ms: *expires_ms,
                    used: false,
                },
            )?;
            Ok(Outcome::Done)
        }
        Op::RedeemJoinToken {
            token_id,
            presented_sha256,
            node_name,
        } => {
            let Some(mut rec) = get::<JoinTokenRecord>(tx, JOIN_TOKENS, "join_tokens", token_id)?
            else {
                return rejected(Rejection::JoinTokenUnknown);
            };
            // Compare the secret first, in constant time, so nothing about the token's state is
            // revealed to someone who does not hold it.
            if !bool::from(rec.secret_sha256.ct_eq(presented_sha256)) {
                return rejected(Rejection::JoinTokenMismatch);
            }
            if rec.used {
                return rejected(Rejection::JoinTokenUsed);
            }
            if now >= rec.expires_ms {
                return rejected(Rejection::JoinTokenExpired);
            }
            if rec.node_name != *node_name {
                return rejected(Rejection::JoinTokenWrongName);
            }
            if rec.purpose == JoinPurpose::Agent && is_banned(tx, node_name)? {
                return rejected(Rejection::Banned);
            }
            let invite = if rec.purpose == JoinPurpose::User {
                let Some(invite) = get::<UserInvite>(tx, USER_INVITES, "user_invites", token_id)?
                else {
                    return rejected(Rejection::JoinTokenUnknown);
                };
                if get::<User>(tx, USERS, "users", invite.user.name.as_bytes())?.is_some() {
                    return rejected(Rejection::UserExists);
                }
                Some(invite)
            } else {
                None
            };
            // The compare-and-set: this entry is applied in log order on every replica, so of
            // two redemptions of one token exactly the first finds `used == false`.
            rec.used = true;
            put(tx, JOIN_TOKENS, token_id, &rec)?;
            if let Some(invite) = invite {
                // The invite becomes the user, in the same transaction.
                remove(tx, USER_INVITES, token_id)?;
                put(tx, USERS, invite.user.name.as_bytes(), &invite.user)?;
            }
            if rec.purpose == JoinPurpose::Agent {
                put(
                    tx,
                    NODES,
                    node_name.as_bytes(),
                    &NodeRecord {
                        name: node_name.clone(),
                        status: NodeStatus::Active,
                        since_ms: now,
                    },
                )?;
            }
            Ok(Outcome::Done)
        }
        Op::SetNodeStatus { name, status } => {
            let existing = get::<NodeRecord>(tx, NODES, "nodes", name.as_bytes())?;
            match (status, &existing) {
                (NodeStatus::Banned, _) => {}
                (_, None) => return rejected(Rejection::NotFound),
                (_, Some(r)) if r.status == NodeStatus::Banned => {
                    return rejected(Rejection::Banned);
                }
                _ => {}
            }
            put(
                tx,
                NODES,
                name.as_bytes(),
                &NodeRecord {
                    name: name.clone(),
                    status: *status,
                    since_ms: now,
                },
            )?;
            if *status != NodeStatus::Active {
                revoke_node_serials(tx, name, now)?;
            }
            Ok(Outcome::Done)
        }
        Op::PutEntry { entry } => put_entry(tx, entry, now).map(Outcome::Revision),
        Op::DeleteEntry { id } => match delete_entry(tx, id)? {
            Some(revision) => Ok(Outcome::Revision(revision)),
            None => rejected(Rejection::NotFound),
        },
        Op::PutUser { user } => {
            put(tx, USERS, user.name.as_bytes(), user)?;
            Ok(Outcome::Done)
        }
        Op::RemoveUser { name } => {
            if remove(tx, USERS, name.as_bytes())? {
                remove(tx, SUSPENDED_USERS, name.as_bytes())?;
                revoke_user_credentials(tx, name, now)?;
                Ok(Outcome::Done)
            } else {
                rejected(Rejection::NotFound)
            }
        }
        Op::PutRole { role } => {
            put(tx, ROLES, role.name.as_bytes(), role)?;
            Ok(Outcome::Done)
        }
        Op::RemoveRole { name } => {
            if remove(tx, ROLES, name.as_bytes())? {
                Ok(Outcome::Done)
            } else {
                rejected(Rejection::NotFound)
            }
        }
        Op::Revoke { ids, expires_ms } => {
            let ids: Vec<(Vec<u8>, u64)> = ids.iter().map(|i| (i.clone(), *expires_ms)).collect();
            super::lineage::revoke_with_descendants(tx, &ids)?;
            Ok(Outcome::Done)
        }
        Op::IssueSvid {
            node,
            serial,
            not_after_ms,
        } => {
            let active = get::<NodeRecord>(tx, NODES, "nodes", node.as_bytes())?
                .is_some_and(|r| r.status == NodeStatus::Active);
            if !active {
                return rejected(Rejection::NodeInactive);
            }
            tx.open_table(NODE_SERIALS)?.insert(
                compound(node, serial).as_slice(),
                &serial_value(*not_after_ms, cmd.audit.authority)[..],
            )?;
            super::lineage::mark_issued_until(tx, cmd.audit.authority, *not_after_ms)?;
            Ok(Outcome::Done)
        }
        Op::IssueUserInvite {
            token_id,
            secret_sha256,
            user,
            expires_ms,
        } => {
            if get::<JoinTokenRecord>(tx, JOIN_TOKENS, "join_tokens", token_id)?.is_some() {
                return rejected(Rejection::Invalid("join token id already exists".into()));
            }
            put(
                tx,
                JOIN_TOKENS,
                token_id,
                &JoinTokenRecord {
                    secret_sha256: *secret_sha256,
                    node_name: user.name.clone(),
                    purpose: JoinPurpose::User,
                    expires_ms: *expires_ms,
                    used: false,
                },
            )?;
            put(
                tx,
                USER_INVITES,
                token_id,
                &UserInvite {
                    user: user.clone(),
                    expires_ms: *expires_ms,
                },
            )?;
            Ok(Outcome::Done)
        }
        Op::IssueUserCredential {
            user,
            serial,
            not_after_ms,
            revocation_ids,
            expires_ms,
        } => {
            if get::<User>(tx, USERS, "users", user.as_bytes())?.is_none() {
                return rejected(Rejection::NotFound);
            }
            if get::<u64>(tx, SUSPENDED_USERS, "suspended_users", user.as_bytes())?.is_some() {
                return rejected(Rejection::UserSuspended);
            }
            tx.open_table(USER_SERIALS)?.insert(
                compound(user, serial).as_slice(),
                &serial_value(*not_after_ms, cmd.audit.authority)[..],
            )?;
            {
                let mut t = tx.open_table(USER_TOKENS)?;
                for id in revocation_ids {
                    t.insert(compound(user, id).as_slice(), &be(*expires_ms)[..])?;
                }
            }
            if let Some(first) = revocation_ids.first() {
                let record = MintRecord {
                    parents: Vec::new(),
                    minter: "authority".into(),
                    subject: crate::command::principal_path(user),
                    expires_ms: *expires_ms,
                };
                tx.open_table(MINTED)?
                    .insert(first.as_slice(), encode(&record)?.as_slice())?;
            }
            super::lineage::mark_issued_until(tx, cmd.audit.authority, *not_after_ms)?;
            Ok(Outcome::Done)
        }
        Op::SetUserSuspended { name, suspended } => {
            if get::<User>(tx, USERS, "users", name.as_bytes())?.is_none() {
                return rejected(Rejection::NotFound);
            }
            if *suspended {
                tx.open_table(SUSPENDED_USERS)?
                    .insert(name.as_bytes(), &be(now)[..])?;
            } else {
                remove(tx, SUSPENDED_USERS, name.as_bytes())?;
            }
            Ok(Outcome::Done)
        }
        Op::RecordMint {
            id,
            parents,
            minter,
            subject,
            expires_ms,
        } => super::lineage::record_mint(
            tx,
            id,
            &MintRecord {
                parents: parents.clone(),
                minter: minter.clone(),
                subject: subject.clone(),
                expires_ms: *expires_ms,
            },
        ),
        Op::SealAudit { up_to } => {
            let sealed = match meta_get(tx, META_AUDIT_SEALED)? {
                Some(v) => read_u64(&v)?,
                None => 0,
            };
            // The seal command's own record is appended after this, so the tree's current
            // size is an upper bound that never includes it.
            let size = super::audit_log::size_in(tx)?;
            if *up_to <= sealed || *up_to > size {
                return rejected(Rejection::Invalid(format!(
                    "can seal only between {sealed} and {size}"
                )));
            }
            super::audit_log::seal(tx, sealed, *up_to)?;
            meta_put(tx, META_AUDIT_SEALED, &be(*up_to))?;
            Ok(Outcome::Done)
        }
        Op::PutMeshPolicy { policy } => super::mesh::put_policy(tx, policy, now, &cmd.audit.actor),
        Op::DeleteMeshPolicy { policy } => super::mesh::delete_policy(tx, policy),
        Op::PutJob { job } => super::jobs::put_job(tx, job, now, &cmd.audit.actor),
        Op::StopJob { namespace, name } => super::jobs::stop_job(tx, namespace, name),
        Op::PurgeJob { namespace, name } => super::jobs::purge_job(tx, namespace, name),
        Op::PlaceAllocs { allocs } => super::allocs::place(tx, allocs, now, &cmd.audit.actor),
        Op::StopAllocs { ids } => super::allocs::stop(tx, ids, now),
        Op::MarkAllocsLost { ids } => super::allocs::mark_lost(tx, ids, now),
        Op::RemoveAllocs { ids } => super::allocs::remove_allocs(tx, ids),
        Op::ReportAllocStatus { node, updates } => super::allocs::report(tx, node, updates, now),
        Op::SetNodeDrain { node, drain } => {
            super::allocs::set_drain(tx, node, *drain, now, &cmd.audit.actor)
        }
        Op::AcquireSchedLease {
            scope,
            holder,
            ttl_ms,
        } => super::lease::acquire(tx, scope, holder, *ttl_ms, now, &cmd.audit.actor),
        Op::ReleaseSchedLease { scope, holder } => {
            super::lease::release(tx, scope, holder, &cmd.audit.actor, now)
        }
        Op::FencedAllocWrite { lease, write } => {
            super::allocs::fenced_write(tx, lease.as_ref(), write, now, &cmd.audit.actor)
        }
        Op::PurgeExpired => {
            purge_where(tx, REVOCATIONS, |v| Ok(read_u64(v)? <= now))?;
            purge_where(tx, NODE_SERIALS, |v| Ok(read_not_after(v)? <= now))?;
            purge_where(tx, REVOKED_SERIALS, |v| Ok(read_u64(v)? <= now))?;
            purge_where(tx, USER_SERIALS, |v| Ok(read_not_after(v)? <= now))?;
            purge_where(tx, USER_TOKENS, |v| Ok(read_u64(v)? <= now))?;
            super::lineage::purge_expired(tx, now)?;
            purge_where(tx, USER_INVITES, |v| {
                Ok(decode::<UserInvite>("user_invites", v)?.expires_ms <= now)
            })?;
            purge_where(tx, JOIN_TOKENS, |v| {
                Ok(decode::<JoinTokenRecord>("join_tokens", v)?.expires_ms <= now)
            })?;
            purge_where(tx, COMMANDS, |v| {
                Ok(decode::<CommandRecord>("commands", v)?
                    .time_ms
                    .saturating_add(COMMAND_ID_RETENTION_MS)
                    <= now)
            })?;
            Ok(Outcome::Done)
        }
    }
}

/// Stores `entry` (new or changed) with the next revision, indexes it by parent and records the
/// change in each affected agent's feed. Returns the revision.
pub(super) fn put_entry(
    tx: &WriteTransaction,
    entry: &RegistrationEntry,
    now: u64,
) -> Result<u64, StateError> {
    let revision = next_counter(tx, CTR_REVISION)?;
    tx.open_table(ENTRY_CHANGED_MS)?
        .insert(entry.id.as_bytes(), &be(now)[..])?;
    let previous = get::<RegistrationEntry>(tx, ENTRIES, "entries", entry.id.as_bytes())?;
    if previous.is_none() {
        tx.open_table(ENTRY_CREATED)?
            .insert(entry.id.as_bytes(), &be(revision)[..])?;
    }
    if let Some(prev) = previous.filter(|p| p.parent != entry.parent) {
        // Moved to another node: the old parent's feed says it is gone.
        remove(
            tx,
            ENTRIES_BY_PARENT,
            &compound(&prev.parent, entry.id.as_bytes()),
        )?;
        record_change(tx, &prev.parent, revision, &entry.id, true)?;
    }
    let stored = RegistrationEntry {
        revision,
        ..entry.clone()
    };
    put(tx, ENTRIES, entry.id.as_bytes(), &stored)?;
    tx.open_table(ENTRIES_BY_PARENT)?.insert(
        compound(&entry.parent, entry.id.as_bytes()).as_slice(),
        &[][..],
    )?;
    record_change(tx, &entry.parent, revision, &entry.id, false)?;
    Ok(revision)
}

/// Deletes the entry `id` and records the removal in its agent's feed; `None` if there is none.
pub(super) fn delete_entry(tx: &WriteTransaction, id: &str) -> Result<Option<u64>, StateError> {
    let Some(prev) = get::<RegistrationEntry>(tx, ENTRIES, "entries", id.as_bytes())? else {
        return Ok(None);
    };
    let revision = next_counter(tx, CTR_REVISION)?;
    remove(tx, ENTRIES, id.as_bytes())?;
    remove(tx, ENTRY_CREATED, id.as_bytes())?;
    remove(tx, ENTRY_CHANGED_MS, id.as_bytes())?;
    remove(
        tx,
        ENTRIES_BY_PARENT,
        &compound(&prev.parent, id.as_bytes()),
    )?;
    record_change(tx, &prev.parent, revision, id, true)?;
    Ok(Some(revision))
}

fn is_banned(tx: &WriteTransaction, name: &str) -> Result<bool, StateError> {
    Ok(get::<NodeRecord>(tx, NODES, "nodes", name.as_bytes())?
        .is_some_and(|r| r.status == NodeStatus::Banned))
}

fn record_change(
    tx: &WriteTransaction,
    parent: &str,
    revision: u64,
    entry_id: &str,
    removed: bool,
) -> Result<(), StateError> {
    put(
        tx,
        ENTRY_CHANGES,
        &compound(parent, &be(revision)),
        &EntryChange {
            revision,
            entry_id: entry_id.to_owned(),
            removed,
        },
    )
}

/// Moves every unexpired serial recorded for `node` to the revoked serials.
fn revoke_node_serials(tx: &WriteTransaction, node: &str, now: u64) -> Result<(), StateError> {
    let start = compound(node, b"");
    let mut end = start.clone();
    if let Some(l) = end.last_mut() {
        *l = 1;
    }
    let mut taken = Vec::new();
    {
        let t = tx.open_table(NODE_SERIALS)?;
        for row in t.range(start.as_slice()..end.as_slice())? {
            let (k, v) = row?;
            taken.push((k.value().to_vec(), read_not_after(v.value())?));
        }
    }
    let mut serials = tx.open_table(NODE_SERIALS)?;
    let mut revoked = tx.open_table(REVOKED_SERIALS)?;
    for (key, not_after) in taken {
        serials.remove(key.as_slice())?;
        if not_after > now {
            revoked.insert(&key[start.len()..], &be(not_after)[..])?;
        }
    }
    Ok(())
}

/// Takes every row of `table` under `owner \0`, as (the part after the prefix, value).
fn take_rows(
    tx: &WriteTransaction,
    table: Raw,
    owner: &str,
) -> Result<Vec<(Vec<u8>, u64)>, StateError> {
    let start = compound(owner, b"");
    let mut end = start.clone();
    if let Some(l) = end.last_mut() {
        *l = 1;
    }
    let mut taken = Vec::new();
    {
        let t = tx.open_table(table)?;
        for row in t.range(start.as_slice()..end.as_slice())? {
            let (k, v) = row?;
            taken.push((k.value().to_vec(), read_not_after(v.value())?));
        }
    }
    let mut t = tx.open_table(table)?;
    let mut out = Vec::with_capacity(taken.len());
    for (key, value) in taken {
        t.remove(key.as_slice())?;
        out.push((key[start.len()..].to_vec(), value));
    }
    Ok(out)
}

/// A removed user's unexpired serials join the revoked serials, and its unexpired
/// capabilities the revocations (so every gate refuses them from this entry on).
fn revoke_user_credentials(tx: &WriteTransaction, user: &str, now: u64) -> Result<(), StateError> {
    let serials = take_rows(tx, USER_SERIALS, user)?;
    let tokens = take_rows(tx, USER_TOKENS, user)?;
    {
        let mut revoked = tx.open_table(REVOKED_SERIALS)?;
        for (serial, not_after) in serials.into_iter().filter(|(_, t)| *t > now) {
            revoked.insert(serial.as_slice(), &be(not_after)[..])?;
        }
    }
    // The user's own capabilities, and every token minted from them.
    let live: Vec<(Vec<u8>, u64)> = tokens.into_iter().filter(|(_, t)| *t > now).collect();
    super::lineage::revoke_with_descendants(tx, &live)
}
