//! The adversarial suite (issue #11): named attacks against real `ringzero` processes, grouped
//! by attacker — an anonymous network client, a token thief, a developer of another namespace,
//! an operator, a compromised agent node, a compromised workload process, a removed or
//! compromised authority node, and the local host. Each attack asserts the refusal and, where
//! the authority saw it, the audit record of the denial.
//!
//! One cluster per group (one `#[test]`), cases run in sequence and print their names; a failed
//! case panics naming its attacker and case. The index of every case, with what it asserts, is
//! `cases.rs` (and `threat-model/adversarial.md`); attacks other suites already perform are
//! listed there as covered elsewhere.
//!
//! Run: `cargo test -p ringzero-tests --test adversarial -- --nocapture` (case names and
//! timings go to stderr). `RINGZERO_KEEP_TMP=1` keeps the clusters' directories and logs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cases;
mod common;

mod anonymous;
mod authority;
mod nodes;
mod thief;
mod users;

use std::collections::BTreeSet;

use cases::{CASES, COVERED_ELSEWHERE};

/// The suite must hold at least this many distinct attacks (issue #11).
const AT_LEAST: usize = 40;

#[test]
fn the_index_holds_at_least_40_distinct_named_attacks() {
    let names: BTreeSet<&str> = CASES.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), CASES.len(), "a case name is indexed twice");
    assert!(
        CASES.len() >= AT_LEAST,
        "{} cases, fewer than {AT_LEAST}",
        CASES.len()
    );
    for c in CASES {
        assert!(!c.asserts.is_empty() && !c.name.contains('|'), "{c:?}");
        assert!(c.test.contains("::"), "{c:?}: test is module::function");
    }
    let attackers: BTreeSet<&str> = CASES.iter().map(|c| c.attacker).collect();
    eprintln!(
        "[adversarial] {} attack cases against real processes, {} attackers ({} more covered elsewhere)",
        CASES.len(),
        attackers.len(),
        COVERED_ELSEWHERE.len()
    );
    for a in &attackers {
        let n = CASES.iter().filter(|c| c.attacker == *a).count();
        eprintln!("[adversarial]   {a}: {n}");
    }
}

/// `threat-model/adversarial.md` lists every case of the index, and the count.
#[test]
fn the_threat_model_lists_every_case() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../threat-model/adversarial.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let missing: Vec<&str> = CASES
        .iter()
        .map(|c| c.name)
        .filter(|n| !doc.contains(n))
        .collect();
    assert!(missing.is_empty(), "{} lacks {missing:#?}", path.display());
    for (_, name, _) in COVERED_ELSEWHERE {
        assert!(doc.contains(name), "{} lacks {name:?}", path.display());
    }
    assert!(
        doc.contains(&format!("**{} cases**", CASES.len())),
        "{} does not state the count ({})",
        path.display(),
        CASES.len()
    );
}
