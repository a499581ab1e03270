//! `audit session show|verify ID`: an exec session's recording, fetched from the node that
//! recorded it (`Node/GetRecording`, `audit:read` on `audit`, audited by that agent), checked
//! against the length and SHA-256 of the session's `exec.end` audit record. The record says
//! which node; its node-API address comes from `ListNodeHealth` unless `--node-api` gives it.

use std::io::Write;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use ringzero_proto::node::GetRecordingRequest;
use ringzero_proto::pb;

use crate::cli::GlobalArgs;
use crate::cmd::session::{Session, refused, session};
use crate::failure::{Failure, Outcome, bad_input_msg, failed};

#[derive(Debug, Subcommand)]
pub(crate) enum AuditSessionCommand {
    /// Print a session's recording (asciicast v2 JSON lines).
    Show(AuditSessionArgs),
    /// Check a session's recording against its exec.end audit record (exit 1 on a mismatch).
    Verify(AuditSessionArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AuditSessionArgs {
    /// The session id (16 hex digits, from the exec.start and exec.end records).
    #[arg(value_name = "ID")]
    pub(crate) id: String,
    /// The node's node-API address (host:port), instead of the one its agent announced.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) node_api: Option<String>,
}

pub(crate) const SESSION_HELP: &str = "\
Needs audit:read (to find the session's exec.end record, and on the node to fetch the
recording: the agent records that read in the audit log). verify recomputes the recording's
SHA-256 and length and compares them with the exec.end record; exit 1 when they differ.

Examples:
  ringzero audit session show 3f9a0c1d2e4b5a69 | less
  ringzero audit session verify 3f9a0c1d2e4b5a69";

/// A detail of an audit entry's JSON, as `["key", "value"]` pairs or `{"key": "value"}`.
fn detail(v: &serde_json::Value, key: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => m.iter().find_map(|(k, x)| {
            if k == key {
                x.as_str().map(ToOwned::to_owned)
            } else {
                detail(x, key)
            }
        }),
        serde_json::Value::Array(xs) => {
            if xs.len() == 2 && xs[0].as_str() == Some(key) {
                return xs[1].as_str().map(ToOwned::to_owned);
            }
            xs.iter().find_map(|x| detail(x, key))
        }
        _ => None,
    }
}

/// The `exec.end` record of `id`: its node, length and SHA-256.
struct End {
    node: String,
    bytes: u64,
    sha256: String,
}

async fn find_end(s: &mut Session, id: &str) -> Result<End, Failure> {
    let mut after: Option<u64> = None;
    // Bounded: at most this many pages of debug:attach records are searched.
    for _ in 0..200 {
        let req = pb::QueryAuditRequest {
            operation: "debug:attach".into(),
            decision: "allow".into(),
            limit: 1000,
            after_seq: after,
            ..Default::default()
        };
        let reply = s
            .client
            .call(|mut c| {
                let req = req.clone();
                async move { c.query_audit(req).await }
            })
            .await
            .map_err(|e| refused(e, "audit query"))?;
        for raw in &reply.records {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(raw) else {
                continue;
            };
            if detail(&v, "action").as_deref() == Some("exec.end")
                && detail(&v, "req.session").as_deref() == Some(id)
            {
                let get = |k: &str| {
                    detail(&v, k)
                        .ok_or_else(|| failed(anyhow!("the exec.end record of {id} has no {k}")))
                };
                return Ok(End {
                    node: get("node")?,
                    bytes: get("req.bytes")?
                        .parse()
                        .map_err(|_| failed(anyhow!("the exec.end record's length")))?,
                    sha256: get("req.sha256")?,
                });
            }
        }
        match reply.next_after_seq {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Err(failed(anyhow!(
        "no exec.end record of session {id} in the audit log (still running, or unknown)"
    )))
}

pub(crate) async fn run(global: &GlobalArgs, cmd: AuditSessionCommand) -> Outcome {
    let (a, verify) = match cmd {
        AuditSessionCommand::Show(a) => (a, false),
        AuditSessionCommand::Verify(a) => (a, true),
    };
    let id_ok = a.id.len() == 16
        && a.id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !id_ok {
        return Err(bad_input_msg("a session id is 16 lowercase hex digits"));
    }
    let mut s = session(global)?;
    let end = find_end(&mut s, &a.id).await?;
    let addr = match a.node_api {
        Some(addr) => addr,
        None => {
            let nodes = s
                .client
                .call(|mut c| async move { c.list_node_health(pb::ListNodeHealthRequest {}).await })
                .await
                .map_err(|e| refused(e, "node health"))?
                .nodes;
            nodes
                .into_iter()
                .find(|n| n.name == end.node)
                .map(|n| n.node_api)
                .filter(|x| !x.is_empty())
                .ok_or_else(|| {
                    failed(anyhow!(
                        "node {} announces no node API; give --node-api",
                        end.node
                    ))
                })?
        }
    };
    let mut client = crate::cmd::job::dial(&s, &end.node, &addr)?;
    let on = format!("node {} ({addr})", end.node);
    let mut stream = client
        .get_recording(GetRecordingRequest {
            session_id: a.id.clone(),
        })
        .await
        .map_err(|st| failed(anyhow!("recording {} on {on}: {}", a.id, st.message())))?
        .into_inner();
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = 0u64;
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                digest.update(&chunk.data);
                len += chunk.data.len() as u64;
                if !verify {
                    let mut out = std::io::stdout().lock();
                    if out
                        .write_all(&chunk.data)
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
            Ok(None) => break,
            Err(st) => {
                return Err(failed(anyhow!(
                    "recording {} on {on}: {}",
                    a.id,
                    st.message()
                )));
            }
        }
    }
    let sum = hex::encode(digest.finish().as_ref());
    let matches = sum == end.sha256 && len == end.bytes;
    if verify {
        if matches {
            println!(
                "session {}: recording verified ({len} bytes, sha256 {sum}) against its exec.end record",
                a.id
            );
        } else {
            println!(
                "session {}: MISMATCH: the node's recording is {len} bytes, sha256 {sum}; the audit log says {} bytes, sha256 {}",
                a.id, end.bytes, end.sha256
            );
            return Ok(ExitCode::from(1));
        }
    } else if !matches {
        eprintln!(
            "warning: this recording does not match its exec.end record (see `audit session verify`)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
