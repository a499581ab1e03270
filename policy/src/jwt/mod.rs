//! JWT-SVIDs per the SPIFFE JWT-SVID spec: ES256 only, signed by an authority node's JWT key
//! (named by its `kid` in the trust bundle), claims `sub` (a SPIFFE ID), `aud` (an array),
//! `exp` and `iat`.
//!
//! # Layout
//!
//! - `key.rs`: [`JwtKey`] (a bundle's P-256 public key with its `kid`) and its JWK form
//!   (RFC 7517, `use: jwt-svid`); [`JwtBundles`], the keys a validator trusts per trust domain.
//! - `sign.rs`: [`sign`], with the authority's own key; [`audiences`], the bounds on a
//!   requested audience list.
//! - `validate.rs`: [`validate`], for untrusted input: size cap, exactly three base64url
//!   segments without padding, a JSON header with `alg: ES256` and a known, trusted `kid`,
//!   the signature, then `sub`, `aud` and `exp`.
//! - `tests.rs`: round trips and hostile tokens.
//!
//! ```
//! use std::time::{Duration, SystemTime, UNIX_EPOCH};
//! use ringzero_policy::SpiffeId;
//! use ringzero_policy::jwt::{self, JwtBundles, JwtKey};
//!
//! let rng = ring::rand::SystemRandom::new();
//! let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
//!     &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
//! let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
//!     &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
//! let key = JwtKey::from_point("7", ring::signature::KeyPair::public_key(&pair).as_ref(), None)?;
//! let sub = SpiffeId::parse("spiffe://example.org/ns/shop/web")?;
//! let now = SystemTime::now();
//! let iat = now.duration_since(UNIX_EPOCH)?.as_secs();
//! let token = jwt::sign(&pair, "7", &sub, &["db".to_owned()], iat, iat + 300)?;
//!
//! let mut bundles = JwtBundles::new();
//! bundles.insert(sub.trust_domain(), vec![key]);
//! let claims = jwt::validate(&token, "db", &bundles, now)?;
//! assert_eq!(claims.subject, sub);
//! assert!(jwt::validate(&token, "other", &bundles, now).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod key;
mod sign;
mod validate;

#[cfg(test)]
mod tests;

pub use self::key::{JwtBundles, JwtKey, jwks};
pub use self::sign::{audiences, sign};
pub use self::validate::{Claims, validate};

/// The largest token accepted, in bytes (SPIRE's are well under 1 KiB).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// The most audiences a token may name.
pub const MAX_AUDIENCES: usize = 16;
/// The longest audience, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 256;
/// The longest `kid`, in bytes.
pub const MAX_KID_LEN: usize = 64;
/// How far ahead of the validator's clock `iat` and `nbf` may be (the issuer's clock may run
/// ahead). `exp` gets no grace: expiry is exact (DESIGN §3).
pub const MAX_CLOCK_AHEAD_S: u64 = 60;

/// Why a token was not signed or not accepted. The token itself is never part of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    #[error("token larger than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported algorithm: only ES256 is accepted")]
    Algorithm,
    #[error("no JWT bundle for trust domain {0}")]
    UnknownTrustDomain(String),
    #[error("key {0:?} is not a trusted JWT key of the bundle")]
    UnknownKey(String),
    #[error("token signed after its key stopped signing (key {0:?} retired)")]
    KeyRetired(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("the token's audience does not include {0:?}")]
    AudienceMismatch(String),
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("bad subject: {0}")]
    BadSubject(String),
    #[error("bad audience: {0}")]
    BadAudience(&'static str),
    #[error("bad key: {0}")]
    BadKey(&'static str),
    #[error("signing failed")]
    Signing,
}

impl JwtError {
    /// A short stable code, for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "too_large",
            JwtError::Malformed(_) => "malformed",
            JwtError::Algorithm => "bad_algorithm",
            JwtError::UnknownTrustDomain(_) => "unknown_trust_domain",
            JwtError::UnknownKey(_) => "unknown_key",
            JwtError::KeyRetired(_) => "key_retired",
            JwtError::BadSignature => "bad_signature",
            JwtError::AudienceMismatch(_) => "audience_mismatch",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::BadSubject(_) => "bad_subject",
            JwtError::BadAudience(_) => "bad_audience",
            JwtError::BadKey(_) => "bad_key",
            JwtError::Signing => "signing_failed",
        }
    }
}
