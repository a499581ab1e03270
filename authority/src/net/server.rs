//! The server side: the member-only Raft service, its admission, and the `AppendStream`.

use super::*;

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
    pub(super) async fn serve_append_stream(
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
            // The refusal `RefuseExpiredLayer` gives a call, at every message.
            let answer = if not_after.is_some_and(|t| t < std::time::SystemTime::now()) {
                Err(tonic::Status::unauthenticated(
                    ringzero_proto::transport::EXPIRED_MESSAGE,
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
