#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

use super::*;
use crate::{SpiffeId, TrustDomain};

fn pair() -> EcdsaKeyPair {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap()
}

struct Fixture {
    key: EcdsaKeyPair,
    bundles: JwtBundles,
    sub: SpiffeId,
    now: SystemTime,
    iat: u64,
}

fn fixture() -> Fixture {
    let key = pair();
    let sub = SpiffeId::parse("spiffe://example.org/ns/shop/web").unwrap();
    let mut bundles = JwtBundles::new();
    bundles.insert(
        sub.trust_domain(),
        vec![JwtKey::from_point("7", key.public_key().as_ref(), None).unwrap()],
    );
    let now = SystemTime::now();
    let iat = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    Fixture {
        key,
        bundles,
        sub,
        now,
        iat,
    }
}

fn aud(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A token with any header and claims, signed by `key` over exactly what is sent.
fn forge(key: &EcdsaKeyPair, header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let signed = format!("{}.{}", b64(header), b64(claims));
    let sig = key
        .sign(&ring::rand::SystemRandom::new(), signed.as_bytes())
        .unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn claims(f: &Fixture) -> serde_json::Value {
    serde_json::json!({"sub": f.sub.to_string(), "aud": ["db"], "exp": f.iat + 300, "iat": f.iat})
}

fn es256() -> serde_json::Value {
    serde_json::json!({"alg": "ES256", "kid": "7", "typ": "JWT"})
}

#[test]
fn a_signed_token_validates_for_each_of_its_audiences_only() {
    let f = fixture();
    let t = sign(
        &f.key,
        "7",
        &f.sub,
        &aud(&["db", "cache"]),
        f.iat,
        f.iat + 300,
    )
    .unwrap();
    for a in ["db", "cache"] {
        let c = validate(&t, a, &f.bundles, f.now).unwrap();
        assert_eq!(c.subject, f.sub);
        assert_eq!(c.audience, aud(&["cache", "db"]));
        assert_eq!(c.expires_at, f.iat + 300);
        assert_eq!(c.key_id, "7");
    }
    assert!(matches!(
        validate(&t, "web", &f.bundles, f.now),
        Err(JwtError::AudienceMismatch(_))
    ));
    // The header is exactly what SPIRE's is.
    let header = URL_SAFE_NO_PAD
        .decode(t.split('.').next().unwrap())
        .unwrap();
    assert_eq!(header, br#"{"alg":"ES256","kid":"7","typ":"JWT"}"#);
}

#[test]
fn expiry_is_exact() {
    let f = fixture();
    let t = sign(&f.key, "7", &f.sub, &aud(&["db"]), f.iat, f.iat + 10).unwrap();
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    assert!(validate(&t, "db", &f.bundles, at(f.iat + 9)).is_ok());
    assert_eq!(
        validate(&t, "db", &f.bundles, at(f.iat + 10)),
        Err(JwtError::Expired)
    );
    // Issued far in the future: refused (beyond the issuer's allowed clock lead).
    let early = at(f.iat - MAX_CLOCK_AHEAD_S - 1);
    assert_eq!(
        validate(&t, "db", &f.bundles, early),
        Err(JwtError::NotYetValid)
    );
}

#[test]
fn algorithm_confusion_is_refused() {
    let f = fixture();
    let c = claims(&f);
    for alg in [
        "none", "None", "NONE", "HS256", "RS256", "ES384", "PS256", "EdDSA", "es256", "",
    ] {
        let header = serde_json::json!({"alg": alg, "kid": "7", "typ": "JWT"});
        // Signed with the real key, and unsigned, and with an HMAC over the key's public point.
        let t = forge(&f.key, &header, &c);
        assert_eq!(
            validate(&t, "db", &f.bundles, f.now),
            Err(JwtError::Algorithm),
            "{alg}"
        );
        let unsigned = format!("{}.{}.", b64(&header), b64(&c));
        assert!(
            validate(&unsigned, "db", &f.bundles, f.now).is_err(),
            "{alg}"
        );
        let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, f.key.public_key().as_ref());
        let signed = format!("{}.{}", b64(&header), b64(&c));
        let tag = ring::hmac::sign(&hmac_key, signed.as_bytes());
        let hs = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert!(validate(&hs, "db", &f.bundles, f.now).is_err(), "{alg}");
    }
    // No alg at all, alg not a string, alg twice (a parser differential).
    let no_alg = forge(&f.key, &serde_json::json!({"kid": "7"}), &c);
    assert_eq!(
        validate(&no_alg, "db", &f.bundles, f.now),
        Err(JwtError::Algorithm)
    );
    let num = forge(&f.key, &serde_json::json!({"alg": 256, "kid": "7"}), &c);
    assert_eq!(
        validate(&num, "db", &f.bundles, f.now),
        Err(JwtError::Algorithm)
    );
    let twice = {
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","alg":"ES256","kid":"7"}"#);
        let signed = format!("{h}.{}", b64(&c));
        let sig = f
            .key
            .sign(&ring::rand::SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    };
    assert!(matches!(
        validate(&twice, "db", &f.bundles, f.now),
        Err(JwtError::Malformed(_))
    ));
    // `crit` and embedded keys: crit refused; an embedded jwk is never used.
    let crit = forge(
        &f.key,
        &serde_json::json!({"alg": "ES256", "kid": "7", "crit": ["exp"]}),
        &c,
    );
    assert!(validate(&crit, "db", &f.bundles, f.now).is_err());
    let other = pair();
    let embedded = forge(
        &other,
        &serde_json::json!({"alg": "ES256", "kid": "7", "jwk": {"kty": "EC"}}),
        &c,
    );
    assert_eq!(
        validate(&embedded, "db", &f.bundles, f.now),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn foreign_unknown_and_retired_keys_are_refused() {
    let f = fixture();
    let c = claims(&f);
    let other = pair();
    // Signed by a key not in the bundle, under the bundle's kid and under another.
    assert_eq!(
        validate(&forge(&other, &es256(), &c), "db", &f.bundles, f.now),
        Err(JwtError::BadSignature)
    );
    let unknown = serde_json::json!({"alg": "ES256", "kid": "8"});
    assert!(matches!(
        validate(&forge(&other, &unknown, &c), "db", &f.bundles, f.now),
        Err(JwtError::UnknownKey(_))
    ));
    // Another trust domain's subject is checked against that domain's keys (none here).
    let mut foreign = c.clone();
    foreign["sub"] = "spiffe://evil.org/ns/shop/web".into();
    assert!(matches!(
        validate(&forge(&f.key, &es256(), &foreign), "db", &f.bundles, f.now),
        Err(JwtError::UnknownTrustDomain(_))
    ));
    // A retired key verifies what it signed before its retirement, nothing after.
    let mut retired = JwtBundles::new();
    retired.insert(
        f.sub.trust_domain(),
        vec![JwtKey::from_point("7", f.key.public_key().as_ref(), Some(f.iat - 1)).unwrap()],
    );
    assert!(matches!(
        validate(&forge(&f.key, &es256(), &c), "db", &retired, f.now),
        Err(JwtError::KeyRetired(_))
    ));
    let mut before = c.clone();
    before["iat"] = (f.iat - 2).into();
    assert!(validate(&forge(&f.key, &es256(), &before), "db", &retired, f.now).is_ok());
}

#[test]
fn hostile_shapes_are_refused_without_panicking() {
    let f = fixture();
    let good = sign(&f.key, "7", &f.sub, &aud(&["db"]), f.iat, f.iat + 300).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let sig_std = STANDARD.encode(URL_SAFE_NO_PAD.decode(parts[2]).unwrap());
    let sig_padded = URL_SAFE.encode(URL_SAFE_NO_PAD.decode(parts[2]).unwrap());
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    let cases: Vec<String> = vec![
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}."),
        format!("{good}.{}", parts[2]),
        format!("{}..{}", parts[0], parts[2]),
        format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
        format!("{}.{}.{sig_std}", parts[0], parts[1]),
        format!("{}.{}.{sig_padded}", parts[0], parts[1]),
        format!(" {good}"),
        format!("{good}\n"),
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            &parts[2][..parts[2].len() - 2]
        ),
        format!("{}.{}.{}AA", parts[0], parts[1], parts[2]),
        long,
        "é.é.é".into(),
        format!(
            "{}.{}.{}",
            b64(&serde_json::json!([1, 2])),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            b64(&serde_json::json!("ES256")),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::json!(null)),
            parts[2]
        ),
        format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode("{"), parts[2]),
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode("[".repeat(4000)),
            parts[2]
        ),
    ];
    for t in &cases {
        assert!(
            validate(t, "db", &f.bundles, f.now).is_err(),
            "accepted {:?}",
            t.chars().take(80).collect::<String>()
        );
    }
    assert!(validate(&good, "db", &f.bundles, f.now).is_ok());
    // Claims a signer of ours never writes are refused even when signed.
    let mut bad = Vec::new();
    for (k, v) in [
        ("sub", serde_json::json!("spiffe://example.org")),
        ("sub", serde_json::json!("not a spiffe id")),
        ("sub", serde_json::json!(42)),
        ("aud", serde_json::json!([])),
        ("aud", serde_json::json!([42])),
        ("aud", serde_json::json!([""])),
        ("aud", serde_json::json!(null)),
        ("exp", serde_json::json!("soon")),
        ("exp", serde_json::json!(-1)),
        ("exp", serde_json::json!(1.5e12)),
        ("iat", serde_json::json!("now")),
    ] {
        let mut c = claims(&f);
        c[k] = v;
        bad.push(forge(&f.key, &es256(), &c));
    }
    let mut no_exp = claims(&f);
    no_exp.as_object_mut().unwrap().remove("exp");
    bad.push(forge(&f.key, &es256(), &no_exp));
    for (i, t) in bad.iter().enumerate() {
        assert!(validate(t, "db", &f.bundles, f.now).is_err(), "case {i}");
    }
    // A token re-signed over a changed claim (the signature no longer matches).
    let mut tampered = claims(&f);
    tampered["sub"] = "spiffe://example.org/ns/shop/admin".into();
    let t = format!("{}.{}.{}", parts[0], b64(&tampered), parts[2]);
    assert_eq!(
        validate(&t, "db", &f.bundles, f.now),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn audience_lists_are_bounded_and_normalized() {
    assert_eq!(audiences(&aud(&["b", "a", "b"])).unwrap(), aud(&["a", "b"]));
    assert!(audiences(&[]).is_err());
    assert!(audiences(&aud(&[""])).is_err());
    assert!(audiences(&["x".repeat(MAX_AUDIENCE_LEN + 1)]).is_err());
    assert!(audiences(&aud(&["a\nb"])).is_err());
    let many: Vec<String> = (0..=MAX_AUDIENCES).map(|i| i.to_string()).collect();
    assert!(audiences(&many).is_err());
}

#[test]
fn keys_parse_from_spki_and_print_as_jwk() {
    let k = pair();
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(k.public_key().as_ref());
    let key = JwtKey::from_spki("12", &spki, None).unwrap();
    let jwk = key.to_jwk();
    assert_eq!(jwk["kty"], "EC");
    assert_eq!(jwk["crv"], "P-256");
    assert_eq!(jwk["kid"], "12");
    assert_eq!(jwk["use"], "jwt-svid");
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(jwk["x"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    assert!(JwtKey::from_spki("12", &spki[1..], None).is_err());
    assert!(JwtKey::from_point("", k.public_key().as_ref(), None).is_err());
    let doc = jwks(&[key]);
    assert_eq!(doc["keys"].as_array().unwrap().len(), 1);
    let _ = TrustDomain::new("example.org").unwrap();
}
