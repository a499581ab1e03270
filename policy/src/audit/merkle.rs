//! RFC 6962 Merkle tree hashing (§2.1), inclusion proofs (§2.1.1) and consistency proofs
//! (§2.1.2), over SHA-256; verification follows RFC 9162 §2.1.3.2 and §2.1.4.2.
//!
//! Three pieces:
//!
//! - [`Frontier`]: the compact range `[0, n)` — the roots of the perfect subtrees that make up
//!   a tree of `n` leaves, at most 64 hashes. Appending a leaf and computing the root cost
//!   O(log n) hashes and O(log n) memory, which is what a verifier streaming a million records
//!   needs.
//! - [`LeafHashes`]: a source of leaf hashes (and, optionally, of the hashes of perfect subtrees)
//!   for proof generation. Every node of an RFC 6962 proof is either a perfect subtree or the
//!   right edge of the tree, which is itself at most 64 perfect subtrees, so a store that answers
//!   [`LeafHashes::perfect_subtree`] in O(1) (like [`MerkleTree`], or a table of stored node
//!   hashes) gives proofs in O(log n) lookups; one that only stores leaf hashes falls back to
//!   the default, which rehashes the subtree (O(n) hashes for a proof in the worst case).
//! - The free functions [`inclusion_proof`], [`consistency_proof`], [`verify_inclusion`] and
//!   [`verify_consistency`].

use ring::digest::{Context, SHA256};

/// A SHA-256 hash: a leaf hash, an interior node or a tree root.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of the empty string (RFC 6962 §2.1).
pub fn empty_root() -> Hash {
    finish(Context::new(&SHA256))
}

/// The leaf hash `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(leaf);
    finish(ctx)
}

/// The interior node hash `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    finish(ctx)
}

fn finish(ctx: Context) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Folds the roots of consecutive perfect subtrees (largest first) into the hash of the range
/// they cover: RFC 6962's split at the largest power of two makes that a right fold.
fn fold_right(nodes: &[Hash]) -> Option<Hash> {
    let (last, rest) = nodes.split_last()?;
    Some(
        rest.iter()
            .rev()
            .fold(*last, |acc, left| node_hash(left, &acc)),
    )
}

/// The compact range `[0, size)` of a tree: the roots of its perfect subtrees, largest (leftmost)
/// first, one per set bit of `size`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

/// A frontier whose number of nodes does not match its size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a frontier of size {size} has {expected} nodes, not {got}")]
pub struct InvalidFrontier {
    /// The claimed tree size.
    pub size: u64,
    /// `size.count_ones()`.
    pub expected: u32,
    /// The number of nodes given.
    pub got: usize,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A frontier from its parts, as carried by a segment line: `nodes` must hold exactly one
    /// hash per set bit of `size`, largest subtree first.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Result<Self, InvalidFrontier> {
        if usize::try_from(size.count_ones()).ok() != Some(nodes.len()) {
            return Err(InvalidFrontier {
                size,
                expected: size.count_ones(),
                got: nodes.len(),
            });
        }
        Ok(Self { size, nodes })
    }

    /// The frontier of the first `size` leaves of `store`, in O(log n) subtree lookups.
    pub fn of<S: LeafHashes + ?Sized>(store: &S, size: u64) -> Result<Self, ProofError<S::Error>> {
        check_size(store, size)?;
        Ok(Self {
            size,
            nodes: perfect_pieces(store, 0, size)?,
        })
    }

    /// The number of leaves covered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect-subtree roots, largest first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends one leaf hash: O(log n) hashes, amortized O(1).
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut size = self.size;
        // Like incrementing a binary counter: each trailing one bit is a perfect subtree of the
        // same height as `h`, which merges with it.
        while size & 1 == 1 {
            match self.nodes.pop() {
                Some(left) => h = node_hash(&left, &h),
                None => break,
            }
            size >>= 1;
        }
        self.nodes.push(h);
        self.size = self.size.wrapping_add(1);
    }

    /// The Merkle tree hash of the leaves so far (`MTH(D[size])`).
    pub fn root(&self) -> Hash {
        fold_right(&self.nodes).unwrap_or_else(empty_root)
    }

    /// The frontier of a perfect subtree of `2^height` leaves (root `left`) followed by this
    /// frontier's leaves, which must be fewer than `2^height`: `left` is then the largest
    /// piece, and this frontier's pieces follow it unchanged.
    pub(super) fn after_perfect(&self, left: Hash, height: u32) -> Self {
        let span = 1u64 << height;
        debug_assert!(self.size < span, "a piece larger than the one before it");
        let mut nodes = Vec::with_capacity(self.nodes.len() + 1);
        nodes.push(left);
        nodes.extend_from_slice(&self.nodes);
        Self {
            size: span + self.size,
            nodes,
        }
    }
}

/// A source of leaf hashes for proof generation, e.g. an in-memory slice, [`MerkleTree`], or a
/// table in the authority's store.
pub trait LeafHashes {
    /// The store's failure (use [`std::convert::Infallible`] for memory).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The number of leaves.
    fn size(&self) -> u64;

    /// The hash of leaf `index` (`index < size()`).
    fn leaf(&self, index: u64) -> Result<Hash, Self::Error>;

    /// The root of the perfect subtree of height `level` covering leaves
    /// `[index << level, (index + 1) << level)`, which lie below `size()`.
    ///
    /// The default recomputes it from `2^level` leaves. Override it with stored node hashes to
    /// make proof generation O(log n) lookups.
    fn perfect_subtree(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        if level == 0 {
            return self.leaf(index);
        }
        let left = self.perfect_subtree(level - 1, index << 1)?;
        let right = self.perfect_subtree(level - 1, (index << 1) | 1)?;
        Ok(node_hash(&left, &right))
    }
}

impl LeafHashes for [Hash] {
    type Error = std::convert::Infallible;

    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn leaf(&self, index: u64) -> Result<Hash, Self::Error> {
        // Callers stay below `size()`; an out-of-range index is a bug in this module, and the
        // zero hash would make the proof fail verification rather than panic.
        Ok(usize::try_from(index)
            .ok()
            .and_then(|i| self.get(i))
            .copied()
            .unwrap_or([0; 32]))
    }
}

/// An in-memory Merkle tree that stores every perfect subtree (about `2n` hashes), so that roots
/// at any size and proofs cost O(log n).
#[derive(Clone, Debug, Default)]
pub struct MerkleTree {
    /// `levels[l][i]` is the root of the perfect subtree of height `l` at position `i`.
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut level = 0;
        let mut h = leaf;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(h);
            if row.len() % 2 == 1 {
                return;
            }
            h = node_hash(&row[row.len() - 2], &row[row.len() - 1]);
            level += 1;
        }
    }

    /// The number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `MTH(D[size])` for any `size <= len()`, or `None` past the end.
    pub fn root(&self, size: u64) -> Option<Hash> {
        root(self, size).ok()
    }
}

impl LeafHashes for MerkleTree {
    type Error = std::convert::Infallible;

    fn size(&self) -> u64 {
        self.len()
    }

    fn leaf(&self, index: u64) -> Result<Hash, Self::Error> {
        self.perfect_subtree(0, index)
    }

    fn perfect_subtree(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        Ok(usize::try_from(level)
            .ok()
            .and_then(|l| self.levels.get(l))
            .and_then(|row| row.get(usize::try_from(index).ok()?))
            .copied()
            .unwrap_or([0; 32]))
    }
}

/// Proof generation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError<E: std::error::Error + 'static> {
    /// The requested size or index lies outside the tree (or `old_size > new_size`).
    #[error("out of range: {what} {value} for a tree of {tree_size} leaves")]
    OutOfRange {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The size it was checked against.
        tree_size: u64,
    },
    /// The leaf-hash store failed.
    #[error("the leaf-hash store failed")]
    Store(#[source] E),
}

fn check_size<S: LeafHashes + ?Sized>(store: &S, size: u64) -> Result<(), ProofError<S::Error>> {
    if size > store.size() {
        return Err(ProofError::OutOfRange {
            what: "size",
            value: size,
            tree_size: store.size(),
        });
    }
    Ok(())
}

/// The perfect subtrees covering `[start, start + size)`, largest first. `start` is a multiple
/// of the largest of them, which holds for every range RFC 6962's recursion visits.
fn perfect_pieces<S: LeafHashes + ?Sized>(
    store: &S,
    start: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    let mut out = Vec::with_capacity(size.count_ones() as usize);
    let mut offset = start;
    for level in (0..64u32).rev() {
        let width = 1u64 << level;
        if size & width != 0 {
            out.push(
                store
                    .perfect_subtree(level, offset >> level)
                    .map_err(ProofError::Store)?,
            );
            offset += width;
        }
    }
    Ok(out)
}

/// `MTH(D[start : start + size])`.
fn subtree<S: LeafHashes + ?Sized>(
    store: &S,
    start: u64,
    size: u64,
) -> Result<Hash, ProofError<S::Error>> {
    Ok(fold_right(&perfect_pieces(store, start, size)?).unwrap_or_else(empty_root))
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[size])`: the root of the first `size` leaves of `store`.
pub fn root<S: LeafHashes + ?Sized>(store: &S, size: u64) -> Result<Hash, ProofError<S::Error>> {
    check_size(store, size)?;
    subtree(store, 0, size)
}

/// The audit path `PATH(index, D[size])` (RFC 6962 §2.1.1), from the leaf's sibling up.
pub fn inclusion_proof<S: LeafHashes + ?Sized>(
    store: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    check_size(store, size)?;
    if index >= size {
        return Err(ProofError::OutOfRange {
            what: "index",
            value: index,
            tree_size: size,
        });
    }
    let mut out = Vec::new();
    path(store, index, 0, size, &mut out)?;
    Ok(out)
}

fn path<S: LeafHashes + ?Sized>(
    store: &S,
    m: u64,
    start: u64,
    n: u64,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError<S::Error>> {
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(store, m, start, k, out)?;
        out.push(subtree(store, start + k, n - k)?);
    } else {
        path(store, m - k, start + k, n - k, out)?;
        out.push(subtree(store, start, k)?);
    }
    Ok(())
}

/// The consistency proof `PROOF(old_size, D[new_size])` (RFC 6962 §2.1.2). Empty when
/// `old_size` is 0 or equals `new_size`.
pub fn consistency_proof<S: LeafHashes + ?Sized>(
    store: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    check_size(store, new_size)?;
    if old_size > new_size {
        return Err(ProofError::OutOfRange {
            what: "old size",
            value: old_size,
            tree_size: new_size,
        });
    }
    let mut out = Vec::new();
    if old_size > 0 {
        subproof(store, old_size, 0, new_size, true, &mut out)?;
    }
    Ok(out)
}

fn subproof<S: LeafHashes + ?Sized>(
    store: &S,
    m: u64,
    start: u64,
    n: u64,
    complete: bool,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError<S::Error>> {
    if m == n {
        if !complete {
            out.push(subtree(store, start, n)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(store, m, start, k, complete, out)?;
        out.push(subtree(store, start + k, n - k)?);
    } else {
        subproof(store, m - k, start + k, n - k, false, out)?;
        out.push(subtree(store, start, k)?);
    }
    Ok(())
}

/// A proof that does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidProof {
    /// The index is not below the tree size, or the old size exceeds the new one.
    #[error("index or size out of range")]
    OutOfRange,
    /// The proof has the wrong number of nodes for these sizes.
    #[error("the proof has the wrong length")]
    WrongLength,
    /// The proof leads to a different root.
    #[error("the proof does not lead to the given root")]
    RootMismatch,
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), InvalidProof> {
    if index >= size {
        return Err(InvalidProof::OutOfRange);
    }
    let mut f = index;
    let mut s = size - 1;
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(InvalidProof::WrongLength);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(InvalidProof::WrongLength);
    }
    if !ct_eq(&r, root) {
        return Err(InvalidProof::RootMismatch);
    }
    Ok(())
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a prefix of the tree of
/// `new_size` leaves with root `new_root` (RFC 9162 §2.1.4.2). Any tree extends the empty tree
/// (`old_size == 0`, empty proof); equal sizes need equal roots and an empty proof.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), InvalidProof> {
    if old_size > new_size {
        return Err(InvalidProof::OutOfRange);
    }
    if old_size == 0 || old_size == new_size {
        if !proof.is_empty() {
            return Err(InvalidProof::WrongLength);
        }
        if old_size == new_size && !ct_eq(old_root, new_root) {
            return Err(InvalidProof::RootMismatch);
        }
        if old_size == 0 && !ct_eq(old_root, &empty_root()) {
            return Err(InvalidProof::RootMismatch);
        }
        return Ok(());
    }
    // Prepend the old root when the old tree is a perfect subtree of the new one.
    let mut nodes: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        nodes.push(old_root);
    }
    nodes.extend(proof.iter());
    let Some((first, rest)) = nodes.split_first() else {
        return Err(InvalidProof::WrongLength);
    };
    let mut f = old_size - 1;
    let mut s = new_size - 1;
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let mut fr = **first;
    let mut sr = **first;
    for c in rest {
        if s == 0 {
            return Err(InvalidProof::WrongLength);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(InvalidProof::WrongLength);
    }
    if !ct_eq(&fr, old_root) || !ct_eq(&sr, new_root) {
        return Err(InvalidProof::RootMismatch);
    }
    Ok(())
}

/// Roots are public, but comparing them in constant time costs nothing and removes a question.
fn ct_eq(a: &Hash, b: &Hash) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Recursive MTH straight from RFC 6962 §2.1, as an oracle.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn frontier_tree_and_slice_agree_with_the_recursive_definition() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut f = Frontier::new();
        let mut t = MerkleTree::new();
        assert_eq!(f.root(), empty_root());
        for (i, l) in leaves.iter().enumerate() {
            f.push(*l);
            t.push(*l);
            let want = mth(&leaves[..=i]);
            assert_eq!(f.root(), want, "frontier at {}", i + 1);
            assert_eq!(t.root(i as u64 + 1), Some(want));
            assert_eq!(root(&leaves[..], i as u64 + 1).unwrap(), want);
            let g = Frontier::of(&t, i as u64 + 1).unwrap();
            assert_eq!(g, f);
        }
    }
}
