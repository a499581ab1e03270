//! mTLS transport: tonic over rustls (ring provider) with ringzero's SPIFFE verifiers.
//!
//! tonic is built without its own TLS features; this module supplies both ends instead:
//!
//! - **Server**: [`incoming`] turns a bound [`TcpListener`] into a stream of [`TlsConnection`]s
//!   for [`tonic::transport::Server::serve_with_incoming`] (or `…_shutdown`). Each handshake
//!   runs in its own task under a deadline, and the number of open connections is bounded, so a
//!   slow or hostile client costs one slot for at most `handshake_timeout` and never delays
//!   anybody else. Every request then carries the caller's [`PeerInfo`] (address and SPIFFE ID
//!   from the verified client SVID), read back with [`peer`].
//! - **Client**: [`channel`] builds a lazily connecting tonic [`Channel`] whose connector does
//!   TCP + TLS with a given [`rustls::ClientConfig`], normally one from
//!   [`ringzero_policy::tls::client_config`], whose SPIFFE server verifier decides which
//!   server identities are acceptable (the TLS server name is a fixed placeholder).
//!
//! Both sides force ALPN `h2` on a private copy of the configuration they are given: gRPC is
//! HTTP/2 only, and the caller's configuration is left untouched.
//!
//! ```no_run
//! # async fn example(
//! #     server_cfg: std::sync::Arc<rustls::ServerConfig>,
//! #     client_cfg: std::sync::Arc<rustls::ClientConfig>,
//! #     svc: ringzero_proto::pb::raft_server::RaftServer<impl ringzero_proto::pb::raft_server::Raft>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use ringzero_proto::transport::{ServerLimits, channel, incoming};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(
//!     tonic::transport::Server::builder()
//!         .add_service(svc)
//!         .serve_with_incoming(incoming(listener, server_cfg, ServerLimits::default())),
//! );
//! let channel = channel(&addr.to_string(), client_cfg, Duration::from_secs(5))?;
//! let mut client = ringzero_proto::pb::raft_client::RaftClient::new(channel);
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use ringzero_policy::SpiffeId;
use ringzero_policy::tls::peer_svid;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::Stream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

/// The TLS server name a client sends. SPIFFE servers are identified by the SPIFFE ID in their
/// SVID, which the server verifier checks; it ignores this name.
const TLS_SERVER_NAME: &str = "ringzero.invalid";

/// The only application protocol gRPC speaks.
const ALPN_H2: &[u8] = b"h2";

/// How long the accept loop pauses after a listener error such as `EMFILE`, which would
/// otherwise repeat at once and spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most this many TCP connections are accepted per poll before completed handshakes are
/// handed out, so that a connection flood cannot starve established clients.
const ACCEPT_BUDGET: usize = 64;

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// What the server learned about a caller from the TLS handshake; every request carries it.
///
/// `spiffe_id` is `None` when the client presented no certificate, which only a server
/// configured with [`SpiffeClientVerifier::optional`](ringzero_policy::tls::SpiffeClientVerifier::optional)
/// lets through; such a caller may only make first-contact calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The caller's TCP address.
    pub addr: Option<SocketAddr>,
    /// The SPIFFE ID of the caller's verified client SVID.
    pub spiffe_id: Option<SpiffeId>,
    /// The serial number of that SVID (as encoded in the certificate).
    pub serial: Option<Vec<u8>>,
    /// When that SVID expires: calls after this instant are refused, whatever the connection.
    pub not_after: Option<std::time::SystemTime>,
    /// The authority member whose own CA signed that SVID directly, when one did.
    pub issuer_authority: Option<u64>,
}

/// Bounds on what unauthenticated network peers may cost a server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Open connections, handshaking or established; a connection beyond this is closed as soon
    /// as it is accepted.
    pub max_connections: usize,
    /// How long a client may take to complete the TLS handshake before it is disconnected.
    pub handshake_timeout: Duration,
}

impl Default for ServerLimits {
    /// 1024 connections, 10 s per handshake.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Accepts TCP connections from `listener`, runs the rustls handshake with `config`
/// concurrently (a slow or hostile client never blocks others: each handshake in its own task,
/// bounded by `handshake_timeout`; at most `max_connections` open connections, excess ones
/// closed at once), and yields TLS connections for
/// [`tonic::transport::Server::serve_with_incoming`]. Handshake failures are dropped (and never
/// end the stream).
///
/// `config` is typically [`ringzero_policy::tls::server_config`] with a
/// [`SpiffeClientVerifier`](ringzero_policy::tls::SpiffeClientVerifier); ALPN is set to `h2` on
/// a copy. The stream never ends by itself; it yields an error only when the listener fails
/// (for instance, out of file descriptors), after which it pauses accepting briefly. Dropping
/// it closes the listener and aborts the handshakes in progress.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: ServerLimits,
) -> impl Stream<Item = Result<TlsConnection, io::Error>> + Send + 'static {
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Incoming {
        listener,
        acceptor: TlsAcceptor::from(Arc::new(config)),
        handshake_timeout: limits.handshake_timeout,
        slots: Arc::new(Semaphore::new(
            limits.max_connections.min(Semaphore::MAX_PERMITS),
        )),
        handshakes: JoinSet::new(),
        backoff: None,
    }
}

/// The stream behind [`incoming`].
struct Incoming {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    /// One permit per open connection; a [`TlsConnection`] holds its permit until dropped.
    slots: Arc<Semaphore>,
    /// Handshakes in progress; `None` is a failed or timed-out one.
    handshakes: JoinSet<Option<TlsConnection>>,
    /// Set after a listener error: no accepting until it fires.
    backoff: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    /// Starts the handshake of a new TCP connection in its own task, or closes the connection
    /// at once when every slot is taken.
    fn start(&mut self, tcp: TcpStream, addr: SocketAddr) {
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            drop(tcp);
            return;
        };
        let acceptor = self.acceptor.clone();
        let deadline = self.handshake_timeout;
        self.handshakes.spawn(async move {
            // Best effort: gRPC messages are small and latency-bound.
            let _ = tcp.set_nodelay(true);
            let stream = tokio::time::timeout(deadline, acceptor.accept(tcp))
                .await
                .ok()?
                .ok()?;
            let svid = peer_svid(stream.get_ref().1.peer_certificates());
            Some(TlsConnection {
                stream,
                peer: PeerInfo {
                    addr: Some(addr),
                    spiffe_id: svid.as_ref().map(|s| s.id.clone()),
                    serial: svid.as_ref().map(|s| s.serial.clone()),
                    not_after: svid.as_ref().map(|s| s.not_after),
                    issuer_authority: svid.and_then(|s| s.issuer_authority),
                },
                _slot: slot,
            })
        });
    }

    /// Accepts pending TCP connections; returns a listener error to report, if any.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        for _ in 0..ACCEPT_BUDGET {
            if let Some(backoff) = &mut self.backoff {
                if backoff.as_mut().poll(cx).is_pending() {
                    return None;
                }
                self.backoff = None;
            }
            match self.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, addr))) => self.start(tcp, addr),
                // The client went away before we accepted: nothing to report.
                Poll::Ready(Err(e)) if is_per_connection(&e) => {}
                Poll::Ready(Err(e)) => {
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                    return Some(e);
                }
                Poll::Pending => return None,
            }
        }
        // Budget spent with connections possibly still queued: come back soon.
        cx.waker().wake_by_ref();
        None
    }
}

impl Stream for Incoming {
    type Item = Result<TlsConnection, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(e) = this.poll_accept(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(conn)))) => return Poll::Ready(Some(Ok(conn))),
                // A failed or timed-out handshake (or a panicked task): the client is gone.
                Poll::Ready(Some(Ok(None) | Err(_))) => {}
                // No handshake in progress: the listener's waker is registered.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Listener errors that concern one connection only, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// A server-side TLS connection; implements tonic's [`Connected`] so that handlers see
/// [`PeerInfo`] (through [`peer`]).
///
/// It occupies one of the server's `max_connections` slots until dropped.
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerInfo,
    _slot: OwnedSemaphorePermit,
}

impl std::fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerInfo;

    /// tonic calls this once per connection and inserts a clone into the extensions of every
    /// request received on it.
    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The caller of a request ([`PeerInfo`] with both fields `None` if absent, i.e. the server
/// was not fed by [`incoming`]).
///
/// tonic's own `Request::remote_addr` and `Request::peer_certs` know only tonic's built-in TCP
/// and TLS connection types, so they return `None` on a server fed by [`incoming`]: use this.
pub fn peer<T>(req: &tonic::Request<T>) -> PeerInfo {
    req.extensions()
        .get::<PeerInfo>()
        .cloned()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Why a channel could not be built. Connection failures are not among them: the channel
/// connects lazily, and reports those as a `Status` on the call that needed the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The address is not `host:port`.
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// tonic refused the endpoint built from the address.
    #[error("invalid endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    /// A channel runs a background task: it must be created inside a Tokio runtime.
    #[error("no Tokio runtime to run the channel on")]
    NoRuntime,
}

/// A lazily connecting tonic channel to `addr` (`"host:port"`) over TLS with `config` (which
/// carries the client SVID, if any, and the SPIFFE server verifier). `connect_timeout` bounds
/// TCP+TLS setup.
///
/// ALPN is set to `h2` on a copy of `config`. The channel holds one HTTP/2 connection, shared
/// by concurrent calls, and reconnects after a failure; a server that fails verification makes
/// the call fail with a `Status`, never with a connection to the wrong server.
pub fn channel(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
) -> Result<Channel, TransportError> {
    let target = parse_addr(addr)?;
    // Checked here so that the spawn inside tonic cannot panic.
    tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
    let endpoint =
        Endpoint::from_shared(format!("https://{target}"))?.connect_timeout(connect_timeout);

    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let target: Arc<str> = Arc::from(target.as_str());
    let connect = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        let target = Arc::clone(&target);
        async move {
            tokio::time::timeout(connect_timeout, connect_tls(&target, connector))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TCP+TLS connection setup timed out",
                    )
                })?
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}

/// TCP connect to `target`, then the TLS handshake.
async fn connect_tls(
    target: &str,
    connector: TlsConnector,
) -> io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(TLS_SERVER_NAME)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tls = connector.connect(name, tcp).await?;
    Ok(TokioIo::new(tls))
}

/// Checks that `addr` is a bare `host:port`.
fn parse_addr(addr: &str) -> Result<http::uri::Authority, TransportError> {
    let invalid = |reason| TransportError::InvalidAddress {
        addr: addr.to_owned(),
        reason,
    };
    let authority: http::uri::Authority =
        addr.parse().map_err(|_| invalid("expected host:port"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("user info is not allowed"));
    }
    if authority.host().is_empty() {
        return Err(invalid("missing host"));
    }
    if authority.port_u16().is_none() {
        return Err(invalid("missing port"));
    }
    Ok(authority)
}
