//! Attacker: an anonymous network client. It reaches the API port and nothing else: no SVID of
//! the trust domain, no capability. It may send anything, from any number of addresses.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ringzero_policy::join::JoinToken;
use ringzero_policy::svid::{TrustBundle, csr_for, generate_key};
use ringzero_policy::testing::{ca as test_ca, trust_domain};
use ringzero_proto::pb;
use ringzero_tests::cluster::*;
use ringzero_tests::probe::send_and_expect_close;

use crate::common::*;

const ATTACKER: &str = "anonymous network client";

/// A redemption of `token` (its id and secret) as an anonymous client.
fn redemption(token: &JoinToken) -> pb::RedeemJoinTokenRequest {
    pb::RedeemJoinTokenRequest {
        token_id: hex::encode(token.id),
        secret: token.secret().to_vec(),
        node_name: String::new(),
        csr: Vec::new(),
    }
}

async fn redeem(
    ch: tonic::transport::Channel,
    req: pb::RedeemJoinTokenRequest,
) -> Result<pb::RedeemJoinTokenReply, tonic::Status> {
    pb::authority_client::AuthorityClient::new(ch)
        .redeem_join_token(with_bearer(req, None))
        .await
        .map(tonic::Response::into_inner)
}

#[test]
fn anonymous_network_client() {
    let c = Cluster::new("adv-anon");
    let g = Group::new(ATTACKER, &c);
    let profile = c.profile();
    let addr = c.nodes[0].addr.clone();
    let rt = runtime();
    // The cluster's pin, as every join token and invite carries it.
    let pin = JoinToken::parse(&c.join_token("10m")).unwrap().pin;

    g.case(
        "27 redemptions of random token ids get the wrong-secret answer, one audit record and no Raft write each",
        || {
            let real = last_line(&ok(c.cli(&["node", "token", "--name", "n9"]), "node token"));
            let real = JoinToken::parse(&real).unwrap();
            let mut wrong = redemption(&real);
            wrong.secret = JoinToken::generate(pin).unwrap().secret().to_vec();
            let random: Vec<JoinToken> = (0..27)
                .map(|_| JoinToken::generate(pin).unwrap())
                .collect();
            let random_ids: Vec<String> = random.iter().map(|t| hex::encode(t.id)).collect();

            let before = last_applied(&c);
            let (wrong_answer, answers) = rt.block_on(async {
                let wrong_answer =
                    redeem(channel(&addr, anonymous_tls(&profile)), wrong).await;
                // Three source addresses, nine attempts each (within each one's burst), all at
                // once.
                // One connection per source, the calls multiplexed on it.
                let sources: Vec<tonic::transport::Channel> = (3..6)
                    .map(|i| {
                        channel_from(Ipv4Addr::new(127, 0, 0, i), &addr, anonymous_tls(&profile))
                    })
                    .collect();
                let mut calls = Vec::new();
                for (i, t) in random.iter().enumerate() {
                    let ch = sources[i % sources.len()].clone();
                    calls.push(tokio::spawn(redeem(ch, redemption(t))));
                }
                let mut answers = Vec::new();
                for call in calls {
                    answers.push(call.await.unwrap());
                }
                (wrong_answer, answers)
            });
            let after = last_applied(&c);

            let wrong_answer = wrong_answer.expect_err("a wrong secret was accepted");
            assert_eq!(wrong_answer.code(), tonic::Code::PermissionDenied);
            assert_eq!(
                wrong_answer.message(),
                "join refused: unknown token or wrong secret"
            );
            for a in &answers {
                let s = a.as_ref().expect_err("a random token id was accepted");
                assert_eq!(s.code(), wrong_answer.code(), "{s:?}");
                // Word for word the answer to a wrong secret: nothing confirms an id exists.
                assert_eq!(s.message(), wrong_answer.message(), "{s:?}");
            }
            // The second status, one record for the random ids, one for the wrong secret.
            assert!(
                after - before <= 4,
                "28 refused redemptions took {} Raft entries",
                after - before
            );
            eprintln!(
                "[adversarial] 28 refused redemptions: {} log entries, status included",
                after - before
            );
            // Once the denial window closes, the repeats are one summary record.
            std::thread::sleep(ringzero_authority::DENIAL_WINDOW + Duration::from_secs(1));
            let recs: Vec<_> = denials(&c)
                .into_iter()
                .filter(|d| {
                    d.actor == "anonymous"
                        && d.operation == "node:enroll"
                        && random_ids.contains(&d.request_id)
                })
                .collect();
            assert!(
                !recs.is_empty() && recs.len() <= 4,
                "27 attempts made {} records: {recs:#?}",
                recs.len()
            );
            // A first record stands for itself; a summary (a copy of the last repeat) for the
            // repeats it counts.
            let represented: u64 = recs
                .iter()
                .map(|r| {
                    r.details
                        .iter()
                        .find(|(k, _)| k == "suppressed_denials")
                        .map_or(1, |(_, n)| n.parse::<u64>().unwrap())
                })
                .sum();
            assert_eq!(represented, 27, "{recs:#?}");
            for r in &recs {
                assert_eq!(r.resource, "join-token", "{r:?}");
                assert!(
                    r.reason.as_deref().unwrap().starts_with("first_contact: "),
                    "{r:?}"
                );
                assert!(
                    r.details
                        .iter()
                        .any(|(k, v)| k == "source" && v.starts_with("127.0.0.")),
                    "{r:?}"
                );
            }
        },
    );

    g.case(
        "one source past its burst gets ResourceExhausted while a joiner on another address still enrolls",
        || {
            let legit = last_line(&ok(c.cli(&["node", "token", "--name", "n10"]), "node token"));
            let legit = JoinToken::parse(&legit).unwrap();
            let flood_from = Ipv4Addr::new(127, 0, 0, 2);
            let (codes, late) = rt.block_on(async {
                let ch = channel_from(flood_from, &addr, anonymous_tls(&profile));
                let mut calls = Vec::new();
                for _ in 0..16 {
                    let t = JoinToken::generate(pin).unwrap();
                    calls.push(tokio::spawn(redeem(ch.clone(), redemption(&t))));
                }
                let mut codes = Vec::new();
                for call in calls {
                    codes.push(call.await.unwrap().unwrap_err().code());
                }
                // The flooding address gets nothing more (refused either way: its bucket holds
                // at most what the last moments refilled).
                let t = JoinToken::generate(pin).unwrap();
                let late = redeem(ch, redemption(&t)).await;
                (codes, late)
            });
            let exhausted = codes
                .iter()
                .filter(|c| **c == tonic::Code::ResourceExhausted)
                .count();
            let refused = codes
                .iter()
                .filter(|c| **c == tonic::Code::PermissionDenied)
                .count();
            assert_eq!(exhausted + refused, 16, "{codes:?}");
            // A burst of 10, refilled at 2/s while the calls run.
            assert!((10..=13).contains(&refused), "{codes:?}");
            let late = late.expect_err("the flooding source redeemed a token");
            assert!(
                matches!(
                    late.code(),
                    tonic::Code::ResourceExhausted | tonic::Code::PermissionDenied
                ),
                "{late:?}"
            );

            // A joiner on 127.0.0.1 is not starved, and the token was not consumed meanwhile.
            let bundle =
                TrustBundle::new(td(), profile.bundle_certs().unwrap()).unwrap();
            let key = generate_key().unwrap();
            let csr = csr_for(&key, &spiffe_id("ringzero/node/x")).unwrap();
            let reply = rt
                .block_on(ringzero_proto::client::redeem_join_token(
                    &addr, &bundle, &legit, &csr,
                ))
                .expect("the joiner on another address enrolls");
            assert!(!reply.svid_chain.is_empty());
        },
    );

    g.case(
        "a login with a random invite is refused like a wrong secret, audited, and writes no profile",
        || {
            let forged = JoinToken::generate(pin).unwrap();
            let invite = at_file(&c, "forged.invite", &forged.to_text());
            let out_path = c.path().join("never.profile");
            let mut cmd = ringzero_tests::ringzero(c.path());
            cmd.args(["login", "--authority", &addr, "--invite", &invite, "--out"])
                .arg(&out_path);
            let out = ringzero_tests::run_timeout(cmd, CLI_TIMEOUT);
            refused(&out, &["unknown token or wrong secret"], "random invite");
            assert!(!out_path.exists(), "a refused login wrote a profile");
            let d = audited(&c, "anonymous", "user:write", "first_contact:");
            assert_eq!(d.resource, "invite", "{d:?}");
            assert_eq!(d.request_id, hex::encode(forged.id), "{d:?}");
            let users = stdout(&ok(c.cli(&["user", "list", "--json"]), "user list"));
            assert_eq!(users.matches("\"name\"").count(), 1, "{users}");
        },
    );

    g.case(
        "garbage, HTTP/1.1 and a bogus TLS record on the API port are dropped and the node keeps serving",
        || {
            let mut junk = vec![0u8; 64 * 1024];
            for (i, b) in junk.iter_mut().enumerate() {
                *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
            }
            send_and_expect_close(&addr, "garbage", &junk);
            send_and_expect_close(&addr, "HTTP/1.1", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
            record.extend_from_slice(&junk[..16 * 1024]);
            send_and_expect_close(&addr, "bogus TLS record", &record);
            assert!(c.status_ok(), "the node stopped answering");
        },
    );

    g.case(
        "a 1 MiB first-contact message is refused by the size limit, not decoded",
        || {
            let r = rt.block_on(async {
                let mut client = pb::authority_client::AuthorityClient::new(channel(
                    &addr,
                    anonymous_tls(&profile),
                ));
                client
                    .redeem_join_token(with_bearer(
                        pb::RedeemJoinTokenRequest {
                            token_id: "00".repeat(16),
                            secret: vec![0; 32],
                            node_name: String::new(),
                            csr: vec![0x30; 1024 * 1024],
                        },
                        None,
                    ))
                    .await
            });
            let s = r.expect_err("a 1 MiB CSR was accepted");
            assert!(
                matches!(
                    s.code(),
                    tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
                ),
                "{s:?}"
            );
            assert!(c.status_ok());
        },
    );

    g.case(
        "privileged RPCs without a client certificate are Unauthenticated",
        || {
            let (token, user) = rt.block_on(async {
                let mut client = pb::authority_client::AuthorityClient::new(channel(
                    &addr,
                    anonymous_tls(&profile),
                ));
                let token = client
                    .create_join_token(with_bearer(
                        pb::CreateJoinTokenRequest {
                            purpose: "authority".into(),
                            node_name: String::new(),
                            ttl_seconds: 600,
                            namespace: String::new(),
                        },
                        Some(&profile.token),
                    ))
                    .await;
                let user = client
                    .add_user(with_bearer(
                        pb::AddUserRequest {
                            name: "mallory".into(),
                            role: "admin".into(),
                            namespace: String::new(),
                            csr: vec![],
                            ttl_seconds: 0,
                        },
                        Some(&profile.token),
                    ))
                    .await;
                (token, user)
            });
            for (what, s) in [
                ("CreateJoinToken", token.map(|_| ()).unwrap_err()),
                ("AddUser", user.map(|_| ()).unwrap_err()),
            ] {
                assert_eq!(s.code(), tonic::Code::Unauthenticated, "{what}: {s:?}");
                assert_eq!(
                    s.message(),
                    ringzero_proto::transport::ANONYMOUS_MESSAGE,
                    "{what}"
                );
            }
        },
    );

    g.case(
        "an anonymous Raft AppendEntries is Unauthenticated and the term does not move",
        || {
            let term = c.status_json()["term"].as_u64().unwrap();
            let r = rt.block_on(async {
                pb::raft_client::RaftClient::new(channel(&addr, anonymous_tls(&profile)))
                    .append_entries(with_bearer(
                        pb::RaftPayload {
                            data: forged_append_entries(term + 100, 1),
                        },
                        None,
                    ))
                    .await
            });
            let s = r.expect_err("an anonymous AppendEntries was accepted");
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
            assert_eq!(s.message(), ringzero_proto::transport::ANONYMOUS_MESSAGE);
            assert_eq!(c.status_json()["term"].as_u64(), Some(term));
        },
    );

    g.case(
        "a client certificate from a foreign trust domain fails the TLS handshake",
        || {
            let other_ca = test_ca(&trust_domain("other.org"), "other");
            let svid = Svid::forge(&other_ca, "spiffe://other.org/user/admin");
            let alert = rt.block_on(tls_alert(&addr, mtls(&profile, &svid)));
            assert!(alert.contains("alert"), "{alert}");
            assert_transport_refusal(&rt, &addr, &profile, &svid);
        },
    );

    g.case(
        "a rogue CA of this trust domain vouching for user/admin fails the TLS handshake, stolen admin token or not",
        || {
            let rogue = test_ca(&td(), "rogue");
            let svid = Svid::forge(&rogue, &id("user/admin"));
            let alert = rt.block_on(tls_alert(&addr, mtls(&profile, &svid)));
            assert!(alert.contains("alert"), "{alert}");
            assert_transport_refusal(&rt, &addr, &profile, &svid);
        },
    );

    g.finish();
}

/// A `Status` call over `svid` carrying the admin's token fails in the transport: the server
/// never ran a handler for it.
fn assert_transport_refusal(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    profile: &ringzero_proto::client::Profile,
    svid: &Svid,
) {
    let t = Instant::now();
    let r = rt.block_on(async {
        pb::authority_client::AuthorityClient::new(channel(addr, mtls(profile, svid)))
            .status(with_bearer(pb::StatusRequest {}, Some(&profile.token)))
            .await
    });
    let s = r.expect_err("a call over an untrusted certificate was answered");
    assert!(
        matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        "{s:?} after {:?}",
        t.elapsed()
    );
}
