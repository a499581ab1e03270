//! The one place where a ringzero gRPC server's per-connection bounds are set: streams, HTTP/2
//! memory, request deadlines and connection age. Every server builds its tonic `Server` here.

use std::time::Duration;

use tonic::transport::Server;

use super::ServerLimits;

/// Bounds on what one HTTP/2 connection may cost a server, whoever the client is.
///
/// Memory per connection is bounded by the stream cap times what one call may buffer (the
/// service's `max_decoding_message_size`), and by the flow-control windows for what the
/// client may send before it is read. HTTP/2 refuses a stream beyond the cap
/// (`REFUSED_STREAM`); a client that keeps provoking refusals or resets is sent a GOAWAY.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Concurrent streams (calls) per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// The deadline of a call, from the moment its headers arrive to the moment its response
    /// headers leave: it covers reading the request and running the handler (there is no
    /// queue in front of the handler: streams beyond the cap are refused, not queued). The
    /// body of a streaming response is not bounded by it.
    pub request_timeout: Duration,
    /// Per-stream receive window.
    pub initial_stream_window_size: u32,
    /// Per-connection receive window: at most this much unread request data per connection.
    pub initial_connection_window_size: u32,
    /// Largest frame the server accepts.
    pub max_frame_size: u32,
    /// Largest header block (decoded) the server accepts; metadata (a Biscuit bearer token
    /// with a few attenuation blocks) fits well within it.
    pub max_header_list_size: u32,
    /// Streams the client opened and reset before the server accepted them; beyond this the
    /// connection gets a GOAWAY (the HTTP/2 "rapid reset" attack).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server had to reset (refused beyond the cap, protocol errors) per
    /// connection; beyond this the connection gets a GOAWAY (`ENHANCE_YOUR_CALM`).
    pub max_local_error_reset_streams: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 64,
            request_timeout: Duration::from_secs(30),
            initial_stream_window_size: 256 * 1024,
            initial_connection_window_size: 1024 * 1024,
            max_frame_size: 16 * 1024,
            max_header_list_size: 16 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 256,
        }
    }
}

/// A tonic server builder with `limits` applied: the stream cap, the HTTP/2 windows and frame
/// and header limits, reset-flood limits, and the request deadline. HTTP/1 is refused.
///
/// No per-connection concurrency limit is set on purpose: tonic's would queue calls past it
/// in front of the deadline, unboundedly; the stream cap refuses them instead.
pub fn server_builder(limits: &StreamLimits) -> Server {
    Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .timeout(limits.request_timeout)
        .initial_stream_window_size(limits.initial_stream_window_size)
        .initial_connection_window_size(limits.initial_connection_window_size)
        .http2_adaptive_window(Some(false))
        .max_frame_size(limits.max_frame_size)
        .http2_max_header_list_size(limits.max_header_list_size)
        .http2_max_pending_accept_reset_streams(Some(limits.max_pending_accept_reset_streams))
        .http2_max_local_error_reset_streams(Some(limits.max_local_error_reset_streams))
        .accept_http1(false)
}

/// Everything a network-facing ringzero server bounds: connections by class
/// ([`ServerLimits`], applied by [`incoming`](super::incoming)) and streams per connection
/// ([`StreamLimits`]). Build the server with [`ServerPolicy::server`] and feed it with
/// [`ServerPolicy::incoming`], so both halves come from the same values.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerPolicy {
    /// Connections: classes, pools, per-IP caps, timeouts, maximum age.
    pub connections: ServerLimits,
    /// Streams and HTTP/2 memory per connection, request deadline.
    pub streams: StreamLimits,
}

impl ServerPolicy {
    /// [`server_builder`] with the streams' limits, plus the graceful end of old connections:
    /// at `max_connection_age` the server sends a GOAWAY and lets calls finish for
    /// `max_connection_age_grace` (the connection's own deadline in
    /// [`incoming`](super::incoming) then cuts it, and cuts it earlier when the client
    /// certificate expires).
    pub fn server(&self) -> Server {
        server_builder(&self.streams)
            .max_connection_age(self.connections.max_connection_age)
            .max_connection_age_grace(self.connections.max_connection_age_grace)
    }

    /// [`incoming`](super::incoming) with the connections' limits.
    pub fn incoming(
        &self,
        listener: tokio::net::TcpListener,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> impl tokio_stream::Stream<Item = Result<super::TlsConnection, std::io::Error>> + Send + 'static
    {
        super::incoming(listener, config, self.connections)
    }
}
