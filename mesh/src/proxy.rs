//! The data plane: accept loops for inbound (mTLS in, plain TCP to the local target) and
//! outbound (plain TCP from the local app, mTLS out to the peer) listeners, each connection
//! bounded in age, counted, and drained on shutdown.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use ringzero_policy::svid::ValidatedSvid;
use ringzero_policy::tls::peer_svid;
use rustls::ServerConfig;
use rustls::server::Acceptor;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use crate::config::HostPort;
use crate::metrics::{Direction, Metrics};
use crate::proxy_protocol;
use crate::verify::{Refusal, RevokedSerials};

/// Bound on the TLS handshake (slow or silent clients).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on receiving an inbound client's whole ClientHello: a client that trickles it holds
/// a handshake slot (of [`MAX_HANDSHAKES`], [`MAX_HANDSHAKES_PER_SOURCE`] per source) this long
/// at most.
pub(crate) const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on connecting to a target.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connections proxied at once, over all listeners; accepting waits beyond it.
pub(crate) const MAX_CONNECTIONS: usize = 10_000;
/// The most inbound TLS handshakes in flight at once, over all inbound listeners: callers not
/// yet authenticated hold at most this many of the connection slots (the rest stay for
/// authenticated peers and the outbound listeners). A connection past it is closed at once.
pub(crate) const MAX_HANDSHAKES: usize = 256;
/// The most inbound handshakes in flight from one source address.
pub(crate) const MAX_HANDSHAKES_PER_SOURCE: usize = 16;
/// The read size of the byte pump: four full TLS records (16 KiB of plaintext each), so that
/// a bulk transfer is encrypted in whole records and sent four at a time (measured with
/// mesh/bench: a fifth less CPU per byte than one record per read). The buffer is per runtime
/// thread, not per connection (see [`Flow`]); a connection holds at most this much (what its
/// writer did not take) per direction, beside rustls's own 64 KiB send limit.
const COPY_BUF: usize = 64 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Inbound handshakes in flight, in all and per source address: what an unauthenticated caller
/// may hold is bounded before any cryptography runs.
#[derive(Debug, Default)]
pub(crate) struct Handshakes {
    in_flight: std::sync::Mutex<(usize, std::collections::HashMap<std::net::IpAddr, usize>)>,
}

impl Handshakes {
    /// A slot for a handshake from `source`, or `None` when its share or the total is taken.
    fn admit(self: &Arc<Self>, source: std::net::IpAddr) -> Option<HandshakeSlot> {
        let mut guard = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_source) = &mut *guard;
        let mine = per_source.entry(source).or_insert(0);
        if *total >= MAX_HANDSHAKES || *mine >= MAX_HANDSHAKES_PER_SOURCE {
            if *mine == 0 {
                per_source.remove(&source);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(HandshakeSlot {
            owner: Arc::clone(self),
            source,
        })
    }
}

/// One admitted handshake; its slot is given back when dropped.
struct HandshakeSlot {
    owner: Arc<Handshakes>,
    source: std::net::IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut guard = self
            .owner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (total, per_source) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(mine) = per_source.get_mut(&self.source) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                per_source.remove(&self.source);
            }
        }
    }
}

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
    /// Inbound handshakes in flight (unauthenticated callers).
    pub(crate) handshakes: Arc<Handshakes>,
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
    tls: Arc<ServerConfig>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let target = Arc::new(target);
    let conn_shared = Arc::clone(&shared);
    accept_loop(
        listener,
        shared,
        stop,
        Direction::Inbound,
        move |tcp, peer| {
            let tls = Arc::clone(&tls);
            let target = Arc::clone(&target);
            let shared = Arc::clone(&conn_shared);
            // Taken here, in the accept loop, so handshake slots go in accept order: the 17th
            // connection of a source is the one refused, whatever order the tasks run in.
            let slot = shared.handshakes.admit(peer.ip());
            async move { inbound_conn(tcp, peer, slot, &target, tls, &shared).await }
        },
    )
    .await;
}

async fn inbound_conn(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Option<HandshakeSlot>,
    target: &HostPort,
    tls: Arc<ServerConfig>,
    shared: &Shared,
) {
    let dir = Direction::Inbound;
    let started = Instant::now();
    // The address this connection reached (not the listener's, which may be 0.0.0.0): the
    // PROXY header's destination.
    let local = tcp.local_addr().ok();
    let Some(slot) = slot else {
        // Closed before any cryptography (the log line is rate-limited with the others).
        let e = io::Error::other("too many handshakes in flight");
        return refused(shared, dir, peer, Refusal::Overloaded, &e);
    };
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let hello = tokio::time::timeout(
            CLIENT_HELLO_TIMEOUT,
            LazyConfigAcceptor::new(Acceptor::default(), tcp),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no ClientHello in time"))??;
        hello.into_stream(tls).await
    })
    .await;
    drop(slot);
    let tls = match handshake {
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
            // Borrowed from the connection, not copied: nothing per connection outlives this.
            client_cert: certs.and_then(|c| c.first()).map(|c| c.as_ref()),
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

/// Counts a refusal and logs it with its reason, at most a few lines per second per reason
/// (the metric counts every one; a logged line says how many went unlogged before it). Policy
/// refusals are warnings; a handshake that failed for another reason (a port scan, a peer that
/// hung up) is informational.
fn refused(shared: &Shared, dir: Direction, peer: SocketAddr, why: Refusal, e: &io::Error) {
    let Some(unlogged) = shared.metrics.refused(dir, why) else {
        return;
    };
    let (direction, reason) = (dir.as_str(), why.as_str());
    if why == Refusal::Handshake {
        tracing::info!(direction, %peer, reason, error = %e, unlogged, "handshake failed");
    } else {
        match crate::verify::PeerRefused::of_io(e) {
            Some(who) => {
                tracing::warn!(direction, %peer, reason, peer_id = %who.id, error = %who, unlogged, "connection refused");
            }
            None => {
                tracing::warn!(direction, %peer, reason, error = %e, unlogged, "connection refused");
            }
        }
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
        r = copy_both_ways(&mut peer, &mut local) => {
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

thread_local! {
    /// The read buffer of every connection served by this thread: bytes read are written on
    /// at once, so an idle connection holds no copy buffer (1,000 connections would otherwise
    /// pin 32 MiB), and only bytes the writer does not take are kept, by their connection.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; COPY_BUF].into_boxed_slice());
}

/// Copies `a` to `b` and `b` to `a` until both have reached EOF (each EOF is passed on as a
/// write shutdown), or until the first error.
async fn copy_both_ways<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_to_b, mut b_to_a) = (Flow::default(), Flow::default());
    std::future::poll_fn(|cx| {
        let ab = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let ba = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        if ab.is_ready() && ba.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// One direction of a connection's byte pump. It reads into the thread's [`SCRATCH`] buffer
/// and writes straight on; only what the writer does not accept at once is copied into
/// `held`, which is freed as soon as it is written.
#[derive(Debug, Default)]
struct Flow {
    held: Vec<u8>,
    pos: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
}

impl Flow {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.pos < self.held.len() {
                let n = ready!(writer.as_mut().poll_write(cx, &self.held[self.pos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if !self.held.is_empty() {
                self.held = Vec::new();
                self.pos = 0;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            match self.read_through(cx, reader.as_mut(), writer.as_mut()) {
                Poll::Ready(r) => r?,
                Poll::Pending => {
                    if self.need_flush {
                        ready!(writer.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// One read into the scratch buffer, written on as far as the writer takes it.
    fn read_through<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
        writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut buf) => self.read_into(cx, reader, writer, &mut buf),
            // Not reentered in practice (no poll here polls another connection); stay correct.
            Err(_) => self.read_into(cx, reader, writer, &mut vec![0; COPY_BUF]),
        })
    }

    fn read_into<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        buf: &mut [u8],
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let mut read = ReadBuf::new(buf);
        ready!(reader.poll_read(cx, &mut read))?;
        let data = read.filled();
        if data.is_empty() {
            self.read_done = true;
            return Poll::Ready(Ok(()));
        }
        let mut off = 0;
        while off < data.len() {
            match writer.as_mut().poll_write(cx, &data[off..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    off += n;
                    self.need_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.held = data[off..].to_vec();
                    break;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn handshakes_are_bounded_per_source_and_in_all() {
        let gate = Arc::new(Handshakes::default());
        let ip = |i: u8| std::net::IpAddr::from([10, 0, 0, i]);
        let mut held = Vec::new();
        for _ in 0..MAX_HANDSHAKES_PER_SOURCE {
            held.push(gate.admit(ip(1)).unwrap());
        }
        assert!(gate.admit(ip(1)).is_none(), "one source past its share");
        for source in 2..=16 {
            for _ in 0..MAX_HANDSHAKES_PER_SOURCE {
                held.push(gate.admit(ip(source)).unwrap());
            }
        }
        assert_eq!(held.len(), MAX_HANDSHAKES);
        assert!(gate.admit(ip(17)).is_none(), "a new source past the total");
        held.pop();
        assert!(
            gate.admit(ip(17)).is_some(),
            "a slot given back is reusable"
        );
        held.clear();
        let (total, per_source) = &*gate.in_flight.lock().unwrap();
        assert_eq!((*total, per_source.len()), (0, 0), "nothing left behind");
    }

    /// Writes `data` then shuts down, while reading to EOF; returns what was read.
    async fn exchange(stream: &mut tokio::io::DuplexStream, data: &[u8]) -> Vec<u8> {
        let (mut r, mut w) = tokio::io::split(stream);
        let mut got = Vec::new();
        let (read, ()) = tokio::join!(r.read_to_end(&mut got), async {
            w.write_all(data).await.unwrap();
            w.shutdown().await.unwrap();
        });
        read.unwrap();
        got
    }

    /// Through pipes far smaller than the data, so that writes stall and `held` is used: every
    /// byte arrives in order both ways, and each EOF is passed on.
    #[tokio::test]
    async fn copies_both_ways_through_backpressure() {
        let (mut app, mut a) = tokio::io::duplex(1000);
        let (mut b, mut peer) = tokio::io::duplex(700);
        let pump = tokio::spawn(async move { copy_both_ways(&mut a, &mut b).await });
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let (at_app, at_peer) = tokio::join!(exchange(&mut app, &up), exchange(&mut peer, &down));
        assert!(at_app == down, "peer to app: bytes differ");
        assert!(at_peer == up, "app to peer: bytes differ");
        pump.await.unwrap().unwrap();
    }
}
