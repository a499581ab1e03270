//! Entry points for fuzzing what the network hands the authority (feature `fuzzing`): the
//! bytes of a Raft message as the Raft service decodes and checks them, and a command batch as
//! apply decodes and validates it; and what a damaged disk hands it: a Raft log segment file as
//! opening the log reads it. Each must return for any input; none may panic.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

use crate::command::Batch;
use crate::{NodeId, TypeConfig};

/// Decodes `data` as each Raft message the service accepts and runs the checks it runs before
/// openraft sees a message, for a sender `data[0]` names.
pub fn raft_message(data: &[u8]) {
    let sender = NodeId::from(data.first().copied().unwrap_or(0));
    if let Ok(rpc) = postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(data) {
        let _ = crate::raft_guard::sender_matches(sender, &rpc.vote, "AppendEntries");
        let _ = crate::raft_guard::check_append(&rpc);
        for e in &rpc.entries {
            if let openraft::EntryPayload::Normal(batch) = &e.payload {
                for cmd in batch.commands() {
                    let _ = cmd.validate();
                }
            }
        }
    }
    if let Ok(rpc) = postcard::from_bytes::<VoteRequest<NodeId>>(data) {
        let _ = crate::raft_guard::sender_matches(sender, &rpc.vote, "Vote");
    }
    if let Ok(rpc) = postcard::from_bytes::<InstallSnapshotRequest<TypeConfig>>(data) {
        let _ = crate::raft_guard::sender_matches(sender, &rpc.vote, "InstallSnapshot");
    }
    if let Ok(batch) = Batch::decode(data) {
        for cmd in batch.commands() {
            let _ = cmd.validate();
        }
    }
}

/// Reads `data` as a `ringzero job run` file, converts it as `SubmitJob` does and runs every
/// check a job meets before it is proposed and again in apply.
pub fn job_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = ringzero_proto::job_file::parse(text) else {
        return;
    };
    if let Ok(job) = crate::service::jobs::job_from_pb(&p) {
        let _ = job.validate();
        let _ = job.resource();
        let _ = crate::service::jobs::job_to_pb(&job);
    }
}

/// Reads `data` as a Raft log segment file the way opening the log does: every record up to the
/// first damaged one, and each good record's entry decoded.
pub fn log_segment(data: &[u8]) {
    let found = crate::store::segments::scan(data);
    assert!(found.valid as usize <= data.len());
    for (_, offset, len) in found.records {
        let start = offset as usize + 16;
        if let Some(payload) = data.get(start..start + len as usize) {
            let _ = postcard::from_bytes::<crate::types::Entry>(payload);
        }
    }
}
