//! The SPIFFE Workload API server on a unix socket.
//!
//! - **Socket**: [`bind`] removes a stale socket file (never anything else, and never a socket
//!   another agent still answers on) and makes the socket world-connectable (`0666`):
//!   attestation, not the file mode, decides what a caller gets.
//! - **Connections**: each accepted connection is attested in its own task under a deadline
//!   ([`Attestor::attest`]); a connection whose peer cannot be attested is closed. At most
//!   [`Limits::max_connections`] connections are open at once, at most
//!   [`Limits::max_connections_per_uid`] of one uid; excess ones are closed at once.
//!   Every request carries the connection's [`Attestation`] (tonic connect info), and is served
//!   only after [`Attestation::verify`] shows the caller is still the process attested at accept,
//!   on the same executable.
//! - **Selectors read from the executable** (`unix:path`, `unix:sha256`) are established before
//!   an answer only if an identity held at that moment needs them ([`Attestor::resolve`]),
//!   within [`Limits::attest_timeout`]: past it the call fails with `DeadlineExceeded`, while the
//!   read goes on holding its uid's slot (one per uid; see [`crate::attest`]).
//! - **Order**: of the caller's identities, the oldest entry (lowest `created_revision`, then
//!   entry id) comes first and is the default SVID, so that a newer entry can never displace it.
//! - **Requests** (per the SPIFFE Workload API standard): the metadata `workload.spiffe.io:
//!   true` is required (`InvalidArgument` otherwise). `FetchX509SVID` streams the full set of
//!   the caller's identities — every cached identity whose entry selectors are all among the
//!   caller's — at once and again after every change of the cache; with none it fails (or, later,
//!   ends) with `PermissionDenied: no identity issued`. `FetchX509Bundles` streams every trust
//!   domain's CA certificates keyed by the trust domain's SPIFFE ID (`spiffe://example.org`);
//!   bundles are public, so any attested caller gets them.
//! - **JWT-SVIDs** (`jwt.rs`): `FetchJWTSVID` answers with tokens minted by the authority for
//!   the caller's identities, cached per (entry, audience set) until half-life;
//!   `FetchJWTBundles` streams JWK sets per trust domain; `ValidateJWTSVID` validates against
//!   them.
//! - **The mesh extension** (`mesh.rs`): `ringzero.mesh.v1.MeshPolicy/Watch` on the same socket,
//!   admitted the same way, streams the authority's mesh policies for the caller's identities
//!   and the revoked serials. An agent of another make answers `Unimplemented` there.
//! - **Bounds**: request messages are tiny, so decoding is capped at [`MAX_REQUEST_LEN`];
//!   HTTP/2 header lists and concurrent streams per connection are capped; a client that never
//!   reads is held back by HTTP/2 flow control and a one-message queue, and costs only its own
//!   connection slot.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ringzero_policy::TrustDomain;
use ringzero_policy::selector::Selector;
use ringzero_proto::transport::{Connection, ConnectionGuard, accept};
use ringzero_proto::workload as pb;
use ringzero_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use crate::attest::{AttestError, Attestation, Attestor};
use crate::cache::{Snapshot, SvidCache};

mod jwt;
mod mesh;

pub(crate) use self::jwt::JwtIssuer;

pub use ringzero_proto::workload_api::SECURITY_HEADER;
/// The largest request message accepted (Workload API requests are tiny).
pub(crate) const MAX_REQUEST_LEN: usize = 64 * 1024;
/// The largest response message sent.
const MAX_RESPONSE_LEN: usize = 32 * 1024 * 1024;
/// The status message when no identity matches the caller, as SPIRE words it.
pub const NO_IDENTITY: &str = "no identity issued";

/// How long a shutdown waits for connections to close before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Bounds on what callers may cost the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections (being attested or established).
    pub max_connections: usize,
    /// Open connections of one uid, so that one local user cannot take every slot.
    pub max_connections_per_uid: usize,
    /// Concurrent gRPC calls per connection.
    pub max_streams_per_connection: u32,
    /// How long attesting one connection may take, and, on each call, establishing the
    /// selectors read from the executable (a path check, a hash).
    pub attest_timeout: Duration,
}

impl Default for Limits {
    /// 1024 connections, 128 per uid, 16 calls each, 30 s to attest.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_uid: 128,
            max_streams_per_connection: 16,
            attest_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The socket path holds something that is not a socket; it is left alone.
    #[error("{0} exists and is not a socket")]
    NotASocket(String),
    /// Another process still serves on the socket path.
    #[error("{0} is in use by another server")]
    InUse(String),
    #[error("cannot bind {path}: {source}")]
    Bind {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds the Workload API socket at `path`: removes a stale socket left by a previous run
/// (refusing when `path` is not a socket, or when a server still answers on it), binds, and sets
/// mode `0666`.
pub async fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let shown = || path.display().to_string();
    let bind_err = |source| ServeError::Bind {
        path: shown(),
        source,
    };
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ServeError::InUse(shown()));
            }
            tokio::fs::remove_file(path).await.map_err(bind_err)?;
        }
        Ok(_) => return Err(ServeError::NotASocket(shown())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .await
        .map_err(bind_err)?;
    Ok(listener)
}

/// Serves the Workload API on a unix socket at `path` (see [`bind`]) from `cache`, with the
/// default [`Limits`], until `shutdown` completes.
pub async fn serve(
    path: &Path,
    cache: SvidCache,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = bind(path).await?;
    info!(path = %path.display(), "Workload API listening");
    serve_listener(
        listener,
        cache,
        Attestor::new(),
        Limits::default(),
        None,
        shutdown,
    )
    .await
}

/// Serves the Workload API on a bound `listener` until `shutdown` completes.
pub(crate) async fn serve_listener(
    listener: UnixListener,
    cache: SvidCache,
    attestor: Attestor,
    limits: Limits,
    jwt: Option<Arc<JwtIssuer>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    // Open streams end when shutdown begins, so that the graceful shutdown can finish; a
    // connection that still lingers is dropped after SHUTDOWN_GRACE.
    let (stopping_tx, stopping) = watch::channel(false);
    let extension =
        ringzero_proto::mesh::mesh_policy_server::MeshPolicyServer::new(mesh::MeshExtension {
            cache: cache.clone(),
            stopping: stopping.clone(),
            attestor: attestor.clone(),
            attest_timeout: limits.attest_timeout,
        })
        .max_decoding_message_size(MAX_REQUEST_LEN)
        .max_encoding_message_size(MAX_RESPONSE_LEN);
    let service = SpiffeWorkloadApiServer::new(WorkloadApi {
        cache,
        jwt,
        stopping: stopping.clone(),
        attestor: attestor.clone(),
        attest_timeout: limits.attest_timeout,
    })
    .max_decoding_message_size(MAX_REQUEST_LEN)
    .max_encoding_message_size(MAX_RESPONSE_LEN);
    // The shared per-connection bounds (HTTP/2 memory, reset floods, request deadline), with
    // this server's stream cap; no connection age: Workload API streams are meant to last.
    let server =
        ringzero_proto::transport::server_builder(&ringzero_proto::transport::StreamLimits {
            max_concurrent_streams: limits.max_streams_per_connection,
            ..Default::default()
        })
        .add_service(service)
        .add_service(extension)
        .serve_with_incoming_shutdown(incoming(listener, attestor, limits), async move {
            shutdown.await;
            let _ = stopping_tx.send(true);
        });
    let mut grace = stopping;
    tokio::select! {
        served = server => served?,
        () = async {
            let _ = grace.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => warn!("Workload API connections still open after the shutdown grace period; dropped"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Accepting and attesting connections
// ---------------------------------------------------------------------------------------------

/// What every request knows about its caller: the attestation of its connection.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) Arc<Attestation>);

/// An accepted, attested connection: every request on it carries its [`Caller`].
type AttestedConnection = Connection<UnixStream, Caller, Slots>;

/// What an attested connection holds while it is open: one of the server's connection slots
/// and one of its uid's.
#[derive(Debug)]
struct Slots {
    _slot: OwnedSemaphorePermit,
    _uid_slot: UidSlot,
    _counted: crate::metrics::GaugeGuard,
}

impl ConnectionGuard for Slots {}

/// One of a uid's connection slots, given back on drop.
#[derive(Debug)]
struct UidSlot {
    uid: u32,
    counts: Arc<std::sync::Mutex<HashMap<u32, usize>>>,
}

impl UidSlot {
    fn take(
        counts: &Arc<std::sync::Mutex<HashMap<u32, usize>>>,
        uid: u32,
        max: usize,
    ) -> Option<Self> {
        let mut map = counts.lock().ok()?;
        let n = map.entry(uid).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            uid,
            counts: Arc::clone(counts),
        })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.counts.lock()
            && let Some(n) = map.get_mut(&self.uid)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

/// Accepted connections, each attested in its own task, as a stream for tonic.
fn incoming(
    listener: UnixListener,
    attestor: Attestor,
    limits: Limits,
) -> impl Stream<Item = Result<AttestedConnection, io::Error>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let per_uid = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let deadline = limits.attest_timeout;
    let accepting = accept(listener, move |stream: UnixStream, _| {
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            warn!("Workload API connection limit reached; closing a new connection");
            return None;
        };
        let cred = stream.peer_cred().ok()?;
        let Some(uid_slot) = UidSlot::take(&per_uid, cred.uid(), limits.max_connections_per_uid)
        else {
            warn!(
                uid = cred.uid(),
                "Workload API per-uid connection limit reached; closing a new connection"
            );
            return None;
        };
        let attestor = attestor.clone();
        Some(async move {
            // The /proc reads run through the attestor's gate; if they outlast the deadline
            // the job keeps its slot until it ends, and the connection is closed.
            let Ok(result) = tokio::time::timeout(deadline, attestor.attest(&stream)).await else {
                warn!(
                    uid = cred.uid(),
                    "Workload API caller attestation timed out; closing"
                );
                return None;
            };
            match result {
                Ok(attestation) => {
                    debug!(
                        pid = attestation.pid(),
                        uid = attestation.uid(),
                        selectors = attestation.selectors().len(),
                        "Workload API caller attested"
                    );
                    Some(Connection::new(
                        stream,
                        Caller(Arc::new(attestation)),
                        Slots {
                            _slot: slot,
                            _uid_slot: uid_slot,
                            _counted: crate::metrics::metrics().connection(),
                        },
                    ))
                }
                Err(e) => {
                    warn!(error = %e, "cannot attest Workload API caller; closing");
                    None
                }
            }
        })
    });
    accepting.map(|accepted| {
        if let Err(e) = &accepted {
            warn!(error = %e, "Workload API accept failed");
        }
        accepted
    })
}

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

struct WorkloadApi {
    cache: SvidCache,
    /// Mints and caches JWT-SVIDs; `None` when no authority is at hand (then
    /// `FetchJWTSVID` answers `Unavailable`).
    jwt: Option<Arc<JwtIssuer>>,
    /// Becomes `true` when the server shuts down: open streams end.
    stopping: watch::Receiver<bool>,
    /// Establishes the selectors that read the caller's executable, when entries need them.
    attestor: Attestor,
    attest_timeout: Duration,
}

type ResponseStream<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The caller of `req`, after checking the security header and that the caller is still the
/// attested process.
fn admit<T>(req: &Request<T>, method: &'static str) -> Result<Arc<Attestation>, Status> {
    let header_ok = req
        .metadata()
        .get(SECURITY_HEADER)
        .is_some_and(|v| v.as_bytes() == b"true");
    let caller = req.extensions().get::<Caller>().map(|c| Arc::clone(&c.0));
    if !header_ok {
        info!(
            method,
            pid = caller.as_ref().map(|c| c.pid()),
            "Workload API request without the security header"
        );
        return Err(Status::invalid_argument(
            "security header missing from request",
        ));
    }
    let caller = caller.ok_or_else(|| Status::internal("caller was not attested"))?;
    recheck(&caller, method)?;
    Ok(caller)
}

/// [`Attestation::verify`], as a status.
fn recheck(caller: &Attestation, method: &'static str) -> Result<(), Status> {
    caller.verify().map_err(|e| refusal(caller, method, &e))
}

/// An attestation failure, logged, as a status.
fn refusal(caller: &Attestation, method: &'static str, e: &AttestError) -> Status {
    info!(method, pid = caller.pid(), uid = caller.uid(), error = %e, "Workload API caller refused");
    match e {
        AttestError::ProcessGone | AttestError::ExecutableChanged | AttestError::LeftTask => {
            Status::permission_denied(e.to_string())
        }
        _ => Status::unavailable("cannot re-attest the caller"),
    }
}

/// Opens a streaming call: the security header ([`admit`]), then the caller's selectors
/// established against the entries of the current snapshot ([`establish`]). Returns the
/// caller, the subscription that drives the stream's updates, and that snapshot.
async fn open_stream<T>(
    cache: &SvidCache,
    attestor: &Attestor,
    deadline: Duration,
    req: &Request<T>,
    method: &'static str,
) -> Result<
    (
        Arc<Attestation>,
        watch::Receiver<Arc<Snapshot>>,
        Arc<Snapshot>,
    ),
    Status,
> {
    let caller = admit(req, method)?;
    let rx = cache.subscribe();
    let snap = Arc::clone(&rx.borrow());
    establish(attestor, deadline, &caller, &snap, method).await?;
    Ok((caller, rx, snap))
}

/// Establishes the caller's `unix:path` and `unix:sha256` selectors if an identity of `snap`
/// needs them ([`Attestor::resolve`]), within `deadline`. On timeout the caller gets
/// `DeadlineExceeded`; the read goes on in the background, holding the caller's uid's slot,
/// and its result serves the next call.
async fn establish(
    attestor: &Attestor,
    deadline: Duration,
    caller: &Arc<Attestation>,
    snap: &Snapshot,
    method: &'static str,
) -> Result<(), Status> {
    let entries: Vec<&[Selector]> = snap.identities().map(|i| i.selectors.as_slice()).collect();
    if caller.pending(entries.iter().copied()).is_none() {
        return Ok(());
    }
    match tokio::time::timeout(deadline, attestor.resolve(caller, &entries)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(refusal(caller, method, &e)),
        Err(_) => {
            warn!(
                method,
                pid = caller.pid(),
                uid = caller.uid(),
                "attesting the caller's executable timed out"
            );
            Err(Status::deadline_exceeded(format!(
                "attesting the caller's executable took longer than {} s",
                deadline.as_secs()
            )))
        }
    }
}

/// The caller's full X.509 state, or `PermissionDenied` when nothing matches it.
fn x509_response(snap: &Snapshot, caller: &Attestation) -> Result<pb::X509svidResponse, Status> {
    let mut svids = Vec::new();
    let mut own_domains: Vec<&TrustDomain> = Vec::new();
    for identity in snap.matching(&caller.selectors()) {
        let td = identity.spiffe_id.trust_domain();
        let Some(bundle) = snap.bundle(&td).filter(|b| !b.is_empty()) else {
            warn!(entry = %identity.entry_id, trust_domain = %td, "no bundle for an identity's trust domain; not served");
            continue;
        };
        svids.push(pb::X509svid {
            spiffe_id: identity.spiffe_id.to_string(),
            x509_svid: concat(&identity.chain),
            x509_svid_key: identity.key.to_vec(),
            bundle: concat(bundle),
            hint: identity.hint.clone(),
        });
        if let Some((known, _)) = snap.bundles().get_key_value(&td) {
            own_domains.push(known);
        }
    }
    if svids.is_empty() {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    let federated_bundles = snap
        .bundles()
        .iter()
        .filter(|(td, cas)| !own_domains.contains(td) && !cas.is_empty())
        .map(|(td, cas)| (td.id().to_string(), concat(cas)))
        .collect();
    Ok(pb::X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles,
    })
}

fn bundles_response(snap: &Snapshot) -> Option<pb::X509BundlesResponse> {
    let bundles: HashMap<String, Vec<u8>> = snap
        .bundles()
        .iter()
        .filter(|(_, cas)| !cas.is_empty())
        .map(|(td, cas)| (td.id().to_string(), concat(cas)))
        .collect();
    (!bundles.is_empty()).then_some(pb::X509BundlesResponse {
        crl: Vec::new(),
        bundles,
    })
}

/// DER certificates back to back, as the Workload API carries them: one allocation, copied
/// slice by slice (this runs for every message on every stream).
fn concat(certs: &[rustls_pki_types::CertificateDer<'static>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(certs.iter().map(|c| c.len()).sum());
    for c in certs {
        out.extend_from_slice(c);
    }
    out
}

/// Streams `build(snapshot)` now and after every cache change while it yields something new;
/// `Err` ends the stream with that status. Before each message the caller is re-verified
/// ([`Attestation::verify_for`]: once per connection and snapshot).
///
/// The stream is polled by the HTTP/2 stream's own task: a message is built when the client can
/// take one, from the latest snapshot, so a client that does not read holds back only its own
/// stream and a burst of changes costs it one message. (A task per stream with a channel to
/// the HTTP/2 stream cost one more wake-up and hand-off per stream at every rotation: 10,000
/// streams are woken at once.)
fn stream_updates<T: Send + 'static>(
    rx: watch::Receiver<Arc<Snapshot>>,
    stopping: watch::Receiver<bool>,
    caller: Arc<Attestation>,
    method: &'static str,
    resolver: Option<(Attestor, Duration)>,
    build: impl Fn(&Snapshot, &Attestation) -> Result<Option<T>, Status> + Send + Sync + 'static,
) -> ResponseStream<T> {
    struct Updates<B> {
        rx: watch::Receiver<Arc<Snapshot>>,
        stopping: watch::Receiver<bool>,
        caller: Arc<Attestation>,
        method: &'static str,
        resolver: Option<(Attestor, Duration)>,
        build: B,
        /// Nothing sent yet: the current snapshot goes out without waiting for a change.
        first: bool,
        /// The stream has ended (with an error).
        ended: bool,
        _open: crate::metrics::GaugeGuard,
    }
    let state = Updates {
        rx,
        stopping,
        caller,
        method,
        resolver,
        build,
        first: true,
        ended: false,
        _open: crate::metrics::metrics().stream(method),
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.ended {
            return None;
        }
        loop {
            if !st.first {
                tokio::select! {
                    _ = st.stopping.wait_for(|stop| *stop) => return None,
                    changed = st.rx.changed() => if changed.is_err() { return None },
                }
            }
            st.first = false;
            let snap = Arc::clone(&st.rx.borrow_and_update());
            // A few small reads of /proc and cached attributes: cheap enough to run on the
            // runtime, and shared by the connection's streams for one snapshot. Reads of the
            // executable (new entries may need them) go through the attestor's gate.
            let mut next = st
                .caller
                .verify_for(snap.revision())
                .map_err(|e| refusal(&st.caller, st.method, &e));
            if let (Ok(()), Some((attestor, deadline))) = (&next, &st.resolver) {
                next = establish(attestor, *deadline, &st.caller, &snap, st.method).await;
            }
            match next.and_then(|()| (st.build)(&snap, &st.caller)) {
                Ok(Some(msg)) => {
                    debug!(
                        method = st.method,
                        pid = st.caller.pid(),
                        revision = snap.revision(),
                        "Workload API update sent"
                    );
                    return Some((Ok(msg), st));
                }
                Ok(None) => {}
                Err(status) => {
                    info!(method = st.method, pid = st.caller.pid(), uid = st.caller.uid(), code = ?status.code(), "Workload API stream ended");
                    st.ended = true;
                    return Some((Err(status), st));
                }
            }
        }
    }))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let started = std::time::Instant::now();
        let (caller, rx, snap) = open_stream(
            &self.cache,
            &self.attestor,
            self.attest_timeout,
            &req,
            "FetchX509SVID",
        )
        .await?;
        // The first answer is decided here, so that a caller with no identity gets the status
        // on the call itself, as from SPIRE.
        let first = x509_response(&snap, &caller);
        match &first {
            Ok(msg) => info!(
                pid = caller.pid(),
                uid = caller.uid(),
                svids = msg.svids.len(),
                "FetchX509SVID: serving"
            ),
            Err(_) => {
                info!(
                    pid = caller.pid(),
                    uid = caller.uid(),
                    "FetchX509SVID: no identity issued"
                );
            }
        }
        first?;
        crate::metrics::metrics().fetched("FetchX509SVID", started.elapsed());
        Ok(Response::new(stream_updates(
            rx,
            self.stopping.clone(),
            caller,
            "FetchX509SVID",
            Some((self.attestor.clone(), self.attest_timeout)),
            |snap, caller| x509_response(snap, caller).map(Some),
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = admit(&req, "FetchX509Bundles")?;
        info!(
            pid = caller.pid(),
            uid = caller.uid(),
            "FetchX509Bundles: serving"
        );
        Ok(Response::new(stream_updates(
            self.cache.subscribe(),
            self.stopping.clone(),
            caller,
            "FetchX509Bundles",
            None,
            |snap, _| Ok(bundles_response(snap)),
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let started = std::time::Instant::now();
        let (caller, _, snap) = open_stream(
            &self.cache,
            &self.attestor,
            self.attest_timeout,
            &req,
            "FetchJWTSVID",
        )
        .await?;
        let reply = jwt::fetch(self.jwt.as_deref(), &snap, &caller, req.get_ref()).await?;
        // The caller may have exec'd or died while the token was minted.
        recheck(&caller, "FetchJWTSVID")?;
        crate::metrics::metrics().fetched("FetchJWTSVID", started.elapsed());
        Ok(Response::new(reply))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = admit(&req, "FetchJWTBundles")?;
        info!(
            pid = caller.pid(),
            uid = caller.uid(),
            "FetchJWTBundles: serving"
        );
        // Sent again only when the JWT bundles change, not on every cache change.
        let last = std::sync::Mutex::new(None::<pb::JwtBundlesResponse>);
        Ok(Response::new(stream_updates(
            self.cache.subscribe(),
            self.stopping.clone(),
            caller,
            "FetchJWTBundles",
            None,
            move |snap, _| {
                let next = jwt::bundles_response(snap);
                let Ok(mut last) = last.lock() else {
                    return Ok(next);
                };
                if next.is_none() || *last == next {
                    return Ok(None);
                }
                last.clone_from(&next);
                Ok(next)
            },
        )))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        let caller = admit(&req, "ValidateJWTSVID")?;
        let snap = self.cache.snapshot();
        let reply = jwt::validate(&snap, req.get_ref());
        info!(
            pid = caller.pid(),
            uid = caller.uid(),
            valid = reply.is_ok(),
            "ValidateJWTSVID"
        );
        Ok(Response::new(reply?))
    }
}
