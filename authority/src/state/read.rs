//! Reads of the state, from one consistent redb snapshot.

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::*;
use crate::types::{LogId, StoredMembership};

/// A consistent read view of the state machine.
pub struct StateReader {
    pub(super) tx: ReadTransaction,
}

impl std::fmt::Debug for StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReader").finish_non_exhaustive()
    }
}

impl StateReader {
    pub(crate) fn new(db: &redb::Database) -> Result<Self, StateError> {
        Ok(Self {
            tx: db.begin_read()?,
        })
    }

    pub(super) fn get<T: for<'de> serde::Deserialize<'de>>(
        &self,
        table: Raw,
        name: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StateError> {
        let t = self.tx.open_table(table)?;
        let v = t.get(key)?;
        v.map(|v| decode(name, v.value())).transpose()
    }

    fn all<T: for<'de> serde::Deserialize<'de>>(
        &self,
        table: Raw,
        name: &'static str,
    ) -> Result<Vec<T>, StateError> {
        let t = self.tx.open_table(table)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode(name, v.value())?);
        }
        Ok(out)
    }

    pub fn last_applied(&self) -> Result<Option<LogId>, StateError> {
        let t = self.tx.open_table(META)?;
        match t.get(META_LAST_APPLIED.as_bytes())? {
            Some(v) => decode("meta", v.value()),
            None => Ok(None),
        }
    }

    pub fn membership(&self) -> Result<StoredMembership, StateError> {
        let t = self.tx.open_table(META)?;
        match t.get(META_MEMBERSHIP.as_bytes())? {
            Some(v) => decode("meta", v.value()),
            None => Ok(StoredMembership::default()),
        }
    }

    /// The trust bundle: every key record, by id.
    pub fn keys(&self) -> Result<Vec<KeyRecord>, StateError> {
        self.all(KEYS, "keys")
    }

    pub fn authorities(&self) -> Result<Vec<AuthorityRecord>, StateError> {
        self.all(AUTHORITIES, "authorities")
    }

    pub fn node(&self, name: &str) -> Result<Option<NodeRecord>, StateError> {
        self.get(NODES, "nodes", name.as_bytes())
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StateError> {
        self.all(NODES, "nodes")
    }

    /// Every join token record (used, unused and expired until purged).
    pub fn join_tokens(&self) -> Result<Vec<JoinTokenRecord>, StateError> {
        self.all(JOIN_TOKENS, "join_tokens")
    }

    /// Whether some join token expired at or before `now_ms` (stops at the first one found).
    pub fn any_join_token_expired(&self, now_ms: u64) -> Result<bool, StateError> {
        let t = self.tx.open_table(JOIN_TOKENS)?;
        for row in t.iter()? {
            let (_, v) = row?;
            if decode::<JoinTokenRecord>("join_tokens", v.value())?.expires_ms <= now_ms {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn join_token(&self, id: &[u8; 16]) -> Result<Option<JoinTokenRecord>, StateError> {
        self.get(JOIN_TOKENS, "join_tokens", id)
    }

    pub fn entry(&self, id: &str) -> Result<Option<RegistrationEntry>, StateError> {
        self.get(ENTRIES, "entries", id.as_bytes())
    }

    /// The entries parented to `node`, through the parent index (no full scan).
    /// The revision at which entry `e` was created (entries older than this record count
    /// as created at their last revision).
    pub fn entry_created(&self, e: &RegistrationEntry) -> Result<u64, StateError> {
        let t = self.tx.open_table(ENTRY_CREATED)?;
        Ok(match t.get(e.id.as_bytes())? {
            Some(v) => <[u8; 8]>::try_from(v.value())
                .map(u64::from_be_bytes)
                .unwrap_or(e.revision),
            None => e.revision,
        })
    }

    /// When `e`'s last change was proposed (unix ms; 0: not recorded).
    pub fn entry_changed_ms(&self, e: &RegistrationEntry) -> Result<u64, StateError> {
        let t = self.tx.open_table(ENTRY_CHANGED_MS)?;
        Ok(match t.get(e.id.as_bytes())? {
            Some(v) => <[u8; 8]>::try_from(v.value())
                .map(u64::from_be_bytes)
                .unwrap_or(0),
            None => 0,
        })
    }

    pub fn entries_of(&self, node: &str) -> Result<Vec<RegistrationEntry>, StateError> {
        let index = self.tx.open_table(ENTRIES_BY_PARENT)?;
        let start = compound(node, b"");
        let mut end = compound(node, b"");
        if let Some(last) = end.last_mut() {
            *last = 1; // `node \x01` sorts right after every `node \0 …`
        }
        let mut out = Vec::new();
        for row in index.range(start.as_slice()..end.as_slice())? {
            let (k, _) = row?;
            let id = &k.value()[start.len()..];
            let id = std::str::from_utf8(id).map_err(|_| StateError::Corrupt {
                table: "entries_by_parent",
                detail: "entry id not UTF-8".into(),
            })?;
            if let Some(e) = self.entry(id)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// How many registration entries there are.
    pub fn entry_count(&self) -> Result<u64, StateError> {
        Ok(self.tx.open_table(ENTRIES)?.len()?)
    }

    /// The revision of the latest entry change (0 before any).
    pub fn entry_revision(&self) -> Result<u64, StateError> {
        let t = self.tx.open_table(META)?;
        let Some(v) = t.get(CTR_REVISION.as_bytes())? else {
            return Ok(0);
        };
        let bytes: [u8; 8] = v.value().try_into().map_err(|_| StateError::Corrupt {
            table: "meta",
            detail: "revision counter".into(),
        })?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// A page of entries in id order after `after` (exclusive; `""` from the start), of
    /// `parent` when given (through the parent index), that `keep` accepts; and the id to
    /// continue after when more may follow. At most `page` entries; scans at most 10 × `page`
    /// rows per call so a selective filter cannot make one call unbounded.
    pub fn entries_page(
        &self,
        parent: Option<&str>,
        after: &str,
        page: usize,
        keep: impl Fn(&RegistrationEntry) -> bool,
    ) -> Result<(Vec<RegistrationEntry>, Option<String>), StateError> {
        let mut out = Vec::new();
        let budget = page.saturating_mul(10).max(1);
        let mut scanned = 0usize;
        let mut last: Option<String> = None;
        let mut exhausted = true;
        let mut visit = |id: &str, e: Option<RegistrationEntry>| -> bool {
            scanned += 1;
            last = Some(id.to_owned());
            if let Some(e) = e
                && keep(&e)
            {
                out.push(e);
            }
            out.len() < page && scanned < budget
        };
        match parent {
            Some(node) => {
                let index = self.tx.open_table(ENTRIES_BY_PARENT)?;
                let base = compound(node, b"");
                let mut start = compound(node, after.as_bytes());
                if !after.is_empty() {
                    start.push(0); // strictly after `after`
                }
                let mut end = base.clone();
                if let Some(l) = end.last_mut() {
                    *l = 1;
                }
                for row in index.range(start.as_slice()..end.as_slice())? {
                    let (k, _) = row?;
                    let id = std::str::from_utf8(&k.value()[base.len()..])
                        .map_err(|_| StateError::Corrupt {
                            table: "entries_by_parent",
                            detail: "entry id not UTF-8".into(),
                        })?
                        .to_owned();
                    let e = self.entry(&id)?;
                    if !visit(&id, e) {
                        exhausted = false;
                        break;
                    }
                }
            }
            None => {
                let t = self.tx.open_table(ENTRIES)?;
                let mut start = after.as_bytes().to_vec();
                if !after.is_empty() {
                    start.push(0);
                }
                for row in t.range(start.as_slice()..)? {
                    let (k, v) = row?;
                    let id = String::from_utf8_lossy(k.value()).into_owned();
                    let e: RegistrationEntry = decode("entries", v.value())?;
                    if !visit(&id, Some(e)) {
                        exhausted = false;
                        break;
                    }
                }
            }
        }
        Ok((out, if exhausted { None } else { last }))
    }

    /// `node`'s entry changes after `revision`, oldest first, at most `limit`.
    pub fn entry_changes_since(
        &self,
        node: &str,
        revision: u64,
        limit: usize,
    ) -> Result<Vec<EntryChange>, StateError> {
        let t = self.tx.open_table(ENTRY_CHANGES)?;
        let start = compound(node, &be(revision.saturating_add(1)));
        let end = compound(node, &be(u64::MAX));
        let mut out = Vec::new();
        for row in t.range(start.as_slice()..=end.as_slice())? {
            let (_, v) = row?;
            out.push(decode("entry_changes", v.value())?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn user(&self, name: &str) -> Result<Option<User>, StateError> {
        self.get(USERS, "users", name.as_bytes())
    }

    pub fn users(&self) -> Result<Vec<User>, StateError> {
        self.all(USERS, "users")
    }

    /// The user an unredeemed invite will create.
    pub fn user_invite(&self, token_id: &[u8; 16]) -> Result<Option<UserInvite>, StateError> {
        self.get(USER_INVITES, "user_invites", token_id)
    }

    /// Every custom role, by name.
    pub fn roles(&self) -> Result<Vec<RoleDef>, StateError> {
        self.all(ROLES, "roles")
    }

    pub fn role(&self, name: &str) -> Result<Option<RoleDef>, StateError> {
        self.get(ROLES, "roles", name.as_bytes())
    }

    /// Whether `user` is suspended.
    pub fn is_suspended(&self, user: &str) -> Result<bool, StateError> {
        Ok(self
            .tx
            .open_table(SUSPENDED_USERS)?
            .get(user.as_bytes())?
            .is_some())
    }

    /// The record of a capability the cluster minted, by its authority block's revocation id.
    pub fn minted(&self, id: &[u8]) -> Result<Option<MintRecord>, StateError> {
        self.get(MINTED, "minted", id)
    }

    /// Whether a serial was recorded as issued to (or for) agent node `node` by the CA of
    /// authority member `issuer` (a record from before issuers were kept matches any issuer).
    pub fn has_node_serial(
        &self,
        node: &str,
        serial: &[u8],
        issuer: Option<u64>,
    ) -> Result<bool, StateError> {
        self.serial_from(NODE_SERIALS, node, serial, issuer)
    }

    /// Whether `owner`'s `serial` is recorded in `table` as signed by `issuer`'s CA.
    fn serial_from(
        &self,
        table: Raw,
        owner: &str,
        serial: &[u8],
        issuer: Option<u64>,
    ) -> Result<bool, StateError> {
        let t = self.tx.open_table(table)?;
        let Some(v) = t.get(compound(owner, serial).as_slice())? else {
            return Ok(false);
        };
        Ok(match super::rows::read_issuer(v.value())? {
            Some(recorded) => issuer == Some(recorded),
            None => true,
        })
    }

    /// Whether `id` is the revocation id of a capability the authority issued to `user` (at
    /// `user add`, invite redemption or renewal).
    pub fn has_user_token(&self, user: &str, id: &[u8]) -> Result<bool, StateError> {
        Ok(self
            .tx
            .open_table(USER_TOKENS)?
            .get(compound(user, id).as_slice())?
            .is_some())
    }

    /// Whether a serial was recorded as issued to user `user` by the CA of authority member
    /// `issuer` (a record from before issuers were kept matches any issuer).
    pub fn has_user_serial(
        &self,
        user: &str,
        serial: &[u8],
        issuer: Option<u64>,
    ) -> Result<bool, StateError> {
        self.serial_from(USER_SERIALS, user, serial, issuer)
    }

    /// Whether a certificate serial was revoked (its node evicted or banned, its user removed).
    pub fn is_serial_revoked(&self, serial: &[u8]) -> Result<bool, StateError> {
        Ok(self.tx.open_table(REVOKED_SERIALS)?.get(serial)?.is_some())
    }

    /// When key `id` was retired, if it was.
    pub fn key_retired_ms(&self, id: u64) -> Result<Option<u64>, StateError> {
        let t = self.tx.open_table(KEY_RETIRED)?;
        t.get(&be(id)[..])?
            .map(|v| super::rows::read_u64(v.value()))
            .transpose()
    }

    /// The latest not-after of any SVID recorded as issued by member `authority` (0: none).
    pub fn issued_until(&self, authority: NodeId) -> Result<u64, StateError> {
        let t = self.tx.open_table(META)?;
        let key = format!("{META_ISSUED_UNTIL}{authority}");
        Ok(match t.get(key.as_bytes())? {
            Some(v) => super::rows::read_u64(v.value())?,
            None => 0,
        })
    }

    /// Why a capability, by the revocation ids of its blocks, may no longer be honoured
    /// although its own blocks are not revoked: it was minted — directly or through tokens
    /// minted from tokens — by a user now suspended or removed. `None` when nothing in its
    /// lineage is cut off (or it was not minted by the cluster).
    pub fn lineage_cut_off(&self, ids: &[Vec<u8>]) -> Result<Option<String>, StateError> {
        let mut next = ids.first().cloned();
        for _ in 0..super::lineage::MAX_LINEAGE_DEPTH {
            let Some(id) = next.take() else {
                return Ok(None);
            };
            let Some(rec) = self.minted(&id)? else {
                return Ok(None);
            };
            if let Some(user) = rec
                .minter
                .split_once("/user/")
                .map(|(_, u)| u)
                .filter(|u| !u.contains('/'))
            {
                if self.user(user)?.is_none() {
                    return Ok(Some(format!("minted by user {user}, who was removed")));
                }
                if self.is_suspended(user)? {
                    return Ok(Some(format!("minted by user {user}, who is suspended")));
                }
            }
            next = rec.parents.first().cloned();
        }
        Ok(Some("lineage deeper than the cluster follows".into()))
    }

    pub fn is_revoked(&self, id: &[u8]) -> Result<bool, StateError> {
        Ok(self.tx.open_table(REVOCATIONS)?.get(id)?.is_some())
    }

    /// Every revoked id with the time it may be forgotten.
    pub fn revocations(&self) -> Result<Vec<(Vec<u8>, u64)>, StateError> {
        let t = self.tx.open_table(REVOCATIONS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_vec(), super::rows::read_u64(v.value())?));
        }
        Ok(out)
    }

    /// Serials revoked by evicting or banning their node, with their not-after (unix ms).
    pub fn revoked_serials(&self) -> Result<Vec<(Vec<u8>, u64)>, StateError> {
        let t = self.tx.open_table(REVOKED_SERIALS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_vec(), super::rows::read_u64(v.value())?));
        }
        Ok(out)
    }

    /// The number of audit records.
    pub fn audit_len(&self) -> Result<u64, StateError> {
        Ok(self.tx.open_table(AUDIT)?.len()?)
    }

    /// Audit records with sequence numbers from `from`, at most `limit`.
    pub fn audit(&self, from: u64, limit: usize) -> Result<Vec<StoredAudit>, StateError> {
        let t = self.tx.open_table(AUDIT)?;
        let mut out = Vec::new();
        for row in t.range(be(from).as_slice()..)? {
            let (_, v) = row?;
            out.push(decode("audit", v.value())?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The rows of `table` under `owner \0`: (the part after the prefix, a u64 value).
    fn owned_rows(&self, table: Raw, owner: &str) -> Result<Vec<(Vec<u8>, u64)>, StateError> {
        let start = compound(owner, b"");
        let mut end = start.clone();
        if let Some(l) = end.last_mut() {
            *l = 1; // `owner \x01` sorts right after every `owner \0 …`
        }
        let t = self.tx.open_table(table)?;
        let mut out = Vec::new();
        for row in t.range(start.as_slice()..end.as_slice())? {
            let (k, v) = row?;
            out.push((
                k.value().get(start.len()..).unwrap_or_default().to_vec(),
                // Serial rows also carry their issuer after the not-after.
                super::rows::read_not_after(v.value())?,
            ));
        }
        Ok(out)
    }

    /// The serials recorded for agent node `node` (its node SVIDs and the workload SVIDs it
    /// obtained) with their not-after (unix ms); an eviction or ban moves them to the revoked
    /// serials.
    pub fn node_serials(&self, node: &str) -> Result<Vec<(Vec<u8>, u64)>, StateError> {
        self.owned_rows(NODE_SERIALS, node)
    }

    /// The serials issued to user `user`, with their not-after (unix ms).
    pub fn user_serials(&self, user: &str) -> Result<Vec<(Vec<u8>, u64)>, StateError> {
        self.owned_rows(USER_SERIALS, user)
    }

    /// The revocation ids of the capabilities issued to user `user`, with their expiry.
    pub fn user_tokens(&self, user: &str) -> Result<Vec<(Vec<u8>, u64)>, StateError> {
        self.owned_rows(USER_TOKENS, user)
    }

    /// Every recorded mint `keep` accepts, by its authority block's revocation id. A full scan:
    /// mint records are dropped once their token expired, so the table holds only live ones.
    fn mints_where(
        &self,
        keep: impl Fn(&MintRecord) -> bool,
    ) -> Result<Vec<(Vec<u8>, MintRecord)>, StateError> {
        let t = self.tx.open_table(MINTED)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let rec: MintRecord = decode("minted", v.value())?;
            if keep(&rec) {
                out.push((k.value().to_vec(), rec));
            }
        }
        Ok(out)
    }

    /// The capabilities `minter` (a SPIFFE ID, or `authority`) minted through the cluster.
    pub fn mints_by_minter(&self, minter: &str) -> Result<Vec<(Vec<u8>, MintRecord)>, StateError> {
        self.mints_where(|r| r.minter == minter)
    }

    /// The capabilities minted for `subject` (as the mint recorded it).
    pub fn mints_for_subject(
        &self,
        subject: &str,
    ) -> Result<Vec<(Vec<u8>, MintRecord)>, StateError> {
        self.mints_where(|r| r.subject == subject)
    }

    /// The tokens minted from a token holding revocation id `parent`, by their authority
    /// block's revocation id, with their expiry (unix ms).
    pub fn mint_children(&self, parent: &[u8]) -> Result<Vec<(Vec<u8>, u64)>, StateError> {
        let start = super::lineage::child_key(parent, b"");
        let mut end = start.clone();
        // Children are at most 128 bytes: `start ‖ 0xff × 129` bounds them.
        end.extend(std::iter::repeat_n(0xff, 129));
        let t = self.tx.open_table(MINT_CHILDREN)?;
        let mut out = Vec::new();
        for row in t.range(start.as_slice()..end.as_slice())? {
            let (k, v) = row?;
            let child = k.value().get(start.len()..).unwrap_or_default().to_vec();
            if !child.is_empty() {
                out.push((child, super::rows::read_u64(v.value())?));
            }
        }
        Ok(out)
    }

    /// The `rights` detail of the allowed `token:mint` records by `actor` for the tokens whose
    /// authority-block revocation ids are in `wanted`, keyed by that id. Reads `actor`'s
    /// records newest first through the actor index, stopping once every wanted id is found,
    /// at a record older than `since_ms`, or after `budget` records.
    pub fn minted_rights(
        &self,
        actor: &str,
        wanted: &[Vec<u8>],
        since_ms: u64,
        budget: usize,
    ) -> Result<std::collections::BTreeMap<Vec<u8>, String>, StateError> {
        let mut found = std::collections::BTreeMap::new();
        if wanted.is_empty() {
            return Ok(found);
        }
        let start = compound(actor, &be(0));
        let end = compound(actor, &be(u64::MAX));
        let t = self.tx.open_table(AUDIT_BY_ACTOR)?;
        for row in t
            .range(start.as_slice()..=end.as_slice())?
            .rev()
            .take(budget)
        {
            let (k, _) = row?;
            let Some(seq) = k
                .value()
                .get(start.len().saturating_sub(8)..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            let Some(a) = self.get::<StoredAudit>(AUDIT, "audit", &be(seq))? else {
                continue; // sealed
            };
            if a.time_ms < since_ms {
                break;
            }
            let r = &a.record;
            if r.operation != "token:mint" || r.decision != crate::command::AuditDecision::Allow {
                continue;
            }
            let detail = |name: &str| {
                r.details
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            let Some(first) = detail("minted_token")
                .and_then(|ids| ids.split(',').next())
                .and_then(|h| hex::decode(h).ok())
            else {
                continue;
            };
            if wanted.contains(&first) && !found.contains_key(&first) {
                found.insert(first, detail("rights").unwrap_or_default().to_owned());
                if found.len() == wanted.len() {
                    break;
                }
            }
        }
        Ok(found)
    }
}
