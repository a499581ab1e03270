//! The client side: openraft's network over gRPC to each peer (appends on one `AppendStream`,
//! votes and snapshots unary), and the other calls a member makes to a peer.

use super::*;

use std::collections::HashMap;
use std::sync::PoisonError;

use tonic::transport::Channel;

/// The gRPC network factory of one node.
#[derive(Debug, Clone)]
pub(crate) struct GrpcNetwork {
    creds: PeerCredentials,
    contacts: Contacts,
    retry: Retry,
    channels: Channels,
}

/// One HTTP/2 channel per peer, shared by every client openraft makes for it. openraft makes a
/// client for each leadership check (`ensure_linearizable`: every `authority status` and every
/// linearizable read) and for each replication task; with a channel each, every check paid a
/// TCP+TLS handshake to every member inside one heartbeat interval, which a busy machine
/// missed (an anonymous handshake flood on 2 cores made `authority status` report a leader
/// that could not confirm itself). A channel reconnects after a failure, and verifies the peer
/// (with the bundle of that moment) at each new connection.
#[derive(Debug, Clone, Default)]
struct Channels(Arc<std::sync::Mutex<HashMap<NodeId, PeerChannel>>>);

/// A peer's address and the channel to it.
type PeerChannel = (String, RaftClient<Channel>);

impl Channels {
    /// The channel to `target` at `addr`: the shared one, or a new one if there is none yet or
    /// the peer's address changed. At most one per member this node has replicated to.
    fn get(
        &self,
        creds: &PeerCredentials,
        target: NodeId,
        addr: &str,
    ) -> Result<RaftClient<Channel>, String> {
        let mut channels = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, client)) = channels.get(&target)
            && at == addr
        {
            return Ok(client.clone());
        }
        let client = client_for(creds, target, addr)?;
        channels.insert(target, (addr.to_owned(), client.clone()));
        Ok(client)
    }
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
            channels: Channels::default(),
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
pub(super) struct Retry {
    first: Duration,
    cap: Duration,
}

impl Retry {
    pub(super) fn of(t: crate::RaftTiming) -> Self {
        Self {
            first: Duration::from_millis(t.heartbeat_ms),
            cap: Duration::from_millis(t.election_timeout_min_ms),
        }
    }

    pub(super) fn intervals(self) -> impl Iterator<Item = Duration> + Send + 'static {
        std::iter::successors(Some(self.first), move |d| Some((*d * 2).min(self.cap)))
    }
}

/// A connection to one peer.
#[derive(Debug)]
pub(crate) struct GrpcConnection {
    target: NodeId,
    client: Result<RaftClient<Channel>, String>,
    contacts: Contacts,
    retry: Retry,
    /// Whether this client has made an append already. The first goes unary: openraft makes a
    /// client for one heartbeat at each leadership check, and opening a stream for it would
    /// cost a round trip more. A client that appends again is a replication task's.
    appended: bool,
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
) -> Result<RaftClient<Channel>, String> {
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
            client: self.channels.get(&self.creds, target, &node.addr),
            contacts: self.contacts.clone(),
            retry: self.retry,
            appended: false,
            stream: None,
            unary_only: false,
        }
    }
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
            Rpc::Append if !self.appended => {
                self.appended = true;
                unary(client, which, data, timeout).await
            }
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
    client: &mut RaftClient<Channel>,
    which: Rpc,
    data: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, tonic::Status> {
    let mut request = tonic::Request::new(pb::RaftPayload { data });
    request.set_timeout(timeout);
    // The request's timeout runs from when the channel is ready: it does not bound a
    // connection being set up (up to the connect timeout), this does.
    let call = async {
        match which {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        }
    };
    let reply = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("raft: no answer in time"))??;
    Ok(reply.into_inner().data)
}

/// Makes sure `slot` holds an `AppendStream` to the peer that is not due for renewal, opening
/// one (before `deadline`) if not.
async fn open_stream(
    slot: &mut Option<AppendStream>,
    client: &mut RaftClient<Channel>,
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
