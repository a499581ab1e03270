#![allow(clippy::unwrap_used)]

use prost::Message;

use super::*;

fn alloc(i: usize) -> pb::Alloc {
    pb::Alloc {
        id: format!("{i:016}"),
        namespace: "shop".into(),
        job: "web".into(),
        node: "n1".into(),
        message: "x".repeat(200),
        ..Default::default()
    }
}

#[test]
fn a_small_snapshot_is_one_complete_part() {
    let first = pb::SchedSnapshot {
        sequence: 7,
        allocs_revision: 3,
        ..Default::default()
    };
    let parts = split(first, vec![], vec![alloc(1)], vec![]);
    assert_eq!(parts.len(), 1);
    assert!(parts[0].complete && parts[0].sequence == 7 && parts[0].allocs_revision == 3);
}

#[test]
fn the_largest_snapshot_is_cut_into_parts_under_the_encoding_limit() {
    let n = limits::MAX_ALLOCS;
    let allocs: Vec<pb::Alloc> = (0..n).map(alloc).collect();
    let jobs = vec![
        pb::JobStatus {
            job: Some(pb::Job {
                namespace: "shop".into(),
                name: "web".into(),
                command: "x".repeat(60 << 10),
                ..Default::default()
            }),
            ..Default::default()
        };
        50
    ];
    let nodes = vec![pb::NodeHealth::default(); 1000];
    let parts = split(
        pb::SchedSnapshot {
            sequence: 1,
            ..Default::default()
        },
        jobs,
        allocs,
        nodes,
    );
    assert!(parts.len() > 10);
    for (i, p) in parts.iter().enumerate() {
        assert!(
            p.encoded_len() <= PART_BYTES + (64 << 10),
            "part {i}: {}",
            p.encoded_len()
        );
        assert!(p.encoded_len() < 4 << 20);
        assert_eq!(p.sequence, 1);
        assert_eq!(p.complete, i + 1 == parts.len());
    }
    assert_eq!(parts.iter().map(|p| p.allocs.len()).sum::<usize>(), n);
    assert_eq!(parts.iter().map(|p| p.jobs.len()).sum::<usize>(), 50);
    assert_eq!(parts.iter().map(|p| p.nodes.len()).sum::<usize>(), 1000);
}
