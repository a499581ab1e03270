//! `ringzero agent run`: enrollment, the node SVID's renewal, the entry sync, workload SVID
//! issuance and rotation, and the Workload API, until shutdown or until an operator must act.
//!
//! - **Node SVID**: renewed at half-life (± 10 %) with a fresh key through `RenewNode`; the new
//!   key, SVID, token and bundle replace the old ones in one atomic write.
//! - **Sync**: one `SyncEntries` stream, resumed from the last revision after every reconnect
//!   (a task of its own, following leader changes through the client's address list). Bundle
//!   changes arrive on the same stream.
//! - **Issuance**: every entry needing an SVID (new, changed, or due for rotation) is batched
//!   into `MintSvids` calls of at most [`MINT_BATCH`] CSRs; keys never leave this process.
//!   Each SVID then has its own timer at half-life ± 10 % of its actual validity.
//! - **Errors**: eviction, a ban or an expired node SVID stop the agent with the recovery
//!   recipe ([`AgentError`]); anything else is retried with backoff while the cache keeps
//!   serving.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ringzero_policy::selector::Selector;
use ringzero_policy::svid::{TrustBundle, Usage, csr_for, generate_key, validate_svid};
use ringzero_policy::{SpiffeId, TrustDomain};
use ringzero_proto::client::{AuthorityClient, ClientError, FirstContact, bundle_cas};
use ringzero_proto::pb;
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};
use zeroize::Zeroizing;

use crate::cache::{Identity, SvidCache};
use crate::enroll::enroll;
use crate::error::{AgentError, RecoveryHint, Verdict, classify};
use crate::rotation::{Validity, random_jitter, renew_in};
use crate::state::{AgentState, DataDir, NodeCredentials, StoredEntry, node_name_of};
use crate::workload;

/// The most CSRs in one `MintSvids` call.
pub(crate) const MINT_BATCH: usize = 256;
/// How long before retrying an SVID the authority refused.
const REFUSED_RETRY: Duration = Duration::from_secs(30);
/// The least time between two issuances for one entry: a guard against reissue loops (an SVID
/// that is "due" the moment it arrives).
const MIN_REISSUE: Duration = Duration::from_secs(1);
/// A new or changed entry waits this long before issuance, so that a burst of changes (a
/// deployment creating many entries) shares one `MintSvids` call.
const CHANGE_DELAY: Duration = Duration::from_millis(50);
/// Timers due within this window are served in the same batch.
const COALESCE: Duration = Duration::from_millis(250);

/// What `agent run` is told.
#[derive(Debug)]
pub struct AgentConfig {
    /// Authority addresses (host:port). Empty: the ones stored at enrollment.
    pub authorities: Vec<String>,
    /// The data directory (created; mode `0711`, files `0600`).
    pub data_dir: PathBuf,
    /// The Workload API socket; default `<data_dir>/workload.sock`.
    pub socket: Option<PathBuf>,
    /// How to enroll when the data directory holds no credentials yet. Ignored once enrolled.
    pub join: Option<FirstContact>,
}

/// Reported once: the Workload API serves and the first sync (and the SVIDs it called for)
/// completed.
#[derive(Debug, Clone)]
pub struct Ready {
    pub node: String,
    pub spiffe_id: SpiffeId,
    /// Registration entries parented to this node.
    pub entries: usize,
    /// Identities in the cache (entries with an SVID).
    pub identities: usize,
    pub socket: PathBuf,
}

/// Runs the agent until `shutdown` completes (`Ok`) or an operator must act (`Err`).
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    run_with_ready(config, None, shutdown).await
}

/// [`run`], sending [`Ready`] on `ready` once the socket serves and the first sync completed.
pub async fn run_with_ready(
    config: AgentConfig,
    ready: Option<oneshot::Sender<Ready>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let dir = DataDir::open(&config.data_dir)?;
    let socket = config
        .socket
        .clone()
        .unwrap_or_else(|| dir.default_socket());

    // 1. Credentials: stored, or enroll now.
    let (node, creds, addrs) = match dir.load_credentials()? {
        Some((creds, stored)) => {
            if config.join.is_some() {
                info!(
                    data_dir = %dir.path().display(),
                    "already enrolled: the join token is not used"
                );
            }
            let addrs = if config.authorities.is_empty() {
                stored
            } else {
                config.authorities.clone()
            };
            let node = creds
                .chain
                .first()
                .and_then(leaf_id)
                .as_ref()
                .and_then(node_name_of)
                .ok_or_else(|| {
                    AgentError::Corrupt(format!(
                        "{}: the stored SVID is not a node SVID",
                        dir.credentials_path().display()
                    ))
                })?;
            (node, creds, addrs)
        }
        None => {
            let Some(contact) = &config.join else {
                return Err(AgentError::NotEnrolled(dir.path().display().to_string()));
            };
            if config.authorities.is_empty() {
                return Err(AgentError::Config(
                    "no authority address (--authority ADDR[,ADDR…])".into(),
                ));
            }
            let enrolled = enroll(&config.authorities, contact).await?;
            dir.save_credentials(&enrolled.creds, &config.authorities)?;
            (enrolled.node, enrolled.creds, config.authorities.clone())
        }
    };
    if addrs.is_empty() {
        return Err(AgentError::Config(
            "no authority address (--authority ADDR[,ADDR…])".into(),
        ));
    }
    let hint = RecoveryHint {
        node: node.clone(),
        data_dir: dir.path().to_path_buf(),
        authorities: addrs.join(","),
    };
    let td = creds.trust_domain.clone();
    let node_id = td
        .id_with_path(&["ringzero", "node", node.as_str()])
        .map_err(|e| AgentError::Corrupt(e.to_string()))?;
    let node_validity = creds
        .chain
        .first()
        .and_then(|c| Validity::of(c, SystemTime::now()))
        .ok_or_else(|| AgentError::Corrupt("the node SVID does not parse".into()))?;
    if node_validity.expired_at(SystemTime::now()) {
        return Err(AgentError::Expired(hint));
    }

    // 2. What was synced before the restart (only if it was this node's).
    let (entries, revision) = match dir.load_state()? {
        Some(s) if s.node == node && s.trust_domain == td.as_str() => (s.entries, s.revision),
        _ => (Vec::new(), 0),
    };

    // 3. The Workload API, from the start: clients get "no identity issued" until the first
    //    sync fills the cache, and retry.
    let cache = SvidCache::new();
    cache.set_bundle(td.clone(), creds.bundle.clone());
    let listener = workload::bind(&socket).await?;
    info!(socket = %socket.display(), "Workload API listening");
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let server = tokio::spawn(workload::serve_listener(
        listener,
        cache.clone(),
        crate::attest::Attestor::new(),
        workload::Limits::default(),
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));

    // 4. The sync stream in its own task, the rest here.
    let setup = Arc::new(ClientSetup {
        creds: creds.clone(),
        addrs: addrs.clone(),
    });
    let (setup_tx, setup_rx) = watch::channel(setup);
    let (sync_tx, sync_rx) = mpsc::channel(64);
    let sync = tokio::spawn(sync_task(setup_rx, revision, sync_tx, hint.clone()));

    let mut agent = Agent {
        client: AuthorityClient::new(creds.client_credentials()?, addrs.clone()),
        dir,
        hint,
        node,
        node_id,
        td,
        creds,
        addrs,
        node_validity,
        node_renew_at: Instant::now(),
        node_backoff: Backoff::default(),
        mint_backoff: Backoff::default(),
        setup_tx,
        cache,
        entries: BTreeMap::new(),
        revision,
        timers: BTreeSet::new(),
        due: HashMap::new(),
        full_sync: None,
        synced: false,
        ready,
        revocations: crate::revocations::RevocationSet::new(),
        socket,
    };
    agent.schedule_node_renewal();
    for e in entries {
        agent.hold(e);
    }

    let result = tokio::select! {
        r = agent.run(sync_rx) => r,
        () = shutdown => Ok(()),
    };
    sync.abort();
    let _ = stop_tx.send(true);
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "Workload API stopped with an error"),
        Err(e) => warn!(error = %e, "Workload API task failed"),
    }
    if let Err(e) = &result {
        error!(error = %e, "agent stopped");
    } else {
        info!("agent stopped");
    }
    result
}

fn leaf_id(leaf: &CertificateDer<'_>) -> Option<SpiffeId> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    let san = cert.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => SpiffeId::parse(u).ok(),
        _ => None,
    })
}

/// What a client of the authority is built from; the sync task rebuilds its client from the
/// latest one on every reconnect.
struct ClientSetup {
    creds: NodeCredentials,
    addrs: Vec<String>,
}

/// A registration entry as held: stored form plus what it parses to (`None` when it does not
/// parse: held, persisted, never issued).
struct Held {
    entry: StoredEntry,
    parsed: Option<(SpiffeId, Vec<Selector>)>,
}

struct Agent {
    dir: DataDir,
    hint: RecoveryHint,
    node: String,
    node_id: SpiffeId,
    td: TrustDomain,
    creds: NodeCredentials,
    addrs: Vec<String>,
    client: AuthorityClient,
    node_validity: Validity,
    node_renew_at: Instant,
    node_backoff: Backoff,
    mint_backoff: Backoff,
    setup_tx: watch::Sender<Arc<ClientSetup>>,
    cache: SvidCache,
    entries: BTreeMap<String, Held>,
    revision: u64,
    /// Issuance timers: (when, entry id), and each entry's current one.
    timers: BTreeSet<(Instant, String)>,
    due: HashMap<String, Instant>,
    /// During a sync from revision 0: the entries seen so far; on `synced`, every other held
    /// entry is dropped.
    full_sync: Option<HashSet<String>>,
    synced: bool,
    ready: Option<oneshot::Sender<Ready>>,
    socket: PathBuf,
    /// Revoked capabilities, followed from the feed, for the node's verifiers.
    revocations: crate::revocations::RevocationSet,
}

enum SyncMsg {
    /// A new connection syncs from revision 0: what follows up to `synced` is the full set.
    Reset,
    Event(pb::SyncEntriesEvent),
    Fatal(AgentError),
}

impl Agent {
    async fn run(&mut self, mut sync_rx: mpsc::Receiver<SyncMsg>) -> Result<(), AgentError> {
        loop {
            let next = self.timers.first().map(|(t, _)| *t);
            tokio::select! {
                msg = sync_rx.recv() => match msg {
                    Some(SyncMsg::Reset) => self.full_sync = Some(HashSet::new()),
                    Some(SyncMsg::Event(ev)) => self.apply(ev).await?,
                    Some(SyncMsg::Fatal(e)) => return Err(e),
                    None => return Err(AgentError::Corrupt("the sync task ended".into())),
                },
                () = tokio::time::sleep_until(self.node_renew_at) => self.renew_node().await?,
                () = sleep_until_opt(next), if self.synced && next.is_some() => {
                    self.issue_due().await?;
                }
            }
        }
    }

    // ---- entries ------------------------------------------------------------------------

    /// Holds `entry` (new or changed) and schedules its issuance now.
    fn hold(&mut self, entry: StoredEntry) {
        let parsed = parse_entry(&entry, &self.td);
        let id = entry.id.clone();
        if let Err(e) = &parsed {
            warn!(entry = %id, error = %e, "registration entry not usable; no SVID issued");
            self.cache.remove(&id);
            self.unschedule(&id);
        } else {
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
        if self.cache.remove(id) {
            info!(entry = %id, "registration entry removed; identity dropped");
        }
    }

    async fn apply(&mut self, ev: pb::SyncEntriesEvent) -> Result<(), AgentError> {
        if let Some(b) = &ev.bundle {
            self.apply_bundle(b);
        }
        self.revocations.heard();
        if let Some(r) = &ev.revocations {
            let n = self.revocations.replace(r);
            info!(revocations = n, "revoked capabilities updated");
        }
        for e in ev.upserts {
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
                self.hold(stored);
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
                });
            }
        }
        Ok(())
    }

    fn apply_bundle(&mut self, b: &pb::Bundle) {
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
    fn refresh_clients(&mut self) {
        match self.creds.client_credentials() {
            Ok(c) => self.client = AuthorityClient::new(c, self.addrs.clone()),
            Err(e) => warn!(error = %e, "new credentials unusable; keeping the old client"),
        }
        let _ = self.setup_tx.send(Arc::new(ClientSetup {
            creds: self.creds.clone(),
            addrs: self.addrs.clone(),
        }));
    }

    // ---- timers -------------------------------------------------------------------------

    fn schedule(&mut self, id: &str, at: Instant) {
        self.unschedule(id);
        self.timers.insert((at, id.to_owned()));
        self.due.insert(id.to_owned(), at);
    }

    fn unschedule(&mut self, id: &str) {
        if let Some(at) = self.due.remove(id) {
            self.timers.remove(&(at, id.to_owned()));
        }
    }

    fn schedule_node_renewal(&mut self) {
        let wait = renew_in(self.node_validity, random_jitter(), SystemTime::now());
        self.node_renew_at = Instant::now() + wait;
        info!(node = %self.node, renew_in = ?wait, "node SVID renewal scheduled");
    }

    // ---- issuing workload SVIDs ---------------------------------------------------------

    /// Issues an SVID for every entry due now (and within [`COALESCE`]), in batches.
    async fn issue_due(&mut self) -> Result<(), AgentError> {
        let horizon = Instant::now() + COALESCE;
        let due: Vec<String> = self
            .timers
            .iter()
            .take_while(|(t, _)| *t <= horizon)
            .map(|(_, id)| id.clone())
            .collect();
        for chunk in due.chunks(MINT_BATCH) {
            self.issue(chunk).await?;
        }
        Ok(())
    }

    async fn issue(&mut self, ids: &[String]) -> Result<(), AgentError> {
        let mut keys: HashMap<String, (rcgen::KeyPair, SpiffeId, Vec<Selector>, u64, u64)> =
            HashMap::new();
        let mut requests = Vec::with_capacity(ids.len());
        for id in ids {
            self.unschedule(id);
            let Some(held) = self.entries.get(id) else {
                continue;
            };
            let Some((spiffe_id, selectors)) = &held.parsed else {
                continue;
            };
            let key = match generate_key() {
                Ok(k) => k,
                Err(e) => {
                    warn!(error = %e, "key generation failed");
                    self.schedule(id, Instant::now() + REFUSED_RETRY);
                    continue;
                }
            };
            let csr = match csr_for(&key, spiffe_id) {
                Ok(c) => c,
                Err(e) => {
                    warn!(entry = %id, error = %e, "CSR failed");
                    self.schedule(id, Instant::now() + REFUSED_RETRY);
                    continue;
                }
            };
            requests.push(pb::SvidRequest {
                entry_id: id.clone(),
                csr,
            });
            keys.insert(
                id.clone(),
                (
                    key,
                    spiffe_id.clone(),
                    selectors.clone(),
                    held.entry.revision,
                    held.entry.created_revision,
                ),
            );
        }
        if requests.is_empty() {
            return Ok(());
        }
        let req = pb::MintSvidsRequest { requests };
        let n = req.requests.len();
        let reply = self
            .client
            .call(move |mut c| {
                let req = req.clone();
                async move { c.mint_svids(req).await }
            })
            .await;
        let reply = match reply {
            Ok(r) => {
                self.mint_backoff.reset();
                r
            }
            Err(e) => {
                let retry = self.mint_backoff.next();
                self.verdict(&e, "minting SVIDs", retry)?;
                let at = Instant::now() + retry;
                for id in keys.keys() {
                    self.schedule(id, at);
                }
                return Ok(());
            }
        };
        let bundle = TrustBundle::new(self.td.clone(), self.creds.bundle.clone())
            .map_err(|e| AgentError::Corrupt(format!("bundle: {e}")))?;
        let mut issued = 0usize;
        for minted in reply.svids {
            let Some((key, spiffe_id, selectors, revision, created_revision)) =
                keys.remove(&minted.entry_id)
            else {
                continue;
            };
            let id = minted.entry_id;
            if !minted.error.is_empty() {
                warn!(entry = %id, error = %minted.error, "the authority refused an SVID");
                self.schedule(&id, Instant::now() + REFUSED_RETRY);
                continue;
            }
            if minted.revision != 0 && minted.revision < revision {
                // Issued for an older version of the entry: ask again.
                self.schedule(&id, Instant::now() + Duration::from_secs(1));
                continue;
            }
            let chain: Vec<CertificateDer<'static>> = minted
                .svid_chain
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            let checked = validate_svid(&chain, &bundle, SystemTime::now(), Usage::Client)
                .ok()
                .filter(|v| v.id == spiffe_id);
            let (Some(valid), Some(validity)) = (
                checked,
                chain
                    .first()
                    .and_then(|c| Validity::of(c, SystemTime::now())),
            ) else {
                warn!(entry = %id, "the authority sent an SVID that does not validate");
                self.schedule(&id, Instant::now() + REFUSED_RETRY);
                continue;
            };
            self.cache.upsert(Identity {
                entry_id: id.clone(),
                spiffe_id: valid.id,
                selectors,
                chain,
                key: Zeroizing::new(key.serialize_der()),
                not_after: valid.not_after,
                hint: String::new(),
                created_revision,
            });
            let wait = renew_in(validity, random_jitter(), SystemTime::now()).max(MIN_REISSUE);
            self.schedule(&id, Instant::now() + wait);
            issued += 1;
        }
        // Requests the authority did not answer.
        for id in keys.into_keys() {
            warn!(entry = %id, "no answer for this entry; retrying later");
            self.schedule(&id, Instant::now() + REFUSED_RETRY);
        }
        info!(requested = n, issued, "workload SVIDs issued");
        Ok(())
    }

    // ---- the node SVID ------------------------------------------------------------------

    async fn renew_node(&mut self) -> Result<(), AgentError> {
        if self.node_validity.expired_at(SystemTime::now()) {
            return Err(AgentError::Expired(self.hint.clone()));
        }
        let key = generate_key().map_err(|e| AgentError::Corrupt(e.to_string()))?;
        let csr = csr_for(&key, &self.node_id).map_err(|e| AgentError::Corrupt(e.to_string()))?;
        let reply = self
            .client
            .call(move |mut c| {
                let csr = csr.clone();
                async move { c.renew_node(pb::RenewNodeRequest { csr }).await }
            })
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                let retry = self.node_backoff.next();
                self.verdict(&e, "renewing the node SVID", retry)?;
                self.node_renew_at = Instant::now() + retry;
                return Ok(());
            }
        };
        let cas = reply
            .bundle
            .as_ref()
            .map(bundle_cas)
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| self.creds.bundle.clone());
        let chain: Vec<CertificateDer<'static>> = reply
            .svid_chain
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let checked = TrustBundle::new(self.td.clone(), cas.clone())
            .ok()
            .and_then(|b| validate_svid(&chain, &b, SystemTime::now(), Usage::Client).ok())
            .filter(|v| v.id == self.node_id);
        let (Some(_), Some(validity)) = (
            checked,
            chain
                .first()
                .and_then(|c| Validity::of(c, SystemTime::now())),
        ) else {
            let retry = self.node_backoff.next();
            warn!(retry_in = ?retry, "the renewed node SVID does not validate; retrying");
            self.node_renew_at = Instant::now() + retry;
            return Ok(());
        };
        self.node_backoff.reset();
        let token = if reply.token.is_empty() {
            self.creds.token.clone()
        } else {
            Zeroizing::new(reply.token)
        };
        let creds = NodeCredentials {
            trust_domain: self.td.clone(),
            bundle: cas,
            chain,
            key: Zeroizing::new(key.serialize_der()),
            token,
        };
        // Persisted before use: a crash now restarts with the new credentials.
        self.dir.save_credentials(&creds, &self.addrs)?;
        self.cache.set_bundle(self.td.clone(), creds.bundle.clone());
        self.creds = creds;
        self.node_validity = validity;
        self.refresh_clients();
        info!(node = %self.node, "node SVID renewed");
        self.schedule_node_renewal();
        Ok(())
    }

    /// Stops on a fatal error; logs a transient one.
    fn verdict(&self, e: &ClientError, doing: &str, retry: Duration) -> Result<(), AgentError> {
        match classify(e, &self.hint) {
            Verdict::Fatal(f) => Err(f),
            Verdict::Retry => {
                warn!(error = %e, retry_in = ?retry, "{doing} failed; retrying");
                Ok(())
            }
        }
    }
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

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// ---- the sync stream ------------------------------------------------------------------------

async fn sync_task(
    setup: watch::Receiver<Arc<ClientSetup>>,
    mut since: u64,
    tx: mpsc::Sender<SyncMsg>,
    hint: RecoveryHint,
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
        let opened = client
            .call(move |mut c| async move {
                c.sync_entries(pb::SyncEntriesRequest {
                    since_revision: from,
                })
                .await
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
        if from == 0 && tx.send(SyncMsg::Reset).await.is_err() {
            return;
        }
        let mut caught_up = from != 0;
        loop {
            match stream.message().await {
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

/// Exponential backoff with jitter: 500 ms doubling up to 30 s.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Backoff::MIN }
    }
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base.mul_f64(1.0 + random_jitter())
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_and_resets() {
        let mut b = Backoff::default();
        let first = b.next();
        assert!(first >= Duration::from_millis(450) && first <= Duration::from_millis(550));
        for _ in 0..20 {
            assert!(b.next() <= Backoff::MAX.mul_f64(1.1));
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(550));
    }

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
}
