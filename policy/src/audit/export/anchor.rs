//! Heads the export must agree with (the trusted and the remembered one), and what is owed
//! when it does not.

use std::ops::Range;

use super::ExportError;
use crate::audit::digest::LeafDigest;
use crate::audit::head::TreeHead;
use crate::audit::merkle::Frontier;

/// A head the export must agree with where its tree reaches that size.
pub(super) struct Anchor<'a> {
    pub(super) head: &'a TreeHead,
    /// The caller's digest of `head`, when it hashes to it.
    digest: Option<&'a LeafDigest>,
    pub(super) checked: bool,
}

impl<'a> Anchor<'a> {
    pub(super) fn new(head: Option<&'a TreeHead>, digest: Option<&'a LeafDigest>) -> Option<Self> {
        let head = head?;
        Some(Self {
            head,
            digest: digest.filter(|d| d.size() == head.size && d.root() == head.root),
            checked: false,
        })
    }

    /// Compares the running tree with this head once the tree reaches its size: agreement
    /// lends the head's digest to an export that started after record 0; disagreement is a
    /// divergence, located with the two digests when both are known.
    pub(super) fn check(
        anchor: &mut Option<Self>,
        frontier: &Frontier,
        digest: &mut Option<LeafDigest>,
        pending: &mut Option<Divergence>,
    ) {
        let Some(a) = anchor else { return };
        if a.checked || a.head.size != frontier.size() {
            return;
        }
        a.checked = true;
        if frontier.root() == a.head.root {
            if digest.is_none() {
                *digest = a.digest.cloned();
            }
        } else if pending.is_none() {
            let first = match (digest.as_ref(), a.digest) {
                (Some(ours), Some(seen)) => ours.first_difference(seen),
                _ => None,
            };
            *pending = Some(Divergence {
                seen_size: a.head.size,
                first,
            });
        }
    }
}

/// The running tree disagreed with a trusted head; blame is decided at the next head (valid:
/// the log forked or rolled back; invalid: records were altered).
pub(super) struct Divergence {
    pub(super) seen_size: u64,
    /// The first differing records, when both digests were known.
    pub(super) first: Option<Range<u64>>,
}

impl Divergence {
    pub(super) fn error(&self, got_size: u64) -> ExportError {
        match &self.first {
            Some(r) => ExportError::Diverged {
                seen_size: self.seen_size,
                got_size,
                first_seq: r.start,
                last_seq: r.end.saturating_sub(1),
            },
            None => ExportError::Rollback {
                seen_size: self.seen_size,
                got_size,
            },
        }
    }
}
