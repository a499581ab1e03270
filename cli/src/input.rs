//! Reading secrets and writing secret files.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The most bytes read for one secret or token from stdin or a file.
const MAX_SECRET_INPUT: u64 = 64 * 1024;

/// Reads a secret or token given as a value, `-` (stdin) or `@FILE`, trimmed.
pub(crate) fn read_secret(arg: &str) -> Result<String> {
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .take(MAX_SECRET_INPUT + 1)
            .read_to_string(&mut s)
            .context("reading stdin")?;
        s
    } else if let Some(path) = arg.strip_prefix('@') {
        read_bounded(Path::new(path))?
    } else {
        arg.to_owned()
    };
    if text.len() as u64 > MAX_SECRET_INPUT {
        bail!("input is larger than {MAX_SECRET_INPUT} bytes");
    }
    let text = text.trim().to_owned();
    if text.is_empty() {
        bail!("empty input");
    }
    Ok(text)
}

/// Reads a small file, refusing anything larger than the bound.
pub(crate) fn read_bounded(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut s = String::new();
    file.take(MAX_SECRET_INPUT + 1)
        .read_to_string(&mut s)
        .with_context(|| format!("reading {}", path.display()))?;
    if s.len() as u64 > MAX_SECRET_INPUT {
        bail!("{} is larger than {MAX_SECRET_INPUT} bytes", path.display());
    }
    Ok(s)
}

/// Writes `contents` to a new file with the given mode. Refuses to replace an existing file
/// unless `overwrite`; a replaced file is written beside it and renamed over it, so a crash
/// leaves either the old or the new file, never half of one.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32, overwrite: bool) -> Result<()> {
    if !overwrite && path.exists() {
        bail!("{} exists (use --force to replace it)", path.display());
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let written = f
        .write_all(contents)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}
