//! An authority node's life: bootstrap the first node, join an existing cluster, run.
//!
//! Data directory layout:
//!
//! ```text
//! D/node.toml          node id, trust domain, listen address, Biscuit key id
//! D/keys/              ca.der, ca.key, biscuit.key, jwt.key, audit.key   (private keys 0600)
//! D/raft/              log.redb, state.redb, snapshots/
//! D/trust-bundle.der   the bundle learned at join, until the replicated one is applied
//! D/admin.profile      written by bootstrap (0600)
//! D/admin.sock         the break-glass admin socket while the node runs (0600, root only)
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ringzero_policy::svid::{LeafKey, LeafRequest, TrustBundle, generate_key};
use ringzero_policy::tls::{BundleSource, PeerMatch, SpiffeClientVerifier};
use ringzero_policy::token::{Lifetime, MintRequest};
use ringzero_policy::{Role, SpiffeId, TrustDomain};
use ringzero_proto::client::{
    AuthorityClient, ClientError, Credentials, FirstTrust, Profile, bundle_cas,
    first_contact_bundle,
};
use ringzero_proto::pb;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use crate::command::{
    AuditDecision, AuditRecord, Command, CommandId, KeyKind, KeyStatus, Op, Outcome,
};
use crate::gate::{Gate, TrustedKeys, now_ms};
use crate::keys::{KeyError, NodeKeys, write_private};
use crate::net::{Contacts, GrpcNetwork, PeerCredentials, RaftService, authority_id, raft_server};
use crate::service::{AuthorityService, key_kind_name};
use crate::store::{self, StateMachineStore};
use crate::{NodeId, Raft, StateError};

/// The lifetime of a node's own SVID, re-issued by its own CA at every start.
pub const NODE_SVID_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The default lifetime of the bootstrap admin credential.
pub const ADMIN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Errors running a node. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("{0}")]
    Keys(#[from] KeyError),
    #[error("storage: {0}")]
    State(#[from] StateError),
    #[error("{path}: {detail}")]
    Config { path: PathBuf, detail: String },
    #[error("{0} already holds an authority node; use `ringzero authority run --data-dir {0}`")]
    AlreadyInitialized(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("join: {0}")]
    Join(String),
    #[error(transparent)]
    NotPrivate(#[from] crate::private_fs::NotPrivate),
    #[error(
        "this authority node was removed from the cluster and its private keys were deleted \
         ({0}/REMOVED says when); it cannot serve again: join a new node with a new token \
         (`ringzero authority join-token`) in a new data directory"
    )]
    Removed(String),
    #[error("{0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> NodeError {
    NodeError::Other(e.to_string())
}

fn raft_err(e: impl std::fmt::Display) -> NodeError {
    NodeError::Raft(e.to_string())
}

/// What a node persists about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub trust_domain: String,
    /// host:port, as given to `--listen` and as peers reach it.
    pub listen: String,
    /// The id Raft assigned to this node's Biscuit key.
    pub biscuit_key_id: u32,
}

struct Layout(PathBuf);

impl Layout {
    fn config(&self) -> PathBuf {
        self.0.join("node.toml")
    }
    fn keys(&self) -> PathBuf {
        self.0.join("keys")
    }
    fn raft(&self) -> PathBuf {
        self.0.join("raft")
    }
    fn bundle(&self) -> PathBuf {
        self.0.join("trust-bundle.der")
    }
    fn admin_profile(&self) -> PathBuf {
        self.0.join("admin.profile")
    }
}

impl NodeConfig {
    fn load(path: &Path) -> Result<Self, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|e| NodeError::Config {
            path: path.to_path_buf(),
            detail: format!("{e} (is this an authority data directory?)"),
        })?;
        toml::from_str(&text).map_err(|e| NodeError::Config {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }

    fn save(&self, path: &Path) -> Result<(), NodeError> {
        let text = toml::to_string(self).map_err(other)?;
        write_private(path, text.as_bytes(), 0o600)?;
        Ok(())
    }

    fn trust_domain(&self) -> Result<TrustDomain, NodeError> {
        TrustDomain::new(&self.trust_domain).map_err(other)
    }
}

fn save_bundle(path: &Path, cas: &[CertificateDer<'_>]) -> Result<(), NodeError> {
    // Length-prefixed DER certificates.
    let mut out = Vec::new();
    for c in cas {
        out.extend_from_slice(&(c.len() as u32).to_be_bytes());
        out.extend_from_slice(c);
    }
    write_private(path, &out, 0o600)?;
    Ok(())
}

fn load_bundle(path: &Path) -> Vec<CertificateDer<'static>> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= 4 {
        let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if n > rest.len() {
            break;
        }
        out.push(CertificateDer::from(rest[..n].to_vec()));
        rest = &rest[n..];
    }
    out
}

/// The CA certificates of the replicated bundle (not compromised).
fn replicated_cas(sm: &StateMachineStore) -> Result<Vec<CertificateDer<'static>>, NodeError> {
    Ok(sm
        .reader()?
        .keys()?
        .into_iter()
        .filter(|k| k.kind == KeyKind::X509Ca && k.status != KeyStatus::Compromised)
        .map(|k| CertificateDer::from(k.public_der))
        .collect())
}

/// A node's own SVID, issued by its own CA.
fn own_svid(
    keys: &NodeKeys,
    td: &TrustDomain,
    node_id: NodeId,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), NodeError> {
    let key = generate_key().map_err(other)?;
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let id = authority_id(td, node_id).map_err(other)?;
    let svid = keys
        .ca
        .issue(&LeafRequest {
            id: &id,
            key: LeafKey::PublicKey(&spki),
            ttl: NODE_SVID_TTL,
            dns_names: &[],
            now: SystemTime::now(),
        })
        .map_err(other)?;
    Ok((
        svid.chain,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

fn key_entries(keys: &NodeKeys) -> Result<Vec<(KeyKind, Vec<u8>, u64)>, NodeError> {
    let not_after = keys
        .ca
        .not_after()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Ok(vec![
        (KeyKind::X509Ca, keys.ca.cert_der().to_vec(), not_after),
        (
            KeyKind::Biscuit,
            keys.biscuit.public().key.to_bytes().to_vec(),
            not_after,
        ),
        (KeyKind::Jwt, keys.jwt_public_spki()?, not_after),
        (KeyKind::Audit, keys.audit_public_spki()?, not_after),
    ])
}

fn local_audit(
    node_id: NodeId,
    operation: &str,
    resource: &str,
    details: Vec<(String, String)>,
) -> AuditRecord {
    AuditRecord {
        actor: "local:bootstrap".into(),
        revocation_ids: vec![],
        operation: operation.into(),
        resource: resource.into(),
        decision: AuditDecision::Allow,
        reason: None,
        authority: node_id,
        request_id: hex::encode(CommandId::random().0),
        details,
    }
}

async fn propose(raft: &Raft, audit: AuditRecord, op: Op) -> Result<Outcome, NodeError> {
    let cmd = Command {
        id: CommandId::random(),
        time_ms: now_ms(),
        audit,
        op,
    };
    Ok(crate::propose(raft, cmd).await.map_err(raft_err)?.outcome)
}

/// Everything a running node is made of.
struct Parts {
    dir: PathBuf,
    config: NodeConfig,
    td: TrustDomain,
    keys: Arc<NodeKeys>,
    log: store::LogStore,
    peer_creds: PeerCredentials,
    sm: StateMachineStore,
    raft: Raft,
    bundle: BundleSource,
    trusted: TrustedKeys,
    contacts: Contacts,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

async fn open(dir: &Path, raft_config: openraft::Config) -> Result<Parts, NodeError> {
    crate::private_fs::check_tree(dir)?;
    if crate::removal::marker(dir).exists() {
        return Err(NodeError::Removed(dir.display().to_string()));
    }
    let layout = Layout(dir.to_path_buf());
    let config = NodeConfig::load(&layout.config())?;
    // Removed while it was down: the replicated keys say so before the keys are even loaded.
    if let Ok((_, sm)) = store::open(&layout.raft())
        && let Ok(records) = sm.reader().and_then(|r| r.keys())
        && records.iter().any(|k| {
            k.authority == config.node_id
                && matches!(k.status, KeyStatus::Retired | KeyStatus::Compromised)
        })
    {
        drop(sm);
        let gone = NodeKeys::destroy(&layout.keys());
        let _ = write_private(
            &crate::removal::marker(dir),
            format!(
                "authority node {} was removed from the cluster; {} key files deleted\n",
                config.node_id,
                gone.len()
            )
            .as_bytes(),
            0o600,
        );
        return Err(NodeError::Removed(dir.display().to_string()));
    }
    let td = config.trust_domain()?;
    let keys = Arc::new(NodeKeys::load(&layout.keys(), config.biscuit_key_id)?);
    // In one process, a node just shut down may hold its database for a moment longer.
    let mut tries = 0;
    let (log, sm) = loop {
        match store::open(&layout.raft()) {
            Ok(s) => break s,
            Err(StateError::Storage(m)) if m.contains("already open") && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut cas = replicated_cas(&sm)?;
    if cas.is_empty() {
        cas = load_bundle(&layout.bundle());
    }
    if !cas.iter().any(|c| c == keys.ca.cert_der()) {
        cas.push(keys.ca.cert_der().clone());
    }
    let bundle = BundleSource::new(TrustBundle::new(td.clone(), cas).map_err(other)?);
    let trusted = TrustedKeys::default();
    trusted.update(&sm.reader()?.keys()?);
    let (chain, key) = own_svid(&keys, &td, config.node_id)?;
    let contacts = Contacts::default();
    let peer_creds = PeerCredentials {
        trust_domain: td.clone(),
        chain: chain.clone(),
        key: Arc::new(key.clone_key()),
        bundle: bundle.clone(),
    };
    let net = GrpcNetwork::new(peer_creds.clone(), contacts.clone());
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config),
        net,
        log.clone(),
        sm.clone(),
    )
    .await
    .map_err(raft_err)?;
    Ok(Parts {
        dir: dir.to_path_buf(),
        config,
        td,
        keys,
        log,
        peer_creds,
        sm,
        raft,
        bundle,
        trusted,
        contacts,
        chain,
        key,
    })
}

/// Initializes the first node of a new cluster in `dir`, and writes the admin profile.
/// Returns the profile's path.
pub async fn bootstrap(
    td: &TrustDomain,
    dir: &Path,
    listen: &str,
    admin_ttl: Duration,
) -> Result<PathBuf, NodeError> {
    let layout = Layout(dir.to_path_buf());
    if layout.config().exists() {
        return Err(NodeError::AlreadyInitialized(dir.display().to_string()));
    }
    crate::private_fs::create_dir(dir).map_err(other)?;
    let node_id: NodeId = 1;
    let mut keys = NodeKeys::generate(td, node_id, SystemTime::now())?;
    keys.save(&layout.keys())?;
    let mut config = NodeConfig {
        node_id,
        trust_domain: td.to_string(),
        listen: listen.to_owned(),
        biscuit_key_id: 0,
    };
    config.save(&layout.config())?;
    save_bundle(&layout.bundle(), &[keys.ca.cert_der().clone()])?;

    let parts = open(dir, crate::raft_config("ringzero").map_err(other)?).await?;
    let raft = parts.raft.clone();
    let members = std::collections::BTreeMap::from([(
        node_id,
        openraft::BasicNode {
            addr: listen.to_owned(),
        },
    )]);
    raft.initialize(members).await.map_err(raft_err)?;
    wait_leader(&raft, Duration::from_secs(10)).await?;

    // Publish every public key, then mark them active: a key is in the bundle before it signs.
    let mut ids = Vec::new();
    for (kind, public_der, not_after_ms) in key_entries(&keys)? {
        let audit = local_audit(
            node_id,
            "cluster:admin",
            "authority/1",
            vec![("key".into(), key_kind_name(kind).into())],
        );
        match propose(
            &raft,
            audit,
            Op::PublishKey {
                authority: node_id,
                kind,
                public_der,
                not_after_ms,
            },
        )
        .await?
        {
            Outcome::KeyId(id) => ids.push((kind, id)),
            other => return Err(NodeError::Raft(format!("publishing a key: {other:?}"))),
        }
    }
    propose(
        &raft,
        local_audit(node_id, "cluster:admin", "authority/1", vec![]),
        Op::PutAuthority {
            node_id,
            name: node_id.to_string(),
            addr: listen.to_owned(),
        },
    )
    .await?;
    for (_, id) in &ids {
        propose(
            &raft,
            local_audit(node_id, "cluster:admin", "authority/1", vec![]),
            Op::SetKeyStatus {
                key_id: *id,
                status: KeyStatus::Active,
            },
        )
        .await?;
    }
    let biscuit_id = ids
        .iter()
        .find(|(k, _)| *k == KeyKind::Biscuit)
        .map(|(_, id)| *id)
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| NodeError::Raft("no Biscuit key id".into()))?;
    keys.set_biscuit_key_id(biscuit_id)?;
    config.biscuit_key_id = biscuit_id;
    config.save(&layout.config())?;

    let mut profile = admin_profile(
        &raft,
        &keys,
        td,
        node_id,
        listen,
        admin_ttl,
        "local:bootstrap",
    )
    .await?;
    // Pin the audit key(s) as the CAs are pinned.
    pin_audit_keys(&mut profile, &parts.sm)?;
    let text = profile.to_toml().map_err(other)?;
    write_private(&layout.admin_profile(), text.as_bytes(), 0o600)?;
    raft.shutdown().await.map_err(raft_err)?;
    parts.sm.flush().map_err(other)?;
    Ok(layout.admin_profile())
}

/// Issues an admin SVID and an admin capability bound to it, recording both first: the
/// `admin` user (role admin) is stored, or restored, and the credential is recorded for it
/// (`IssueUserCredential`), so `login` renews it and `user remove admin` revokes it. Proposed
/// directly to Raft: this node must lead. `actor` names who asked (`local:bootstrap`,
/// `local:admin-socket …`).
pub(crate) async fn admin_profile(
    raft: &Raft,
    keys: &NodeKeys,
    td: &TrustDomain,
    node_id: NodeId,
    listen: &str,
    ttl: Duration,
    actor: &str,
) -> Result<Profile, NodeError> {
    let admin_id = td.id_with_path(&["user", "admin"]).map_err(other)?;
    let key = generate_key().map_err(other)?;
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let now = SystemTime::now();
    let svid = keys
        .ca
        .issue(&LeafRequest {
            id: &admin_id,
            key: LeafKey::PublicKey(&spki),
            ttl,
            dns_names: &[],
            now,
        })
        .map_err(other)?;
    let token = ringzero_policy::token::mint(
        &keys.biscuit,
        &MintRequest {
            subject: admin_id.clone(),
            rights: Role::Admin.rights(None).map_err(other)?,
            ttl: Some(ttl),
            bind_to_subject: true,
            bind_node: None,
        },
        &Lifetime {
            default: ttl,
            max: ttl,
        },
        now,
    )
    .map_err(other)?;
    let view = ringzero_policy::token::inspect(&token).map_err(other)?;
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let not_after = unix(svid.not_after);
    let mut audit = local_audit(
        node_id,
        "user:write",
        "user/admin",
        vec![("rights".into(), "role admin".into())],
    );
    audit.actor = actor.to_owned();
    let admin = crate::command::User {
        name: "admin".into(),
        role: "admin".into(),
        namespace: None,
    };
    if let Outcome::Rejected(why) =
        propose(raft, audit.clone(), Op::PutUser { user: admin }).await?
    {
        return Err(NodeError::Other(format!("storing the admin user: {why}")));
    }
    audit.operation = "token:mint".into();
    audit.details = vec![
        ("svid_serial".into(), hex::encode(&svid.serial)),
        ("spiffe_id".into(), admin_id.to_string()),
        (
            "public_key_sha256".into(),
            hex::encode(&svid.public_key_sha256),
        ),
        ("not_after".into(), not_after.to_string()),
        ("rights".into(), "role admin".into()),
    ];
    audit.revocation_ids = view
        .blocks
        .iter()
        .map(|b| b.revocation_id.to_hex())
        .collect();
    // Committed before the credential is written anywhere.
    let record = Op::IssueUserCredential {
        user: "admin".into(),
        serial: svid.serial.clone(),
        not_after_ms: not_after.saturating_mul(1000),
        revocation_ids: view
            .blocks
            .iter()
            .map(|b| b.revocation_id.0.clone())
            .collect(),
        expires_ms: unix(now)
            .saturating_add(ttl.as_secs())
            .saturating_add(1)
            .saturating_mul(1000),
    };
    if let Outcome::Rejected(why) = propose(raft, audit, record).await? {
        return Err(NodeError::Other(format!(
            "recording the admin credential: {why}"
        )));
    }
    Ok(Profile::new(
        td,
        vec![listen.to_owned()],
        &[keys.ca.cert_der().clone()],
        &svid.chain,
        &key.serialize_der(),
        &token,
    ))
}

/// Pins the audit keys of the replicated bundle in `profile`, as the CAs are pinned.
pub(crate) fn pin_audit_keys(
    profile: &mut Profile,
    sm: &StateMachineStore,
) -> Result<(), NodeError> {
    let reader = sm.reader().map_err(other)?;
    for k in reader.keys().map_err(other)? {
        if k.kind != KeyKind::Audit {
            continue;
        }
        let not_after_ms = crate::service::wire_not_after(&reader, &k).map_err(other)?;
        let key = ringzero_proto::pb::BundleKey {
            key_id: k.id,
            authority: k.authority,
            kind: "audit".into(),
            public_key: k.public_der,
            status: crate::service::key_status_name(k.status).into(),
            not_after_ms,
        };
        profile
            .audit_keys
            .extend(ringzero_proto::client::AuditKeyPin::from_bundle_key(&key));
    }
    Ok(())
}

async fn wait_leader(raft: &Raft, timeout: Duration) -> Result<NodeId, NodeError> {
    let mut rx = raft.metrics();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(l) = rx.borrow().current_leader {
            return Ok(l);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(NodeError::Raft("no leader elected".into()));
        }
        let _ = tokio::time::timeout(left, rx.changed()).await;
    }
}

/// Keeps the TLS bundle and the capability key set in step with the replicated trust bundle.
fn spawn_bundle_refresher(parts: &Parts) {
    let (sm, bundle, trusted, td, own) = (
        parts.sm.clone(),
        parts.bundle.clone(),
        parts.trusted.clone(),
        parts.td.clone(),
        parts.keys.ca.cert_der().clone(),
    );
    let mut rx = parts.raft.metrics();
    tokio::spawn(async move {
        let mut last: Vec<crate::KeyRecord> = Vec::new();
        loop {
            if let Ok(keys) = sm.reader().and_then(|r| r.keys())
                && keys != last
            {
                trusted.update(&keys);
                let mut cas: Vec<CertificateDer<'static>> = keys
                    .iter()
                    .filter(|k| k.kind == KeyKind::X509Ca && k.status != KeyStatus::Compromised)
                    .map(|k| CertificateDer::from(k.public_der.clone()))
                    .collect();
                if !cas.contains(&own) {
                    cas.push(own.clone());
                }
                if let Ok(b) = TrustBundle::new(td.clone(), cas) {
                    bundle.replace(b);
                }
                last = keys;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Makes the gate forget cached tokens as soon as an applied revocation covers them, on every
/// node (the revocation set itself is read from the state on every decision).
fn spawn_revocation_watch(sm: StateMachineStore, gate: Arc<Gate>) {
    let mut applied = sm.watch_applied();
    tokio::spawn(async move {
        let mut last: Vec<Vec<u8>> = Vec::new();
        loop {
            if let Ok(now) = sm.reader().and_then(|r| r.revocations()) {
                let ids: Vec<Vec<u8>> = now.into_iter().map(|(id, _)| id).collect();
                if ids != last {
                    gate.forget_revoked();
                    last = ids;
                }
            }
            if applied.changed().await.is_err() {
                return;
            }
        }
    });
}

/// How often the leader looks for revocations past the expiry of the tokens they name.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// On the leader, drops revocations (with expired join tokens and idempotency records) once the
/// tokens they name would have expired anyway, so the revocation set stays as small as the
/// tokens still alive. Proposes only when a revocation has expired: no audit noise otherwise.
fn spawn_revocation_purger(sm: StateMachineStore, raft: Raft, node_id: NodeId) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PURGE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if raft.metrics().borrow().current_leader != Some(node_id) {
                continue;
            }
            let now = now_ms();
            let expired = sm
                .reader()
                .and_then(|r| r.revocations())
                .map(|all| all.iter().filter(|(_, until)| *until <= now).count())
                .unwrap_or(0);
            if expired == 0 {
                continue;
            }
            let audit = AuditRecord {
                actor: "local:purge".into(),
                details: vec![("expired_revocations".into(), expired.to_string())],
                ..local_audit(node_id, "token:revoke", "token", Vec::new())
            };
            if let Err(e) = propose(&raft, audit, Op::PurgeExpired).await {
                tracing::warn!(error = %e, "could not purge expired revocations");
            }
        }
    });
}

/// The address a node in `dir` listens on (from its `node.toml`).
pub fn listen_address(dir: &Path) -> Result<String, NodeError> {
    Ok(NodeConfig::load(&Layout(dir.to_path_buf()).config())?.listen)
}

/// Serves a node from `dir` on `listener` until `shutdown` completes.
pub async fn run(
    dir: &Path,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let parts = open(dir, crate::raft_config("ringzero").map_err(other)?).await?;
    serve(parts, listener, shutdown).await
}

async fn serve(
    parts: Parts,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    spawn_bundle_refresher(&parts);
    let verifier =
        SpiffeClientVerifier::optional(parts.bundle.clone(), PeerMatch::AnyInTrustDomain);
    let tls =
        ringzero_policy::tls::server_config(parts.chain.clone(), parts.key.clone_key(), verifier)
            .map_err(other)?;
    let proposer = crate::Proposer::new(parts.raft.clone());
    let gate = Arc::new(Gate::new(
        proposer.clone(),
        parts.sm.clone(),
        parts.config.node_id,
        parts.td.clone(),
        parts.trusted.clone(),
    ));
    spawn_revocation_watch(parts.sm.clone(), Arc::clone(&gate));
    let raft_service = RaftService::new(parts.raft.clone(), parts.td.clone()).guarded(
        parts.config.node_id,
        parts.log.clone(),
        parts.sm.clone(),
        Arc::clone(&gate),
        parts.peer_creds.clone(),
    );
    spawn_revocation_purger(parts.sm.clone(), parts.raft.clone(), parts.config.node_id);
    let (removed_tx, mut removed_rx) = tokio::sync::watch::channel(false);
    crate::removal::spawn_watch(
        parts.raft.clone(),
        parts.config.node_id,
        parts.contacts.clone(),
        parts.dir.clone(),
        Layout(parts.dir.clone()).keys(),
        removed_tx,
    );
    let was_removed = removed_rx.clone();
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            _ = removed_rx.wait_for(|r| *r) => {}
        }
        // Long-lived streams (entry feeds, audit tails) end first, so the graceful shutdown
        // below does not wait on them.
        let _ = stopping_tx.send(true);
    };
    crate::admin_socket::spawn(
        &parts.dir,
        crate::admin_socket::Issuer {
            raft: parts.raft.clone(),
            keys: parts.keys.clone(),
            td: parts.td.clone(),
            node_id: parts.config.node_id,
            listen: parts.config.listen.clone(),
            sm: parts.sm.clone(),
        },
        stopping.clone(),
    )?;
    let service = AuthorityService::new(
        proposer,
        parts.sm.clone(),
        gate,
        parts.keys.clone(),
        parts.contacts.clone(),
    )
    .with_shutdown(stopping);
    // Connections bounded per class and per source IP, streams and HTTP/2 memory per
    // connection, one deadline per call (proto::transport::ServerPolicy). In front of every
    // handler: expired certificates authenticate nothing, anonymous clients reach only the
    // first-contact methods, and only members may send the Raft service a body to decode.
    let policy = ringzero_proto::transport::ServerPolicy::default();
    let incoming = policy.incoming(listener, Arc::new(tls));
    let raft = parts.raft.clone();
    let sm = parts.sm.clone();
    let result = policy
        .server()
        .layer(ringzero_proto::transport::RefuseExpiredLayer)
        .layer(ringzero_proto::transport::AnonymousAllowListLayer::new(
            ringzero_proto::AUTHORITY_FIRST_CONTACT,
        ))
        .layer(ringzero_proto::transport::MembersOnlyLayer::new([
            ringzero_proto::RAFT_METHODS,
        ]))
        .add_service(raft_server(raft_service))
        .add_service(
            pb::authority_server::AuthorityServer::new(service)
                .max_decoding_message_size(256 * 1024)
                .max_encoding_message_size(4 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = raft.shutdown().await;
    if let Err(e) = sm.flush() {
        tracing::warn!(error = %e, "could not flush the state database at shutdown");
    }
    if *was_removed.borrow() {
        return Err(NodeError::Removed(parts.dir.display().to_string()));
    }
    result.map_err(other)
}

/// What a joiner knows before it has joined: how to reach the cluster and how to trust it.
#[derive(Debug)]
pub enum FirstContact {
    /// A pinned join token: the bundle is fetched and checked against the pin.
    Pinned(ringzero_policy::join::JoinToken),
    /// The bundle is given (`--bundle FILE`); the token's pin is not needed.
    Bundle(
        ringzero_policy::join::JoinToken,
        Vec<CertificateDer<'static>>,
    ),
    /// No verification of the authority before the secret is sent (`--insecure-skip-pin`).
    InsecureNoPin(ringzero_policy::join::JoinToken),
}

/// Creates a node in `dir` by joining the cluster at `peer`, then serves it.
pub async fn join(
    dir: &Path,
    listen: &str,
    listener: tokio::net::TcpListener,
    peer: &str,
    contact: FirstContact,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let layout = Layout(dir.to_path_buf());
    if layout.config().exists() {
        return Err(NodeError::AlreadyInitialized(dir.display().to_string()));
    }
    // 1. Learn and check the bundle before anything secret leaves this process.
    let (token, trust) = match &contact {
        FirstContact::Pinned(token) => (token, FirstTrust::Pin(&token.pin)),
        FirstContact::Bundle(token, cas) => (token, FirstTrust::Bundle(cas)),
        FirstContact::InsecureNoPin(token) => (token, FirstTrust::Insecure),
    };
    let (_, bundle) = first_contact_bundle(peer, trust)
        .await
        .map_err(|e| match e {
            ClientError::PinMismatch(_) => NodeError::Join(
                "the authority's trust bundle does not match the token's pin: refusing to send the secret".into(),
            ),
            other => NodeError::Join(other.to_string()),
        })?;
    let td = bundle.trust_domain().clone();

    // 2. Redeem the token over TLS authenticated by that bundle, with a CSR for a local key.
    let enroll_key = generate_key().map_err(other)?;
    let placeholder =
        SpiffeId::parse(&format!("spiffe://{td}/ringzero/joining/0")).map_err(other)?;
    let csr = ringzero_policy::svid::csr_for(&enroll_key, &placeholder).map_err(other)?;
    let reply = ringzero_proto::client::redeem_join_token(peer, &bundle, token, &csr)
        .await
        .map_err(|e| NodeError::Join(e.to_string()))?;
    let node_id = reply.node_id;
    if node_id == 0 {
        return Err(NodeError::Join(
            "the token was not an authority join token".into(),
        ));
    }
    let chain: Vec<CertificateDer<'static>> = reply
        .svid_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let cas = reply
        .bundle
        .as_ref()
        .map(bundle_cas)
        .unwrap_or_else(|| bundle.roots().to_vec());

    // 3. Create this node's own keys and data directory.
    crate::private_fs::create_dir(dir).map_err(other)?;
    let keys = NodeKeys::generate(&td, node_id, SystemTime::now())?;
    keys.save(&layout.keys())?;
    NodeConfig {
        node_id,
        trust_domain: td.to_string(),
        listen: listen.to_owned(),
        biscuit_key_id: 0,
    }
    .save(&layout.config())?;
    save_bundle(&layout.bundle(), &cas)?;

    // 4. Start serving Raft, then ask the leader to publish our keys and add us.
    let parts = open(dir, crate::raft_config("ringzero").map_err(other)?).await?;
    let pub_keys: Vec<pb::BundleKey> = key_entries(&keys)?
        .into_iter()
        .map(|(kind, public_key, not_after_ms)| pb::BundleKey {
            key_id: 0,
            authority: node_id,
            kind: key_kind_name(kind).into(),
            public_key,
            status: "published".into(),
            not_after_ms,
        })
        .collect();
    let sm = parts.sm.clone();
    let config_path = layout.config();
    let creds = Credentials::new(
        td.clone(),
        TrustBundle::new(td.clone(), cas).map_err(other)?,
        chain,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(enroll_key.serialize_der())),
        None,
    );
    let peer = peer.to_owned();
    let listen_addr = listen.to_owned();
    let server = tokio::spawn(serve(parts, listener, shutdown));
    let mut client = AuthorityClient::new(creds, vec![peer]);
    client
        .call(|mut c| {
            let req = pb::JoinClusterRequest {
                address: listen_addr.clone(),
                keys: pub_keys.clone(),
            };
            async move { c.join_cluster(req).await }
        })
        .await
        .map_err(|e| NodeError::Join(e.to_string()))?;

    // 5. Learn the id Raft gave our Biscuit key; it takes effect at the next start.
    if let Ok(records) = sm.reader().and_then(|r| r.keys()) {
        let own = keys.biscuit.public().key.to_bytes().to_vec();
        if let Some(id) = records
            .iter()
            .find(|k| k.kind == KeyKind::Biscuit && k.public_der == own)
            .and_then(|k| u32::try_from(k.id).ok())
        {
            let mut config = NodeConfig::load(&config_path)?;
            config.biscuit_key_id = id;
            config.save(&config_path)?;
        }
    }
    server.await.map_err(other)?
}
