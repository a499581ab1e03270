//! A bounded digest of a tree's leaves: what a verifier keeps of a tree head it accepted, so
//! that a later log which disagrees with that head is not only refused but pinned to the first
//! records that differ.
//!
//! The root says *that* two trees differ; the leaf hashes would say *where*, but they grow
//! with the log. The digest keeps the Merkle tree hashes of consecutive, aligned blocks of
//! `2^level` leaves (the last block may be partial), at the smallest level that needs at most
//! [`MAX_DIGEST_BLOCKS`] blocks: the leaf hashes themselves for a log of up to 1024 records,
//! blocks of 1024 records for a log of a million. The level depends only on the size, so two
//! digests of one size compare block by block. Every full block is a node of every larger
//! RFC 6962 tree, so the digest grows by appending leaves, and it hashes to the tree's root, so
//! it is checked against a signed head before it is believed.

use std::ops::Range;

use super::merkle::{Frontier, Hash, empty_root, node_hash};

/// The most blocks a [`LeafDigest`] keeps (32 KiB of hashes).
pub const MAX_DIGEST_BLOCKS: usize = 1024;

/// The block hashes of the first `size` leaves of a tree; see the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeafDigest {
    size: u64,
    level: u32,
    /// Block `i` is the tree hash of leaves `[i << level, (i + 1) << level)`.
    blocks: Vec<Hash>,
    /// The leaves after the last full block (fewer than `2^level`).
    tail: Frontier,
}

/// Parts that do not make a digest (the verifier's memory is corrupt).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a leaf digest: {0}")]
pub struct InvalidDigest(&'static str);

/// How many blocks of `2^level` leaves cover `size` leaves.
fn blocks_at(size: u64, level: u32) -> u64 {
    let full = size >> level;
    let rest = size & ((1u64 << level) - 1);
    full + u64::from(rest != 0)
}

/// The level a digest of `size` leaves has: the smallest that needs at most
/// [`MAX_DIGEST_BLOCKS`] blocks (at most 54, for `u64::MAX` leaves).
pub fn digest_level(size: u64) -> u32 {
    let mut level = 0;
    while blocks_at(size, level) > MAX_DIGEST_BLOCKS as u64 {
        level += 1;
    }
    level
}

impl LeafDigest {
    /// The digest of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A digest from its parts, as stored: the level must be [`digest_level`]`(size)`, there
    /// must be one block per full block of `size`, and `tail` must be the frontier of the
    /// leaves after them.
    pub fn from_parts(
        size: u64,
        level: u32,
        blocks: Vec<Hash>,
        tail: Vec<Hash>,
    ) -> Result<Self, InvalidDigest> {
        if level != digest_level(size) {
            return Err(InvalidDigest("the level does not fit the size"));
        }
        if blocks.len() as u64 != size >> level {
            return Err(InvalidDigest("the number of blocks does not fit the size"));
        }
        let tail = Frontier::from_parts(size & ((1u64 << level) - 1), tail)
            .map_err(|_| InvalidDigest("the tail does not fit the size"))?;
        Ok(Self {
            size,
            level,
            blocks,
            tail,
        })
    }

    /// The number of leaves covered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Each block covers `2^level` leaves.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// The hashes of the full blocks, in order.
    pub fn blocks(&self) -> &[Hash] {
        &self.blocks
    }

    /// The frontier of the leaves after the last full block.
    pub fn tail(&self) -> &[Hash] {
        self.tail.nodes()
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.tail.push(leaf);
        self.size = self.size.wrapping_add(1);
        if self.tail.size() == 1u64 << self.level {
            self.blocks.push(self.tail.root());
            self.tail = Frontier::new();
        }
        if blocks_at(self.size, self.level) > MAX_DIGEST_BLOCKS as u64 {
            self.raise();
        }
    }

    /// Doubles the block size: pairs of blocks become their parent node; an odd last block
    /// opens the new partial block, ahead of the old tail (which is smaller than it).
    fn raise(&mut self) {
        let height = self.level;
        self.level += 1;
        let mut pairs = self.blocks.chunks_exact(2);
        let merged: Vec<Hash> = (&mut pairs).map(|p| node_hash(&p[0], &p[1])).collect();
        if let [left] = pairs.remainder() {
            self.tail = self.tail.after_perfect(*left, height);
        }
        self.blocks = merged;
    }

    /// The tree hash of the leaves covered (`MTH(D[size])`): the blocks are perfect subtrees,
    /// so their own compact range followed by the tail's is the tree's.
    pub fn root(&self) -> Hash {
        let mut over_blocks = Frontier::new();
        for b in &self.blocks {
            over_blocks.push(*b);
        }
        let pieces: Vec<&Hash> = over_blocks
            .nodes()
            .iter()
            .chain(self.tail.nodes())
            .collect();
        match pieces.split_last() {
            None => empty_root(),
            Some((last, rest)) => rest
                .iter()
                .rev()
                .fold(**last, |acc, left| node_hash(left, &acc)),
        }
    }

    /// The first leaves where two digests of the same size differ: one leaf at level 0,
    /// otherwise the first differing block (or piece of the tail). `None` when they agree, or
    /// when their sizes differ (they cannot be compared).
    pub fn first_difference(&self, other: &LeafDigest) -> Option<Range<u64>> {
        if self.size != other.size || self.level != other.level {
            return None;
        }
        let span = 1u64 << self.level;
        if let Some(i) = self
            .blocks
            .iter()
            .zip(&other.blocks)
            .position(|(a, b)| a != b)
        {
            let start = i as u64 * span;
            return Some(start..start + span);
        }
        // The tails have the same size, hence the same pieces, largest first.
        let mut start = self.blocks.len() as u64 * span;
        let mut bits = self.tail.size();
        for (a, b) in self.tail.nodes().iter().zip(other.tail.nodes()) {
            let piece = 1u64 << (63 - bits.leading_zeros());
            if a != b {
                return Some(start..start + piece);
            }
            start += piece;
            bits -= piece;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::merkle::leaf_hash;

    fn leaves(n: u64, salt: u8) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&[&i.to_be_bytes()[..], &[salt]].concat()))
            .collect()
    }

    fn digest_of(ls: &[Hash]) -> LeafDigest {
        let mut d = LeafDigest::new();
        ls.iter().for_each(|l| d.push(*l));
        d
    }

    #[test]
    fn the_level_is_the_smallest_that_fits() {
        let max = MAX_DIGEST_BLOCKS as u64;
        assert_eq!(digest_level(0), 0);
        assert_eq!(digest_level(max), 0);
        assert_eq!(digest_level(max + 1), 1);
        assert_eq!(digest_level(2 * max), 1);
        assert_eq!(digest_level(2 * max + 1), 2);
        assert_eq!(digest_level(u64::MAX), 54);
    }

    #[test]
    fn a_digest_hashes_to_the_tree_root_at_every_size_and_round_trips() {
        let ls = leaves(5000, 0);
        let mut d = LeafDigest::new();
        let mut f = Frontier::new();
        assert_eq!(d.root(), f.root());
        for (i, l) in ls.iter().enumerate() {
            d.push(*l);
            f.push(*l);
            let n = i as u64 + 1;
            assert_eq!(d.size(), n);
            assert_eq!(d.level(), digest_level(n));
            assert!(d.blocks().len() <= MAX_DIGEST_BLOCKS);
            // Checking every size is quadratic; the interesting ones are around level changes.
            if n < 40 || n.is_multiple_of(97) || (n as usize).is_power_of_two() || n % 1024 < 3 {
                assert_eq!(d.root(), f.root(), "size {n}");
                let back =
                    LeafDigest::from_parts(n, d.level(), d.blocks().to_vec(), d.tail().to_vec())
                        .unwrap();
                assert_eq!(back, d);
            }
        }
        assert_eq!(d.root(), f.root());
    }

    #[test]
    fn the_first_difference_is_the_first_differing_leaf_or_block() {
        // Level 0: the exact leaf, wherever it is.
        let a = leaves(700, 0);
        for at in [0usize, 1, 255, 256, 511, 699] {
            let mut b = a.clone();
            b[at] = leaf_hash(b"other");
            b[at.min(698) + 1..]
                .iter_mut()
                .for_each(|l| *l = leaf_hash(l));
            let (da, db) = (digest_of(&a), digest_of(&b));
            let at = at as u64;
            assert_eq!(da.first_difference(&db), Some(at..at + 1), "at {at}");
        }
        assert_eq!(digest_of(&a).first_difference(&digest_of(&a)), None);
        assert_eq!(digest_of(&a).first_difference(&digest_of(&a[..600])), None);

        // Level 3 (blocks of 8): the block, or the piece of the tail, holding it.
        let a = leaves(4103, 0);
        let d = digest_of(&a);
        assert_eq!(d.level(), 3);
        for (at, want) in [
            (0usize, 0..8),
            (13, 8..16),
            (4095, 4088..4096),
            (4096, 4096..4100),
            (4101, 4100..4102),
            (4102, 4102..4103),
        ] {
            let mut b = a.clone();
            b[at] = leaf_hash(b"other");
            assert_eq!(
                d.first_difference(&digest_of(&b)),
                Some(want.clone()),
                "at {at}"
            );
        }
    }

    #[test]
    fn malformed_parts_are_refused() {
        let d = digest_of(&leaves(3001, 1));
        let (n, level) = (d.size(), d.level());
        let (blocks, tail) = (d.blocks().to_vec(), d.tail().to_vec());
        assert!(LeafDigest::from_parts(n, level + 1, blocks.clone(), tail.clone()).is_err());
        assert!(LeafDigest::from_parts(n, 0, blocks.clone(), tail.clone()).is_err());
        assert!(LeafDigest::from_parts(n + 2, level, blocks.clone(), tail.clone()).is_err());
        assert!(LeafDigest::from_parts(n, level, blocks[1..].to_vec(), tail.clone()).is_err());
        assert!(LeafDigest::from_parts(n, level, blocks.clone(), vec![]).is_err());
        assert!(LeafDigest::from_parts(u64::MAX, 54, vec![], vec![]).is_err());
        assert!(LeafDigest::from_parts(n, 99, blocks, tail).is_err());
    }
}
