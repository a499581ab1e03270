//! What this agent can serve, told to the authority: the highest entry revision R such that
//! every entry of the node up to R has a valid SVID in the cache, or was found unservable for a
//! stated reason (at most [`MAX_UNSERVABLE`] listed; any more hold R back). `entry create
//! --wait` returns once R reaches the entry's revision.
//!
//! - [`Servability`] follows the main loop: an entry held (new or changed) is *pending* until
//!   its SVID is cached at that revision; one that does not parse, or that the authority
//!   refuses, is *unservable* (with why) until an SVID arrives; a dropped entry is forgotten.
//!   It also times each live change from its commit (`changed_ms`) to its SVID
//!   ([`ServableLatency`]).
//! - [`report_task`] sends the latest report with `ReportServable`: on a change, at once unless
//!   the last one left less than [`MIN_INTERVAL`] ago (then the latest state when it has
//!   passed: changes in between are coalesced), again whenever the feed reconnects (a new
//!   leader knows nothing) and every [`KEEPALIVE`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringzero_proto::client::AuthorityClient;
use ringzero_proto::pb;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::sync::ClientSetup;
use crate::servable_latency::ServableLatency;

/// Unservable entries one report lists (the authority's bound).
pub(super) const MAX_UNSERVABLE: usize = 64;
/// The longest reason reported (the authority keeps 256 bytes).
const MAX_REASON: usize = 256;
/// The least time between two reports: at most 20 per second (the authority allows 25 per
/// node). A fixed window of N per second would hold a report back for most of a second once
/// spent; an interval delays one by at most this much.
pub(super) const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// A report is sent again this often without a change, so a leader that started over (or
/// missed the reconnect) learns it.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(10);
/// The pause after a failed report.
const RETRY: Duration = Duration::from_secs(1);

/// The servable state of the node's entries.
#[derive(Debug, Default)]
pub(super) struct Servability {
    /// Entries waiting for an SVID at their current revision: (revision, id), and by id.
    pending: BTreeSet<(u64, String)>,
    pending_rev: HashMap<String, u64>,
    /// When each pending change was committed (unix ms), for the latency (live changes only).
    committed_ms: HashMap<String, u64>,
    /// Entries found unservable: id → (revision, reason).
    unservable: BTreeMap<String, (u64, String)>,
    latency: ServableLatency,
}

impl Servability {
    pub(super) fn new(latency: ServableLatency) -> Self {
        Servability {
            latency,
            ..Default::default()
        }
    }

    /// `id` at `revision` waits for its SVID; `committed_ms` (0: not timed) is when the change
    /// was committed.
    pub(super) fn pending(&mut self, id: &str, revision: u64, committed_ms: u64) {
        self.forget(id);
        self.pending.insert((revision, id.to_owned()));
        self.pending_rev.insert(id.to_owned(), revision);
        if committed_ms != 0 {
            self.committed_ms.insert(id.to_owned(), committed_ms);
        }
    }

    /// An SVID for `id` at `revision` is in the cache.
    pub(super) fn served(&mut self, id: &str, revision: u64) {
        self.unservable.remove(id);
        let Some(&pending) = self.pending_rev.get(id) else {
            return;
        };
        if revision < pending {
            return;
        }
        self.pending.remove(&(pending, id.to_owned()));
        self.pending_rev.remove(id);
        if let Some(at) = self.committed_ms.remove(id) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let latency = Duration::from_millis(now.saturating_sub(at));
            debug!(entry = %id, revision, latency_ms = latency.as_millis(), "identity servable");
            self.latency.record(latency);
        }
    }

    /// `id` at `revision` cannot be served, because of `reason`.
    pub(super) fn unservable(&mut self, id: &str, revision: u64, reason: &str) {
        if let Some(p) = self.pending_rev.remove(id) {
            self.pending.remove(&(p, id.to_owned()));
            self.committed_ms.remove(id);
        }
        let mut reason: String = reason.chars().filter(|c| !c.is_control()).collect();
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        self.unservable.insert(id.to_owned(), (revision, reason));
    }

    /// `id` is no longer held.
    pub(super) fn forget(&mut self, id: &str) {
        if let Some(p) = self.pending_rev.remove(id) {
            self.pending.remove(&(p, id.to_owned()));
        }
        self.committed_ms.remove(id);
        self.unservable.remove(id);
    }

    /// The report at feed revision `feed`: R is `feed`, held back below the oldest pending entry
    /// and below the first unservable entry that does not fit in the list.
    pub(super) fn report(&self, feed: u64) -> pb::ReportServableRequest {
        let mut revision = feed;
        if let Some((r, _)) = self.pending.first() {
            revision = revision.min(r.saturating_sub(1));
        }
        let mut listed: Vec<(&String, &(u64, String))> = self.unservable.iter().collect();
        listed.sort_by_key(|(id, (r, _))| (*r, *id));
        if let Some((_, (r, _))) = listed.get(MAX_UNSERVABLE) {
            revision = revision.min(r.saturating_sub(1));
        }
        pb::ReportServableRequest {
            revision,
            unservable: listed
                .into_iter()
                .take(MAX_UNSERVABLE)
                .filter(|(_, (r, _))| *r <= revision)
                .map(|(id, (r, reason))| pb::UnservableEntry {
                    id: id.clone(),
                    revision: *r,
                    reason: reason.clone(),
                })
                .collect(),
        }
    }
}

/// Sends the latest report whenever it changes, the feed reconnects, or [`KEEPALIVE`] passes.
pub(super) async fn report_task(
    mut reports: watch::Receiver<pb::ReportServableRequest>,
    mut setup: watch::Receiver<Arc<ClientSetup>>,
    mut feed_connected: watch::Receiver<u64>,
) {
    let mut client: Option<AuthorityClient> = None;
    let mut last: Option<Instant> = None;
    let mut dirty = true;
    loop {
        if !dirty {
            tokio::select! {
                changed = reports.changed() => if changed.is_err() { return },
                changed = feed_connected.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(KEEPALIVE) => {}
            }
        }
        if let Some(at) = last {
            tokio::time::sleep_until(at + MIN_INTERVAL).await;
        }
        last = Some(Instant::now());
        if setup.has_changed().unwrap_or(false) {
            client = None;
        }
        let c = match &mut client {
            Some(c) => c,
            None => {
                let current = setup.borrow_and_update().clone();
                match current.creds.client_credentials() {
                    Ok(creds) => client.insert(AuthorityClient::new(creds, current.addrs.clone())),
                    Err(e) => {
                        warn!(error = %e, "cannot report servable entries");
                        dirty = true;
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
        };
        let req = reports.borrow_and_update().clone();
        let sent = c
            .call(|mut g| {
                let req = req.clone();
                async move { g.report_servable(req).await }
            })
            .await;
        match sent {
            Ok(_) => dirty = false,
            Err(e) => {
                // An authority without ReportServable: nothing to report to, keep quiet.
                if e.code() == Some(tonic::Code::Unimplemented) {
                    dirty = false;
                } else {
                    warn!(error = %e, "reporting servable entries failed; retrying");
                    dirty = true;
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_servable_revision_waits_for_the_oldest_pending_entry() {
        let latency = ServableLatency::new();
        let mut s = Servability::new(latency.clone());
        assert_eq!(s.report(7).revision, 7);
        s.pending("a", 8, 1);
        s.pending("b", 9, 0);
        assert_eq!(s.report(9).revision, 7);
        s.served("b", 9);
        assert_eq!(s.report(9).revision, 7, "a is still pending");
        s.served("a", 7);
        assert_eq!(
            s.report(9).revision,
            7,
            "an SVID of an older revision does not count"
        );
        s.served("a", 8);
        assert_eq!(s.report(9).revision, 9);
        assert_eq!(
            latency.summary().count,
            1,
            "only timed changes are recorded"
        );
        s.unservable("c", 10, "selector: bad\nline");
        let r = s.report(10);
        assert_eq!(r.revision, 10);
        assert_eq!(r.unservable.len(), 1);
        assert_eq!(r.unservable[0].reason, "selector: badline");
        s.forget("c");
        assert!(s.report(10).unservable.is_empty());
        s.pending("d", 11, 0);
        s.forget("d");
        assert_eq!(
            s.report(11).revision,
            11,
            "a dropped entry holds nothing back"
        );
    }

    #[test]
    fn unservable_entries_beyond_the_list_hold_the_revision_back() {
        let mut s = Servability::default();
        for i in 0..=MAX_UNSERVABLE as u64 {
            s.unservable(&format!("e{i:03}"), i + 1, "refused");
        }
        let r = s.report(1000);
        assert_eq!(r.revision, MAX_UNSERVABLE as u64);
        assert_eq!(r.unservable.len(), MAX_UNSERVABLE);
        s.served("e000", 1);
        let r = s.report(1000);
        assert_eq!(r.revision, 1000);
        assert_eq!(r.unservable.len(), MAX_UNSERVABLE);
    }
}
