//! The little HTTP/1.1 both admin endpoints speak (this crate's and the mesh sidecar's): one
//! request per connection, a bounded head, GET and HEAD, `Connection: close`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest request head read; what follows is ignored.
pub const MAX_REQUEST: usize = 8 * 1024;

/// An answer: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Reads until the end of the request head, at most [`MAX_REQUEST`] bytes.
pub async fn read_head(tcp: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() >= MAX_REQUEST {
            break;
        }
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.truncate(MAX_REQUEST);
    Ok(buf)
}

/// `METHOD SP PATH SP HTTP/1.x` → (method, path without query).
pub fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..end]).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

/// Writes `response` (its head only, for HEAD) and closes the connection.
pub async fn write_response(
    tcp: &mut TcpStream,
    head_only: bool,
    response: &Response,
) -> std::io::Result<()> {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{}",
        response.status,
        response.content_type,
        response.body.len(),
        if head_only { "" } else { &response.body },
    );
    tcp.write_all(out.as_bytes()).await?;
    tcp.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_parsed_strictly() {
        assert_eq!(
            parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        for hostile in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n",
            b"GET /metrics HTTP/2\r\n",
            b"\xff\xfe /x HTTP/1.1\r\n",
            b"GET /metrics HTTP/1.1",
            b"",
        ] {
            assert_eq!(parse_request_line(hostile), None, "{hostile:?}");
        }
    }
}
