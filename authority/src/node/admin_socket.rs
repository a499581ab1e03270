//! Break-glass: the node's local admin socket, `D/admin.sock`.
//!
//! `ringzero authority admin-profile --data-dir D` run as root on an authority node asks the
//! running node, through this unix socket, for a fresh admin profile (a new key, an admin SVID
//! and the admin capability bound to it, issued by this node). Only root may: the socket is
//! mode 0600 and the peer's uid is checked from the kernel's peer credentials (`SO_PEERCRED`).
//! Every request is audited — a refusal as a denial naming the uid and pid, an issue like
//! bootstrap's (the `admin` user restored, its credential recorded before release).
//!
//! Protocol (one request per connection): the client writes `admin-profile <ttl seconds>\n`;
//! the node answers `ok\n` and the profile (TOML), or `error <reason>\n`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ringzero_policy::TrustDomain;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{NodeError, admin_profile, pin_audit_keys};
use crate::command::{AuditDecision, AuditRecord, Command, CommandId, Op};
use crate::gate::now_ms;
use crate::keys::CurrentKeys;
use crate::store::StateMachineStore;
use crate::{NodeId, Raft};

/// The socket's file name in the data directory.
pub const SOCKET_NAME: &str = "admin.sock";
/// The admin credential lifetime when the request names none (0).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest admin credential the socket issues; longer requests are capped.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest request line, and the longest answer a client reads.
const MAX_REQUEST: u64 = 256;
const MAX_ANSWER: u64 = 256 * 1024;
/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket of the node in `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_NAME)
}

/// What issuing an admin profile needs.
#[derive(Clone)]
pub(crate) struct Issuer {
    pub(crate) raft: Raft,
    pub(crate) keys: CurrentKeys,
    pub(crate) td: TrustDomain,
    pub(crate) node_id: NodeId,
    pub(crate) listen: String,
    pub(crate) sm: StateMachineStore,
}

/// Binds `D/admin.sock` (replacing a stale one, mode 0600) and serves it until `stopping`
/// becomes true; the socket file is removed then.
pub(crate) fn spawn(
    dir: &Path,
    issuer: Issuer,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(), NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(dir);
    let io = |e: std::io::Error| NodeError::Config {
        path: path.clone(),
        detail: e.to_string(),
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    // At most a few requests at once: each one is a Raft round and a key generation.
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                        drop(stream);
                        continue;
                    };
                    let issuer = issuer.clone();
                    tokio::spawn(async move {
                        handle(stream, &issuer).await;
                        drop(permit);
                    });
                }
                _ = stopping.wait_for(|s| *s) => break,
            }
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

fn audit(
    issuer: &Issuer,
    actor: &str,
    decision: AuditDecision,
    reason: Option<String>,
) -> AuditRecord {
    AuditRecord {
        actor: actor.to_owned(),
        revocation_ids: vec![],
        operation: "cluster:admin".into(),
        resource: "user/admin".into(),
        decision,
        reason,
        authority: issuer.node_id,
        request_id: crate::command::random_hex(),
        details: vec![("via".into(), "admin socket".into())],
    }
}

async fn handle(mut stream: UnixStream, issuer: &Issuer) {
    let answer = match serve_one(&mut stream, issuer).await {
        Ok(profile) => format!("ok\n{profile}"),
        Err(reason) => format!("error {reason}\n"),
    };
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn serve_one(stream: &mut UnixStream, issuer: &Issuer) -> Result<String, String> {
    // The request is read first even from a caller about to be refused, so the refusal is
    // not lost to a reset connection.
    let mut line = String::new();
    let mut reader = BufReader::new(&mut *stream).take(MAX_REQUEST);
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| "no request".to_owned())?
        .map_err(|e| format!("reading the request: {e}"))?;
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read the caller's credentials: {e}"))?;
    let actor = format!(
        "local:admin-socket uid={} pid={}",
        cred.uid(),
        cred.pid().map_or_else(|| "?".to_owned(), |p| p.to_string())
    );
    if cred.uid() != 0 {
        let record = audit(
            issuer,
            &actor,
            AuditDecision::Deny,
            Some("the admin socket is for root only".into()),
        );
        let cmd = Command {
            id: CommandId::fresh(),
            time_ms: now_ms(),
            audit: record,
            op: Op::AuditOnly,
        };
        if let Err(e) = crate::propose(&issuer.raft, cmd).await {
            tracing::warn!(error = %e, "could not record a refused admin-socket request");
        }
        tracing::warn!(uid = cred.uid(), "admin socket: refused a non-root caller");
        return Err("root only".into());
    }
    let ttl = match line.trim().strip_prefix("admin-profile") {
        Some(rest) => match rest.trim() {
            "" | "0" => DEFAULT_TTL,
            n => n
                .parse::<u64>()
                .map(|s| Duration::from_secs(s.max(1)).min(MAX_TTL))
                .map_err(|_| "bad ttl".to_owned())?,
        },
        None => return Err("unknown request (expected: admin-profile <ttl seconds>)".into()),
    };
    let mut profile = admin_profile(
        &issuer.raft,
        &issuer.keys.load(),
        &issuer.td,
        issuer.node_id,
        &issuer.listen,
        ttl,
        &actor,
    )
    .await
    .map_err(|e| match e {
        NodeError::Raft(m) if m.contains("forward") || m.contains("leader") => {
            format!("this node is not the leader; run this on the leader's node ({m})")
        }
        other => other.to_string(),
    })?;
    pin_audit_keys(&mut profile, &issuer.sm).map_err(|e| e.to_string())?;
    tracing::info!(%actor, "admin socket: issued an admin profile");
    profile.to_toml().map_err(|e| e.to_string())
}

/// Errors of [`request_admin_profile`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminSocketError {
    #[error("cannot reach {path}: {source} (is the authority node running, and are you root?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the admin socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the authority refused: {0}")]
    Refused(String),
    #[error("the authority's answer is malformed")]
    Malformed,
}

/// Asks the node serving `dir` for an admin profile valid for `ttl` (the node's default when
/// `None`); returns the profile's TOML.
pub async fn request_admin_profile(
    dir: &Path,
    ttl: Option<Duration>,
) -> Result<String, AdminSocketError> {
    let path = socket_path(dir);
    let mut stream =
        UnixStream::connect(&path)
            .await
            .map_err(|source| AdminSocketError::Connect {
                path: path.display().to_string(),
                source,
            })?;
    let request = format!("admin-profile {}\n", ttl.map_or(0, |d| d.as_secs()));
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.take(MAX_ANSWER).read_to_string(&mut answer).await?;
    if let Some(profile) = answer.strip_prefix("ok\n") {
        Ok(profile.to_owned())
    } else if let Some(reason) = answer.strip_prefix("error ") {
        Err(AdminSocketError::Refused(reason.trim().to_owned()))
    } else {
        Err(AdminSocketError::Malformed)
    }
}
