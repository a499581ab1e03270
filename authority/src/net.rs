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

/// The gRPC network factory of one node.
#[derive(Debug, Clone)]
pub(crate) struct GrpcNetwork {
    creds: PeerCredentials,
    contacts: Contacts,
    retry: Retry,
}

impl GrpcNetwork {
    pub(crate) fn new(
        creds: PeerCredentials,
        contacts: Contacts,
        timing: crate::RaftTiming,
    ) -> Self {
        Self {
            creds,
            contacts,
            retry: Retry::of(timing),
        }
    }
}

/// How soon a leader tries an unreachable peer again: from one heartbeat, doubling, to at most
/// the shortest election timeout. openraft's default is a flat 500 ms, which let a restarted
/// member go unreplicated past its own election timeout: it stood for election, and its higher
/// term deposed a healthy leader (measured by `cargo bench -p ringzero-tests --bench failover`,
/// every restart). With the cap, the leader reaches a member within
/// `election_timeout_min` of its coming back, well before the member's lease and timeout
/// (`election_timeout_max` + `election_timeout_min`) run out. A failed attempt against a
/// closed port costs a refused connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    first: Duration,
    cap: Duration,
}

impl Retry {
    fn of(t: crate::RaftTiming) -> Self {
        Self {
            first: Duration::from_millis(t.heartbeat_ms),
            cap: Duration::from_millis(t.election_timeout_min_ms),
        }
    }

    fn intervals(self) -> impl Iterator<Item = Duration> + Send + 'static {
        std::iter::successors(Some(self.first), move |d| Some((*d * 2).min(self.cap)))
    }
}

/// A connection to one peer.
#[derive(Debug)]
pub(crate) struct GrpcConnection {
    target: NodeId,
    client: Result<RaftClient<tonic::transport::Channel>, String>,
    contacts: Contacts,
    retry: Retry,
    /// The open `AppendStream` to the peer, if any.
    stream: Option<AppendStream>,
    /// The peer does not know `AppendStream` (an older member): unary `AppendEntries` only.
    unary_only: bool,
}

/// How long one `AppendStream` carries appends before the next append opens a new one. The
/// peer admits the caller at every message too; renewing bounds how long one stream (and the
/// server task behind it) lives, well inside any request deadline of the server's.
const STREAM_RENEW: Duration = Duration::from_secs(15);

/// One open `AppendStream`: requests go in through `tx`, responses come back in order on `rx`.
/// At most one append is in flight on it (openraft replicates to a peer one call at a time);
/// after any failure or timeout the stream is dropped, so a late answer can never be taken for
/// the next call's.
#[derive(Debug)]
struct AppendStream {
    tx: tokio::sync::mpsc::Sender<pb::RaftPayload>,
    rx: tonic::Streaming<pb::RaftPayload>,
    opened: Instant,
}

fn client_for(
    creds: &PeerCredentials,
    target: NodeId,
    addr: &str,
) -> Result<RaftClient<tonic::transport::Channel>, String> {
    let expected = authority_id(&creds.trust_domain, target).map_err(|e| e.to_string())?;
    let verifier = SpiffeServerVerifier::new(
        creds.bundle.clone(),
        PeerMatch::OneOf(vec![SpiffeIdPattern::Exact(expected)]),
    );
    let config = ringzero_policy::tls::rotating_client_config(Arc::clone(&creds.cert), verifier)
        .map_err(|e| e.to_string())?;
    let channel =
        ringzero_proto::transport::channel(addr, Arc::new(config), Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
    Ok(RaftClient::new(channel)
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE))
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        GrpcConnection {
            target,
            client: client_for(&self.creds, target, &node.addr),
            contacts: self.contacts.clone(),
            retry: self.retry,
            stream: None,
            unary_only: false,
        }
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

impl GrpcConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        which: Rpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => {
                self.contacts.unreachable(self.target, e);
                return Err(RPCError::Unreachable(Unreachable::new(&NetError(
                    e.clone(),
                ))));
            }
        };
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let reply = match which {
            Rpc::Append if !self.unary_only => {
                match open_stream(&mut self.stream, client, deadline).await {
                    Err(s) if s.code() == tonic::Code::Unimplemented => {
                        tracing::info!(
                            peer = self.target,
                            "peer has no AppendStream; unary appends"
                        );
                        self.unary_only = true;
                        unary(client, which, data, timeout).await
                    }
                    Err(s) => Err(s),
                    Ok(()) => append_streamed(&mut self.stream, data, deadline).await,
                }
            }
            _ => unary(client, which, data, timeout).await,
        };
        if let Err(status) = &reply
            && status.code() == tonic::Code::PermissionDenied
            && status.message().contains("is not a member")
        {
            self.contacts.refused_as_non_member(self.target);
        }
        let reply = reply.map_err(|status| match status.code() {
            // Gone: openraft backs off (`Retry`) before the next attempt.
            tonic::Code::Unavailable => {
                self.contacts.unreachable(self.target, status.message());
                RPCError::Unreachable(Unreachable::new(&NetError(status.message().to_owned())))
            }
            // Slow, not gone: retried with the next heartbeat or entry, without a back-off. A
            // timed-out append under load followed by a back-off left a follower unheard long
            // enough to stand for election (64 clients on 2 cores, 50 ms heartbeats).
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                self.contacts.slow(self.target, status.message());
                RPCError::Network(NetworkError::new(&NetError(status.message().to_owned())))
            }
            _ => {
                let why = format!("{:?}: {}", status.code(), status.message());
                self.contacts.refusing_calls(self.target, &why);
                RPCError::Network(NetworkError::new(&NetError(why)))
            }
        })?;
        self.contacts.touch(self.target);
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// One unary call.
async fn unary(
    client: &mut RaftClient<tonic::transport::Channel>,
    which: Rpc,
    data: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, tonic::Status> {
    let mut request = tonic::Request::new(pb::RaftPayload { data });
    request.set_timeout(timeout);
    let reply = match which {
        Rpc::Append => client.append_entries(request).await,
        Rpc::Vote => client.vote(request).await,
        Rpc::Snapshot => client.install_snapshot(request).await,
    }?;
    Ok(reply.into_inner().data)
}

/// Makes sure `slot` holds an `AppendStream` to the peer that is not due for renewal, opening
/// one (before `deadline`) if not.
async fn open_stream(
    slot: &mut Option<AppendStream>,
    client: &mut RaftClient<tonic::transport::Channel>,
    deadline: tokio::time::Instant,
) -> Result<(), tonic::Status> {
    if slot
        .as_ref()
        .is_some_and(|s| s.opened.elapsed() < STREAM_RENEW)
    {
        return Ok(());
    }
    *slot = None;
    let (tx, requests) = tokio::sync::mpsc::channel(1);
    let opening = client.append_stream(tokio_stream::wrappers::ReceiverStream::new(requests));
    let rx = tokio::time::timeout_at(deadline, opening)
        .await
        .map_err(|_| {
            tonic::Status::deadline_exceeded("raft: the append stream did not open in time")
        })??
        .into_inner();
    *slot = Some(AppendStream {
        tx,
        rx,
        opened: Instant::now(),
    });
    Ok(())
}

/// One append over the open `AppendStream` in `slot`, answered before `deadline`. Any failure
/// drops the stream.
async fn append_streamed(
    slot: &mut Option<AppendStream>,
    data: Vec<u8>,
    deadline: tokio::time::Instant,
) -> Result<Vec<u8>, tonic::Status> {
    let Some(stream) = slot.as_mut() else {
        return Err(tonic::Status::unavailable("raft: no append stream"));
    };
    let call = async {
        stream
            .tx
            .send(pb::RaftPayload { data })
            .await
            .map_err(|_| tonic::Status::unavailable("raft: the append stream closed"))?;
        match stream.rx.message().await? {
            Some(reply) => Ok(reply.data),
            None => Err(tonic::Status::unavailable("raft: the append stream ended")),
        }
    };
    let result = match tokio::time::timeout_at(deadline, call).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded(
            "raft: no answer on the append stream in time",
        )),
    };
    if result.is_err() {
        *slot = None;
    }
    result
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for GrpcConnection {
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(self.retry.intervals())
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Append, &rpc, option.soft_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, option.soft_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, option.soft_ttl()).await
    }
}

/// Sends the record of a refused Raft message to the leader `leader` at `addr`.
pub(crate) async fn send_report(
    creds: &PeerCredentials,
    leader: NodeId,
    addr: &str,
    record: &crate::command::AuditRecord,
) -> Result<(), String> {
    let mut client = client_for(creds, leader, addr)?;
    let mut request = tonic::Request::new(pb::RaftPayload {
        data: encode(record).map_err(|e| e.to_string())?,
    });
    request.set_timeout(crate::raft_guard::REPORT_TIMEOUT);
    client
        .report_denial(request)
        .await
        .map(|_| ())
        .map_err(|s| s.message().to_owned())
}

/// Asks member `target` at `addr` (this node leading) to stage new keys of `kinds`; returns
/// their public halves. Idempotent, so a caller may retry it.
pub(crate) async fn prepare_keys(
    creds: &PeerCredentials,
    target: NodeId,
    addr: &str,
    kinds: &[crate::command::KeyKind],
) -> Result<Vec<crate::key_sync::Prepared>, tonic::Status> {
    let mut client = client_for(creds, target, addr).map_err(tonic::Status::unavailable)?;
    let data = encode(&crate::key_sync::PrepareRequest {
        kinds: kinds.to_vec(),
    })
    .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let mut request = tonic::Request::new(pb::RaftPayload { data });
    request.set_timeout(PREPARE_TIMEOUT);
    let reply = client.prepare_keys(request).await?;
    decode(&reply.into_inner().data).map_err(|e| tonic::Status::internal(e.to_string()))
}

/// The public halves of the keys of `kinds` member `target` signs with now.
pub(crate) async fn signing_keys(
    creds: &PeerCredentials,
    target: NodeId,
    addr: &str,
    kinds: &[crate::command::KeyKind],
) -> Result<Vec<(crate::command::KeyKind, Vec<u8>)>, tonic::Status> {
    let mut client = client_for(creds, target, addr).map_err(tonic::Status::unavailable)?;
    let data = encode(&kinds.to_vec()).map_err(|e| tonic::Status::internal(e.to_string()))?;
    let mut request = tonic::Request::new(pb::RaftPayload { data });
    request.set_timeout(Duration::from_secs(5));
    let reply = client.signing_keys(request).await?;
    decode(&reply.into_inner().data).map_err(|e| tonic::Status::internal(e.to_string()))
}

/// How long a member may take to generate and stage keys.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of the Raft transport.
#[derive(Clone)]
pub(crate) struct RaftService {
    raft: Raft,
    trust_domain: TrustDomain,
    guard: Option<Guard>,
    /// How this node stages its keys when the leader asks (absent: it refuses).
    key_sync: Option<crate::key_sync::KeySync>,
    /// Starts this node's election early when a lagging survivor stands first.
    takeover: Option<Arc<crate::takeover::Takeover>>,
    /// Turns true when the node shuts down: open `AppendStream`s end then, or the server's
    /// graceful shutdown would wait on them.
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
}

/// What the server checks messages against, and where it reports refusals.
#[derive(Clone, Debug)]
struct Guard {
    log: crate::store::LogStore,
    sm: crate::store::StateMachineStore,
    reporter: crate::raft_guard::Reporter,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService").finish_non_exhaustive()
    }
}

impl RaftService {
    pub(crate) fn new(raft: Raft, trust_domain: TrustDomain) -> Self {
        Self {
            raft,
            trust_domain,
            guard: None,
            key_sync: None,
            takeover: None,
            stopping: None,
        }
    }

    /// Ends open `AppendStream`s when `stopping` turns true (the node shutting down).
    pub(crate) fn with_shutdown(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = Some(stopping);
        self
    }

    /// Answers a split vote in the making with an early election (see `takeover`).
    pub(crate) fn with_takeover(mut self, takeover: Arc<crate::takeover::Takeover>) -> Self {
        self.takeover = Some(takeover);
        self
    }

    /// Stages keys through `sync` when the leader asks (`PrepareKeys`).
    pub(crate) fn with_key_sync(mut self, sync: crate::key_sync::KeySync) -> Self {
        self.key_sync = Some(sync);
        self
    }

    /// Checks messages against this node's log and state, and records refusals through `gate`
    /// (or the leader, reached with `creds`).
    pub(crate) fn guarded(
        mut self,
        node_id: NodeId,
        log: crate::store::LogStore,
        sm: crate::store::StateMachineStore,
        gate: Arc<crate::gate::Gate>,
        creds: PeerCredentials,
    ) -> Self {
        self.guard = Some(Guard {
            log,
            sm,
            reporter: crate::raft_guard::Reporter {
                raft: self.raft.clone(),
                node_id,
                gate: Some(gate),
                creds: Some(creds),
            },
        });
        self
    }

    /// Refuses (and reports) a message that failed a check.
    async fn refuse<T>(&self, sender: NodeId, what: &str, why: String) -> Result<T, tonic::Status> {
        if let Some(g) = &self.guard {
            let actor = authority_id(&self.trust_domain, sender)
                .map(|i| i.to_string())
                .unwrap_or_default();
            let record = g.reporter.record(actor, what, why.clone());
            g.reporter.report(record).await;
        }
        Err(tonic::Status::permission_denied(format!("raft: {why}")))
    }

    /// Refuses any caller that is not a current member (voter or learner) of the cluster. A node
    /// that has just joined and knows no membership yet accepts any authority node of its trust
    /// domain (the cluster it enrolled into) until the first membership entry arrives.
    fn admit<T>(&self, req: &tonic::Request<T>) -> Result<NodeId, tonic::Status> {
        let peer = ringzero_proto::transport::peer(req);
        let id = peer
            .spiffe_id
            .as_ref()
            .and_then(|id| authority_node_id(&self.trust_domain, id))
            .ok_or_else(|| {
                tonic::Status::permission_denied("raft: caller is not an authority node")
            })?;
        self.admit_member(id)?;
        Ok(id)
    }

    /// Refuses node `id` unless it is a current member (see [`RaftService::admit`]).
    fn admit_member(&self, id: NodeId) -> Result<(), tonic::Status> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let uninitialized = membership.nodes().next().is_none();
        let is_member = uninitialized || membership.nodes().any(|(n, _)| *n == id);
        if !is_member {
            return Err(tonic::Status::permission_denied(format!(
                "raft: authority node {id} is not a member"
            )));
        }
        Ok(())
    }

    /// One AppendEntries from `sender`, checked and handed to Raft; the unary call and every
    /// message of a stream come here.
    async fn append(
        &self,
        sender: NodeId,
        payload: pb::RaftPayload,
    ) -> Result<pb::RaftPayload, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode(&payload.data).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        if let Err(why) = crate::raft_guard::sender_matches(sender, &rpc.vote, "AppendEntries")
            .and_then(|()| crate::raft_guard::check_append(&rpc))
        {
            return self.refuse(sender, "AppendEntries", why).await;
        }
        if let Some(g) = &self.guard
            && let Err(why) = crate::raft_guard::check_against_applied(&g.log, &g.sm, &rpc).await
        {
            return self.refuse(sender, "AppendEntries", why).await;
        }
        let resp = self.raft.append_entries(rpc).await;
        if let (Some(t), Ok(r)) = (&self.takeover, &resp)
            && !matches!(r, AppendEntriesResponse::HigherVote(_))
        {
            t.heard_from_leader();
        }
        let data = encode(&resp).map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(pb::RaftPayload { data })
    }

    /// The messages of one `AppendStream`, answered in order. Before each, the caller is
    /// admitted again (still a member, certificate not expired); a refusal, like a malformed
    /// message, is sent as the stream's last item.
    async fn serve_append_stream(
        self,
        sender: NodeId,
        not_after: Option<std::time::SystemTime>,
        mut incoming: impl tokio_stream::Stream<Item = Result<pb::RaftPayload, tonic::Status>> + Unpin,
        out: tokio::sync::mpsc::Sender<Result<pb::RaftPayload, tonic::Status>>,
    ) {
        use tokio_stream::StreamExt;
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            match &mut stopping {
                Some(s) => {
                    let _ = s.wait_for(|s| *s).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stopped);
        loop {
            let next = tokio::select! {
                next = incoming.next() => next,
                () = &mut stopped => return,
            };
            let payload = match next {
                Some(Ok(p)) => p,
                None => return,
                Some(Err(status)) => {
                    let _ = out.send(Err(status)).await;
                    return;
                }
            };
            let answer = if not_after.is_some_and(|t| t < std::time::SystemTime::now()) {
                Err(tonic::Status::unauthenticated(
                    "raft: the caller's certificate has expired",
                ))
            } else {
                match self.admit_member(sender) {
                    Ok(()) => self.append(sender, payload).await,
                    Err(status) => Err(status),
                }
            };
            let last = answer.is_err();
            if out.send(answer).await.is_err() || last {
                return;
            }
        }
    }
}

/// The answers of one `AppendStream`.
type AppendAnswers = tonic::codegen::BoxStream<pb::RaftPayload>;

fn reply<T: Serialize>(v: &T) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
    let data = encode(v).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(pb::RaftPayload { data }))
}

fn request<T: DeserializeOwned>(req: tonic::Request<pb::RaftPayload>) -> Result<T, tonic::Status> {
    decode(&req.into_inner().data).map_err(|e| tonic::Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: tonic::Request<pb::RaftPayload>,
    ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
        let sender = self.admit(&req)?;
        let answer = self.append(sender, req.into_inner()).await?;
        Ok(tonic::Response::new(answer))
    }

    async fn append_stream(
        &self,
        req: tonic::Request<tonic::Streaming<pb::RaftPayload>>,
    ) -> Result<tonic::Response<AppendAnswers>, tonic::Status> {
        let sender = self.admit(&req)?;
        let not_after = ringzero_proto::transport::peer(&req).not_after;
        let (out, answers) = tokio::sync::mpsc::channel(1);
        tokio::spawn(
            self.clone()
                .serve_append_stream(sender, not_after, req.into_inner(), out),
        );
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(answers),
        )))
    }

    async fn vote(
        &self,
        req: tonic::Request<pb::RaftPayload>,
    ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
        let sender = self.admit(&req)?;
        let rpc: VoteRequest<NodeId> = request(req)?;
        if let Err(why) = crate::raft_guard::sender_matches(sender, &rpc.vote, "Vote") {
            return self.refuse(sender, "Vote", why).await;
        }
        let resp = self.raft.vote(rpc.clone()).await;
        if let (Some(t), Ok(r)) = (&self.takeover, &resp) {
            t.after_vote(&rpc, r);
        }
        reply(&resp)
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<pb::RaftPayload>,
    ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
        let sender = self.admit(&req)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = request(req)?;
        if let Err(why) = crate::raft_guard::sender_matches(sender, &rpc.vote, "InstallSnapshot") {
            return self.refuse(sender, "InstallSnapshot", why).await;
        }
        reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn report_denial(
        &self,
        req: tonic::Request<pb::RaftPayload>,
    ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
        let sender = self.admit(&req)?;
        let record: crate::command::AuditRecord = request(req)?;
        // A member reports only what it refused itself.
        if record.authority != sender {
            return Err(tonic::Status::permission_denied(
                "raft: a report names another reporter",
            ));
        }
        let mut record = record;
        record.decision = crate::command::AuditDecision::Deny;
        match self.guard.as_ref().and_then(|g| g.reporter.gate.clone()) {
            Some(gate) if self.raft.metrics().borrow().current_leader == Some(gate.node_id()) => {
                gate.record_denial(record).await;
                reply(&())
            }
            _ => Err(tonic::Status::unavailable("raft: not the leader")),
        }
    }

    async fn prepare_keys(
        &self,
        req: tonic::Request<pb::RaftPayload>,
    ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
        let sender = self.admit(&req)?;
        let Some(sync) = &self.key_sync else {
            return Err(tonic::Status::unimplemented(
                "raft: this node stages no keys",
            ));
        };
        let metrics = self.raft.metrics().borrow().clone();
        let members: Vec<NodeId> = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(n, _)| *n)
            .collect();
        if let Err(why) =
            crate::key_sync::may_prepare(sender, &members, metrics.current_leader, metrics.id)
        {
            return self.refuse(sender, "PrepareKeys", why).await;
        }
        let asked: crate::key_sync::PrepareRequest = request(req)?;
        let mut kinds = Vec::new();
        for k in asked.kinds {
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        if kinds.is_empty() {
            return Err(tonic::Status::invalid_argument(
                "raft: no key kind to prepare",
            ));
        }
        match sync.prepare(&kinds).await {
            Ok(prepared) => {
                tracing::info!(
                    leader = sender,
                    kinds = ?kinds.iter().map(|k| crate::keys::kind_name(*k)).collect::<Vec<_>>(),
                    "keys staged for the leader's rotation"
                );
                reply(&prepared)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not stage keys");
                Err(tonic::Status::internal(format!("raft: staging keys: {e}")))
            }
        }
    }

    async fn signing_keys(
        &self,
        req: tonic::Request<pb::RaftPayload>,
    ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
        self.admit(&req)?;
        let Some(sync) = &self.key_sync else {
            return Err(tonic::Status::unimplemented(
                "raft: this node stages no keys",
            ));
        };
        let kinds: Vec<crate::command::KeyKind> = request(req)?;
        if kinds.len() > crate::keys::ALL_KINDS.len() {
            return Err(tonic::Status::invalid_argument("raft: too many key kinds"));
        }
        let keys = sync
            .signing(&kinds)
            .map_err(|e| tonic::Status::internal(format!("raft: {e}")))?;
        reply(&keys)
    }
}

/// Checks the caller before a request body is decoded, so that only members can make a node
/// buffer a large Raft message.
#[derive(Clone)]
pub(crate) struct RaftAdmission(RaftService);

impl std::fmt::Debug for RaftAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftAdmission")
    }
}

impl tonic::service::Interceptor for RaftAdmission {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.0.admit(&req)?;
        Ok(req)
    }
}

/// The server for [`RaftService`]: callers admitted before their message is read, message sizes
/// bounded.
pub(crate) fn raft_server(
    service: RaftService,
) -> tonic::service::interceptor::InterceptedService<
    pb::raft_server::RaftServer<RaftService>,
    RaftAdmission,
> {
    let admission = RaftAdmission(service.clone());
    let server = pb::raft_server::RaftServer::new(service)
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE);
    tonic::service::interceptor::InterceptedService::new(server, admission)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An AppendEntries from `sender` at an old term: checked, then answered by Raft (with its
    /// higher vote), changing nothing.
    fn stale_append(sender: NodeId) -> pb::RaftPayload {
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(0, sender),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        pb::RaftPayload {
            data: encode(&rpc).unwrap(),
        }
    }

    #[tokio::test]
    async fn a_stream_admits_its_caller_again_at_every_message() {
        use crate::testing::{Cluster, test_config};
        let c = Cluster::start(3, test_config(), 7).await.unwrap();
        let leader = c.leader(&[], Duration::from_secs(10)).await.unwrap();
        let others: Vec<NodeId> = (1..=3).filter(|n| *n != leader).collect();
        let (receiver, sender) = (others[0], others[1]);
        let td = TrustDomain::new("example.org").unwrap();
        let service = RaftService::new(c.raft(receiver).unwrap().clone(), td);

        let (requests, incoming) = tokio::sync::mpsc::channel(4);
        let (out, mut answers) = tokio::sync::mpsc::channel(4);
        let serving = tokio::spawn(service.clone().serve_append_stream(
            sender,
            None,
            tokio_stream::wrappers::ReceiverStream::new(incoming),
            out,
        ));
        requests.send(Ok(stale_append(sender))).await.unwrap();
        let first = answers.recv().await.unwrap();
        assert!(first.is_ok(), "a member's message is answered: {first:?}");

        // The sender leaves the cluster while its stream is open: its next message is refused
        // and the stream ends.
        c.change_voters(&[leader, receiver], Duration::from_secs(10))
            .await
            .unwrap();
        let mut refused = None;
        for _ in 0..100 {
            let m = service.raft.metrics().borrow().membership_config.clone();
            if !m.membership().nodes().any(|(n, _)| *n == sender) {
                requests.send(Ok(stale_append(sender))).await.unwrap();
                refused = answers.recv().await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let s = refused
            .expect("the removal reached the receiver")
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
        assert!(s.message().contains("not a member"), "{s:?}");
        assert!(
            answers.recv().await.is_none(),
            "the stream ends at a refusal"
        );
        serving.await.unwrap();

        // The node shutting down ends an open stream, so the server's graceful shutdown does not
        // wait on it.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let (_requests, incoming) = tokio::sync::mpsc::channel(4);
        let (out, mut answers) = tokio::sync::mpsc::channel(4);
        let serving = tokio::spawn(service.clone().with_shutdown(stopping).serve_append_stream(
            leader,
            None,
            tokio_stream::wrappers::ReceiverStream::new(incoming),
            out,
        ));
        stop.send(true).unwrap();
        assert!(
            answers.recv().await.is_none(),
            "the stream ends at shutdown"
        );
        serving.await.unwrap();

        // A certificate that has expired since the stream opened: refused at its next message.
        let (requests, incoming) = tokio::sync::mpsc::channel(4);
        let (out, mut answers) = tokio::sync::mpsc::channel(4);
        let expired = std::time::SystemTime::now() - Duration::from_secs(1);
        tokio::spawn(service.serve_append_stream(
            leader,
            Some(expired),
            tokio_stream::wrappers::ReceiverStream::new(incoming),
            out,
        ));
        requests.send(Ok(stale_append(leader))).await.unwrap();
        let s = answers.recv().await.unwrap().unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
        assert!(answers.recv().await.is_none());
    }

    #[test]
    fn authority_ids_round_trip_and_refuse_others() {
        let td = TrustDomain::new("example.org").unwrap();
        let id = authority_id(&td, 7).unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/ringzero/authority/7");
        assert_eq!(authority_node_id(&td, &id), Some(7));
        for other in [
            "spiffe://example.org/ringzero/authority/x",
            "spiffe://example.org/ringzero/authority/7/extra",
            "spiffe://example.org/ringzero/node/7",
            "spiffe://other.org/ringzero/authority/7",
            "spiffe://example.org/user/7",
        ] {
            assert_eq!(
                authority_node_id(&td, &SpiffeId::parse(other).unwrap()),
                None,
                "{other}"
            );
        }
    }

    #[test]
    fn a_peer_going_and_coming_back_is_one_state_each() {
        let c = Contacts::default();
        assert_eq!(c.since(3), None);
        c.unreachable(3, "connection refused");
        let first = c.book().down.get(&3).copied();
        c.unreachable(3, "connection refused");
        assert_eq!(
            c.book().down.get(&3).copied(),
            first,
            "retries keep the first failure"
        );
        c.refused_as_non_member(3);
        c.touch(3);
        assert!(c.book().down.is_empty());
        c.slow(3, "deadline exceeded");
        assert!(
            c.book().down.is_empty(),
            "a timeout right after an answer is load"
        );
        c.slow(4, "deadline exceeded");
        assert!(
            c.book().down.contains_key(&4),
            "a peer that never answered is down"
        );
        assert!(c.refusing().is_empty());
        assert!(c.since(3).is_some());
    }

    #[test]
    fn an_unreachable_peer_is_retried_within_the_shortest_election_timeout() {
        let got: Vec<u64> = Retry::of(crate::RaftTiming::default())
            .intervals()
            .take(5)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(got, [50, 100, 150, 150, 150]);
        let slow = crate::RaftTiming {
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
        };
        assert!(
            Retry::of(slow)
                .intervals()
                .take(100)
                .all(|d| d <= Duration::from_millis(300))
        );
    }
}
