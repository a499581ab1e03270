//! The health and metrics endpoint.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::http::{Response, parse_request_line, read_head, write_response};

/// Bound on reading a request and writing its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;

/// What a daemon tells its endpoint.
pub trait Health: Send + Sync + 'static {
    /// Whether the process should be restarted (`/live` answers 503 with the reason).
    fn live(&self) -> Result<(), String> {
        Ok(())
    }
    /// Whether the daemon should receive work (`/ready` answers 503 with the reason).
    fn ready(&self) -> Result<(), String>;
    /// Samples what only the daemon's state knows into the registry's gauges, just before a
    /// scrape is encoded.
    fn refresh(&self) {}
    /// The registry `/metrics` encodes.
    fn registry(&self) -> &prometheus_client::registry::Registry;
}

/// Serves `/live`, `/ready` and `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<dyn Health>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            return;
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(tcp, health.as_ref())).await;
            drop(permit);
        });
    }
}

async fn answer(mut tcp: TcpStream, health: &dyn Health) -> std::io::Result<()> {
    let head = read_head(&mut tcp).await?;
    let response = match parse_request_line(&head) {
        Some(("GET" | "HEAD", path)) => route(path, health),
        Some(_) => Response::text(405, "method not allowed\n"),
        None => Response::text(400, "bad request\n"),
    };
    let head_only = head.starts_with(b"HEAD ");
    write_response(&mut tcp, head_only, &response).await
}

fn route(path: &str, health: &dyn Health) -> Response {
    match path {
        "/live" => match health.live() {
            Ok(()) => Response::text(200, "live\n"),
            Err(why) => Response::text(503, format!("not live: {why}\n")),
        },
        "/ready" => match health.ready() {
            Ok(()) => Response::text(200, "ready\n"),
            Err(why) => Response::text(503, format!("not ready: {why}\n")),
        },
        "/metrics" => {
            health.refresh();
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: crate::encode(health.registry()),
            }
        }
        _ => Response::text(404, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    struct Fixed(prometheus_client::registry::Registry);

    impl Health for Fixed {
        fn ready(&self) -> Result<(), String> {
            Err("no leader".into())
        }
        fn registry(&self) -> &prometheus_client::registry::Registry {
            &self.0
        }
    }

    #[tokio::test]
    async fn probes_and_metrics_answer_and_oversized_heads_are_cut() {
        use prometheus_client::metrics::counter::Counter;
        let mut registry = prometheus_client::registry::Registry::default();
        let c: Counter = Counter::default();
        registry.register("ringzero_test_things", "Things", c.clone());
        c.inc();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(Fixed(registry))));
        // What came back (a reset after an oversized head may cut it short).
        let get = |req: Vec<u8>| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(&req).await;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        let live = get(b"GET /live HTTP/1.1\r\n\r\n".to_vec()).await;
        assert!(live.starts_with("HTTP/1.1 200"), "{live}");
        let ready = get(b"GET /ready HTTP/1.1\r\n\r\n".to_vec()).await;
        assert!(
            ready.starts_with("HTTP/1.1 503") && ready.contains("no leader"),
            "{ready}"
        );
        let metrics = get(b"GET /metrics HTTP/1.1\r\n\r\n".to_vec()).await;
        assert!(
            metrics.contains("ringzero_test_things_total 1"),
            "{metrics}"
        );
        let post = get(b"POST /metrics HTTP/1.1\r\n\r\n".to_vec()).await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let mut huge = b"GET /".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
        let cut = get(huge).await;
        assert!(cut.is_empty() || cut.starts_with("HTTP/1.1 400"), "{cut}");
        let again = get(b"GET /live HTTP/1.1\r\n\r\n".to_vec()).await;
        assert!(again.starts_with("HTTP/1.1 200"), "still serving: {again}");
    }
}
