//! The JSON-lines export: writer and verifier. The format and what verification proves are
//! described in the [module docs](super).
//!
//! # Layout
//!
//! - this file: the line types, format version and limits, and the writer's [`ExportOptions`].
//! - `write`: [`write_export`], records and signed checkpoint heads as JSON lines.
//! - `verify`: [`verify_export`] / [`verify_export_with`], their [`VerifyOptions`] and
//!   [`VerifiedExport`], and the line-by-line verifier.
//! - `anchor`: a trusted or remembered head the export must agree with, and a pending divergence.
//! - `read`: bounded line reading, the wire form of a line and its field parsers.
//! - `error`: [`ExportWriteError`] and [`ExportError`].

mod anchor;
mod error;
mod read;
mod verify;
mod write;

pub use self::error::{ExportError, ExportWriteError};
pub use self::verify::{VerifiedExport, VerifyOptions, verify_export, verify_export_with};
pub use self::write::write_export;

/// `type` of a record line.
pub const RECORD_TYPE: &str = "ringzero.audit.record";
/// `type` of a tree-head line.
pub const HEAD_TYPE: &str = "ringzero.audit.tree_head";
/// `type` of the optional leading segment line.
pub const SEGMENT_TYPE: &str = "ringzero.audit.segment";
/// The `v` of every line this module writes and accepts.
pub const FORMAT_VERSION: u64 = 1;
/// The longest line the verifier reads, newline excluded.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// The largest checkpoint interval the writer accepts, so that a head line with its window's
/// leaf hashes stays well below [`MAX_LINE_BYTES`].
pub const MAX_CHECKPOINT_EVERY: u64 = 16_384;

/// How the writer lays out an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportOptions {
    /// A signed checkpoint head after every this many records (1..=[`MAX_CHECKPOINT_EVERY`]),
    /// plus one at the end.
    pub checkpoint_every: u64,
    /// Whether each head line carries its window's leaf hashes, so that the verifier can name
    /// the exact altered record instead of its window.
    pub leaf_hashes: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 1024,
            leaf_hashes: true,
        }
    }
}
