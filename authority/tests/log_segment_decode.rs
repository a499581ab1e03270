//! What the Raft log reads back from its segment files never panics, whatever the disk hands
//! it: random bytes, and valid segments with bytes flipped, cut or appended, go through the
//! record scanner and the entry decoder (`fuzzing::log_segment`, also the cargo-fuzz target
//! `log_segment`). Opening a log with such a segment is tested in `store::segments`.
#![allow(clippy::unwrap_used)]

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use proptest::prelude::*;
use ringzero_authority::TypeConfig;
use ringzero_authority::command::Batch;
use ringzero_authority::fuzzing::log_segment;
use ringzero_authority::testing::audit_only;

/// `n` records as the log writes them: length, CRC-32 of index and payload, index, payload.
fn valid_segment(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let e = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), 8 + i),
            payload: EntryPayload::Normal(Batch::one(audit_only(&format!("e{i}")))),
        };
        let payload = postcard::to_stdvec(&e).unwrap();
        let index = (8 + i).to_le_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&index);
        crc.update(&payload);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(&index);
        out.extend_from_slice(&payload);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        log_segment(&data);
    }

    #[test]
    fn damaged_segments_never_panic(
        n in 1u64..4,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
        tail in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut data = valid_segment(n);
        for (at, b) in flips {
            let i = at % data.len();
            data[i] ^= b;
        }
        data.truncate(cut % (data.len() + 1));
        data.extend(tail);
        log_segment(&data);
    }
}
