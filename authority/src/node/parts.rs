//! Opening a node: its keys, stores, Raft instance and the credentials it talks to peers with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ringzero_policy::TrustDomain;
use ringzero_policy::svid::{LeafKey, LeafRequest, TrustBundle, generate_key};
use ringzero_policy::tls::{BundleSource, RotatingCert};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::command::{KeyKind, KeyStatus};
use crate::gate::TrustedKeys;
use crate::keys::{CurrentKeys, KeyFiles, NodeKeys, write_private};
use crate::net::{Contacts, GrpcNetwork, PeerCredentials, authority_id};
use crate::store::{self, StateMachineStore};
use crate::{NodeId, Raft, StateError};

use super::*;

/// The CA certificates of the replicated bundle (not compromised).
pub(super) fn replicated_cas(
    sm: &StateMachineStore,
) -> Result<Vec<CertificateDer<'static>>, NodeError> {
    Ok(sm
        .reader()?
        .keys()?
        .into_iter()
        .filter(|k| k.kind == KeyKind::X509Ca && k.status != KeyStatus::Compromised)
        .map(|k| CertificateDer::from(k.public_der))
        .collect())
}

/// A node's own SVID, issued by its own CA: the certificate it presents as a server and as a
/// Raft client. Renewed at half its lifetime ([`super::serve`]) and re-issued when its CA
/// rotates.
pub(crate) fn own_svid(
    keys: &NodeKeys,
    td: &TrustDomain,
    node_id: NodeId,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), NodeError> {
    let key = generate_key()?;
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let id = authority_id(td, node_id)?;
    let svid = keys.ca.issue(&LeafRequest {
        id: &id,
        key: LeafKey::PublicKey(&spki),
        ttl: NODE_SVID_TTL,
        dns_names: &[],
        now: SystemTime::now(),
    })?;
    Ok((
        svid.chain,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

pub(super) fn key_entries(keys: &NodeKeys) -> Result<Vec<(KeyKind, Vec<u8>, u64)>, NodeError> {
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

/// Everything a running node is made of.
pub(super) struct Parts {
    pub(super) dir: PathBuf,
    pub(super) config: NodeConfig,
    pub(super) td: TrustDomain,
    pub(super) keys: CurrentKeys,
    pub(super) log: store::LogStore,
    pub(super) peer_creds: PeerCredentials,
    pub(super) sm: StateMachineStore,
    pub(super) raft: Raft,
    pub(super) bundle: BundleSource,
    pub(super) trusted: TrustedKeys,
    pub(super) contacts: Contacts,
    /// The node's own SVID, presented as a server and to peers; re-issued when its CA rotates.
    pub(super) cert: Arc<RotatingCert>,
}

/// The id Raft gave this node's current Biscuit key, looked up by its public key (a rotation
/// changes it; `node.toml` keeps the id of the key the node started with).
fn biscuit_id_of(records: &[crate::KeyRecord], keys: &NodeKeys) -> Option<u32> {
    let own = keys.biscuit.public().key.to_bytes().to_vec();
    records
        .iter()
        .find(|k| k.kind == KeyKind::Biscuit && k.public_der == own)
        .and_then(|k| u32::try_from(k.id).ok())
}

pub(super) async fn open(dir: &Path) -> Result<Parts, NodeError> {
    crate::private_fs::check_tree(dir)?;
    if crate::removal::marker(dir).exists() {
        return Err(NodeError::Removed(dir.display().to_string()));
    }
    let layout = Layout(dir.to_path_buf());
    let config = NodeConfig::load(&layout.config())?;
    let raft_config = crate::raft_config("ringzero", config.raft).map_err(raft_err)?;
    // Removed while it was down: the replicated keys say so before the keys are even loaded.
    if let Ok((_, sm)) = store::open(&layout.raft())
        && let Ok(records) = sm.reader().and_then(|r| r.keys())
        && crate::keys::removed_by_keys(&records, config.node_id)
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
    // A rotation a crash interrupted after its activation committed is finished first, so
    // the files loaded are one whole key of each kind (see `keys::staging`).
    let files = KeyFiles::new(layout.keys());
    for kind in files.recover()? {
        tracing::info!(
            kind = crate::keys::kind_name(kind),
            "finished a key promotion interrupted by a restart"
        );
    }
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
    // A staged key the applied state already activated (a crash between the activation and
    // the swap) signs from the start; one it retired is destroyed. An activation still in
    // the log but not applied is caught by the running node's key watch.
    let settled = crate::key_sync::settle_files(&files, &sm.reader()?.keys()?, config.node_id)?;
    for kind in settled.promoted {
        tracing::info!(
            kind = crate::keys::kind_name(kind),
            "promoted a staged key the cluster activated while this node was down"
        );
    }
    let mut keys = files.load(config.biscuit_key_id)?;
    if let Some(id) = biscuit_id_of(&sm.reader()?.keys()?, &keys)
        && id != keys.biscuit.id().0
    {
        keys.set_biscuit_key_id(id)?;
    }
    let mut cas = replicated_cas(&sm)?;
    if cas.is_empty() {
        cas = load_bundle(&layout.bundle());
    }
    if !cas.iter().any(|c| c == keys.ca.cert_der()) {
        cas.push(keys.ca.cert_der().clone());
    }
    let bundle = BundleSource::new(TrustBundle::new(td.clone(), cas)?);
    let trusted = TrustedKeys::default();
    trusted.update(&sm.reader()?.keys()?);
    let (chain, key) = own_svid(&keys, &td, config.node_id)?;
    let cert = RotatingCert::new(chain, key)?;
    let keys = CurrentKeys::new(keys);
    let contacts = Contacts::default();
    let peer_creds = PeerCredentials {
        trust_domain: td.clone(),
        cert: Arc::clone(&cert),
        bundle: bundle.clone(),
    };
    let net = GrpcNetwork::new(peer_creds.clone(), contacts.clone(), config.raft);
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
        cert,
    })
}
