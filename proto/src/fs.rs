//! Writing files that hold secrets (keys, credentials, profiles), the one way every ringzero
//! process does it.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Makes temporary names unique within the process (the pid makes them unique across
/// processes), so that concurrent writers of one file never write into each other's temporary
/// file: the last rename wins, whole.
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path`, replacing it atomically: a reader, or a crash, sees the old file
/// or the new one, never a part of either, and the new one never has a wider mode than `mode`.
///
/// The bytes go to a new hidden temporary file beside `path`, created exclusively (never
/// through an existing file or link) with `mode` (less the umask) from the start, so a secret
/// is never readable more widely even for a moment; it is fsynced, renamed over `path`, and the
/// directory is fsynced so that the rename survives a crash. On failure the temporary file is
/// removed. Errors name the file and what was being done to it.
pub fn write_private(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        error(
            io::ErrorKind::InvalidInput,
            "writing",
            path,
            "not a file path",
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        NEXT_TMP.fetch_add(1, Ordering::Relaxed)
    ));
    let written = write_new(&tmp, bytes, mode).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| with_path(e, "renaming into", path))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| with_path(e, "syncing directory", dir))
}

/// Creates `tmp` (which must not exist) with `mode`, writes `bytes` and fsyncs it.
fn write_new(tmp: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(|e| with_path(e, "creating", tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| with_path(e, "writing", tmp))
}

fn with_path(e: io::Error, doing: &str, path: &Path) -> io::Error {
    error(e.kind(), doing, path, e)
}

fn error(kind: io::ErrorKind, doing: &str, path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(kind, format!("{doing} {}: {why}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_and_replaces_with_the_mode_and_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("key.pem");
        write_private(&path, b"one", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o600);
        write_private(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(names(tmp.path()), ["key.pem"]);
    }

    #[test]
    fn a_wider_existing_file_is_replaced_by_one_with_the_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("profile");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new", 0o600).unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn errors_name_the_file_and_leave_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("no-such-dir").join("key");
        let e = write_private(&missing, b"x", 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("no-such-dir"), "{e}");

        // The target is a directory: the rename fails, and the temporary file is removed.
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("inside"), "x").unwrap();
        let e = write_private(&dir, b"x", 0o600).unwrap_err();
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        assert_eq!(names(tmp.path()), ["d"]);
    }
}
