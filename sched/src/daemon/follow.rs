//! What the daemon knows from the `WatchSched` stream while it holds the lease: the latest
//! snapshot, whether it was planned from, and the revision its own last writes brought the
//! allocations to. A snapshot older than the daemon's own writes is never planned from (it
//! would place again what was just placed); the stream's next snapshot includes them.
//!
//! Reconnects back off (0.5 s doubling to 10 s); a standby holds no stream.

use std::time::{Duration, Instant};

use ringzero_proto::client::AuthorityClient;
use ringzero_proto::pb;
use tokio::sync::mpsc;

use super::watch::{self, Msg, Watched};
use super::{Config, Snapshot};

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct Follow {
    rx: Option<mpsc::Receiver<Msg>>,
    task: Option<tokio::task::JoinHandle<()>>,
    latest: Option<Watched>,
    /// A snapshot arrived that was not planned from yet.
    pub(crate) fresh: bool,
    /// Plan only from a snapshot at this allocation revision or later.
    pub(crate) min_revision: u64,
    /// The authority does not serve the stream: poll as before.
    pub(crate) polling: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Default for Follow {
    fn default() -> Self {
        Follow {
            rx: None,
            task: None,
            latest: None,
            fresh: false,
            min_revision: 0,
            polling: false,
            retry_at: None,
            backoff: BACKOFF_MIN,
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.close();
    }
}

impl Follow {
    /// Drops the stream (and what it said): the next open starts from a fresh snapshot.
    pub(crate) fn close(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.rx = None;
        self.latest = None;
        self.fresh = false;
        self.min_revision = 0;
    }

    fn ended(&mut self, why: Option<String>) {
        match why {
            Some(e) => {
                tracing::warn!(error = %e, retry_in = ?self.backoff, "scheduler watch ended; reconnecting")
            }
            None => tracing::info!(retry_in = ?self.backoff, "scheduler watch ended; reconnecting"),
        }
        self.close();
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Opens the stream unless it is open or a retry is not due yet.
    pub(crate) async fn ensure_open(&mut self, client: &mut AuthorityClient, cfg: &Config) {
        if self.rx.is_some() || self.polling || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match watch::open(client, cfg.namespace.as_deref()).await {
            Ok(Some(stream)) => {
                let (tx, rx) = mpsc::channel(4);
                self.task = Some(tokio::spawn(watch::pump(stream, tx)));
                self.rx = Some(rx);
                self.retry_at = None;
                tracing::info!("scheduler watch open");
            }
            Ok(None) => {
                self.polling = true;
                tracing::warn!(
                    "the authority does not serve WatchSched (older than this scheduler): \
                     polling ListJobs, ListAllocs and ListNodeHealth every --interval instead"
                );
            }
            Err(e) => self.ended(Some(e.to_string())),
        }
    }

    /// Takes in what the stream sent since the last call, without waiting.
    pub(crate) fn drain(&mut self) {
        while let Some(msg) = self.rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
            self.take(msg);
        }
    }

    /// Waits for the stream's next message (forever when no stream is open).
    pub(crate) async fn next(&mut self) {
        let msg = match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        };
        match msg {
            Some(m) => self.take(m),
            None => self.ended(Some("the stream task stopped".into())),
        }
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Snapshot(w) => {
                self.backoff = BACKOFF_MIN;
                self.fresh = true;
                self.latest = Some(*w);
            }
            Msg::Alive => {}
            Msg::Ended(why) => self.ended(why),
        }
    }

    /// The latest snapshot, if it includes the daemon's own last writes.
    pub(crate) fn plannable(&self) -> Option<&Watched> {
        self.latest
            .as_ref()
            .filter(|w| w.allocs_revision >= self.min_revision)
    }

    /// When a retry is due, if one is waiting.
    pub(crate) fn retry_in(&self) -> Option<Duration> {
        self.retry_at
            .map(|t| t.saturating_duration_since(Instant::now()))
    }
}

/// The next moment (unix ms, after `now_ms`) at which a plan from `s` could differ without
/// anything new being read: a node's grace (`--lost-after`) running out, or a stopped
/// allocation becoming old enough to remove.
pub(crate) fn next_deadline(s: &Snapshot, cfg: &Config, now_ms: u64) -> Option<u64> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let graces = s
        .health
        .nodes
        .iter()
        .filter(|n| !n.live && n.status == "active")
        .map(|n| {
            n.last_seen_ms
                .max(s.health.tracking_since_ms)
                .saturating_add(ms(cfg.lost_after))
        });
    let removals = s
        .allocs
        .iter()
        .filter(|a| a.desired == pb::AllocDesired::Stop as i32)
        .map(|a| {
            a.updated_ms
                .max(a.desired_ms)
                .saturating_add(ms(cfg.remove_after))
        });
    graces.chain(removals).filter(|d| *d > now_ms).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_deadline_is_the_first_grace_or_removal_still_ahead() {
        let cfg = Config::default();
        let mut s = Snapshot::default();
        assert_eq!(next_deadline(&s, &cfg, 1_000), None);
        s.health.tracking_since_ms = 10_000;
        s.health.nodes = vec![
            pb::NodeHealth {
                name: "a".into(),
                status: "active".into(),
                live: true,
                ..Default::default()
            },
            pb::NodeHealth {
                name: "b".into(),
                status: "active".into(),
                last_seen_ms: 12_000,
                ..Default::default()
            },
        ];
        // b: lost 15 s after it was last seen.
        assert_eq!(next_deadline(&s, &cfg, 20_000), Some(27_000));
        assert_eq!(next_deadline(&s, &cfg, 27_000), None);
        s.allocs.push(pb::Alloc {
            desired: pb::AllocDesired::Stop as i32,
            updated_ms: 1_000,
            ..Default::default()
        });
        assert_eq!(next_deadline(&s, &cfg, 20_000), Some(27_000));
        assert_eq!(next_deadline(&s, &cfg, 30_000), Some(301_000));
    }
}
