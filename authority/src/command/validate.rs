//! The checks that do not depend on state, run before proposing and again in apply.

use ringzero_policy::{NodeName, Operation, Resource, SpiffeId, SpiffeIdPattern};

use super::{Command, Invalid, MeshPolicy, Op, RegistrationEntry, User, invalid, limits};

fn check_len(what: &str, s: &str, max: usize) -> Result<(), Invalid> {
    if s.len() > max {
        return Err(invalid(format!("{what} longer than {max} bytes")));
    }
    Ok(())
}

pub(super) fn check_node_name(s: &str) -> Result<(), Invalid> {
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
                super::check_principal_key(user)?;
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
            Op::IssueJoinToken { node_name, .. } => check_node_name(node_name),
            // An invite's token is named for its principal's key (`sched:<name>` for a
            // scheduler); the redemption names it the same way.
            Op::RedeemJoinToken { node_name, .. } => super::check_principal_key(node_name),
            Op::SetNodeStatus { name, .. } => check_node_name(name),
            Op::SetUserSuspended { name, .. } => super::check_principal_key(name),
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
            Op::PutEntry { entry } => entry.validate().and_then(|()| entry.check_user_written()),
            Op::PutMeshPolicy { policy } | Op::DeleteMeshPolicy { policy } => {
                policy.validate().map(|_| ())
            }
            Op::DeleteEntry { id } => check_entry_id(id).and_then(|()| check_not_derived(id)),
            Op::PutJob { job } => job.validate(),
            Op::StopJob { namespace, name } | Op::PurgeJob { namespace, name } => {
                super::job_resource(namespace, name).map(|_| ())
            }
            Op::PlaceAllocs { allocs } => super::alloc::check_placements(allocs),
            Op::StopAllocs { ids } => super::check_alloc_ids("stop", ids),
            Op::MarkAllocsLost { ids } => super::check_alloc_ids("lost", ids),
            Op::RemoveAllocs { ids } => super::check_alloc_ids("remove", ids),
            Op::ReportAllocStatus { node, updates } => super::alloc::check_report(node, updates),
            Op::SetNodeDrain { node, .. } => check_node_name(node),
            Op::AcquireSchedLease {
                scope,
                holder,
                ttl_ms,
            } => super::check_lease(scope, holder, Some(*ttl_ms)),
            Op::ReleaseSchedLease { scope, holder } => super::check_lease(scope, holder, None),
            Op::FencedAllocWrite { lease, write } => {
                lease.as_ref().map_or(Ok(()), super::LeaseFence::check)?;
                write.check()
            }
            Op::PutUser { user } => user.validate(),
            Op::RemoveUser { name } => super::check_principal_key(name),
            Op::RemoveRole { name } => check_node_name(name),
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
}

fn check_serial(serial: &[u8]) -> Result<(), Invalid> {
    if serial.is_empty() || serial.len() > 20 {
        return Err(invalid("a certificate serial is 1 to 20 bytes"));
    }
    Ok(())
}

impl User {
    /// Checks the name (a node-name-like segment, or `sched:` and one for a scheduler, whose
    /// role is `scheduler`), the role name and the namespace.
    pub fn validate(&self) -> Result<(), Invalid> {
        super::check_principal_key(&self.name)?;
        self.check_kind()?;
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

/// Entries `alloc-…` are derived by apply from allocations; only apply writes or deletes them.
fn check_not_derived(id: &str) -> Result<(), Invalid> {
    if id.starts_with(super::ALLOC_ENTRY_PREFIX) {
        return Err(invalid(format!(
            "entry {id} is derived from an allocation: stop or remove the allocation instead"
        )));
    }
    Ok(())
}

impl RegistrationEntry {
    /// What a user-written entry (`PutEntry`) must also satisfy: not an allocation's entry,
    /// and no `ringzero:` selector. The agent observes `ringzero:job:<alloc>` only for processes
    /// of a task it launched; an entry naming it is derived by apply from the allocation, whose
    /// job's submitter was authorized for that identity and uid. A user-written one would
    /// claim the identity of whatever the scheduler runs as that allocation.
    pub fn check_user_written(&self) -> Result<(), Invalid> {
        check_not_derived(&self.id)?;
        if let Some(s) = self.selectors.iter().find(|s| s.starts_with("ringzero:")) {
            return Err(invalid(format!(
                "selector {:?} is reserved: the authority derives ringzero: selectors for \
                 allocations; an entry cannot name one",
                s.chars().take(64).collect::<String>()
            )));
        }
        Ok(())
    }

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

impl MeshPolicy {
    /// Parses both patterns and checks them: one trust domain; `to` names workloads under
    /// `ns/…` (never a reserved path: `ringzero/…`, `user/…`); `from` names workloads (a bare
    /// trust domain ID names none; `spiffe://td/*` is every workload of the trust domain); both
    /// in canonical form, so that one rule has one spelling. Returns `(to, from)`.
    pub fn validate(&self) -> Result<(SpiffeIdPattern, SpiffeIdPattern), Invalid> {
        check_len("mesh policy to", &self.to, limits::MAX_MESH_PATTERN)?;
        check_len("mesh policy from", &self.from, limits::MAX_MESH_PATTERN)?;
        let to = SpiffeIdPattern::parse(&self.to)
            .map_err(|e| invalid(format!("to {:?}: {e}", self.to)))?;
        let from = SpiffeIdPattern::parse(&self.from)
            .map_err(|e| invalid(format!("from {:?}: {e}", self.from)))?;
        if to.to_string() != self.to || from.to_string() != self.from {
            return Err(invalid("mesh policy patterns must be in canonical form"));
        }
        if to.trust_domain_name() != from.trust_domain_name() {
            return Err(invalid("to and from must be of one trust domain"));
        }
        if !Self::protects_a_namespace(&to) {
            return Err(invalid(format!(
                "to {to}: a mesh policy protects workloads under ns/… (spiffe://TD/ns/NS/… or \
                 spiffe://TD/ns/NS/*), never a reserved or other path"
            )));
        }
        if let SpiffeIdPattern::Exact(id) = &from
            && id.path().is_empty()
        {
            return Err(invalid(
                "from: a trust domain ID names no workload (spiffe://TD/* admits all of them)",
            ));
        }
        Ok((to, from))
    }

    /// Whether `to` names workloads under `ns/…` (`spiffe://TD/ns/NS/…` or `spiffe://TD/ns/NS/*`,
    /// never a reserved path): what a namespace's `mesh:policy` can protect at all.
    pub fn protects_a_namespace(to: &SpiffeIdPattern) -> bool {
        let base = match to {
            SpiffeIdPattern::Exact(id) | SpiffeIdPattern::Below(id) => id,
        };
        let segments: Vec<&str> = base.segments().collect();
        let under_ns = matches!(
            (to, segments.as_slice()),
            (SpiffeIdPattern::Exact(_), ["ns", _, ..]) | (SpiffeIdPattern::Below(_), ["ns", ..])
        );
        under_ns && !base.is_reserved()
    }

    /// The resource `mesh:policy` is checked on: the path of `to`'s base ID (`ns/shop/db`, or
    /// `ns/shop` for `spiffe://td/ns/shop/*`).
    pub fn resource(&self) -> Result<Resource, Invalid> {
        let (to, _) = self.validate()?;
        let base = match &to {
            SpiffeIdPattern::Exact(id) | SpiffeIdPattern::Below(id) => id,
        };
        let segments: Vec<&str> = base.segments().collect();
        Resource::from_segments(&segments).map_err(|e| invalid(e.to_string()))
    }
}
