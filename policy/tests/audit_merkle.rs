//! RFC 6962 Merkle tree: known-answer vectors and property tests of the proofs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use proptest::prelude::*;
use ringzero_policy::audit::merkle::{empty_root, leaf_hash, node_hash};
use ringzero_policy::audit::{
    Frontier, Hash, InvalidProof, LeafHashes, MerkleTree, ProofError, consistency_proof,
    inclusion_proof, verify_consistency, verify_inclusion,
};

// Known-answer vectors of the Certificate Transparency reference implementation, as carried by
// transparency-dev/merkle `testonly/reference_test.go` (commit e739733c8ca2b89cfc49f35b161e81e16b5957d7)
// and the certificate-transparency `merkle_test` files: eight leaves, the roots of the trees of
// their first 1..=8 leaves, and a few inclusion and consistency proofs.
const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

const EMPTY_ROOT: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// (tree size, leaf index, proof)
const INCLUSION: [(u64, u64, &[&str]); 7] = [
    (1, 0, &[]),
    (
        2,
        0,
        &["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"],
    ),
    (
        2,
        1,
        &["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"],
    ),
    (
        3,
        2,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        5,
        1,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        8,
        0,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        8,
        5,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

/// (old size, new size, proof)
const CONSISTENCY: [(u64, u64, &[&str]); 4] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

fn h(hex_str: &str) -> Hash {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out).unwrap();
    out
}

fn vector_leaves() -> Vec<Hash> {
    LEAVES
        .iter()
        .map(|l| leaf_hash(&hex::decode(l).unwrap()))
        .collect()
}

#[test]
fn known_answer_roots() {
    assert_eq!(empty_root(), h(EMPTY_ROOT));
    assert_eq!(Frontier::new().root(), h(EMPTY_ROOT));
    let leaves = vector_leaves();
    let mut frontier = Frontier::new();
    let mut tree = MerkleTree::new();
    for (i, want) in ROOTS.iter().enumerate() {
        frontier.push(leaves[i]);
        tree.push(leaves[i]);
        assert_eq!(frontier.root(), h(want), "frontier, size {}", i + 1);
        assert_eq!(
            tree.root(i as u64 + 1),
            Some(h(want)),
            "tree, size {}",
            i + 1
        );
        assert_eq!(
            ringzero_policy::audit::merkle::root(&leaves[..], i as u64 + 1).unwrap(),
            h(want)
        );
    }
}

#[test]
fn known_answer_inclusion_proofs() {
    let leaves = vector_leaves();
    let mut tree = MerkleTree::new();
    leaves.iter().for_each(|l| tree.push(*l));
    for (size, index, proof) in INCLUSION {
        let want: Vec<Hash> = proof.iter().map(|p| h(p)).collect();
        assert_eq!(inclusion_proof(&tree, index, size).unwrap(), want);
        assert_eq!(inclusion_proof(&leaves[..], index, size).unwrap(), want);
        let root = h(ROOTS[size as usize - 1]);
        verify_inclusion(&leaves[index as usize], index, size, &want, &root).unwrap();
    }
}

#[test]
fn known_answer_consistency_proofs() {
    let leaves = vector_leaves();
    let mut tree = MerkleTree::new();
    leaves.iter().for_each(|l| tree.push(*l));
    for (old, new, proof) in CONSISTENCY {
        let want: Vec<Hash> = proof.iter().map(|p| h(p)).collect();
        assert_eq!(consistency_proof(&tree, old, new).unwrap(), want);
        assert_eq!(consistency_proof(&leaves[..], old, new).unwrap(), want);
        let (r1, r2) = (h(ROOTS[old as usize - 1]), h(ROOTS[new as usize - 1]));
        verify_consistency(old, new, &r1, &r2, &want).unwrap();
    }
}

#[test]
fn hashing_is_domain_separated() {
    // A leaf whose bytes are an interior node's input does not hash like that node.
    let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
    let mut forged = a.to_vec();
    forged.extend_from_slice(&b);
    assert_ne!(leaf_hash(&forged), node_hash(&a, &b));
}

#[test]
fn proof_arguments_out_of_range_are_errors() {
    let leaves = vector_leaves();
    assert!(matches!(
        inclusion_proof(&leaves[..], 8, 8),
        Err(ProofError::OutOfRange { .. })
    ));
    assert!(matches!(
        inclusion_proof(&leaves[..], 0, 9),
        Err(ProofError::OutOfRange { .. })
    ));
    assert!(matches!(
        consistency_proof(&leaves[..], 5, 4),
        Err(ProofError::OutOfRange { .. })
    ));
    let r = h(ROOTS[3]);
    assert_eq!(
        verify_inclusion(&leaves[0], 4, 4, &[], &r),
        Err(InvalidProof::OutOfRange)
    );
    assert_eq!(
        verify_consistency(5, 4, &r, &r, &[]),
        Err(InvalidProof::OutOfRange)
    );
    // Equal sizes: empty proof and equal roots; from the empty tree: empty proof.
    verify_consistency(4, 4, &r, &r, &[]).unwrap();
    assert!(verify_consistency(4, 4, &r, &h(ROOTS[2]), &[]).is_err());
    verify_consistency(0, 4, &empty_root(), &r, &[]).unwrap();
    assert!(verify_consistency(0, 4, &r, &r, &[]).is_err());
    assert!(verify_consistency(2, 4, &h(ROOTS[1]), &r, &[]).is_err());
}

/// A store that keeps only leaf hashes, to check the default `perfect_subtree`.
struct LeavesOnly(Vec<Hash>);

impl LeafHashes for LeavesOnly {
    type Error = std::convert::Infallible;
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn leaf(&self, index: u64) -> Result<Hash, Self::Error> {
        Ok(self.0[index as usize])
    }
}

fn leaves(n: u64) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
}

fn flip(proof: &[Hash], node: usize, bit: usize) -> Vec<Hash> {
    let mut p = proof.to_vec();
    p[node][bit / 8] ^= 1 << (bit % 8);
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn inclusion_proofs_verify_and_fail_on_any_bit_flip(
        n in 1u64..600, index_seed in any::<u64>(), node_seed in any::<usize>(), bit in 0usize..256,
    ) {
        let ls = leaves(n);
        let index = index_seed % n;
        let mut tree = MerkleTree::new();
        ls.iter().for_each(|l| tree.push(*l));
        let root = tree.root(n).unwrap();
        let proof = inclusion_proof(&tree, index, n).unwrap();
        prop_assert_eq!(&proof, &inclusion_proof(&LeavesOnly(ls.clone()), index, n).unwrap());
        prop_assert!(verify_inclusion(&ls[index as usize], index, n, &proof, &root).is_ok());

        // Any flipped bit — in a proof node, the leaf or the root — is refused.
        if !proof.is_empty() {
            let bad = flip(&proof, node_seed % proof.len(), bit);
            prop_assert!(verify_inclusion(&ls[index as usize], index, n, &bad, &root).is_err());
        }
        let mut leaf = ls[index as usize];
        leaf[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(verify_inclusion(&leaf, index, n, &proof, &root).is_err());
        let mut bad_root = root;
        bad_root[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(verify_inclusion(&ls[index as usize], index, n, &proof, &bad_root).is_err());
        // Another leaf at this position, or this leaf at another position, is refused.
        if n > 1 {
            let other = (index + 1) % n;
            prop_assert!(verify_inclusion(&ls[other as usize], index, n, &proof, &root).is_err());
            prop_assert!(verify_inclusion(&ls[index as usize], other, n, &proof, &root).is_err());
        }
        // A truncated or extended proof is refused.
        if !proof.is_empty() {
            prop_assert!(verify_inclusion(&ls[index as usize], index, n, &proof[1..], &root).is_err());
        }
        let mut longer = proof.clone();
        longer.push(root);
        prop_assert!(verify_inclusion(&ls[index as usize], index, n, &longer, &root).is_err());
    }

    #[test]
    fn consistency_proofs_verify_and_fail_on_any_bit_flip(
        n in 1u64..600, m_seed in any::<u64>(), node_seed in any::<usize>(), bit in 0usize..256,
    ) {
        let ls = leaves(n);
        let m = m_seed % (n + 1);
        let mut tree = MerkleTree::new();
        ls.iter().for_each(|l| tree.push(*l));
        let (old, new) = (tree.root(m).unwrap(), tree.root(n).unwrap());
        let proof = consistency_proof(&tree, m, n).unwrap();
        prop_assert_eq!(&proof, &consistency_proof(&LeavesOnly(ls.clone()), m, n).unwrap());
        prop_assert!(verify_consistency(m, n, &old, &new, &proof).is_ok());

        if !proof.is_empty() {
            let bad = flip(&proof, node_seed % proof.len(), bit);
            prop_assert!(verify_consistency(m, n, &old, &new, &bad).is_err());
            prop_assert!(verify_consistency(m, n, &old, &new, &proof[1..]).is_err());
        }
        let mut bad_old = old;
        bad_old[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(verify_consistency(m, n, &bad_old, &new, &proof).is_err());
        let mut bad_new = new;
        bad_new[bit / 8] ^= 1 << (bit % 8);
        // (Every tree extends the empty one, whatever its root.)
        prop_assert_eq!(verify_consistency(m, n, &old, &bad_new, &proof).is_err(), m > 0);
        // A tree that differs in any one leaf before `m` is not an extension of the old one.
        if m > 0 {
            let mut forked = ls.clone();
            let at = (node_seed as u64 % m) as usize;
            forked[at][0] ^= 1;
            let forked_root = ringzero_policy::audit::merkle::root(&forked[..], n).unwrap();
            let forked_proof = consistency_proof(&forked[..], m, n).unwrap();
            prop_assert!(verify_consistency(m, n, &old, &forked_root, &forked_proof).is_err());
        }
    }

    #[test]
    fn frontier_round_trips_through_its_parts(n in 0u64..5000) {
        let ls = leaves(n);
        let mut f = Frontier::new();
        ls.iter().for_each(|l| f.push(*l));
        let g = Frontier::from_parts(n, f.nodes().to_vec()).unwrap();
        prop_assert_eq!(g.root(), f.root());
        prop_assert_eq!(f.root(), ringzero_policy::audit::merkle::root(&ls[..], n).unwrap());
        let mut extra = f.nodes().to_vec();
        extra.push([0; 32]);
        prop_assert!(Frontier::from_parts(n, extra).is_err());
    }
}

#[test]
fn proofs_in_a_large_tree_are_cheap_with_stored_nodes() {
    let n = 1u64 << 17 | 12_345;
    let ls = leaves(n);
    let mut tree = MerkleTree::new();
    ls.iter().for_each(|l| tree.push(*l));
    let root = tree.root(n).unwrap();
    for index in [0, 1, n / 2, n - 2, n - 1] {
        let p = inclusion_proof(&tree, index, n).unwrap();
        assert!(p.len() <= 18);
        verify_inclusion(&ls[index as usize], index, n, &p, &root).unwrap();
    }
    for m in [1, 2, 1 << 16, (1 << 17) - 1, 1 << 17, n - 1] {
        let p = consistency_proof(&tree, m, n).unwrap();
        verify_consistency(m, n, &tree.root(m).unwrap(), &root, &p).unwrap();
    }
}
