//! Signing CAs and leaf issuance.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::FromDer;

use super::der::parse_err;
use super::{MAX_DER_LEN, NOT_BEFORE_BACKDATE, SvidError};
use crate::spiffe::{SpiffeId, TrustDomain};

/// Generates a fresh ECDSA P-256 key pair, where it will be used.
pub fn generate_key() -> Result<KeyPair, SvidError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

/// A PKCS#10 CSR (DER) for `id`, signed by `key`: the request an agent or joiner sends.
pub fn csr_for(key: &KeyPair, id: &SpiffeId) -> Result<Vec<u8>, SvidError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![uri_san(id)?];
    Ok(params.serialize_request(key)?.der().to_vec())
}

/// A CA that signs SVIDs: its certificate, its private key, and the intermediates (if any) to
/// send along with the leaves it signs. Its `Debug` form never shows the key.
pub struct SigningCa {
    cert: CertificateDer<'static>,
    /// The CA's private key with what a leaf takes from the CA's certificate (its subject and
    /// key identifier), parsed once: every SVID is signed through it.
    issuer: Issuer<'static, KeyPair>,
    /// The certificates to append after a leaf: this CA's own certificate when it is an
    /// intermediate, then its parents' intermediates. Empty for a self-signed CA, which verifiers
    /// hold in their bundle.
    chain: Vec<CertificateDer<'static>>,
    trust_domain: TrustDomain,
    not_after: SystemTime,
    /// `Some(0)`: signs leaves only.
    path_len: Option<u8>,
}

/// Certificates carry whole seconds; every time ringzero reports about a certificate must be
/// the one in it.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

impl std::fmt::Debug for SigningCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCa")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn ca_params(
    td: &TrustDomain,
    common_name: &str,
    ttl: Duration,
    now: SystemTime,
    path_len: Option<u8>,
) -> Result<CertificateParams, SvidError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ringzero");
    dn.push(DnType::OrganizationalUnitName, td.as_str());
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![uri_san(&td.id())?];
    params.not_before = (now - NOT_BEFORE_BACKDATE).into();
    params.not_after = (now + ttl).into();
    params.serial_number = Some(fresh_serial(now)?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

impl SigningCa {
    /// A self-signed CA for `td`, valid for `ttl` from `now`. `common_name` makes its subject
    /// distinct (e.g. `ringzero authority a1`). `path_len`: `Some(0)` for a CA that signs only
    /// leaves.
    pub fn self_signed(
        td: &TrustDomain,
        common_name: &str,
        ttl: Duration,
        now: SystemTime,
        path_len: Option<u8>,
    ) -> Result<Self, SvidError> {
        let now = whole_seconds(now);
        if ttl < Duration::from_secs(1) {
            return Err(SvidError::TtlTooShort);
        }
        let ttl = Duration::from_secs(ttl.as_secs());
        let key = generate_key()?;
        let params = ca_params(td, common_name, ttl, now, path_len)?;
        let cert = params.self_signed(&key)?;
        let cert = cert.der().clone();
        Ok(Self {
            issuer: Issuer::from_ca_cert_der(&cert, key)?,
            cert,
            chain: Vec::new(),
            trust_domain: td.clone(),
            not_after: now + ttl,
            path_len,
        })
    }

    /// An intermediate CA signed by `self`, in the same trust domain. Its validity is capped at
    /// the parent's.
    pub fn sign_intermediate(
        &self,
        common_name: &str,
        ttl: Duration,
        now: SystemTime,
        path_len: Option<u8>,
    ) -> Result<Self, SvidError> {
        if self.path_len == Some(0) {
            return Err(SvidError::PathLenExceeded);
        }
        let now = whole_seconds(now);
        let key = generate_key()?;
        let ttl = self.cap_ttl(ttl, now)?;
        // A child's path length must be below its parent's.
        let path_len = match (self.path_len, path_len) {
            (Some(parent), Some(child)) => Some(child.min(parent - 1)),
            (Some(parent), None) => Some(parent - 1),
            (None, child) => child,
        };
        let params = ca_params(&self.trust_domain, common_name, ttl, now, path_len)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let der = cert.der().clone();
        let mut chain = vec![der.clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(Self {
            issuer: Issuer::from_ca_cert_der(&der, key)?,
            cert: der,
            chain,
            trust_domain: self.trust_domain.clone(),
            not_after: now + ttl,
            path_len,
        })
    }

    /// Loads a CA from its certificate (DER), its PKCS#8 private key (DER), and the
    /// intermediates to present after leaves (empty for a self-signed CA).
    pub fn from_der(
        cert: &[u8],
        key_pkcs8: &[u8],
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<Self, SvidError> {
        let (rest, parsed) = x509_parser::certificate::X509Certificate::from_der(cert)
            .map_err(|e| parse_err("CA certificate", e))?;
        if !rest.is_empty() {
            return Err(parse_err("CA certificate", "trailing bytes"));
        }
        if !parsed.is_ca() {
            return Err(SvidError::BadIntermediate("not a CA certificate"));
        }
        let id = super::der::uri_sans(&parsed)?
            .into_iter()
            .next()
            .ok_or(SvidError::NoUriSan)?;
        let id = SpiffeId::parse(id)?;
        if !id.path().is_empty() {
            return Err(SvidError::CaIdHasPath);
        }
        let key = KeyPair::try_from(key_pkcs8).map_err(|e| parse_err("CA key", e))?;
        if key.public_key_raw() != parsed.public_key().subject_public_key.data.as_ref() {
            return Err(parse_err("CA key", "does not match the certificate"));
        }
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(
                u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0),
            );
        let path_len = parsed
            .basic_constraints()
            .ok()
            .flatten()
            .and_then(|bc| bc.value.path_len_constraint)
            .map(|n| u8::try_from(n).unwrap_or(u8::MAX));
        let cert = CertificateDer::from(cert.to_vec());
        Ok(Self {
            issuer: Issuer::from_ca_cert_der(&cert, key)?,
            cert,
            chain,
            trust_domain: id.trust_domain(),
            not_after,
            path_len,
        })
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// What join tokens pin this CA by: the SHA-256 of its SubjectPublicKeyInfo — the same as
    /// [`crate::join::ca_pin`] of its certificate, without parsing the certificate.
    pub fn pin(&self) -> [u8; 32] {
        crate::join::sha256(&rcgen::PublicKeyData::subject_public_key_info(
            self.issuer.key(),
        ))
    }

    /// The private key as PKCS#8 DER. Handle as a secret.
    pub fn key_pkcs8_der(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(self.issuer.key().serialize_der())
    }

    /// The intermediates presented after each leaf this CA signs.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// `ttl` in whole seconds, capped so the result does not outlive this CA. `now` must be
    /// whole seconds.
    fn cap_ttl(&self, ttl: Duration, now: SystemTime) -> Result<Duration, SvidError> {
        if ttl < Duration::from_secs(1) {
            return Err(SvidError::TtlTooShort);
        }
        let left = self
            .not_after
            .duration_since(now)
            .map_err(|_| SvidError::CaExpired)?;
        if left.is_zero() {
            return Err(SvidError::CaExpired);
        }
        Ok(Duration::from_secs(ttl.min(left).as_secs()))
    }

    /// Issues a leaf SVID.
    pub fn issue(&self, req: &LeafRequest<'_>) -> Result<IssuedSvid, SvidError> {
        if !req.id.is_member_of(&self.trust_domain) {
            return Err(SvidError::WrongTrustDomain {
                expected: self.trust_domain.to_string(),
                found: req.id.to_string(),
            });
        }
        let public_key = req.key.public_key()?;
        let now = whole_seconds(req.now);
        let ttl = self.cap_ttl(req.ttl, now)?;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ringzero");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let mut sans = vec![uri_san(req.id)?];
        for dns in req.dns_names {
            check_dns_name(dns)?;
            let name = dns
                .as_str()
                .try_into()
                .map_err(|_| SvidError::BadDnsName(dns.clone()))?;
            sans.push(SanType::DnsName(name));
        }
        params.subject_alt_names = sans;
        let not_before = now - NOT_BEFORE_BACKDATE;
        let not_after = now + ttl;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let serial = fresh_serial(req.now)?;
        params.serial_number = Some(serial.clone());
        params.use_authority_key_identifier_extension = true;

        let cert = params.signed_by(&public_key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        let spki = rcgen::PublicKeyData::subject_public_key_info(&public_key);
        let key_digest = ring::digest::digest(&ring::digest::SHA256, &spki);
        Ok(IssuedSvid {
            id: req.id.clone(),
            chain,
            serial: serial.to_bytes(),
            not_before,
            not_after,
            public_key_sha256: key_digest.as_ref().to_vec(),
        })
    }
}

/// Where the leaf's public key comes from.
#[derive(Debug, Clone, Copy)]
pub enum LeafKey<'a> {
    /// A PKCS#10 CSR (DER). Its signature is verified (proof of possession); only its public
    /// key is used.
    Csr(&'a [u8]),
    /// A SubjectPublicKeyInfo (DER), for keys whose possession is proven otherwise.
    PublicKey(&'a [u8]),
}

impl LeafKey<'_> {
    fn public_key(&self) -> Result<SubjectPublicKeyInfo, SvidError> {
        let spki_der: Vec<u8> = match *self {
            LeafKey::Csr(der) => {
                if der.len() > MAX_DER_LEN {
                    return Err(SvidError::TooLarge);
                }
                let (rest, csr) =
                    x509_parser::certification_request::X509CertificationRequest::from_der(der)
                        .map_err(|e| parse_err("CSR", e))?;
                if !rest.is_empty() {
                    return Err(parse_err("CSR", "trailing bytes"));
                }
                csr.verify_signature()
                    .map_err(|_| SvidError::CsrSignature)?;
                csr.certification_request_info.subject_pki.raw.to_vec()
            }
            LeafKey::PublicKey(der) => {
                if der.len() > MAX_DER_LEN {
                    return Err(SvidError::TooLarge);
                }
                der.to_vec()
            }
        };
        let spki =
            SubjectPublicKeyInfo::from_der(&spki_der).map_err(|_| SvidError::UnsupportedKey)?;
        if rcgen::PublicKeyData::algorithm(&spki) != &PKCS_ECDSA_P256_SHA256 {
            return Err(SvidError::UnsupportedKey);
        }
        check_p256_point(rcgen::PublicKeyData::der_bytes(&spki))?;
        Ok(spki)
    }
}

/// Refuses a P-256 public key that is not an uncompressed point on the curve (what ring and
/// every TLS peer accept). The curve equation is checked directly: a few field operations,
/// where an ephemeral key agreement (the check this replaced) cost a full scalar
/// multiplication, about 60 µs per SVID.
fn check_p256_point(point: &[u8]) -> Result<(), SvidError> {
    if point.len() != 65 || point.first() != Some(&0x04) {
        return Err(SvidError::UnsupportedKey);
    }
    p256::PublicKey::from_sec1_bytes(point)
        .map(|_| ())
        .map_err(|_| SvidError::UnsupportedKey)
}

/// A DNS SAN must be a syntactically valid DNS name; a wildcard is allowed only as the whole
/// leftmost label of a name with at least two more labels.
fn check_dns_name(dns: &str) -> Result<(), SvidError> {
    let bad = || SvidError::BadDnsName(dns.chars().take(64).collect());
    let rest = dns.strip_prefix("*.").unwrap_or(dns);
    if !rest
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        || (rest.len() != dns.len() && rest.split('.').count() < 2)
    {
        return Err(bad());
    }
    let name = rustls_pki_types::DnsName::try_from(rest).map_err(|_| bad())?;
    if name.as_ref().ends_with('.') || !name.as_ref().contains(|c: char| c.is_ascii_alphabetic()) {
        return Err(bad());
    }
    Ok(())
}

/// What to issue.
#[derive(Debug, Clone, Copy)]
pub struct LeafRequest<'a> {
    pub id: &'a SpiffeId,
    pub key: LeafKey<'a>,
    /// Requested lifetime; capped at the CA's own expiry.
    pub ttl: Duration,
    /// Extra DNS SANs (the URI SAN stays the only URI).
    pub dns_names: &'a [String],
    pub now: SystemTime,
}

/// An issued leaf SVID and what its audit record needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSvid {
    pub id: SpiffeId,
    /// Leaf first, then intermediates; the bundle holds the root.
    pub chain: Vec<CertificateDer<'static>>,
    pub serial: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// SHA-256 of the leaf's SubjectPublicKeyInfo.
    pub public_key_sha256: Vec<u8>,
}

fn uri_san(id: &SpiffeId) -> Result<SanType, SvidError> {
    Ok(SanType::URI(id.as_str().try_into().map_err(
        |e: rcgen::Error| SvidError::Generate(e.to_string()),
    )?))
}

/// A positive 128-bit serial number that sorts by issue time ([`crate::ids::time_ordered`]):
/// the authority's record of each node's serials grows at its end instead of on a random page
/// per certificate. Its 80 random bits keep what a random serial is for (a signer cannot be led
/// to sign a prefix chosen in advance).
fn fresh_serial(now: SystemTime) -> Result<SerialNumber, SvidError> {
    let mut bytes =
        crate::ids::time_ordered(now).map_err(|_| SvidError::Generate("no randomness".into()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a leading zero byte, so the DER length is fixed
    Ok(SerialNumber::from_slice(&bytes))
}
