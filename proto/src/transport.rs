//! mTLS transport: tonic over rustls (ring provider) with ringzero's SPIFFE verifiers.
//!
//! tonic is built without its own TLS features; this module supplies both ends instead:
//!
//! - **Server**: [`incoming`] turns a bound [`TcpListener`] into a stream of [`TlsConnection`]s
//!   for [`tonic::transport::Server::serve_with_incoming`] (or `…_shutdown`). Each handshake
//!   runs in its own task under a deadline; handshakes and connections are bounded per
//!   [`ConnectionClass`] (authority members, authenticated, anonymous) and per source IP, and
//!   each connection lives at most as long as its class and its certificate allow (see
//!   [`ServerLimits`]). Every request then carries the caller's [`PeerInfo`] (address and
//!   SPIFFE ID from the verified client SVID), read back with [`peer`].
//! - **Server policy**: [`ServerPolicy`] holds those connection bounds with the per-connection
//!   stream bounds ([`StreamLimits`]: stream cap, HTTP/2 memory, request deadline), and builds
//!   both the tonic `Server` and the incoming stream, so every ringzero server is bounded the
//!   same way. The layers [`RefuseExpiredLayer`], [`AnonymousAllowListLayer`] and
//!   [`MembersOnlyLayer`] refuse calls from what the connection's [`PeerInfo`] says, before
//!   any handler runs.
//! - **Unix sockets**: [`unix_channel`] is the client side of a server on a unix socket, whose
//!   accept loop is [`accept`] too (the agent's Workload API).
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
//! use std::time::{Duration, SystemTime};
//! use ringzero_proto::transport::{RefuseExpiredLayer, ServerPolicy, channel};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let policy = ServerPolicy::default();
//! tokio::spawn(
//!     policy
//!         .server()
//!         .layer(RefuseExpiredLayer)
//!         .add_service(svc)
//!         .serve_with_incoming(policy.incoming(listener, server_cfg)),
//! );
//! let channel = channel(&addr.to_string(), client_cfg, Duration::from_secs(5))?;
//! let mut client = ringzero_proto::pb::raft_client::RaftClient::new(channel);
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::task::Context;
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use ringzero_policy::SpiffeId;
use ringzero_policy::tls::peer_svid;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint};

pub use accepting::{Accepting, Listener, accept};
pub use admission::{ConnectionClass, ServerLimits};
use admission::{Lifetime, Pools, Slot};
pub use connection::{Connection, ConnectionGuard};
pub use layers::{
    ANONYMOUS_MESSAGE, AnonymousAllowList, AnonymousAllowListLayer, EXPIRED_MESSAGE,
    MEMBERS_ONLY_MESSAGE, MembersOnly, MembersOnlyLayer, RefusalFuture, RefuseExpired,
    RefuseExpiredLayer,
};
pub use policy::{ServerPolicy, StreamLimits, server_builder};

mod accepting;
mod admission;
mod connection;
mod layers;
mod policy;

/// The TLS server name a client sends. SPIFFE servers are identified by the SPIFFE ID in their
/// SVID, which the server verifier checks; it ignores this name.
const TLS_SERVER_NAME: &str = "ringzero.invalid";

/// The only application protocol gRPC speaks.
const ALPN_H2: &[u8] = b"h2";

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

/// Accepts TCP connections from `listener`, runs the rustls handshake with `config`
/// concurrently, admits each verified connection to the pool of its [`ConnectionClass`], and
/// yields TLS connections for [`tonic::transport::Server::serve_with_incoming`].
///
/// What `limits` bounds (see [`ServerLimits`]):
/// - handshakes in progress, globally and per source IP, each for at most
///   `handshake_timeout` (a slow or hostile client never blocks others: each handshake runs in
///   its own task); a connection beyond either cap is closed as soon as it is accepted;
/// - connections per class: authority members have a reserved pool, authenticated clients
///   share the general one, anonymous clients have their own small pool, capped per source IP
///   too; a connection whose pool is full is closed right after its handshake;
/// - each connection's life: closed after its class's idle time without a byte, and at its
///   class's maximum age, and never later than its client certificate's expiry.
///
/// Handshake failures are dropped (and never end the stream). `config` is typically
/// [`ringzero_policy::tls::server_config`] with a
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
    // No session resumption: a resumed TLS 1.3 session carries the client certificate of the
    // session it resumes without verifying it again, so a certificate that has expired since,
    // or whose CA has left the bundle, would authenticate a new connection. Every connection
    // verifies its client certificate (a full handshake costs one signature more).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let pools = Arc::new(Pools::new(limits));
    accept(listener, move |tcp: TcpStream, addr: SocketAddr| {
        // No handshake slot free: the connection is dropped, which closes it.
        let handshake_slot = pools.handshake(addr.ip())?;
        let acceptor = acceptor.clone();
        let pools = Arc::clone(&pools);
        Some(async move {
            let limits = *pools.limits();
            // Best effort: gRPC messages are small and latency-bound.
            let _ = tcp.set_nodelay(true);
            admission::set_keepalive(&tcp, limits.tcp_keepalive);
            let stream = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
                .await
                .ok()?
                .ok()?;
            drop(handshake_slot);
            let svid = peer_svid(stream.get_ref().1.peer_certificates());
            let peer = PeerInfo {
                addr: Some(addr),
                spiffe_id: svid.as_ref().map(|s| s.id.clone()),
                serial: svid.as_ref().map(|s| s.serial.clone()),
                not_after: svid.as_ref().map(|s| s.not_after),
                issuer_authority: svid.and_then(|s| s.issuer_authority),
            };
            // The verifier compares whole seconds, so a certificate is still accepted during
            // the second after its `not_after`: not here (as `RefuseExpiredLayer` decides).
            if peer.not_after.is_some_and(|t| t < SystemTime::now()) {
                return None;
            }
            let class = ConnectionClass::of(&peer);
            // A full pool: the connection is dropped, which closes it.
            let slot = pools.admit(class, addr.ip())?;
            let lifetime = pools.lifetime(class, peer.not_after);
            Some(Connection::new(
                stream,
                peer,
                Admission {
                    class,
                    lifetime,
                    _slot: slot,
                },
            ))
        })
    })
}

/// A server-side TLS connection; every request received on it carries the caller's
/// [`PeerInfo`] (read back with [`peer`]).
///
/// It occupies a slot of its class's pool until dropped. Once it has been idle for its class's
/// idle time, or reaches its end (maximum age or certificate expiry), reads see the end of the
/// stream and writes fail, so that the server drops it.
pub type TlsConnection =
    Connection<tokio_rustls::server::TlsStream<TcpStream>, PeerInfo, Admission>;

/// What a [`TlsConnection`] holds while it is open: its class's pool slot, and its lifetime
/// (idle time, maximum age, certificate expiry), which ends it.
#[derive(Debug)]
pub struct Admission {
    class: ConnectionClass,
    lifetime: Lifetime,
    _slot: Slot,
}

impl TlsConnection {
    /// The class this connection was admitted as.
    pub fn class(&self) -> ConnectionClass {
        self.guard().class
    }
}

impl ConnectionGuard for Admission {
    fn poll_over(&mut self, cx: &mut Context<'_>) -> bool {
        self.lifetime.poll_over(cx)
    }

    fn touch(&mut self) {
        self.lifetime.touch();
    }

    fn over_error(&self) -> io::Error {
        Lifetime::over_error()
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

/// A tonic channel to a gRPC server on the unix socket at `path` (such as the SPIFFE Workload
/// API), connected before it is returned. No TLS: on a unix socket the server learns who the
/// caller is from the kernel (peer credentials). The channel reconnects to the same path after
/// a failure.
pub async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: Arc<Path> = Arc::from(path);
    // The URI is a placeholder: the connector dials the socket.
    Endpoint::from_static("http://unix.invalid")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = Arc::clone(&path);
            async move { UnixStream::connect(&*path).await.map(TokioIo::new) }
        }))
        .await
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
