//! Joining an existing cluster as a new authority node.

use std::future::Future;
use std::path::Path;
use std::time::SystemTime;

use ringzero_policy::SpiffeId;
use ringzero_policy::svid::{TrustBundle, generate_key};
pub use ringzero_proto::client::FirstContact;
use ringzero_proto::client::{
    AuthorityClient, ClientError, Credentials, bundle_cas, first_contact_bundle,
};
use ringzero_proto::pb;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::command::KeyKind;
use crate::keys::NodeKeys;
use crate::service::key_kind_name;

use super::*;

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
    let token = contact.token();
    let (_, bundle) = first_contact_bundle(peer, contact.trust())
        .await
        .map_err(|e| match e {
            ClientError::PinMismatch(_) => NodeError::Join(
                "the authority's trust bundle does not match the token's pin: refusing to send the secret".into(),
            ),
            other => NodeError::Join(other.to_string()),
        })?;
    let td = bundle.trust_domain().clone();

    // 2. Redeem the token over TLS authenticated by that bundle, with a CSR for a local key.
    let enroll_key = generate_key()?;
    let placeholder = SpiffeId::parse(&format!("spiffe://{td}/ringzero/joining/0"))?;
    let csr = ringzero_policy::svid::csr_for(&enroll_key, &placeholder)?;
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
    crate::private_fs::create_dir(dir).map_err(io_at(dir))?;
    let keys = NodeKeys::generate(&td, node_id, SystemTime::now())?;
    keys.save(&layout.keys())?;
    NodeConfig {
        node_id,
        trust_domain: td.to_string(),
        listen: listen.to_owned(),
        biscuit_key_id: 0,
        jwt_svid_ttl_s: None,
        raft: Default::default(),
    }
    .save(&layout.config())?;
    save_bundle(&layout.bundle(), &cas)?;

    // 4. Start serving Raft, then ask the leader to publish our keys and add us.
    let parts = open(dir).await?;
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
        TrustBundle::new(td.clone(), cas)?,
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
    server.await?
}
