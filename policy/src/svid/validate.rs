//! Validating a presented chain against a trust bundle.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::certificate::X509Certificate;

use super::der::{parse_cert, parse_err, uri_sans};
use super::{MAX_CHAIN_LEN, MAX_DER_LEN, SvidError};
use crate::spiffe::{Principal, SpiffeId, TrustDomain};

/// The common name prefix of an authority member's signing CA: member `n`'s CA is
/// `CN=ringzero authority n`. The state machine publishes a CA only under the member its name
/// says, so a verifier can tell from the bundle alone which member owns each root.
pub const AUTHORITY_CA_CN_PREFIX: &str = "ringzero authority ";

/// The common name of authority member `id`'s signing CA.
pub fn authority_ca_common_name(id: u64) -> String {
    format!("{AUTHORITY_CA_CN_PREFIX}{id}")
}

/// The authority member a CA certificate's subject names (`CN=ringzero authority <n>`), if any.
pub fn ca_owner(cert_der: &[u8]) -> Option<u64> {
    let cert = parse_cert(cert_der).ok()?;
    owner_of_name(cert.subject())
}

fn owner_of_name(name: &x509_parser::x509::X509Name<'_>) -> Option<u64> {
    let cn = name.iter_common_name().next()?.as_str().ok()?;
    let n = cn.strip_prefix(AUTHORITY_CA_CN_PREFIX)?;
    let id: u64 = n.parse().ok()?;
    (id.to_string() == n).then_some(id)
}

/// The CA certificates a verifier trusts for one trust domain: every authority node's signing
/// CA (or the upstream root that signs them).
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Arc<Vec<TrustAnchor<'static>>>,
    /// Each root's path length constraint, by anchor index. rustls-webpki does not enforce a
    /// trust anchor's own constraints, so validation does.
    path_lens: Arc<Vec<Option<u32>>>,
    /// The authority member that owns each root, by anchor index (from its subject name).
    owners: Arc<Vec<Option<u64>>>,
}

impl TrustBundle {
    /// Builds a bundle; every root must parse as a CA certificate, and a root that carries a
    /// SPIFFE ID must carry this trust domain's.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, SvidError> {
        let mut anchors = Vec::with_capacity(roots.len());
        let mut path_lens = Vec::with_capacity(roots.len());
        let mut owners = Vec::with_capacity(roots.len());
        for root in &roots {
            if root.len() > MAX_DER_LEN {
                return Err(SvidError::TooLarge);
            }
            let cert = parse_cert(root)?;
            if !cert.is_ca() {
                return Err(SvidError::Bundle("a bundle certificate is not a CA".into()));
            }
            for uri in uri_sans(&cert)? {
                let id = SpiffeId::parse(uri)?;
                if !id.path().is_empty() {
                    return Err(SvidError::CaIdHasPath);
                }
                if !id.is_member_of(&trust_domain) {
                    return Err(SvidError::WrongTrustDomain {
                        expected: trust_domain.to_string(),
                        found: id.to_string(),
                    });
                }
            }
            owners.push(owner_of_name(cert.subject()));
            path_lens.push(
                cert.basic_constraints()
                    .ok()
                    .flatten()
                    .and_then(|bc| bc.value.path_len_constraint),
            );
            let anchor = webpki::anchor_from_trusted_cert(root)
                .map_err(|e| SvidError::Bundle(format!("{e:?}")))?
                .to_owned();
            anchors.push(anchor);
        }
        Ok(Self {
            trust_domain,
            roots,
            anchors: Arc::new(anchors),
            path_lens: Arc::new(path_lens),
            owners: Arc::new(owners),
        })
    }

    /// The authority member owning each root, in [`roots`](Self::roots) order.
    pub fn owners(&self) -> &[Option<u64>] {
        &self.owners
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The trusted CA certificates (DER).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The bundle as concatenated PEM certificates.
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|r| pem_encode("CERTIFICATE", r))
            .collect()
    }
}

/// One PEM block (`-----BEGIN {label}-----`, base64 in 64-column lines).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Which extended key usage the validation requires of the leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// The leaf authenticates a TLS client.
    Client,
    /// The leaf authenticates a TLS server.
    Server,
}

/// A chain that validated: the SPIFFE ID it proves and when that proof ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedSvid {
    pub id: SpiffeId,
    pub not_after: SystemTime,
    pub serial: Vec<u8>,
    /// The authority member whose own CA signed the leaf directly, if it was one.
    pub issuer_authority: Option<u64>,
}

/// Validates `chain` (leaf first) against `bundle` at `now`, enforcing the X509-SVID profile,
/// and returns the SPIFFE ID it proves.
///
/// An authority member's SVID (`ringzero/authority/<n>`) validates only when member `n`'s own
/// CA signed it directly: another member's CA, a removed member's CA or an upstream root
/// cannot vouch for a member.
pub fn validate_svid(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: SystemTime,
    usage: Usage,
) -> Result<ValidatedSvid, SvidError> {
    let (leaf_der, intermediates) = chain.split_first().ok_or(SvidError::EmptyChain)?;
    if chain.len() > MAX_CHAIN_LEN {
        return Err(SvidError::ChainTooLong);
    }
    if chain.iter().any(|c| c.len() > MAX_DER_LEN) {
        return Err(SvidError::TooLarge);
    }

    // Profile checks on the leaf.
    let leaf = parse_cert(leaf_der)?;
    let id = leaf_spiffe_id(&leaf)?;
    if !id.is_member_of(&bundle.trust_domain) {
        return Err(SvidError::WrongTrustDomain {
            expected: bundle.trust_domain.to_string(),
            found: id.to_string(),
        });
    }
    if leaf.is_ca() {
        return Err(SvidError::LeafIsCa);
    }
    let ku = leaf
        .key_usage()
        .map_err(|e| parse_err("key usage", e))?
        .ok_or(SvidError::LeafKeyUsage("missing"))?;
    if !ku.value.digital_signature() {
        return Err(SvidError::LeafKeyUsage("digitalSignature is not set"));
    }
    if ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(SvidError::LeafKeyUsage(
            "a leaf must not sign certificates or CRLs",
        ));
    }

    // Profile checks on intermediates.
    for der in intermediates {
        let cert = parse_cert(der)?;
        if !cert.is_ca() {
            return Err(SvidError::BadIntermediate("cA is not set"));
        }
        let ku = cert
            .key_usage()
            .map_err(|e| parse_err("key usage", e))?
            .ok_or(SvidError::BadIntermediate("key usage missing"))?;
        if !ku.value.key_cert_sign() {
            return Err(SvidError::BadIntermediate("keyCertSign is not set"));
        }
        for uri in uri_sans(&cert)? {
            let ca_id = SpiffeId::parse(uri)?;
            if !ca_id.path().is_empty() {
                return Err(SvidError::CaIdHasPath);
            }
            if !ca_id.is_member_of(&bundle.trust_domain) {
                return Err(SvidError::WrongTrustDomain {
                    expected: bundle.trust_domain.to_string(),
                    found: ca_id.to_string(),
                });
            }
        }
    }

    // Path building, signatures, validity and constraints: rustls-webpki.
    let ee = webpki::EndEntityCert::try_from(leaf_der)
        .map_err(|e| parse_err("leaf", format!("{e:?}")))?;
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let eku = match usage {
        Usage::Client => webpki::KeyUsage::client_auth(),
        Usage::Server => webpki::KeyUsage::server_auth(),
    };
    let member = match id.principal() {
        Some(Principal::Authority(n)) => Some(n),
        _ => None,
    };
    let wrong_member_ca = std::cell::Cell::new(false);
    let issuer = std::cell::Cell::new(None);
    let anchor_checks = |path: &webpki::VerifiedPath<'_>| -> Result<(), webpki::Error> {
        let used = path.anchor();
        let index = bundle.anchors.iter().position(|a| {
            a.subject_public_key_info == used.subject_public_key_info && a.subject == used.subject
        });
        let limit = index.and_then(|i| bundle.path_lens.get(i).copied().flatten());
        let direct = path.intermediate_certificates().count() == 0;
        let owner = index
            .and_then(|i| bundle.owners.get(i).copied().flatten())
            .filter(|_| direct);
        if let Some(n) = member
            && owner != Some(n)
        {
            wrong_member_ca.set(true);
            return Err(webpki::Error::UnknownIssuer);
        }
        match limit {
            Some(n) if path.intermediate_certificates().count() > n as usize => {
                Err(webpki::Error::PathLenConstraintViolated)
            }
            _ => {
                issuer.set(owner);
                Ok(())
            }
        }
    };
    ee.verify_for_usage(
        signature_algorithms(),
        &bundle.anchors,
        intermediates,
        UnixTime::since_unix_epoch(since_epoch),
        eku,
        None,
        Some(&anchor_checks),
    )
    .map_err(|e| {
        if wrong_member_ca.get() {
            SvidError::NotMembersOwnCa
        } else {
            map_webpki_error(e)
        }
    })?;

    Ok(ValidatedSvid {
        id,
        not_after: not_after(&leaf),
        serial: leaf.raw_serial().to_vec(),
        issuer_authority: issuer.get(),
    })
}

/// What a server needs to remember about a client's leaf after the handshake validated it:
/// who, which certificate (serial), until when, and which member's CA signed it (from the
/// issuer name, which path validation matched to a bundle root's subject).
pub fn leaf_facts(cert: &[u8], chain_len: usize) -> Result<ValidatedSvid, SvidError> {
    if cert.len() > MAX_DER_LEN {
        return Err(SvidError::TooLarge);
    }
    let leaf = parse_cert(cert)?;
    let id = leaf_spiffe_id(&leaf)?;
    Ok(ValidatedSvid {
        id,
        not_after: not_after(&leaf),
        serial: leaf.raw_serial().to_vec(),
        issuer_authority: if chain_len == 1 {
            owner_of_name(leaf.issuer())
        } else {
            None
        },
    })
}

/// A certificate's `notAfter` (the epoch if it lies before it).
fn not_after(cert: &X509Certificate<'_>) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0))
}

/// The SPIFFE ID a leaf certificate claims, checked for form only (not validated).
pub fn spiffe_id_of(cert: &[u8]) -> Result<SpiffeId, SvidError> {
    if cert.len() > MAX_DER_LEN {
        return Err(SvidError::TooLarge);
    }
    leaf_spiffe_id(&parse_cert(cert)?)
}

fn leaf_spiffe_id(leaf: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let uris = uri_sans(leaf)?;
    match uris.as_slice() {
        [] => Err(SvidError::NoUriSan),
        [one] => {
            let id = SpiffeId::parse(one)?;
            if id.path().is_empty() {
                // A trust domain ID names a CA, never a workload.
                return Err(SvidError::BadSpiffeId(crate::spiffe::IdError::EmptySegment));
            }
            Ok(id)
        }
        many => Err(SvidError::MultipleUriSans(many.len())),
    }
}

/// The signature algorithms of rustls' ring provider: one list for path validation and for the
/// TLS handshake signatures.
pub(crate) fn signature_algorithms()
-> &'static [&'static dyn rustls_pki_types::SignatureVerificationAlgorithm] {
    rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all
}

fn map_webpki_error(e: webpki::Error) -> SvidError {
    match e {
        webpki::Error::CertExpired { .. } => SvidError::Expired,
        webpki::Error::CertNotValidYet { .. } => SvidError::NotYetValid,
        webpki::Error::UnknownIssuer => SvidError::UntrustedIssuer,
        other => SvidError::Path(format!("{other:?}")),
    }
}
