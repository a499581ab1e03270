//! The agent's data directory: what survives a restart.
//!
//! ```text
//! D/                 0711  (others may only traverse it, to reach the socket; no listing)
//!   node.profile     0600  the node's credentials, one file so they change together: trust
//!                          domain, authority addresses, bundle (PEM), node SVID chain (PEM),
//!                          node key (PKCS#8 PEM) and the svid:mint capability. The format is
//!                          a client profile, so `ringzero --profile D/node.profile …` calls the
//!                          authority as this node.
//!   agent.toml       0600  node name, trust domain, authority addresses, the last entry
//!                          revision applied and the entries at that revision (so a restarted
//!                          agent resumes the incremental sync instead of starting over).
//!   workload.sock    0666  the Workload API socket (default place; `--socket` moves it)
//! ```
//!
//! Every file is written with [`write_private`]: to a temporary file (mode set at creation),
//! fsynced, then renamed into place: a reader, or a crash, never sees half a file or a key next
//! to another SVID.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ringzero_policy::{SpiffeId, TrustDomain};
use ringzero_proto::client::{ClientError, Credentials, Profile};
use ringzero_proto::fs::write_private;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::AgentError;

/// The data directory's mode: see [`DataDir::open`].
pub(crate) const DIR_MODE: u32 = 0o711;
/// The largest state file read (entries included).
const MAX_STATE_LEN: u64 = 64 * 1024 * 1024;
/// The largest credentials file read.
const MAX_PROFILE_LEN: u64 = 1024 * 1024;

/// The agent's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// The node's credentials: what every call to the authority presents and trusts.
#[derive(Clone)]
pub(crate) struct NodeCredentials {
    pub trust_domain: TrustDomain,
    /// The bundle's CA certificates.
    pub bundle: Vec<CertificateDer<'static>>,
    /// The node SVID, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The node key, PKCS#8 DER, wiped on drop.
    pub key: Zeroizing<Vec<u8>>,
    /// The capability (`svid:mint` on `node/<name>`, bound to the node SVID).
    pub token: Zeroizing<String>,
}

impl std::fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCredentials")
            .field("trust_domain", &self.trust_domain)
            .field("bundle_len", &self.bundle.len())
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl NodeCredentials {
    /// The client credentials for calls to the authority.
    pub(crate) fn client_credentials(&self) -> Result<Credentials, AgentError> {
        let bundle =
            ringzero_policy::svid::TrustBundle::new(self.trust_domain.clone(), self.bundle.clone())
                .map_err(|e| AgentError::Corrupt(format!("bundle: {e}")))?;
        let key = PrivateKeyDer::try_from(self.key.to_vec())
            .map_err(|e| AgentError::Corrupt(format!("node key: {e}")))?;
        Ok(Credentials::new(
            self.trust_domain.clone(),
            bundle,
            self.chain.clone(),
            key,
            Some(self.token.to_string()),
        ))
    }

    /// The node key, for serving the node API.
    pub(crate) fn private_key(&self) -> Result<PrivateKeyDer<'static>, AgentError> {
        PrivateKeyDer::try_from(self.key.to_vec())
            .map_err(|e| AgentError::Corrupt(format!("node key: {e}")))
    }

    fn to_profile(&self, authorities: &[String]) -> Profile {
        Profile::new(
            &self.trust_domain,
            authorities.to_vec(),
            &self.bundle,
            &self.chain,
            &self.key,
            &self.token,
        )
    }

    fn from_profile(p: &Profile) -> Result<Self, String> {
        let trust_domain = TrustDomain::new(&p.trust_domain).map_err(|e| e.to_string())?;
        let bundle = p.bundle_certs().map_err(|e| e.to_string())?;
        let chain = pem_certs(&p.svid_pem).map_err(|e| format!("svid: {e}"))?;
        let key = match PrivateKeyDer::from_pem_slice(p.key_pem.as_bytes()) {
            Ok(PrivateKeyDer::Pkcs8(k)) => Zeroizing::new(k.secret_pkcs8_der().to_vec()),
            Ok(_) => return Err("key: not PKCS#8".into()),
            Err(e) => return Err(format!("key: {e}")),
        };
        Ok(Self {
            trust_domain,
            bundle,
            chain,
            key,
            token: Zeroizing::new(p.token.clone()),
        })
    }
}

fn pem_certs(text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let out: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(text.as_bytes()).collect();
    let out = out.map_err(|e| e.to_string())?;
    if out.is_empty() {
        return Err("no certificate".into());
    }
    Ok(out)
}

/// A registration entry as the agent holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredEntry {
    pub id: String,
    pub spiffe_id: String,
    pub selectors: Vec<String>,
    pub ttl_seconds: u32,
    #[serde(default)]
    pub dns_names: Vec<String>,
    pub revision: u64,
    /// The revision at which the entry was created (0 when unknown: from an older authority).
    #[serde(default)]
    pub created_revision: u64,
}

/// `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentState {
    /// The node name this agent enrolled as.
    pub node: String,
    pub trust_domain: String,
    /// Authority addresses (host:port), refreshed from the bundle's member list.
    pub authorities: Vec<String>,
    /// The last entry revision applied; the sync resumes after it.
    pub revision: u64,
    /// The entries parented to this node at `revision`.
    #[serde(default, rename = "entry")]
    pub entries: Vec<StoredEntry>,
}

impl DataDir {
    /// Opens `root`, creating it if needed, and sets its mode to `0711`: only the agent's user
    /// can list or create files in it, and every file holding a secret is `0600`; other users
    /// may traverse it, because the Workload API socket inside is for every local workload
    /// (attestation, not file modes, decides what a caller gets). `0700` would lock out every
    /// workload not running as the agent's user.
    pub fn open(root: &Path) -> Result<Self, AgentError> {
        let io = |e| AgentError::io(root, e);
        std::fs::create_dir_all(root).map_err(io)?;
        let meta = std::fs::metadata(root).map_err(io)?;
        if !meta.is_dir() {
            return Err(AgentError::Corrupt(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        if meta.permissions().mode() & 0o777 != DIR_MODE {
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(DIR_MODE))
                .map_err(io)?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `node.profile`: the node's credentials.
    pub fn credentials_path(&self) -> PathBuf {
        self.root.join("node.profile")
    }

    /// `agent.toml`.
    pub fn state_path(&self) -> PathBuf {
        self.root.join("agent.toml")
    }

    /// The default Workload API socket.
    pub fn default_socket(&self) -> PathBuf {
        self.root.join("workload.sock")
    }

    /// Whether the node has enrolled (its credentials exist).
    pub fn is_enrolled(&self) -> bool {
        self.credentials_path().exists()
    }

    /// The node's credentials and the authority addresses stored with them, if enrolled.
    pub(crate) fn load_credentials(
        &self,
    ) -> Result<Option<(NodeCredentials, Vec<String>)>, AgentError> {
        let path = self.credentials_path();
        let Some(text) = read_bounded(&path, MAX_PROFILE_LEN)? else {
            return Ok(None);
        };
        let text = Zeroizing::new(text);
        let corrupt = |e: String| AgentError::Corrupt(format!("{}: {e}", path.display()));
        let profile = Profile::from_toml(&text).map_err(|e: ClientError| corrupt(e.to_string()))?;
        let creds = NodeCredentials::from_profile(&profile).map_err(corrupt)?;
        Ok(Some((creds, profile.authorities)))
    }

    /// Persists the node's credentials (mode `0600`, atomically).
    pub(crate) fn save_credentials(
        &self,
        creds: &NodeCredentials,
        authorities: &[String],
    ) -> Result<(), AgentError> {
        let text = creds
            .to_profile(authorities)
            .to_toml()
            .map_err(|e| AgentError::Corrupt(e.to_string()))?;
        let text = Zeroizing::new(text);
        write_atomic(&self.credentials_path(), text.as_bytes(), 0o600)
    }

    /// `agent.toml`, if present.
    pub(crate) fn load_state(&self) -> Result<Option<AgentState>, AgentError> {
        let path = self.state_path();
        let Some(text) = read_bounded(&path, MAX_STATE_LEN)? else {
            return Ok(None);
        };
        toml::from_str(&text)
            .map(Some)
            .map_err(|e| AgentError::Corrupt(format!("{}: {e}", path.display())))
    }

    /// Persists `agent.toml` (mode `0600`, atomically).
    pub(crate) fn save_state(&self, state: &AgentState) -> Result<(), AgentError> {
        let text = toml::to_string(state).map_err(|e| AgentError::Corrupt(e.to_string()))?;
        write_atomic(&self.state_path(), text.as_bytes(), 0o600)
    }
}

/// The node name of a node SVID's SPIFFE ID (`spiffe://TD/ringzero/node/<name>`).
pub(crate) fn node_name_of(id: &SpiffeId) -> Option<String> {
    let segs: Vec<&str> = id.segments().collect();
    match segs.as_slice() {
        ["ringzero", "node", name] => Some((*name).to_owned()),
        _ => None,
    }
}

fn read_bounded(path: &Path, max: u64) -> Result<Option<String>, AgentError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AgentError::io(path, e)),
    };
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| AgentError::io(path, e))?;
    if text.len() as u64 > max {
        return Err(AgentError::Corrupt(format!(
            "{} is larger than {max} bytes",
            path.display()
        )));
    }
    Ok(Some(text))
}

/// [`write_private`]: `data` replaces `path` atomically, with `mode`.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), AgentError> {
    write_private(path, data, mode).map_err(|e| AgentError::io(path, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::time::{Duration, SystemTime};

    use ringzero_policy::testing::{CaBuilder, SvidBuilder};

    use super::*;

    fn creds() -> NodeCredentials {
        let td = TrustDomain::new("example.org").unwrap();
        let ca = CaBuilder::new(&td, "ca")
            .made_at(SystemTime::now())
            .ttl(Duration::from_secs(3600))
            .build();
        let id = SpiffeId::parse("spiffe://example.org/ringzero/node/n7").unwrap();
        let svid = SvidBuilder::new(&ca, &id)
            .ttl(Duration::from_secs(600))
            .issue();
        NodeCredentials {
            trust_domain: td,
            bundle: vec![ca.cert_der().clone()],
            key: Zeroizing::new(svid.key_pkcs8()),
            chain: svid.issued.chain,
            token: Zeroizing::new("tok".into()),
        }
    }

    #[test]
    fn credentials_and_state_round_trip_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("agent");
        let dir = DataDir::open(&root).unwrap();
        assert_eq!(
            std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            DIR_MODE
        );
        assert!(!dir.is_enrolled());
        assert!(dir.load_credentials().unwrap().is_none());
        assert!(dir.load_state().unwrap().is_none());

        let c = creds();
        let addrs = vec!["127.0.0.1:7000".to_owned(), "127.0.0.1:7001".to_owned()];
        dir.save_credentials(&c, &addrs).unwrap();
        assert!(dir.is_enrolled());
        let (back, back_addrs) = dir.load_credentials().unwrap().unwrap();
        assert_eq!(back_addrs, addrs);
        assert_eq!(back.chain, c.chain);
        assert_eq!(back.bundle, c.bundle);
        assert_eq!(*back.key, *c.key);
        assert_eq!(*back.token, *c.token);
        back.client_credentials().unwrap();

        let state = AgentState {
            node: "n7".into(),
            trust_domain: "example.org".into(),
            authorities: addrs,
            revision: 42,
            entries: vec![StoredEntry {
                id: "e1".into(),
                spiffe_id: "spiffe://example.org/ns/a".into(),
                selectors: vec!["unix:uid:1000".into()],
                ttl_seconds: 3600,
                dns_names: vec!["a.example".into()],
                revision: 41,
                created_revision: 12,
            }],
        };
        dir.save_state(&state).unwrap();
        assert_eq!(dir.load_state().unwrap().unwrap(), state);

        for p in [dir.credentials_path(), dir.state_path()] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn an_existing_directory_is_tightened_and_garbage_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        assert_eq!(
            std::fs::metadata(tmp.path()).unwrap().permissions().mode() & 0o777,
            DIR_MODE
        );
        std::fs::write(dir.credentials_path(), "not = [toml").unwrap();
        assert!(matches!(
            dir.load_credentials(),
            Err(AgentError::Corrupt(_))
        ));
        std::fs::write(dir.state_path(), "node = 3").unwrap();
        assert!(matches!(dir.load_state(), Err(AgentError::Corrupt(_))));
    }

    #[test]
    fn node_names_come_only_from_node_ids() {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        assert_eq!(
            node_name_of(&id("spiffe://td/ringzero/node/n7")).as_deref(),
            Some("n7")
        );
        assert_eq!(node_name_of(&id("spiffe://td/ringzero/authority/1")), None);
        assert_eq!(node_name_of(&id("spiffe://td/ringzero/node/a/b")), None);
    }
}
