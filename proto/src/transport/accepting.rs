//! The one accept loop of ringzero's servers: connections are accepted from a listener and
//! each is prepared (a TLS handshake, a workload attestation) in its own task, so that a slow
//! or hostile client never holds back the others; those that complete are handed to tonic.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_stream::Stream;

/// How long the accept loop pauses after a listener error such as `EMFILE`, which would
/// otherwise repeat at once and spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most this many connections are accepted per poll before prepared ones are handed out,
/// so that a connection flood cannot starve established clients.
const ACCEPT_BUDGET: usize = 64;

/// A listening socket [`accept`] takes connections from.
pub trait Listener {
    /// An accepted connection.
    type Io;
    /// The peer's address.
    type Addr;

    /// Polls for the next connection.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, Self::Addr)>>;
}

impl Listener for TcpListener {
    type Io = TcpStream;
    type Addr = std::net::SocketAddr;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, Self::Addr)>> {
        TcpListener::poll_accept(self, cx)
    }
}

impl Listener for UnixListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(UnixStream, Self::Addr)>> {
        UnixListener::poll_accept(self, cx)
    }
}

/// Accepts connections from `listener` as a stream for tonic's `serve_with_incoming`.
///
/// `prepare` is called at once with each accepted connection: it takes what the connection
/// needs to be prepared (slots, a deadline) and returns the preparation, which runs in its own
/// task, or `None` to close the connection at once. A preparation that yields `None` (it
/// failed, timed out or was refused) closes its connection; one that yields a connection hands
/// it to the server.
///
/// At most 64 connections are accepted per poll before prepared ones are handed out. Errors
/// that concern one connection only (reset, aborted) are skipped; any other listener error (out
/// of file descriptors…) is yielded, and accepting pauses briefly after it. The stream never
/// ends by itself; dropping it closes the listener and aborts the preparations in progress.
pub fn accept<L, F, Fut, C>(listener: L, prepare: F) -> Accepting<L, F, C>
where
    L: Listener,
    F: FnMut(L::Io, L::Addr) -> Option<Fut>,
    Fut: Future<Output = Option<C>> + Send + 'static,
    C: Send + 'static,
{
    Accepting {
        listener,
        prepare,
        preparing: JoinSet::new(),
        backoff: None,
    }
}

/// The stream [`accept`] returns.
pub struct Accepting<L, F, C> {
    listener: L,
    prepare: F,
    /// Preparations in progress; `None` is a failed, timed-out or refused one.
    preparing: JoinSet<Option<C>>,
    /// Set after a listener error: no accepting until it fires.
    backoff: Option<Pin<Box<Sleep>>>,
}

impl<L, F, C> std::fmt::Debug for Accepting<L, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepting")
            .field("preparing", &self.preparing.len())
            .field("backoff", &self.backoff.is_some())
            .finish_non_exhaustive()
    }
}

impl<L, F, Fut, C> Accepting<L, F, C>
where
    L: Listener,
    F: FnMut(L::Io, L::Addr) -> Option<Fut>,
    Fut: Future<Output = Option<C>> + Send + 'static,
    C: Send + 'static,
{
    /// Accepts pending connections; returns a listener error to report, if any.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        for _ in 0..ACCEPT_BUDGET {
            if let Some(backoff) = &mut self.backoff {
                if backoff.as_mut().poll(cx).is_pending() {
                    return None;
                }
                self.backoff = None;
            }
            match self.listener.poll_accept(cx) {
                Poll::Ready(Ok((io, addr))) => {
                    if let Some(preparation) = (self.prepare)(io, addr) {
                        self.preparing.spawn(preparation);
                    }
                }
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

impl<L, F, Fut, C> Stream for Accepting<L, F, C>
where
    L: Listener + Unpin,
    F: FnMut(L::Io, L::Addr) -> Option<Fut> + Unpin,
    Fut: Future<Output = Option<C>> + Send + 'static,
    C: Send + 'static,
{
    type Item = Result<C, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(e) = this.poll_accept(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match this.preparing.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(conn)))) => return Poll::Ready(Some(Ok(conn))),
                // A failed, timed-out or refused connection (or a panicked task): it is closed.
                Poll::Ready(Some(Ok(None) | Err(_))) => {}
                // Nothing in preparation: the listener's waker is registered.
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
