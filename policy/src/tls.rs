//! rustls certificate verifiers for SPIFFE.
//!
//! rustls' default server verifier checks a DNS name and rejects URI-only certificates; its
//! WebPKI client verifier checks no name at all. Both are wrong for SPIFFE, where a peer is its
//! SPIFFE ID: these verifiers accept only X.509-SVIDs that chain to the current bundle of the
//! expected trust domain, optionally restricted to SPIFFE ID patterns.
//!
//! The bundle is shared through a [`BundleSource`], so a bundle rotation takes effect for the
//! next handshake without rebuilding any TLS configuration.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::spiffe::{SpiffeId, SpiffeIdPattern};
use crate::svid::{TrustBundle, Usage, ValidatedSvid, validate_svid};

/// The current trust bundle, replaceable at run time.
#[derive(Debug, Clone)]
pub struct BundleSource(Arc<RwLock<Arc<TrustBundle>>>);

impl BundleSource {
    pub fn new(bundle: TrustBundle) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(bundle))))
    }

    /// The bundle in force now.
    pub fn current(&self) -> Arc<TrustBundle> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the bundle for every later handshake.
    pub fn replace(&self, bundle: TrustBundle) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(bundle);
    }
}

/// Which peers a verifier accepts.
#[derive(Debug, Clone, Default)]
pub enum PeerMatch {
    /// Any SVID of the bundle's trust domain.
    #[default]
    AnyInTrustDomain,
    /// Only IDs matching one of these patterns.
    OneOf(Vec<SpiffeIdPattern>),
    /// A check of the caller's own, run on the SVID once its chain validated against the
    /// bundle (the mesh's allow rules and revoked serials, replaceable at run time).
    Custom(Arc<dyn PeerCheck>),
}

/// A check of a validated peer SVID, for [`PeerMatch::Custom`]. Refuse with a
/// `rustls::Error::InvalidCertificate`, whose `CertificateError::Other` may carry the caller's
/// own error type for its logs.
pub trait PeerCheck: Send + Sync + std::fmt::Debug {
    fn check(&self, svid: &ValidatedSvid) -> Result<(), rustls::Error>;
}

impl PeerMatch {
    fn check(&self, svid: &ValidatedSvid) -> Result<(), rustls::Error> {
        match self {
            PeerMatch::AnyInTrustDomain => Ok(()),
            PeerMatch::OneOf(patterns) if patterns.iter().any(|p| p.matches(&svid.id)) => Ok(()),
            PeerMatch::OneOf(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            PeerMatch::Custom(check) => check.check(svid),
        }
    }
}

#[derive(Debug)]
struct Core {
    bundle: BundleSource,
    peers: PeerMatch,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Core {
    fn new(bundle: BundleSource, peers: PeerMatch) -> Self {
        Self {
            bundle,
            peers,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<SpiffeId, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let svid = validate_svid(&chain, &self.bundle.current(), now, usage).map_err(to_rustls)?;
        self.peers.check(&svid)?;
        Ok(svid.id)
    }

    fn verify_tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

fn to_rustls(e: crate::svid::SvidError) -> rustls::Error {
    use crate::svid::SvidError as E;
    rustls::Error::InvalidCertificate(match e {
        E::Expired => rustls::CertificateError::Expired,
        E::NotYetValid => rustls::CertificateError::NotValidYet,
        E::UntrustedIssuer => rustls::CertificateError::UnknownIssuer,
        other => rustls::CertificateError::Other(rustls::OtherError(Arc::new(other))),
    })
}

/// Verifies a server's SVID (used by clients). The TLS server name is ignored: the peer is
/// identified by its SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeServerVerifier(Core);

impl SpiffeServerVerifier {
    pub fn new(bundle: BundleSource, peers: PeerMatch) -> Arc<Self> {
        Arc::new(Self(Core::new(bundle, peers)))
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify(end_entity, intermediates, now, Usage::Server)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}

/// Verifies a client's SVID (used by servers).
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    core: Core,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// A verifier that requires a client SVID.
    pub fn new(bundle: BundleSource, peers: PeerMatch) -> Arc<Self> {
        Arc::new(Self {
            core: Core::new(bundle, peers),
            mandatory: true,
        })
    }

    /// A verifier that lets clients without a certificate through (for first-contact calls,
    /// which the server must then refuse to do anything privileged for), while a client that
    /// does present one must present a valid SVID.
    pub fn optional(bundle: BundleSource, peers: PeerMatch) -> Arc<Self> {
        Arc::new(Self {
            core: Core::new(bundle, peers),
            mandatory: false,
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.core
            .verify(end_entity, intermediates, now, Usage::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.core.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.core.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.core.algorithms.supported_schemes()
    }
}

/// A TLS 1.3 server configuration (ring provider) that presents `chain`/`key` and requires a
/// client SVID accepted by `verifier`.
///
/// Session resumption is off: a resumed session carries the client certificate of the session
/// it resumes without asking the verifier again, so an expired certificate, or one whose CA
/// has left the bundle, would keep opening new connections.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: Arc<SpiffeClientVerifier>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_client_cert_verifier(verifier)
    .with_single_cert(chain, key)?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The certificate a server presents, replaceable at run time: a server whose SVID rotates
/// (an agent's node API) presents the new one from the next handshake on, without rebuilding
/// its configuration or closing its listener.
#[derive(Debug)]
pub struct RotatingCert(RwLock<Arc<rustls::sign::CertifiedKey>>);

impl RotatingCert {
    /// Starts with `chain`/`key` (P-256 or any key the ring provider signs with).
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, rustls::Error> {
        Ok(Arc::new(Self(RwLock::new(Arc::new(certified(
            chain, key,
        )?)))))
    }

    /// Presents `chain`/`key` from the next handshake on.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), rustls::Error> {
        let next = Arc::new(certified(chain, key)?);
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::sign::CertifiedKey, rustls::Error> {
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key, &provider)
}

impl rustls::server::ResolvesServerCert for RotatingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

impl rustls::client::ResolvesClientCert for RotatingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// [`server_config`], presenting whatever `cert` holds at each handshake.
pub fn rotating_server_config(
    cert: Arc<RotatingCert>,
    verifier: Arc<SpiffeClientVerifier>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_client_cert_verifier(verifier)
    .with_cert_resolver(cert);
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A TLS 1.3 client configuration (ring provider) that presents `chain`/`key` and accepts only
/// a server SVID accepted by `verifier`.
pub fn client_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: Arc<SpiffeServerVerifier>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
}

/// [`client_config`], presenting whatever `cert` holds at each handshake: a client whose SVID
/// rotates (an authority node talking to its peers) uses the new one on its next connection.
pub fn rotating_client_config(
    cert: Arc<RotatingCert>,
    verifier: Arc<SpiffeServerVerifier>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_client_cert_resolver(cert))
}

/// What the verified client SVID of an established connection says: its SPIFFE ID, serial,
/// expiry and issuing member. Call it only on a connection whose verifier validated the chain.
pub fn peer_svid(peer_certificates: Option<&[CertificateDer<'_>]>) -> Option<ValidatedSvid> {
    let certs = peer_certificates?;
    crate::svid::leaf_facts(certs.first()?, certs.len()).ok()
}

/// The SPIFFE ID of the peer of an established connection: the URI SAN of the first
/// certificate, which the verifier above already validated.
pub fn peer_id(peer_certificates: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    let leaf = peer_certificates?.first()?;
    crate::svid::spiffe_id_of(leaf).ok()
}
