//! Raft over gRPC over mTLS.
//!
//! Client side: one lazily connecting channel per peer, verifying that the server is exactly the
//! expected authority node (`spiffe://TD/ringzero/authority/<id>`). Appends go over one
//! `AppendStream` per peer (one message each way per append, renewed every 15 s, unary
//! `AppendEntries` for a peer without it); votes and snapshot chunks are unary calls. Server
//! side: a Raft RPC is accepted only from a current member, identified by the SPIFFE ID of its
//! client certificate, and a stream's messages each again. openraft messages travel
//! postcard-encoded inside `RaftPayload`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use ringzero_policy::tls::{BundleSource, PeerMatch, SpiffeServerVerifier};
use ringzero_policy::{SpiffeId, SpiffeIdPattern, TrustDomain};
use ringzero_proto::pb;
use ringzero_proto::pb::raft_client::RaftClient;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{NodeId, Raft, TypeConfig};

/// The largest Raft message accepted or sent (a batch of entries, a snapshot chunk).
pub(crate) const MAX_RAFT_MESSAGE: usize = 16 * 1024 * 1024;

/// The SPIFFE ID of authority node `id`.
pub(crate) fn authority_id(
    td: &TrustDomain,
    id: NodeId,
) -> Result<SpiffeId, ringzero_policy::spiffe::IdError> {
    td.id_with_path(&["ringzero", "authority", &id.to_string()])
}

/// The node id an authority SPIFFE ID names, if it is one of `td`'s authority IDs.
pub(crate) fn authority_node_id(td: &TrustDomain, id: &SpiffeId) -> Option<NodeId> {
    if !id.is_member_of(td) {
        return None;
    }
    let segs: Vec<&str> = id.segments().collect();
    match segs.as_slice() {
        ["ringzero", "authority", n] => n.parse().ok(),
        _ => None,
    }
}

/// What a node presents and trusts when it talks to its peers.
#[derive(Clone)]
pub(crate) struct PeerCredentials {
    pub trust_domain: TrustDomain,
    /// This node's SVID, read at each new connection (it is re-issued when the CA rotates).
    pub cert: Arc<ringzero_policy::tls::RotatingCert>,
    pub bundle: BundleSource,
}

impl std::fmt::Debug for PeerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCredentials")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// When each peer last answered, for `authority members`, which peers refuse this node as not
/// a member (how a removed node learns it was removed when no log entry tells it), and which
/// peers are unreachable now (logged once when a peer goes and once when it comes back, not on
/// every retry: the default log filter silences openraft's per-attempt replication warnings).
#[derive(Debug, Default, Clone)]
pub(crate) struct Contacts(Arc<Mutex<ContactBook>>);

/// How long a peer whose calls time out may stay silent before it is logged as not answering.
const SILENT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct ContactBook {
    answered: BTreeMap<NodeId, Instant>,
    refusing: std::collections::BTreeSet<NodeId>,
    /// Peers whose last call failed (unreachable, or refused): since when.
    down: BTreeMap<NodeId, Instant>,
}

impl Contacts {
    fn book(&self) -> std::sync::MutexGuard<'_, ContactBook> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self, id: NodeId) {
        let mut b = self.book();
        b.answered.insert(id, Instant::now());
        b.refusing.remove(&id);
        if let Some(since) = b.down.remove(&id) {
            tracing::info!(
                peer = id,
                down_ms = since.elapsed().as_millis() as u64,
                "authority peer reachable again"
            );
        }
    }

    /// `id` did not answer: logged once, until it answers again.
    fn unreachable(&self, id: NodeId, why: &str) {
        self.failing(id, why, "authority peer not answering; retrying");
    }

    /// `id` answered with a refusal or an error: logged once, until a call succeeds.
    fn refusing_calls(&self, id: NodeId, why: &str) {
        self.failing(
            id,
            why,
            "authority peer refusing this node's calls; retrying",
        );
    }

    fn failing(&self, id: NodeId, why: &str, what: &'static str) {
        if let std::collections::btree_map::Entry::Vacant(v) = self.book().down.entry(id) {
            v.insert(Instant::now());
            tracing::warn!(peer = id, error = why, "{what}");
        }
    }

    /// A call to `id` ran out of time: logged as not answering only once it has been silent for
    /// [`SILENT`] (a black hole, not a slow moment under load).
    fn slow(&self, id: NodeId, why: &str) {
        if self.since(id).is_none_or(|d| d > SILENT) {
            self.unreachable(id, why);
        }
    }

    fn refused_as_non_member(&self, id: NodeId) {
        self.book().refusing.insert(id);
    }

    /// The peers whose last answer was that this node is not a member.
    pub(crate) fn refusing(&self) -> std::collections::BTreeSet<NodeId> {
        self.book().refusing.clone()
    }

    /// How long ago `id` last answered this node.
    pub(crate) fn since(&self, id: NodeId) -> Option<Duration> {
        self.book().answered.get(&id).map(|t| t.elapsed())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NetError(String);

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, NetError> {
    postcard::to_stdvec(v).map_err(|e| NetError(format!("encode: {e}")))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, NetError> {
    postcard::from_bytes(b).map_err(|e| NetError(format!("decode: {e}")))
}

mod client;
mod server;

pub(crate) use client::{GrpcNetwork, prepare_keys, send_report, signing_keys};
pub(crate) use server::{RaftService, raft_server};

#[cfg(test)]
mod tests;
