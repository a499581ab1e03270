//! A tiny HTTP/1.1 admin server: `/live`, `/ready`, `/metrics` (Prometheus text) and
//! `/status` (JSON).
//!
//! Hand-rolled on purpose: four GET routes do not need an HTTP stack, and a bounded reader is
//! easy to keep safe — one request per connection, at most 8 KiB of head (`ringzero_telemetry::http`),
//! read within [`REQUEST_TIMEOUT`], at most [`MAX_CONNECTIONS`] at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringzero_telemetry::http::{Response, parse_request_line, read_head, write_response};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::{Inbound, Outbound};
use crate::identity::Current;
use crate::metrics::Metrics;
use crate::proxy::Tracker;

/// Bound on reading a request and writing its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most admin connections served at once.
const MAX_CONNECTIONS: usize = 32;
/// Bound on the readiness probe's connection to each inbound target.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a probe of the inbound targets answers `/ready`: however often it is asked, a
/// target sees at most one probe connection per this interval.
const PROBE_REUSE: Duration = Duration::from_secs(1);

/// What the admin routes report on.
#[derive(Debug)]
pub(crate) struct AdminState {
    pub(crate) current: Current,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) inbound: Vec<Inbound>,
    pub(crate) outbound: Vec<Outbound>,
    pub(crate) tracker: Arc<Tracker>,
    /// True once shutdown began.
    pub(crate) draining: watch::Receiver<bool>,
    /// The allow rules in force (for the authority's part) and the refused serials.
    pub(crate) allow: crate::AllowList,
    pub(crate) revoked: crate::RevokedSerials,
    /// The last probe of the inbound targets: when, and why they were not ready (if so).
    pub(crate) last_probe: tokio::sync::Mutex<Option<(tokio::time::Instant, Option<String>)>>,
}

/// Serves until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            return;
        };
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(tcp, &state)).await;
            drop(permit);
        });
    }
}

async fn answer(mut tcp: TcpStream, state: &AdminState) -> std::io::Result<()> {
    let head = read_head(&mut tcp).await?;
    let local_caller = tcp.peer_addr().is_ok_and(|a| a.ip().is_loopback());
    let response = match parse_request_line(&head) {
        Some(("GET" | "HEAD", path)) if !open_to(path, local_caller) => {
            Response::text(403, format!("{path} answers loopback callers only\n"))
        }
        Some(("GET" | "HEAD", path)) => route(path, state).await,
        Some(_) => Response::text(405, "method not allowed\n"),
        None => Response::text(400, "bad request\n"),
    };
    let head_only = head.starts_with(b"HEAD ");
    write_response(&mut tcp, head_only, &response).await
}

/// Whether `path` answers this caller. What `/status` tells (identity, serial, rules,
/// revocations) is for this host's operator: with the admin listener opened to the network
/// (`--unsafe-admin`, for a scraper), probes and metrics answer anyone, `/status` only
/// loopback callers.
fn open_to(path: &str, local_caller: bool) -> bool {
    local_caller || path != "/status"
}

async fn route(path: &str, state: &AdminState) -> Response {
    match path {
        "/live" => Response::text(200, "live\n"),
        "/ready" => match not_ready(state).await {
            None => Response::text(200, "ready\n"),
            Some(why) => Response::text(503, format!("not ready: {why}\n")),
        },
        "/metrics" => {
            let not_after = state.current.borrow().as_ref().map(|i| i.not_after);
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: state.metrics.render(not_after, SystemTime::now()),
            }
        }
        "/status" => Response {
            status: 200,
            content_type: "application/json",
            body: status(state).to_string(),
        },
        _ => Response::text(404, "not found\n"),
    }
}

/// Why the sidecar is not ready, if it is not: it must hold an unexpired SVID, not be
/// draining, and every inbound target must accept a connection.
async fn not_ready(state: &AdminState) -> Option<String> {
    if *state.draining.borrow() {
        return Some("draining".into());
    }
    let current = state.current.borrow().clone();
    match current {
        None => return Some("no SVID yet".into()),
        Some(i) if !i.is_current(SystemTime::now()) => return Some("the SVID has expired".into()),
        Some(_) => {}
    }
    probe_targets(state).await
}

/// Whether every inbound target accepts a connection, probed at most once per
/// [`PROBE_REUSE`] (concurrent callers wait for the one probe in flight).
async fn probe_targets(state: &AdminState) -> Option<String> {
    let mut last = state.last_probe.lock().await;
    if let Some((at, why)) = &*last
        && at.elapsed() < PROBE_REUSE
    {
        return why.clone();
    }
    let mut why = None;
    for inbound in &state.inbound {
        let target = (inbound.target.host(), inbound.target.port());
        match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => why = Some(format!("target {} refuses: {e}", inbound.target)),
            Err(_) => why = Some(format!("target {} does not answer", inbound.target)),
        }
        if why.is_some() {
            break;
        }
    }
    *last = Some((tokio::time::Instant::now(), why.clone()));
    why
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn status(state: &AdminState) -> serde_json::Value {
    let identity = state.current.borrow().clone();
    let now = SystemTime::now();
    serde_json::json!({
        "svid": identity.as_ref().map(|i| serde_json::json!({
            "spiffe_id": i.id.as_str(),
            "serial": crate::identity::hex_serial(&i.serial),
            "not_after_unix": unix_secs(i.not_after),
            "expires_in_seconds": i.not_after.duration_since(now).map(|d| d.as_secs()).unwrap_or(0),
            "trust_domain": i.bundle.trust_domain().as_str(),
            "bundle_roots": i.bundle.roots().len(),
        })),
        "inbound": state.inbound.iter().map(|i| serde_json::json!({
            "listen": i.listen.to_string(),
            "target": i.target.to_string(),
        })).collect::<Vec<_>>(),
        "outbound": state.outbound.iter().map(|o| serde_json::json!({
            "listen": o.listen.to_string(),
            "target": o.target.to_string(),
            "expect": o.expect.as_str(),
        })).collect::<Vec<_>>(),
        "authority_allow": state.allow.authority().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "revoked_serials": state.revoked.len(),
        "open_connections": state.metrics.open_connections(),
        "live_connections": state.tracker.live(),
        "draining": *state.draining.borrow(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn status_answers_loopback_callers_only() {
        assert!(open_to("/status", true));
        assert!(!open_to("/status", false));
        for path in ["/live", "/ready", "/metrics", "/nope"] {
            assert!(open_to(path, false) && open_to(path, true));
        }
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request_line(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/ready"))
        );
        assert_eq!(
            parse_request_line(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        for bad in [
            &b""[..],
            b"GET /ready\r\n\r\n",
            b"GET /ready HTTP/2\r\n\r\n",
            b"GET  /ready HTTP/1.1\r\n\r\n",
            b"GET /ready HTTP/1.1 extra\r\n\r\n",
            b"GET /ready HTTP/1.1",
            b"\xff\xfe /x HTTP/1.1\r\n",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }
}
