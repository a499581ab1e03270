//! The one server-side connection type: a stream, what tonic hands every request received on
//! it, and what the connection holds while it is open.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What a [`Connection`] holds while it is open (admission slots, given back when it is
/// dropped), and what may end it before the peer does.
///
/// The default methods never end it: a guard that only holds slots implements the trait with
/// an empty `impl`.
pub trait ConnectionGuard {
    /// Whether the connection's time is over; registers `cx` to be woken when it may be,
    /// otherwise. Once over, reads see the end of the stream and writes fail with
    /// [`ConnectionGuard::over_error`], so that the server drops the connection.
    fn poll_over(&mut self, _cx: &mut Context<'_>) -> bool {
        false
    }

    /// Records that bytes moved on the connection.
    fn touch(&mut self) {}

    /// The error a write fails with once the connection is over.
    fn over_error(&self) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "connection closed")
    }
}

impl ConnectionGuard for () {}

/// A server-side connection for tonic's `serve_with_incoming`: reads and writes go to `S`, and
/// every request received on it carries a clone of `Info` in its extensions (tonic's
/// [`Connected`]), such as the caller's [`PeerInfo`](super::PeerInfo) or attestation. It holds
/// `guard` until dropped, and ends when the guard says so ([`ConnectionGuard`]).
pub struct Connection<S, Info, G = ()> {
    stream: S,
    info: Info,
    guard: G,
}

impl<S, Info, G> Connection<S, Info, G> {
    /// A connection on `stream`, whose requests carry `info`, holding `guard`.
    pub fn new(stream: S, info: Info, guard: G) -> Self {
        Self {
            stream,
            info,
            guard,
        }
    }

    /// What the requests received on this connection carry.
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// What the connection holds.
    pub fn guard(&self) -> &G {
        &self.guard
    }
}

impl<S, Info: std::fmt::Debug, G: std::fmt::Debug> std::fmt::Debug for Connection<S, Info, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.info)
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl<S, Info, G> Connected for Connection<S, Info, G>
where
    Info: Clone + Send + Sync + 'static,
{
    type ConnectInfo = Info;

    /// tonic calls this once per connection and inserts a clone into the extensions of every
    /// request received on it.
    fn connect_info(&self) -> Info {
        self.info.clone()
    }
}

impl<S, Info, G> AsyncRead for Connection<S, Info, G>
where
    S: AsyncRead + Unpin,
    Info: Unpin,
    G: ConnectionGuard + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.guard.poll_over(cx) {
            // End of stream: the server closes the connection.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            this.guard.touch();
        }
        polled
    }
}

impl<S, Info, G> Connection<S, Info, G>
where
    S: AsyncWrite + Unpin,
    G: ConnectionGuard,
{
    /// Polls a write unless the connection is over, counting bytes written as activity.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if self.guard.poll_over(cx) {
            return Poll::Ready(Err(self.guard.over_error()));
        }
        let polled = write(Pin::new(&mut self.stream), cx);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.guard.touch();
        }
        polled
    }
}

impl<S, Info, G> AsyncWrite for Connection<S, Info, G>
where
    S: AsyncWrite + Unpin,
    Info: Unpin,
    G: ConnectionGuard + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.guard.poll_over(cx) {
            return Poll::Ready(Err(this.guard.over_error()));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
