#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;
use crate::rights::{NodeName, Operation, Resource, Right};
use crate::spiffe::SpiffeId;

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn res(s: &str) -> Resource {
    Resource::parse(s).unwrap()
}

fn alice() -> SpiffeId {
    id("spiffe://example.org/user/alice")
}

fn mint_for(key: &RootKey, rights: Vec<Right>, ttl: u64, bind: bool) -> String {
    mint(
        key,
        &MintRequest {
            subject: alice(),
            rights,
            ttl: Some(Duration::from_secs(ttl)),
            bind_to_subject: bind,
            bind_node: None,
        },
        &Lifetime::default(),
        t0(),
    )
    .unwrap()
}

#[allow(clippy::too_many_arguments)]
fn ask(
    token: &str,
    keys: &KeySet,
    revs: &HashSet<RevocationId>,
    op: Operation,
    resource: &str,
    peer: Option<&SpiffeId>,
    node: Option<&NodeName>,
    at: SystemTime,
) -> Decision {
    let r = res(resource);
    authorize(
        token,
        keys,
        revs,
        &Request {
            operation: op,
            resource: &r,
            peer,
            node,
            time: at,
        },
        Limits::default(),
    )
}

fn code(d: &Decision) -> &'static str {
    match d {
        Decision::Allow(_) => "allow",
        Decision::Deny(x) => x.code(),
    }
}

struct Fixture {
    key: RootKey,
    keys: KeySet,
    none: HashSet<RevocationId>,
}

fn fixture() -> Fixture {
    let key = RootKey::generate(RootKeyId(7));
    let keys = KeySet::single(key.public());
    Fixture {
        key,
        keys,
        none: HashSet::new(),
    }
}

#[test]
fn mint_allows_exactly_its_rights() {
    let f = fixture();
    let t = mint_for(
        &f.key,
        vec![
            Right::new(Operation::LogsRead, res("ns/a")),
            Right::new(Operation::NodeEvict, res("node")),
        ],
        600,
        false,
    );
    let a = alice();
    let at = t0();
    let d = ask(
        &t,
        &f.keys,
        &f.none,
        Operation::LogsRead,
        "ns/a/web",
        Some(&a),
        None,
        at,
    );
    let Decision::Allow(grant) = d else {
        panic!("{d:?}")
    };
    assert_eq!(grant.subject.as_deref(), Some(alice().as_str()));
    assert_eq!(grant.root_key_id, RootKeyId(7));
    assert_eq!(grant.revocation_ids.len(), 1);
    for (op, r, want) in [
        (Operation::LogsRead, "ns/a", "allow"),
        (Operation::LogsRead, "ns/ab", "no_matching_right"),
        (Operation::LogsRead, "ns", "no_matching_right"),
        (Operation::DebugAttach, "ns/a", "no_matching_right"),
        (Operation::NodeEvict, "node/n7", "allow"),
        (Operation::NodeEvict, "nodes/n7", "no_matching_right"),
    ] {
        assert_eq!(
            code(&ask(&t, &f.keys, &f.none, op, r, None, None, at)),
            want,
            "{op} {r}"
        );
    }
}

#[test]
fn empty_prefix_covers_everything() {
    let f = fixture();
    let t = mint_for(
        &f.key,
        vec![Right::new(Operation::AuditRead, Resource::root())],
        60,
        false,
    );
    for r in ["audit", "ns/x/y", ""] {
        assert_eq!(
            code(&ask(
                &t,
                &f.keys,
                &f.none,
                Operation::AuditRead,
                r,
                None,
                None,
                t0()
            )),
            "allow"
        );
    }
}

#[test]
fn expiry_is_exact() {
    let f = fixture();
    let t = mint_for(
        &f.key,
        vec![Right::new(Operation::LogsRead, Resource::root())],
        600,
        false,
    );
    let just_before = t0() + Duration::from_secs(599);
    let at_expiry = t0() + Duration::from_secs(600);
    assert_eq!(
        code(&ask(
            &t,
            &f.keys,
            &f.none,
            Operation::LogsRead,
            "x",
            None,
            None,
            just_before
        )),
        "allow"
    );
    let d = ask(
        &t,
        &f.keys,
        &f.none,
        Operation::LogsRead,
        "x",
        None,
        None,
        at_expiry,
    );
    assert_eq!(code(&d), "expired", "{d:?}");
    let Decision::Deny(Denial::CheckFailed { block, kind, .. }) = d else {
        panic!()
    };
    assert_eq!((block, kind), (0, CheckKind::Expiry));
}

#[test]
fn lifetime_default_and_cap() {
    let f = fixture();
    let lifetime = Lifetime {
        default: Duration::from_secs(300),
        max: Duration::from_secs(3600),
    };
    let req = MintRequest {
        subject: alice(),
        rights: vec![Right::new(Operation::LogsRead, Resource::root())],
        ttl: None,
        bind_to_subject: false,
        bind_node: None,
    };
    let t = mint(&f.key, &req, &lifetime, t0()).unwrap();
    let view = inspect(&t).unwrap();
    assert_eq!(view.expires_unix, Some(1_800_000_300));
    let too_long = MintRequest {
        ttl: Some(Duration::from_secs(3601)),
        ..req.clone()
    };
    assert!(matches!(
        mint(&f.key, &too_long, &lifetime, t0()),
        Err(TokenError::TtlAboveCap { .. })
    ));
    let zero = MintRequest {
        ttl: Some(Duration::ZERO),
        ..req.clone()
    };
    assert_eq!(
        mint(&f.key, &zero, &lifetime, t0()),
        Err(TokenError::TtlTooShort)
    );
    let no_rights = MintRequest {
        rights: vec![],
        ..req
    };
    assert_eq!(
        mint(&f.key, &no_rights, &lifetime, t0()),
        Err(TokenError::NoRights)
    );
}

#[test]
fn peer_binding_is_proof_of_possession() {
    let f = fixture();
    let t = mint_for(
        &f.key,
        vec![Right::new(Operation::LogsRead, Resource::root())],
        600,
        true,
    );
    let a = alice();
    let m = id("spiffe://example.org/user/mallory");
    assert_eq!(
        code(&ask(
            &t,
            &f.keys,
            &f.none,
            Operation::LogsRead,
            "x",
            Some(&a),
            None,
            t0()
        )),
        "allow"
    );
    assert_eq!(
        code(&ask(
            &t,
            &f.keys,
            &f.none,
            Operation::LogsRead,
            "x",
            Some(&m),
            None,
            t0()
        )),
        "peer_mismatch"
    );
    assert_eq!(
        code(&ask(
            &t,
            &f.keys,
            &f.none,
            Operation::LogsRead,
            "x",
            None,
            None,
            t0()
        )),
        "peer_mismatch"
    );
}

#[test]
fn attenuation_narrows_each_dimension() {
    let f = fixture();
    let parent = mint_for(
        &f.key,
        vec![
            Right::new(Operation::LogsRead, res("ns")),
            Right::new(Operation::DebugAttach, res("ns")),
        ],
        3600,
        false,
    );
    let deployer = id("spiffe://example.org/ns/ci/deployer");
    let n7 = NodeName::parse("n7").unwrap();
    let n8 = NodeName::parse("n8").unwrap();
    let child = attenuate(
        &parent,
        &Attenuation {
            ttl: Some(Duration::from_secs(60)),
            operations: vec![Operation::LogsRead],
            resource: Some(res("ns/default/web")),
            bind_peer: Some(deployer.clone()),
            bind_node: Some(n7.clone()),
        },
        t0(),
    )
    .unwrap();
    let ok = |op, r, peer: Option<&SpiffeId>, node: Option<&NodeName>, at| {
        code(&ask(&child, &f.keys, &f.none, op, r, peer, node, at))
    };
    let p = Some(&deployer);
    let n = Some(&n7);
    assert_eq!(
        ok(Operation::LogsRead, "ns/default/web/x", p, n, t0()),
        "allow"
    );
    assert_eq!(
        ok(Operation::DebugAttach, "ns/default/web", p, n, t0()),
        "operation_not_allowed"
    );
    assert_eq!(
        ok(Operation::LogsRead, "ns/default/webhook", p, n, t0()),
        "resource_not_allowed"
    );
    assert_eq!(
        ok(Operation::LogsRead, "ns/default", p, n, t0()),
        "resource_not_allowed"
    );
    assert_eq!(
        ok(
            Operation::LogsRead,
            "ns/default/web",
            Some(&alice()),
            n,
            t0()
        ),
        "peer_mismatch"
    );
    assert_eq!(
        ok(Operation::LogsRead, "ns/default/web", p, Some(&n8), t0()),
        "node_mismatch"
    );
    assert_eq!(
        ok(Operation::LogsRead, "ns/default/web", p, None, t0()),
        "node_mismatch"
    );
    assert_eq!(
        ok(
            Operation::LogsRead,
            "ns/default/web",
            p,
            n,
            t0() + Duration::from_secs(60)
        ),
        "expired"
    );
    // The parent is untouched.
    assert_eq!(
        code(&ask(
            &parent,
            &f.keys,
            &f.none,
            Operation::DebugAttach,
            "ns/x",
            None,
            None,
            t0()
        )),
        "allow"
    );
    // Attenuating to a later expiry cannot extend the token.
    let later = attenuate(
        &parent,
        &Attenuation {
            ttl: Some(Duration::from_secs(7200)),
            ..Default::default()
        },
        t0(),
    )
    .unwrap();
    assert_eq!(
        code(&ask(
            &later,
            &f.keys,
            &f.none,
            Operation::LogsRead,
            "ns",
            None,
            None,
            t0() + Duration::from_secs(3600)
        )),
        "expired"
    );
    assert_eq!(
        attenuate(&parent, &Attenuation::default(), t0()),
        Err(TokenError::EmptyAttenuation)
    );
}

#[test]
fn a_block_cannot_forge_rights_or_request_facts() {
    // Someone holding a token appends a block that states rights and request facts: refused
    // before evaluation (appended blocks hold checks only), whoever presents it.
    let f = fixture();
    let t = mint_for(
        &f.key,
        vec![Right::new(Operation::LogsRead, res("ns/a"))],
        600,
        true,
    );
    let unverified = decode_unverified(&t).unwrap();
    let forged = unverified
        .append(
            biscuit_auth::builder::BlockBuilder::new()
                .code(
                    r#"right("cluster", "cluster:admin", "");
                       resource_within("");
                       peer("spiffe://example.org/user/alice");"#,
                )
                .unwrap(),
        )
        .unwrap()
        .to_base64()
        .unwrap();
    let m = id("spiffe://example.org/user/mallory");
    let a = alice();
    assert_eq!(
        code(&ask(
            &forged,
            &f.keys,
            &f.none,
            Operation::ClusterAdmin,
            "cluster",
            Some(&a),
            None,
            t0()
        )),
        "unsupported_block"
    );
    assert_eq!(
        code(&ask(
            &forged,
            &f.keys,
            &f.none,
            Operation::LogsRead,
            "ns/a",
            Some(&m),
            None,
            t0()
        )),
        "unsupported_block"
    );
}

#[test]
fn revoking_the_last_block_kills_it_and_its_children_not_its_parent() {
    let f = fixture();
    let parent = mint_for(
        &f.key,
        vec![Right::new(Operation::LogsRead, Resource::root())],
        600,
        false,
    );
    let child = attenuate(
        &parent,
        &Attenuation {
            resource: Some(res("ns/a")),
            ..Default::default()
        },
        t0(),
    )
    .unwrap();
    let grandchild = attenuate(
        &child,
        &Attenuation {
            operations: vec![Operation::LogsRead],
            ..Default::default()
        },
        t0(),
    )
    .unwrap();
    let child_last = inspect(&child)
        .unwrap()
        .blocks
        .last()
        .unwrap()
        .revocation_id
        .clone();
    let revoked: HashSet<RevocationId> = [child_last.clone()].into();
    let q = |t: &str| {
        code(&ask(
            t,
            &f.keys,
            &revoked,
            Operation::LogsRead,
            "ns/a",
            None,
            None,
            t0(),
        ))
    };
    assert_eq!(q(&parent), "allow");
    assert_eq!(q(&child), "revoked");
    assert_eq!(q(&grandchild), "revoked");
    let Decision::Deny(Denial::Revoked { block, id }) = ask(
        &grandchild,
        &f.keys,
        &revoked,
        Operation::LogsRead,
        "ns/a",
        None,
        None,
        t0(),
    ) else {
        panic!()
    };
    assert_eq!((block, id), (1, child_last));
}

#[test]
fn root_keys_resolve_by_id() {
    let k1 = RootKey::generate(RootKeyId(1));
    let k2 = RootKey::generate(RootKeyId(2));
    let none = HashSet::new();
    let t2 = mint_for(
        &k2,
        vec![Right::new(Operation::LogsRead, Resource::root())],
        600,
        false,
    );
    let mut both = KeySet::single(k1.public());
    both.insert(k2.public());
    assert_eq!(
        code(&ask(
            &t2,
            &both,
            &none,
            Operation::LogsRead,
            "x",
            None,
            None,
            t0()
        )),
        "allow"
    );
    let only1 = KeySet::single(k1.public());
    assert_eq!(
        code(&ask(
            &t2,
            &only1,
            &none,
            Operation::LogsRead,
            "x",
            None,
            None,
            t0()
        )),
        "unknown_root_key"
    );
    // A different key registered under the token's id: the signature does not verify.
    let imposter = RootKey::generate(RootKeyId(2));
    let wrong = KeySet::single(imposter.public());
    assert_eq!(
        code(&ask(
            &t2,
            &wrong,
            &none,
            Operation::LogsRead,
            "x",
            None,
            None,
            t0()
        )),
        "bad_signature"
    );
}

#[test]
fn hostile_tokens_are_refused_cleanly() {
    let f = fixture();
    let good = mint_for(
        &f.key,
        vec![Right::new(Operation::LogsRead, Resource::root())],
        600,
        false,
    );
    let mut flipped = good.clone().into_bytes();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let truncated = &good[..good.len() - 10];
    let oversized = "A".repeat(MAX_TOKEN_LEN + 1);
    for (t, want) in [
        ("", "malformed"),
        ("not a token", "malformed"),
        ("!!!!", "malformed"),
        (truncated, "malformed"),
        (oversized.as_str(), "malformed"),
    ] {
        assert_eq!(
            code(&ask(
                t,
                &f.keys,
                &f.none,
                Operation::LogsRead,
                "x",
                None,
                None,
                t0()
            )),
            want
        );
    }
    let d = ask(
        &flipped,
        &f.keys,
        &f.none,
        Operation::LogsRead,
        "x",
        None,
        None,
        t0(),
    );
    assert!(!d.is_allowed(), "{d:?}");
    assert!(inspect("garbage").is_err());
    assert!(inspect(&oversized).is_err());
}

#[test]
fn too_many_blocks_are_refused() {
    let f = fixture();
    let mut t = mint_for(
        &f.key,
        vec![Right::new(Operation::LogsRead, Resource::root())],
        600,
        false,
    );
    let a = Attenuation {
        operations: vec![Operation::LogsRead],
        ..Default::default()
    };
    for _ in 1..MAX_BLOCKS {
        t = attenuate(&t, &a, t0()).unwrap();
    }
    assert_eq!(
        code(&ask(
            &t,
            &f.keys,
            &f.none,
            Operation::LogsRead,
            "x",
            None,
            None,
            t0()
        )),
        "allow"
    );
    assert!(matches!(
        attenuate(&t, &a, t0()),
        Err(TokenError::TooManyBlocks(_))
    ));
    // Appended by hand past the limit: refused when decoded.
    let over = decode_unverified(&t)
        .unwrap()
        .append(
            biscuit_auth::builder::BlockBuilder::new()
                .code("check if true;")
                .unwrap(),
        )
        .unwrap()
        .to_base64()
        .unwrap();
    assert_eq!(
        code(&ask(
            &over,
            &f.keys,
            &f.none,
            Operation::LogsRead,
            "x",
            None,
            None,
            t0()
        )),
        "malformed"
    );
}

#[test]
fn run_limits_bound_evaluation() {
    // Whitelisted blocks hold no rules, so no fact is ever generated and the fact and
    // iteration limits are never reached; the time limit still applies to every evaluation.
    let f = fixture();
    let rights: Vec<Right> = (0..20)
        .map(|i| Right::new(Operation::LogsRead, res(&format!("ns/n{i}"))))
        .collect();
    let t = mint_for(&f.key, rights, 600, false);
    let r = res("ns/n3");
    let req = Request {
        operation: Operation::LogsRead,
        resource: &r,
        peer: None,
        node: None,
        time: t0(),
    };
    assert_eq!(
        code(&authorize(&t, &f.keys, &f.none, &req, Limits::default())),
        "allow"
    );
    let tight = Limits {
        max_time: Duration::ZERO,
        ..Limits::default()
    };
    let d = authorize(&t, &f.keys, &f.none, &req, tight);
    assert_eq!(code(&d), "limits_exceeded", "{d:?}");
    // A block whose rules would generate many facts never reaches evaluation.
    let mut code_text = String::new();
    for i in 0..60 {
        code_text.push_str(&format!("n({i});\n"));
    }
    code_text.push_str("p($x, $y) <- n($x), n($y);\ncheck if true;\n");
    let heavy = decode_unverified(&t)
        .unwrap()
        .append(
            biscuit_auth::builder::BlockBuilder::new()
                .code(&code_text)
                .unwrap(),
        )
        .unwrap()
        .to_base64()
        .unwrap();
    let d = authorize(&heavy, &f.keys, &f.none, &req, Limits::default());
    assert_eq!(code(&d), "unsupported_block", "{d:?}");
}

#[test]
fn a_rule_chain_is_refused_before_evaluation_not_a_panic() {
    // Found by the fuzz corpus: each round derives one more fact, so evaluation stopped at the
    // iteration limit (and the subject query must not then evaluate again). Rules are now
    // refused before evaluation, on the uncached and the cached path alike.
    let f = fixture();
    let t = mint_for(
        &f.key,
        vec![Right::new(Operation::LogsRead, Resource::root())],
        600,
        false,
    );
    let mut chain = String::from("p0(1);\n");
    for i in (1..150).rev() {
        chain.push_str(&format!("p{i}($x) <- p{}($x);\n", i - 1));
    }
    let hostile = decode_unverified(&t)
        .unwrap()
        .append(
            biscuit_auth::builder::BlockBuilder::new()
                .code(&chain)
                .unwrap(),
        )
        .unwrap()
        .to_base64()
        .unwrap();
    let d = ask(
        &hostile,
        &f.keys,
        &f.none,
        Operation::LogsRead,
        "x",
        None,
        None,
        t0(),
    );
    assert_eq!(code(&d), "unsupported_block", "{d:?}");
    let cache = TokenCache::new(4);
    let r = Resource::root();
    let req = Request {
        operation: Operation::LogsRead,
        resource: &r,
        peer: None,
        node: None,
        time: t0(),
    };
    for _ in 0..2 {
        assert_eq!(
            code(&cache.authorize(&hostile, &f.keys, &f.none, &req, Limits::default())),
            "unsupported_block"
        );
    }
}

#[test]
fn inspect_shows_the_token() {
    let f = fixture();
    let n7 = NodeName::parse("n7").unwrap();
    let t = mint(
        &f.key,
        &MintRequest {
            subject: alice(),
            rights: vec![Right::new(Operation::SvidMint, res("node/n7"))],
            ttl: Some(Duration::from_secs(600)),
            bind_to_subject: true,
            bind_node: Some(n7),
        },
        &Lifetime::default(),
        t0(),
    )
    .unwrap();
    let t = attenuate(
        &t,
        &Attenuation {
            ttl: Some(Duration::from_secs(60)),
            ..Default::default()
        },
        t0(),
    )
    .unwrap();
    let v = inspect(&t).unwrap();
    assert_eq!(v.root_key_id, Some(7));
    assert_eq!(v.subject.as_deref(), Some(alice().as_str()));
    assert_eq!(v.rights.len(), 1);
    assert_eq!(v.rights[0].operation, "svid:mint");
    assert_eq!(v.rights[0].prefix, "node/n7");
    assert_eq!(v.expires_unix, Some(1_800_000_060));
    assert_eq!(v.expires.as_deref(), Some("2027-01-15T08:01:00Z"));
    assert_eq!(v.bound_peers, vec![alice().to_string()]);
    assert_eq!(v.bound_nodes, vec!["n7".to_string()]);
    assert_eq!(v.blocks.len(), 2);
    let human = v.to_string();
    assert!(human.contains("UNVERIFIED"));
    assert!(human.contains("svid:mint"));
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["subject"], alice().as_str());
    assert_eq!(
        json["blocks"][1]["revocation_id"].as_str().unwrap().len(),
        128
    );
}

#[test]
fn key_text_round_trips_and_is_not_debug_printed() {
    let k = RootKey::generate(RootKeyId(3));
    let text = k.private_text();
    assert!(text.starts_with("ed25519-private/"));
    let back = RootKey::from_private_text(RootKeyId(3), &text).unwrap();
    assert_eq!(back.public(), k.public());
    let hex_part = text.trim_start_matches("ed25519-private/");
    assert!(!format!("{k:?}").contains(hex_part));
    let public = PublicRootKey::from_text(RootKeyId(3), &k.public().to_text()).unwrap();
    assert_eq!(public, k.public());
    assert!(RootKey::from_private_text(RootKeyId(1), "ed25519-private/zz").is_err());
    assert!(RootKey::from_private_text(RootKeyId(1), "nonsense").is_err());
    assert!(PublicRootKey::from_text(RootKeyId(1), "ed25519/00").is_err());
}

#[test]
fn cache_hits_skip_verification_but_keep_every_check() {
    let f = fixture();
    let cache = TokenCache::new(16);
    let t = mint_for(
        &f.key,
        vec![Right::new(Operation::LogsRead, res("ns/a"))],
        600,
        true,
    );
    let a = alice();
    let r = res("ns/a/x");
    let req = Request {
        operation: Operation::LogsRead,
        resource: &r,
        peer: Some(&a),
        node: None,
        time: t0(),
    };
    assert!(
        cache
            .authorize(&t, &f.keys, &f.none, &req, Limits::default())
            .is_allowed()
    );
    let second = cache.authorize(&t, &f.keys, &f.none, &req, Limits::default());
    let Decision::Allow(g) = &second else {
        panic!()
    };
    assert_eq!(g.subject.as_deref(), Some(a.as_str()));
    assert_eq!(cache.stats(), (1, 1));
    // Datalog still runs on a hit.
    let m = id("spiffe://example.org/user/mallory");
    let stolen = Request {
        peer: Some(&m),
        ..req
    };
    assert_eq!(
        code(&cache.authorize(&t, &f.keys, &f.none, &stolen, Limits::default())),
        "peer_mismatch"
    );
    let late = Request {
        time: t0() + Duration::from_secs(600),
        ..req
    };
    assert_eq!(
        code(&cache.authorize(&t, &f.keys, &f.none, &late, Limits::default())),
        "expired"
    );
    // Revocation is seen on a hit, and the entry is forgotten.
    let rid = inspect(&t).unwrap().blocks[0].revocation_id.clone();
    let revoked: HashSet<RevocationId> = [rid].into();
    assert_eq!(
        code(&cache.authorize(&t, &f.keys, &revoked, &req, Limits::default())),
        "revoked"
    );
    assert_eq!(cache.len(), 0);
    // Key removal is seen on a hit.
    assert!(
        cache
            .authorize(&t, &f.keys, &f.none, &req, Limits::default())
            .is_allowed()
    );
    assert_eq!(cache.len(), 1);
    assert_eq!(
        code(&cache.authorize(&t, &KeySet::new(), &f.none, &req, Limits::default())),
        "unknown_root_key"
    );
    // forget_revoked frees entries eagerly.
    assert!(
        cache
            .authorize(&t, &f.keys, &f.none, &req, Limits::default())
            .is_allowed()
    );
    cache.forget_revoked(&revoked);
    assert!(cache.is_empty());
}

#[test]
fn cache_is_bounded() {
    let f = fixture();
    let cache = TokenCache::new(3);
    let r = Resource::root();
    let req = Request {
        operation: Operation::LogsRead,
        resource: &r,
        peer: None,
        node: None,
        time: t0(),
    };
    for i in 0..10 {
        let t = mint_for(
            &f.key,
            vec![Right::new(Operation::LogsRead, Resource::root())],
            60 + i,
            false,
        );
        assert!(
            cache
                .authorize(&t, &f.keys, &f.none, &req, Limits::default())
                .is_allowed()
        );
        assert!(cache.len() <= 3);
    }
}

// ---- property tests ----

const OPS: [Operation; 4] = [
    Operation::LogsRead,
    Operation::DebugAttach,
    Operation::SchedSubmit,
    Operation::NodeEvict,
];
const RESOURCES: [&str; 7] = ["", "ns", "ns/a", "ns/ab", "ns/a/x", "node", "node/n1"];
const PEERS: [&str; 2] = [
    "spiffe://example.org/user/alice",
    "spiffe://example.org/user/bob",
];
const NODES: [&str; 2] = ["n1", "n2"];

#[derive(Debug, Clone)]
struct Att {
    ttl: Option<u64>,
    ops: Vec<usize>,
    resource: Option<usize>,
    peer: Option<usize>,
    node: Option<usize>,
}

fn att_strategy() -> impl Strategy<Value = Att> {
    (
        proptest::option::of(1u64..200),
        proptest::collection::vec(0..OPS.len(), 0..3),
        proptest::option::of(0..RESOURCES.len()),
        proptest::option::of(0..PEERS.len()),
        proptest::option::of(0..NODES.len()),
    )
        .prop_map(|(ttl, ops, resource, peer, node)| Att {
            ttl,
            ops,
            resource,
            peer,
            node,
        })
}

fn to_attenuation(a: &Att) -> Attenuation {
    Attenuation {
        ttl: a.ttl.map(Duration::from_secs),
        operations: a.ops.iter().map(|&i| OPS[i]).collect(),
        resource: a.resource.map(|i| res(RESOURCES[i])),
        bind_peer: a.peer.map(|i| id(PEERS[i])),
        bind_node: a.node.map(|i| NodeName::parse(NODES[i]).unwrap()),
    }
}

#[derive(Debug, Clone)]
struct Req {
    op: usize,
    resource: usize,
    peer: Option<usize>,
    node: Option<usize>,
    dt: u64,
}

fn req_strategy() -> impl Strategy<Value = Req> {
    (
        0..OPS.len(),
        0..RESOURCES.len(),
        proptest::option::of(0..PEERS.len()),
        proptest::option::of(0..NODES.len()),
        0u64..400,
    )
        .prop_map(|(op, resource, peer, node, dt)| Req {
            op,
            resource,
            peer,
            node,
            dt,
        })
}

/// What a [`Request`] for `Req` borrows.
struct ReqParts {
    op: Operation,
    resource: Resource,
    peer: Option<SpiffeId>,
    node: Option<NodeName>,
    time: SystemTime,
}

impl ReqParts {
    fn of(r: &Req) -> Self {
        Self {
            op: OPS[r.op],
            resource: res(RESOURCES[r.resource]),
            peer: r.peer.map(|i| id(PEERS[i])),
            node: r.node.map(|i| NodeName::parse(NODES[i]).unwrap()),
            time: t0() + Duration::from_secs(r.dt),
        }
    }

    fn request(&self) -> Request<'_> {
        Request {
            operation: self.op,
            resource: &self.resource,
            peer: self.peer.as_ref(),
            node: self.node.as_ref(),
            time: self.time,
        }
    }
}

fn decide(token: &str, keys: &KeySet, revs: &HashSet<RevocationId>, r: &Req) -> Decision {
    let peer = r.peer.map(|i| id(PEERS[i]));
    let node = r.node.map(|i| NodeName::parse(NODES[i]).unwrap());
    ask(
        token,
        keys,
        revs,
        OPS[r.op],
        RESOURCES[r.resource],
        peer.as_ref(),
        node.as_ref(),
        t0() + Duration::from_secs(r.dt),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// No sequence of attenuations allows a request the original token refuses.
    #[test]
    fn attenuation_never_widens(
        rights in proptest::collection::vec((0..OPS.len(), 0..RESOURCES.len()), 1..4),
        chain in proptest::collection::vec(att_strategy(), 1..4),
        reqs in proptest::collection::vec(req_strategy(), 1..12),
    ) {
        let f = fixture();
        let rights = rights.iter().map(|&(o, r)| Right::new(OPS[o], res(RESOURCES[r]))).collect();
        let original = mint_for(&f.key, rights, 300, false);
        let mut tokens = vec![original.clone()];
        let mut current = original.clone();
        for a in &chain {
            let a = to_attenuation(a);
            if let Ok(next) = attenuate(&current, &a, t0()) {
                current = next;
                tokens.push(current.clone());
            }
        }
        for r in &reqs {
            // Each token may allow only what its parent allows.
            for pair in tokens.windows(2) {
                let child = decide(&pair[1], &f.keys, &f.none, r);
                if child.is_allowed() {
                    let parent = decide(&pair[0], &f.keys, &f.none, r);
                    prop_assert!(parent.is_allowed(), "child allowed {r:?} but parent: {parent:?}");
                }
            }
        }
    }

    /// For any token ringzero can produce — rights, then a chain of attenuations with every
    /// kind of check — and any request, a cache hit (evaluated from the blocks' shapes, see
    /// `token::native`) decides exactly as the uncached path (Datalog) does.
    #[test]
    fn cache_hits_agree_with_datalog_for_any_attenuation_chain(
        rights in proptest::collection::vec((0..OPS.len(), 0..RESOURCES.len()), 1..4),
        chain in proptest::collection::vec(att_strategy(), 0..4),
        reqs in proptest::collection::vec(req_strategy(), 1..16),
    ) {
        let f = fixture();
        let rights = rights.iter().map(|&(o, r)| Right::new(OPS[o], res(RESOURCES[r]))).collect();
        let mut token = mint_for(&f.key, rights, 300, false);
        for a in &chain {
            if let Ok(next) = attenuate(&token, &to_attenuation(a), t0()) {
                token = next;
            }
        }
        let cache = TokenCache::new(4);
        for r in &reqs {
            let parts = ReqParts::of(r);
            let req = parts.request();
            let fresh = authorize(&token, &f.keys, &f.none, &req, Limits::default());
            // The first call may verify; every later one is a hit.
            for _ in 0..2 {
                let cached = cache.authorize(&token, &f.keys, &f.none, &req, Limits::default());
                prop_assert_eq!(&cached, &fresh);
            }
        }
    }

    /// Whatever happens to keys and revocations, the cache decides exactly as the uncached
    /// path does — in particular it never turns a deny into an allow.
    #[test]
    fn cache_agrees_with_uncached_path(
        steps in proptest::collection::vec((0u8..5, 0usize..3, req_strategy()), 1..30),
    ) {
        let k1 = RootKey::generate(RootKeyId(1));
        let k2 = RootKey::generate(RootKeyId(2));
        let imposter = RootKey::generate(RootKeyId(1));
        let all = Right::new(Operation::LogsRead, Resource::root());
        let tokens = [
            mint_for(&k1, vec![all.clone(), Right::new(Operation::NodeEvict, res("node"))], 300, false),
            mint_for(&k2, vec![all.clone()], 100, true),
            attenuate(
                &mint_for(&k1, vec![all, Right::new(Operation::DebugAttach, res("ns/a"))], 300, false),
                &Attenuation { resource: Some(res("ns/a")), ..Default::default() },
                t0(),
            ).unwrap(),
        ];
        let mut keys = KeySet::single(k1.public());
        keys.insert(k2.public());
        let mut revs: HashSet<RevocationId> = HashSet::new();
        let cache = TokenCache::new(2);
        for (action, which, r) in steps {
            match action {
                0 | 1 => {
                    let parts = ReqParts::of(&r);
                    let req = parts.request();
                    let cached = cache.authorize(&tokens[which], &keys, &revs, &req, Limits::default());
                    let fresh = authorize(&tokens[which], &keys, &revs, &req, Limits::default());
                    prop_assert_eq!(cached, fresh);
                }
                2 => {
                    // Revoke one block of one token.
                    let blocks = inspect(&tokens[which]).unwrap().blocks;
                    revs.insert(blocks[r.op % blocks.len()].revocation_id.clone());
                }
                3 => {
                    // Remove or restore a key.
                    if which == 0 {
                        if keys.get(RootKeyId(1)).is_some() { keys.remove(RootKeyId(1)); } else { keys.insert(k1.public()); }
                    } else if keys.get(RootKeyId(2)).is_some() { keys.remove(RootKeyId(2)); } else { keys.insert(k2.public()); }
                }
                _ => {
                    // Replace key 1 by an imposter under the same id, or put it back.
                    if keys.get(RootKeyId(1)) == Some(&k1.public().key) { keys.insert(imposter.public()); } else { keys.insert(k1.public()); }
                }
            }
        }
    }
}
