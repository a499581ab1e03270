//! The data plane: accept loops for inbound (mTLS in, plain TCP to the local target) and
//! outbound (plain TCP from the local app, mTLS out to the peer) listeners, each connection
//! bounded in age, counted, and drained on shutdown.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use ringzero_policy::svid::ValidatedSvid;
use ringzero_policy::tls::peer_svid;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::HostPort;
use crate::metrics::{Direction, Metrics};
use crate::proxy_protocol;
use crate::verify::{Refusal, RevokedSerials};

/// Bound on the TLS handshake (slow or silent clients).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on connecting to a target.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connections proxied at once, over all listeners; accepting waits beyond it.
pub(crate) const MAX_CONNECTIONS: usize = 10_000;
/// The buffer of each copy direction of a connection: one full TLS record (16 KiB of
/// plaintext), so that a bulk transfer is encrypted in whole records.
const COPY_BUF: usize = 16 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Counts live connections and wakes a waiter when none is left.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    live: AtomicUsize,
    idle: Notify,
}

impl Tracker {
    fn track(self: &Arc<Self>) -> TrackGuard {
        self.live.fetch_add(1, Ordering::SeqCst);
        TrackGuard(Arc::clone(self))
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Returns once no connection is live.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
struct TrackGuard(Arc<Tracker>);

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What every connection of the sidecar shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) max_conn_age: Duration,
    pub(crate) proxy_protocol: bool,
    pub(crate) revoked: RevokedSerials,
    pub(crate) tracker: Arc<Tracker>,
    pub(crate) limit: Arc<Semaphore>,
    /// Becomes true when live connections must close (drain timeout passed).
    pub(crate) hard_stop: watch::Receiver<bool>,
}

/// Accepts on `listener` until `stop` becomes true, handing each connection to `handle`.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    dir: Direction,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr().ok();
    loop {
        let permit: OwnedSemaphorePermit = tokio::select! {
            p = Arc::clone(&shared.limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(direction = dir.as_str(), error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let guard = shared.tracker.track();
        let conn = handle(tcp, peer);
        tokio::spawn(async move {
            conn.await;
            drop((permit, guard));
        });
    }
    tracing::info!(direction = dir.as_str(), listen = ?local, "listener closed");
}

/// Serves one inbound listener: mTLS from peers, plain TCP to `target`.
pub(crate) async fn serve_inbound(
    listener: TcpListener,
    target: HostPort,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let local = listener.local_addr();
    let target = Arc::new(target);
    let conn_shared = Arc::clone(&shared);
    accept_loop(
        listener,
        shared,
        stop,
        Direction::Inbound,
        move |tcp, peer| {
            let acceptor = acceptor.clone();
            let target = Arc::clone(&target);
            let shared = Arc::clone(&conn_shared);
            let local = local.as_ref().ok().copied();
            async move { inbound_conn(tcp, peer, local, &target, acceptor, &shared).await }
        },
    )
    .await;
}

async fn inbound_conn(
    tcp: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    target: &HostPort,
    acceptor: TlsAcceptor,
    shared: &Shared,
) {
    let dir = Direction::Inbound;
    let started = Instant::now();
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return refused(shared, dir, peer, Refusal::of_io(&e), &e),
        Err(_) => {
            let e = io::Error::new(io::ErrorKind::TimedOut, "handshake timed out");
            return refused(shared, dir, peer, Refusal::Handshake, &e);
        }
    };
    shared.metrics.handshake_done(dir, started.elapsed());
    let certs = tls.get_ref().1.peer_certificates();
    let Some(svid) = peer_svid(certs) else {
        // The verifier accepted the chain, so this cannot happen; refuse rather than assume.
        let e = io::Error::other("verified peer has no readable SVID");
        return refused(shared, dir, peer, Refusal::BadCertificate, &e);
    };
    let leaf = certs.and_then(|c| c.first()).map(|c| c.to_vec());

    let mut upstream = match connect(target).await {
        Ok(s) => s,
        Err(e) => {
            shared.metrics.target_failed(dir);
            tracing::warn!(%peer, id = %svid.id, %target, error = %e, "inbound target unreachable; connection dropped");
            return;
        }
    };
    if shared.proxy_protocol {
        let header = proxy_protocol::Header {
            source: peer,
            destination: local.unwrap_or(peer),
            spiffe_id: svid.id.as_str(),
            client_cert: leaf.as_deref(),
        };
        let written = match proxy_protocol::encode(&header) {
            Ok(bytes) => upstream.write_all(&bytes).await,
            Err(e) => Err(io::Error::other(e)),
        };
        if let Err(e) = written {
            shared.metrics.target_failed(dir);
            tracing::warn!(%peer, %target, error = %e, "cannot send the PROXY header; connection dropped");
            return;
        }
    }
    tracing::debug!(%peer, id = %svid.id, %target, "inbound connection");
    pipe(tls, upstream, shared, dir, &svid).await;
}

/// Serves one outbound listener: plain TCP from the local app, mTLS to `target`, whose
/// SVID the connector's verifier checks.
pub(crate) async fn serve_outbound(
    listener: TcpListener,
    target: HostPort,
    connector: TlsConnector,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let target = Arc::new(target);
    let conn_shared = Arc::clone(&shared);
    accept_loop(
        listener,
        shared,
        stop,
        Direction::Outbound,
        move |tcp, peer| {
            let connector = connector.clone();
            let target = Arc::clone(&target);
            let shared = Arc::clone(&conn_shared);
            async move { outbound_conn(tcp, peer, &target, connector, &shared).await }
        },
    )
    .await;
}

async fn outbound_conn(
    app: TcpStream,
    app_addr: SocketAddr,
    target: &HostPort,
    connector: TlsConnector,
    shared: &Shared,
) {
    let dir = Direction::Outbound;
    let upstream = match connect(target).await {
        Ok(s) => s,
        Err(e) => {
            shared.metrics.target_failed(dir);
            tracing::warn!(app = %app_addr, %target, error = %e, "outbound target unreachable; connection dropped");
            return;
        }
    };
    // The name is not verified (the peer is identified by its SPIFFE ID) nor sent (no SNI);
    // a `HostPort` host is always a valid one.
    let name = ServerName::try_from(target.host().to_owned())
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let started = Instant::now();
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, upstream)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let addr = target_addr(target);
            return refused(shared, dir, addr, Refusal::of_io(&e), &e);
        }
        Err(_) => {
            let e = io::Error::new(io::ErrorKind::TimedOut, "handshake timed out");
            return refused(shared, dir, target_addr(target), Refusal::Handshake, &e);
        }
    };
    shared.metrics.handshake_done(dir, started.elapsed());
    let Some(svid) = peer_svid(tls.get_ref().1.peer_certificates()) else {
        let e = io::Error::other("verified peer has no readable SVID");
        return refused(
            shared,
            dir,
            target_addr(target),
            Refusal::BadCertificate,
            &e,
        );
    };
    tracing::debug!(app = %app_addr, %target, peer = %svid.id, "outbound connection");
    pipe(tls, app, shared, dir, &svid).await;
}

fn target_addr(target: &HostPort) -> SocketAddr {
    target
        .host()
        .parse()
        .map(|ip| SocketAddr::new(ip, target.port()))
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], target.port())))
}

async fn connect(target: &HostPort) -> io::Result<TcpStream> {
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((target.host(), target.port())),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Logs a refusal once and counts it. Policy refusals are warnings; a handshake that failed
/// for another reason (a port scan, a peer that hung up) is informational.
fn refused(shared: &Shared, dir: Direction, peer: SocketAddr, why: Refusal, e: &io::Error) {
    shared.metrics.refused(dir, why);
    if why == Refusal::Handshake {
        tracing::info!(direction = dir.as_str(), %peer, reason = why.as_str(), error = %e, "handshake failed");
    } else {
        tracing::warn!(direction = dir.as_str(), %peer, reason = why.as_str(), error = %e, "connection refused");
    }
}

/// Copies both ways until both sides are done, or the connection must end: it reached its
/// maximum age, the peer's certificate expired or was revoked, or the drain timeout passed.
async fn pipe<P, L>(peer: P, mut local: L, shared: &Shared, dir: Direction, svid: &ValidatedSvid)
where
    P: AsyncRead + AsyncWrite + Unpin,
    L: AsyncRead + AsyncWrite + Unpin,
{
    let _open = shared.metrics.open(dir);
    let mut peer = Counted {
        inner: peer,
        metrics: &shared.metrics,
        dir,
    };
    let mut hard_stop = shared.hard_stop.clone();
    let cert_left = svid
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + shared.max_conn_age.min(cert_left);
    let id = &svid.id;
    tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut peer, &mut local, COPY_BUF, COPY_BUF) => {
            if let Err(e) = r {
                tracing::debug!(direction = dir.as_str(), %id, error = %e, "connection ended with an error");
            }
        }
        () = tokio::time::sleep_until(deadline) => {
            tracing::info!(direction = dir.as_str(), %id, max_age = ?shared.max_conn_age, "connection reached its maximum age or the peer's certificate expired; closed");
        }
        () = shared.revoked.until_revoked(&svid.serial) => {
            tracing::warn!(direction = dir.as_str(), %id, "the peer's certificate was revoked; connection closed");
        }
        _ = hard_stop.wait_for(|s| *s) => {
            tracing::info!(direction = dir.as_str(), %id, "drain timeout passed; connection closed");
        }
    }
}

/// Counts the plaintext bytes read from and written to the TLS peer.
struct Counted<'a, S> {
    inner: S,
    metrics: &'a Metrics,
    dir: Direction,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.metrics.bytes(self.dir, n as u64, 0);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.metrics.bytes(self.dir, 0, n as u64);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
