//! Attacker: a token thief. It holds capability tokens that are not its own (copied from a
//! log, a CI variable, a colleague's laptop) and can decode, cut, splice, append to and re-sign
//! them offline; it has an SVID of its own, or the victim's whole profile.

use std::time::{Duration, Instant, SystemTime};

use ringzero_policy::token::{Lifetime, MintRequest, RootKey, RootKeyId};
use ringzero_policy::{Operation, Resource, Right};
use ringzero_proto::pb;
use ringzero_tests::cluster::*;

use crate::common::*;

const ATTACKER: &str = "token thief";

/// A token minted offline with `key`: the admin's subject, `op` on everything, bound to it.
fn forge_admin_token(key: &RootKey, op: Operation) -> String {
    ringzero_policy::token::mint(
        key,
        &MintRequest {
            subject: spiffe_id("user/admin"),
            rights: vec![Right::new(op, Resource::root())],
            ttl: Some(Duration::from_secs(600)),
            bind_to_subject: true,
            bind_node: None,
        },
        &Lifetime::default(),
        SystemTime::now(),
    )
    .unwrap()
}

#[test]
fn token_thief() {
    let c = Cluster::new("adv-thief");
    let g = Group::new(ATTACKER, &c);
    let admin = c.profile();
    let admin_id = id("user/admin");
    let alice = add_user(&c, "alice", &["--role", "auditor"]);
    let bob = add_user(&c, "bob", &["--role", "auditor"]);
    let (alice_id, bob_id) = (id("user/alice"), id("user/bob"));
    // Captured now, used last: by then it has expired.
    let expiring = attenuate(&c, &read_profile(&bob).token, &["--ttl", "1s"]);
    let expiring_made = Instant::now();
    let rt = runtime();

    g.case(
        "a user's bound token presented over another user's identity is refused as peer_mismatch",
        || {
            let mut crossed = read_profile(&bob);
            crossed.token = read_profile(&alice).token;
            let crossed = write_profile(&c, "crossed.profile", &crossed);
            let out = as_profile(&c, &crossed, &["authority", "status"]);
            refused(
                &out,
                &["bound to another peer"],
                "alice's token over bob's SVID",
            );
            let d = audited(&c, &bob_id, "authority:read", "peer_mismatch");
            assert!(!d.revocation_ids.is_empty(), "the token is named: {d:?}");
        },
    );

    g.case(
        "a captured delegated token replayed after token revoke is refused as revoked",
        || {
            let out = ok(
                c.cli(&[
                    "token",
                    "mint",
                    "--for",
                    &alice_id,
                    "--operation",
                    "authority:read",
                    "--resource",
                    "authority",
                ]),
                "mint for alice",
            );
            let delegated = at_file(&c, "delegated.token", &last_line(&out));
            let replay = || as_profile(&c, &alice, &["--token", &delegated, "authority", "status"]);
            ok(replay(), "the delegated token before revocation");
            ok(c.cli(&["token", "revoke", &delegated]), "revoke");
            refused(&replay(), &["revoked"], "replay after revoke");
            audited(&c, &alice_id, "authority:read", "revoked");
        },
    );

    // The admin's token attenuated to reading the authority's status: what a monitoring job
    // might hold.
    let narrow = attenuate(&c, &admin.token, &["--operation", "authority:read"]);
    let denied_reads = |token: &str, args: &[&str]| {
        let t = at_file(&c, "t.token", token);
        let mut all = vec!["--token", t.as_str()];
        all.extend_from_slice(args);
        c.cli(&all)
    };

    g.case(
        "a spliced token (the admin's authority block with another token's attenuation block) fails signature verification",
        || {
            // The narrow token works as narrowed: no user list.
            refused(
                &denied_reads(&narrow, &["user", "list"]),
                &["operation not allowed"],
                "the narrow token",
            );
            // Its attenuation replaced by one from alice's token that only limits time.
            let loose = attenuate(&c, &read_profile(&alice).token, &["--ttl", "1h"]);
            let (n, l) = (decode_token(&narrow), decode_token(&loose));
            let spliced = WireToken {
                root_key_id: n.root_key_id,
                authority: n.authority,
                blocks: l.blocks,
                proof: l.proof,
            };
            let out = denied_reads(&encode_token(&spliced), &["user", "list"]);
            refused(&out, &["signature"], "spliced");
            audited(&c, &admin_id, "user:read", "bad_signature");
        },
    );

    g.case(
        "a token re-signed with the attacker's key under the cluster's root key id fails verification, and an unknown key id too",
        || {
            let kid = ringzero_policy::token::inspect(&admin.token)
                .unwrap()
                .root_key_id
                .unwrap();
            let own = RootKey::generate(RootKeyId(kid));
            let out = denied_reads(&forge_admin_token(&own, Operation::RoleRead), &["role", "list"]);
            refused(&out, &["signature"], "re-signed under the cluster's key id");
            audited(&c, &admin_id, "role:read", "bad_signature");
            let unknown = RootKey::generate(RootKeyId(kid + 1000));
            let out = denied_reads(
                &forge_admin_token(&unknown, Operation::NodeRead),
                &["node", "list"],
            );
            refused(&out, &["not in the trusted key set"], "unknown key id");
            audited(&c, &admin_id, "node:read", "unknown_root_key");
        },
    );

    g.case(
        "a truncated token (its attenuation block dropped to regain the admin's rights) is refused",
        || {
            let mut t = decode_token(&narrow);
            assert_eq!(t.blocks.len(), 1);
            t.blocks.pop();
            let out = denied_reads(&encode_token(&t), &["entry", "list"]);
            assert_eq!(out.status.code(), Some(1), "{}", ringzero_tests::show(&out));
            let why = audited_any(&c, &admin_id, "entry:read", &["bad_signature", "malformed"]);
            eprintln!("[adversarial] truncated token: {why}");
        },
    );

    g.case(
        "an attenuated copy of a user's own token cannot renew the profile (not_own_credential)",
        || {
            let mut p = read_profile(&alice);
            p.token = attenuate(&c, &p.token, &["--ttl", "30m"]);
            let copy = write_profile(&c, "alice-attenuated.profile", &p);
            // It still works for what it allows...
            ok(
                as_profile(&c, &copy, &["authority", "status"]),
                "attenuated status",
            );
            // ...but never turns back into the whole role for a day.
            let renewed = c.path().join("alice-renewed.profile");
            let out = as_profile(
                &c,
                &copy,
                &["login", "--out", &renewed.display().to_string()],
            );
            refused(&out, &["unattenuated"], "renewal with an attenuated token");
            assert!(!renewed.exists());
            audited(&c, &alice_id, "user:renew", "not_own_credential");
        },
    );

    g.case(
        "a hostile appended block (18 facts and a 6-atom check) is refused fast as unsupported_block while status keeps answering",
        || {
            let bobs = read_profile(&bob);
            let hostile = append_block(&bobs.token, &attack_block());
            let svid = Svid::of_profile(&bobs);
            let (times, worst_status) = while_probing(
                || assert!(c.status_ok(), "status stopped answering"),
                || {
                    rt.block_on(async {
                        let ch = channel(&c.nodes[0].addr, mtls(&admin, &svid));
                        let mut calls = Vec::new();
                        for _ in 0..8 {
                            let mut client = pb::authority_client::AuthorityClient::new(ch.clone());
                            let hostile = hostile.clone();
                            calls.push(tokio::spawn(async move {
                                let t = Instant::now();
                                let r = client
                                    .status(with_bearer(pb::StatusRequest {}, Some(&hostile)))
                                    .await;
                                (r.map(|_| ()), t.elapsed())
                            }));
                        }
                        let mut out = Vec::new();
                        for call in calls {
                            out.push(call.await.unwrap());
                        }
                        out
                    })
                },
            );
            for (r, took) in &times {
                let s = r.as_ref().expect_err("the hostile token was accepted");
                assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
                assert!(s.message().contains("refused before evaluation"), "{s:?}");
                assert!(*took < Duration::from_secs(2), "a refusal took {took:?}");
            }
            assert!(
                worst_status < Duration::from_secs(10),
                "status took {worst_status:?} meanwhile"
            );
            audited(&c, &bob_id, "authority:read", "unsupported_block");
        },
    );

    g.case(
        "a captured token used after its expiry is refused as expired",
        || {
            std::thread::sleep(
                (expiring_made + Duration::from_millis(2100))
                    .saturating_duration_since(Instant::now()),
            );
            let t = at_file(&c, "expiring.token", &expiring);
            let out = as_profile(&c, &bob, &["--token", &t, "authority", "status"]);
            refused(&out, &["expired"], "expired token");
            audited(&c, &bob_id, "authority:read", "expired");
        },
    );

    g.finish();
}
