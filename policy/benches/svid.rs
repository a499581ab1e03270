//! X.509-SVID issuance and validation.
//!
//! - `svid_issue`: what enrolling a workload costs end to end: a fresh P-256 key, its CSR, and
//!   the CA verifying the CSR and signing the leaf.
//! - `svid_issue_csr`: what the authority spends per request: verifying a CSR made elsewhere
//!   and signing the leaf.
//! - `svid_issue_spki`: the CA signing a leaf for a bare public key (no CSR to verify).
//! - `svid_validate`: validating a leaf chain against a bundle of three authority CAs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use rcgen::PublicKeyData;
use ringzero_policy::svid::{
    LeafKey, LeafRequest, SigningCa, Usage, csr_for, generate_key, validate_svid,
};
use ringzero_policy::testing::{CaBuilder, SvidBuilder, trust_bundle};
use ringzero_policy::{SpiffeId, TrustDomain};

const DAY: Duration = Duration::from_secs(86_400);
const LEAF_TTL: Duration = Duration::from_secs(3600);

fn setup() -> (TrustDomain, SpiffeId, Vec<SigningCa>) {
    let now = SystemTime::now();
    let td = TrustDomain::new("example.org").unwrap();
    let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/web").unwrap();
    let cas = (1..=3)
        .map(|i| {
            CaBuilder::new(&td, &format!("ringzero authority a{i}"))
                .made_at(now)
                .ttl(30 * DAY)
                .path_len(0)
                .build()
        })
        .collect();
    (td, id, cas)
}

fn bench_issue(c: &mut Criterion) {
    let (_, id, cas) = setup();
    let ca = &cas[0];
    let now = SystemTime::now();

    c.bench_function("svid_issue", |b| {
        b.iter(|| {
            let key = generate_key().unwrap();
            let csr = csr_for(&key, &id).unwrap();
            ca.issue(&LeafRequest {
                id: black_box(&id),
                key: LeafKey::Csr(&csr),
                ttl: LEAF_TTL,
                dns_names: &[],
                now,
            })
            .unwrap()
        })
    });

    // What the authority does per request: the CSR was made on the agent's machine.
    let csr = csr_for(&generate_key().unwrap(), &id).unwrap();
    c.bench_function("svid_issue_csr", |b| {
        b.iter(|| {
            ca.issue(&LeafRequest {
                id: black_box(&id),
                key: LeafKey::Csr(black_box(&csr)),
                ttl: LEAF_TTL,
                dns_names: &[],
                now,
            })
            .unwrap()
        })
    });

    let spki = generate_key().unwrap().subject_public_key_info();
    c.bench_function("svid_issue_spki", |b| {
        b.iter(|| {
            ca.issue(&LeafRequest {
                id: black_box(&id),
                key: LeafKey::PublicKey(black_box(&spki)),
                ttl: LEAF_TTL,
                dns_names: &[],
                now,
            })
            .unwrap()
        })
    });
}

fn bench_validate(c: &mut Criterion) {
    let (td, id, cas) = setup();
    let now = SystemTime::now();
    let bundle = trust_bundle(&td, &cas.iter().collect::<Vec<_>>());
    // Issued by the last CA of the bundle, so path building cannot stop at the first anchor.
    let leaf = SvidBuilder::new(&cas[2], &id)
        .ttl(LEAF_TTL)
        .at(now)
        .issue()
        .issued;
    let validated = validate_svid(&leaf.chain, &bundle, now, Usage::Client).unwrap();
    assert_eq!(validated.id, id);

    c.bench_function("svid_validate", |b| {
        b.iter(|| validate_svid(black_box(&leaf.chain), &bundle, now, Usage::Client).unwrap())
    });
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_issue, bench_validate
}
criterion_main!(benches);
