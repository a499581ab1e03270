//! Export streams from the authority: into the blocking verifier without holding the export in
//! memory, and into files and stdout.

use std::fs::OpenOptions;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use ringzero_policy::audit::{
    AuditKeys, ExportError, Hash, LeafDigest, TreeHead, VerifiedExport, VerifyOptions,
    verify_export_with,
};
use ringzero_proto::client::ClientError;
use ringzero_proto::pb;
use tokio::sync::mpsc;

use super::super::session::{Session, explain, refused};
use crate::failure::{Failure, bad_input_msg, failed};

/// How long a stream may stay silent before the command gives up on it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Chunks buffered between the network and the verifier.
const QUEUE: usize = 16;

/// Opens `ExportAudit{since_seq, until_seq}`.
pub(super) async fn export(
    s: &mut Session,
    since_seq: u64,
    until_seq: u64,
) -> Result<tonic::Streaming<pb::ExportChunk>, Failure> {
    s.client
        .call(|mut c| async move {
            c.export_audit(pb::ExportAuditRequest {
                since_seq,
                until_seq,
            })
            .await
        })
        .await
        .map_err(|e| refused(e, "audit export"))
}

/// The next message of a stream, bounded by [`IDLE_TIMEOUT`].
pub(super) async fn next<T>(
    stream: &mut tonic::Streaming<T>,
    what: &str,
) -> Result<Option<T>, Failure> {
    match tokio::time::timeout(IDLE_TIMEOUT, stream.message()).await {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(status)) => Err(stream_failed(status, what)),
        Err(_) => Err(failed(anyhow!(
            "{what}: the authority sent nothing for {}s",
            IDLE_TIMEOUT.as_secs()
        ))),
    }
}

fn stream_failed(status: tonic::Status, what: &str) -> Failure {
    failed(anyhow!(
        "{} (the stream broke off)",
        explain(&ClientError::from(status), what)
    ))
}

/// Feeds the export stream to [`verify_export_with`] on a blocking thread. The outer error is the
/// stream's (the authority or the network failed), the inner one the verifier's verdict.
pub(super) async fn verify(
    mut chunks: tonic::Streaming<pb::ExportChunk>,
    keys: AuditKeys,
    trusted: Option<TreeHead>,
    trusted_consistency: Option<Vec<Hash>>,
    trusted_digest: Option<LeafDigest>,
) -> Result<Result<VerifiedExport, ExportError>, Failure> {
    let (tx, rx) = mpsc::channel::<io::Result<Vec<u8>>>(QUEUE);
    let verifier = tokio::task::spawn_blocking(move || {
        let reader = BufReader::with_capacity(1 << 16, ChannelReader::new(rx));
        let opts = VerifyOptions {
            trusted: trusted.as_ref(),
            trusted_consistency: trusted_consistency.as_deref(),
            trusted_digest: trusted_digest.as_ref(),
            keep_records: false,
            ..VerifyOptions::default()
        };
        verify_export_with(reader, &keys, &opts)
    });
    let mut broken = None;
    loop {
        match next(&mut chunks, "audit export").await {
            Ok(Some(chunk)) => {
                // A closed channel means the verifier already stopped at a problem.
                if tx.send(Ok(chunk.data)).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx
                    .send(Err(io::Error::other("the export stream broke off")))
                    .await;
                broken = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let verdict = verifier
        .await
        .map_err(|e| failed(anyhow!("the verifier stopped: {e}")))?;
    match broken {
        Some(e) => Err(e),
        None => Ok(verdict),
    }
}

/// A blocking reader over the chunks of a stream.
#[derive(Debug)]
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<io::Result<Vec<u8>>>) -> Self {
        Self {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let rest = self.chunk.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes the stream to `path` (mode 0600): into a file beside it, renamed over `path` once
/// complete, so that a broken stream never leaves a partial export under the name. Refuses to
/// replace an existing file unless `overwrite`. Returns the bytes written.
pub(super) async fn to_file(
    mut chunks: tonic::Streaming<pb::ExportChunk>,
    path: &Path,
    overwrite: bool,
) -> Result<u64, Failure> {
    if !overwrite && path.exists() {
        return Err(bad_input_msg(format!(
            "{} exists (use --force to replace it)",
            path.display()
        )));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| bad_input_msg(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| failed(anyhow!("creating {}: {e}", tmp.display())))?;
    let written = async {
        let mut n = 0u64;
        while let Some(chunk) = next(&mut chunks, "audit export").await? {
            f.write_all(&chunk.data)
                .map_err(|e| failed(anyhow!("writing {}: {e}", tmp.display())))?;
            n += chunk.data.len() as u64;
        }
        f.sync_all()
            .map_err(|e| failed(anyhow!("writing {}: {e}", tmp.display())))?;
        Ok::<u64, Failure>(n)
    }
    .await;
    match written {
        Ok(n) => {
            std::fs::rename(&tmp, path)
                .map_err(|e| failed(anyhow!("renaming into {}: {e}", path.display())))?;
            Ok(n)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Copies the stream to stdout as it arrives.
pub(super) async fn to_stdout(
    mut chunks: tonic::Streaming<pb::ExportChunk>,
) -> Result<u64, Failure> {
    let stdout = io::stdout();
    let mut n = 0u64;
    while let Some(chunk) = next(&mut chunks, "audit export").await? {
        let mut out = stdout.lock();
        out.write_all(&chunk.data)
            .and_then(|()| out.flush())
            .map_err(|e| failed(anyhow!("writing stdout: {e}")))?;
        n += chunk.data.len() as u64;
    }
    Ok(n)
}
