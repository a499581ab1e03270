//! The capability check: raw biscuit-auth (the baseline) against ringzero's uncached and cached
//! paths, for tokens of 1, 3 and 5 blocks, measured in one group so the numbers are comparable.
//!
//! - `raw_biscuit/N`: `Biscuit::from_base64` + an authorizer stating exactly the facts and the
//!   allow policy ringzero states, with the same limits. The policy is parsed once, outside the
//!   loop, as ringzero does, so the difference is ringzero's own work (size bound, revocation
//!   lookup, key-id resolution, subject query, decision mapping).
//! - `ringzero_check/N`: `token::authorize` on first sight, against 1,000 revoked ids.
//! - `ringzero_cached/N`: `TokenCache::authorize` on a warm cache.
//!
//! And, in group `hostile_block`, the reported attack — one appended block of 18 facts and a
//! check joining six atoms, a minute of CPU per call before the block whitelist — refused,
//! against a normal 2-block token allowed, in the same run:
//!
//! - `normal_2_blocks`: `token::authorize` of a minted token with one attenuation block;
//! - `hostile_refused`: `token::authorize` of the attack token (denied `unsupported_block`);
//! - `hostile_refused_cached`: the same through a `TokenCache` (never cached: every call is a
//!   miss);
//! - `largest_accepted`: `token::authorize` of the largest token the whitelist accepts within
//!   16 KiB (256 rights, then blocks of 16 checks while they fit) on the deepest resource
//!   accepted (257 prefixes): the worst case the bound allows, allowed;
//! - `shape_check_2_blocks`: `token::check_shape` alone on the normal token — what the
//!   whitelist adds to every uncached authorization, beyond decoding, which
//!   `decode_only_2_blocks` (`token::revocation_ids`) measures.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::hint::black_box;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{Fact, Policy, Term};
use biscuit_auth::{AuthorizerBuilder, AuthorizerLimits, Biscuit, PublicKey};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringzero_policy::token::{
    self, Attenuation, KeySet, Lifetime, Limits, MintRequest, Request, RevocationId, RootKey,
    RootKeyId,
};
use ringzero_policy::{Operation, Resource, Right, SpiffeId, TokenCache};

const BLOCK_COUNTS: [usize; 3] = [1, 3, 5];
const ALICE: &str = "spiffe://example.org/user/alice";
const RESOURCE: &str = "ns/default/web";
const ALLOW_POLICY: &str =
    "allow if operation($op), right($sub, $op, $prefix), resource_within($prefix)";

/// A token of `blocks` blocks: an authority block with three rights, bound to alice, then
/// attenuation blocks that each narrow it in a different way but still allow the request.
fn token_with_blocks(root: &RootKey, blocks: usize, now: SystemTime) -> String {
    let alice = SpiffeId::parse(ALICE).unwrap();
    let mut t = token::mint(
        root,
        &MintRequest {
            subject: alice.clone(),
            rights: vec![
                Right::new(Operation::LogsRead, Resource::parse("ns/default").unwrap()),
                Right::new(Operation::SchedRead, Resource::parse("ns").unwrap()),
                Right::new(Operation::NodeRead, Resource::parse("node").unwrap()),
            ],
            ttl: Some(Duration::from_secs(3600)),
            bind_to_subject: true,
            bind_node: None,
        },
        &Lifetime::default(),
        now,
    )
    .unwrap();
    for i in 1..blocks {
        let a = match i % 4 {
            1 => Attenuation {
                ttl: Some(Duration::from_secs(1800)),
                operations: vec![Operation::LogsRead, Operation::SchedRead],
                ..Attenuation::default()
            },
            2 => Attenuation {
                resource: Some(Resource::parse("ns/default").unwrap()),
                ..Attenuation::default()
            },
            3 => Attenuation {
                bind_peer: Some(alice.clone()),
                ..Attenuation::default()
            },
            _ => Attenuation {
                operations: vec![Operation::LogsRead],
                resource: Some(Resource::parse(RESOURCE).unwrap()),
                ..Attenuation::default()
            },
        };
        t = token::attenuate(&t, &a, now).unwrap();
    }
    t
}

/// 1,000 random 64-byte ids (the size of an Ed25519 block signature), none of them ours.
fn revocation_set() -> HashSet<RevocationId> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    (0..1000)
        .map(|_| {
            let mut id = vec![0u8; 64];
            rng.fill(&mut id).unwrap();
            RevocationId(id)
        })
        .collect()
}

fn str_fact(name: &str, value: &str) -> Fact {
    Fact::new(name.to_owned(), vec![Term::Str(value.to_owned())])
}

/// The baseline: plain biscuit-auth, with the request facts and policy ringzero states.
fn raw_check(token: &str, key: PublicKey, policy: &Policy, now: SystemTime) -> bool {
    let biscuit = match Biscuit::from_base64(token, key) {
        Ok(b) => b,
        Err(_) => return false,
    };
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut builder = AuthorizerBuilder::new()
        .set_limits(AuthorizerLimits {
            max_facts: 1000,
            max_iterations: 100,
            max_time: Duration::from_millis(20),
        })
        .fact(str_fact("operation", "logs:read"))
        .unwrap()
        .fact(str_fact("resource", RESOURCE))
        .unwrap()
        .fact(Fact::new("time".to_owned(), vec![Term::Date(secs)]))
        .unwrap();
    for prefix in ["", "ns", "ns/default", RESOURCE] {
        builder = builder.fact(str_fact("resource_within", prefix)).unwrap();
    }
    let builder = builder
        .fact(str_fact("peer", ALICE))
        .unwrap()
        .policy(policy.clone())
        .unwrap();
    match builder.build(&biscuit) {
        Ok(mut authorizer) => authorizer.authorize().is_ok(),
        Err(_) => false,
    }
}

fn bench_check(c: &mut Criterion) {
    let now = SystemTime::now();
    let root = RootKey::generate(RootKeyId(7));
    let public = root.public();
    let keys = KeySet::single(public);
    let revocations = revocation_set();
    let policy = Policy::try_from(ALLOW_POLICY).unwrap();
    let alice = SpiffeId::parse(ALICE).unwrap();
    let resource = Resource::parse(RESOURCE).unwrap();
    let req = Request {
        operation: Operation::LogsRead,
        resource: &resource,
        peer: Some(&alice),
        node: None,
        time: now,
    };
    // The facts `raw_check` states by hand must be the ones ringzero states.
    assert_eq!(
        resource.covering_prefixes().collect::<Vec<_>>(),
        ["", "ns", "ns/default", RESOURCE]
    );

    let mut group = c.benchmark_group("capability_check");
    for blocks in BLOCK_COUNTS {
        let t = token_with_blocks(&root, blocks, now);
        let cache = TokenCache::new(1024);

        // Every variant must allow, or the bench would be measuring a (cheaper) deny.
        assert!(
            raw_check(&t, public.key, &policy, now),
            "raw biscuit denies the {blocks}-block token"
        );
        let d = token::authorize(&t, &keys, &revocations, &req, Limits::default());
        assert!(
            d.is_allowed(),
            "ringzero denies the {blocks}-block token: {d:?}"
        );
        let d = cache.authorize(&t, &keys, &revocations, &req, Limits::default());
        assert!(
            d.is_allowed(),
            "the cache denies the {blocks}-block token: {d:?}"
        );
        let d = cache.authorize(&t, &keys, &revocations, &req, Limits::default());
        assert!(
            d.is_allowed(),
            "the warm cache denies the {blocks}-block token: {d:?}"
        );
        assert_eq!(cache.stats(), (1, 1), "the cache is not warm");

        group.bench_with_input(BenchmarkId::new("raw_biscuit", blocks), &t, |b, t| {
            b.iter(|| raw_check(black_box(t), public.key, &policy, now))
        });
        group.bench_with_input(BenchmarkId::new("ringzero_check", blocks), &t, |b, t| {
            b.iter(|| {
                token::authorize(
                    black_box(t),
                    &keys,
                    &revocations,
                    black_box(&req),
                    Limits::default(),
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("ringzero_cached", blocks), &t, |b, t| {
            b.iter(|| {
                cache.authorize(
                    black_box(t),
                    &keys,
                    &revocations,
                    black_box(&req),
                    Limits::default(),
                )
            })
        });
        // Still warm after the timed runs: every timed call was a hit.
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.stats().1, 1, "the cached bench missed the cache");
    }
    group.finish();
}

/// The reported attack: the token with one block appended offline by its holder.
fn attack_token(t: &str) -> String {
    let mut code = String::new();
    for i in 0..18 {
        code.push_str(&format!("f({i});\n"));
    }
    code.push_str(
        "check if f($a), f($b), f($c), f($d), f($e), f($g), $a + $b + $c + $d + $e + $g == -1;",
    );
    biscuit_auth::UnverifiedBiscuit::from_base64(t)
        .unwrap()
        .append(
            biscuit_auth::builder::BlockBuilder::new()
                .code(&code)
                .unwrap(),
        )
        .unwrap()
        .to_base64()
        .unwrap()
}

/// The largest token the whitelist accepts within the size bound, allowing `logs:read` under
/// `ns/default`.
fn largest_token(root: &RootKey, now: SystemTime) -> String {
    let mut rights: Vec<Right> = (1..token::MAX_RIGHTS)
        .map(|i| {
            Right::new(
                Operation::LogsRead,
                Resource::parse(&format!("n{i}")).unwrap(),
            )
        })
        .collect();
    rights.push(Right::new(
        Operation::LogsRead,
        Resource::parse("ns/default").unwrap(),
    ));
    let mut t = token::mint(
        root,
        &MintRequest {
            subject: SpiffeId::parse(ALICE).unwrap(),
            rights,
            ttl: None,
            bind_to_subject: true,
            bind_node: None,
        },
        &Lifetime::default(),
        now,
    )
    .unwrap();
    let mut code = String::from(
        "check if time($t), $t <= 2100-01-01T00:00:00Z;\n\
         check if operation($op), {\"logs:read\", \"sched:read\"}.contains($op);\n\
         check if resource_within(\"ns/default\");\n",
    );
    for _ in 3..token::MAX_CHECKS_PER_BLOCK {
        code.push_str(&format!("check if peer(\"{ALICE}\");\n"));
    }
    loop {
        let next = biscuit_auth::UnverifiedBiscuit::from_base64(&t)
            .unwrap()
            .append(
                biscuit_auth::builder::BlockBuilder::new()
                    .code(&code)
                    .unwrap(),
            )
            .unwrap()
            .to_base64()
            .unwrap();
        if next.len() > token::MAX_TOKEN_LEN {
            return t;
        }
        t = next;
    }
}

fn bench_hostile(c: &mut Criterion) {
    let now = SystemTime::now();
    let root = RootKey::generate(RootKeyId(7));
    let keys = KeySet::single(root.public());
    let revocations = revocation_set();
    let alice = SpiffeId::parse(ALICE).unwrap();
    let resource = Resource::parse(RESOURCE).unwrap();
    let req = Request {
        operation: Operation::LogsRead,
        resource: &resource,
        peer: Some(&alice),
        node: None,
        time: now,
    };
    let normal = token_with_blocks(&root, 2, now);
    let hostile = attack_token(&token_with_blocks(&root, 1, now));
    let d = token::authorize(&normal, &keys, &revocations, &req, Limits::default());
    assert!(d.is_allowed(), "{d:?}");
    let refused = |t: &str, d: token::Decision| {
        let code = match &d {
            token::Decision::Deny(why) => why.code(),
            token::Decision::Allow(_) => "allow",
        };
        assert_eq!(code, "unsupported_block", "{t}: {d:?}");
    };
    refused(
        "uncached",
        token::authorize(&hostile, &keys, &revocations, &req, Limits::default()),
    );
    let cache = TokenCache::new(1024);
    let largest = largest_token(&root, now);
    let mut deep = String::from("ns/default");
    while deep.len() + 2 <= ringzero_policy::rights::MAX_RESOURCE_LEN {
        deep.push_str("/a");
    }
    let deep = Resource::parse(&deep).unwrap();
    let deep_req = Request {
        resource: &deep,
        ..req
    };
    let d = token::authorize(&largest, &keys, &revocations, &deep_req, Limits::default());
    assert!(d.is_allowed(), "{d:?}");

    let mut group = c.benchmark_group("hostile_block");
    group.bench_function("normal_2_blocks", |b| {
        b.iter(|| {
            token::authorize(
                black_box(&normal),
                &keys,
                &revocations,
                black_box(&req),
                Limits::default(),
            )
        })
    });
    group.bench_function("hostile_refused", |b| {
        b.iter(|| {
            token::authorize(
                black_box(&hostile),
                &keys,
                &revocations,
                black_box(&req),
                Limits::default(),
            )
        })
    });
    group.bench_function("hostile_refused_cached", |b| {
        b.iter(|| {
            cache.authorize(
                black_box(&hostile),
                &keys,
                &revocations,
                black_box(&req),
                Limits::default(),
            )
        })
    });
    group.bench_function("largest_accepted", |b| {
        b.iter(|| {
            token::authorize(
                black_box(&largest),
                &keys,
                &revocations,
                black_box(&deep_req),
                Limits::default(),
            )
        })
    });
    group.bench_function("shape_check_2_blocks", |b| {
        b.iter(|| token::check_shape(black_box(&normal)))
    });
    group.bench_function("decode_only_2_blocks", |b| {
        b.iter(|| token::revocation_ids(black_box(&normal)))
    });
    group.finish();
    refused(
        "cached",
        cache.authorize(&hostile, &keys, &revocations, &req, Limits::default()),
    );
    assert!(cache.is_empty(), "the attack token was cached");
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_check, bench_hostile
}
criterion_main!(benches);
