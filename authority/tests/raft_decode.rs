//! What the Raft service decodes from the network never panics: random bytes, and valid
//! messages with bytes flipped, truncated or appended, go through the decoders and the checks
//! the service runs before openraft (`fuzzing::raft_message`, also the cargo-fuzz target
//! `raft_message`).
#![allow(clippy::unwrap_used)]

use openraft::raft::AppendEntriesRequest;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use proptest::prelude::*;
use ringzero_authority::TypeConfig;
use ringzero_authority::command::Batch;
use ringzero_authority::fuzzing::raft_message;
use ringzero_authority::testing::audit_only;

fn valid_append(n: u64) -> Vec<u8> {
    let rpc = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 7)),
        entries: (0..n)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(3, 1), 8 + i),
                payload: EntryPayload::Normal(Batch::one(audit_only(&format!("e{i}")))),
            })
            .collect(),
        leader_commit: None,
    };
    postcard::to_stdvec(&rpc).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        raft_message(&data);
    }

    #[test]
    fn mutated_messages_never_panic(
        n in 0u64..4,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut data = valid_append(n);
        for (at, b) in flips {
            let i = at % data.len();
            data[i] ^= b;
        }
        data.truncate(cut % (data.len() + 1));
        data.extend(tail);
        raft_message(&data);
    }
}
