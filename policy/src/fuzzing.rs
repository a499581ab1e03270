//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus replay test, so both
//! exercise exactly the same code. Each must never panic, whatever the input.

use std::time::{Duration, SystemTime};

use crate::TokenCache;
use crate::rights::{NodeName, Operation, Resource};
use crate::spiffe::{SpiffeId, SpiffeIdPattern, TrustDomain};
use crate::svid::{SigningCa, TrustBundle, Usage, validate_svid};
use crate::token::{
    self, Decision, Denial, KeySet, NoRevocations, Request, RootKey, RootKeyId, TokenError,
};

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

/// The private key that signs the checked-in token corpus (id 1), so that its tokens verify and
/// the fuzzer reaches evaluation. A test key: never use it for anything else.
pub const CORPUS_ROOT_KEY: &str =
    "ed25519-private/0101010101010101010101010101010101010101010101010101010101010101";
/// The time every fuzzed request is made at (2027-01-15T08:00:00Z).
pub const CORPUS_NOW_UNIX: u64 = 1_800_000_000;
/// The peer every fuzzed request is made by.
pub const CORPUS_PEER: &str = "spiffe://example.org/user/alice";

/// The corpus root key.
pub fn corpus_root_key() -> Option<RootKey> {
    RootKey::from_private_text(RootKeyId(1), CORPUS_ROOT_KEY).ok()
}

/// Token decoding, inspection and authorization with a fixed key, against fixed requests.
pub fn token_authorize(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    exercise_token(s);
}

/// The block whitelist, fed signed tokens whose blocks come from the input. The first byte
/// picks how the rest is used:
///
/// - 0: as the raw protobuf payload of a block appended (and signed) to a valid token;
/// - 1: as Datalog source for a block appended to a valid token;
/// - 2: as Datalog source for an authority block signed with the corpus key;
/// - 3: as token text.
///
/// Whatever the blocks hold, the whitelist's verdict must agree with `authorize`, `inspect`
/// and `expiry`, and no call may take long.
pub fn token_shape(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = match mode % 4 {
        0 => append_raw_block(rest),
        1 => std::str::from_utf8(rest).ok().and_then(append_block_source),
        2 => std::str::from_utf8(rest)
            .ok()
            .and_then(authority_from_source),
        _ => std::str::from_utf8(rest).ok().map(str::to_owned),
    };
    if let Some(token) = token {
        exercise_token(&token);
    }
}

/// A valid token signed by the corpus key, allowing the fixed request.
pub fn corpus_base_token() -> Option<&'static str> {
    static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let key = corpus_root_key()?;
            let req = token::MintRequest {
                subject: SpiffeId::parse(CORPUS_PEER).ok()?,
                rights: vec![crate::Right::new(Operation::LogsRead, Resource::root())],
                ttl: Some(Duration::from_secs(3600)),
                bind_to_subject: true,
                bind_node: None,
            };
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(CORPUS_NOW_UNIX - 60);
            token::mint(&key, &req, &token::Lifetime::default(), now).ok()
        })
        .as_deref()
}

/// Appends `payload` as a block of the corpus base token, signed as biscuit signs blocks.
pub fn append_raw_block(payload: &[u8]) -> Option<String> {
    use base64::Engine as _;
    let key = corpus_root_key()?;
    let base = biscuit_auth::Biscuit::from_base64(corpus_base_token()?, key.public().key).ok()?;
    let next = biscuit_auth::KeyPair::new_with_algorithm(biscuit_auth::Algorithm::Ed25519);
    let bytes = base
        .container()
        .append_serialized(&next, payload.to_vec(), None)
        .ok()?
        .to_vec()
        .ok()?;
    Some(base64::engine::general_purpose::URL_SAFE.encode(bytes))
}

/// Appends a block written in Datalog to the corpus base token.
pub fn append_block_source(source: &str) -> Option<String> {
    let block = biscuit_auth::builder::BlockBuilder::new()
        .code(source)
        .ok()?;
    biscuit_auth::UnverifiedBiscuit::from_base64(corpus_base_token()?)
        .ok()?
        .append(block)
        .ok()?
        .to_base64()
        .ok()
}

/// An authority block written in Datalog, signed by the corpus key.
pub fn authority_from_source(source: &str) -> Option<String> {
    let key = corpus_root_key()?;
    biscuit_auth::Biscuit::builder()
        .root_key_id(1)
        .code(source)
        .ok()?
        .build(key.pair())
        .ok()?
        .to_base64()
        .ok()
}

fn exercise_token(s: &str) {
    let shape = token::check_shape(s);
    let expiry = token::expiry(s);
    let view = token::inspect(s);
    let Some(key) = corpus_root_key() else { return };
    let keys = KeySet::single(key.public());
    let resource = Resource::parse("ns/default/web").unwrap_or_default();
    let peer = SpiffeId::parse(CORPUS_PEER).ok();
    let node = NodeName::parse("n1").ok();
    let req = Request {
        operation: Operation::LogsRead,
        resource: &resource,
        peer: peer.as_ref(),
        node: node.as_ref(),
        time: SystemTime::UNIX_EPOCH + Duration::from_secs(CORPUS_NOW_UNIX),
    };
    let start = std::time::Instant::now();
    let decision = token::authorize(s, &keys, &NoRevocations, &req, Default::default());
    let took = start.elapsed();
    // Generous, for a debug build on a loaded machine: an accepted shape evaluates in
    // milliseconds, and before the whitelist a hostile block took minutes.
    assert!(took < Duration::from_secs(2), "authorize took {took:?}");

    // The whitelist's verdict is the same everywhere it is consulted.
    let refused = matches!(&decision, Decision::Deny(Denial::UnsupportedBlock(_)));
    match &shape {
        Ok(()) => {
            assert!(!refused, "{decision:?}");
            assert!(expiry.is_ok());
            if let Ok(v) = &view {
                assert!(v.unsupported.is_none());
            }
        }
        Err(TokenError::Unsupported(_)) => {
            assert!(refused, "{decision:?}");
            assert!(matches!(expiry, Err(TokenError::Unsupported(_))));
            if let Ok(v) = &view {
                assert!(v.unsupported.is_some());
            }
        }
        Err(_) => assert!(!decision.is_allowed()),
    }
    // An expired token is never allowed.
    if let (Ok(Some(e)), true) = (&expiry, decision.is_allowed()) {
        assert!(*e > req.time, "allowed at {:?}, expiring {e:?}", req.time);
    }
    let timed_out = |d: &Decision| matches!(d, Decision::Deny(Denial::LimitExceeded(_)));
    // Reach agrees with the authorizer: an allowed request lies within a surviving right, and a
    // request within one — in time, from the bound peer, on the bound node, with signatures
    // that verify — is allowed.
    let reach = token::reach(s);
    match &shape {
        Ok(()) => assert!(reach.is_ok(), "{reach:?}"),
        Err(TokenError::Unsupported(_)) => {
            assert!(matches!(reach, Err(TokenError::Unsupported(_))));
        }
        Err(_) => assert!(reach.is_err()),
    }
    if let Ok(r) = &reach {
        let within = r.effective.iter().any(|x| {
            x.operation == req.operation.as_str()
                && Resource::parse(&x.prefix).is_ok_and(|p| p.covers(&resource))
        });
        if decision.is_allowed() {
            assert!(within, "allowed outside its reach: {r:?}");
        }
        let in_time = r.expires_unix.is_none_or(|e| e > CORPUS_NOW_UNIX);
        let bound_ok = r.bound_peers.iter().all(|p| p == CORPUS_PEER)
            && r.bound_nodes.iter().all(|n| n == "n1");
        let signed = token::verify_signature(s, &keys).is_ok();
        if within && in_time && bound_ok && signed && !timed_out(&decision) {
            assert!(
                decision.is_allowed(),
                "within reach, yet {decision:?}: {r:?}"
            );
        }
    }
    // The cache decides as the uncached path, on first sight and on a hit — unless a run hit
    // the time limit, which depends on the machine's load, not on the token.
    let cache = TokenCache::new(2);
    for _ in 0..2 {
        let cached = cache.authorize(s, &keys, &NoRevocations, &req, Default::default());
        if !timed_out(&cached) && !timed_out(&decision) {
            assert_eq!(cached, decision);
        }
    }
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

fn fixed_ca() -> Option<&'static SigningCa> {
    static CA: std::sync::OnceLock<Option<SigningCa>> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let td = TrustDomain::new("example.org").ok()?;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_799_000_000);
        SigningCa::self_signed(&td, "fuzz", Duration::from_secs(86400 * 30), now, None).ok()
    })
    .as_ref()
}

fn fixed_bundle() -> Option<&'static TrustBundle> {
    static BUNDLE: std::sync::OnceLock<Option<TrustBundle>> = std::sync::OnceLock::new();
    BUNDLE
        .get_or_init(|| {
            let ca = fixed_ca()?;
            TrustBundle::new(ca.trust_domain().clone(), vec![ca.cert_der().clone()]).ok()
        })
        .as_ref()
}

/// A workload's key as the CA receives it ([`SigningCa::issue`]): the first byte picks the
/// form (even: a PKCS#10 CSR, whose signature is verified; odd: a bare SubjectPublicKeyInfo),
/// the rest is that DER. Hostile keys and CSRs must be refused or certified, never panic.
pub fn svid_key(data: &[u8]) {
    use crate::svid::{LeafKey, LeafRequest};
    let Some((&form, der)) = data.split_first() else {
        return;
    };
    let Some(ca) = fixed_ca() else { return };
    let Ok(id) = SpiffeId::parse("spiffe://example.org/ns/fuzz/w") else {
        return;
    };
    let key = if form % 2 == 0 {
        LeafKey::Csr(der)
    } else {
        LeafKey::PublicKey(der)
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_799_000_100);
    let _ = ca.issue(&LeafRequest {
        id: &id,
        key,
        ttl: Duration::from_secs(3600),
        dns_names: &[],
        now,
    });
}

/// JWT-SVID validation ([`crate::jwt::validate`]). The first byte picks the mode: `0`, the rest
/// is a token as received; `1`, the rest is `header JSON \n claims JSON`, encoded and signed
/// with the bundle's key before validation, so that the fuzzer reaches the checks after the
/// signature. A token accepted must name the audience and the bundle's trust domain.
pub fn jwt_validate(data: &[u8]) {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    static KEY: std::sync::OnceLock<Option<EcdsaKeyPair>> = std::sync::OnceLock::new();
    let Some(key) = KEY.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).ok()?;
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).ok()
    }) else {
        return;
    };
    let Ok(td) = TrustDomain::new("example.org") else {
        return;
    };
    let Ok(jwt_key) = crate::jwt::JwtKey::from_point("1", key.public_key().as_ref(), None) else {
        return;
    };
    let mut bundles = crate::jwt::JwtBundles::new();
    bundles.insert(td.clone(), vec![jwt_key]);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let token = match data.split_first() {
        Some((1, rest)) => {
            let mut halves = rest.splitn(2, |b| *b == b'\n');
            let (Some(h), Some(c)) = (halves.next(), halves.next()) else {
                return;
            };
            let signed = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(h),
                URL_SAFE_NO_PAD.encode(c)
            );
            let Ok(sig) = key.sign(&ring::rand::SystemRandom::new(), signed.as_bytes()) else {
                return;
            };
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }
        Some((_, rest)) => String::from_utf8_lossy(rest).into_owned(),
        None => return,
    };
    if let Ok(claims) = crate::jwt::validate(&token, "db", &bundles, now) {
        assert!(claims.audience.iter().any(|a| a == "db"));
        assert!(claims.subject.is_member_of(&td));
        assert!(claims.expires_at > 1_800_000_000);
    }
}
