//! A task's log files: opened by the agent in append mode and handed to the task as stdout and
//! stderr, bounded by copy-truncate rotation.
//!
//! The task holds the file descriptions, so it keeps logging while the agent restarts and a
//! re-adopted task's logs continue in the same files. The price: the agent cannot stop a write,
//! only truncate after it, so a file can pass `max_bytes` by what the task writes in one check
//! interval, and lines written between the copy and the truncation are lost. A task could also
//! clear `O_APPEND` on its descriptor; truncation then leaves a sparse file whose size keeps
//! the old offset, and each rotated copy still holds at most `max_bytes`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(super) const STDOUT: &str = "stdout.log";
pub(super) const STDERR: &str = "stderr.log";

/// How often the files are checked against their bound.
pub(super) const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Opens (creating 0600) `dir/name` for appending, for a task's stdout or stderr.
pub(super) fn open(dir: &Path, name: &str) -> io::Result<File> {
    let path = dir.join(name);
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)?;
    // An existing file keeps its mode on open; make sure it is ours alone.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Rotates `dir/stdout.log` and `dir/stderr.log` if they passed `max_bytes`.
pub(super) fn rotate_all(dir: &Path, max_bytes: u64, keep: u32) {
    for name in [STDOUT, STDERR] {
        if let Err(error) = rotate(&dir.join(name), max_bytes, keep) {
            tracing::warn!(file = %dir.join(name).display(), %error, "log rotation failed");
        }
    }
}

/// If `path` is larger than `max_bytes`: shifts `path.1` … up to `path.<keep>`, copies the
/// last `max_bytes` bytes of `path` to `path.1` and truncates `path`. With `keep` 0 it only
/// truncates. Returns whether it rotated.
pub(crate) fn rotate(path: &Path, max_bytes: u64, keep: u32) -> io::Result<bool> {
    let len = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    if keep > 0 {
        for i in (1..keep).rev() {
            match fs::rename(numbered(path, i), numbered(path, i + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let mut src = File::open(path)?;
        src.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))?;
        let tmp = numbered(path, 0);
        let mut dst = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        io::copy(&mut io::Read::take(src, max_bytes), &mut dst)?;
        fs::rename(&tmp, numbered(path, 1))?;
        // Where `.1` starts in the file as it was, so a follower that had read it up to some
        // offset resumes what it missed from `.1` instead of losing it (`rotated_start`).
        let start = len.saturating_sub(max_bytes);
        let mut marker = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(start_marker(path))?;
        io::Write::write_all(&mut marker, start.to_string().as_bytes())?;
    }
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// `path.1.start`: the offset of the file at which its copy `path.1` starts.
fn start_marker(path: &Path) -> PathBuf {
    let mut name = numbered(path, 1).into_os_string();
    name.push(".start");
    PathBuf::from(name)
}

/// The offset in `live` (as it was before its last rotation) at which its copy `live.1`
/// starts, if the agent recorded it.
pub(crate) fn rotated_start(live: &Path) -> Option<u64> {
    let text = fs::read_to_string(start_marker(live)).ok()?;
    text.trim().parse().ok()
}

/// `path.<n>` (`path.0` is the temporary copy).
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}
