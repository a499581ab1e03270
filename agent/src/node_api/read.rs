//! Reading a task's log: the rotated copies (`.2`, `.1`, oldest first) then the live file,
//! optionally only the last lines or only files written since a time, then — when following —
//! what the task appends, across copy-truncate rotation.
//!
//! Runs on a blocking thread and hands chunks of at most [`CHUNK`] bytes to a bounded channel,
//! so a slow reader holds one thread and a few chunks, never the file; a reader that leaves a
//! chunk unread for [`STALL`] loses the read, and with it the slot and the thread. Follow polls the live
//! file every [`POLL`]; when it shrank (rotation truncated it), what was written since the last
//! poll is read from `.1` (the rotation records where `.1` starts in the old file), then
//! reading resumes at the live file's start, as `tail -F` does.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ringzero_proto::node::LogChunk;
use tokio::sync::mpsc;

/// The largest chunk sent.
pub(crate) const CHUNK: usize = 64 * 1024;
/// How often a follower looks for new bytes.
const POLL: Duration = Duration::from_millis(200);
/// The most lines `tail_lines` may ask for.
pub(crate) const MAX_TAIL: u32 = 100_000;
/// How long a chunk may wait for the reader to make room before the read ends.
pub(crate) const STALL: Duration = Duration::from_secs(10);
/// Rotated copies looked at (the supervisor keeps two by default).
const MAX_ROTATED: u32 = 8;

/// What to read.
#[derive(Debug, Clone)]
pub(crate) struct LogRead {
    /// `<tasks>/<alloc>/stdout.log` or `stderr.log`.
    pub live: PathBuf,
    pub tail_lines: u32,
    pub since: Option<SystemTime>,
    pub follow: bool,
}

/// Why a follow ends early (the stream ends with it as an error).
pub(crate) type Stop = Box<dyn Fn() -> Option<Result<(), tonic::Status>> + Send>;

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn is_file(path: &Path) -> Option<std::fs::Metadata> {
    std::fs::symlink_metadata(path).ok().filter(|m| m.is_file())
}

/// The files to read, oldest first; the live file last, always (when it exists).
fn files(r: &LogRead) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for n in (1..=MAX_ROTATED).rev() {
        let p = numbered(&r.live, n);
        if let Some(m) = is_file(&p) {
            let recent = r.since.is_none_or(|s| m.modified().is_ok_and(|t| t >= s));
            if recent {
                out.push(p);
            }
        }
    }
    if is_file(&r.live).is_some() {
        out.push(r.live.clone());
    }
    out
}

/// Where the last `lines` lines begin: (index into `files`, offset). A final newline does not
/// start a line of its own.
fn tail_start(files: &[PathBuf], lines: u32) -> io::Result<(usize, u64)> {
    if lines == 0 {
        return Ok((0, 0));
    }
    let mut found = 0u32;
    let mut last_byte = true;
    let mut buf = vec![0u8; CHUNK];
    for (i, path) in files.iter().enumerate().rev() {
        let mut f = open(path)?;
        let len = f.metadata()?.len();
        let mut end = len;
        while end > 0 {
            let start = end.saturating_sub(CHUNK as u64);
            let n = (end - start) as usize;
            f.seek(SeekFrom::Start(start))?;
            let chunk = &mut buf[..n];
            f.read_exact(chunk)?;
            for j in (0..n).rev() {
                let skip = std::mem::take(&mut last_byte);
                if chunk[j] == b'\n' && !skip {
                    found += 1;
                    if found == lines {
                        return Ok((i, start + j as u64 + 1));
                    }
                }
            }
            end = start;
        }
    }
    Ok((0, 0))
}

fn open(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Sends `f` from its position to its end; returns the new position, or `None` when the
/// receiver went away.
fn drain(
    f: &mut File,
    buf: &mut [u8],
    tx: &mpsc::Sender<Result<LogChunk, tonic::Status>>,
) -> io::Result<Option<u64>> {
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            return Ok(Some(f.stream_position()?));
        }
        let chunk = LogChunk {
            data: buf[..n].to_vec(),
        };
        if !send(tx, Ok(chunk)) {
            return Ok(None);
        }
    }
}

/// Hands `item` to the reader, waiting at most [`STALL`] for room; `false` when the reader
/// went away or stalled. Call it from a blocking thread.
pub(super) fn send<T>(tx: &mpsc::Sender<T>, item: T) -> bool {
    send_within(tx, item, STALL)
}

fn send_within<T>(tx: &mpsc::Sender<T>, item: T, wait: Duration) -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => rt
            .block_on(tokio::time::timeout(wait, tx.send(item)))
            .is_ok_and(|sent| sent.is_ok()),
        // Outside a runtime (unit tests): a plain blocking send.
        Err(_) => tx.blocking_send(item).is_ok(),
    }
}

/// After a copy-truncate rotation of `live`, which a follower had read up to `pos`: its copy
/// `.1`, positioned at what the follower had not read yet (`None` when the copy does not reach
/// back that far, or its start was not recorded).
fn missed_by_rotation(live: &Path, pos: u64) -> io::Result<Option<File>> {
    let Some(start) = crate::tasks::rotated_start(live) else {
        return Ok(None);
    };
    let Some(offset) = pos.checked_sub(start) else {
        return Ok(None);
    };
    let mut copy = match open(&numbered(live, 1)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if copy.metadata()?.len() < offset {
        return Ok(None);
    }
    copy.seek(SeekFrom::Start(offset))?;
    Ok(Some(copy))
}

/// Streams `r` into `tx` (blocking: run it on a blocking thread). `stop` is asked before each
/// poll while following.
pub(crate) fn stream(r: &LogRead, tx: &mpsc::Sender<Result<LogChunk, tonic::Status>>, stop: &Stop) {
    if let Err(e) = stream_inner(r, tx, stop) {
        let _ = send(
            tx,
            Err(tonic::Status::internal(format!("reading the log: {e}"))),
        );
    }
}

fn stream_inner(
    r: &LogRead,
    tx: &mpsc::Sender<Result<LogChunk, tonic::Status>>,
    stop: &Stop,
) -> io::Result<()> {
    let files = files(r);
    let (first, offset) = tail_start(&files, r.tail_lines.min(MAX_TAIL))?;
    let mut buf = vec![0u8; CHUNK];
    let mut live: Option<File> = None;
    for (i, path) in files.iter().enumerate().skip(first) {
        let mut f = open(path)?;
        if i == first {
            f.seek(SeekFrom::Start(offset))?;
        }
        if drain(&mut f, &mut buf, tx)?.is_none() {
            return Ok(());
        }
        if *path == r.live {
            live = Some(f);
        }
    }
    if !r.follow {
        return Ok(());
    }
    loop {
        if let Some(end) = stop() {
            if let Err(status) = end {
                let _ = send(tx, Err(status));
            }
            return Ok(());
        }
        if tx.is_closed() {
            return Ok(());
        }
        std::thread::sleep(POLL);
        let f = match &mut live {
            Some(f) => f,
            None => match open(&r.live) {
                Ok(f) => live.insert(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            },
        };
        let pos = f.stream_position()?;
        if f.metadata()?.len() < pos {
            // Copy-truncate rotation: what was written since the last poll is in `.1`, then
            // the file starts over.
            if let Some(mut missed) = missed_by_rotation(&r.live, pos)?
                && drain(&mut missed, &mut buf, tx)?.is_none()
            {
                return Ok(());
            }
            f.seek(SeekFrom::Start(0))?;
        }
        if drain(f, &mut buf, tx)?.is_none() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn collect(r: &LogRead) -> Vec<u8> {
        let (tx, mut rx) = mpsc::channel(1024);
        let stop: Stop = Box::new(|| Some(Ok(())));
        stream(r, &tx, &stop);
        drop(tx);
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.extend(c.unwrap().data);
        }
        out
    }

    #[test]
    fn a_reader_that_leaves_its_chunks_unread_loses_the_read() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (tx, mut rx) = mpsc::channel::<u32>(1);
        let stalled = rt.block_on(async {
            tokio::task::spawn_blocking(move || {
                let first = send_within(&tx, 1, Duration::from_millis(50));
                let second = send_within(&tx, 2, Duration::from_millis(50));
                (first, second)
            })
            .await
            .unwrap()
        });
        assert_eq!(stalled, (true, false), "the second chunk found no room");
        assert_eq!(rx.try_recv().ok(), Some(1));
    }

    #[test]
    fn a_follower_resumes_what_a_rotation_took_from_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("stdout.log");
        let line = |i: usize| format!("line {i:03}\n");
        let first: String = (0..10).map(line).collect();
        std::fs::write(&live, &first).unwrap();
        // The follower has read everything so far; the task writes more, then the file is
        // rotated (its last 100 bytes copied to `.1`) and truncated before the next poll.
        let pos = first.len() as u64;
        let more: String = (10..14).map(line).collect();
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&live)
                .unwrap();
            f.write_all(more.as_bytes()).unwrap();
        }
        assert!(crate::tasks::rotate(&live, 100, 2).unwrap());
        assert_eq!(std::fs::metadata(&live).unwrap().len(), 0);
        let mut missed = missed_by_rotation(&live, pos).unwrap().expect("resumable");
        let mut got = String::new();
        missed.read_to_string(&mut got).unwrap();
        assert_eq!(got, more, "exactly the lines written since the last poll");
        // A follower further behind than the copy reaches gets nothing from it (not a wrong
        // part of it).
        assert!(missed_by_rotation(&live, 3).unwrap().is_none());
    }

    #[test]
    fn reads_rotated_copies_then_the_live_file_and_tails_across_them() {
        let dir = std::env::temp_dir().join(format!("rz-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let live = dir.join("stdout.log");
        std::fs::write(numbered(&live, 2), "a\nb\n").unwrap();
        std::fs::write(numbered(&live, 1), "c\nd\n").unwrap();
        std::fs::write(&live, "e\nf\ng").unwrap();
        let mut r = LogRead {
            live: live.clone(),
            tail_lines: 0,
            since: None,
            follow: false,
        };
        assert_eq!(collect(&r), b"a\nb\nc\nd\ne\nf\ng");
        r.tail_lines = 2;
        assert_eq!(collect(&r), b"f\ng");
        r.tail_lines = 4;
        assert_eq!(collect(&r), b"d\ne\nf\ng");
        std::fs::write(&live, "e\nf\n").unwrap();
        r.tail_lines = 3;
        assert_eq!(collect(&r), b"d\ne\nf\n");
        r.tail_lines = 100;
        assert_eq!(collect(&r), b"a\nb\nc\nd\ne\nf\n");
        r.tail_lines = 0;
        r.since = Some(SystemTime::now() + Duration::from_secs(3600));
        assert_eq!(
            collect(&r),
            b"e\nf\n",
            "old copies skipped, the live file kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
