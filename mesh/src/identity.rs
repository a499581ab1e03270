//! The sidecar's identity: a SPIFFE Workload API client that keeps the `FetchX509SVID` stream
//! open and publishes the current SVID and bundle through a [`tokio::sync::watch`].
//!
//! Each message of the stream is validated (the default SVID against the bundle it came with,
//! the key against the certificate) before it is published; a bad message is logged and
//! skipped, keeping the previous identity. When the stream breaks the client reconnects with
//! exponential backoff. TLS configurations read the current value at every handshake through
//! [`CertResolver`], so a rotation applies to the next handshake and never touches a live
//! connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ringzero_policy::SpiffeId;
use ringzero_policy::svid::{TrustBundle, Usage, validate_svid};
use ringzero_proto::transport::unix_channel;
use ringzero_proto::workload as pb;
use ringzero_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;
use zeroize::Zeroizing;

pub(crate) use ringzero_proto::workload_api::SECURITY_HEADER;
/// The largest Workload API message accepted.
const MAX_RESPONSE_LEN: usize = 4 * 1024 * 1024;
/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Bound on connecting to the socket and on waiting for the call to be answered.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a Workload API message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum IdentityError {
    #[error("malformed Workload API answer: {0}")]
    Malformed(&'static str),
    #[error("SVID {id} does not validate: {why}")]
    Invalid { id: String, why: String },
    #[error("the SVID's private key is unusable: {0}")]
    Key(String),
}

/// One SVID as received and validated, ready for TLS.
#[derive(Clone)]
pub struct Identity {
    pub id: SpiffeId,
    pub not_after: SystemTime,
    pub serial: Vec<u8>,
    /// The CA certificates of the SVID's trust domain.
    pub bundle: TrustBundle,
    /// Chain and signing key, as rustls presents them.
    pub certified: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.certified.cert.len())
            .field("bundle_roots", &self.bundle.roots().len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Whether the SVID is valid at `now`.
    pub fn is_current(&self, now: SystemTime) -> bool {
        now < self.not_after
    }

    /// Builds an identity from a chain (leaf first), its PKCS#8 key and its trust bundle,
    /// validating the chain against the bundle at `now`.
    pub(crate) fn new(
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: &[u8],
        bundle: TrustBundle,
        now: SystemTime,
    ) -> Result<Self, IdentityError> {
        let svid = validate_svid(&chain, &bundle, now, Usage::Client).map_err(|e| {
            IdentityError::Invalid {
                id: chain
                    .first()
                    .and_then(|c| ringzero_policy::svid::spiffe_id_of(c).ok())
                    .map_or_else(|| "?".into(), |id| id.to_string()),
                why: e.to_string(),
            }
        })?;
        // Borrowed, not copied: the only copy of the key bytes is the caller's (zeroized).
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8));
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signer);
        certified
            .keys_match()
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        Ok(Self {
            id: svid.id,
            not_after: svid.not_after,
            serial: svid.serial,
            bundle,
            certified: Arc::new(certified),
        })
    }
}

/// The current identity as published: `None` until the first SVID arrives.
pub(crate) type Current = watch::Receiver<Option<Arc<Identity>>>;

/// Parses one `X509SVIDResponse`: its first (default) SVID, validated at `now`.
pub(crate) fn parse_response(
    resp: pb::X509svidResponse,
    now: SystemTime,
) -> Result<Identity, IdentityError> {
    let mut svids = resp.svids.into_iter();
    let svid = svids
        .next()
        .ok_or(IdentityError::Malformed("no SVID in the answer"))?;
    // The sidecar uses the default SVID only; the others' keys are wiped, not just dropped.
    for mut other in svids {
        zeroize::Zeroize::zeroize(&mut other.x509_svid_key);
    }
    let key = Zeroizing::new(svid.x509_svid_key);
    let id = SpiffeId::parse(&svid.spiffe_id)
        .map_err(|_| IdentityError::Malformed("spiffe_id is not a SPIFFE ID"))?;
    let chain = split_der(&svid.x509_svid)?;
    let roots = split_der(&svid.bundle)?;
    let bundle =
        TrustBundle::new(id.trust_domain(), roots).map_err(|e| IdentityError::Invalid {
            id: id.to_string(),
            why: format!("bundle: {e}"),
        })?;
    let identity = Identity::new(chain, &key, bundle, now)?;
    if identity.id != id {
        return Err(IdentityError::Malformed(
            "spiffe_id differs from the certificate's",
        ));
    }
    Ok(identity)
}

/// The certificates of a Workload API message field (framing checked, count bounded).
fn split_der(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    ringzero_proto::workload_api::split_der(bytes).map_err(|e| IdentityError::Malformed(e.as_str()))
}

/// Starts the Workload API client on `socket`. The returned receiver holds `None` until the
/// first valid SVID, then always the latest one. The task ends when every receiver is gone.
pub(crate) fn spawn(socket: PathBuf) -> Current {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(follow(socket, tx));
    rx
}

async fn follow(socket: PathBuf, tx: watch::Sender<Option<Arc<Identity>>>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match stream_once(&socket, &tx).await {
            Ok(true) => backoff = BACKOFF_MIN,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(socket = %socket.display(), error = %e, "Workload API stream failed")
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = tx.closed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection: streams until it ends. `Ok(true)` when at least one SVID was published.
async fn stream_once(
    socket: &Path,
    tx: &watch::Sender<Option<Arc<Identity>>>,
) -> Result<bool, String> {
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let channel = unix_channel(socket).await.map_err(|e| e.to_string())?;
        let mut client =
            SpiffeWorkloadApiClient::new(channel).max_decoding_message_size(MAX_RESPONSE_LEN);
        let mut req = tonic::Request::new(pb::X509svidRequest {});
        req.metadata_mut().insert(
            SECURITY_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        client
            .fetch_x509svid(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })
    .await
    .map_err(|_| "timed out connecting".to_owned())??;
    let mut published = false;
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            () = tx.closed() => return Ok(published),
        };
        match message {
            Ok(Some(resp)) => match parse_response(resp, SystemTime::now()) {
                Ok(identity) => {
                    tracing::info!(
                        id = %identity.id,
                        serial = %hex_serial(&identity.serial),
                        expires_in_s = identity.not_after.duration_since(SystemTime::now()).unwrap_or_default().as_secs(),
                        "SVID received"
                    );
                    tx.send_replace(Some(Arc::new(identity)));
                    published = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Workload API answer refused; keeping the current SVID")
                }
            },
            Ok(None) => return Ok(published),
            Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

/// A serial number as lowercase hex, for logs.
pub(crate) fn hex_serial(serial: &[u8]) -> String {
    serial.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits up to `timeout` for the first SVID.
pub(crate) async fn wait_first(current: &mut Current, timeout: Duration) -> Option<Arc<Identity>> {
    let waited = tokio::time::timeout(timeout, current.wait_for(Option::is_some)).await;
    match waited {
        Ok(Ok(guard)) => guard.clone(),
        _ => None,
    }
}

/// Presents the current SVID at every handshake, as server and as client.
#[derive(Debug)]
pub(crate) struct CertResolver(Current);

impl CertResolver {
    pub(crate) fn new(current: Current) -> Arc<Self> {
        Arc::new(Self(current))
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().as_ref().map(|i| Arc::clone(&i.certified))
    }
}

impl rustls::server::ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for CertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
