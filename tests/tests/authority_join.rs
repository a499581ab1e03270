//! Joining an authority cluster of real `ringzero` processes: the join token's pin is checked
//! before its secret leaves the joiner, wrong, unknown, reused and expired tokens are refused
//! with their cause, one token raced by two joiners makes one member, and a removed member
//! cannot let itself back in.
//!
//! Each test runs its own cluster on loopback ports in its own temporary directory (see
//! [`ringzero_tests::cluster`]); set `RINGZERO_KEEP_TMP=1` to keep it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ringzero_authority::command::{AuditDecision, Outcome};
use ringzero_policy::join::JoinToken;
use ringzero_policy::testing::ca as test_ca;
use ringzero_proto::pb;
use ringzero_tests::cluster::*;
use ringzero_tests::impostor::start_impostor;
use ringzero_tests::{Proc, show, wait_until};

// ---------------------------------------------------------------------------------------------
// The pin is checked before the secret leaves the joiner
// ---------------------------------------------------------------------------------------------

/// Changes one hex digit of the token's pin.
fn flip_pin(token: &str) -> String {
    let (rest, pin) = token.rsplit_once('.').unwrap();
    let mut pin: Vec<u8> = pin.bytes().collect();
    pin[0] = if pin[0] == b'0' { b'1' } else { b'0' };
    format!("{rest}.{}", String::from_utf8(pin).unwrap())
}

#[test]
fn a_join_without_a_matching_pin_is_refused_before_the_secret_is_sent() {
    let mut c = Cluster::new("pin");
    let token = c.join_token("10m");
    let n1 = c.nodes[0].addr.clone();
    let i = c.add_node();

    // The real cluster, a token whose pin names another CA: refused, naming the pin.
    let out = c.failed_join(i, &n1, &flip_pin(&token));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("pin"), "{err}");
    assert!(err.contains("refusing to send the secret"), "{err}");

    // An impostor serving its own CA as the bundle: the pin does not match, nothing is sent.
    let rt = runtime();
    let rogue = test_ca(&td(), "rogue");
    let (fake, sent) = start_impostor(&rt, &rogue, vec![rogue.cert_der().clone()]);
    let out = c.failed_join(i, &fake, &token);
    assert!(stderr(&out).contains("pin"), "{}", show(&out));
    // An impostor replaying the real (public) bundle: the pin matches the bundle, but the
    // impostor cannot prove an SVID under it, so the TLS handshake of the redemption fails.
    let real_cas = c.profile().bundle_certs().unwrap();
    let (replay, replay_sent) = start_impostor(&rt, &rogue, real_cas);
    let out = c.failed_join(i, &replay, &token);
    eprintln!(
        "pin: join via a bundle-replaying impostor: {}",
        stderr(&out).trim()
    );
    assert_eq!(
        sent.load(Ordering::SeqCst),
        0,
        "the secret reached an impostor"
    );
    assert_eq!(
        replay_sent.load(Ordering::SeqCst),
        0,
        "the secret reached an impostor"
    );

    // The token was not consumed by any of this: it still works, once.
    c.spawn_join(i, &n1, &token);
    c.wait_voter(i);
    c.stop_all();
    let st = c.nodes[0].state();
    let tried = st.redemptions(&token);
    assert_eq!(
        tried.len(),
        1,
        "one redemption reached the cluster: {tried:?}"
    );
    assert_eq!(tried[0].outcome, Outcome::Done);
    assert!(st.token(&token).unwrap().used);
}

// ---------------------------------------------------------------------------------------------
// Wrong secret, reused token, expired token
// ---------------------------------------------------------------------------------------------

/// Replaces the secret of `token` by a random one (same id, same pin).
fn wrong_secret(token: &str) -> String {
    let other = JoinToken::generate([0; 32]).unwrap();
    let other_secret = other.to_text().split('.').nth(1).unwrap().to_owned();
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{other_secret}.{}", parts[0], parts[2])
}

#[test]
fn wrong_secret_reused_and_expired_tokens_are_refused_with_the_cause() {
    let mut c = Cluster::new("tokens");
    let n1 = c.nodes[0].addr.clone();
    let spare = c.add_node();

    let mismatched = c.join_token("10m");
    let pin = mismatched.rsplit_once('.').unwrap().1.to_owned();
    // A token the cluster never issued, carrying the cluster's pin so that it gets that far.
    let unknown = {
        let t = JoinToken::generate([0; 32]).unwrap().to_text().to_string();
        format!("{}.{pin}", t.rsplit_once('.').unwrap().0)
    };
    let expired = c.join_token("1s");
    // Expiry is decided with the redemption command's clock (`now >= expires`): 1 s from issue.
    std::thread::sleep(Duration::from_millis(1500));
    for (what, token, msg) in [
        // An unknown id and a wrong secret get one answer: the reply never confirms an id.
        (
            "wrong secret",
            wrong_secret(&mismatched),
            "unknown token or wrong secret",
        ),
        ("unknown token", unknown, "unknown token or wrong secret"),
        ("expired token", expired.clone(), "join token expired"),
    ] {
        let out = c.failed_join(spare, &n1, &token);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", show(&out));
        let err = stderr(&out);
        assert!(err.contains("PermissionDenied"), "{what}: {err}");
        assert!(err.contains(msg), "{what}: {err}");
    }

    // A token used once is refused the second time, through any member.
    let token = c.join_token("10m");
    let first = c.add_node();
    c.spawn_join(first, &n1, &token);
    c.wait_voter(first);
    let via_new_member = c.nodes[first].addr.clone();
    for peer in [&n1, &via_new_member] {
        let out = c.failed_join(spare, peer, &token);
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        assert!(
            stderr(&out).contains("join token already used"),
            "{}",
            show(&out)
        );
    }
    assert_eq!(c.members().len(), 2);

    c.stop_all();
    let st = c.nodes[0].state();
    assert!(
        !st.token(&mismatched).unwrap().used,
        "a wrong secret consumed the token"
    );
    assert!(!st.token(&expired).unwrap().used);
    // One redemption; the refused attempts were decided before any Raft write of their own
    // and recorded as denials (folded per cause), naming the cause.
    let attempts = st.redemptions(&token);
    let done: Vec<_> = attempts
        .iter()
        .filter(|a| a.record.decision == AuditDecision::Allow)
        .collect();
    assert_eq!(done.len(), 1, "{attempts:#?}");
    assert_eq!(done[0].outcome, Outcome::Done);
    assert!(
        attempts
            .iter()
            .any(|a| a.record.decision == AuditDecision::Deny
                && a.record
                    .reason
                    .as_deref()
                    .unwrap_or("")
                    .contains("already used")),
        "{attempts:#?}"
    );
    let attempts = st.redemptions(&mismatched);
    assert!(
        !attempts.is_empty()
            && attempts
                .iter()
                .all(|a| a.record.decision == AuditDecision::Deny
                    && a.record
                        .reason
                        .as_deref()
                        .unwrap_or("")
                        .contains("does not match")),
        "{attempts:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// One token, two joiners at once, through two different members
// ---------------------------------------------------------------------------------------------

#[test]
fn two_joiners_racing_one_token_through_two_peers_make_exactly_one_member() {
    let mut c = Cluster::with_voters("race", 2);
    let token = c.join_token("10m");
    let peers = [c.nodes[0].addr.clone(), c.nodes[1].addr.clone()];
    let racers = [c.add_node(), c.add_node()];

    // Both read the token from stdin, so both are started and waiting before either has it.
    for (i, peer) in racers.iter().zip(&peers) {
        let mut cmd = c.join_cmd(*i, peer, "-");
        let n = &mut c.nodes[*i];
        let log = std::fs::File::create(&n.log).unwrap();
        cmd.stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        n.proc = Some(Proc::from_child(&n.name, cmd.spawn().unwrap(), &n.log));
    }
    for i in racers {
        let mut stdin = c.nodes[i]
            .proc
            .as_mut()
            .unwrap()
            .child_mut()
            .stdin
            .take()
            .unwrap();
        stdin.write_all(token.as_bytes()).unwrap();
    }

    // Exactly one loses, and says why.
    let loser = wait_until("one joiner to give up", JOIN_TIMEOUT, POLL, || {
        racers
            .into_iter()
            .find(|i| c.nodes[*i].proc.as_mut().and_then(Proc::exited).is_some())
    });
    let winner = racers.into_iter().find(|i| *i != loser).unwrap();
    let status = c.nodes[loser].proc.as_mut().unwrap().exited().unwrap();
    assert_eq!(status.code(), Some(1));
    let log = c.nodes[loser].log_text();
    assert!(log.contains("join token already used"), "{log}");
    assert!(!c.nodes[loser].dir.join("node.toml").exists());
    c.wait_voter(winner);
    assert!(c.nodes[winner].is_running(), "the winner keeps serving");

    let ms = c.members();
    assert_eq!(ms.len(), 3, "{ms:?}");
    assert!(ms.iter().all(|m| m.role == "voter"), "{ms:?}");
    assert!(ms.iter().any(|m| m.address == c.nodes[winner].addr));
    assert!(!ms.iter().any(|m| m.address == c.nodes[loser].addr));

    c.stop_all();
    let st = c.nodes[0].state();
    let mut outcomes: Vec<String> = st
        .redemptions(&token)
        .iter()
        .map(|a| format!("{:?} {:?}", a.record.decision, a.outcome))
        .collect();
    outcomes.sort();
    // One redemption was granted. The other lost either in apply's compare-and-set (both passed
    // the leader's precheck at once) or already at the precheck (the winner had committed),
    // which records a denial.
    assert!(
        outcomes == ["Allow Done", "Allow Rejected(JoinTokenUsed)"]
            || outcomes == ["Allow Done", "Deny Done"],
        "{outcomes:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Beyond the list: a removed member cannot let itself back in
// ---------------------------------------------------------------------------------------------

#[test]
fn a_removed_member_cannot_rejoin_without_a_new_token() {
    let c = Cluster::with_voters("removed", 3);
    let gone = 2;
    let gone_id = c.nodes[gone].node_id();
    let out = c.cli(&["authority", "remove", &gone_id.to_string()]);
    assert!(out.status.success(), "remove: {}", show(&out));
    let ms = c.members();
    assert_eq!(ms.len(), 2, "{ms:?}");

    // What the removed node can still present: an SVID for its own ID from its own CA (a plain
    // remove keeps that CA in the bundle until what it issued expires).
    let profile = c.profile();
    let svid = Svid::forge(
        &c.node_ca(gone),
        &format!("spiffe://{TD}/ringzero/authority/{gone_id}"),
    );
    let addr = c.nodes[0].addr.clone();
    let rejoin_addr = c.nodes[gone].addr.clone();
    let rt = runtime();
    let r = rt.block_on(async {
        let mut client =
            pb::authority_client::AuthorityClient::new(channel(&addr, mtls(&profile, &svid)));
        client
            .join_cluster(with_bearer(
                pb::JoinClusterRequest {
                    address: rejoin_addr,
                    keys: vec![],
                },
                None,
            ))
            .await
    });
    let ms = c.members();
    assert!(
        r.is_err(),
        "a removed node re-added itself with its old, used token: {ms:?}"
    );
    assert_eq!(ms.len(), 2, "{ms:?}");
}
