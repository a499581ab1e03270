//! A follower with the longer log stands at once when a lagging survivor stands first.
//!
//! When the leader dies mid-write, its followers can hold logs of different lengths: the last
//! entry reached one of them and not the other. If the shorter one times out first, the longer
//! one must refuse it its vote (Raft's log check), and openraft refuses *without* moving to the
//! candidate's term (its vote couples term and candidate). The longer one then stands on its
//! own timer at the same term the shorter one has already voted for itself in, is refused in
//! turn, and wins only a further election timeout later: a split vote that measured as the slow
//! half (~800 ms against ~450 ms) of `cargo bench -p ringzero-tests --bench failover`.
//!
//! The same happens when both survivors time out within a tick of each other: each votes for
//! itself at the same term, and the longer log refuses the shorter for its log.
//!
//! [`Takeover`] watches the vote requests this node refuses. When the refusal is for the log
//! (ours is longer), the candidate has moved past the term we follow (or we both stand at it),
//! and our own leader has been silent longer than its lease — so our own timer is about to
//! fire anyway — it starts our election now, past the candidate's term, which the candidate can
//! grant. Raft's safety never
//! rests on timing: this only moves forward, by at most one election timeout, an election this
//! node would have started by itself, and only once per candidate term. A live leader keeps its
//! followers' lease fresh, so a lagging or partitioned member cannot use it to disrupt one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::raft::{VoteRequest, VoteResponse};

use crate::{NodeId, Raft};

/// The most elections started for one refusal: ours can be at most two terms behind the
/// candidate's for this to be the split vote it is meant for.
const MAX_ELECTIONS: u64 = 3;

/// Starts this node's election early when a lagging survivor stands first (see the module).
pub(crate) struct Takeover {
    raft: Raft,
    me: NodeId,
    /// The leader's lease: how long followers refuse candidates after hearing from it
    /// (openraft's `election_timeout_max`).
    lease: Duration,
    since: Instant,
    /// When an AppendEntries from a leader was last accepted, in ms after `since`.
    heard_ms: AtomicU64,
    /// The highest candidate term already answered with an election.
    answered_term: AtomicU64,
}

impl std::fmt::Debug for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Takeover")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Takeover {
    pub(crate) fn new(raft: Raft, me: NodeId, lease: Duration) -> Arc<Self> {
        Arc::new(Self {
            raft,
            me,
            lease,
            since: Instant::now(),
            heard_ms: AtomicU64::new(0),
            answered_term: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A leader's AppendEntries was accepted: its lease runs from now.
    pub(crate) fn heard_from_leader(&self) {
        self.heard_ms.fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    /// After this node answered `req` with `resp`: starts its election if that was the refusal
    /// of a split vote in the making.
    pub(crate) fn after_vote(&self, req: &VoteRequest<NodeId>, resp: &VoteResponse<NodeId>) {
        let silent = Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.heard_ms.load(Ordering::Relaxed)),
        );
        let Some(n) = elections_needed(self.me, req, resp, silent, self.lease) else {
            return;
        };
        let term = req.vote.leader_id().term;
        if self.answered_term.fetch_max(term, Ordering::Relaxed) >= term {
            return;
        }
        tracing::info!(
            candidate = %req.vote,
            our_vote = %resp.vote,
            silent_ms = silent.as_millis() as u64,
            "refused a candidate with a shorter log after the leader went silent: standing now"
        );
        let raft = self.raft.clone();
        tokio::spawn(async move {
            // Each election moves one term up; a leader ignores the trigger.
            for _ in 0..n {
                if raft.trigger().elect().await.is_err() {
                    break;
                }
            }
        });
    }
}

/// How many elections node `me` should start after answering `req` with `resp`, its leader
/// silent for `silent`: none unless the refusal was for the log alone — ours longer, the
/// candidate past our term, our leader's lease over — and we are not the leader.
fn elections_needed(
    me: NodeId,
    req: &VoteRequest<NodeId>,
    resp: &VoteResponse<NodeId>,
    silent: Duration,
    lease: Duration,
) -> Option<u64> {
    if resp.vote_granted || silent <= lease {
        return None;
    }
    if resp.vote.is_committed() && resp.vote.leader_id().voted_for() == Some(me) {
        return None;
    }
    if resp.last_log_id.as_ref() <= req.last_log_id.as_ref() {
        return None;
    }
    let theirs = req.vote.leader_id().term;
    let ours = resp.vote.leader_id().term;
    let n = match theirs.checked_sub(ours)? {
        // Both stood at this term (or we took theirs when refused): nobody can win it.
        0 if !resp.vote.is_committed() => 1,
        0 => return None,
        ahead => ahead + 1,
    };
    (n <= MAX_ELECTIONS).then_some(n)
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, Vote};

    use super::*;

    const ME: NodeId = 2;
    const LEASE: Duration = Duration::from_millis(200);
    const SILENT: Duration = Duration::from_millis(250);

    fn log(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 0), index))
    }

    fn req(term: u64, candidate: NodeId, last: Option<LogId<NodeId>>) -> VoteRequest<NodeId> {
        VoteRequest::new(Vote::new(term, candidate), last)
    }

    fn refused(vote: Vote<NodeId>, last: Option<LogId<NodeId>>) -> VoteResponse<NodeId> {
        VoteResponse::new(vote, last, false)
    }

    fn committed(term: u64, leader: NodeId) -> Vote<NodeId> {
        Vote::new_committed(term, leader)
    }

    /// The decision for `req` refused with `resp`, our leader silent past its lease.
    fn needed(req: VoteRequest<NodeId>, resp: VoteResponse<NodeId>) -> Option<u64> {
        elections_needed(ME, &req, &resp, SILENT, LEASE)
    }

    #[test]
    fn a_lagging_candidate_past_our_term_after_the_lease_gets_two_elections() {
        // We follow leader 1 at term 5 with entry 41; candidate 3 stood at term 6 with 40.
        let n = needed(req(6, 3, log(5, 40)), refused(committed(5, 1), log(5, 41)));
        assert_eq!(n, Some(2), "term 6 then 7: past the candidate's self-vote");
    }

    #[test]
    fn nothing_while_the_leader_is_heard() {
        let n = elections_needed(
            ME,
            &req(6, 3, log(5, 40)),
            &refused(committed(5, 1), log(5, 41)),
            LEASE,
            LEASE,
        );
        assert_eq!(n, None, "a live leader's lease is never cut short");
    }

    #[test]
    fn nothing_when_we_lead() {
        // A leader never hears AppendEntries, so its silence says nothing.
        let n = needed(req(6, 3, log(5, 40)), refused(committed(5, ME), log(5, 41)));
        assert_eq!(n, None);
    }

    #[test]
    fn nothing_when_the_candidate_log_is_as_long() {
        for last in [log(5, 41), log(6, 1)] {
            let n = needed(req(6, 3, last), refused(committed(5, 1), log(5, 41)));
            assert_eq!(n, None, "{last:?}: refused for another reason");
        }
    }

    #[test]
    fn nothing_when_granted() {
        let resp = VoteResponse::new(Vote::new(6, 3), log(5, 41), true);
        assert_eq!(needed(req(6, 3, log(5, 40)), resp), None);
    }

    #[test]
    fn a_split_vote_at_the_candidate_term_gets_one_election() {
        // Both survivors stood at term 6 within a tick; ours is the longer log.
        for ours in [Vote::new(6, ME), Vote::new(6, 3)] {
            let n = needed(req(6, 3, log(5, 40)), refused(ours, log(5, 41)));
            assert_eq!(n, Some(1), "{ours}: term 7 beats the candidate's 6");
        }
    }

    #[test]
    fn nothing_when_we_are_past_its_term_or_follow_a_leader_at_it() {
        for ours in [Vote::new(7, ME), committed(6, 1), committed(6, ME)] {
            let n = needed(req(6, 3, log(5, 40)), refused(ours, log(5, 41)));
            assert_eq!(n, None, "{ours}");
        }
    }

    #[test]
    fn nothing_for_a_candidate_far_ahead() {
        // A member that stood alone through many terms is not chased term by term.
        let n = needed(req(50, 3, log(5, 40)), refused(committed(5, 1), log(5, 41)));
        assert_eq!(n, None);
    }

    #[test]
    fn nothing_against_an_empty_log_request_from_an_empty_node() {
        let n = needed(req(1, 3, None), refused(Vote::default(), None));
        assert_eq!(n, None);
    }
}
