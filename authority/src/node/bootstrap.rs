//! Creating the first node of a new cluster.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ringzero_policy::TrustDomain;

use crate::NodeId;
use crate::command::{KeyKind, KeyStatus, Op, Outcome};
use crate::keys::{NodeKeys, write_private};
use crate::service::key_kind_name;

use super::*;

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
    crate::private_fs::create_dir(dir).map_err(io_at(dir))?;
    let node_id: NodeId = 1;
    let mut keys = NodeKeys::generate(td, node_id, SystemTime::now())?;
    keys.save(&layout.keys())?;
    let mut config = NodeConfig {
        node_id,
        trust_domain: td.to_string(),
        listen: listen.to_owned(),
        biscuit_key_id: 0,
        jwt_svid_ttl_s: None,
        raft: Default::default(),
    };
    config.save(&layout.config())?;
    save_bundle(&layout.bundle(), &[keys.ca.cert_der().clone()])?;

    let parts = open(dir).await?;
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
    let text = profile.to_toml()?;
    write_private(&layout.admin_profile(), text.as_bytes(), 0o600)?;
    raft.shutdown().await.map_err(raft_err)?;
    parts.sm.flush()?;
    Ok(layout.admin_profile())
}
