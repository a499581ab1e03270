//! The public half of an authority node's JWT key, as verifiers hold it and as a JWKS lists it.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{JwtError, MAX_KID_LEN};
use crate::TrustDomain;

/// The trusted JWT keys of each trust domain.
pub type JwtBundles = BTreeMap<TrustDomain, Vec<JwtKey>>;

/// A P-256 public key trusted to sign JWT-SVIDs, named by its `kid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtKey {
    kid: String,
    /// The uncompressed point: `04 || x || y`.
    point: [u8; 65],
    /// A retired key verifies only tokens issued (`iat`) at or before this time (unix seconds).
    signed_until: Option<u64>,
}

/// `id-ecPublicKey` + `prime256v1` SubjectPublicKeyInfo, up to the point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl JwtKey {
    /// A key from its uncompressed point (65 bytes, `04 || x || y`).
    pub fn from_point(
        kid: &str,
        point: &[u8],
        signed_until: Option<u64>,
    ) -> Result<Self, JwtError> {
        if kid.is_empty() || kid.len() > MAX_KID_LEN || !kid.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(JwtError::BadKey(
                "kid must be 1-64 printable ASCII characters",
            ));
        }
        let point: [u8; 65] = point
            .try_into()
            .map_err(|_| JwtError::BadKey("not an uncompressed P-256 point"))?;
        if point[0] != 4 {
            return Err(JwtError::BadKey("not an uncompressed P-256 point"));
        }
        Ok(Self {
            kid: kid.to_owned(),
            point,
            signed_until,
        })
    }

    /// A key from its P-256 SubjectPublicKeyInfo DER (as the trust bundle carries it).
    pub fn from_spki(kid: &str, spki: &[u8], signed_until: Option<u64>) -> Result<Self, JwtError> {
        let point = spki
            .strip_prefix(&P256_SPKI_PREFIX[..])
            .ok_or(JwtError::BadKey("not a P-256 SubjectPublicKeyInfo"))?;
        Self::from_point(kid, point, signed_until)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The uncompressed point.
    pub fn point(&self) -> &[u8] {
        &self.point
    }

    /// For a retired key: the last `iat` it verifies (unix seconds).
    pub fn signed_until(&self) -> Option<u64> {
        self.signed_until
    }

    /// The key as a JWK (RFC 7517/7518) in a SPIFFE bundle: `kty`, `crv`, `x`, `y`, `kid`,
    /// `use: jwt-svid`.
    pub fn to_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&self.point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&self.point[33..]),
            "kid": self.kid,
            "use": "jwt-svid",
        })
    }
}

/// A JWK set of these keys (the JSON document the Workload API's `FetchJWTBundles` carries).
pub fn jwks(keys: &[JwtKey]) -> serde_json::Value {
    serde_json::json!({ "keys": keys.iter().map(JwtKey::to_jwk).collect::<Vec<_>>() })
}
