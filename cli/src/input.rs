//! Reading secrets and writing secret files.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use ringzero_proto::fs::write_private;

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
/// leaves either the old or the new file, never half of one ([`write_private`]).
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32, overwrite: bool) -> Result<()> {
    if !overwrite && path.exists() {
        bail!("{} exists (use --force to replace it)", path.display());
    }
    Ok(write_private(path, contents, mode)?)
}
