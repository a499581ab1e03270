//! The trust bundle as a SPIFFE bundle document (a JWK set, RFC 7517): the one place it is
//! built, for `ringzero bundle show --format jwks` and for the Workload API's
//! `FetchJWTBundles`.
//!
//! Compromised keys are never in it (a SPIFFE bundle lists usable keys and has no status to
//! mark them with). A retired JWT key stays, and verifies only tokens issued before its
//! retirement (`JwtKey::signed_until`); a published key not yet signing is listed too, so
//! verifiers know it before its first token.

use base64::Engine as _;
use ringzero_policy::jwt::JwtKey;
use x509_parser::prelude::FromDer;

use crate::client::COMPROMISED;
use crate::pb;

/// How often a bundle consumer should refresh, in seconds (`spiffe_refresh_hint`).
pub const REFRESH_HINT_S: u64 = 60;

/// The JWT-SVID signing keys of `bundle` a verifier may trust: `kind: jwt`, not compromised
/// and not refused by `untrusted` (a profile's memory of compromised keys); `kid` is the
/// bundle's key id.
pub fn jwt_keys(bundle: &pb::Bundle, untrusted: impl Fn(&pb::BundleKey) -> bool) -> Vec<JwtKey> {
    bundle
        .keys
        .iter()
        .filter(|k| k.kind == "jwt" && k.status != COMPROMISED && !untrusted(k))
        .filter_map(|k| {
            let signed_until =
                (k.status == "retired" && k.not_after_ms > 0).then_some(k.not_after_ms / 1000);
            JwtKey::from_spki(&k.key_id.to_string(), &k.public_key, signed_until).ok()
        })
        .collect()
}

/// The JWK set of JWT-SVID keys only, as `FetchJWTBundles` sends it per trust domain.
pub fn jwt_bundle_document(keys: &[JwtKey]) -> Vec<u8> {
    let mut doc = ringzero_policy::jwt::jwks(keys);
    doc["spiffe_refresh_hint"] = REFRESH_HINT_S.into();
    doc.to_string().into_bytes()
}

/// The whole SPIFFE bundle document: `use: x509-svid` keys (with `x5c`) for the CAs and
/// `use: jwt-svid` keys, leaving out what [`jwt_keys`] leaves out (and CAs alike).
pub fn bundle_document(
    bundle: &pb::Bundle,
    untrusted: impl Fn(&pb::BundleKey) -> bool,
) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut keys = Vec::new();
    for k in bundle
        .keys
        .iter()
        .filter(|k| k.kind == "x509-ca" && k.status != COMPROMISED && !untrusted(k))
    {
        let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(&k.public_key)
        else {
            continue;
        };
        let point = &cert.public_key().subject_public_key.data;
        let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
            continue;
        };
        if point.len() != 65 || point.first() != Some(&4) {
            continue;
        }
        keys.push(serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": url.encode(x),
            "y": url.encode(y),
            "kid": k.key_id.to_string(),
            "use": "x509-svid",
            "x5c": [b64.encode(&k.public_key)],
        }));
    }
    keys.extend(jwt_keys(bundle, untrusted).iter().map(JwtKey::to_jwk));
    serde_json::json!({ "keys": keys, "spiffe_refresh_hint": REFRESH_HINT_S })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

    use super::*;

    fn spki() -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let mut out = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        out.extend_from_slice(pair.public_key().as_ref());
        out
    }

    fn key(id: u64, status: &str, not_after_ms: u64) -> pb::BundleKey {
        pb::BundleKey {
            key_id: id,
            authority: id,
            kind: "jwt".into(),
            public_key: spki(),
            status: status.into(),
            not_after_ms,
        }
    }

    #[test]
    fn compromised_keys_are_left_out_and_retired_ones_bounded() {
        let bundle = pb::Bundle {
            trust_domain: "example.org".into(),
            keys: vec![
                key(3, "active", 0),
                key(4, "published", 0),
                key(5, "retired", 1_800_000_000_000),
                key(6, "compromised", 0),
                pb::BundleKey {
                    kind: "audit".into(),
                    ..key(7, "active", 0)
                },
            ],
            members: Vec::new(),
        };
        let keys = jwt_keys(&bundle, |_| false);
        let kids: Vec<&str> = keys.iter().map(JwtKey::kid).collect();
        assert_eq!(kids, ["3", "4", "5"]);
        assert_eq!(keys[0].signed_until(), None);
        assert_eq!(keys[2].signed_until(), Some(1_800_000_000));
        // What a profile remembers as compromised is left out too, whatever the bundle says.
        let keys = jwt_keys(&bundle, |k| k.key_id == 3);
        assert!(keys.iter().all(|k| k.kid() != "3"));
        let doc = bundle_document(&bundle, |_| false);
        let listed: Vec<&str> = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(listed, ["3", "4", "5"]);
        let jwt_doc: serde_json::Value =
            serde_json::from_slice(&jwt_bundle_document(&jwt_keys(&bundle, |_| false))).unwrap();
        assert!(
            jwt_doc["keys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["use"] == "jwt-svid" && k["kty"] == "EC" && k["crv"] == "P-256")
        );
    }
}
