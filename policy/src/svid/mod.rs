//! X.509-SVIDs: signing CAs, leaf issuance and chain validation, exactly per the SPIFFE
//! X509-SVID profile.
//!
//! - A leaf SVID has exactly one URI SAN (its SPIFFE ID), `cA=false`, a critical key usage of
//!   `digitalSignature` only, and extended key usage `serverAuth` + `clientAuth`.
//! - A signing certificate is a CA with `keyCertSign` (and `cRLSign`); its URI SAN, when it has
//!   one, is the trust domain's SPIFFE ID without a path.
//! - Keys are ECDSA P-256, generated where they are used: a CA signs a leaf from a CSR (whose
//!   self-signature proves possession) or from a bare public key, never from a private key it
//!   was sent. Only the public key of a CSR is used; everything else in the certificate comes
//!   from the issuer's decision.

mod ca;
mod der;
mod validate;

use std::time::Duration;

pub use self::ca::{IssuedSvid, LeafKey, LeafRequest, SigningCa, csr_for, generate_key};
pub use self::validate::{
    AUTHORITY_CA_CN_PREFIX, TrustBundle, Usage, ValidatedSvid, authority_ca_common_name, ca_owner,
    leaf_facts, pem_encode, spiffe_id_of, validate_svid,
};

/// The largest certificate or CSR accepted, in bytes of DER.
pub const MAX_DER_LEN: usize = 16 * 1024;
/// The longest chain accepted: a leaf plus at most six intermediates, which is also the
/// deepest path rustls-webpki builds.
pub const MAX_CHAIN_LEN: usize = 7;
/// How far back a leaf's not-before is set, so that peers with slightly slow clocks accept it.
pub const NOT_BEFORE_BACKDATE: Duration = Duration::from_secs(60);

/// Why a certificate could not be issued, or a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    #[error("no certificate presented")]
    EmptyChain,
    #[error("chain longer than {MAX_CHAIN_LEN} certificates")]
    ChainTooLong,
    #[error("certificate or CSR larger than {MAX_DER_LEN} bytes")]
    TooLarge,
    #[error("cannot parse {what}: {detail}")]
    Parse { what: &'static str, detail: String },
    #[error("leaf has no URI SAN (an SVID carries its SPIFFE ID as exactly one URI SAN)")]
    NoUriSan,
    #[error("leaf has {0} URI SANs; an SVID has exactly one")]
    MultipleUriSans(usize),
    #[error("URI SAN is not a SPIFFE ID: {0}")]
    BadSpiffeId(#[from] crate::spiffe::IdError),
    #[error("SPIFFE ID {found} is not in trust domain {expected}")]
    WrongTrustDomain { expected: String, found: String },
    #[error("leaf is a CA certificate")]
    LeafIsCa,
    #[error("leaf key usage: {0}")]
    LeafKeyUsage(&'static str),
    #[error("intermediate certificate is not a signing CA: {0}")]
    BadIntermediate(&'static str),
    #[error("the SPIFFE ID of a signing certificate must have no path")]
    CaIdHasPath,
    #[error("certificate is not yet valid")]
    NotYetValid,
    #[error("certificate has expired")]
    Expired,
    #[error("not issued by a CA in the trust bundle")]
    UntrustedIssuer,
    #[error("an authority member's SVID must be signed by that member's own CA")]
    NotMembersOwnCa,
    #[error("chain does not validate: {0}")]
    Path(String),
    #[error("CSR signature does not verify (no proof of key possession)")]
    CsrSignature,
    #[error("unsupported key: ringzero SVIDs use ECDSA P-256")]
    UnsupportedKey,
    #[error("lifetime must be at least one second")]
    TtlTooShort,
    #[error("the CA expires before the requested not-before")]
    CaExpired,
    #[error("bad trust bundle: {0}")]
    Bundle(String),
    #[error("this CA may sign only leaves (path length 0)")]
    PathLenExceeded,
    #[error("bad DNS name {0:?}")]
    BadDnsName(String),
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

impl From<rcgen::Error> for SvidError {
    fn from(e: rcgen::Error) -> Self {
        SvidError::Generate(e.to_string())
    }
}

#[cfg(test)]
mod tests;
