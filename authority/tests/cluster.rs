//! Real openraft nodes on durable redb files, wired through the in-process fault router.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod common;

use common::{T, converged};
use ringzero_authority::NodeId;
use ringzero_authority::testing::{Cluster, audit_only, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_and_replicate() {
    let c = Cluster::start(3, test_config(), 1).await.expect("cluster");
    c.leader(&[], T).await.expect("leader");
    for i in 0..20 {
        let r = c
            .write(audit_only(&format!("w{i}")), T)
            .await
            .expect("write");
        assert_eq!(r.audit_seq, i);
        assert!(!r.replayed);
    }
    let log = converged(&c).await;
    assert_eq!(log, (0..20).map(|i| format!("w{i}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_is_replaced_and_the_majority_commits() {
    let c = Cluster::start(3, test_config(), 2).await.expect("cluster");
    c.write(audit_only("before"), T).await.expect("write");
    let old = c.leader(&[], T).await.expect("leader");
    let rest: Vec<NodeId> = c.running().into_iter().filter(|&n| n != old).collect();
    c.router.partition(&[old], &rest);

    let started = tokio::time::Instant::now();
    let new = c.leader(&rest, T).await.expect("new leader");
    assert_ne!(new, old);
    let elected_in = started.elapsed();
    c.write_via(&rest, audit_only("during"), T)
        .await
        .expect("majority commits");

    // The old leader, alone, commits nothing.
    let raft = c.raft(old).expect("old").clone();
    let stuck = tokio::time::timeout(
        Duration::from_millis(800),
        raft.client_write(ringzero_authority::command::Batch::one(audit_only("lost"))),
    )
    .await;
    assert!(
        !matches!(stuck, Ok(Ok(_))),
        "a minority leader committed a write"
    );

    c.router.heal();
    let log = converged(&c).await;
    assert_eq!(
        log,
        ["before", "during"],
        "uncommitted write survived or committed write lost"
    );
    assert!(
        elected_in < Duration::from_secs(3),
        "election took {elected_in:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_partition_commits_nothing() {
    let c = Cluster::start(3, test_config(), 3).await.expect("cluster");
    let leader = c.leader(&[], T).await.expect("leader");
    let followers: Vec<NodeId> = c.running().into_iter().filter(|&n| n != leader).collect();
    // Isolate one follower: it can never become a leader that commits.
    let lonely = followers[0];
    let others: Vec<NodeId> = c.running().into_iter().filter(|&n| n != lonely).collect();
    c.router.partition(&[lonely], &others);
    let attempt = c
        .write_via(&[lonely], audit_only("minority"), Duration::from_secs(2))
        .await;
    assert!(attempt.is_err(), "the minority side committed");
    c.write_via(&others, audit_only("majority"), T)
        .await
        .expect("majority");
    c.router.heal();
    assert_eq!(converged(&c).await, ["majority"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_from_the_log() {
    let mut c = Cluster::start(3, test_config(), 4).await.expect("cluster");
    let leader = c.leader(&[], T).await.expect("leader");
    let follower = c
        .running()
        .into_iter()
        .find(|&n| n != leader)
        .expect("follower");
    c.write(audit_only("a"), T).await.expect("write");
    c.stop_node(follower).await.expect("stop");
    for i in 0..20 {
        c.write(audit_only(&format!("b{i}")), T)
            .await
            .expect("write");
    }
    c.start_node(follower).await.expect("restart");
    let log = converged(&c).await;
    assert_eq!(log.len(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_from_a_snapshot() {
    let mut config = test_config();
    config.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(30);
    config.max_in_snapshot_log_to_keep = 0;
    config.purge_batch_size = 1;
    let mut c = Cluster::start(3, config, 5).await.expect("cluster");
    let leader = c.leader(&[], T).await.expect("leader");
    let follower = c
        .running()
        .into_iter()
        .find(|&n| n != leader)
        .expect("follower");
    c.stop_node(follower).await.expect("stop");
    for i in 0..120 {
        c.write(audit_only(&format!("s{i}")), T)
            .await
            .expect("write");
    }
    // The leader snapshots and purges what the follower misses (it postpones a purge while a
    // replication attempt to the missing follower is in flight, so wait for it).
    let mut rx = c.raft(leader).expect("leader").metrics();
    tokio::time::timeout(T, async {
        while rx.borrow().purged.is_none_or(|p| p.index <= 1) {
            let _ = rx.changed().await;
        }
    })
    .await
    .expect("leader never purged");
    c.start_node(follower).await.expect("restart");
    let log = converged(&c).await;
    assert_eq!(log.len(), 120);
    let m = c
        .raft(follower)
        .expect("follower")
        .metrics()
        .borrow()
        .clone();
    assert!(
        m.snapshot.is_some(),
        "follower caught up without a snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_restart_keeps_every_committed_write() {
    let mut c = Cluster::start(3, test_config(), 6).await.expect("cluster");
    for i in 0..30 {
        c.write(audit_only(&format!("k{i}")), T)
            .await
            .expect("write");
    }
    let before = converged(&c).await;
    for id in [1, 2, 3] {
        c.stop_node(id).await.expect("stop");
    }
    for id in [1, 2, 3] {
        c.start_node(id).await.expect("start");
    }
    c.leader(&[], T).await.expect("leader after restart");
    c.write(audit_only("after"), T)
        .await
        .expect("write after restart");
    let after = converged(&c).await;
    assert_eq!(&after[..30], &before[..]);
    assert_eq!(after.len(), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_command_is_applied_once() {
    let c = Cluster::start(3, test_config(), 7).await.expect("cluster");
    let cmd = audit_only("once");
    let first = c.write(cmd.clone(), T).await.expect("write");
    let second = c.write(cmd, T).await.expect("retry");
    assert!(!first.replayed);
    assert!(second.replayed);
    assert_eq!(first.audit_seq, second.audit_seq);
    assert_eq!(converged(&c).await, ["once"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_under_load() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut c = Cluster::start(3, test_config(), 8).await.expect("cluster");
    c.leader(&[], T).await.expect("leader");
    c.start_node(4).await.expect("start node 4");
    let c = Arc::new(c);

    // A writer proposes continuously while membership changes.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("m{i}");
                c.write(audit_only(&id), T).await.expect("write under load");
                acked.push(id);
                i += 1;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let leader = c.leader(&[], T).await.expect("leader");
    c.raft(leader)
        .expect("leader")
        .add_learner(4, ringzero_authority::testing::node(4), true)
        .await
        .expect("add learner");
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.change_voters(&[1, 2, 3, 4], T).await.expect("promote 4");
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.change_voters(&[2, 3, 4], T).await.expect("remove 1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.expect("writer");
    assert!(
        acked.len() > 20,
        "only {} writes during the changes",
        acked.len()
    );

    let mut c = Arc::try_unwrap(c).expect("sole owner");
    c.stop_node(1).await.expect("stop removed node");
    c.write(audit_only("final"), T)
        .await
        .expect("write after changes");
    let log = converged(&c).await;
    for id in &acked {
        assert_eq!(log.iter().filter(|x| *x == id).count(), 1, "{id}");
    }
    let members = c
        .reader(4)
        .expect("reader")
        .membership()
        .expect("membership");
    let voters: Vec<NodeId> = members.membership().voter_ids().collect();
    assert_eq!(voters, vec![2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racing_redemptions_of_one_join_token_exactly_one_wins() {
    use ringzero_authority::command::{JoinPurpose, Op, Outcome, Rejection};
    let c = Cluster::start(3, test_config(), 9).await.expect("cluster");
    let secret = ring::digest::digest(&ring::digest::SHA256, b"join-secret");
    let sha: [u8; 32] = secret.as_ref().try_into().expect("32 bytes");
    let mut issue = audit_only("issue");
    issue.op = Op::IssueJoinToken {
        token_id: [5; 16],
        secret_sha256: sha,
        node_name: "n7".into(),
        purpose: JoinPurpose::Agent,
        expires_ms: u64::MAX,
    };
    c.write(issue, T).await.expect("issue");
    for round in 0..5 {
        let redeem = |who: &str| {
            let mut cmd = audit_only(&format!("redeem-{round}-{who}"));
            cmd.op = Op::RedeemJoinToken {
                token_id: [5; 16],
                presented_sha256: sha,
                node_name: "n7".into(),
            };
            cmd
        };
        // Both proposals race into the log; apply sees them in log order on every replica.
        let (a, b) = tokio::join!(c.write(redeem("a"), T), c.write(redeem("b"), T));
        let outcomes = [a.expect("a").outcome, b.expect("b").outcome];
        if round == 0 {
            assert_eq!(
                outcomes.iter().filter(|o| **o == Outcome::Done).count(),
                1,
                "{outcomes:?}"
            );
            assert!(
                outcomes.contains(&Outcome::Rejected(Rejection::JoinTokenUsed)),
                "{outcomes:?}"
            );
        } else {
            assert!(
                outcomes
                    .iter()
                    .all(|o| *o == Outcome::Rejected(Rejection::JoinTokenUsed))
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_machine_never_goes_backwards_across_restarts() {
    let mut c = Cluster::start(3, test_config(), 10).await.expect("cluster");
    for round in 0..5u64 {
        for i in 0..10 {
            c.write(audit_only(&format!("r{round}-{i}")), T)
                .await
                .expect("write");
        }
        let victim = 1 + round % 3;
        let before = c
            .reader(victim)
            .expect("reader")
            .last_applied()
            .expect("applied");
        let audit_before = c.reader(victim).expect("reader").audit_len().expect("len");
        c.restart_node(victim).await.expect("restart");
        // Straight from disk, before any catch-up.
        let after = c
            .reader(victim)
            .expect("reader")
            .last_applied()
            .expect("applied");
        let audit_after = c.reader(victim).expect("reader").audit_len().expect("len");
        assert!(
            after >= before,
            "node {victim} went back from {before:?} to {after:?}"
        );
        assert!(audit_after >= audit_before);
    }
    assert_eq!(converged(&c).await.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_command_is_refused_before_it_is_proposed() {
    use ringzero_authority::command::{NodeStatus, Op};
    let c = Cluster::start(3, test_config(), 11).await.expect("cluster");
    c.write(audit_only("ok"), T).await.expect("write");
    let mut bad = audit_only("bad");
    bad.op = Op::SetNodeStatus {
        name: "../etc".into(),
        status: NodeStatus::Banned,
    };
    let err = c.write(bad, T).await.expect_err("refused");
    assert!(err.to_string().contains("invalid command"), "{err}");
    assert_eq!(converged(&c).await, ["ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_proposals_commits_together_in_order_beside_single_ones() {
    use ringzero_authority::ProposeError;
    use ringzero_authority::command::MAX_BATCH;
    let c = Cluster::start(3, test_config(), 37).await.expect("cluster");
    let leader = c.leader(&[], T).await.expect("leader");
    c.write(audit_only("first"), T).await.expect("write");
    let raft = c.raft(leader).expect("leader raft").clone();
    let proposer = ringzero_authority::Proposer::new(raft.clone());
    // Single proposals racing with the groups.
    let mut singles = tokio::task::JoinSet::new();
    for i in 0..40 {
        let p = proposer.clone();
        singles.spawn(async move { p.propose(audit_only(&format!("s{i}"))).await });
    }
    // A group with an invalid command in its middle, and a group larger than one batch.
    let mut group: Vec<_> = (0..10).map(|i| audit_only(&format!("g{i}"))).collect();
    let mut bad = audit_only("bad");
    bad.audit.actor = "x".repeat(10_000);
    group.insert(5, bad);
    let big: Vec<_> = (0..MAX_BATCH + 10)
        .map(|i| audit_only(&format!("b{i}")))
        .collect();
    let (small, large) = tokio::join!(proposer.propose_all(group), proposer.propose_all(big));
    assert_eq!(small.len(), 11);
    assert!(matches!(small[5], Err(ProposeError::Invalid(_))));
    let seqs: Vec<u64> = small
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 5)
        .map(|(_, r)| r.as_ref().expect("committed").audit_seq)
        .collect();
    // One group, one batch: its records are consecutive, in the group's order.
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let large: Vec<u64> = large
        .iter()
        .map(|r| r.as_ref().expect("committed").audit_seq)
        .collect();
    assert_eq!(large.len(), MAX_BATCH + 10);
    assert!(large.windows(2).all(|w| w[1] > w[0]), "{large:?}");
    assert!(large[..MAX_BATCH].windows(2).all(|w| w[1] == w[0] + 1));
    while let Some(r) = singles.join_next().await {
        r.expect("task").expect("committed");
    }
    let log = converged(&c).await;
    assert_eq!(log.len(), 1 + 40 + 10 + MAX_BATCH + 10);
    assert!(!log.iter().any(|r| r == "bad"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_share_entries_and_each_gets_its_response() {
    let c = Cluster::start(3, test_config(), 31).await.expect("cluster");
    let leader = c.leader(&[], T).await.expect("leader");
    c.write(audit_only("first"), T).await.expect("write");
    let raft = c.raft(leader).expect("leader raft").clone();
    let before = raft.metrics().borrow().last_log_index.unwrap_or(0);
    let proposer = ringzero_authority::Proposer::new(raft.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let p = proposer.clone();
        tasks.spawn(async move { p.propose(audit_only(&format!("c{i}"))).await });
    }
    let mut seqs = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r = r.expect("task").expect("committed");
        assert!(!r.replayed);
        seqs.push(r.audit_seq);
    }
    seqs.sort();
    // Every command got its own audit record, numbered without gaps after "first".
    assert_eq!(seqs, (1..201).collect::<Vec<u64>>());
    let after = raft.metrics().borrow().last_log_index.unwrap_or(0);
    assert!(
        after - before < 200,
        "200 concurrent commands took {} entries: nothing was batched",
        after - before
    );
    let log = converged(&c).await;
    assert_eq!(log.len(), 201);
    // An invalid command is refused before it reaches a batch, and nothing else is affected.
    let mut bad = audit_only("bad");
    bad.audit.actor = "x".repeat(10_000);
    assert!(matches!(
        proposer.propose(bad).await,
        Err(ringzero_authority::ProposeError::Invalid(_))
    ));
}
