//! Registration entries: create, update, delete, show and list, gated on `entry:write` /
//! `entry:read` with the SPIFFE ID's path as the resource (`spiffe://TD/ns/a/web` → `ns/a/web`),
//! plus `entry:select` on what the entry selects and `entry:dns` on its DNS names, so a
//! namespace manages exactly its own identities and claims only the processes and names it was
//! given. Reserved IDs (`ringzero/…`, `user/…`) are refused.

use std::time::Duration;

use ringzero_policy::selector::{Selector, is_weak};
use ringzero_policy::{NodeName, Operation, Resource, SpiffeId};
use ringzero_proto::pb;

use super::nodes::*;
use super::{AuthorityService, status_of};
use crate::command::{Op, Outcome, RegistrationEntry};

/// The resource an entry's rights are checked on: its SPIFFE ID's path.
pub(super) fn entry_resource(id: &SpiffeId) -> Result<Resource, tonic::Status> {
    let segments: Vec<&str> = id.segments().collect();
    if segments.is_empty() {
        return Err(invalid("an entry's SPIFFE ID needs a path"));
    }
    Resource::from_segments(&segments).map_err(invalid)
}

/// The wire form of `e`, with its creation revision read from `reader`.
pub(crate) fn entry_to_pb(
    reader: &crate::StateReader,
    e: &RegistrationEntry,
) -> Result<pb::RegistrationEntry, tonic::Status> {
    Ok(pb::RegistrationEntry {
        created_revision: reader.entry_created(e).map_err(status_of)?,
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.clone(),
        parent: e.parent.clone(),
        selectors: e.selectors.clone(),
        ttl_seconds: e.ttl_s,
        dns_names: e.dns_names.clone(),
        revision: e.revision,
        changed_ms: reader.entry_changed_ms(e).map_err(status_of)?,
    })
}

impl AuthorityService {
    /// Validates an entry request into the entry to store, checking rights on its identity.
    async fn put_entry(
        &self,
        req: tonic::Request<pb::PutEntryRequest>,
        update: bool,
    ) -> Result<tonic::Response<pb::EntryReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref();
        let id = SpiffeId::parse(&r.spiffe_id).map_err(|e| invalid(format!("spiffe id: {e}")))?;
        if !id.is_member_of(self.gate.trust_domain()) {
            return Err(invalid(format!(
                "{id} is not in trust domain {}",
                self.gate.trust_domain()
            )));
        }
        let resource = entry_resource(&id)?;
        let parent = NodeName::parse(&r.parent).map_err(|e| invalid(format!("node: {e}")))?;
        let mut selectors = Vec::with_capacity(r.selectors.len());
        for s in &r.selectors {
            selectors
                .push(Selector::parse(s).map_err(|e| invalid(format!("selector {s:?}: {e}")))?);
        }
        if selectors.is_empty() {
            return Err(invalid("an entry needs at least one selector"));
        }
        if let Some(s) = selectors.iter().find(|s| s.kind().is_reserved()) {
            // Only apply derives these (an allocation's entry); see `check_user_written`.
            return Err(invalid(format!(
                "selector {s} is reserved: the authority derives ringzero: selectors for \
                 allocations, an entry cannot name one"
            )));
        }
        if update && r.id.starts_with(crate::command::ALLOC_ENTRY_PREFIX) {
            return Err(invalid(
                "alloc-… entries are derived from allocations: stop or remove the allocation \
                 instead",
            ));
        }
        if is_weak(&selectors) && !r.allow_weak_selectors {
            return Err(invalid(
                "the entry selects only on unix:path / unix:sha256, which any user able to run \
                 that binary matches; add a unix:uid, unix:gid, unix:user or unix:group \
                 selector, or pass --allow-weak-selectors",
            ));
        }
        let ttl = if r.ttl_seconds == 0 {
            DEFAULT_ENTRY_TTL
        } else {
            Duration::from_secs(u64::from(r.ttl_seconds))
        };
        if ttl < MIN_ENTRY_TTL || ttl > MAX_ENTRY_TTL {
            return Err(invalid(format!(
                "ttl must be between {}s and {}s",
                MIN_ENTRY_TTL.as_secs(),
                MAX_ENTRY_TTL.as_secs()
            )));
        }
        let entry_id = if update {
            if r.id.is_empty() {
                return Err(invalid("an entry id is required"));
            }
            r.id.clone()
        } else {
            crate::command::random_hex()
        };
        let allowed = self
            .gate
            .check(&req, Operation::EntryWrite, &resource, None)
            .await?;
        if id.is_reserved() {
            // Refused whatever the caller's rights (`RegistrationEntry::validate` refuses it
            // too), and recorded: a caller allowed to write entries asking for a principal's
            // identity is the attack the reservation exists for.
            let mut audit = allowed.audit.clone();
            audit.decision = crate::command::AuditDecision::Deny;
            audit.reason = Some(format!(
                "reserved_id: {id} is reserved for principals the authority enrolls itself"
            ));
            self.gate.record_denial(audit).await;
            return Err(invalid(format!(
                "spiffe id {id}: the paths ringzero/… and user/… are reserved for principals \
                 the authority enrolls itself"
            )));
        }
        self.check_selectable(&req, &selectors, &parent).await?;
        for name in &r.dns_names {
            let dns = ringzero_policy::rights::dns_resource(name)
                .map_err(|e| invalid(format!("dns name {name:?}: {e}")))?;
            self.gate
                .check(&req, Operation::EntryDns, &dns, None)
                .await?;
        }
        if update {
            // Changing an entry needs the right on what it was, too.
            let existing = self
                .sm
                .reader()
                .map_err(status_of)?
                .entry(&entry_id)
                .map_err(status_of)?
                .ok_or_else(|| tonic::Status::not_found(format!("no entry {entry_id}")))?;
            let old = SpiffeId::parse(&existing.spiffe_id).map_err(status_of)?;
            if old != id {
                self.gate
                    .check(&req, Operation::EntryWrite, &entry_resource(&old)?, None)
                    .await?;
            }
        }
        let r = req.into_inner();
        let entry = RegistrationEntry {
            id: entry_id,
            spiffe_id: id.to_string(),
            parent: parent.to_string(),
            selectors: selectors.iter().map(ToString::to_string).collect(),
            ttl_s: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
            dns_names: r.dns_names,
            revision: 0,
        };
        entry
            .validate()
            .map_err(|e| invalid(format!("entry: {e}")))?;
        let mut cmd = allowed.command(Op::PutEntry {
            entry: entry.clone(),
        });
        cmd.audit.details.extend([
            ("entry_id".into(), entry.id.clone()),
            ("node".into(), entry.parent.clone()),
            ("selectors".into(), entry.selectors.join(" ")),
        ]);
        let resp = self.propose(cmd).await?;
        let revision = match outcome_status(resp.outcome)? {
            Outcome::Revision(r) => r,
            _ => 0,
        };
        let reader = self.sm.reader().map_err(status_of)?;
        Ok(tonic::Response::new(pb::EntryReply {
            entry: Some(entry_to_pb(
                &reader,
                &RegistrationEntry { revision, ..entry },
            )?),
        }))
    }

    /// Which processes an entry may select is a right of its own (`entry:select`), granted by
    /// an admin: a namespace that may write entries may still only select the users and groups
    /// it was given. The entry matches only processes that carry *every* selector, so one
    /// covered principal selector bounds it; an entry without any (path or hash only) selects
    /// every user's processes and needs `selector/unix/any/node/<node>`.
    async fn check_selectable<T>(
        &self,
        req: &tonic::Request<T>,
        selectors: &[Selector],
        parent: &NodeName,
    ) -> Result<(), tonic::Status> {
        let mut candidates = Vec::new();
        for sel in selectors {
            if let Some(r) = ringzero_policy::rights::selector_resource(sel, parent) {
                candidates.push(r.map_err(|e| invalid(format!("selector {sel}: {e}")))?);
            }
        }
        if candidates.is_empty() {
            candidates
                .push(ringzero_policy::rights::any_principal_resource(parent).map_err(invalid)?);
        }
        let Some(peer) = ringzero_proto::transport::peer(req).spiffe_id else {
            return Err(tonic::Status::unauthenticated(
                "an mTLS client SVID is required",
            ));
        };
        if candidates
            .iter()
            .any(|r| self.gate.also_allows(req, &peer, Operation::EntrySelect, r))
        {
            return Ok(());
        }
        // None is covered: decide (and audit) the denial on the first one.
        self.gate
            .check(req, Operation::EntrySelect, &candidates[0], None)
            .await
            .map(|_| ())
    }

    pub(crate) async fn create_entry_impl(
        &self,
        req: tonic::Request<pb::PutEntryRequest>,
    ) -> Result<tonic::Response<pb::EntryReply>, tonic::Status> {
        if !req.get_ref().id.is_empty() {
            return Err(invalid("the authority assigns entry ids; leave id empty"));
        }
        self.put_entry(req, false).await
    }

    pub(crate) async fn update_entry_impl(
        &self,
        req: tonic::Request<pb::PutEntryRequest>,
    ) -> Result<tonic::Response<pb::EntryReply>, tonic::Status> {
        self.put_entry(req, true).await
    }

    pub(super) fn existing_entry(&self, id: &str) -> Result<RegistrationEntry, tonic::Status> {
        if id.is_empty() || id.len() > 64 {
            return Err(invalid("bad entry id"));
        }
        self.sm
            .reader()
            .map_err(status_of)?
            .entry(id)
            .map_err(status_of)?
            .ok_or_else(|| tonic::Status::not_found(format!("no entry {id}")))
    }

    pub(crate) async fn delete_entry_impl(
        &self,
        req: tonic::Request<pb::DeleteEntryRequest>,
    ) -> Result<tonic::Response<pb::DeleteEntryReply>, tonic::Status> {
        self.require_leader()?;
        let entry = self.existing_entry(&req.get_ref().id)?;
        let id = SpiffeId::parse(&entry.spiffe_id).map_err(status_of)?;
        let allowed = self
            .gate
            .check(&req, Operation::EntryWrite, &entry_resource(&id)?, None)
            .await?;
        let mut cmd = allowed.command(Op::DeleteEntry {
            id: entry.id.clone(),
        });
        cmd.audit.details.push(("entry_id".into(), entry.id));
        let resp = self.propose(cmd).await?;
        outcome_status(resp.outcome)?;
        Ok(tonic::Response::new(pb::DeleteEntryReply {}))
    }

    pub(crate) async fn get_entry_impl(
        &self,
        req: tonic::Request<pb::GetEntryRequest>,
    ) -> Result<tonic::Response<pb::EntryReply>, tonic::Status> {
        self.require_leader()?;
        let entry = self.existing_entry(&req.get_ref().id)?;
        let id = SpiffeId::parse(&entry.spiffe_id).map_err(status_of)?;
        let allowed = self
            .gate
            .check(&req, Operation::EntryRead, &entry_resource(&id)?, None)
            .await?;
        self.gate.record(&allowed).await?;
        let reader = self.sm.reader().map_err(status_of)?;
        Ok(tonic::Response::new(pb::EntryReply {
            entry: Some(entry_to_pb(&reader, &entry)?),
        }))
    }

    /// Lists entries the caller may read, in id order, a page at a time. The capability is
    /// checked on the filter's scope: with a SPIFFE ID filter, that identity; otherwise the
    /// whole entry space, or — for callers confined to a namespace — entries the caller's
    /// rights cover are returned and others skipped.
    pub(crate) async fn list_entries_impl(
        &self,
        req: tonic::Request<pb::ListEntriesRequest>,
    ) -> Result<tonic::Response<pb::ListEntriesReply>, tonic::Status> {
        self.require_leader()?;
        let r = req.get_ref();
        let scope = if r.spiffe_id.is_empty() {
            Resource::root()
        } else {
            let id = SpiffeId::parse(&r.spiffe_id).map_err(invalid)?;
            entry_resource(&id)?
        };
        let parent = if r.parent.is_empty() {
            None
        } else {
            Some(NodeName::parse(&r.parent).map_err(invalid)?)
        };
        let page = (r.page_size as usize).clamp(1, MAX_PAGE);
        let after = r.page_token.clone();
        let spiffe_filter = r.spiffe_id.clone();
        let allowed = self
            .gate
            .check(&req, Operation::EntryRead, &scope, None)
            .await?;
        self.gate.record(&allowed).await?;
        let reader = self.sm.reader().map_err(status_of)?;
        let (entries, next) = reader
            .entries_page(parent.as_ref().map(|p| p.as_str()), &after, page, |e| {
                spiffe_filter.is_empty() || e.spiffe_id == spiffe_filter
            })
            .map_err(status_of)?;
        Ok(tonic::Response::new(pb::ListEntriesReply {
            entries: entries
                .iter()
                .map(|e| entry_to_pb(&reader, e))
                .collect::<Result<_, _>>()?,
            next_page_token: next.unwrap_or_default(),
        }))
    }
}
