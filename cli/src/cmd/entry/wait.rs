//! `entry create|update --wait[=TIMEOUT]`: after the commit, wait until the agent of every node
//! the entry selects reports it can serve the entry at its new revision.
//!
//! The waiting happens on the leader (`WaitEntryServable`, woken by the agents' reports, at
//! most 10 s per call), so the CLI makes one call per 10 s of waiting, never a polling loop; a
//! leader change is followed like any call.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use ringzero_proto::pb;

use super::super::session::{Session, refused};
use crate::args::parse_duration;
use crate::failure::{Failure, failed};

/// `--wait` without a value.
pub(crate) const DEFAULT_WAIT: &str = "30s";
/// The longest `--wait`.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The longest one `WaitEntryServable` call asks for (the authority's cap).
const MAX_CALL: Duration = Duration::from_secs(10);
/// The pause before asking again when the authority has too many waits.
const BUSY_PAUSE: Duration = Duration::from_secs(1);

/// Exit code: the entry was written, but not every node could serve it within the timeout.
pub(crate) const EXIT_TIMED_OUT: u8 = 3;
/// Exit code: the entry was written, but a node's agent reported it cannot serve it.
pub(crate) const EXIT_UNSERVABLE: u8 = 4;

pub(crate) fn parse_wait(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d > MAX_WAIT {
        return Err("must be from 1s to 1h".into());
    }
    Ok(d)
}

/// Waits until `entry` (at its revision) is servable on every node it selects, or `timeout`.
pub(crate) async fn wait_servable(
    s: &mut Session,
    entry: &pb::RegistrationEntry,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ask = left.min(MAX_CALL).max(Duration::from_millis(1));
        let req = pb::WaitEntryServableRequest {
            id: entry.id.clone(),
            revision: entry.revision,
            timeout_ms: u32::try_from(ask.as_millis()).unwrap_or(u32::MAX),
        };
        let reply = s
            .client
            .call(|mut c| {
                let req = req.clone();
                async move { c.wait_entry_servable(req).await }
            })
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) if e.code() == Some(tonic::Code::Unimplemented) => {
                return Err(failed(anyhow!(
                    "entry {} was written, but this authority cannot wait for it to be \
                     servable (no WaitEntryServable): upgrade it or drop --wait",
                    entry.id
                )));
            }
            Err(e)
                if e.code() == Some(tonic::Code::ResourceExhausted)
                    && Instant::now() + BUSY_PAUSE < deadline =>
            {
                tokio::time::sleep(BUSY_PAUSE).await;
                continue;
            }
            Err(e) => {
                return Err(refused(
                    e,
                    &format!("waiting for entry {} to be servable", entry.id),
                ));
            }
        };
        if reply.servable {
            let nodes: Vec<&str> = reply.nodes.iter().map(|n| n.node.as_str()).collect();
            eprintln!(
                "servable on {} {} after {} ms",
                if nodes.len() == 1 { "node" } else { "nodes" },
                nodes.join(", "),
                started.elapsed().as_millis()
            );
            return Ok(ExitCode::SUCCESS);
        }
        let unservable: Vec<&pb::NodeServable> = reply
            .nodes
            .iter()
            .filter(|n| n.state == "unservable")
            .collect();
        if !unservable.is_empty() {
            for n in unservable {
                eprintln!(
                    "error: entry {} (revision {}) cannot be served on node {}: {}",
                    entry.id, reply.revision, n.node, n.reason
                );
            }
            return Ok(ExitCode::from(EXIT_UNSERVABLE));
        }
        if Instant::now() >= deadline {
            eprintln!(
                "error: timed out after {} waiting for entry {} (revision {}) to be servable; \
                 not caught up:",
                humantime::format_duration(Duration::from_secs(timeout.as_secs())),
                entry.id,
                reply.revision
            );
            for n in reply.nodes.iter().filter(|n| n.state != "servable") {
                eprintln!("  node {}: {}", n.node, behind(n));
            }
            return Ok(ExitCode::from(EXIT_TIMED_OUT));
        }
    }
}

/// Why a node has not caught up, as far as the leader knows.
fn behind(n: &pb::NodeServable) -> String {
    let reported = if n.reported_ms == 0 {
        "its agent has not reported to the leader".to_owned()
    } else {
        format!("its agent serves up to revision {}", n.reported_revision)
    };
    if n.live {
        reported
    } else {
        format!(
            "{reported}; no entry feed from it is open on the leader (is its agent running \
             and enrolled?)"
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn wait_bounds_and_the_reasons_given() {
        assert!(parse_wait("0s").is_err());
        assert!(parse_wait("2h").is_err());
        assert_eq!(parse_wait("45s").unwrap(), Duration::from_secs(45));
        let down = pb::NodeServable {
            node: "n7".into(),
            state: "pending".into(),
            ..Default::default()
        };
        assert!(behind(&down).contains("is its agent running"));
        let slow = pb::NodeServable {
            live: true,
            reported_ms: 1,
            reported_revision: 4,
            ..down
        };
        assert_eq!(behind(&slow), "its agent serves up to revision 4");
    }
}
