//! The gating layer: every API call needs an mTLS client SVID and a capability, authorized by
//! `policy` on the leader, and every decision — allow and deny — is audited.
//!
//! Allowed calls carry their audit record into the command they propose (one Raft entry: the
//! effect and its record); read-only calls propose an audit-only command. If the record cannot be
//! committed, the call fails. Denials are recorded too, but aggregated per peer: the first
//! denial in a window is committed at once, later ones in the same window are counted and
//! committed as one summary record when the window closes, so a misbehaving client cannot turn
//! denials into unbounded Raft writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use ringzero_policy::spiffe::Principal;
use ringzero_policy::token::{
    Decision, Denial, KeySet, Limits, PublicRootKey, Request, Revocations, RootKeyId, TokenCache,
};
use ringzero_policy::{NodeName, Operation, Resource, SpiffeId, TrustDomain};

use crate::command::{AuditDecision, AuditRecord, Command, CommandId, KeyKind, KeyStatus, Op};
use crate::store::StateMachineStore;
use crate::{NodeId, Proposer};

mod windows;

use self::windows::{Window, Windows, close_window_later, commit_denial};

/// How long denials from one peer are folded into one record.
pub const DENIAL_WINDOW: Duration = Duration::from_secs(5);

/// The capability keys verifiers trust, rebuilt from the replicated bundle, and which of them
/// belong to removed members (retired).
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedKeys(Arc<RwLock<(KeySet, std::collections::HashSet<u32>)>>);

impl TrustedKeys {
    pub(crate) fn current(&self) -> KeySet {
        self.0.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// Whether the key with this id is retired: what it signs is honoured only if the cluster
    /// recorded minting it (before the key's owner was removed).
    pub(crate) fn is_retired(&self, id: RootKeyId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .contains(&id.0)
    }

    /// Replaces the key set with the Biscuit keys of `records` that are not compromised.
    pub(crate) fn update(&self, records: &[crate::KeyRecord]) {
        let mut set = KeySet::new();
        let mut retired = std::collections::HashSet::new();
        for r in records {
            if r.kind != KeyKind::Biscuit || r.status == KeyStatus::Compromised {
                continue;
            }
            let Ok(id) = u32::try_from(r.id) else {
                continue;
            };
            if let Ok(key) =
                biscuit_auth::PublicKey::from_bytes(&r.public_der, biscuit_auth::Algorithm::Ed25519)
            {
                set.insert(PublicRootKey {
                    id: RootKeyId(id),
                    key,
                });
                if r.status == KeyStatus::Retired {
                    retired.insert(id);
                }
            }
        }
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = (set, retired);
    }
}

/// Revocation lookups against the local state; a read error counts as revoked (fail closed).
struct StateRevocations<'a>(&'a crate::StateReader);

impl Revocations for StateRevocations<'_> {
    fn is_revoked(&self, id: &[u8]) -> bool {
        self.0.is_revoked(id).unwrap_or(true)
    }
}

/// An allowed call: who, with what, and the audit record its command must carry.
#[derive(Debug, Clone)]
pub(crate) struct Allowed {
    pub peer: SpiffeId,
    pub audit: AuditRecord,
}

impl Allowed {
    /// A command carrying this call's audit record.
    pub(crate) fn command(&self, op: Op) -> Command {
        Command {
            id: CommandId::fresh(),
            time_ms: now_ms(),
            audit: self.audit.clone(),
            op,
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The gate of one authority node.
pub(crate) struct Gate {
    proposer: Proposer,
    sm: StateMachineStore,
    node_id: NodeId,
    trust_domain: TrustDomain,
    keys: TrustedKeys,
    cache: TokenCache,
    denials: Windows,
    /// The term in which this node, as leader, last confirmed it had applied everything
    /// committed before it (0: never).
    ready_term: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Reads the bearer token from `authorization` metadata.
fn bearer<T>(req: &tonic::Request<T>) -> Option<String> {
    let v = req.metadata().get("authorization")?.to_str().ok()?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    Some(t.trim().to_owned())
}

fn request_id<T>(req: &tonic::Request<T>) -> String {
    req.metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(crate::command::random_hex)
}

impl Gate {
    pub(crate) fn new(
        proposer: Proposer,
        sm: StateMachineStore,
        node_id: NodeId,
        trust_domain: TrustDomain,
        keys: TrustedKeys,
    ) -> Self {
        Self {
            proposer,
            sm,
            node_id,
            trust_domain,
            keys,
            cache: TokenCache::new(4096),
            denials: Arc::new(Mutex::new(HashMap::new())),
            ready_term: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub(crate) fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Authorizes `operation` on `resource` for this call, or records the denial and refuses.
    pub(crate) async fn check<T>(
        &self,
        req: &tonic::Request<T>,
        operation: Operation,
        resource: &Resource,
        node: Option<&NodeName>,
    ) -> Result<Allowed, tonic::Status> {
        let peer = ringzero_proto::transport::peer(req);
        let rid = request_id(req);
        let mut audit = AuditRecord {
            actor: peer
                .spiffe_id
                .as_ref()
                .map_or_else(|| "anonymous".to_owned(), |p| p.to_string()),
            revocation_ids: Vec::new(),
            operation: operation.as_str().to_owned(),
            resource: resource.as_str().to_owned(),
            decision: AuditDecision::Deny,
            reason: None,
            authority: self.node_id,
            request_id: rid,
            details: Vec::new(),
        };
        let Some(peer_id) = peer
            .spiffe_id
            .clone()
            .filter(|p| p.is_member_of(&self.trust_domain))
        else {
            audit.reason = Some("no client SVID".into());
            self.deny(audit).await;
            return Err(tonic::Status::unauthenticated(
                "an mTLS client SVID is required",
            ));
        };
        // A certificate that expired while its connection stayed open opens nothing.
        if peer.not_after.is_none_or(|t| t <= SystemTime::now()) {
            audit.reason = Some("expired_certificate: the client SVID has expired".into());
            self.deny(audit).await;
            return Err(tonic::Status::unauthenticated(
                "the client SVID has expired; renew it",
            ));
        }
        #[cfg(feature = "testing")]
        if bypass::mode() == bypass::Mode::Everything {
            audit.decision = AuditDecision::Allow;
            return Ok(Allowed {
                peer: peer_id,
                audit,
            });
        }
        let Some(token) = bearer(req) else {
            audit.reason = Some("no capability".into());
            self.deny(audit).await;
            return Err(tonic::Status::unauthenticated(
                "a capability is required (authorization: Bearer <token>)",
            ));
        };
        self.caught_up().await?;
        let reader = self
            .sm
            .reader()
            .map_err(|e| tonic::Status::internal(format!("state: {e}")))?;
        let keys = self.keys.current();
        // Evaluation is bounded before it starts (`policy` accepts only the block shapes
        // ringzero writes, so every check costs at most one pass over a bounded set of facts)
        // and by the authorizer's time limit while it runs. A token seen before is decided here
        // (about a microsecond to allow, one Datalog evaluation to refuse); a new one adds
        // signature checks, up to a few milliseconds, so this worker hands its other tasks to
        // the runtime meanwhile.
        let request = Request {
            operation,
            resource,
            peer: Some(&peer_id),
            node,
            time: SystemTime::now(),
        };
        let revocations = StateRevocations(&reader);
        let decision = match self.cache.authorize_cached(
            &token,
            &keys,
            &revocations,
            &request,
            Limits::default(),
        ) {
            Some(d) => d,
            None => off_the_runtime(|| {
                self.cache
                    .authorize(&token, &keys, &revocations, &request, Limits::default())
            }),
        };
        // Who the certificate says is not enough: the authority must have issued it to that
        // principal, and the principal must still be one.
        let refusal = match &decision {
            Decision::Allow(grant) => self
                .principal_refusal(&reader, &peer_id, &peer)
                .or_else(|| self.lineage_refusal(&reader, grant).transpose())
                .transpose()
                .map_err(|e| tonic::Status::internal(format!("state: {e}")))?,
            Decision::Deny(_) => None,
        };
        drop(reader);
        if let Some((code, why)) = refusal {
            if let Ok(ids) = ringzero_policy::token::revocation_ids(&token) {
                audit.revocation_ids = ids.iter().map(|id| id.to_hex()).collect();
            }
            audit.reason = Some(format!("{code}: {why}"));
            self.deny(audit).await;
            return Err(tonic::Status::permission_denied(format!("denied: {why}")));
        }
        match decision {
            Decision::Allow(grant) => {
                crate::metrics::metrics().gate(&audit.operation, true);
                audit.decision = AuditDecision::Allow;
                audit.revocation_ids = grant.revocation_ids.iter().map(|id| id.to_hex()).collect();
                Ok(Allowed {
                    peer: peer_id,
                    audit,
                })
            }
            Decision::Deny(d) => {
                // Name the token by its revocation ids when its signatures were verified; a
                // token that did not verify only claims its ids (anyone can write someone
                // else's into a forged token), so its first id is kept apart, as a claim.
                if let Ok(ids) = ringzero_policy::token::revocation_ids(&token) {
                    if d.signature_verified() {
                        audit.revocation_ids = ids.iter().map(|id| id.to_hex()).collect();
                    } else if let Some(first) = ids.first() {
                        audit
                            .details
                            .push(("claimed_revocation_id".into(), first.to_hex()));
                    }
                }
                audit.reason = Some(format!("{}: {d}", d.code()));
                self.deny(audit).await;
                Err(denied(&d))
            }
        }
    }

    /// Why the caller's certificate opens nothing although it validated, if it does not: a
    /// node's or user's SVID must be one the authority recorded issuing to that principal, that
    /// serial from that member's CA (a removed member's CA key could sign another certificate
    /// with a recorded serial), and not revoked; a user must exist and not be suspended; an
    /// authority member must still be one; other reserved identities are never callers here; a
    /// workload SVID signed by a CA whose member was removed opens nothing.
    fn principal_refusal(
        &self,
        reader: &crate::StateReader,
        id: &SpiffeId,
        peer: &ringzero_proto::transport::PeerInfo,
    ) -> Option<Result<(&'static str, String), crate::StateError>> {
        let serial = peer.serial.as_deref().unwrap_or_default();
        let check = || -> Result<Option<(&'static str, String)>, crate::StateError> {
            if reader.is_serial_revoked(serial)? {
                return Ok(Some((
                    "revoked_certificate",
                    "this certificate is revoked".into(),
                )));
            }
            Ok(match id.principal() {
                Some(Principal::Node(name)) => {
                    (!reader.has_node_serial(name, serial, peer.issuer_authority)?).then(|| {
                        (
                            "unrecorded_certificate",
                            format!("the authority never issued this certificate to node {name}"),
                        )
                    })
                }
                Some(Principal::User(name)) => principal_record_refusal(
                    reader,
                    name,
                    &format!("user {name}"),
                    serial,
                    peer.issuer_authority,
                )?,
                // A scheduler is recorded in the users table under `sched:<name>`: the same
                // checks, against that record and the serials recorded for it.
                Some(Principal::Sched(name)) => principal_record_refusal(
                    reader,
                    &crate::command::sched_key(name),
                    &format!("scheduler {name}"),
                    serial,
                    peer.issuer_authority,
                )?,
                Some(Principal::Authority(n)) => {
                    let members = self
                        .proposer
                        .raft()
                        .metrics()
                        .borrow()
                        .membership_config
                        .clone();
                    (!members.membership().nodes().any(|(m, _)| *m == n)).then(|| {
                        (
                            "not_a_member",
                            format!("authority node {n} is not a member"),
                        )
                    })
                }
                Some(Principal::OtherReserved) => Some((
                    "reserved_identity",
                    format!("{id} is reserved and cannot call the authority API"),
                )),
                None => match peer.issuer_authority {
                    Some(n) if reader.authorities()?.iter().all(|a| a.node_id != n) => Some((
                        "removed_issuer",
                        format!("this certificate was signed by removed authority node {n}"),
                    )),
                    _ => None,
                },
            })
        };
        check().transpose()
    }

    /// Why an allowed capability may no longer be honoured: signed by a removed member's key
    /// but never recorded as minted by the cluster, or minted (through any number of
    /// delegations) by a user now suspended or removed.
    fn lineage_refusal(
        &self,
        reader: &crate::StateReader,
        grant: &ringzero_policy::token::Grant,
    ) -> Result<Option<(&'static str, String)>, crate::StateError> {
        let ids: Vec<Vec<u8>> = grant.revocation_ids.iter().map(|r| r.0.clone()).collect();
        if self.keys.is_retired(grant.root_key_id)
            && match ids.first() {
                Some(first) => reader.minted(first)?.is_none(),
                None => true,
            }
        {
            return Ok(Some((
                "retired_key",
                "signed by the key of a removed authority node after its removal".into(),
            )));
        }
        Ok(reader
            .lineage_cut_off(&ids)?
            .map(|why| ("cut_off_lineage", why)))
    }

    /// Makes sure this node, in its current term as leader, has applied everything committed
    /// before the term began, so no decision reads a state older than the cluster's (a new
    /// leader may not have applied the last entries yet, and a node restarted after a crash
    /// re-applies its last entries from the log). Costs one quorum round per term, not per call.
    async fn caught_up(&self) -> Result<(), tonic::Status> {
        let term = self.proposer.raft().metrics().borrow().current_term;
        if self.ready_term.load(std::sync::atomic::Ordering::Acquire) == term {
            return Ok(());
        }
        // A leader elected a moment ago may not have committed its first entry yet: wait for it
        // (briefly) rather than send the client elsewhere — this node is where it must come.
        crate::proposer::confirm_leader(self.proposer.raft(), Duration::from_secs(2))
            .await
            .map_err(|e| tonic::Status::unavailable(format!("not ready to decide: {e}")))?;
        self.ready_term
            .store(term, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Records a denial. Within a window per peer, the first of each distinct denial is
    /// committed at once and repeats are counted into one summary record when the window
    /// closes, so a misbehaving client cannot turn denials into unbounded Raft writes (at most
    /// `windows::DENIAL_KEYS_PER_WINDOW` + its summaries per window) and no distinct denial is lost.
    async fn deny(&self, audit: AuditRecord) {
        crate::metrics::metrics().gate(&audit.operation, false);
        let key = audit.actor.clone();
        let (now_commit, summary, opened) = {
            let mut w = self.denials.lock().unwrap_or_else(|p| p.into_inner());
            match w.get_mut(&key) {
                Some(win) if win.opened.elapsed() < DENIAL_WINDOW => {
                    (win.fold(&audit), Vec::new(), None)
                }
                previous => {
                    // A new window: commit this denial now, plus the summary of a previous
                    // window whose closing timer has not run yet.
                    let summary = previous.map(|win| win.summary()).unwrap_or_default();
                    let opened = Instant::now();
                    w.insert(key.clone(), Window::new(opened, &audit));
                    (Some(audit), summary, Some(opened))
                }
            }
        };
        if let Some(opened) = opened {
            close_window_later(
                Arc::clone(&self.denials),
                self.proposer.clone(),
                key,
                opened,
            );
        }
        for r in summary.into_iter().chain(now_commit) {
            commit_denial(&self.proposer, r).await;
        }
    }

    /// Records a denial decided outside [`Gate::check`] (first contact, Raft admission),
    /// folded into the same per-actor windows.
    pub(crate) async fn record_denial(&self, audit: AuditRecord) {
        self.deny(audit).await;
    }

    /// Commits the audit record of an allowed read-only call; the call fails if it cannot.
    pub(crate) async fn record(&self, allowed: &Allowed) -> Result<(), tonic::Status> {
        #[cfg(feature = "testing")]
        if bypass::mode() != bypass::Mode::Off {
            return Ok(());
        }
        self.proposer
            .propose(allowed.command(Op::AuditOnly))
            .await
            .map(|_| ())
            .map_err(|e| tonic::Status::unavailable(format!("audit record not committed: {e}")))
    }

    /// Whether the capability presented with `req` would also allow `operation` on `resource`
    /// for `peer`, decided exactly as [`Gate::check`] decides but neither audited nor cached
    /// as a denial. Delegation uses it so a minted token never grants more than its minter holds.
    pub(crate) fn also_allows<T>(
        &self,
        req: &tonic::Request<T>,
        peer: &SpiffeId,
        operation: Operation,
        resource: &Resource,
    ) -> bool {
        let Some(token) = bearer(req) else {
            return false;
        };
        let Ok(reader) = self.sm.reader() else {
            return false;
        };
        self.cache
            .authorize(
                &token,
                &self.keys.current(),
                &StateRevocations(&reader),
                &Request {
                    operation,
                    resource,
                    peer: Some(peer),
                    node: None,
                    time: SystemTime::now(),
                },
                Limits::default(),
            )
            .is_allowed()
    }

    /// The bearer capability presented with `req`, already verified by [`Gate::check`].
    pub(crate) fn presented_token<T>(&self, req: &tonic::Request<T>) -> Option<String> {
        bearer(req)
    }

    /// Forgets cached tokens that a revocation now covers.
    pub(crate) fn forget_revoked(&self) {
        if let Ok(reader) = self.sm.reader() {
            self.cache.forget_revoked(&StateRevocations(&reader));
        }
    }
}

/// Runs CPU-bound `f` so that the runtime moves this worker's other tasks elsewhere meanwhile
/// (on a multi-threaded runtime; a current-thread runtime, as in some tests, just runs it).
fn off_the_runtime<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn denied(d: &Denial) -> tonic::Status {
    tonic::Status::permission_denied(format!("denied: {d}"))
}

/// Test builds only (feature `testing`): turn the gate off — no capability check, no audit
/// record for reads — to measure what gating costs. Never compiled into the product.
#[cfg(feature = "testing")]
pub mod bypass {
    use std::sync::atomic::{AtomicU8, Ordering};

    /// What the gates of this process skip.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Mode {
        /// Nothing: the product's behaviour.
        Off = 0,
        /// The audit records of reads (the capability is still checked).
        AuditRecords = 1,
        /// The whole gate.
        Everything = 2,
    }

    static MODE: AtomicU8 = AtomicU8::new(0);

    /// Sets what every gate of this process skips.
    pub fn set(mode: Mode) {
        MODE.store(mode as u8, Ordering::SeqCst);
    }

    pub(crate) fn mode() -> Mode {
        match MODE.load(Ordering::Relaxed) {
            1 => Mode::AuditRecords,
            2 => Mode::Everything,
            _ => Mode::Off,
        }
    }
}

/// Why a certificate of the principal recorded under `key` in the users table (a user, or a
/// scheduler) opens nothing: the record is gone (removed: its credentials are revoked), it is
/// suspended, or this serial was never recorded as issued to it by the CA that signed it.
fn principal_record_refusal(
    reader: &crate::StateReader,
    key: &str,
    who: &str,
    serial: &[u8],
    issuer: Option<u64>,
) -> Result<Option<(&'static str, String)>, crate::StateError> {
    Ok(if reader.user(key)?.is_none() {
        Some((
            "unknown_user",
            format!("{who} does not exist (removed?); its credentials are revoked"),
        ))
    } else if reader.is_suspended(key)? {
        Some(("suspended_user", format!("{who} is suspended")))
    } else if !reader.has_user_serial(key, serial, issuer)? {
        Some((
            "unrecorded_certificate",
            format!("the authority never issued this certificate to {who}"),
        ))
    } else {
        None
    })
}
