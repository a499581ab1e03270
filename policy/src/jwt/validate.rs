//! Validating an untrusted JWT-SVID. Nothing here panics on input; every step is bounded.
//!
//! Order: the size cap and the shape (three non-empty base64url segments, no padding, no
//! other characters); the header (a JSON object without duplicate members, `alg` exactly
//! `ES256`, a `kid`, `typ` absent or `JWT`/`JOSE`, no `crit`); the claims' `sub`, which names
//! the trust domain whose keys are consulted; the key by `kid` among that trust domain's
//! trusted keys; the ES256 signature over the first two segments as received; then `aud`,
//! `exp`, `iat` and `nbf`. Keys named by the token itself (`jwk`, `jku`, `x5c`, `x5u`) are
//! never used.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::{
    JwtBundles, JwtError, MAX_AUDIENCE_LEN, MAX_AUDIENCES, MAX_CLOCK_AHEAD_S, MAX_KID_LEN,
    MAX_TOKEN_LEN,
};
use crate::SpiffeId;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub subject: SpiffeId,
    pub audience: Vec<String>,
    /// Unix seconds.
    pub expires_at: u64,
    pub issued_at: Option<u64>,
    /// The key that signed it.
    pub key_id: String,
    /// Every claim of the token, as JSON.
    pub all: Map<String, Value>,
}

/// Validates `token` for `audience` against the trusted keys of the trust domain of its
/// `sub`, at `now`.
pub fn validate(
    token: &str,
    audience: &str,
    bundles: &JwtBundles,
    now: SystemTime,
) -> Result<Claims, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(c64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three dot-separated segments"));
    };
    let header = object(&segment(h64, "header")?, "header")?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "ES256" => {}
        _ => return Err(JwtError::Algorithm),
    }
    let kid = match header.get("kid") {
        Some(Value::String(k)) if !k.is_empty() && k.len() <= MAX_KID_LEN => k.as_str(),
        _ => return Err(JwtError::Malformed("header kid missing or invalid")),
    };
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if t == "JWT" || t == "JOSE" => {}
        _ => return Err(JwtError::Malformed("header typ must be JWT or JOSE")),
    }
    if header.contains_key("crit") {
        return Err(JwtError::Malformed(
            "critical header parameters are not supported",
        ));
    }
    let claims = object(&segment(c64, "claims")?, "claims")?;
    let signature = segment(s64, "signature")?;
    if signature.len() != 64 {
        return Err(JwtError::BadSignature);
    }

    let subject = match claims.get("sub") {
        Some(Value::String(s)) => {
            SpiffeId::parse(s).map_err(|e| JwtError::BadSubject(e.to_string()))?
        }
        _ => return Err(JwtError::BadSubject("sub missing or not a string".into())),
    };
    if subject.segments().next().is_none() || subject.is_reserved() {
        // The authority mints JWT-SVIDs for workloads only: never for a trust domain ID or
        // a reserved path (`ringzero/…`, `user/…`).
        return Err(JwtError::BadSubject("not a workload identity".into()));
    }
    let td = subject.trust_domain();
    let keys = bundles
        .get(&td)
        .ok_or_else(|| JwtError::UnknownTrustDomain(td.to_string()))?;
    let key = keys
        .iter()
        .find(|k| k.kid() == kid)
        .ok_or_else(|| JwtError::UnknownKey(kid.to_owned()))?;
    let signed = token
        .get(..h64.len() + 1 + c64.len())
        .ok_or(JwtError::Malformed("segments"))?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, key.point())
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| JwtError::BadSignature)?;

    let audiences = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) if !list.is_empty() && list.len() <= MAX_AUDIENCES => list
            .iter()
            .map(|v| match v {
                Value::String(a) if !a.is_empty() && a.len() <= MAX_AUDIENCE_LEN => Ok(a.clone()),
                _ => Err(JwtError::Malformed("aud holds a bad audience")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(JwtError::Malformed("aud missing or invalid")),
    };
    if !audiences.iter().any(|a| a == audience) {
        return Err(JwtError::AudienceMismatch(
            audience.chars().take(64).collect(),
        ));
    }
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| JwtError::Malformed("clock before 1970"))?
        .as_secs();
    let expires_at = numeric_date(claims.get("exp"))?.ok_or(JwtError::Malformed("exp missing"))?;
    if expires_at <= now_s {
        return Err(JwtError::Expired);
    }
    let issued_at = numeric_date(claims.get("iat"))?;
    let not_before = numeric_date(claims.get("nbf"))?;
    let ahead = now_s.saturating_add(MAX_CLOCK_AHEAD_S);
    if issued_at.is_some_and(|t| t > ahead) || not_before.is_some_and(|t| t > ahead) {
        return Err(JwtError::NotYetValid);
    }
    if let Some(until) = key.signed_until() {
        // A retired key verifies only what it signed before it was retired.
        if issued_at.is_none_or(|t| t > until) {
            return Err(JwtError::KeyRetired(kid.to_owned()));
        }
    }
    Ok(Claims {
        subject,
        audience: audiences,
        expires_at,
        issued_at,
        key_id: kid.to_owned(),
        all: claims,
    })
}

/// One base64url segment without padding, decoded.
fn segment(s: &str, what: &'static str) -> Result<Vec<u8>, JwtError> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(JwtError::Malformed(match what {
            "header" => "header is not unpadded base64url",
            "claims" => "claims are not unpadded base64url",
            _ => "signature is not unpadded base64url",
        }));
    }
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::Malformed("a segment is not canonical base64url"))
}

/// A JSON object without duplicate members (two `alg`s could be read differently by two
/// parsers).
fn object(bytes: &[u8], what: &'static str) -> Result<Map<String, Value>, JwtError> {
    let parsed: UniqueObject = serde_json::from_slice(bytes).map_err(|_| {
        JwtError::Malformed(if what == "header" {
            "header is not a JSON object with unique members"
        } else {
            "claims are not a JSON object with unique members"
        })
    })?;
    Ok(parsed.0)
}

/// A NumericDate claim: a non-negative integer (unix seconds), or absent.
fn numeric_date(v: Option<&Value>) -> Result<Option<u64>, JwtError> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(JwtError::Malformed(
            "a date claim is not a non-negative integer",
        )),
        Some(_) => Err(JwtError::Malformed("a date claim is not a number")),
    }
}

/// A top-level JSON object whose members are unique.
struct UniqueObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueObject, A::Error> {
                let mut out = Map::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if out.insert(k, v).is_some() {
                        return Err(serde::de::Error::custom("duplicate member"));
                    }
                }
                Ok(UniqueObject(out))
            }
        }
        d.deserialize_map(Visit)
    }
}
