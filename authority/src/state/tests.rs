//! The state machine's rules, applied directly to a redb database.

use super::apply::apply_command;
use super::*;
use crate::command::{AuditDecision, Command, CommandId, Op, Rejection};

struct Db {
    _dir: tempfile::TempDir,
    db: redb::Database,
    index: u64,
}

fn db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
    create_tables(&db).unwrap();
    Db {
        _dir: dir,
        db,
        index: 0,
    }
}

fn audit() -> AuditRecord {
    AuditRecord {
        actor: "spiffe://td/user/admin".into(),
        revocation_ids: vec![],
        operation: "node:enroll".into(),
        resource: "node".into(),
        decision: AuditDecision::Allow,
        reason: None,
        authority: 1,
        request_id: "r".into(),
        details: vec![],
    }
}

fn cmd(time_ms: u64, op: Op) -> Command {
    Command {
        id: CommandId::fresh(),
        time_ms,
        audit: audit(),
        op,
    }
}

impl Db {
    fn apply(&mut self, c: &Command) -> Response {
        self.index += 1;
        let tx = self.db.begin_write().unwrap();
        let r = apply_command(&tx, self.index, c).unwrap();
        tx.commit().unwrap();
        r
    }

    fn run(&mut self, time_ms: u64, op: Op) -> Outcome {
        self.apply(&cmd(time_ms, op)).outcome
    }

    fn read(&self) -> StateReader {
        StateReader::new(&self.db).unwrap()
    }
}

fn sha(s: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s);
    d.as_ref().try_into().unwrap()
}

fn issue(d: &mut Db, id: u8, secret: &[u8], name: &str, expires_ms: u64) -> Outcome {
    d.run(
        0,
        Op::IssueJoinToken {
            token_id: [id; 16],
            secret_sha256: sha(secret),
            node_name: name.into(),
            purpose: JoinPurpose::Agent,
            expires_ms,
        },
    )
}

fn redeem(d: &mut Db, at: u64, id: u8, secret: &[u8], name: &str) -> Outcome {
    d.run(
        at,
        Op::RedeemJoinToken {
            token_id: [id; 16],
            presented_sha256: sha(secret),
            node_name: name.into(),
        },
    )
}

#[test]
fn a_join_token_is_redeemed_exactly_once() {
    let mut d = db();
    assert_eq!(issue(&mut d, 1, b"s3cret", "n7", 1000), Outcome::Done);
    // The record holds only the hash.
    let rec = d.read().join_token(&[1; 16]).unwrap().unwrap();
    assert_eq!(rec.secret_sha256, sha(b"s3cret"));
    assert!(!rec.used);

    assert_eq!(
        redeem(&mut d, 10, 1, b"wrong", "n7"),
        Outcome::Rejected(Rejection::JoinTokenMismatch)
    );
    assert_eq!(
        redeem(&mut d, 10, 1, b"s3cret", "n8"),
        Outcome::Rejected(Rejection::JoinTokenWrongName)
    );
    assert_eq!(redeem(&mut d, 10, 1, b"s3cret", "n7"), Outcome::Done);
    assert_eq!(
        redeem(&mut d, 11, 1, b"s3cret", "n7"),
        Outcome::Rejected(Rejection::JoinTokenUsed)
    );
    assert_eq!(
        redeem(&mut d, 11, 9, b"s3cret", "n7"),
        Outcome::Rejected(Rejection::JoinTokenUnknown)
    );
    let node = d.read().node("n7").unwrap().unwrap();
    assert_eq!(node.status, NodeStatus::Active);
}

#[test]
fn expired_join_tokens_are_found_for_the_purger_and_purged() {
    let mut d = db();
    assert!(!d.read().any_join_token_expired(u64::MAX).unwrap());
    issue(&mut d, 1, b"a", "n1", 1000);
    issue(&mut d, 2, b"b", "n2", 5000);
    assert!(!d.read().any_join_token_expired(999).unwrap());
    assert!(d.read().any_join_token_expired(1000).unwrap());
    d.run(1000, Op::PurgeExpired);
    let r = d.read();
    assert!(r.join_token(&[1; 16]).unwrap().is_none());
    assert!(r.join_token(&[2; 16]).unwrap().is_some());
    assert!(!r.any_join_token_expired(4999).unwrap());
}

#[test]
fn join_token_expiry_uses_the_command_time() {
    let mut d = db();
    issue(&mut d, 2, b"x", "n1", 1000);
    assert_eq!(
        redeem(&mut d, 1000, 2, b"x", "n1"),
        Outcome::Rejected(Rejection::JoinTokenExpired)
    );
    assert_eq!(redeem(&mut d, 999, 2, b"x", "n1"), Outcome::Done);
}

#[test]
fn a_banned_name_cannot_enroll() {
    let mut d = db();
    issue(&mut d, 3, b"x", "bad", 1000);
    assert_eq!(
        d.run(
            1,
            Op::SetNodeStatus {
                name: "bad".into(),
                status: NodeStatus::Banned
            }
        ),
        Outcome::Done
    );
    assert_eq!(
        redeem(&mut d, 2, 3, b"x", "bad"),
        Outcome::Rejected(Rejection::Banned)
    );
    assert_eq!(
        issue(&mut d, 4, b"y", "bad", 1000),
        Outcome::Rejected(Rejection::Banned)
    );
    assert_eq!(
        d.run(
            3,
            Op::SetNodeStatus {
                name: "bad".into(),
                status: NodeStatus::Active
            }
        ),
        Outcome::Rejected(Rejection::Banned)
    );
    assert_eq!(
        d.run(
            3,
            Op::SetNodeStatus {
                name: "ghost".into(),
                status: NodeStatus::Evicted
            }
        ),
        Outcome::Rejected(Rejection::NotFound)
    );
}

fn entry(id: &str, parent: &str) -> RegistrationEntry {
    RegistrationEntry {
        id: id.into(),
        spiffe_id: format!("spiffe://td/ns/a/{id}"),
        parent: parent.into(),
        selectors: vec!["unix:uid:1000".into()],
        ttl_s: 3600,
        dns_names: vec![],
        revision: 0,
    }
}

#[test]
fn entries_are_indexed_by_parent_with_a_change_feed() {
    let mut d = db();
    assert_eq!(
        d.run(
            0,
            Op::PutEntry {
                entry: entry("e1", "n1")
            }
        ),
        Outcome::Revision(1)
    );
    assert_eq!(
        d.run(
            0,
            Op::PutEntry {
                entry: entry("e2", "n1")
            }
        ),
        Outcome::Revision(2)
    );
    assert_eq!(
        d.run(
            0,
            Op::PutEntry {
                entry: entry("e3", "n2")
            }
        ),
        Outcome::Revision(3)
    );
    // A parent named as a prefix of another does not see its entries.
    d.run(
        0,
        Op::PutEntry {
            entry: entry("e4", "n10"),
        },
    );
    let r = d.read();
    let ids = |v: Vec<RegistrationEntry>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(r.entries_of("n1").unwrap()), ["e1", "e2"]);
    assert_eq!(ids(r.entries_of("n2").unwrap()), ["e3"]);
    assert_eq!(r.entry("e2").unwrap().unwrap().revision, 2);
    let since = r.entry_changes_since("n1", 1, 100).unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].entry_id, "e2");
    drop(r);

    // Moving e1 to n2: n1's feed says it is gone, n2's that it arrived.
    assert_eq!(
        d.run(
            0,
            Op::PutEntry {
                entry: entry("e1", "n2")
            }
        ),
        Outcome::Revision(5)
    );
    let r = d.read();
    assert_eq!(ids(r.entries_of("n1").unwrap()), ["e2"]);
    assert_eq!(ids(r.entries_of("n2").unwrap()), ["e1", "e3"]);
    let n1 = r.entry_changes_since("n1", 2, 100).unwrap();
    assert_eq!((n1[0].entry_id.as_str(), n1[0].removed), ("e1", true));
    let n2 = r.entry_changes_since("n2", 3, 100).unwrap();
    assert_eq!((n2[0].entry_id.as_str(), n2[0].removed), ("e1", false));
    drop(r);

    assert_eq!(
        d.run(0, Op::DeleteEntry { id: "e2".into() }),
        Outcome::Revision(6)
    );
    assert_eq!(
        d.run(0, Op::DeleteEntry { id: "e2".into() }),
        Outcome::Rejected(Rejection::NotFound)
    );
    let r = d.read();
    assert!(r.entries_of("n1").unwrap().is_empty());
    assert!(r.entry_changes_since("n1", 5, 100).unwrap()[0].removed);
    assert_eq!(r.entry_changes_since("n2", 0, 2).unwrap().len(), 2);
}

#[test]
fn revocations_keep_the_latest_expiry_and_are_purged_after_it() {
    let mut d = db();
    let ids = vec![vec![1u8; 64], vec![2u8; 64]];
    d.run(
        0,
        Op::Revoke {
            ids: ids.clone(),
            expires_ms: 100,
        },
    );
    d.run(
        0,
        Op::Revoke {
            ids: vec![ids[0].clone()],
            expires_ms: 500,
        },
    );
    d.run(
        0,
        Op::Revoke {
            ids: vec![ids[0].clone()],
            expires_ms: 50,
        },
    );
    let r = d.read();
    assert!(r.is_revoked(&ids[0]).unwrap() && r.is_revoked(&ids[1]).unwrap());
    let all = r.revocations().unwrap();
    assert!(all.contains(&(ids[0].clone(), 500)));
    drop(r);
    d.run(100, Op::PurgeExpired);
    let r = d.read();
    assert!(r.is_revoked(&ids[0]).unwrap());
    assert!(!r.is_revoked(&ids[1]).unwrap());
}

#[test]
fn a_replayed_command_changes_nothing_and_returns_the_first_response() {
    let mut d = db();
    let c = cmd(
        0,
        Op::PutEntry {
            entry: entry("e1", "n1"),
        },
    );
    let first = d.apply(&c);
    let again = d.apply(&c);
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.outcome, again.outcome);
    assert_eq!(first.audit_seq, again.audit_seq);
    let r = d.read();
    assert_eq!(r.audit_len().unwrap(), 1);
    assert_eq!(r.entry_changes_since("n1", 0, 10).unwrap().len(), 1);
}

#[test]
fn every_command_is_audited_even_when_rejected_and_a_rejection_writes_nothing() {
    let mut d = db();
    let mut bad = cmd(
        0,
        Op::DeleteEntry {
            id: "missing".into(),
        },
    );
    bad.audit.decision = AuditDecision::Deny;
    bad.audit.reason = Some("no right".into());
    assert_eq!(
        d.apply(&bad).outcome,
        Outcome::Rejected(Rejection::NotFound)
    );
    // Invalid in apply (as if a bad entry reached the log).
    let invalid = cmd(
        0,
        Op::SetNodeStatus {
            name: "a/b".into(),
            status: NodeStatus::Active,
        },
    );
    assert!(matches!(
        d.apply(&invalid).outcome,
        Outcome::Rejected(Rejection::Invalid(_))
    ));
    let r = d.read();
    let audit = r.audit(0, 10).unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0].record.decision, AuditDecision::Deny);
    assert_eq!(audit[0].seq, 0);
    assert_eq!(audit[1].seq, 1);
    assert!(r.nodes().unwrap().is_empty());
}

#[test]
fn keys_get_raft_assigned_ids_and_compromise_is_final() {
    let mut d = db();
    let publish = |kind| Op::PublishKey {
        authority: 1,
        kind,
        public_der: vec![1, 2, 3],
        not_after_ms: 10,
    };
    assert_eq!(d.run(0, publish(KeyKind::X509Ca)), Outcome::KeyId(1));
    assert_eq!(d.run(0, publish(KeyKind::Biscuit)), Outcome::KeyId(2));
    assert_eq!(
        d.run(
            0,
            Op::SetKeyStatus {
                key_id: 2,
                status: KeyStatus::Compromised
            }
        ),
        Outcome::Done
    );
    assert!(matches!(
        d.run(
            0,
            Op::SetKeyStatus {
                key_id: 2,
                status: KeyStatus::Active
            }
        ),
        Outcome::Rejected(Rejection::Invalid(_))
    ));
    assert_eq!(
        d.run(
            0,
            Op::SetKeyStatus {
                key_id: 9,
                status: KeyStatus::Active
            }
        ),
        Outcome::Rejected(Rejection::NotFound)
    );
    let keys = d.read().keys().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].status, KeyStatus::Published);
    assert_eq!(keys[1].status, KeyStatus::Compromised);
}

#[test]
fn command_ids_are_forgotten_after_their_retention() {
    let mut d = db();
    let c = cmd(0, Op::AuditOnly);
    d.apply(&c);
    d.run(COMMAND_ID_RETENTION_MS, Op::PurgeExpired);
    // Past retention the id is forgotten, so the same id applies again.
    assert!(!d.apply(&c).replayed);
}

#[test]
fn the_audit_tree_matches_the_reference_and_survives_sealing() {
    use ringzero_policy::audit::{
        MerkleTree, consistency_proof, inclusion_proof, merkle, verify_consistency,
        verify_inclusion,
    };
    let mut d = db();
    let mut reference = MerkleTree::new();
    for i in 0..37u64 {
        let mut c = cmd(1_000 + i, Op::AuditOnly);
        c.audit.actor = format!("spiffe://td/user/u{}", i % 3);
        c.audit.operation = if i % 2 == 0 {
            "entry:read"
        } else {
            "node:read"
        }
        .into();
        c.audit.resource = format!("ns/a{}/x", i % 2);
        if i % 5 == 0 {
            c.audit.decision = AuditDecision::Deny;
        }
        let r = d.apply(&c);
        assert_eq!(r.audit_seq, i);
        let stored = d.read().audit_record(i).unwrap().unwrap();
        reference.push(audit_entry(&stored).leaf_hash());
    }
    let r = d.read();
    assert_eq!(r.audit_size().unwrap(), 37);
    for size in [1u64, 2, 3, 8, 16, 31, 37] {
        let tree = r.audit_tree(size);
        let root = merkle::root(&tree, size).unwrap();
        assert_eq!(root, reference.root(size).unwrap(), "size {size}");
        let leaf = audit_entry(&r.audit_record(size - 1).unwrap().unwrap()).leaf_hash();
        let proof = inclusion_proof(&tree, size - 1, size).unwrap();
        verify_inclusion(&leaf, size - 1, size, &proof, &root).unwrap();
    }
    let tree = r.audit_tree(37);
    let proof = consistency_proof(&tree, 10, 37).unwrap();
    verify_consistency(
        10,
        37,
        &reference.root(10).unwrap(),
        &reference.root(37).unwrap(),
        &proof,
    )
    .unwrap();

    // Queries go through the indexes and agree with a scan.
    let q = AuditQuery {
        actor: Some("spiffe://td/user/u1".into()),
        limit: 100,
        ..Default::default()
    };
    let (hits, more) = r.audit_query(&q).unwrap();
    assert!(more.is_none());
    assert_eq!(
        hits.iter().map(|a| a.seq).collect::<Vec<_>>(),
        (0..37).filter(|i| i % 3 == 1).collect::<Vec<_>>()
    );
    let q = AuditQuery {
        decision: Some(AuditDecision::Deny),
        resource: Some("ns/a0".into()),
        limit: 3,
        ..Default::default()
    };
    let (hits, more) = r.audit_query(&q).unwrap();
    assert_eq!(
        hits.iter().map(|a| a.seq).collect::<Vec<_>>(),
        vec![0, 10, 20]
    );
    assert_eq!(more, Some(20));
    let (next, _) = r
        .audit_query(&AuditQuery {
            after_seq: more,
            ..q.clone()
        })
        .unwrap();
    assert_eq!(next.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![30]);
    let q = AuditQuery {
        since_ms: Some(1_010),
        until_ms: Some(1_012),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(r.audit_query(&q).unwrap().0.len(), 3);
    // A sparse filter with a tiny page still makes progress: the continuation is the last row
    // scanned, not the last match.
    let sparse = AuditQuery {
        since_ms: Some(1_000),
        actor: None,
        resource: Some("ns/nowhere".into()),
        limit: 1,
        ..Default::default()
    };
    let mut after = None;
    let mut pages = 0;
    loop {
        let (hits, next) = r
            .audit_query(&AuditQuery {
                after_seq: after,
                ..sparse.clone()
            })
            .unwrap();
        assert!(hits.is_empty());
        pages += 1;
        match next {
            Some(n) => {
                assert!(after.is_none_or(|a| n > a), "no progress");
                after = Some(n);
            }
            None => break,
        }
    }
    assert!(pages >= 1);
    // "ns/a" is not a segment prefix of "ns/a0/x".
    let q = AuditQuery {
        resource: Some("ns/a".into()),
        limit: 100,
        ..Default::default()
    };
    assert!(r.audit_query(&q).unwrap().0.is_empty());
    drop(r);

    // Sealing drops live records, keeps the tree.
    assert_eq!(d.run(0, Op::SealAudit { up_to: 20 }), Outcome::Done);
    assert!(matches!(
        d.run(0, Op::SealAudit { up_to: 20 }),
        Outcome::Rejected(_)
    ));
    assert!(matches!(
        d.run(0, Op::SealAudit { up_to: 1_000 }),
        Outcome::Rejected(_)
    ));
    let r = d.read();
    assert!(r.audit_record(19).unwrap().is_none());
    assert!(r.audit_record(20).unwrap().is_some());
    assert_eq!(r.audit_sealed_up_to().unwrap(), 20);
    assert_eq!(
        merkle::root(&r.audit_tree(37), 37).unwrap(),
        reference.root(37).unwrap()
    );
    let q = AuditQuery {
        actor: Some("spiffe://td/user/u1".into()),
        limit: 100,
        ..Default::default()
    };
    assert!(r.audit_query(&q).unwrap().0.iter().all(|a| a.seq >= 20));
}

#[test]
fn a_user_invite_creates_the_user_once_and_removal_revokes_its_credentials() {
    let mut d = db();
    let alice = crate::command::User {
        name: "alice".into(),
        role: "developer".into(),
        namespace: Some("web".into()),
    };
    let invite = Op::IssueUserInvite {
        token_id: [3; 16],
        secret_sha256: sha(b"inv"),
        user: alice.clone(),
        expires_ms: 1000,
    };
    assert_eq!(d.run(0, invite), Outcome::Done);
    assert!(d.read().user("alice").unwrap().is_none());
    // A credential for a user that does not exist (yet) is refused.
    let credential = |serial: u8, expires_ms: u64| Op::IssueUserCredential {
        user: "alice".into(),
        serial: vec![serial; 16],
        not_after_ms: expires_ms,
        revocation_ids: vec![vec![serial; 64], vec![serial + 1; 64]],
        expires_ms,
    };
    assert_eq!(
        d.run(5, credential(1, 5000)),
        Outcome::Rejected(Rejection::NotFound)
    );
    assert_eq!(
        redeem(&mut d, 10, 3, b"bad", "alice"),
        Outcome::Rejected(Rejection::JoinTokenMismatch)
    );
    assert_eq!(redeem(&mut d, 10, 3, b"inv", "alice"), Outcome::Done);
    assert_eq!(d.read().user("alice").unwrap(), Some(alice));
    assert!(d.read().user_invite(&[3; 16]).unwrap().is_none());
    assert_eq!(
        redeem(&mut d, 11, 3, b"inv", "alice"),
        Outcome::Rejected(Rejection::JoinTokenUsed)
    );
    // Two credentials: one already expired when the user is removed, one still valid.
    assert_eq!(d.run(20, credential(1, 50)), Outcome::Done);
    assert_eq!(d.run(20, credential(4, 5000)), Outcome::Done);
    assert!(!d.read().is_revoked(&[4; 64]).unwrap());
    assert_eq!(
        d.run(
            100,
            Op::RemoveUser {
                name: "alice".into()
            }
        ),
        Outcome::Done
    );
    let r = d.read();
    assert!(r.user("alice").unwrap().is_none());
    assert!(r.is_revoked(&[4; 64]).unwrap() && r.is_revoked(&[5; 64]).unwrap());
    assert!(!r.is_revoked(&[1; 64]).unwrap(), "expired ids are not kept");
    assert_eq!(r.revoked_serials().unwrap(), vec![(vec![4; 16], 5000)]);
    drop(r);
    // Gone: no credential is recorded for it any more.
    assert_eq!(
        d.run(200, credential(6, 5000)),
        Outcome::Rejected(Rejection::NotFound)
    );
    // An expired invite is refused.
    let late = Op::IssueUserInvite {
        token_id: [4; 16],
        secret_sha256: sha(b"late"),
        user: crate::command::User {
            name: "bob".into(),
            role: "auditor".into(),
            namespace: None,
        },
        expires_ms: 1000,
    };
    assert_eq!(d.run(0, late), Outcome::Done);
    assert_eq!(
        redeem(&mut d, 1000, 4, b"late", "bob"),
        Outcome::Rejected(Rejection::JoinTokenExpired)
    );
    assert!(d.read().user("bob").unwrap().is_none());
    // An invite does not change a user created meanwhile.
    let carol = |role: &str| crate::command::User {
        name: "carol".into(),
        role: role.into(),
        namespace: None,
    };
    let invite = Op::IssueUserInvite {
        token_id: [5; 16],
        secret_sha256: sha(b"c"),
        user: carol("admin"),
        expires_ms: 1000,
    };
    assert_eq!(d.run(0, invite), Outcome::Done);
    assert_eq!(
        d.run(
            1,
            Op::PutUser {
                user: carol("auditor")
            }
        ),
        Outcome::Done
    );
    assert_eq!(
        redeem(&mut d, 2, 5, b"c", "carol"),
        Outcome::Rejected(Rejection::UserExists)
    );
    assert_eq!(d.read().user("carol").unwrap(), Some(carol("auditor")));
}

fn mint(d: &mut Db, id: &[u8], parents: &[&[u8]], minter: &str, expires_ms: u64) -> Outcome {
    d.run(
        0,
        Op::RecordMint {
            id: id.to_vec(),
            parents: parents.iter().map(|p| p.to_vec()).collect(),
            minter: minter.into(),
            subject: "spiffe://td/ns/a/b".into(),
            expires_ms,
        },
    )
}

#[test]
fn revoking_a_token_revokes_everything_minted_from_it_transitively() {
    let mut d = db();
    // main → delegated (minted from main's two blocks) → grandchild; an unrelated token.
    assert_eq!(
        mint(&mut d, b"main", &[], "authority", 9_000),
        Outcome::Done
    );
    assert_eq!(
        mint(
            &mut d,
            b"child",
            &[b"main", b"main-att"],
            "spiffe://td/user/a",
            8_000
        ),
        Outcome::Done
    );
    assert_eq!(
        mint(
            &mut d,
            b"grandchild",
            &[b"child"],
            "spiffe://td/ns/a/b",
            7_000
        ),
        Outcome::Done
    );
    assert_eq!(
        mint(&mut d, b"other", &[], "authority", 9_000),
        Outcome::Done
    );
    // Revoking the attenuation the child was minted from reaches it and its own child.
    assert_eq!(
        d.run(
            1,
            Op::Revoke {
                ids: vec![b"main-att".to_vec()],
                expires_ms: 9_000
            }
        ),
        Outcome::Done
    );
    let r = d.read();
    for id in [&b"main-att"[..], b"child", b"grandchild"] {
        assert!(r.is_revoked(id).unwrap(), "{}", String::from_utf8_lossy(id));
    }
    assert!(!r.is_revoked(b"main").unwrap(), "a parent is never revoked");
    assert!(!r.is_revoked(b"other").unwrap());
    // Descendants are kept revoked until their own expiry, then purged with their lineage.
    let revs: std::collections::BTreeMap<Vec<u8>, u64> =
        r.revocations().unwrap().into_iter().collect();
    assert_eq!(revs[&b"grandchild".to_vec()], 7_000);
    drop(r);
    // A token cannot be minted from a revoked one.
    assert_eq!(
        mint(&mut d, b"late", &[b"child"], "spiffe://td/ns/a/b", 5_000),
        Outcome::Rejected(Rejection::ParentRevoked)
    );
    assert_eq!(d.run(9_500, Op::PurgeExpired), Outcome::Done);
    let r = d.read();
    assert!(r.minted(b"child").unwrap().is_none());
    assert!(r.minted(b"other").unwrap().is_none());
}

#[test]
fn a_suspended_or_removed_minter_cuts_off_its_lineage() {
    let mut d = db();
    let user = |name: &str| User {
        name: name.into(),
        role: "developer".into(),
        namespace: Some("shop".into()),
    };
    assert_eq!(
        d.run(
            0,
            Op::PutUser {
                user: user("alice")
            }
        ),
        Outcome::Done
    );
    assert_eq!(
        mint(&mut d, b"alice-main", &[], "authority", 9_000),
        Outcome::Done
    );
    assert_eq!(
        mint(
            &mut d,
            b"for-ci",
            &[b"alice-main"],
            "spiffe://td/user/alice",
            9_000
        ),
        Outcome::Done
    );
    assert_eq!(
        mint(
            &mut d,
            b"ci-sub",
            &[b"for-ci"],
            "spiffe://td/ns/shop/ci",
            9_000
        ),
        Outcome::Done
    );
    let ids = |x: &[u8]| vec![x.to_vec(), b"attenuation".to_vec()];
    assert_eq!(d.read().lineage_cut_off(&ids(b"ci-sub")).unwrap(), None);
    let suspend = |s| Op::SetUserSuspended {
        name: "alice".into(),
        suspended: s,
    };
    assert_eq!(d.run(1, suspend(true)), Outcome::Done);
    let r = d.read();
    assert!(r.is_suspended("alice").unwrap());
    let why = r.lineage_cut_off(&ids(b"ci-sub")).unwrap().unwrap();
    assert!(why.contains("alice") && why.contains("suspended"), "{why}");
    // Her own credential is not cut off by lineage (the gate refuses her certificate instead).
    assert_eq!(r.lineage_cut_off(&ids(b"alice-main")).unwrap(), None);
    drop(r);
    // No credential is issued to a suspended user.
    assert_eq!(
        d.run(
            2,
            Op::IssueUserCredential {
                user: "alice".into(),
                serial: vec![1],
                not_after_ms: 9_000,
                revocation_ids: vec![b"new".to_vec()],
                expires_ms: 9_000,
            }
        ),
        Outcome::Rejected(Rejection::UserSuspended)
    );
    assert_eq!(d.run(3, suspend(false)), Outcome::Done);
    assert_eq!(d.read().lineage_cut_off(&ids(b"ci-sub")).unwrap(), None);
    assert_eq!(
        d.run(
            4,
            Op::RemoveUser {
                name: "alice".into()
            }
        ),
        Outcome::Done
    );
    let why = d.read().lineage_cut_off(&ids(b"for-ci")).unwrap().unwrap();
    assert!(why.contains("removed"), "{why}");
    assert_eq!(
        d.run(5, suspend(true)),
        Outcome::Rejected(Rejection::NotFound)
    );
}

#[test]
fn retirement_and_issuance_are_recorded_for_verifiers_outside_the_authority() {
    let mut d = db();
    let id = match d.run(
        10,
        Op::PublishKey {
            authority: 1,
            kind: KeyKind::X509Ca,
            public_der: vec![1, 2, 3],
            not_after_ms: 99_000,
        },
    ) {
        Outcome::KeyId(id) => id,
        other => panic!("{other:?}"),
    };
    assert_eq!(issue(&mut d, 9, b"s", "n1", 99_000), Outcome::Done);
    assert_eq!(redeem(&mut d, 1, 9, b"s", "n1"), Outcome::Done);
    // The audit record names the issuing member (1): its high-water mark follows.
    for not_after in [5_000, 7_000, 6_000] {
        assert_eq!(
            d.run(
                0,
                Op::IssueSvid {
                    node: "n1".into(),
                    serial: vec![not_after as u8],
                    not_after_ms: not_after
                }
            ),
            Outcome::Done
        );
    }
    assert_eq!(d.read().issued_until(1).unwrap(), 7_000);
    assert_eq!(d.read().issued_until(2).unwrap(), 0);
    assert_eq!(d.read().key_retired_ms(id).unwrap(), None);
    assert_eq!(
        d.run(
            42,
            Op::SetKeyStatus {
                key_id: id,
                status: KeyStatus::Retired
            }
        ),
        Outcome::Done
    );
    assert_eq!(d.read().key_retired_ms(id).unwrap(), Some(42));
}
