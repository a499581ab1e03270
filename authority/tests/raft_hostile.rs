//! Raft messages a member never sends: forged appends that would have panicked openraft's core
//! are refused by `net::check_append` before openraft sees them, and a node that was sent them
//! keeps applying.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod common;

use common::T;
use openraft::raft::AppendEntriesRequest;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use ringzero_authority::check_append;
use ringzero_authority::command::Batch;
use ringzero_authority::testing::{Cluster, audit_only, test_config};
use ringzero_authority::{NodeId, TypeConfig};

fn entry(term: u64, leader: NodeId, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
        payload: EntryPayload::Normal(Batch::one(audit_only(&format!("forged-{index}")))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_appends_are_refused_before_openraft_and_the_node_keeps_applying() {
    let c = Cluster::start(3, test_config(), 11).await.expect("cluster");
    for i in 0..5 {
        c.write(audit_only(&format!("w{i}")), T)
            .await
            .expect("write");
    }
    let leader = c.leader(&[], T).await.expect("leader");
    let follower = c.running().into_iter().find(|&n| n != leader).unwrap();
    let m = c.raft(leader).unwrap().metrics().borrow().clone();
    let vote = m.vote;
    let term = vote.leader_id().term;
    let last = m.last_log_index.unwrap();
    let committed = m.last_applied.unwrap();

    let forged = |prev: Option<LogId<NodeId>>, entries: Vec<Entry<TypeConfig>>, commit| {
        AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: prev,
            entries,
            leader_commit: commit,
        }
    };
    let cases = [
        (
            "entries that skip an index",
            forged(
                Some(LogId::new(CommittedLeaderId::new(term, leader), last)),
                vec![entry(term, leader, last + 1), entry(term, leader, last + 3)],
                None,
            ),
        ),
        (
            "entries of a later term than the vote",
            forged(
                Some(LogId::new(CommittedLeaderId::new(term, leader), last)),
                vec![entry(term + 5, leader, last + 1)],
                None,
            ),
        ),
        (
            "an entry that does not follow prev_log_id",
            forged(
                Some(LogId::new(CommittedLeaderId::new(term, leader), last)),
                vec![entry(term, leader, last + 7)],
                None,
            ),
        ),
        (
            "entries going back in term",
            forged(
                Some(LogId::new(CommittedLeaderId::new(term, leader), last)),
                vec![
                    entry(term, leader, last + 1),
                    entry(term - 1, leader, last + 2),
                ],
                None,
            ),
        ),
        (
            "a prev_log_id of a later term than the vote",
            forged(
                Some(LogId::new(CommittedLeaderId::new(term + 3, leader), last)),
                vec![],
                None,
            ),
        ),
    ];
    for (what, rpc) in cases {
        assert!(check_append(&rpc).is_err(), "{what}: not refused");
    }
    // A real heartbeat passes.
    let heartbeat = forged(
        Some(LogId::new(CommittedLeaderId::new(term, leader), last)),
        vec![],
        Some(committed),
    );
    assert!(check_append(&heartbeat).is_ok());

    // The follower keeps applying.
    let r = c.write(audit_only("after"), T).await.expect("write after");
    let _ = r;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let applied = c.raft(follower).unwrap().metrics().borrow().last_applied;
        if applied.is_some_and(|a| a.index > committed.index) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower stopped applying"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
