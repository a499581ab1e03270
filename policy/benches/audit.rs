//! The audit transparency log: leaf hashing and tree append, verifying a 1,000,000-record export,
//! and inclusion / consistency proofs at n = 1,000,000.
//!
//! - `audit_append/leaf_hash`: canonical JSON of one record + its RFC 6962 leaf hash.
//! - `audit_append/frontier_push`: appending one leaf hash to the O(log n) frontier.
//! - `audit_append/tree_push`: appending one leaf hash to the in-memory `MerkleTree`.
//! - `audit_verify/export_1m`: `verify_export` of 1,000,000 records (checkpoints every 1024,
//!   with leaf hashes), generated in memory; one iteration is the whole file.
//! - `audit_proofs/*`: proof generation from a `MerkleTree` of 1,000,000 leaves, and
//!   verification.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ring::signature::Ed25519KeyPair;
use ringzero_policy::audit::{
    AuditEntry, AuditKeys, Decision, ExportOptions, Frontier, KeyStatus, MerkleTree,
    consistency_proof, inclusion_proof, public_key_of, verify_consistency, verify_export,
    verify_inclusion, write_export,
};

const N: u64 = 1_000_000;

fn entry(seq: u64) -> AuditEntry {
    AuditEntry {
        seq,
        time_ms: 1_767_225_600_000 + seq,
        log_index: seq * 2 + 7,
        authority: 1 + seq % 3,
        actor: "spiffe://example.org/user/alice".to_owned(),
        revocation_ids: vec![format!("{:064x}", seq * 7919)],
        operation: "svid:issue".to_owned(),
        resource: format!("node/n{}", seq % 100),
        decision: Decision::Allow,
        reason: None,
        request_id: format!("0193b6f2-{seq:012x}"),
        outcome: "done".to_owned(),
        details: vec![
            ("serial".to_owned(), format!("{:032x}", seq * 104_729)),
            ("not_after".to_owned(), "1767229200000".to_owned()),
        ],
    }
}

fn key() -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap()
}

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("audit_append");
    group.throughput(Throughput::Elements(1));
    let e = entry(123_456);
    group.bench_function("leaf_hash", |b| b.iter(|| black_box(&e).leaf_hash()));
    let h = e.leaf_hash();
    let mut frontier = Frontier::new();
    group.bench_function("frontier_push", |b| b.iter(|| frontier.push(black_box(h))));
    let mut tree = MerkleTree::new();
    group.bench_function("tree_push", |b| b.iter(|| tree.push(black_box(h))));
    group.finish();
}

fn bench_verify(c: &mut Criterion) {
    let k = key();
    let keys = AuditKeys::new().with(1, public_key_of(&k), KeyStatus::Active);
    let mut data = Vec::with_capacity(400 * N as usize);
    let records = (0..N).map(entry);
    write_export(
        &mut data,
        &Frontier::new(),
        records,
        &k,
        1,
        1_767_300_000_000,
        &ExportOptions::default(),
    )
    .unwrap();
    eprintln!(
        "audit_verify: export of {N} records is {} MiB",
        data.len() >> 20
    );
    let v = verify_export(&data[..], &keys, None).unwrap();
    assert_eq!(v.records.len() as u64, N);
    drop(v);

    let mut group = c.benchmark_group("audit_verify");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(N));
    group.bench_function("export_1m", |b| {
        b.iter(|| verify_export(black_box(&data[..]), &keys, None).unwrap())
    });
    group.finish();
}

fn bench_proofs(c: &mut Criterion) {
    let mut tree = MerkleTree::new();
    for seq in 0..N {
        tree.push(ringzero_policy::audit::merkle::leaf_hash(
            &seq.to_be_bytes(),
        ));
    }
    let root = tree.root(N).unwrap();
    let index: u64 = 777_777;
    let leaf = ringzero_policy::audit::merkle::leaf_hash(&index.to_be_bytes());
    let old = 654_321;
    let old_root = tree.root(old).unwrap();

    let mut group = c.benchmark_group("audit_proofs");
    group.bench_function("inclusion_generate_1m", |b| {
        b.iter(|| inclusion_proof(&tree, black_box(index), N).unwrap())
    });
    let proof = inclusion_proof(&tree, index, N).unwrap();
    group.bench_function("inclusion_verify_1m", |b| {
        b.iter(|| verify_inclusion(&leaf, black_box(index), N, &proof, &root).unwrap())
    });
    group.bench_function("consistency_generate_1m", |b| {
        b.iter(|| consistency_proof(&tree, black_box(old), N).unwrap())
    });
    let proof = consistency_proof(&tree, old, N).unwrap();
    group.bench_function("consistency_verify_1m", |b| {
        b.iter(|| verify_consistency(black_box(old), N, &old_root, &root, &proof).unwrap())
    });
    // The fallback for a store of leaf hashes only: the proof rehashes the covered subtrees.
    let leaves: Vec<[u8; 32]> = (0..N).map(|i| tree_leaf(&tree, i)).collect();
    group.sample_size(10);
    group.bench_function("inclusion_generate_1m_leaves_only", |b| {
        b.iter(|| inclusion_proof(&leaves[..], black_box(index), N).unwrap())
    });
    group.finish();
}

fn tree_leaf(tree: &MerkleTree, i: u64) -> [u8; 32] {
    use ringzero_policy::audit::LeafHashes;
    tree.leaf(i).unwrap()
}

criterion_group!(benches, bench_append, bench_proofs, bench_verify);
criterion_main!(benches);
