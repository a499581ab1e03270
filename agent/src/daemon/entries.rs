//! Applying the sync stream's events: entries held (parsed once) and dropped, bundle and
//! authority-address updates, and the state saved for a restart.

use std::sync::Arc;

use ringzero_policy::selector::Selector;
use ringzero_policy::svid::TrustBundle;
use ringzero_policy::{SpiffeId, SpiffeIdPattern, TrustDomain};
use ringzero_proto::client::{AuthorityClient, bundle_cas};
use ringzero_proto::pb;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::sync::ClientSetup;
use super::{Agent, CHANGE_DELAY, Held, Ready};
use crate::cache::MeshRule;
use crate::error::AgentError;
use crate::state::{AgentState, StoredEntry};

impl Agent {
    /// Holds `entry` (new or changed) and schedules its issuance now; `committed_ms` (0: not
    /// timed) is when its change was committed.
    pub(super) fn hold(&mut self, entry: StoredEntry, committed_ms: u64) {
        let parsed = parse_entry(&entry, &self.td);
        let id = entry.id.clone();
        if let Err(e) = &parsed {
            warn!(entry = %id, error = %e, "registration entry not usable; no SVID issued");
            self.cache.remove(&id);
            self.unschedule(&id);
            self.servable.unservable(
                &id,
                entry.revision,
                &format!("registration entry not usable: {e}"),
            );
        } else {
            self.servable.pending(&id, entry.revision, committed_ms);
            self.schedule(&id, Instant::now() + CHANGE_DELAY);
        }
        self.entries.insert(
            id,
            Held {
                entry,
                parsed: parsed.ok(),
            },
        );
    }

    fn drop_entry(&mut self, id: &str) {
        self.entries.remove(id);
        self.unschedule(id);
        self.servable.forget(id);
        if self.cache.remove(id) {
            info!(entry = %id, "registration entry removed; identity dropped");
        }
    }

    pub(super) async fn apply(&mut self, mut ev: pb::SyncEntriesEvent) -> Result<(), AgentError> {
        if let Some(set) = ev.allocs.take() {
            info!(allocs = set.allocs.len(), "allocations updated");
            self.allocs_tx.send_replace(Some(std::sync::Arc::new(set)));
        }
        if let Some(b) = &ev.bundle {
            self.apply_bundle(b);
            self.keys_tx.send_replace(crate::node_api::biscuit_keys(b));
        }
        self.revocations.heard();
        if let Some(r) = &ev.revocations {
            let n = self.revocations.replace(r);
            info!(revocations = n, "revoked capabilities updated");
            self.cache.set_revoked_serials(revoked_serials(r));
        }
        if let Some(m) = &ev.mesh_policies {
            let rules = mesh_rules(m, &self.td);
            info!(rules = rules.len(), "mesh policies updated");
            self.cache.set_mesh_rules(rules);
        }
        // Changes followed live are timed from their commit; a full sync's are not (they may
        // be hours old).
        let timed = self.synced && self.full_sync.is_none();
        for e in ev.upserts {
            let committed_ms = if timed { e.changed_ms } else { 0 };
            if let Some(seen) = &mut self.full_sync {
                seen.insert(e.id.clone());
            }
            let stored = StoredEntry {
                id: e.id,
                spiffe_id: e.spiffe_id,
                selectors: e.selectors,
                ttl_seconds: e.ttl_seconds,
                dns_names: e.dns_names,
                revision: e.revision,
                created_revision: e.created_revision,
            };
            let unchanged = self.entries.get(&stored.id).is_some_and(|h| {
                h.entry == stored && self.cache.snapshot().identity(&stored.id).is_some()
            });
            if !unchanged {
                debug!(entry = %stored.id, revision = stored.revision, "entry changed");
                self.hold(stored, committed_ms);
            }
        }
        for id in &ev.removed {
            self.drop_entry(id);
        }
        if ev.synced
            && let Some(seen) = self.full_sync.take()
        {
            let stale: Vec<String> = self
                .entries
                .keys()
                .filter(|id| !seen.contains(*id))
                .cloned()
                .collect();
            for id in stale {
                self.drop_entry(&id);
            }
        }
        if ev.revision != 0 {
            self.revision = ev.revision;
        }
        self.save_state()?;
        if ev.synced && !self.synced {
            self.synced = true;
            self.serving
                .store(true, std::sync::atomic::Ordering::Release);
            info!(
                node = %self.node,
                revision = self.revision,
                entries = self.entries.len(),
                "entries synced"
            );
            self.issue_due().await?;
            if let Some(tx) = self.ready.take() {
                let _ = tx.send(Ready {
                    node: self.node.clone(),
                    spiffe_id: self.node_id.clone(),
                    entries: self.entries.len(),
                    identities: self.cache.snapshot().identities().count(),
                    socket: self.socket.clone(),
                    node_api: self.node_api_addr,
                    servable_latency: self.servable_latency.clone(),
                });
            }
        }
        Ok(())
    }

    fn apply_bundle(&mut self, b: &pb::Bundle) {
        // The JWT keys come only with the feed's bundle (they are not stored with the
        // credentials): the first event of every feed carries it.
        self.cache.set_jwt_keys(
            self.td.clone(),
            ringzero_proto::jwks::jwt_keys(b, |_| false),
        );
        let cas = bundle_cas(b);
        if cas.is_empty() {
            warn!("the authority sent an empty bundle; keeping the current one");
            return;
        }
        if TrustBundle::new(self.td.clone(), cas.clone()).is_err() {
            warn!("the authority sent an unusable bundle; keeping the current one");
            return;
        }
        let addrs: Vec<String> = b.members.iter().map(|m| m.address.clone()).collect();
        let addrs_changed = !addrs.is_empty() && addrs != self.addrs;
        if addrs_changed && self.pin_authority {
            info!(authorities = %addrs.join(","), "authority addresses pinned; the bundle's list is not used");
        }
        let addrs_changed = addrs_changed && !self.pin_authority;
        if cas == self.creds.bundle && !addrs_changed {
            return;
        }
        info!(cas = cas.len(), "trust bundle updated");
        self.cache.set_bundle(self.td.clone(), cas.clone());
        self.creds.bundle = cas;
        if addrs_changed {
            info!(authorities = %addrs.join(","), "authority addresses updated");
            self.addrs = addrs;
        }
        if let Err(e) = self.dir.save_credentials(&self.creds, &self.addrs) {
            warn!(error = %e, "could not persist the new bundle");
        }
        self.refresh_clients();
    }

    fn save_state(&self) -> Result<(), AgentError> {
        self.dir.save_state(&AgentState {
            node: self.node.clone(),
            trust_domain: self.td.to_string(),
            authorities: self.addrs.clone(),
            revision: self.revision,
            entries: self.entries.values().map(|h| h.entry.clone()).collect(),
        })
    }

    /// Rebuilds this loop's client and hands the sync task the new setup.
    pub(super) fn refresh_clients(&mut self) {
        match self.creds.client_credentials() {
            Ok(c) => self.client = AuthorityClient::new(c, self.addrs.clone()),
            Err(e) => warn!(error = %e, "new credentials unusable; keeping the old client"),
        }
        let _ = self.setup_tx.send(Arc::new(ClientSetup {
            creds: self.creds.clone(),
            addrs: self.addrs.clone(),
        }));
    }
}

/// The revoked serials the mesh extension hands to sidecars (well-formed ones only).
fn revoked_serials(r: &pb::RevocationSet) -> std::collections::BTreeMap<Vec<u8>, u64> {
    r.serials
        .iter()
        .filter(|s| !s.serial.is_empty() && s.serial.len() <= 20)
        .map(|s| (s.serial.clone(), s.not_after_ms))
        .collect()
}

/// The authority's mesh policies as rules; one that does not parse, or names another trust
/// domain, is dropped with a warning (it could never match).
fn mesh_rules(m: &pb::MeshPolicySet, td: &TrustDomain) -> Vec<MeshRule> {
    m.policies
        .iter()
        .filter_map(|p| {
            let rule = SpiffeIdPattern::parse(&p.to)
                .and_then(|to| Ok((to, SpiffeIdPattern::parse(&p.from)?)));
            match rule {
                Ok((to, from))
                    if to.trust_domain_name() == td.as_str()
                        && from.trust_domain_name() == td.as_str() =>
                {
                    Some(MeshRule { to, from })
                }
                _ => {
                    warn!(to = %p.to, from = %p.from, "mesh policy not usable; dropped");
                    None
                }
            }
        })
        .collect()
}

fn parse_entry(e: &StoredEntry, td: &TrustDomain) -> Result<(SpiffeId, Vec<Selector>), String> {
    let id = SpiffeId::parse(&e.spiffe_id).map_err(|err| format!("SPIFFE ID: {err}"))?;
    if !id.is_member_of(td) {
        return Err(format!("{id} is not in trust domain {td}"));
    }
    let selectors: Result<Vec<Selector>, _> =
        e.selectors.iter().map(|s| Selector::parse(s)).collect();
    let selectors = selectors.map_err(|err| format!("selector: {err}"))?;
    if selectors.is_empty() {
        return Err("no selector".into());
    }
    Ok((id, selectors))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn entries_parse_or_are_held_unusable() {
        let td = TrustDomain::new("example.org").unwrap();
        let mut e = StoredEntry {
            id: "e".into(),
            spiffe_id: "spiffe://example.org/ns/a".into(),
            selectors: vec!["unix:uid:1000".into()],
            ttl_seconds: 3600,
            dns_names: vec![],
            revision: 1,
            created_revision: 1,
        };
        assert!(parse_entry(&e, &td).is_ok());
        e.spiffe_id = "spiffe://other.org/ns/a".into();
        assert!(parse_entry(&e, &td).is_err());
        e.spiffe_id = "spiffe://example.org/ns/a".into();
        e.selectors = vec!["bogus".into()];
        assert!(parse_entry(&e, &td).is_err());
        e.selectors = vec![];
        assert!(parse_entry(&e, &td).is_err());
    }

    #[test]
    fn mesh_policies_of_another_trust_domain_or_malformed_are_dropped() {
        let td = TrustDomain::new("example.org").unwrap();
        let p = |to: &str, from: &str| pb::MeshPolicy {
            to: to.into(),
            from: from.into(),
            ..Default::default()
        };
        let rules = mesh_rules(
            &pb::MeshPolicySet {
                policies: vec![
                    p(
                        "spiffe://example.org/ns/a/db",
                        "spiffe://example.org/ns/a/*",
                    ),
                    p("spiffe://other.org/ns/a/db", "spiffe://example.org/ns/a/*"),
                    p("spiffe://example.org/ns/a/db", "not a pattern"),
                ],
            },
            &td,
        );
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].from.to_string(), "spiffe://example.org/ns/a/*");
    }
}
