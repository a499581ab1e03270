//! Opening a node: its keys, stores, Raft instance and the credentials it talks to peers with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ringzero_policy::TrustDomain;
use ringzero_policy::svid::{LeafKey, LeafRequest, TrustBundle, generate_key};
use ringzero_policy::tls::BundleSource;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::command::{KeyKind, KeyStatus};
use crate::gate::TrustedKeys;
use crate::keys::{NodeKeys, write_private};
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

/// A node's own SVID, issued by its own CA.
pub(super) fn own_svid(
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
    pub(super) keys: Arc<NodeKeys>,
    pub(super) log: store::LogStore,
    pub(super) peer_creds: PeerCredentials,
    pub(super) sm: StateMachineStore,
    pub(super) raft: Raft,
    pub(super) bundle: BundleSource,
    pub(super) trusted: TrustedKeys,
    pub(super) contacts: Contacts,
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key: PrivateKeyDer<'static>,
}

pub(super) async fn open(dir: &Path, raft_config: openraft::Config) -> Result<Parts, NodeError> {
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
    let bundle = BundleSource::new(TrustBundle::new(td.clone(), cas)?);
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
