//! The `SyncEntries` stream, in a task of its own: resumed from the last revision after every
//! reconnect, following leader changes through the client's address list.

use std::sync::Arc;
use std::time::Duration;

use ringzero_proto::client::{AuthorityClient, ClientError};
use ringzero_proto::pb;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::backoff::Backoff;
use crate::error::{AgentError, RecoveryHint, Verdict, classify};
use crate::state::NodeCredentials;

/// What a client of the authority is built from; the sync task rebuilds its client from the
/// latest one on every reconnect.
pub(crate) struct ClientSetup {
    pub(crate) creds: NodeCredentials,
    pub(crate) addrs: Vec<String>,
}

/// The largest feed event accepted. The first event carries the node's allocations with the
/// spec of each of their jobs: up to 1,000 allocations, each of a different job whose spec is
/// at most 64 KiB encoded, so up to about 64 MiB beside the entries; tonic's default of 4 MiB
/// would cut the stream.
const MAX_EVENT_LEN: usize = 96 << 20;

/// How long an open feed may stay silent before it is dropped and dialled again. The authority
/// sends a heartbeat every 10 s when idle, so this is two and a half missed heartbeats: a stream
/// whose connection a middlebox lost without a reset (no FIN, no RST, TCP would notice only
/// after minutes) is replaced before the revocation set goes stale at
/// [`MAX_STALENESS`](crate::revocations::MAX_STALENESS) (30 s) and the node API starts refusing.
pub(crate) const FEED_SILENCE: Duration = Duration::from_secs(25);

pub(super) enum SyncMsg {
    /// A new connection syncs from revision 0: what follows up to `synced` is the full set.
    Reset,
    Event(pb::SyncEntriesEvent),
    Fatal(AgentError),
}

pub(super) async fn sync_task(
    setup: watch::Receiver<Arc<ClientSetup>>,
    mut since: u64,
    tx: mpsc::Sender<SyncMsg>,
    hint: RecoveryHint,
    node_api: String,
    connected: watch::Sender<u64>,
) {
    let mut backoff = Backoff::default();
    loop {
        let current = setup.borrow().clone();
        let mut client = match current.creds.client_credentials() {
            Ok(c) => AuthorityClient::new(c, current.addrs.clone()),
            Err(e) => {
                let _ = tx.send(SyncMsg::Fatal(e)).await;
                return;
            }
        };
        let from = since;
        let announce = node_api.clone();
        let opened = client
            .call(move |c| {
                let node_api = announce.clone();
                async move {
                    c.max_decoding_message_size(MAX_EVENT_LEN)
                        .sync_entries(pb::SyncEntriesRequest {
                            since_revision: from,
                            cpu_millis: host_cpu_millis(),
                            memory_mb: host_memory_mb(),
                            labels: Default::default(),
                            node_api,
                        })
                        .await
                }
            })
            .await;
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                if let Verdict::Fatal(f) = classify(&e, &hint) {
                    let _ = tx.send(SyncMsg::Fatal(f)).await;
                    return;
                }
                if matches!(
                    e.code(),
                    Some(tonic::Code::OutOfRange | tonic::Code::FailedPrecondition)
                ) {
                    warn!(since, error = %e, "cannot resume the sync; syncing everything again");
                    since = 0;
                }
                let wait = backoff.next();
                warn!(error = %e, retry_in = ?wait, "entry sync unavailable; retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        info!(since = from, "entry sync connected");
        // The servable report goes again: the feed may have moved to a new leader.
        connected.send_modify(|n| *n = n.wrapping_add(1));
        if from == 0 && tx.send(SyncMsg::Reset).await.is_err() {
            return;
        }
        let mut caught_up = from != 0;
        loop {
            let Ok(next) = tokio::time::timeout(FEED_SILENCE, stream.message()).await else {
                warn!(
                    silent_for = ?FEED_SILENCE,
                    "entry sync stream silent past its heartbeats; dialling again"
                );
                break;
            };
            match next {
                Ok(Some(ev)) => {
                    backoff.reset();
                    caught_up |= ev.synced;
                    // A full sync interrupted before `synced` starts over from 0.
                    if caught_up && ev.revision != 0 {
                        since = ev.revision;
                    }
                    if tx.send(SyncMsg::Event(ev)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    info!("entry sync stream ended; reconnecting");
                    break;
                }
                Err(status) => {
                    let e = ClientError::from(status);
                    if let Verdict::Fatal(f) = classify(&e, &hint) {
                        let _ = tx.send(SyncMsg::Fatal(f)).await;
                        return;
                    }
                    warn!(error = %e, "entry sync stream broke; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// The node's CPUs in millis (1000 per CPU this process may use), for the scheduler.
fn host_cpu_millis() -> Option<u32> {
    let n = std::thread::available_parallelism().ok()?.get();
    u32::try_from(n).ok()?.checked_mul(1000)
}

/// `MemTotal` of /proc/meminfo in MiB, for the scheduler.
fn host_memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
