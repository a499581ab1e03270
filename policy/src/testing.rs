//! Certificates for tests and benches (feature `testing`): a self-signed CA of a trust domain,
//! SVIDs issued by it through the product's own [`SigningCa::issue`], their DER and PEM, and
//! rustls configurations built with the SPIFFE verifiers of [`crate::tls`].
//!
//! Every fixture panics when it cannot build what it was asked for: its inputs are a test's own
//! constants, never untrusted data, and a failed fixture must fail the test at once.
//!
//! ```
//! use ringzero_policy::testing::{ca, svid, trust_bundle};
//! use ringzero_policy::svid::{Usage, validate_svid};
//! use ringzero_policy::TrustDomain;
//!
//! let td = TrustDomain::new("example.org")?;
//! let ca = ca(&td, "test ca");
//! let web = svid(&ca, "spiffe://example.org/ns/default/sa/web");
//! let bundle = trust_bundle(&td, &[&ca]);
//! let v = validate_svid(&web.chain(), &bundle, std::time::SystemTime::now(), Usage::Client)?;
//! assert_eq!(v.id.as_str(), "spiffe://example.org/ns/default/sa/web");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![allow(clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::spiffe::{SpiffeId, SpiffeIdPattern, TrustDomain};
use crate::svid::{
    IssuedSvid, LeafKey, LeafRequest, SigningCa, TrustBundle, csr_for, generate_key, pem_encode,
};
use crate::tls::{BundleSource, PeerMatch, SpiffeClientVerifier, SpiffeServerVerifier};

/// How long a [`CaBuilder`] CA is valid by default.
pub const CA_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long an [`SvidBuilder`] SVID is valid by default.
pub const LEAF_TTL: Duration = Duration::from_secs(3600);
/// How long before now a [`CaBuilder`] CA is made by default, so that SVIDs can be issued a
/// little in the past.
pub const CA_BACKDATE: Duration = Duration::from_secs(3600);

/// A trust domain from a test constant.
pub fn trust_domain(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap_or_else(|e| panic!("trust domain {name:?}: {e}"))
}

/// A SPIFFE ID from a test constant.
pub fn spiffe_id(id: &str) -> SpiffeId {
    SpiffeId::parse(id).unwrap_or_else(|e| panic!("SPIFFE ID {id:?}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Certificate authorities
// ---------------------------------------------------------------------------------------------

/// A self-signed CA of `td` named `common_name`, made [`CA_BACKDATE`] ago and valid for
/// [`CA_TTL`]: what most tests need.
pub fn ca(td: &TrustDomain, common_name: &str) -> SigningCa {
    CaBuilder::new(td, common_name).build()
}

/// A self-signed CA made by [`SigningCa::self_signed`], with the defaults of [`ca`] unless
/// changed.
#[derive(Debug, Clone)]
pub struct CaBuilder {
    trust_domain: TrustDomain,
    common_name: String,
    made_at: SystemTime,
    ttl: Duration,
    path_len: Option<u8>,
}

impl CaBuilder {
    pub fn new(td: &TrustDomain, common_name: &str) -> Self {
        Self {
            trust_domain: td.clone(),
            common_name: common_name.to_owned(),
            made_at: SystemTime::now() - CA_BACKDATE,
            ttl: CA_TTL,
            path_len: None,
        }
    }

    /// The clock the CA is made at (its validity starts there, less the product's own
    /// not-before backdate).
    pub fn made_at(mut self, now: SystemTime) -> Self {
        self.made_at = now;
        self
    }

    /// How long the CA is valid from [`made_at`](Self::made_at).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// A path length constraint (`0`: the CA signs leaves only).
    pub fn path_len(mut self, path_len: u8) -> Self {
        self.path_len = Some(path_len);
        self
    }

    pub fn build(self) -> SigningCa {
        SigningCa::self_signed(
            &self.trust_domain,
            &self.common_name,
            self.ttl,
            self.made_at,
            self.path_len,
        )
        .unwrap_or_else(|e| panic!("a test CA {:?}: {e}", self.common_name))
    }
}

// ---------------------------------------------------------------------------------------------
// SVIDs
// ---------------------------------------------------------------------------------------------

/// An SVID for `id` from `ca`, issued now for [`LEAF_TTL`], with a fresh key.
pub fn svid(ca: &SigningCa, id: &str) -> TestSvid {
    SvidBuilder::new(ca, &spiffe_id(id)).issue()
}

/// An SVID issued by [`SigningCa::issue`] from the CSR of a fresh key, as an agent or a node
/// asks for one.
#[derive(Debug, Clone)]
pub struct SvidBuilder<'a> {
    ca: &'a SigningCa,
    id: SpiffeId,
    ttl: Duration,
    now: SystemTime,
    dns_names: Vec<String>,
    from_csr: bool,
}

impl<'a> SvidBuilder<'a> {
    /// Issued now, for [`LEAF_TTL`], without DNS names, from a CSR.
    pub fn new(ca: &'a SigningCa, id: &SpiffeId) -> Self {
        Self {
            ca,
            id: id.clone(),
            ttl: LEAF_TTL,
            now: SystemTime::now(),
            dns_names: Vec::new(),
            from_csr: true,
        }
    }

    /// The requested lifetime (the CA caps it at its own expiry).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The clock the SVID is issued at.
    pub fn at(mut self, now: SystemTime) -> Self {
        self.now = now;
        self
    }

    /// Extra DNS SANs.
    pub fn dns_names(mut self, names: &[String]) -> Self {
        self.dns_names = names.to_vec();
        self
    }

    /// Issued for the bare public key ([`LeafKey::PublicKey`]), as the authority does for a
    /// key it holds itself, instead of from a CSR.
    pub fn from_public_key(mut self) -> Self {
        self.from_csr = false;
        self
    }

    pub fn issue(self) -> TestSvid {
        let key = generate_key().expect("a fresh key pair");
        let (csr, spki);
        let leaf_key = if self.from_csr {
            csr = csr_for(&key, &self.id).expect("a CSR of a fresh key");
            LeafKey::Csr(&csr)
        } else {
            spki = rcgen::PublicKeyData::subject_public_key_info(&key);
            LeafKey::PublicKey(&spki)
        };
        let issued = self
            .ca
            .issue(&LeafRequest {
                id: &self.id,
                key: leaf_key,
                ttl: self.ttl,
                dns_names: &self.dns_names,
                now: self.now,
            })
            .unwrap_or_else(|e| panic!("issuing a test SVID for {}: {e}", self.id));
        TestSvid { key, issued }
    }
}

/// An issued SVID with its private key, as a TLS endpoint or a workload holds it.
#[derive(Debug)]
pub struct TestSvid {
    pub key: KeyPair,
    pub issued: IssuedSvid,
}

impl TestSvid {
    /// The certificate chain, leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.issued.chain.clone()
    }

    /// The private key as PKCS#8 DER.
    pub fn key_pkcs8(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// The private key as rustls takes it.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8()))
    }

    /// The chain and the key as PEM: `(CERTIFICATE blocks, PRIVATE KEY block)`.
    pub fn pem(&self) -> (String, String) {
        chain_and_key_pem(&self.issued.chain, &self.private_key())
    }

    /// A TLS server presenting this SVID to clients accepted by `verifier`.
    pub fn server_config(&self, verifier: Arc<SpiffeClientVerifier>) -> Arc<rustls::ServerConfig> {
        Arc::new(
            crate::tls::server_config(self.chain(), self.private_key(), verifier)
                .expect("a server configuration"),
        )
    }

    /// A TLS client presenting this SVID to servers accepted by `verifier`.
    pub fn client_config(&self, verifier: Arc<SpiffeServerVerifier>) -> Arc<rustls::ClientConfig> {
        Arc::new(
            crate::tls::client_config(self.chain(), self.private_key(), verifier)
                .expect("a client configuration"),
        )
    }
}

/// `chain` and `key` as PEM: `(CERTIFICATE blocks, PRIVATE KEY block)`.
pub fn chain_and_key_pem(
    chain: &[CertificateDer<'_>],
    key: &PrivateKeyDer<'_>,
) -> (String, String) {
    let chain = chain.iter().map(|c| pem_encode("CERTIFICATE", c)).collect();
    (chain, pem_encode("PRIVATE KEY", key.secret_der()))
}

// ---------------------------------------------------------------------------------------------
// Bundles and TLS
// ---------------------------------------------------------------------------------------------

/// A bundle of `td` trusting `cas`.
pub fn trust_bundle(td: &TrustDomain, cas: &[&SigningCa]) -> TrustBundle {
    TrustBundle::new(
        td.clone(),
        cas.iter().map(|c| c.cert_der().clone()).collect(),
    )
    .expect("a test bundle")
}

/// A live bundle of `ca`'s trust domain trusting `ca` alone.
pub fn bundle_source(ca: &SigningCa) -> BundleSource {
    BundleSource::new(trust_bundle(ca.trust_domain(), &[ca]))
}

/// Peers matching one of `patterns`.
pub fn one_of(patterns: &[&str]) -> PeerMatch {
    PeerMatch::OneOf(
        patterns
            .iter()
            .map(|p| SpiffeIdPattern::parse(p).unwrap_or_else(|e| panic!("pattern {p:?}: {e}")))
            .collect(),
    )
}

/// A TLS 1.3 client (ring provider) without a certificate, accepting servers accepted by
/// `verifier`.
pub fn anonymous_client_config(verifier: Arc<SpiffeServerVerifier>) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with the ring provider")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth(),
    )
}
