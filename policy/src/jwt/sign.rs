//! Signing a JWT-SVID with an authority node's own key (the key never leaves the authority).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::EcdsaKeyPair;

use super::{JwtError, MAX_AUDIENCE_LEN, MAX_AUDIENCES, MAX_KID_LEN};
use crate::SpiffeId;

/// A requested audience list, checked and normalized: 1 to [`MAX_AUDIENCES`] audiences, each
/// 1 to [`MAX_AUDIENCE_LEN`] bytes without control characters; sorted, duplicates dropped (so
/// that one audience set is one cache key and one token).
pub fn audiences(list: &[String]) -> Result<Vec<String>, JwtError> {
    if list.is_empty() {
        return Err(JwtError::BadAudience("at least one audience is required"));
    }
    if list.len() > MAX_AUDIENCES {
        return Err(JwtError::BadAudience("at most 16 audiences"));
    }
    for a in list {
        if a.is_empty() || a.len() > MAX_AUDIENCE_LEN {
            return Err(JwtError::BadAudience("an audience is 1-256 bytes"));
        }
        if a.chars().any(char::is_control) {
            return Err(JwtError::BadAudience(
                "an audience has no control characters",
            ));
        }
    }
    let mut out = list.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Signs a JWT-SVID: header `{"alg":"ES256","kid":kid,"typ":"JWT"}`, claims `aud` (always an
/// array), `exp`, `iat` (unix seconds) and `sub`. `audience` is checked as [`audiences`] does.
pub fn sign(
    key: &EcdsaKeyPair,
    kid: &str,
    subject: &SpiffeId,
    audience: &[String],
    issued_at: u64,
    expires_at: u64,
) -> Result<String, JwtError> {
    if kid.is_empty() || kid.len() > MAX_KID_LEN {
        return Err(JwtError::BadKey("kid must be 1-64 bytes"));
    }
    if expires_at <= issued_at {
        return Err(JwtError::Expired);
    }
    let audience = audiences(audience)?;
    let header = serde_json::json!({ "alg": "ES256", "kid": kid, "typ": "JWT" });
    let claims = serde_json::json!({
        "aud": audience,
        "exp": expires_at,
        "iat": issued_at,
        "sub": subject.to_string(),
    });
    let mut out = String::with_capacity(512);
    out.push_str(&URL_SAFE_NO_PAD.encode(header.to_string()));
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig = key
        .sign(&ring::rand::SystemRandom::new(), out.as_bytes())
        .map_err(|_| JwtError::Signing)?;
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
    Ok(out)
}
