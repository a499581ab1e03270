//! ringzero's extension beside the Workload API on the same socket:
//! `ringzero.mesh.v1.MeshPolicy/Watch`, what a mesh sidecar needs from the authority beyond its
//! SVID.
//!
//! The call is admitted exactly as the standard ones are ([`admit`]: the security header, a
//! caller attested at accept and still the same process on the same executable), and the
//! selectors read from the executable are established first when an identity needs them. It
//! streams, at once and after every change of the cache, the authority's mesh policies whose
//! `to` matches one of the SPIFFE IDs the caller was attested for — a caller learns nothing
//! about other workloads' policies — and the revoked serials (public facts every verifier
//! needs). A caller with no identity gets no rules, only the serials. Nothing is sent before the
//! agent holds both from the authority (its first sync): an empty set sent earlier would tell a
//! sidecar that nothing is revoked.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use ringzero_proto::mesh as pb;
use ringzero_proto::mesh::mesh_policy_server::MeshPolicy;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::info;

use super::{ResponseStream, open_stream, stream_updates};
use crate::attest::{Attestation, Attestor};
use crate::cache::{Snapshot, SvidCache};

pub(super) struct MeshExtension {
    pub(super) cache: SvidCache,
    pub(super) stopping: watch::Receiver<bool>,
    pub(super) attestor: Attestor,
    pub(super) attest_timeout: std::time::Duration,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The caller's update: the rules protecting its identities, and the unexpired revoked serials;
/// `None` until the agent holds both from the authority.
pub(super) fn update_for(snap: &Snapshot, caller: &Attestation) -> Option<pb::MeshPolicyUpdate> {
    let (mesh_rules, serials) = snap.mesh()?;
    let ids: Vec<_> = snap
        .matching(&caller.selectors())
        .map(|i| i.spiffe_id.clone())
        .collect();
    let rules = mesh_rules
        .iter()
        .filter(|r| ids.iter().any(|id| r.to.matches(id)))
        .map(|r| pb::Rule {
            to: r.to.to_string(),
            from: r.from.to_string(),
        })
        .collect();
    let now = now_ms();
    let revoked_serials = serials
        .iter()
        .filter(|(_, not_after)| **not_after > now)
        .map(|(serial, not_after)| pb::RevokedSerial {
            serial: serial.clone(),
            not_after_ms: *not_after,
        })
        .collect();
    Some(pb::MeshPolicyUpdate {
        rules,
        revoked_serials,
    })
}

#[tonic::async_trait]
impl MeshPolicy for MeshExtension {
    type WatchStream = ResponseStream<pb::MeshPolicyUpdate>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (caller, rx, _) = open_stream(
            &self.cache,
            &self.attestor,
            self.attest_timeout,
            &req,
            "MeshPolicy/Watch",
        )
        .await?;
        info!(
            pid = caller.pid(),
            uid = caller.uid(),
            "MeshPolicy/Watch: serving"
        );
        // Only what changed for this caller is sent again (the cache changes for every
        // workload of the node).
        let last: Mutex<Option<pb::MeshPolicyUpdate>> = Mutex::new(None);
        Ok(Response::new(stream_updates(
            rx,
            self.stopping.clone(),
            caller,
            "MeshPolicy/Watch",
            Some((self.attestor.clone(), self.attest_timeout)),
            move |snap, caller| {
                let Some(update) = update_for(snap, caller) else {
                    return Ok(None);
                };
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                if last.as_ref() == Some(&update) {
                    return Ok(None);
                }
                *last = Some(update.clone());
                Ok(Some(update))
            },
        )))
    }
}
