//! The data directory: its layout, the node's own configuration, the bundle learned at join.

use std::path::{Path, PathBuf};

use ringzero_policy::TrustDomain;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::keys::write_private;

use super::*;

/// What a node persists about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub trust_domain: String,
    /// host:port, as given to `--listen` and as peers reach it.
    pub listen: String,
    /// The id Raft assigned to this node's Biscuit key.
    pub biscuit_key_id: u32,
    /// The lifetime of the JWT-SVIDs this node signs, in seconds: default 300, within
    /// 10–3600, and never beyond the entry's own TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_svid_ttl_s: Option<u64>,
    /// Raft's heartbeat and election timeouts; see [`crate::RaftTiming`].
    #[serde(default, skip_serializing_if = "is_default")]
    pub raft: crate::RaftTiming,
}

fn is_default(t: &crate::RaftTiming) -> bool {
    *t == crate::RaftTiming::default()
}

pub(super) struct Layout(pub(super) PathBuf);

impl Layout {
    pub(super) fn config(&self) -> PathBuf {
        self.0.join("node.toml")
    }
    pub(super) fn keys(&self) -> PathBuf {
        self.0.join("keys")
    }
    pub(super) fn raft(&self) -> PathBuf {
        self.0.join("raft")
    }
    pub(super) fn bundle(&self) -> PathBuf {
        self.0.join("trust-bundle.der")
    }
    pub(super) fn admin_profile(&self) -> PathBuf {
        self.0.join("admin.profile")
    }
}

impl NodeConfig {
    pub(super) fn load(path: &Path) -> Result<Self, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|e| NodeError::Config {
            path: path.to_path_buf(),
            detail: format!("{e} (is this an authority data directory?)"),
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| NodeError::Config {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        config.raft.check().map_err(|detail| NodeError::Config {
            path: path.to_path_buf(),
            detail: format!("[raft] {detail}"),
        })?;
        Ok(config)
    }

    pub(super) fn save(&self, path: &Path) -> Result<(), NodeError> {
        let text = toml::to_string(self).map_err(|source| NodeError::ConfigWrite {
            path: path.to_path_buf(),
            source,
        })?;
        write_private(path, text.as_bytes(), 0o600)?;
        Ok(())
    }

    /// See [`NodeConfig::jwt_svid_ttl_s`].
    pub(super) fn jwt_svid_ttl(&self) -> std::time::Duration {
        self.jwt_svid_ttl_s.map_or(
            crate::service::DEFAULT_JWT_TTL,
            std::time::Duration::from_secs,
        )
    }

    pub(super) fn trust_domain(&self) -> Result<TrustDomain, NodeError> {
        Ok(TrustDomain::new(&self.trust_domain)?)
    }
}

pub(super) fn save_bundle(path: &Path, cas: &[CertificateDer<'_>]) -> Result<(), NodeError> {
    // Length-prefixed DER certificates.
    let mut out = Vec::new();
    for c in cas {
        out.extend_from_slice(&(c.len() as u32).to_be_bytes());
        out.extend_from_slice(c);
    }
    write_private(path, &out, 0o600)?;
    Ok(())
}

pub(super) fn load_bundle(path: &Path) -> Vec<CertificateDer<'static>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<NodeConfig, NodeError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        NodeConfig::load(&path)
    }

    const BASE: &str = "node_id = 1\ntrust_domain = \"a.test\"\nlisten = \"127.0.0.1:1\"\n\
                        biscuit_key_id = 0\n";

    #[test]
    fn raft_timing_defaults_when_absent_and_is_not_written_back() {
        let c = load(BASE).unwrap();
        assert_eq!(c.raft, crate::RaftTiming::default());
        assert!(!toml::to_string(&c).unwrap().contains("raft"));
        crate::raft_config("t", c.raft).unwrap();
    }

    #[test]
    fn a_raft_table_sets_the_timeouts() {
        let c = load(&format!(
            "{BASE}[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 1000\n\
             election_timeout_max_ms = 1500\n"
        ))
        .unwrap();
        let cfg = crate::raft_config("t", c.raft).unwrap();
        assert_eq!(
            (
                cfg.heartbeat_interval,
                cfg.election_timeout_min,
                cfg.election_timeout_max
            ),
            (100, 1000, 1500)
        );
        let again = toml::to_string(&c).unwrap();
        assert!(again.contains("[raft]"), "{again}");
    }

    #[test]
    fn bad_raft_timings_are_refused_with_the_reason() {
        for (table, says) in [
            ("heartbeat_ms = 0", "heartbeat_ms = 0"),
            ("heartbeat_ms = 20000", "heartbeat_ms = 20000"),
            (
                "heartbeat_ms = 100\nelection_timeout_min_ms = 150",
                "two heartbeats",
            ),
            (
                "election_timeout_min_ms = 300\nelection_timeout_max_ms = 300",
                "above election_timeout_min_ms",
            ),
            ("election_timeout_max_ms = 90000", "at most 60000"),
            ("election_timeout_ms = 300", "unknown field"),
            ("heartbeat_ms = -5", "heartbeat_ms"),
        ] {
            let err = load(&format!("{BASE}[raft]\n{table}\n")).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(says), "{table}: {text}");
        }
    }
}
