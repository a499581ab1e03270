//! Denied node-API calls are recorded without letting a hostile caller spend the node's audit
//! budget (the authority admits 20 `AppendNodeAudit` calls per second per node): like the
//! authority gate's denial windows, the first denial of a (caller, allocation, failed check) is
//! sent at once, identical ones within [`DENIAL_WINDOW`] are only counted, and one record
//! carrying `count` stands for them when the window closes.
//!
//! A denied call never waits for its record: it is queued (bounded) and a single sender task
//! appends the queue in batches of at most 16 records, at most [`DENIAL_APPENDS_PER_SECOND`]
//! times a second. The rest of the node's budget stays with allowed calls, which keep their
//! record-before-serve, fail-closed path. What cannot be queued is counted and the count rides
//! on the next record sent (`dropped`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ringzero_proto::client::AuthorityClient;
use ringzero_proto::pb;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::daemon::ClientSetup;

/// How long identical denials of one caller are folded into one record.
pub(crate) const DENIAL_WINDOW: Duration = Duration::from_secs(10);
/// Callers tracked at once; a new one evicts the oldest window (its summary is sent).
pub(crate) const MAX_CALLERS: usize = 1024;
/// Distinct (allocation, failed check) kept apart per caller window; more are only counted.
const KEYS_PER_CALLER: usize = 16;
/// Records waiting to be sent; beyond, they are counted as dropped.
const QUEUE: usize = 256;
/// Records per append (the authority's limit).
const BATCH: usize = 16;
/// Appends the denial sender makes per second at most, of the node's 20.
pub(crate) const DENIAL_APPENDS_PER_SECOND: u32 = 4;
const APPEND_TIMEOUT: Duration = Duration::from_secs(5);

type Key = (String, String);

fn key_of(r: &pb::NodeAuditRecord) -> Key {
    (r.alloc_id.clone(), r.reason.clone())
}

/// One caller's denials in one window.
struct Window {
    opened: Instant,
    /// Distinct denials in arrival order: the last record of each and how many more came.
    seen: Vec<(Key, pb::NodeAuditRecord, u64)>,
    /// Denials beyond [`KEYS_PER_CALLER`] distinct ones.
    overflow: u64,
}

impl Window {
    /// One record per distinct denial that repeated (`count`: how many were folded into it),
    /// the overflow on the last of them.
    fn summary(self) -> Vec<pb::NodeAuditRecord> {
        let secs = DENIAL_WINDOW.as_secs().to_string();
        let mut last_seen = None;
        let mut out = Vec::new();
        for (_, mut r, n) in self.seen {
            if n == 0 {
                last_seen = Some(r);
                continue;
            }
            r.detail.insert("count".into(), n.to_string());
            r.detail.insert("window_s".into(), secs.clone());
            out.push(r);
        }
        if self.overflow > 0 {
            let mut r = match out.pop() {
                Some(r) => r,
                None => match last_seen {
                    Some(r) => r,
                    None => return out,
                },
            };
            r.detail
                .insert("overflow".into(), self.overflow.to_string());
            r.detail.insert("window_s".into(), secs);
            out.push(r);
        }
        out
    }
}

/// The per-caller windows (pure: the caller decides what to do with the records).
#[derive(Default)]
pub(crate) struct Windows {
    by_caller: HashMap<String, Window>,
}

impl Windows {
    /// Folds a denial of `caller` in; returns what to send now: the record when it is the first
    /// of its kind in the caller's window, and the summary of a window evicted to make room.
    pub(crate) fn fold(
        &mut self,
        caller: &str,
        record: pb::NodeAuditRecord,
        now: Instant,
    ) -> Vec<pb::NodeAuditRecord> {
        let mut out = Vec::new();
        let key = key_of(&record);
        if let Some(w) = self.by_caller.get_mut(caller) {
            if let Some((_, last, n)) = w.seen.iter_mut().find(|(k, _, _)| *k == key) {
                *n += 1;
                *last = record;
            } else if w.seen.len() >= KEYS_PER_CALLER {
                w.overflow += 1;
            } else {
                w.seen.push((key, record.clone(), 0));
                out.push(record);
            }
            return out;
        }
        if self.by_caller.len() >= MAX_CALLERS {
            let oldest = self
                .by_caller
                .iter()
                .min_by_key(|(_, w)| w.opened)
                .map(|(c, _)| c.clone());
            if let Some(w) = oldest.and_then(|c| self.by_caller.remove(&c)) {
                out.extend(w.summary());
            }
        }
        self.by_caller.insert(
            caller.to_owned(),
            Window {
                opened: now,
                seen: vec![(key, record.clone(), 0)],
                overflow: 0,
            },
        );
        out.push(record);
        out
    }

    /// Closes the windows older than [`DENIAL_WINDOW`]; returns their summaries.
    pub(crate) fn close_expired(&mut self, now: Instant) -> Vec<pb::NodeAuditRecord> {
        let expired: Vec<String> = self
            .by_caller
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.opened) >= DENIAL_WINDOW)
            .map(|(c, _)| c.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|c| self.by_caller.remove(&c))
            .flat_map(Window::summary)
            .collect()
    }

    #[cfg(test)]
    fn callers(&self) -> usize {
        self.by_caller.len()
    }
}

/// What the service holds: the windows and the sender's queue.
#[derive(Clone)]
pub(crate) struct Denials {
    windows: Arc<Mutex<Windows>>,
    queue: mpsc::Sender<pb::NodeAuditRecord>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Denials {
    /// The denial recorder and its sender task (to be spawned on the runtime).
    pub(crate) fn new(
        setup: watch::Receiver<Arc<ClientSetup>>,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let d = Self {
            windows: Arc::default(),
            queue: tx,
            dropped: Arc::default(),
        };
        let task = sender(d.clone(), setup, rx);
        (d, task)
    }

    /// Records a denial of `caller` (its SPIFFE ID, or its address when it has none); never
    /// waits.
    pub(crate) fn record(&self, caller: &str, record: pb::NodeAuditRecord) {
        let now_send = self
            .windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fold(caller, record, Instant::now());
        for r in now_send {
            if self.queue.try_send(r).is_err() {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Sends queued denial records and closed windows' summaries, one batch per tick.
async fn sender(
    d: Denials,
    setup: watch::Receiver<Arc<ClientSetup>>,
    mut rx: mpsc::Receiver<pb::NodeAuditRecord>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / DENIAL_APPENDS_PER_SECOND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: VecDeque<pb::NodeAuditRecord> = VecDeque::new();
    let mut dropped: u64 = 0;
    // After a batch the authority refused, its records go one by one.
    let mut solo = 0usize;
    loop {
        tick.tick().await;
        loop {
            match rx.try_recv() {
                Ok(r) => pending.push_back(r),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        pending.extend(
            d.windows
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .close_expired(Instant::now()),
        );
        while pending.len() > QUEUE {
            pending.pop_front();
            dropped += 1;
        }
        dropped += d.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        if pending.is_empty() {
            continue;
        }
        let n = if solo > 0 {
            solo -= 1;
            1
        } else {
            pending.len().min(BATCH)
        };
        let mut batch: Vec<pb::NodeAuditRecord> = pending.drain(..n).collect();
        if dropped > 0
            && let Some(r) = batch.last_mut()
        {
            r.detail.insert("dropped".into(), dropped.to_string());
        }
        match append(&setup, batch.clone()).await {
            Ok(()) => {
                debug!(records = n, "denial records committed");
                dropped = 0;
            }
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::ResourceExhausted
                        | tonic::Code::DeadlineExceeded
                ) =>
            {
                // Retried next tick, within the queue's bound.
                warn!(error = %e, records = n, "denial records not committed yet");
                for r in batch.into_iter().rev() {
                    pending.push_front(r);
                }
            }
            Err(e) => {
                // A record the authority refuses (an allocation it purged): sent one by one
                // so that the others still land.
                warn!(error = %e, records = n, "denial records refused");
                if n > 1 {
                    solo = n;
                    for r in batch.into_iter().rev() {
                        pending.push_front(r);
                    }
                } else {
                    dropped = dropped.saturating_add(1);
                }
            }
        }
    }
}

async fn append(
    setup: &watch::Receiver<Arc<ClientSetup>>,
    records: Vec<pb::NodeAuditRecord>,
) -> Result<(), tonic::Status> {
    let setup = setup.borrow().clone();
    let creds = setup
        .creds
        .client_credentials()
        .map_err(|e| tonic::Status::unavailable(format!("audit: {e}")))?;
    let mut client = AuthorityClient::new(creds, setup.addrs.clone());
    let call = client.call(move |mut c| {
        let req = pb::AppendNodeAuditRequest {
            records: records.clone(),
        };
        async move { c.append_node_audit(req).await }
    });
    match tokio::time::timeout(APPEND_TIMEOUT, call).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(tonic::Status::new(
            e.code().unwrap_or(tonic::Code::Unavailable),
            e.to_string(),
        )),
        Err(_) => Err(tonic::Status::deadline_exceeded("audit append timed out")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn denial(alloc: &str, reason: &str) -> pb::NodeAuditRecord {
        pb::NodeAuditRecord {
            alloc_id: alloc.into(),
            action: "logs.read".into(),
            caller_spiffe_id: "spiffe://td/user/mallory".into(),
            decision: "deny".into(),
            reason: reason.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_burst_of_identical_denials_is_one_record_then_one_summary() {
        let mut w = Windows::default();
        let t0 = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..200 {
            sent.extend(w.fold("m", denial("a", "peer_mismatch: x"), t0));
        }
        assert_eq!(sent.len(), 1, "only the first is sent at once");
        assert!(w.close_expired(t0 + DENIAL_WINDOW / 2).is_empty());
        let summary = w.close_expired(t0 + DENIAL_WINDOW);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].detail["count"], "199");
        assert_eq!(w.callers(), 0);
        // A new window opens with a record sent at once.
        assert_eq!(
            w.fold("m", denial("a", "peer_mismatch: x"), t0 + DENIAL_WINDOW)
                .len(),
            1
        );
    }

    #[test]
    fn distinct_denials_keep_their_own_record_within_a_bound() {
        let mut w = Windows::default();
        let t0 = Instant::now();
        let mut sent = 0;
        for i in 0..40 {
            sent += w.fold("m", denial("a", &format!("r{i}")), t0).len();
        }
        assert_eq!(sent, KEYS_PER_CALLER);
        let summary = w.close_expired(t0 + DENIAL_WINDOW);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].detail["overflow"], "24");
        // Another caller's denials are their own.
        assert_eq!(w.fold("x", denial("a", "r0"), t0).len(), 1);
        assert_eq!(w.fold("y", denial("a", "r0"), t0).len(), 1);
    }

    #[test]
    fn the_oldest_caller_is_evicted_with_its_summary() {
        let mut w = Windows::default();
        let t0 = Instant::now();
        for i in 0..MAX_CALLERS {
            let t = t0 + Duration::from_millis(i as u64);
            w.fold(&format!("c{i}"), denial("a", "r"), t);
        }
        w.fold("c0", denial("a", "r"), t0);
        let out = w.fold("new", denial("a", "r"), t0 + Duration::from_secs(2));
        assert_eq!(w.callers(), MAX_CALLERS);
        assert_eq!(out.len(), 2, "the evicted summary and the new record");
        assert_eq!(out[0].detail["count"], "1");
        assert!(out[1].detail.is_empty());
    }
}
