//! A session's recording: `<data_dir>/sessions/<id>.cast` (0600), asciicast v2 — a JSON header
//! line, then one `[seconds, kind, data]` line per chunk: `"i"` input, `"o"` output (stdout, or
//! the terminal), `"e"` stderr (not in the asciicast spec; players skip it), `"r"` a resize
//! (`"COLSxROWS"`), `"x"` the end (`"code N"`, `"signal N"`, or why the agent ended it).
//! A chunk that is not UTF-8 (binary output, or a character split between two reads) is
//! recorded byte for byte as `"ib"`, `"ob"` or `"eb"` with its bytes in base64 (players skip
//! kinds they do not know), so the recording holds exactly what crossed the session. The
//! SHA-256 and length are of the file's bytes, computed as they are written; `exec.end`
//! carries them.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

/// The smallest per-session limit accepted: room for the header and a few events.
pub const MIN_RECORDING_BYTES: u64 = 4096;

/// The default per-session limit (`agent run --recording-max-bytes`).
pub const DEFAULT_RECORDING_BYTES: u64 = 64 << 20;

/// When a recording write fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingMode {
    /// End the session (the default): nothing runs unrecorded.
    Strict,
    /// Keep the session going; the `exec.end` record says the recording is incomplete.
    BestEffort,
}

/// Who and what a recording is of, in its header.
#[derive(Debug, Clone)]
pub(crate) struct Header<'a> {
    pub session: &'a str,
    pub alloc: &'a str,
    pub node: &'a str,
    pub cols: u32,
    pub rows: u32,
}

pub(crate) struct Recording {
    file: fs::File,
    digest: ring::digest::Context,
    len: u64,
    /// The most bytes this recording may hold; a write past it fails (and, strict, ends the
    /// session), so one session cannot fill the node's disk.
    max_bytes: u64,
    start: Instant,
    /// A write failed (best-effort mode goes on without recording).
    pub failed: bool,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording").field("len", &self.len).finish()
    }
}

/// `[0-9a-f]{16}`.
pub(crate) fn session_id_ok(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn path_of(dir: &Path, session: &str) -> PathBuf {
    dir.join(format!("{session}.cast"))
}

/// The allocation a recording's header names.
pub(crate) fn alloc_of(dir: &Path, session: &str) -> Option<String> {
    use std::io::{BufRead, Read};
    let file = fs::File::open(path_of(dir, session)).ok()?;
    let mut line = String::new();
    io::BufReader::new(file.take(4096))
        .read_line(&mut line)
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&line).ok()?;
    v.get("ringzero")?
        .get("alloc")?
        .as_str()
        .map(ToOwned::to_owned)
}

impl Recording {
    /// Creates the file (never over an existing one) and writes its header. The recording
    /// holds at most `max_bytes` (at least [`MIN_RECORDING_BYTES`], so the header fits).
    pub(crate) fn create(dir: &Path, h: &Header<'_>, max_bytes: u64) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path_of(dir, h.session))?;
        let mut r = Self {
            file,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
            max_bytes: max_bytes.max(MIN_RECORDING_BYTES),
            start: Instant::now(),
            failed: false,
        };
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = serde_json::json!({
            "version": 2,
            "width": h.cols,
            "height": h.rows,
            "timestamp": timestamp,
            "ringzero": { "session": h.session, "alloc": h.alloc, "node": h.node },
        });
        r.write_line(&header.to_string())?;
        Ok(r)
    }

    fn write_line(&mut self, line: &str) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        if self.len.saturating_add(bytes.len() as u64) > self.max_bytes {
            return Err(io::Error::other(format!(
                "the recording reached its limit of {} bytes",
                self.max_bytes
            )));
        }
        self.file.write_all(&bytes)?;
        self.digest.update(&bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Records one chunk; after a failure, nothing more is written.
    pub(crate) fn event(&mut self, kind: &str, data: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("the recording already failed"));
        }
        let t = (self.start.elapsed().as_secs_f64() * 1e6).round() / 1e6;
        let line = match std::str::from_utf8(data) {
            Ok(text) => serde_json::json!([t, kind, text]),
            Err(_) => {
                use base64::Engine;
                let b64 = base64::engine::general_purpose::STANDARD.encode(data);
                serde_json::json!([t, format!("{kind}b"), b64])
            }
        };
        let r = self.write_line(&line.to_string());
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    /// Syncs the file; its length and SHA-256 (hex).
    pub(crate) fn finish(mut self) -> (u64, String, bool) {
        if self.file.sync_all().is_err() {
            self.failed = true;
        }
        let sum = hex::encode(self.digest.finish().as_ref());
        (self.len, sum, self.failed)
    }
}

/// SHA-256 over the argv, each argument prefixed by its length (u64 big-endian), in hex: what
/// the audit log carries instead of the arguments.
pub(crate) fn argv_sha256(argv: &[String]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for a in argv {
        ctx.update(&(a.len() as u64).to_be_bytes());
        ctx.update(a.as_bytes());
    }
    hex::encode(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn argv_hash_is_length_prefixed() {
        let a = argv_sha256(&["ab".into(), "c".into()]);
        let b = argv_sha256(&["a".into(), "bc".into()]);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn a_failed_write_is_sticky() {
        // /dev/full: every write fails (ENOSPC), as on a full disk.
        let Ok(file) = fs::OpenOptions::new().write(true).open("/dev/full") else {
            return;
        };
        let mut r = Recording {
            file,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
            max_bytes: DEFAULT_RECORDING_BYTES,
            start: Instant::now(),
            failed: false,
        };
        assert!(r.event("o", b"x").is_err());
        assert!(r.failed);
        assert!(r.event("o", b"y").is_err(), "nothing after a failure");
        let (len, _, failed) = r.finish();
        assert_eq!(len, 0);
        assert!(failed);
    }

    #[test]
    fn a_recording_hashes_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let h = Header {
            session: "0123456789abcdef",
            alloc: "abcdefgh01234567",
            node: "n1",
            cols: 80,
            rows: 24,
        };
        let mut r = Recording::create(dir.path(), &h, DEFAULT_RECORDING_BYTES).unwrap();
        r.event("o", b"hello\n").unwrap();
        r.event("i", b"\xff").unwrap();
        r.event("o", "é".as_bytes()).unwrap();
        let (len, sum, failed) = r.finish();
        assert!(!failed);
        let bytes = fs::read(path_of(dir.path(), h.session)).unwrap();
        assert_eq!(bytes.len() as u64, len);
        let want = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        assert_eq!(sum, want);
        // Not UTF-8: kept byte for byte, in base64; UTF-8 stays text.
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(r#""ib","/w=="]"#), "{text}");
        assert!(text.contains(r#""o","é"]"#), "{text}");
        assert_eq!(
            alloc_of(dir.path(), h.session).as_deref(),
            Some("abcdefgh01234567")
        );
        assert!(
            Recording::create(dir.path(), &h, DEFAULT_RECORDING_BYTES).is_err(),
            "never overwritten"
        );
    }

    #[test]
    fn a_recording_stops_at_its_limit_and_the_file_stays_within_it() {
        let dir = tempfile::tempdir().unwrap();
        let h = Header {
            session: "fedcba9876543210",
            alloc: "abcdefgh01234567",
            node: "n1",
            cols: 80,
            rows: 24,
        };
        let mut r = Recording::create(dir.path(), &h, 1).unwrap();
        assert_eq!(r.max_bytes, MIN_RECORDING_BYTES, "raised to the minimum");
        let chunk = [b'a'; 1000];
        let mut written = 0;
        while r.event("o", &chunk).is_ok() {
            written += 1;
        }
        assert!(written >= 3, "{written} chunks before the limit");
        assert!(r.failed);
        let (len, _, failed) = r.finish();
        assert!(failed);
        assert!(len <= MIN_RECORDING_BYTES);
        let on_disk = fs::metadata(path_of(dir.path(), h.session)).unwrap().len();
        assert_eq!(on_disk, len);
    }
}
