//! One-time join tokens and the trust-bundle pin they carry.
//!
//! A join token is `<id>.<secret>.<pin>`: a 128-bit id (hex) the authority looks the token up
//! by, a 256-bit secret (base64url) of which the authority stores only the SHA-256, and the pin:
//! the SHA-256 of the SubjectPublicKeyInfo of one CA in the trust bundle (as kubeadm pins its
//! CA). A joiner fetches the bundle, checks that a CA in it has the pinned key, and only then —
//! over TLS authenticated by that bundle — presents the secret.

use std::fmt;

use base64::Engine;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::FromDer;

/// Why a string is not a join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a join token ({0}); expected <id>.<secret>.<pin> as printed by the token command")]
pub struct JoinTokenError(&'static str);

/// A join token. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: [u8; 16],
    secret: zeroize::Zeroizing<[u8; 32]>,
    pub pin: [u8; 32],
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &hex::encode(self.id))
            .field("pin", &hex::encode(self.pin))
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// A fresh token with a random id and secret, pinned to `pin`.
    pub fn generate(pin: [u8; 32]) -> Result<Self, JoinTokenError> {
        use ring::rand::SecureRandom;
        let rng = ring::rand::SystemRandom::new();
        let mut id = [0u8; 16];
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill(&mut id)
            .map_err(|_| JoinTokenError("no randomness"))?;
        rng.fill(secret.as_mut())
            .map_err(|_| JoinTokenError("no randomness"))?;
        Ok(Self { id, secret, pin })
    }

    /// Parses `<id>.<secret>.<pin>`.
    pub fn parse(s: &str) -> Result<Self, JoinTokenError> {
        let s = s.trim();
        if s.len() > 256 {
            return Err(JoinTokenError("too long"));
        }
        let mut parts = s.split('.');
        let (Some(id), Some(secret), Some(pin), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JoinTokenError("wrong number of parts"));
        };
        let id: [u8; 16] = hex::decode(id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(JoinTokenError("bad id"))?;
        let secret_bytes = zeroize::Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(secret)
                .map_err(|_| JoinTokenError("bad secret"))?,
        );
        let mut secret_arr = zeroize::Zeroizing::new([0u8; 32]);
        if secret_bytes.len() != 32 {
            return Err(JoinTokenError("bad secret"));
        }
        secret_arr.copy_from_slice(&secret_bytes);
        let pin: [u8; 32] = hex::decode(pin)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(JoinTokenError("bad pin"))?;
        Ok(Self {
            id,
            secret: secret_arr,
            pin,
        })
    }

    /// The text form. Handle as a secret.
    pub fn to_text(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(format!(
            "{}.{}.{}",
            hex::encode(self.id),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.secret.as_ref()),
            hex::encode(self.pin)
        ))
    }

    /// The secret. Handle as a secret.
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    /// What the authority stores and compares: the SHA-256 of the secret.
    pub fn secret_sha256(&self) -> [u8; 32] {
        sha256(self.secret.as_ref())
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The pin of a CA certificate: the SHA-256 of its SubjectPublicKeyInfo.
pub fn ca_pin(ca_cert: &[u8]) -> Option<[u8; 32]> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(ca_cert).ok()?;
    Some(sha256(cert.public_key().raw))
}

/// Whether some CA in `bundle` has the pinned key.
pub fn pin_matches(pin: &[u8; 32], bundle: &[CertificateDer<'_>]) -> bool {
    bundle
        .iter()
        .filter_map(|c| ca_pin(c))
        .any(|p| bool::from(subtle::ConstantTimeEq::ct_eq(&p[..], &pin[..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hostile_forms() {
        let t = JoinToken::generate([9; 32]).unwrap();
        let text = t.to_text();
        let back = JoinToken::parse(&text).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.secret_sha256(), sha256(t.secret()));
        assert!(!format!("{t:?}").contains(text.split('.').nth(1).unwrap()));
        let parts: Vec<&str> = text.split('.').collect();
        for bad in [
            String::new(),
            "a.b".into(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{}.{}.{}.x", parts[0], parts[1], parts[2]),
            format!("zz{}.{}.{}", &parts[0][2..], parts[1], parts[2]),
            format!("{}.{}x.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}", parts[0], &parts[1][1..], parts[2]),
            format!("{}.{}.{}", parts[0], parts[1], &parts[2][2..]),
            "x".repeat(300),
        ] {
            assert!(JoinToken::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pins_match_only_their_ca() {
        let td = crate::TrustDomain::new("example.org").unwrap();
        let a = crate::testing::ca(&td, "a");
        let b = crate::testing::ca(&td, "b");
        let pin = ca_pin(a.cert_der()).unwrap();
        assert!(pin_matches(
            &pin,
            &[b.cert_der().clone(), a.cert_der().clone()]
        ));
        assert!(!pin_matches(&pin, &[b.cert_der().clone()]));
        assert!(!pin_matches(&pin, &[CertificateDer::from(vec![1, 2, 3])]));
        assert!(ca_pin(b"garbage").is_none());
    }
}
