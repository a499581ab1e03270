//! `Node/Exec` and `Node/GetRecording`.
//!
//! An exec: the first message names the allocation, the argv, a reason and whether a terminal
//! is wanted; the call is decided (`debug:attach` on the job; `exec_disabled` when the agent
//! runs with `--disable-exec`) and its `exec.start` record — the caller, the token's revocation
//! ids, the reason and `argv_sha256`, never the argv — committed before anything runs. Then the
//! command runs in the task's context (`child.rs`), every byte in and out recorded
//! (`recording.rs`), for at most [`MAX_DURATION`]; at the end an `exec.end` record carries the
//! recording's length and SHA-256 and the exit, and only then is the exit sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ringzero_policy::{Operation, Resource};
use ringzero_proto::node::{
    ExecExit, ExecInput, ExecOutput, ExecStart, GetRecordingRequest, RecordingChunk, exec_input,
    exec_output,
};
use ringzero_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use super::child::{In, Out, Running};
use super::recording::{self, Header, Recording, RecordingMode};
use super::{NodeApi, alloc_id_ok, auth};
use crate::tasks::{AllocId, Supervisor};

const MAX_ARGS: usize = 64;
const MAX_ARGV_BYTES: usize = 64 * 1024;
const MAX_REASON: usize = 256;
/// The longest a session lives.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(3600);
/// For the first message.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long output may drain after the command ended (a background child holding it open).
const DRAIN: Duration = Duration::from_secs(2);
/// How long the pump waits for the caller to take output, or for the command to take input,
/// before ending the session: while it waits it checks neither the deadline nor revocation, so
/// a caller that stops reading cannot keep a session (and its slot) past them.
const STALL: Duration = Duration::from_secs(10);
/// Concurrent sessions per caller, and in all.
pub(super) const PER_CALLER: u32 = 1;
pub(super) const TOTAL: u32 = 16;

/// Exec on this node: whether it is on, what a recording failure does, and the tasks.
#[derive(Debug, Clone)]
pub(crate) struct ExecSettings {
    pub enabled: bool,
    pub recording: RecordingMode,
    /// The most bytes one session's recording may hold.
    pub recording_max_bytes: u64,
    pub supervisor: Option<Arc<Supervisor>>,
}

pub(super) type ExecStream = ReceiverStream<Result<ExecOutput, tonic::Status>>;

fn check_start(s: &ExecStart) -> Result<(), String> {
    if !alloc_id_ok(&s.alloc_id) {
        return Err("alloc_id must be [a-z0-9]{16}".into());
    }
    let bytes: usize = s.argv.iter().map(String::len).sum();
    if s.argv.is_empty() || s.argv.len() > MAX_ARGS || bytes > MAX_ARGV_BYTES {
        return Err(format!(
            "argv: 1-{MAX_ARGS} arguments, {MAX_ARGV_BYTES} bytes in all"
        ));
    }
    if s.argv.iter().any(|a| a.contains('\0')) || s.argv[0].is_empty() {
        return Err("argv: no NUL, a command first".into());
    }
    if s.reason.trim().is_empty()
        || s.reason.len() > MAX_REASON
        || s.reason.chars().any(char::is_control)
    {
        return Err(format!(
            "reason: 1-{MAX_REASON} bytes, no control characters"
        ));
    }
    Ok(())
}

fn window(s: Option<&ringzero_proto::node::WindowSize>) -> (u16, u16) {
    let clamp = |v: u32, d: u16| {
        if v == 0 {
            d
        } else {
            u16::try_from(v.min(1000)).unwrap_or(d)
        }
    };
    s.map_or((24, 80), |w| (clamp(w.rows, 24), clamp(w.cols, 80)))
}

fn session_id() -> Result<String, tonic::Status> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| tonic::Status::internal("no randomness"))?;
    Ok(hex::encode(b))
}

fn record(
    alloc: &str,
    action: &str,
    v: &auth::Verdict,
    detail: HashMap<String, String>,
) -> pb::NodeAuditRecord {
    v.record(alloc, action, detail)
}

/// An allowed call's record is committed before it goes on (or it fails); a denial's goes
/// through the per-caller denial windows, as the other calls' do.
async fn commit(
    api: &NodeApi,
    peer: &ringzero_proto::transport::PeerInfo,
    record: pb::NodeAuditRecord,
) -> Result<(), tonic::Status> {
    if record.decision == "allow" {
        return api.audit(record).await;
    }
    let who = auth::caller_key(peer).map_or_else(
        || {
            peer.addr
                .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
        },
        |id| id.to_string(),
    );
    api.denials.record(&who, record);
    Ok(())
}

fn refusal(why: &str) -> tonic::Status {
    if why.starts_with("stale_revocations") {
        tonic::Status::unavailable(why.to_owned())
    } else {
        tonic::Status::permission_denied(why.to_owned())
    }
}

pub(super) async fn exec(
    api: &NodeApi,
    req: tonic::Request<tonic::Streaming<ExecInput>>,
) -> Result<tonic::Response<ExecStream>, tonic::Status> {
    let peer = ringzero_proto::transport::peer(&req);
    let token = auth::bearer(&req);
    let mut input = req.into_inner();
    let first = tokio::time::timeout(START_TIMEOUT, input.message())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no ExecStart in time"))??;
    let Some(ExecInput {
        input: Some(exec_input::Input::Start(start)),
    }) = first
    else {
        return Err(tonic::Status::invalid_argument(
            "the first message is an ExecStart",
        ));
    };
    check_start(&start).map_err(tonic::Status::invalid_argument)?;
    let alloc = start.alloc_id.clone();
    let Some((namespace, job)) = api.job_of(&alloc) else {
        return Err(tonic::Status::not_found(format!(
            "no allocation {alloc} on node {}",
            api.node
        )));
    };
    let Some(resource) = auth::job_resource(&namespace, &job) else {
        return Err(tonic::Status::internal("the allocation's job is malformed"));
    };
    let keys = api.keys.borrow().clone();
    let mut verdict = auth::decide(
        &peer,
        token,
        keys,
        &api.revocations,
        Operation::DebugAttach,
        &resource,
        &api.node,
    )
    .await;
    if verdict.denied.is_none() && !api.exec.enabled {
        verdict.denied = Some("exec_disabled: exec is switched off on this node".into());
    }
    let session = session_id()?;
    let (rows, cols) = window(start.window.as_ref());
    let detail: HashMap<String, String> = [
        ("session", session.clone()),
        ("reason", start.reason.clone()),
        ("argv_sha256", recording::argv_sha256(&start.argv)),
        ("argc", start.argv.len().to_string()),
        ("tty", start.tty.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let start_record = record(&alloc, "exec.start", &verdict, detail);
    if let Some(why) = &verdict.denied {
        commit(api, &peer, start_record).await?;
        info!(caller = %verdict.caller, %alloc, reason = %why, "exec denied");
        return Err(refusal(why));
    }
    // The slot and the running task first: a call refused for either costs no audit append
    // (the node's budget) and is not recorded as an allowed exec that never ran.
    let Some(slot) = auth::caller_key(&peer).and_then(|c| api.admit_exec(&c)) else {
        return Err(tonic::Status::resource_exhausted(format!(
            "at most {PER_CALLER} exec session per caller and {TOTAL} in all"
        )));
    };
    // The task must be running here, its spec known from the feed.
    let (spec, ctx) = api
        .exec
        .supervisor
        .as_ref()
        .and_then(|sup| {
            let id = AllocId::new(alloc.clone()).ok()?;
            let spec = api.task_spec(&id)?;
            Some((spec, sup.exec_context(&id)?))
        })
        .ok_or_else(|| {
            tonic::Status::failed_precondition(format!("the task of {alloc} is not running"))
        })?;
    // Audited before it happens: nothing runs unless this record commits.
    commit(api, &peer, start_record).await?;
    let dir = api.sessions_dir.clone();
    let header = Header {
        session: &session,
        alloc: &alloc,
        node: api.node.as_str(),
        cols: u32::from(cols),
        rows: u32::from(rows),
    };
    // From here on `exec.start` is in the log: every way out writes its `exec.end`, so no
    // started session is left open in the record.
    let rec = match Recording::create(&dir, &header, api.exec.recording_max_bytes) {
        Ok(rec) => rec,
        Err(e) => {
            let why = format!("cannot record the session: {e}");
            not_started(api, &alloc, &session, &verdict, "recording_failed").await;
            return Err(tonic::Status::unavailable(why));
        }
    };
    let running = match Running::spawn(&spec, &ctx, &start.argv, start.tty.then_some((rows, cols)))
    {
        Ok(r) => r,
        Err(e) => {
            let (len, sum, _) = rec.finish();
            warn!(%alloc, %session, error = %e, "exec command did not start");
            let detail = end_detail(&session, len, sum, "not_started", "spawn_failed", false);
            let _ = commit_end(api, &alloc, &verdict, detail).await;
            return Err(tonic::Status::failed_precondition(format!(
                "cannot start: {e}"
            )));
        }
    };
    info!(caller = %verdict.caller, %alloc, %session, tty = start.tty, "exec session started");
    let (tx, rx) = mpsc::channel(8);
    let _ = tx
        .send(Ok(ExecOutput {
            output: Some(exec_output::Output::SessionId(session.clone())),
        }))
        .await;
    let api = api.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let end = pump(running, input, &tx, rec, &api, &verdict, &alloc).await;
        let (len, sum, incomplete) = end.recording;
        let ended_by = end.ended_by.clone().unwrap_or_default();
        let detail = end_detail(&session, len, sum, &end.exit, &ended_by, incomplete);
        let ended = commit_end(&api, &alloc, &verdict, detail).await;
        info!(%alloc, %session, exit = %end.exit, "exec session ended");
        let msg = ended.map(|()| ExecOutput {
            output: Some(exec_output::Output::Exit(ExecExit {
                code: end.code,
                signal: end.signal,
                ended_by,
            })),
        });
        let _ = tx.send(msg).await;
    });
    Ok(tonic::Response::new(ReceiverStream::new(rx)))
}

/// The detail of an `exec.end` record.
fn end_detail(
    session: &str,
    len: u64,
    sha256: String,
    exit: &str,
    ended_by: &str,
    incomplete: bool,
) -> HashMap<String, String> {
    [
        ("session", session.to_owned()),
        ("bytes", len.to_string()),
        ("sha256", sha256),
        ("exit", exit.to_owned()),
        ("ended_by", ended_by.to_owned()),
        (
            "recording",
            if incomplete { "incomplete" } else { "complete" }.to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The `exec.end` of a session that never ran: no recording was made (`why` says what failed).
async fn not_started(
    api: &NodeApi,
    alloc: &str,
    session: &str,
    verdict: &auth::Verdict,
    why: &str,
) {
    let detail = end_detail(session, 0, String::new(), "not_started", why, true);
    let _ = commit_end(api, alloc, verdict, detail).await;
}

/// Commits a session's `exec.end`. `exec.start` is already in the log, so its end must land:
/// a refusal (the node's append rate) or a blip is retried for about 6 s before giving up.
async fn commit_end(
    api: &NodeApi,
    alloc: &str,
    verdict: &auth::Verdict,
    detail: HashMap<String, String>,
) -> Result<(), tonic::Status> {
    let session = detail.get("session").cloned().unwrap_or_default();
    let end_record = record(alloc, "exec.end", verdict, detail);
    let mut ended = api.audit(end_record.clone()).await;
    for wait_ms in [200, 400, 800, 1600, 3200] {
        if ended.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        ended = api.audit(end_record.clone()).await;
    }
    if let Err(e) = &ended {
        warn!(%alloc, %session, error = %e, "exec.end not committed");
    }
    ended
}

struct End {
    code: i32,
    signal: i32,
    exit: String,
    ended_by: Option<String>,
    recording: (u64, String, bool),
}

/// Moves bytes between the caller and the command, recording each, until the command ended and
/// its output is drained, the caller went away, the session is too old or (strict) the
/// recording failed.
async fn pump(
    (mut child, mut output): (Running, super::child::Output),
    mut input: tonic::Streaming<ExecInput>,
    tx: &mpsc::Sender<Result<ExecOutput, tonic::Status>>,
    mut rec: Recording,
    api: &NodeApi,
    verdict: &auth::Verdict,
    alloc: &str,
) -> End {
    let mode = api.exec.recording;
    let deadline = tokio::time::sleep(MAX_DURATION);
    tokio::pin!(deadline);
    let drain = tokio::time::sleep(MAX_DURATION);
    tokio::pin!(drain);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ended_by: Option<String> = None;
    let mut status = None;
    let mut out_open = true;
    let mut in_open = true;
    let recorded = |rec: &mut Recording, kind: &str, data: &[u8]| -> Result<(), String> {
        match rec.event(kind, data) {
            Ok(()) => Ok(()),
            Err(_) if mode == RecordingMode::BestEffort => Ok(()),
            Err(e) => Err(format!("recording_failed: {e}")),
        }
    };
    loop {
        if status.is_some() && !out_open {
            break;
        }
        let step: Result<(), String> = tokio::select! {
            o = output.recv(), if out_open => match o {
                Some((which, data)) => {
                    let kind = if which == Out::Stderr { "e" } else { "o" };
                    let r = recorded(&mut rec, kind, &data);
                    let output = match which {
                        Out::Stdout => exec_output::Output::Stdout(data),
                        Out::Stderr => exec_output::Output::Stderr(data),
                    };
                    match r {
                        Ok(()) => match tokio::time::timeout(
                            STALL,
                            tx.send(Ok(ExecOutput { output: Some(output) })),
                        )
                        .await
                        {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(_)) => Err("caller_gone".to_owned()),
                            Err(_) => Err("caller_stalled: output not read".to_owned()),
                        },
                        Err(e) => Err(e),
                    }
                }
                None => {
                    out_open = false;
                    Ok(())
                }
            },
            m = input.message(), if in_open => match m {
                Ok(Some(ExecInput { input: Some(i) })) => match i {
                    exec_input::Input::Stdin(data) if data.len() <= super::child::CHUNK => {
                        match recorded(&mut rec, "i", &data) {
                            Ok(()) => match tokio::time::timeout(
                                STALL,
                                child.stdin.send(In::Data(data)),
                            )
                            .await
                            {
                                Err(_) => Err("stdin_stalled: input not read".to_owned()),
                                // The command closed its input: what follows is dropped.
                                Ok(_) => Ok(()),
                            },
                            Err(e) => Err(e),
                        }
                    }
                    exec_input::Input::Resize(w) => {
                        let (rows, cols) = window(Some(&w));
                        let r = recorded(&mut rec, "r", format!("{cols}x{rows}").as_bytes());
                        if r.is_ok() {
                            child.resize(rows, cols);
                        }
                        r
                    }
                    exec_input::Input::Eof(_) => {
                        let _ = tokio::time::timeout(STALL, child.stdin.send(In::Eof)).await;
                        Ok(())
                    }
                    _ => Err("bad_input: stdin over 64 KiB or a second ExecStart".to_owned()),
                },
                Ok(Some(ExecInput { input: None })) => Ok(()),
                Ok(None) => {
                    // The caller is done sending; it still reads.
                    in_open = false;
                    let _ = tokio::time::timeout(STALL, child.stdin.send(In::Eof)).await;
                    Ok(())
                }
                Err(_) => Err("caller_gone".to_owned()),
            },
            st = child.wait(), if status.is_none() => {
                status = Some(st);
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
                Ok(())
            },
            () = &mut drain, if status.is_some() => {
                out_open = false;
                Ok(())
            },
            () = &mut deadline => Err("max_duration".to_owned()),
            _ = tick.tick() => match auth::still_allowed(verdict, &api.revocations) {
                Err(e) => Err(format!("no_longer_allowed: {e}")),
                Ok(()) if !api.on_node(alloc) => Err("alloc_gone: the allocation left the node".to_owned()),
                Ok(()) => Ok(()),
            },
        };
        if let Err(why) = step {
            ended_by = Some(why);
            child.kill();
            if status.is_none() {
                status = Some(child.wait().await);
            }
            break;
        }
    }
    // Whatever it left behind in its group ends with the session.
    child.kill();
    let (code, signal, exit) = match status {
        Some(Ok(s)) => {
            use std::os::unix::process::ExitStatusExt;
            match (s.code(), s.signal()) {
                (Some(c), _) => (c, 0, format!("code {c}")),
                (None, Some(sig)) => (-1, sig, format!("signal {sig}")),
                _ => (-1, 0, "unknown".to_owned()),
            }
        }
        _ => (-1, 0, "unknown".to_owned()),
    };
    let note = ended_by.clone().unwrap_or_else(|| exit.clone());
    let _ = rec.event("x", note.as_bytes());
    End {
        code,
        signal,
        exit,
        ended_by,
        recording: rec.finish(),
    }
}

pub(super) type RecordingStream = ReceiverStream<Result<RecordingChunk, tonic::Status>>;

/// A recording, to whoever holds `audit:read` on `audit`; the read is audited (`session.read`,
/// under the allocation the session ran in) before a byte is sent.
pub(super) async fn get_recording(
    api: &NodeApi,
    req: tonic::Request<GetRecordingRequest>,
) -> Result<tonic::Response<RecordingStream>, tonic::Status> {
    let peer = ringzero_proto::transport::peer(&req);
    let token = auth::bearer(&req);
    let session = req.into_inner().session_id;
    if !recording::session_id_ok(&session) {
        return Err(tonic::Status::invalid_argument(
            "session_id must be [0-9a-f]{16}",
        ));
    }
    let Some(alloc) = recording::alloc_of(&api.sessions_dir, &session).filter(|a| alloc_id_ok(a))
    else {
        return Err(tonic::Status::not_found(format!(
            "no recording {session} on node {}",
            api.node
        )));
    };
    let resource =
        Resource::from_segments(&["audit"]).map_err(|_| tonic::Status::internal("resource"))?;
    let keys = api.keys.borrow().clone();
    let verdict = auth::decide(
        &peer,
        token,
        keys,
        &api.revocations,
        Operation::AuditRead,
        &resource,
        &api.node,
    )
    .await;
    let detail: HashMap<String, String> = [("session".to_owned(), session.clone())].into();
    commit(api, &peer, record(&alloc, "session.read", &verdict, detail)).await?;
    if let Some(why) = &verdict.denied {
        return Err(refusal(why));
    }
    let path = recording::path_of(&api.sessions_dir, &session);
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = super::read::send(&tx, Err(tonic::Status::not_found(e.to_string())));
                return;
            }
        };
        let mut buf = vec![0u8; super::child::CHUNK];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let chunk = RecordingChunk {
                        data: buf[..n].to_vec(),
                    };
                    if !super::read::send(&tx, Ok(chunk)) {
                        return;
                    }
                }
                Err(e) => {
                    let _ = super::read::send(&tx, Err(tonic::Status::internal(e.to_string())));
                    return;
                }
            }
        }
    });
    Ok(tonic::Response::new(ReceiverStream::new(rx)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn start() -> ExecStart {
        ExecStart {
            alloc_id: "abcdefgh01234567".into(),
            argv: vec!["id".into(), "-u".into()],
            reason: "INC-1".into(),
            tty: false,
            window: None,
        }
    }

    #[test]
    fn starts_are_checked_before_anything() {
        assert!(check_start(&start()).is_ok());
        let bad = [
            ExecStart {
                alloc_id: "x".into(),
                ..start()
            },
            ExecStart {
                argv: vec![],
                ..start()
            },
            ExecStart {
                argv: vec![String::new()],
                ..start()
            },
            ExecStart {
                argv: vec!["a".into(); MAX_ARGS + 1],
                ..start()
            },
            ExecStart {
                argv: vec!["a".repeat(MAX_ARGV_BYTES + 1)],
                ..start()
            },
            ExecStart {
                argv: vec!["a\0b".into()],
                ..start()
            },
            ExecStart {
                reason: " ".into(),
                ..start()
            },
            ExecStart {
                reason: "a\nb".into(),
                ..start()
            },
            ExecStart {
                reason: "r".repeat(MAX_REASON + 1),
                ..start()
            },
        ];
        for s in bad {
            assert!(check_start(&s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn windows_are_clamped() {
        use ringzero_proto::node::WindowSize;
        assert_eq!(window(None), (24, 80));
        assert_eq!(window(Some(&WindowSize { rows: 0, cols: 0 })), (24, 80));
        let huge = WindowSize {
            rows: u32::MAX,
            cols: 5000,
        };
        assert_eq!(window(Some(&huge)), (1000, 1000));
    }

    #[test]
    fn session_ids_are_what_recordings_accept() {
        let id = session_id().unwrap();
        assert!(recording::session_id_ok(&id), "{id}");
        assert!(!recording::session_id_ok("../../etc/passwd"));
    }
}
