//! The one client of the authority API, shared by the CLI, agents and the scheduler.
//!
//! - [`Profile`]: client credentials and where the cluster is (like a kubeconfig), TOML, 0600.
//! - [`AuthorityClient`]: mTLS with the profile's SVID, the capability as a bearer token, and
//!   leader-hint retry: a follower answers `Unavailable` with the leader's address in the
//!   `ringzero-leader` metadata, and the client retries there; an unreachable address is skipped.
//! - First contact: [`FirstContact`] and [`FirstTrust`] (how a joiner trusts the cluster),
//!   [`first_contact_bundle`], [`fetch_bundle_unverified`] (for a pin check),
//!   [`fetch_bundle_verified`], [`redeem_join_token`], [`login_with_invite`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ringzero_policy::TrustDomain;
use ringzero_policy::svid::{TrustBundle, pem_encode};
use ringzero_policy::tls::{BundleSource, PeerMatch, SpiffeServerVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::pb;
use crate::pb::authority_client::AuthorityClient as Grpc;

/// The metadata key carrying the leader's address on `Unavailable`.
pub const LEADER_HINT: &str = "ringzero-leader";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a call keeps looking for a leader that answers.
const RETRY_FOR: Duration = Duration::from_secs(10);
/// The pause between attempts once every address has been tried.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("bad profile: {0}")]
    Profile(String),
    #[error("no authority address to call")]
    NoAddress,
    #[error("{code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    #[error("transport: {0}")]
    Transport(String),
    /// First contact: the server's bundle does not hold the pinned CA, so nothing secret was
    /// sent to it.
    #[error(
        "the trust bundle of the authority at {0} does not match the pin: refusing to send the \
         secret (wrong address, wrong cluster, or someone in the middle)"
    )]
    PinMismatch(String),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Status {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

impl ClientError {
    /// The gRPC code, when the authority answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

mod first_contact;
mod trust;

pub use self::first_contact::{
    FirstContact, FirstTrust, InviteLogin, fetch_bundle_unverified, fetch_bundle_verified,
    first_contact_bundle, login_with_invite, redeem_join_token, redeem_join_token_as,
};
pub use self::trust::{COMPROMISED, key_fingerprint};

/// The CA certificates of a bundle reply, leaving out compromised keys whatever the server says
/// (a profile also leaves out those it learned were compromised: [`Profile::trusted_cas`]).
pub fn bundle_cas(b: &pb::Bundle) -> Vec<CertificateDer<'static>> {
    b.keys
        .iter()
        .filter(|k| k.kind == "x509-ca" && k.status != "compromised")
        .map(|k| CertificateDer::from(k.public_key.clone()))
        .collect()
}

/// The leader address a follower named in its `Unavailable` answer.
fn leader_hint(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_HINT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A client profile, as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub trust_domain: String,
    /// Authority addresses (host:port), refreshed from the cluster after each call.
    pub authorities: Vec<String>,
    /// The trust bundle: the CA certificates (PEM) this client trusts.
    pub bundle_pem: String,
    /// The client SVID chain, leaf first (PEM).
    pub svid_pem: String,
    /// The SVID's private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The capability presented with every call.
    pub token: String,
    /// The audit keys this client trusts to sign tree heads: pinned like the CAs (written at
    /// bootstrap, login or enrollment; refreshed only from authenticated calls), so `audit
    /// verify` never trusts a key carried by the data it verifies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_keys: Vec<AuditKeyPin>,
    /// The [`key_fingerprint`]s of every key a bundle marked compromised: never trusted again,
    /// whatever a later bundle says ([`Profile::apply_bundle`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compromised_keys: Vec<String>,
}

/// A pinned audit key: an authority node's Ed25519 tree-head key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditKeyPin {
    /// The bundle key id.
    pub id: u64,
    /// The raw 32-byte Ed25519 public key, hex.
    pub public_key: String,
    /// "published" | "active" | "retired" | "compromised"
    pub status: String,
    /// For a retired key: when it stopped signing (unix ms), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_ms: Option<u64>,
}

/// The SubjectPublicKeyInfo prefix of an Ed25519 key (RFC 8410): the raw key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

impl AuditKeyPin {
    /// A pin from a bundle key of kind "audit" (SPKI DER of an Ed25519 key), or `None` for any
    /// other key.
    pub fn from_bundle_key(k: &pb::BundleKey) -> Option<Self> {
        if k.kind != "audit" {
            return None;
        }
        let raw = k.public_key.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
        if raw.len() != 32 {
            return None;
        }
        Some(Self {
            id: k.key_id,
            public_key: hex::encode(raw),
            status: k.status.clone(),
            retired_ms: (k.status == "retired" && k.not_after_ms > 0).then_some(k.not_after_ms),
        })
    }

    /// The pins of every audit key of `bundle`.
    pub fn all_from(bundle: &pb::Bundle) -> Vec<Self> {
        bundle
            .keys
            .iter()
            .filter_map(Self::from_bundle_key)
            .collect()
    }

    /// The raw public key, if the pin is well formed.
    pub fn public_key_bytes(&self) -> Option<[u8; 32]> {
        hex::decode(&self.public_key).ok()?.try_into().ok()
    }
}

impl Profile {
    /// A profile from its parts (DER certificates, PKCS#8 key).
    pub fn new(
        td: &TrustDomain,
        authorities: Vec<String>,
        bundle: &[CertificateDer<'_>],
        chain: &[CertificateDer<'_>],
        key_pkcs8: &[u8],
        token: &str,
    ) -> Self {
        Self {
            trust_domain: td.to_string(),
            authorities,
            bundle_pem: bundle
                .iter()
                .map(|c| pem_encode("CERTIFICATE", c))
                .collect(),
            svid_pem: chain.iter().map(|c| pem_encode("CERTIFICATE", c)).collect(),
            key_pem: pem_encode("PRIVATE KEY", key_pkcs8),
            token: token.to_owned(),
            audit_keys: Vec::new(),
            compromised_keys: Vec::new(),
        }
    }

    /// A profile for the credentials the authority issued to a user (`AddUser`, `Login`):
    /// `reply`'s SVID chain and capability with `key_pkcs8` (the key made by the caller), and
    /// the trust `known` — the caller's own profile, if any — learned so far: its audit pins
    /// and the keys it knows are compromised. The CAs are `fallback_cas`, replaced by the
    /// bundle of the reply when it holds one (it came over TLS authenticated by CAs the caller
    /// already trusts) and merged with it ([`Profile::apply_bundle`]).
    pub fn from_user_credentials(
        td: &TrustDomain,
        authorities: Vec<String>,
        fallback_cas: &[CertificateDer<'static>],
        known: Option<&Profile>,
        reply: &pb::UserCredentials,
        key_pkcs8: &[u8],
    ) -> Self {
        let chain: Vec<CertificateDer<'static>> = reply
            .svid_chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let mut profile = Self::new(
            td,
            authorities,
            fallback_cas,
            &chain,
            key_pkcs8,
            &reply.token,
        );
        if let Some(k) = known {
            profile.audit_keys = k.audit_keys.clone();
            profile.compromised_keys = k.compromised_keys.clone();
        }
        if let Some(b) = &reply.bundle {
            profile.apply_bundle(b);
        }
        profile
    }

    /// Merges the audit keys of a bundle received over an authenticated channel into the
    /// pins: new keys are added, known keys take the new status; a key once pinned is never
    /// dropped (a retired key still verifies old heads) and a compromised one never revives.
    pub fn merge_audit_keys(&mut self, bundle: &pb::Bundle) {
        for k in AuditKeyPin::all_from(bundle) {
            match self.audit_keys.iter_mut().find(|p| p.id == k.id) {
                Some(p) if p.public_key != k.public_key || p.status == "compromised" => {}
                Some(p) => *p = k,
                None => self.audit_keys.push(k),
            }
        }
    }

    pub fn from_toml(text: &str) -> Result<Self, ClientError> {
        toml::from_str(text).map_err(|e| ClientError::Profile(e.to_string()))
    }

    pub fn to_toml(&self) -> Result<String, ClientError> {
        toml::to_string(self).map_err(|e| ClientError::Profile(e.to_string()))
    }

    /// The bundle's CA certificates.
    pub fn bundle_certs(&self) -> Result<Vec<CertificateDer<'static>>, ClientError> {
        certs(&self.bundle_pem, "bundle")
    }

    /// Parses everything the profile holds into credentials.
    pub fn credentials(&self) -> Result<Credentials, ClientError> {
        let td = TrustDomain::new(&self.trust_domain)
            .map_err(|e| ClientError::Profile(format!("trust domain: {e}")))?;
        let bundle = TrustBundle::new(td.clone(), self.bundle_certs()?)
            .map_err(|e| ClientError::Profile(format!("bundle: {e}")))?;
        let chain = certs(&self.svid_pem, "svid")?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| ClientError::Profile(format!("key: {e}")))?;
        Ok(Credentials::new(
            td,
            bundle,
            chain,
            key,
            Some(self.token.clone()),
        ))
    }
}

fn certs(text: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let out: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(text.as_bytes()).collect();
    let out = out.map_err(|e| ClientError::Profile(format!("{what}: {e}")))?;
    if out.is_empty() {
        return Err(ClientError::Profile(format!("{what}: no certificate")));
    }
    Ok(out)
}

/// What a client presents and trusts.
pub struct Credentials {
    pub trust_domain: TrustDomain,
    pub bundle: TrustBundle,
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(
        trust_domain: TrustDomain,
        bundle: TrustBundle,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        token: Option<String>,
    ) -> Self {
        Self {
            trust_domain,
            bundle,
            chain,
            key,
            token,
        }
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, ClientError> {
        self.tls_to(authority_pattern(&self.trust_domain)?)
    }

    /// A TLS configuration presenting these credentials to a server whose SVID matches
    /// `server` (an agent's node API: exactly `spiffe://TD/ringzero/node/<name>`).
    pub fn tls_to(
        &self,
        server: ringzero_policy::SpiffeIdPattern,
    ) -> Result<Arc<rustls::ClientConfig>, ClientError> {
        let verifier = SpiffeServerVerifier::new(
            BundleSource::new(self.bundle.clone()),
            PeerMatch::OneOf(vec![server]),
        );
        let config =
            ringzero_policy::tls::client_config(self.chain.clone(), self.key.clone_key(), verifier)
                .map_err(|e| ClientError::Profile(format!("TLS: {e}")))?;
        Ok(Arc::new(config))
    }
}

fn authority_pattern(td: &TrustDomain) -> Result<ringzero_policy::SpiffeIdPattern, ClientError> {
    ringzero_policy::SpiffeIdPattern::parse(&format!("spiffe://{td}/ringzero/authority/*"))
        .map_err(|e| ClientError::Profile(e.to_string()))
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(..)")
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The gRPC client type handed to [`AuthorityClient::call`].
pub type AuthorityGrpc = Grpc<InterceptedService<Channel, Bearer>>;

/// A client of the authority cluster with leader-hint retry.
#[derive(Debug)]
pub struct AuthorityClient {
    creds: Credentials,
    addrs: Vec<String>,
    /// The address that last answered (the leader, usually).
    current: usize,
    /// One HTTP/2 connection per address, reused across calls.
    channels: std::collections::HashMap<String, Channel>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl AuthorityClient {
    pub fn new(creds: Credentials, addrs: Vec<String>) -> Self {
        Self {
            creds,
            addrs,
            current: 0,
            channels: std::collections::HashMap::new(),
            tls: None,
        }
    }

    /// The capability presented with every call, if any.
    pub fn token(&self) -> Option<&str> {
        self.creds.token.as_deref()
    }

    /// Presents `creds` from the next call on (renewed credentials): the TLS configuration and
    /// every open connection are dropped, so the next call connects with the new certificate.
    pub fn set_credentials(&mut self, creds: Credentials) {
        self.creds = creds;
        self.tls = None;
        self.channels.clear();
    }

    /// The address that answered the last call.
    pub fn current_address(&self) -> Option<&str> {
        self.addrs.get(self.current).map(String::as_str)
    }

    fn grpc(&mut self, addr: &str) -> Result<AuthorityGrpc, ClientError> {
        let tls = match &self.tls {
            Some(t) => t.clone(),
            None => {
                let t = self.creds.tls()?;
                self.tls = Some(t.clone());
                t
            }
        };
        let channel = match self.channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = crate::transport::channel(addr, tls, CONNECT_TIMEOUT)
                    .map_err(|e| ClientError::Transport(e.to_string()))?;
                self.channels.insert(addr.to_owned(), c.clone());
                c
            }
        };
        let bearer = match &self.creds.token {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                ClientError::Profile("the token has characters not allowed in metadata".into())
            })?),
            None => None,
        };
        Ok(Grpc::with_interceptor(channel, Bearer(bearer))
            .max_decoding_message_size(4 * 1024 * 1024))
    }

    /// Runs `f` against the leader: starts at the last good address, follows leader hints, and
    /// moves on from addresses that do not answer.
    pub async fn call<R, F, Fut>(&mut self, mut f: F) -> Result<R, ClientError>
    where
        F: FnMut(AuthorityGrpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        if self.addrs.is_empty() {
            return Err(ClientError::NoAddress);
        }
        // Keep trying for a while: an election takes up to a couple of seconds. Every address
        // is tried in turn; a leader hint is followed at once; once every address has been
        // tried, a short pause separates attempts (never right after a fresh hint).
        let deadline = std::time::Instant::now() + RETRY_FOR;
        let mut last = ClientError::NoAddress;
        let mut attempt = 0usize;
        while attempt == 0 || std::time::Instant::now() < deadline {
            let addr = self.addrs[self.current].clone();
            let grpc = self.grpc(&addr)?;
            let mut hinted = false;
            match tokio::time::timeout(CALL_TIMEOUT, f(grpc)).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => {
                    let hint = leader_hint(&status);
                    let retry = matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown
                    );
                    last = status.into();
                    if !retry {
                        return Err(last);
                    }
                    match hint {
                        Some(h) if h != addr => {
                            hinted = true;
                            if let Some(i) = self.addrs.iter().position(|a| *a == h) {
                                self.current = i;
                            } else {
                                self.addrs.push(h);
                                self.current = self.addrs.len() - 1;
                            }
                        }
                        _ => self.current = (self.current + 1) % self.addrs.len(),
                    }
                }
                Err(_) => {
                    last = ClientError::Transport(format!("{addr}: timed out"));
                    self.current = (self.current + 1) % self.addrs.len();
                }
            }
            attempt += 1;
            if !hinted && attempt >= self.addrs.len() {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        Err(last)
    }
}
