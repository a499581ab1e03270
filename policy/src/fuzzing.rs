//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus replay test, so both
//! exercise exactly the same code. Each must never panic, whatever the input.

use std::time::{Duration, SystemTime};

use crate::rights::{NodeName, Operation, Resource};
use crate::spiffe::{SpiffeId, SpiffeIdPattern, TrustDomain};
use crate::svid::{SigningCa, TrustBundle, Usage, validate_svid};
use crate::token::{self, KeySet, NoRevocations, Request, RootKey, RootKeyId};

/// SPIFFE ID, trust domain, pattern, resource and node name parsing.
pub fn spiffe_id(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(s) {
        // A parsed ID round-trips and its parts re-parse.
        assert_eq!(id.as_str(), s);
        assert!(TrustDomain::new(id.trust_domain_name()).is_ok());
        assert_eq!(SpiffeId::parse(id.as_str()).ok(), Some(id.clone()));
    }
    let _ = TrustDomain::new(s);
    let _ = SpiffeIdPattern::parse(s);
    if let Ok(r) = Resource::parse(s) {
        assert!(r.covers(&r));
        assert!(
            r.covering_prefixes()
                .all(|p| Resource::parse(p).is_ok_and(|p| p.covers(&r)))
        );
    }
    let _ = NodeName::parse(s);
    let _ = s.parse::<Operation>();
}

/// Token decoding, inspection and authorization with a fixed key, against fixed requests.
pub fn token_authorize(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = token::inspect(s);
    // A fixed key: random input will not verify, but everything up to the signature check runs.
    let key = RootKey::from_private_text(
        RootKeyId(1),
        "ed25519-private/0101010101010101010101010101010101010101010101010101010101010101",
    );
    let Ok(key) = key else { return };
    let keys = KeySet::single(key.public());
    let resource = Resource::parse("ns/default/web").unwrap_or_default();
    let peer = SpiffeId::parse("spiffe://example.org/user/alice").ok();
    let node = NodeName::parse("n1").ok();
    let req = Request {
        operation: Operation::LogsRead,
        resource: &resource,
        peer: peer.as_ref(),
        node: node.as_ref(),
        time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    };
    let _ = token::authorize(s, &keys, &NoRevocations, &req, Default::default());
}

/// Certificate-chain validation: the input is split into DER certificates by a 2-byte length
/// prefix each, and validated against a fixed bundle.
pub fn svid_chain(data: &[u8]) {
    use rustls_pki_types::CertificateDer;
    let mut chain = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 && chain.len() < 10 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        let take = n.min(rest.len());
        chain.push(CertificateDer::from(rest[..take].to_vec()));
        rest = &rest[take..];
    }
    let _ = crate::svid::spiffe_id_of(data);
    let Some(bundle) = fixed_bundle() else { return };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = validate_svid(&chain, bundle, now, Usage::Client);
    let _ = validate_svid(&chain, bundle, now, Usage::Server);
}

fn fixed_bundle() -> Option<&'static TrustBundle> {
    static BUNDLE: std::sync::OnceLock<Option<TrustBundle>> = std::sync::OnceLock::new();
    BUNDLE
        .get_or_init(|| {
            let td = TrustDomain::new("example.org").ok()?;
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_799_000_000);
            let ca =
                SigningCa::self_signed(&td, "fuzz", Duration::from_secs(86400 * 30), now, None)
                    .ok()?;
            TrustBundle::new(td, vec![ca.cert_der().clone()]).ok()
        })
        .as_ref()
}
