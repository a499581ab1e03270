//! The block whitelist: hostile blocks are refused before any Datalog runs, quickly and with a
//! typed denial; tokens from `mint` + `attenuate` still authorize; `token::expiry` finds the
//! earliest expiry of every block.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use biscuit_auth::builder::BlockBuilder;
use biscuit_auth::{Biscuit, KeyPair, UnverifiedBiscuit};
use proptest::prelude::*;
use ringzero_policy::token::{
    self, Attenuation, Decision, KeySet, Lifetime, Limits, MAX_CHECKS_PER_BLOCK, MAX_RIGHTS,
    MAX_SET_LEN, MintRequest, Request, RevocationId, RootKey, RootKeyId, TokenError,
};
use ringzero_policy::{NodeName, Operation, Resource, Right, SpiffeId, TokenCache};

/// Every refusal here must be this quick, on a loaded machine, in a debug build of ringzero.
const BOUND: Duration = Duration::from_millis(50);
/// The largest token the whitelist accepts, evaluated in full (the release figure is in the
/// `token` bench, `hostile_block/largest_accepted`): generous, for a debug build of ringzero on
/// a loaded 2-core machine — what matters is that it is milliseconds, not minutes.
const LARGEST_BOUND: Duration = Duration::from_millis(250);
const ALICE: &str = "spiffe://example.org/user/alice";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

struct Fixture {
    key: RootKey,
    keys: KeySet,
    none: HashSet<RevocationId>,
    token: String,
}

fn fixture() -> Fixture {
    let key = RootKey::generate(RootKeyId(7));
    let keys = KeySet::single(key.public());
    let token = token::mint(
        &key,
        &MintRequest {
            subject: SpiffeId::parse(ALICE).unwrap(),
            rights: vec![Right::new(Operation::LogsRead, Resource::root())],
            ttl: Some(Duration::from_secs(600)),
            bind_to_subject: true,
            bind_node: None,
        },
        &Lifetime::default(),
        t0(),
    )
    .unwrap();
    Fixture {
        key,
        keys,
        none: HashSet::new(),
        token,
    }
}

/// Appends a block written in Datalog to `token`, offline, as any holder can.
fn append(token: &str, code: &str) -> String {
    UnverifiedBiscuit::from_base64(token)
        .unwrap()
        .append(BlockBuilder::new().code(code).unwrap())
        .unwrap()
        .to_base64()
        .unwrap()
}

/// Run limits for calls expected to allow: the wall time is what these tests bound; a generous
/// time limit keeps a descheduled thread on a loaded machine from turning an allow into a
/// `limits_exceeded`.
fn patient() -> Limits {
    Limits {
        max_time: Duration::from_secs(2),
        ..Limits::default()
    }
}

/// Authorizes alice's `logs:read` on `ns/default/web` at t0, timing the call.
fn timed(f: &Fixture, token: &str) -> (Decision, Duration) {
    let alice = SpiffeId::parse(ALICE).unwrap();
    let resource = Resource::parse("ns/default/web").unwrap();
    let n1 = NodeName::parse("n1").unwrap();
    let req = Request {
        operation: Operation::LogsRead,
        resource: &resource,
        peer: Some(&alice),
        node: Some(&n1),
        time: t0(),
    };
    let start = Instant::now();
    let d = token::authorize(token, &f.keys, &f.none, &req, patient());
    (d, start.elapsed())
}

fn code(d: &Decision) -> &'static str {
    match d {
        Decision::Allow(_) => "allow",
        Decision::Deny(x) => x.code(),
    }
}

/// The block of the reported attack: 18 facts and one check joining six atoms that never
/// match, about 34 million combinations (a minute of CPU per call before the whitelist).
fn attack_block(facts: usize) -> String {
    let mut s = String::new();
    for i in 0..facts {
        s.push_str(&format!("f({i});\n"));
    }
    s.push_str(
        "check if f($a), f($b), f($c), f($d), f($e), f($g), \
         $a + $b + $c + $d + $e + $g == -1;\n",
    );
    s
}

#[test]
fn the_reported_attack_block_is_refused_before_evaluation() {
    let f = fixture();
    for facts in [18, 40] {
        let hostile = append(&f.token, &attack_block(facts));
        let (d, took) = timed(&f, &hostile);
        assert_eq!(code(&d), "unsupported_block", "{d:?}");
        assert!(took < BOUND, "{facts} facts: took {took:?}");
        let Decision::Deny(why) = &d else { panic!() };
        let text = why.to_string();
        assert!(text.contains("block 1"), "{text}");
        assert!(text.contains("a fact in an appended block"), "{text}");
        assert!(
            !text.contains(&hostile),
            "a denial never contains the token"
        );

        // The cached path refuses it as fast, every time, and never caches it.
        let cache = TokenCache::new(8);
        let alice = SpiffeId::parse(ALICE).unwrap();
        let r = Resource::parse("ns/default/web").unwrap();
        let req = Request {
            operation: Operation::LogsRead,
            resource: &r,
            peer: Some(&alice),
            node: None,
            time: t0(),
        };
        for _ in 0..3 {
            let start = Instant::now();
            let d = cache.authorize(&hostile, &f.keys, &f.none, &req, Limits::default());
            assert_eq!(code(&d), "unsupported_block");
            assert!(start.elapsed() < BOUND);
        }
        assert_eq!(cache.len(), 0);
    }
}

#[test]
fn hostile_appended_blocks_are_refused_with_their_code() {
    let f = fixture();
    let ops65: Vec<String> = (0..MAX_SET_LEN + 1).map(|i| format!("\"op{i}\"")).collect();
    let ops64: Vec<String> = (0..MAX_SET_LEN).map(|i| format!("\"op{i}\"")).collect();
    let checks17 =
        "check if peer(\"spiffe://example.org/user/alice\");\n".repeat(MAX_CHECKS_PER_BLOCK + 1);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a fact",
            "right(\"cluster\", \"cluster:admin\", \"\");".into(),
            "unsupported_block",
        ),
        (
            "a request fact",
            "peer(\"spiffe://example.org/user/alice\");".into(),
            "unsupported_block",
        ),
        (
            "a rule",
            "p($t) <- time($t);\ncheck if p($t);".into(),
            "unsupported_block",
        ),
        (
            "a rule without checks",
            "q(1) <- time($t);".into(),
            "unsupported_block",
        ),
        (
            "a trusting scope on a check, by key",
            "check if peer(\"spiffe://example.org/user/alice\") trusting ed25519/\
             acdd6d5b53bfee478bf689f90a1d1f6e5fd7cebbaee9a4bdfa8ad0bd2ed0b7e0;"
                .into(),
            "unsupported_block",
        ),
        (
            "a trusting scope on a check",
            "check if peer(\"spiffe://example.org/user/alice\") trusting previous;".into(),
            "unsupported_block",
        ),
        (
            "`or true` after a time check",
            "check if time($t), $t < 2030-01-01T00:00:00Z or true;".into(),
            "unsupported_block",
        ),
        (
            "`|| true` inside a time check",
            "check if time($t), $t < 2030-01-01T00:00:00Z || true;".into(),
            "unsupported_block",
        ),
        (
            "a time check with `>`",
            "check if time($t), $t > 2020-01-01T00:00:00Z;".into(),
            "unsupported_block",
        ),
        (
            "a time check on another variable",
            "check if time($t), $u < 2030-01-01T00:00:00Z;".into(),
            "unsupported_block",
        ),
        (
            "check all",
            "check all time($t), $t < 2030-01-01T00:00:00Z;".into(),
            "unsupported_block",
        ),
        (
            "reject if",
            "reject if peer(\"spiffe://example.org/user/bob\");".into(),
            "unsupported_block",
        ),
        (
            "check if true",
            "check if true;".into(),
            "unsupported_block",
        ),
        (
            "a two-predicate join",
            "check if peer($p), node($n);".into(),
            "unsupported_block",
        ),
        (
            "an operation set of integers",
            "check if operation($op), {1, 2}.contains($op);".into(),
            "unsupported_block",
        ),
        (
            "an operation array instead of a set",
            "check if operation($op), [\"logs:read\"].contains($op);".into(),
            "unsupported_block",
        ),
        (
            "an operation check with another method",
            "check if operation($op), $op.starts_with(\"logs\");".into(),
            "unsupported_block",
        ),
        (
            "a peer check on a variable",
            "check if peer($p);".into(),
            "unsupported_block",
        ),
        (
            "a resource check with two terms",
            "check if resource_within(\"ns\", \"x\");".into(),
            "unsupported_block",
        ),
        (
            "an unknown predicate",
            "check if resource(\"ns/default/web\");".into(),
            "unsupported_block",
        ),
        (
            "an oversized set",
            format!(
                "check if operation($op), {{{}}}.contains($op);",
                ops65.join(", ")
            ),
            "limits_exceeded",
        ),
        ("too many checks", checks17, "limits_exceeded"),
    ];
    for (name, block, want) in &cases {
        let hostile = append(&f.token, block);
        assert!(token::check_shape(&hostile).is_err(), "{name}");
        let (d, took) = timed(&f, &hostile);
        assert_eq!(code(&d), *want, "{name}: {d:?}");
        assert!(took < BOUND, "{name}: took {took:?}");
        // attenuate refuses to extend it; inspect shows it, flagged; expiry refuses it.
        let a = Attenuation {
            ttl: Some(Duration::from_secs(60)),
            ..Attenuation::default()
        };
        assert!(
            matches!(
                token::attenuate(&hostile, &a, t0()),
                Err(TokenError::Unsupported(_))
            ),
            "{name}"
        );
        let view = token::inspect(&hostile).unwrap();
        assert!(view.unsupported.is_some(), "{name}");
        assert!(view.rights.is_empty() && view.subject.is_none() && view.expires_unix.is_none());
        assert_eq!(view.blocks.len(), 2);
        assert!(view.to_string().contains("UNSUPPORTED"), "{name}");
        assert!(matches!(
            token::expiry(&hostile),
            Err(TokenError::Unsupported(_))
        ));
    }
    // At the caps, not past them: accepted.
    let at_caps = append(
        &f.token,
        &format!(
            "check if operation($op), {{\"logs:read\", {}}}.contains($op);\n{}",
            ops64[1..].join(", "),
            "check if peer(\"spiffe://example.org/user/alice\");\n"
                .repeat(MAX_CHECKS_PER_BLOCK - 1)
        ),
    );
    assert_eq!(code(&timed(&f, &at_caps).0), "allow");
}

#[test]
fn block_scopes_are_refused() {
    let f = fixture();
    let other = KeyPair::new().public();
    for scope in [
        biscuit_auth::builder::Scope::Previous,
        biscuit_auth::builder::Scope::Authority,
        biscuit_auth::builder::Scope::PublicKey(other),
    ] {
        let block = BlockBuilder::new()
            .code(format!("check if peer(\"{ALICE}\");"))
            .unwrap()
            .scope(scope);
        let hostile = UnverifiedBiscuit::from_base64(&f.token)
            .unwrap()
            .append(block)
            .unwrap()
            .to_base64()
            .unwrap();
        let (d, took) = timed(&f, &hostile);
        assert_eq!(code(&d), "unsupported_block", "{d:?}");
        assert!(took < BOUND);
    }
}

#[test]
fn third_party_blocks_are_refused() {
    let f = fixture();
    let unverified = UnverifiedBiscuit::from_base64(&f.token).unwrap();
    let external = KeyPair::new();
    let block = unverified
        .third_party_request()
        .unwrap()
        .create_block(
            &external.private(),
            BlockBuilder::new()
                .code("check if peer(\"spiffe://example.org/user/alice\");")
                .unwrap(),
        )
        .unwrap();
    let hostile = unverified
        .append_third_party(&block.serialize().unwrap())
        .unwrap()
        .to_base64()
        .unwrap();
    let (d, took) = timed(&f, &hostile);
    assert_eq!(code(&d), "unsupported_block", "{d:?}");
    assert!(d_text(&d).contains("third-party signature"));
    assert!(took < BOUND);
}

fn d_text(d: &Decision) -> String {
    match d {
        Decision::Deny(x) => x.to_string(),
        Decision::Allow(_) => "allow".into(),
    }
}

/// An authority block written by a root-key holder, by hand.
fn raw_authority(f: &Fixture, code: &str) -> String {
    Biscuit::builder()
        .root_key_id(7)
        .code(code)
        .unwrap()
        .build(&key_pair(&f.key))
        .unwrap()
        .to_base64()
        .unwrap()
}

fn key_pair(k: &RootKey) -> KeyPair {
    KeyPair::from(
        &k.private_text()
            .parse::<biscuit_auth::PrivateKey>()
            .unwrap(),
    )
}

#[test]
fn the_authority_block_is_held_to_what_mint_writes() {
    let f = fixture();
    let subject = format!("subject(\"{ALICE}\");\n");
    let right = "right(\"logs\", \"logs:read\", \"\");\n";
    let expiry = "check if time($time), $time < 2027-01-15T08:10:00Z;\n";
    // What mint writes, and `<=`, are accepted.
    for ok in [
        format!("{subject}{right}{expiry}"),
        format!("{subject}{right}check if time($time), $time <= 2027-01-15T08:10:00Z;\n"),
        format!("{subject}{right}{expiry}check if peer(\"{ALICE}\");\ncheck if node(\"n1\");\n"),
    ] {
        assert_eq!(code(&timed(&f, &raw_authority(&f, &ok)).0), "allow", "{ok}");
    }
    let many_rights: String = (0..MAX_RIGHTS)
        .map(|i| format!("right(\"logs\", \"logs:read\", \"ns/n{i}\");\n"))
        .collect();
    let over = format!("{subject}{many_rights}{right}{expiry}");
    let at_cap = format!("{subject}{}{expiry}", many_rights.replacen("ns/n0", "", 1));
    assert_eq!(code(&timed(&f, &raw_authority(&f, &at_cap)).0), "allow");
    for (name, block, want) in [
        (
            "a rule",
            format!("{subject}{right}{expiry}p($x) <- right($a, $x, $b);"),
            "unsupported_block",
        ),
        (
            "another fact",
            format!("{subject}{right}{expiry}operation(\"logs:read\");"),
            "unsupported_block",
        ),
        (
            "no subject",
            format!("{right}{expiry}"),
            "unsupported_block",
        ),
        (
            "two subjects",
            format!("{subject}{subject}{right}{expiry}").replacen(
                ALICE,
                "spiffe://example.org/user/bob",
                1,
            ),
            "unsupported_block",
        ),
        (
            "a right of the wrong arity",
            format!("{subject}right(\"logs:read\", \"\");\n{expiry}"),
            "unsupported_block",
        ),
        (
            "a resource check",
            format!("{subject}{right}{expiry}check if resource_within(\"ns\");"),
            "unsupported_block",
        ),
        (
            "a join",
            format!("{subject}{right}check if right($a, $b, $c), right($c, $b, $a);"),
            "unsupported_block",
        ),
        ("too many rights", over, "limits_exceeded"),
    ] {
        let (d, took) = timed(&f, &raw_authority(&f, &block));
        assert_eq!(code(&d), want, "{name}: {d:?}");
        assert!(d_text(&d).contains("block 0"), "{name}");
        assert!(took < BOUND, "{name}");
    }
    // mint refuses to write what would be refused.
    let too_many = MintRequest {
        subject: SpiffeId::parse(ALICE).unwrap(),
        rights: (0..=MAX_RIGHTS)
            .map(|i| {
                Right::new(
                    Operation::LogsRead,
                    Resource::parse(&format!("ns/n{i}")).unwrap(),
                )
            })
            .collect(),
        ttl: None,
        bind_to_subject: false,
        bind_node: None,
    };
    assert_eq!(
        token::mint(&f.key, &too_many, &Lifetime::default(), t0()),
        Err(TokenError::TooManyRights(MAX_RIGHTS + 1))
    );
}

#[test]
fn the_largest_accepted_token_authorizes_within_the_bound() {
    // The worst a holder can present within the whitelist: every right the authority block
    // may hold, then as many blocks of MAX_CHECKS_PER_BLOCK checks as the size bound allows.
    let f = fixture();
    let mut rights: Vec<Right> = (1..MAX_RIGHTS)
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
        &f.key,
        &MintRequest {
            subject: SpiffeId::parse(ALICE).unwrap(),
            rights,
            ttl: None,
            bind_to_subject: true,
            bind_node: None,
        },
        &Lifetime::default(),
        t0(),
    )
    .unwrap();
    let block = format!(
        "check if time($t), $t <= 2030-01-01T00:00:00Z;\n\
         check if operation($op), {{\"logs:read\", \"sched:read\"}}.contains($op);\n\
         check if resource_within(\"ns/default\");\n{}",
        format!("check if peer(\"{ALICE}\");\n").repeat(MAX_CHECKS_PER_BLOCK - 3)
    );
    let mut blocks = 1;
    loop {
        let next = append(&t, &block);
        if next.len() > token::MAX_TOKEN_LEN || blocks == token::MAX_BLOCKS {
            break;
        }
        t = next;
        blocks += 1;
    }
    assert!(blocks >= 8, "only {blocks} blocks fit");
    let (d, took) = timed(&f, &t);
    assert_eq!(code(&d), "allow", "{d:?}");
    assert!(took < LARGEST_BOUND, "{blocks} blocks: took {took:?}");
    // And on the deepest resource accepted: one `resource_within` fact per prefix.
    let mut deep = String::from("ns/default");
    while deep.len() + 2 <= ringzero_policy::rights::MAX_RESOURCE_LEN {
        deep.push_str("/a");
    }
    let deep = Resource::parse(&deep).unwrap();
    assert!(deep.covering_prefixes().count() > 250);
    let alice = SpiffeId::parse(ALICE).unwrap();
    let req = Request {
        operation: Operation::LogsRead,
        resource: &deep,
        peer: Some(&alice),
        node: None,
        time: t0(),
    };
    let start = Instant::now();
    let d = token::authorize(&t, &f.keys, &f.none, &req, patient());
    let took = start.elapsed();
    assert!(d.is_allowed(), "{d:?}");
    assert!(took < LARGEST_BOUND, "deepest resource: took {took:?}");
    eprintln!(
        "largest accepted token: {blocks} blocks, {} bytes, deepest resource: {took:?}",
        t.len()
    );
}

#[test]
fn blocks_are_read_structurally_not_from_printed_datalog() {
    // biscuit prints string literals unescaped, so printed Datalog is ambiguous: this block
    // holds ONE peer check on an odd string, and prints as what re-parses as two checks.
    let f = fixture();
    let odd = append(&f.token, r#"check if peer("x\"); check if peer(\"y");"#);
    let view = token::inspect(&odd).unwrap();
    let reparsed = BlockBuilder::new().code(&view.blocks[1].source).unwrap();
    assert_eq!(reparsed.checks.len(), 2, "{}", view.blocks[1].source);
    // The whitelist and inspect read the one check that is evaluated.
    assert!(token::check_shape(&odd).is_ok());
    assert_eq!(
        view.bound_peers,
        vec![ALICE.to_owned(), r#"x"); check if peer("y"#.to_owned()]
    );
    assert_eq!(code(&timed(&f, &odd).0), "peer_mismatch");
}

#[test]
fn expiry_is_the_earliest_of_every_block() {
    let f = fixture();
    let minted_expiry = t0() + Duration::from_secs(600);
    assert_eq!(token::expiry(&f.token).unwrap(), Some(minted_expiry));

    // Only in an appended block (`<`, as attenuate writes it).
    let narrowed = token::attenuate(
        &f.token,
        &Attenuation {
            ttl: Some(Duration::from_secs(60)),
            ..Attenuation::default()
        },
        t0(),
    )
    .unwrap();
    assert_eq!(
        token::expiry(&narrowed).unwrap(),
        Some(t0() + Duration::from_secs(60))
    );
    // A later expiry in a later block changes nothing.
    let later = append(&narrowed, "check if time($t), $t < 2030-01-01T00:00:00Z;");
    assert_eq!(
        token::expiry(&later).unwrap(),
        Some(t0() + Duration::from_secs(60))
    );

    // `<=` D: valid through second D, so it expires at D + 1 s — exactly as `< D + 1`.
    // 1_800_000_030 is 2027-01-15T08:00:30Z.
    let inclusive = append(&f.token, "check if time($t), $t <= 2027-01-15T08:00:30Z;");
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_031);
    assert_eq!(token::expiry(&inclusive).unwrap(), Some(at));
    let alice = SpiffeId::parse(ALICE).unwrap();
    let r = Resource::parse("ns/a").unwrap();
    let ask = |t: SystemTime, token: &str| {
        let req = Request {
            operation: Operation::LogsRead,
            resource: &r,
            peer: Some(&alice),
            node: None,
            time: t,
        };
        token::authorize(token, &f.keys, &f.none, &req, patient()).is_allowed()
    };
    // The convention matches what the verifier does: valid just before, refused at it.
    for token in [inclusive.as_str(), narrowed.as_str(), f.token.as_str()] {
        let e = token::expiry(token).unwrap().unwrap();
        assert!(ask(e - Duration::from_millis(1), token));
        assert!(!ask(e, token));
    }

    // An authority block without a time check (never minted, but signable) has none.
    let forever = raw_authority(
        &f,
        &format!("subject(\"{ALICE}\");\nright(\"logs\", \"logs:read\", \"\");"),
    );
    assert_eq!(token::expiry(&forever).unwrap(), None);
    // inspect agrees.
    assert_eq!(
        token::inspect(&inclusive).unwrap().expires_unix,
        Some(1_800_000_031)
    );
    assert!(matches!(
        token::expiry("garbage"),
        Err(TokenError::Malformed(_))
    ));
}

// ---- property test: random hostile blocks ----

/// One statement of a random block: whitelisted or not.
#[derive(Debug, Clone)]
enum Stmt {
    Fact(u8, u8),
    Rule(u8),
    Join(u8),
    Whitelisted(u8),
    OtherCheck(u8),
}

impl Stmt {
    fn whitelisted(&self) -> bool {
        matches!(self, Stmt::Whitelisted(_))
    }

    fn code(&self) -> String {
        match *self {
            Stmt::Fact(p, v) => format!("p{}({v});", p % 4),
            Stmt::Rule(k) => match k % 4 {
                0 => "q($x) <- p0($x);".into(),
                1 => "q($x, $y) <- p0($x), p1($y), $x != $y;".into(),
                2 => "right(\"cluster\", \"cluster:admin\", \"\") <- time($t);".into(),
                _ => "resource_within($p) <- resource($p);".into(),
            },
            Stmt::Join(n) => {
                let n = 2 + usize::from(n % 6);
                let atoms: Vec<String> = (0..n).map(|i| format!("p{}($v{i})", i % 4)).collect();
                let sum: Vec<String> = (0..n).map(|i| format!("$v{i}")).collect();
                format!("check if {}, {} == -1;", atoms.join(", "), sum.join(" + "))
            }
            Stmt::Whitelisted(k) => match k % 6 {
                0 => "check if time($time), $time < 2030-01-01T00:00:00Z;".into(),
                1 => "check if time($t), $t <= 2029-01-01T00:00:00Z;".into(),
                2 => {
                    "check if operation($op), {\"logs:read\", \"sched:read\"}.contains($op);".into()
                }
                3 => "check if resource_within(\"ns/default\");".into(),
                4 => format!("check if peer(\"{ALICE}\");"),
                _ => "check if node(\"n1\");".into(),
            },
            Stmt::OtherCheck(k) => match k % 6 {
                0 => "check if true;".into(),
                1 => "check all time($t), $t < 2030-01-01T00:00:00Z;".into(),
                2 => "reject if peer(\"spiffe://example.org/user/bob\");".into(),
                3 => "check if time($t), $t < 2030-01-01T00:00:00Z or true;".into(),
                4 => "check if peer($p), $p.starts_with(\"spiffe://\");".into(),
                _ => "check if operation($op), $op == \"logs:read\";".into(),
            },
        }
    }
}

fn stmt() -> impl Strategy<Value = Stmt> {
    prop_oneof![
        3 => (any::<u8>(), any::<u8>()).prop_map(|(p, v)| Stmt::Fact(p, v % 40)),
        1 => any::<u8>().prop_map(Stmt::Rule),
        2 => any::<u8>().prop_map(Stmt::Join),
        4 => any::<u8>().prop_map(Stmt::Whitelisted),
        1 => any::<u8>().prop_map(Stmt::OtherCheck),
    ]
}

/// A block: half the time only whitelisted checks (sometimes past the cap), else anything.
fn block() -> impl Strategy<Value = Vec<Stmt>> {
    prop_oneof![
        proptest::collection::vec(
            any::<u8>().prop_map(Stmt::Whitelisted),
            0..MAX_CHECKS_PER_BLOCK + 3
        ),
        proptest::collection::vec(stmt(), 1..60),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever a holder appends, authorize answers within the bound, and anything but the
    /// whitelisted shapes is refused before evaluation.
    #[test]
    fn random_appended_blocks_are_bounded_and_refused_unless_whitelisted(
        blocks in proptest::collection::vec(block(), 1..4),
    ) {
        let f = fixture_once();
        let mut t = f.token.clone();
        let mut all_whitelisted = true;
        for stmts in &blocks {
            let code_text: Vec<String> = stmts.iter().map(Stmt::code).collect();
            let whitelisted = stmts.iter().all(Stmt::whitelisted);
            let checks = stmts.len();
            all_whitelisted &= whitelisted && checks <= MAX_CHECKS_PER_BLOCK;
            t = append(&t, &code_text.join("\n"));
        }
        let (d, took) = timed(f, &t);
        prop_assert!(took < BOUND, "took {took:?}");
        if all_whitelisted {
            // Every whitelisted check above holds for this request at t0.
            prop_assert_eq!(code(&d), "allow", "{:?}", d);
        } else {
            prop_assert!(
                matches!(code(&d), "unsupported_block" | "limits_exceeded"),
                "{:?}", d
            );
        }
    }
}

fn fixture_once() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(fixture)
}
