//! A Workload API client for `ringzero agent fetch`, like `spire-agent api fetch x509`.
//!
//! [`fetch_x509`] connects to the agent's socket, sends one `FetchX509SVID` request with the
//! security header, takes the first message of the stream and checks every SVID in it against
//! the bundle that came with it (SPIFFE profile, chain, validity) before returning it;
//! [`X509Svid::write_to`] stores one as `svid.pem`, `svid.key` (mode `0600`) and `bundle.pem`.
//!
//! ```no_run
//! # async fn example() -> Result<(), ringzero_agent::FetchError> {
//! use std::time::Duration;
//! use ringzero_agent::{endpoint_path, fetch_x509};
//!
//! // What `SPIFFE_ENDPOINT_SOCKET` holds, or a plain path.
//! let socket = endpoint_path("unix:///run/ringzero/agent.sock")?;
//! let svids = fetch_x509(&socket, Duration::from_secs(10)).await?;
//! let default = &svids[0];
//! println!("{} until {:?}", default.spiffe_id, default.not_after);
//! default.write_to(std::path::Path::new("/run/my-service"))?;
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ringzero_policy::SpiffeId;
use ringzero_policy::svid::{SvidError, TrustBundle, Usage, pem_encode, validate_svid};
use ringzero_proto::transport::unix_channel;
use ringzero_proto::workload as pb;
use ringzero_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use ringzero_proto::workload_api::{self, SECURITY_HEADER};

mod jwt;

pub use self::jwt::{JwtSvid, ValidatedJwt, fetch_jwt, validate_jwt};

/// The largest response message accepted.
const MAX_RESPONSE_LEN: usize = 32 * 1024 * 1024;

/// Why fetching failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The endpoint is neither an absolute path nor a `unix:` URI with an absolute path.
    #[error("bad Workload API endpoint {0:?}: expected /abs/path or unix:///abs/path")]
    BadEndpoint(String),
    /// The socket could not be connected to.
    #[error("cannot connect to the Workload API: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The agent refused or failed the call (`PermissionDenied: no identity issued` when no
    /// registration entry matches this process).
    #[error("Workload API error: {code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    /// No answer within the timeout.
    #[error("no answer from the Workload API within {0:?}")]
    Timeout(Duration),
    /// The stream ended before its first message.
    #[error("the Workload API closed the stream without an answer")]
    NoAnswer,
    /// The answer is not well-formed.
    #[error("malformed Workload API answer: {0}")]
    Malformed(&'static str),
    /// An SVID does not validate against its bundle.
    #[error("SVID {spiffe_id} does not validate: {source}")]
    Invalid {
        spiffe_id: String,
        #[source]
        source: SvidError,
    },
    /// Writing the files failed.
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<tonic::Status> for FetchError {
    fn from(s: tonic::Status) -> Self {
        FetchError::Status {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// One X.509-SVID as fetched and validated.
pub struct X509Svid {
    pub spiffe_id: SpiffeId,
    pub not_after: SystemTime,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Unencrypted PKCS#8 DER, wiped on drop.
    pub key: Zeroizing<Vec<u8>>,
    /// The CA certificates of the SVID's trust domain.
    pub bundle: Vec<CertificateDer<'static>>,
    /// The operator's hint, often empty.
    pub hint: String,
}

impl std::fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .field("bundle_len", &self.bundle.len())
            .field("hint", &self.hint)
            .finish()
    }
}

impl X509Svid {
    /// Writes `svid.pem` (the chain), `svid.key` (the PKCS#8 key, mode `0600`) and
    /// `bundle.pem` into `dir`, each through a temporary file renamed into place, so a reader
    /// never sees a half-written file.
    pub fn write_to(&self, dir: &Path) -> Result<(), FetchError> {
        let chain: String = self
            .chain
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect();
        let bundle: String = self
            .bundle
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect();
        let key = Zeroizing::new(pem_encode("PRIVATE KEY", &self.key));
        write_atomic(&dir.join("svid.key"), key.as_bytes(), 0o600)?;
        write_atomic(&dir.join("svid.pem"), chain.as_bytes(), 0o644)?;
        write_atomic(&dir.join("bundle.pem"), bundle.as_bytes(), 0o644)?;
        Ok(())
    }
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), FetchError> {
    ringzero_proto::fs::write_private(path, data, mode).map_err(|source| FetchError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// The socket path of a Workload API endpoint: an absolute path, or a `unix:` URI of one
/// (`unix:///run/agent.sock` or `unix:/run/agent.sock`, as `SPIFFE_ENDPOINT_SOCKET` holds).
pub fn endpoint_path(endpoint: &str) -> Result<PathBuf, FetchError> {
    workload_api::endpoint_path(endpoint)
        .map_err(|_| FetchError::BadEndpoint(endpoint.chars().take(200).collect()))
}

/// Fetches the caller's X.509-SVIDs from the Workload API at `socket`: the first message of
/// the `FetchX509SVID` stream, every SVID validated against its bundle. The first SVID is the
/// default one. `timeout` bounds connecting and waiting for the answer.
pub async fn fetch_x509(socket: &Path, timeout: Duration) -> Result<Vec<X509Svid>, FetchError> {
    tokio::time::timeout(timeout, fetch_inner(socket))
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

async fn fetch_inner(socket: &Path) -> Result<Vec<X509Svid>, FetchError> {
    let channel = unix_channel(socket).await.map_err(FetchError::Connect)?;
    let mut client =
        SpiffeWorkloadApiClient::new(channel).max_decoding_message_size(MAX_RESPONSE_LEN);
    let mut req = tonic::Request::new(pb::X509svidRequest {});
    req.metadata_mut().insert(
        SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let mut stream = client.fetch_x509svid(req).await?.into_inner();
    let first = stream.message().await?.ok_or(FetchError::NoAnswer)?;
    parse_response(first, SystemTime::now())
}

/// Validates every SVID of a response at `now`.
fn parse_response(
    resp: pb::X509svidResponse,
    now: SystemTime,
) -> Result<Vec<X509Svid>, FetchError> {
    if resp.svids.is_empty() {
        return Err(FetchError::Malformed("no SVID in the answer"));
    }
    resp.svids
        .into_iter()
        .map(|svid| parse_svid(svid, now))
        .collect()
}

fn parse_svid(svid: pb::X509svid, now: SystemTime) -> Result<X509Svid, FetchError> {
    let key = Zeroizing::new(svid.x509_svid_key);
    let spiffe_id = SpiffeId::parse(&svid.spiffe_id)
        .map_err(|_| FetchError::Malformed("spiffe_id is not a SPIFFE ID"))?;
    let chain = split_der(&svid.x509_svid)?;
    let bundle = split_der(&svid.bundle)?;
    if key.is_empty() {
        return Err(FetchError::Malformed("empty private key"));
    }
    let invalid = |source| FetchError::Invalid {
        spiffe_id: spiffe_id.to_string(),
        source,
    };
    let trust = TrustBundle::new(spiffe_id.trust_domain(), bundle.clone()).map_err(invalid)?;
    let validated = validate_svid(&chain, &trust, now, Usage::Client).map_err(invalid)?;
    if validated.id != spiffe_id {
        return Err(FetchError::Malformed(
            "spiffe_id differs from the certificate's",
        ));
    }
    Ok(X509Svid {
        spiffe_id,
        not_after: validated.not_after,
        chain,
        key,
        bundle,
        hint: svid.hint,
    })
}

/// The certificates of a Workload API message field.
fn split_der(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, FetchError> {
    workload_api::split_der(bytes).map_err(|e| FetchError::Malformed(e.as_str()))
}
