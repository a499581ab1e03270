//! The data directory is private: it holds the node's private keys, the whole replicated state
//! and the audit log. Directories are created 0700 and files 0600, and a node refuses to start
//! from a directory that other users can read, with the command that fixes it.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Group and other permission bits: none may be set anywhere in a data directory.
const SHARED_BITS: u32 = 0o077;

/// How deep [`check_tree`] looks (`D/raft/snapshots/<file>` is depth 3).
const MAX_DEPTH: usize = 4;

/// Creates `dir` (and missing parents) and makes `dir` itself mode 0700.
pub(crate) fn create_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(0o700))
}

/// Opens a new file for writing with mode 0600 (truncating one that exists).
pub(crate) fn create_file(path: &Path) -> std::io::Result<std::fs::File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through `open`: set it.
    f.set_permissions(Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Makes an existing file mode 0600 (for files a library created, such as redb's).
pub(crate) fn restrict_file(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(0o600))
}

/// A path in the data directory that other users can reach.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} is accessible to other users (mode {mode:04o}); the data directory holds private keys \
     and the audit log: run `chmod -R go-rwx {root}` (directories 0700, files 0600)"
)]
pub struct NotPrivate {
    pub path: PathBuf,
    pub mode: u32,
    pub root: PathBuf,
}

/// Checks that `root` and everything below it (not following symlinks) grants nothing to
/// group or others.
pub(crate) fn check_tree(root: &Path) -> Result<(), NotPrivate> {
    fn walk(root: &Path, path: &Path, depth: usize) -> Result<(), NotPrivate> {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return Ok(());
        };
        let mode = meta.mode() & 0o7777;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        if mode & SHARED_BITS != 0 {
            return Err(NotPrivate {
                path: path.to_path_buf(),
                mode,
                root: root.to_path_buf(),
            });
        }
        if meta.is_dir()
            && depth < MAX_DEPTH
            && let Ok(entries) = std::fs::read_dir(path)
        {
            for e in entries.flatten() {
                walk(root, &e.path(), depth + 1)?;
            }
        }
        Ok(())
    }
    walk(root, root, 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn private_trees_pass_and_shared_files_are_named() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("d");
        create_dir(&root.join("raft/snapshots")).unwrap();
        create_dir(&root.join("raft")).unwrap();
        create_dir(&root).unwrap();
        create_file(&root.join("raft/log.redb")).unwrap();
        assert!(check_tree(&root).is_ok());
        std::fs::set_permissions(root.join("raft/log.redb"), Permissions::from_mode(0o644))
            .unwrap();
        let e = check_tree(&root).unwrap_err();
        assert!(e.path.ends_with("raft/log.redb"), "{e}");
        assert!(e.to_string().contains("chmod -R go-rwx"), "{e}");
        restrict_file(&root.join("raft/log.redb")).unwrap();
        std::fs::set_permissions(&root, Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_tree(&root).unwrap_err().mode, 0o755);
    }
}
