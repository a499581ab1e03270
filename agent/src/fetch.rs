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

use crate::workload::SECURITY_HEADER;

/// The most certificates accepted in one chain or bundle.
const MAX_CERTS: usize = 64;
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
    let bad = || FetchError::BadEndpoint(endpoint.chars().take(200).collect());
    let path = match endpoint.strip_prefix("unix:") {
        Some(rest) => match rest.strip_prefix("//") {
            // `unix://host/path` names a host: not a local socket.
            Some(after) if !after.starts_with('/') => return Err(bad()),
            Some(after) => after,
            None => rest,
        },
        None if endpoint.contains("://") => return Err(bad()),
        None => endpoint,
    };
    if !path.starts_with('/') || path.contains(['?', '#']) || path.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok(PathBuf::from(path))
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

/// Splits concatenated DER certificates (each a SEQUENCE with a definite length).
pub(crate) fn split_der(mut bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, FetchError> {
    if bytes.is_empty() {
        return Err(FetchError::Malformed("no certificate"));
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if out.len() >= MAX_CERTS {
            return Err(FetchError::Malformed("too many certificates"));
        }
        let len = der_len(bytes).ok_or(FetchError::Malformed("bad DER certificate"))?;
        let (cert, rest) = bytes.split_at(len);
        out.push(CertificateDer::from(cert.to_vec()));
        bytes = rest;
    }
    Ok(out)
}

/// The total length (header included) of the DER SEQUENCE at the start of `b`, if it fits.
fn der_len(b: &[u8]) -> Option<usize> {
    if *b.first()? != 0x30 {
        return None;
    }
    let first = *b.get(1)?;
    let (header, body) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = b
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (2 + n, len)
    };
    let total = header.checked_add(body)?;
    (total <= b.len()).then_some(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn endpoints() {
        for (input, want) in [
            ("/run/a.sock", "/run/a.sock"),
            ("unix:///run/a.sock", "/run/a.sock"),
            ("unix:/run/a.sock", "/run/a.sock"),
        ] {
            assert_eq!(endpoint_path(input).unwrap(), PathBuf::from(want));
        }
        for bad in [
            "",
            "run/a.sock",
            "unix://host/run/a.sock",
            "unix:run/a.sock",
            "tcp://127.0.0.1:8081",
            "unix:///a?b",
            "/a\n",
        ] {
            assert!(endpoint_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn der_splitting_is_bounded() {
        let short = [0x30, 0x02, 1, 2];
        let long = {
            let mut v = vec![0x30, 0x81, 0x80];
            v.extend([7u8; 0x80]);
            v
        };
        let both: Vec<u8> = short.iter().chain(long.iter()).copied().collect();
        let certs = split_der(&both).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[1].len(), long.len());
        for bad in [
            &[][..],
            &[0x31, 0],
            &[0x30],
            &[0x30, 0x05, 1],
            &[0x30, 0x80],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(split_der(bad).is_err(), "{bad:?}");
        }
        let many: Vec<u8> = std::iter::repeat_n([0x30u8, 0], MAX_CERTS + 1)
            .flatten()
            .collect();
        assert!(split_der(&many).is_err());
    }
}
