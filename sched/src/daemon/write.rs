//! Writing a plan to the authority: losses, placements, stops and removals, in batches of at
//! most [`MAX_BATCH`], each batch all or nothing. The first error ends the pass; the next pass
//! reads the state again and plans from what was written. Every call carries the lease the
//! pass runs under, so the authority refuses it once that lease is lost (`FailedPrecondition`).

use ring::rand::{SecureRandom, SystemRandom};
use ringzero_proto::client::{AuthorityClient, ClientError};
use ringzero_proto::pb;

use crate::plan::NewAlloc;

/// Items per allocation call (the authority's bound).
pub const MAX_BATCH: usize = 1_000;

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A new allocation id: 16 characters of `[a-z0-9]` from the operating system's CSPRNG
/// (rejection sampling, so every character is uniform). `None` only if the OS has no entropy.
pub fn alloc_id(rng: &SystemRandom) -> Option<String> {
    let mut out = String::with_capacity(16);
    let mut buf = [0u8; 32];
    while out.len() < 16 {
        rng.fill(&mut buf).ok()?;
        for b in buf {
            // 252 = 7 · 36: bytes at or above it would favour the first characters.
            if b < 252 && out.len() < 16 {
                out.push(char::from(ALPHABET[usize::from(b % 36)]));
            }
        }
    }
    Some(out)
}

/// Which id-batch call.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IdsCall {
    Lost,
    Stop,
    Remove,
}

/// Sends `ids` in batches; returns the authority's allocation revision after the last one (0
/// when nothing was sent).
pub(crate) async fn ids(
    client: &mut AuthorityClient,
    call: IdsCall,
    ids: &[String],
    lease: &pb::SchedLeaseFence,
) -> Result<u64, ClientError> {
    let mut revision = 0;
    for chunk in ids.chunks(MAX_BATCH) {
        let req = pb::AllocIdsRequest {
            ids: chunk.to_vec(),
            lease: Some(lease.clone()),
        };
        let reply = client
            .call(|mut c| {
                let req = req.clone();
                async move {
                    match call {
                        IdsCall::Lost => c.mark_allocs_lost(req).await,
                        IdsCall::Stop => c.stop_allocs(req).await,
                        IdsCall::Remove => c.remove_allocs(req).await,
                    }
                }
            })
            .await?;
        revision = revision.max(reply.allocs_revision);
    }
    Ok(revision)
}

/// Places `allocs` in batches; returns the authority's allocation revision after the last one
/// (0 when nothing was sent).
pub(crate) async fn place(
    client: &mut AuthorityClient,
    allocs: &[NewAlloc],
    lease: &pb::SchedLeaseFence,
) -> Result<u64, ClientError> {
    let mut revision = 0;
    for chunk in allocs.chunks(MAX_BATCH) {
        let req = pb::PlaceAllocsRequest {
            allocs: chunk
                .iter()
                .map(|a| pb::AllocPlacement {
                    id: a.id.clone(),
                    namespace: a.namespace.clone(),
                    job: a.job.clone(),
                    job_version: a.version,
                    index: a.index,
                    node: a.node.clone(),
                    previous: String::new(),
                })
                .collect(),
            lease: Some(lease.clone()),
        };
        let reply = client
            .call(|mut c| {
                let req = req.clone();
                async move { c.place_allocs(req).await }
            })
            .await?;
        revision = revision.max(reply.allocs_revision);
    }
    Ok(revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_16_of_a_z_0_9_and_distinct() {
        let rng = SystemRandom::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = alloc_id(&rng).unwrap();
            assert_eq!(id.len(), 16);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            );
            assert!(seen.insert(id));
        }
    }
}
