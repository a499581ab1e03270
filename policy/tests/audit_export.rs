//! The audit export: canonical records, signed heads, and a verifier that catches and names
//! every kind of tampering.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use proptest::prelude::*;
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;
use ringzero_policy::audit::{
    AuditEntry, AuditKeys, Decision, ExportError, ExportOptions, Frontier, KeyStatus, MerkleTree,
    SignedTreeHead, TreeHead, VerifyOptions, consistency_proof, public_key_of, verify_export,
    verify_export_with, write_export,
};

const T0: u64 = 1_767_225_600_000;

fn key() -> Ed25519KeyPair {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

fn keys_for(key: &Ed25519KeyPair, id: u64, status: KeyStatus) -> AuditKeys {
    AuditKeys::new().with(id, public_key_of(key), status)
}

fn entry(seq: u64) -> AuditEntry {
    let deny = seq % 7 == 3;
    AuditEntry {
        seq,
        time_ms: T0 + seq * 10,
        log_index: seq * 2 + 5,
        authority: 1 + seq % 3,
        actor: match seq % 4 {
            0 => "spiffe://example.org/user/alice".to_owned(),
            1 => "local:root".to_owned(),
            2 => "spiffe://example.org/user/\"quoted\" \\ ünïcødé \u{1}".to_owned(),
            _ => format!("spiffe://example.org/node/n{seq}"),
        },
        revocation_ids: (0..seq % 3)
            .map(|i| format!("{:064x}", seq * 31 + i))
            .collect(),
        operation: if seq.is_multiple_of(2) {
            "entry:write".to_owned()
        } else {
            "svid:issue".to_owned()
        },
        resource: format!("ns/default/app{}", seq % 5),
        decision: if deny {
            Decision::Deny
        } else {
            Decision::Allow
        },
        reason: deny.then(|| "resource_not_allowed".to_owned()),
        request_id: format!("req-{seq}"),
        outcome: if deny {
            "rejected: resource_not_allowed".to_owned()
        } else {
            "done".to_owned()
        },
        details: vec![
            ("serial".to_owned(), format!("{:032x}", seq)),
            ("not_after".to_owned(), (T0 + 3_600_000).to_string()),
        ],
    }
}

fn entries(range: std::ops::Range<u64>) -> Vec<AuditEntry> {
    range.map(entry).collect()
}

fn export(
    prior: &Frontier,
    records: &[AuditEntry],
    key: &Ed25519KeyPair,
    key_id: u64,
    opts: ExportOptions,
) -> (Vec<u8>, SignedTreeHead) {
    let mut out = Vec::new();
    let head = write_export(&mut out, prior, records, key, key_id, T0 + 1000, &opts).unwrap();
    (out, head)
}

fn opts(every: u64, leaf_hashes: bool) -> ExportOptions {
    ExportOptions {
        checkpoint_every: every,
        leaf_hashes,
    }
}

fn lines(data: &[u8]) -> Vec<String> {
    String::from_utf8(data.to_vec())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn join(lines: &[String]) -> Vec<u8> {
    let mut s = lines.join("\n");
    s.push('\n');
    s.into_bytes()
}

/// Index of the line holding record `seq`.
fn line_of(lines: &[String], seq: u64) -> usize {
    let needle = format!("\"seq\":{seq},");
    lines
        .iter()
        .position(|l| l.contains("ringzero.audit.record") && l.contains(&needle))
        .unwrap()
}

fn verify(
    data: &[u8],
    keys: &AuditKeys,
) -> Result<ringzero_policy::audit::VerifiedExport, ExportError> {
    verify_export(data, keys, None)
}

#[test]
fn leaf_bytes_are_canonical_and_round_trip() {
    for seq in 0..20 {
        let e = entry(seq);
        let bytes = e.leaf_bytes();
        let parsed = AuditEntry::from_leaf_bytes(&bytes).unwrap();
        assert_eq!(parsed, e);
        assert_eq!(parsed.leaf_bytes(), bytes);
        assert!(!bytes.contains(&b'\n'));
    }
    let e = entry(0);
    let text = String::from_utf8(e.leaf_bytes()).unwrap();
    assert!(text.starts_with("{\"seq\":0,\"time_ms\":"), "{text}");
    assert!(
        text.contains("\"decision\":\"allow\",\"reason\":null,"),
        "{text}"
    );
    assert!(text.contains("\"details\":[[\"serial\","), "{text}");
    assert!(AuditEntry::from_leaf_bytes(b"{\"seq\":1}").is_err());
}

#[test]
fn an_export_round_trips_with_checkpoints() {
    let k = key();
    let keys = keys_for(&k, 7, KeyStatus::Active);
    let records = entries(0..3000);
    let (data, head) = export(&Frontier::new(), &records, &k, 7, ExportOptions::default());
    let v = verify(&data, &keys).unwrap();
    assert_eq!(v.records, records);
    assert_eq!(v.head, head);
    assert_eq!(
        v.heads.iter().map(|h| h.head.size).collect::<Vec<_>>(),
        [1024, 2048, 3000]
    );
    let mut tree = MerkleTree::new();
    records.iter().for_each(|r| tree.push(r.leaf_hash()));
    assert_eq!(head.head.root, tree.root(3000).unwrap());
    assert_eq!(v.frontier.root(), head.head.root);

    // Without leaf hashes, and without keeping the records.
    let (data, _) = export(&Frontier::new(), &records, &k, 7, opts(100, false));
    let v = verify_export_with(
        &data[..],
        &keys,
        &VerifyOptions {
            keep_records: false,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(v.records.is_empty());
    assert_eq!(v.heads.len(), 30);
}

#[test]
fn an_empty_export_is_a_signed_empty_tree() {
    let k = key();
    let (data, head) = export(&Frontier::new(), &[], &k, 1, ExportOptions::default());
    assert_eq!(head.head.size, 0);
    let v = verify(&data, &keys_for(&k, 1, KeyStatus::Active)).unwrap();
    assert!(v.records.is_empty());
    assert!(matches!(
        verify(b"", &AuditKeys::new()),
        Err(ExportError::NoTreeHead)
    ));
}

#[test]
fn reformatting_a_record_is_harmless() {
    let k = key();
    let keys = keys_for(&k, 1, KeyStatus::Active);
    let (data, _) = export(&Frontier::new(), &entries(0..40), &k, 1, opts(16, true));
    let mut ls = lines(&data);
    // Re-encode one record with sorted keys, another with spaces and \u escapes; add CRLF and
    // blank lines.
    let i = line_of(&ls, 5);
    let v: serde_json::Value = serde_json::from_str(&ls[i]).unwrap();
    ls[i] = serde_json::to_string(&v).unwrap();
    let j = line_of(&ls, 6);
    ls[j] = format!(
        " {} ",
        ls[j].replace(",\"", ", \"").replace("alice", "\\u0061lice")
    );
    ls[j + 1].push('\r');
    ls.insert(3, String::new());
    let v = verify(&join(&ls), &keys).unwrap();
    assert_eq!(v.records, entries(0..40));
}

fn edit_field(line: &str, field: usize) -> String {
    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
    let o = v.as_object_mut().unwrap();
    match field % 8 {
        0 => o["time_ms"] = (o["time_ms"].as_u64().unwrap() + 1).into(),
        1 => o["actor"] = "spiffe://example.org/user/mallory".into(),
        2 => {
            o["decision"] = if o["decision"] == "allow" {
                "deny"
            } else {
                "allow"
            }
            .into()
        }
        3 => o["details"] = serde_json::json!([]),
        4 => o["resource"] = "ns/kube-system".into(),
        5 => o["revocation_ids"] = serde_json::json!(["00"]),
        6 => o["reason"] = "forged".into(),
        _ => o["outcome"] = "done ".into(),
    }
    serde_json::to_string(&v).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn an_edited_record_is_named(n in 1u64..120, at_seed in any::<u64>(), field in 0usize..8, every in 1u64..40) {
        let k = key();
        let keys = keys_for(&k, 1, KeyStatus::Active);
        let at = at_seed % n;
        for leaf_hashes in [true, false] {
            let (data, _) = export(&Frontier::new(), &entries(0..n), &k, 1, opts(every, leaf_hashes));
            let mut ls = lines(&data);
            let i = line_of(&ls, at);
            ls[i] = edit_field(&ls[i], field);
            let err = verify(&join(&ls), &keys).unwrap_err();
            if leaf_hashes {
                prop_assert!(matches!(err, ExportError::Altered { seq } if seq == at), "{err:?}");
            } else {
                let first = at / every * every;
                let last = (first + every - 1).min(n - 1);
                prop_assert!(
                    matches!(err, ExportError::AlteredWithin { first_seq, last_seq } if first_seq == first && last_seq == last),
                    "{err:?} for {at} in windows of {every}"
                );
            }
        }
    }

    #[test]
    fn a_deleted_record_is_named(n in 2u64..120, at_seed in any::<u64>(), every in 1u64..40) {
        let k = key();
        let keys = keys_for(&k, 1, KeyStatus::Active);
        let at = at_seed % (n - 1); // not the last record: that is a truncation
        let (data, _) = export(&Frontier::new(), &entries(0..n), &k, 1, opts(every, true));
        let mut ls = lines(&data);
        ls.remove(line_of(&ls, at));
        let err = verify(&join(&ls), &keys).unwrap_err();
        // Either the gap is seen at the next record, or the next line is the head that covered it.
        prop_assert!(
            matches!(err, ExportError::Dropped { expected_seq } if expected_seq == at)
                || matches!(err, ExportError::Truncated { have, .. } if have == at),
            "{err:?} after deleting {at}"
        );
    }

    #[test]
    fn swapped_records_are_named(n in 2u64..120, at_seed in any::<u64>(), every in 1u64..40) {
        let k = key();
        let keys = keys_for(&k, 1, KeyStatus::Active);
        let at = at_seed % (n - 1);
        let (data, _) = export(&Frontier::new(), &entries(0..n), &k, 1, opts(every, true));
        let mut ls = lines(&data);
        let (i, j) = (line_of(&ls, at), line_of(&ls, at + 1));
        ls.swap(i, j);
        let err = verify(&join(&ls), &keys).unwrap_err();
        prop_assert!(matches!(err, ExportError::Reordered { seq } if seq == at), "{err:?}");
    }

    #[test]
    fn a_cut_export_is_caught(n in 1u64..120, cut_seed in any::<usize>(), every in 1u64..40) {
        let k = key();
        let keys = keys_for(&k, 1, KeyStatus::Active);
        let (data, full) = export(&Frontier::new(), &entries(0..n), &k, 1, opts(every, true));
        let ls = lines(&data);
        let keep = cut_seed % ls.len();
        let cut = join(&ls[..keep]);
        match verify(&cut, &keys) {
            // Cut right after a checkpoint: a valid shorter export, which the trusted head of the
            // full one refuses.
            Ok(v) => {
                prop_assert!(v.head.head.size < n);
                let err = verify_export(&cut[..], &keys, Some(&full.head)).unwrap_err();
                let rolled_back = matches!(err, ExportError::Rollback { seen_size, got_size }
                    if seen_size == n && got_size == v.head.head.size);
                prop_assert!(rolled_back, "{:?}", err);
            }
            Err(ExportError::Unsigned { first_seq }) => prop_assert!(first_seq % every == 0),
            Err(ExportError::NoTreeHead) => prop_assert!(keep <= every as usize),
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }
}

#[test]
fn a_record_inserted_before_a_head_is_caught() {
    let k = key();
    let keys = keys_for(&k, 1, KeyStatus::Active);
    let (data, _) = export(&Frontier::new(), &entries(0..10), &k, 1, opts(5, true));
    let mut ls = lines(&data);
    let extra = format!(
        "{{\"type\":\"ringzero.audit.record\",\"v\":1,{}",
        &String::from_utf8(entry(5).leaf_bytes()).unwrap()[1..]
    );
    ls.insert(5, extra); // records 0..5, forged 5, head(5)
    assert!(matches!(
        verify(&join(&ls), &keys),
        Err(ExportError::Inserted { seq: 5 })
    ));
    // A duplicated record goes backwards.
    let mut ls = lines(&data);
    ls.insert(3, ls[2].clone());
    assert!(matches!(
        verify(&join(&ls), &keys),
        Err(ExportError::Reordered { seq: 2 })
    ));
}

#[test]
fn a_head_signed_with_an_unpinned_key_is_refused() {
    let (ours, theirs) = (key(), key());
    let keys = keys_for(&ours, 1, KeyStatus::Active);
    let records = entries(0..50);
    // Re-signed under our key id with another key: bad signature.
    let (data, _) = export(
        &Frontier::new(),
        &records,
        &theirs,
        1,
        ExportOptions::default(),
    );
    assert!(matches!(
        verify(&data, &keys),
        Err(ExportError::BadSignature { key_id: 1, .. })
    ));
    // Edited and re-signed: still refused before any root is compared.
    let mut ls = lines(&data);
    let i = line_of(&ls, 3);
    ls[i] = edit_field(&ls[i], 1);
    assert!(matches!(
        verify(&join(&ls), &keys),
        Err(ExportError::BadSignature { .. })
    ));
    // Under an unknown key id.
    let (data, _) = export(
        &Frontier::new(),
        &records,
        &theirs,
        9,
        ExportOptions::default(),
    );
    assert!(matches!(
        verify(&data, &keys),
        Err(ExportError::UnknownKey { key_id: 9, .. })
    ));
    // A flipped signature bit, and a root edited in the head line.
    let (data, _) = export(
        &Frontier::new(),
        &records,
        &ours,
        1,
        ExportOptions::default(),
    );
    let mut ls = lines(&data);
    let last = ls.len() - 1;
    let mut v: serde_json::Value = serde_json::from_str(&ls[last]).unwrap();
    v["root"] = "00".repeat(32).into();
    ls[last] = serde_json::to_string(&v).unwrap();
    assert!(matches!(
        verify(&join(&ls), &keys),
        Err(ExportError::BadSignature { .. })
    ));
}

#[test]
fn retired_keys_verify_old_heads_only_and_compromised_keys_none() {
    let k = key();
    let records = entries(0..20);
    let (data, head) = export(&Frontier::new(), &records, &k, 4, ExportOptions::default());
    let signed_at = head.head.time_ms;
    let retired_after = keys_for(
        &k,
        4,
        KeyStatus::Retired {
            since_ms: signed_at + 1,
        },
    );
    verify(&data, &retired_after).unwrap();
    head.verify(&retired_after).unwrap();
    let retired_at = keys_for(
        &k,
        4,
        KeyStatus::Retired {
            since_ms: signed_at,
        },
    );
    assert!(matches!(
        verify(&data, &retired_at),
        Err(ExportError::KeyRetired { key_id: 4, .. })
    ));
    let compromised = keys_for(&k, 4, KeyStatus::Compromised);
    assert!(matches!(
        verify(&data, &compromised),
        Err(ExportError::KeyCompromised { key_id: 4, .. })
    ));
    // Keys come from the caller, as a closure too.
    let public = public_key_of(&k);
    let lookup = |id: u64| {
        (id == 4).then_some(ringzero_policy::audit::AuditKey {
            public,
            status: KeyStatus::Active,
        })
    };
    head.verify(&lookup).unwrap();
    verify_export(&data[..], &lookup, None).unwrap();
}

#[test]
fn the_signature_is_domain_separated_and_covers_every_field() {
    let k = key();
    let keys = keys_for(&k, 2, KeyStatus::Active);
    let head = TreeHead {
        size: 5,
        root: [7; 32],
        time_ms: T0,
        key_id: 2,
    };
    let sth = SignedTreeHead::sign(&k, head);
    sth.verify(&keys).unwrap();
    assert!(
        head.signed_message()
            .starts_with(b"ringzero audit tree head v1\0")
    );
    // Signing the bare fields without the domain does not give a valid head signature.
    let bare = k.sign(&head.signed_message()[28..]).as_ref().to_vec();
    assert!(
        SignedTreeHead {
            head,
            signature: bare
        }
        .verify(&keys)
        .is_err()
    );
    for changed in [
        TreeHead { size: 6, ..head },
        TreeHead {
            root: [8; 32],
            ..head
        },
        TreeHead {
            time_ms: T0 + 1,
            ..head
        },
    ] {
        let forged = SignedTreeHead {
            head: changed,
            signature: sth.signature.clone(),
        };
        assert!(forged.verify(&keys).is_err());
    }
}

#[test]
fn rolled_back_or_forked_heads_are_refused() {
    let k = key();
    let keys = keys_for(&k, 1, KeyStatus::Active);
    let all = entries(0..300);
    let (full, full_head) = export(&Frontier::new(), &all, &k, 1, opts(64, true));
    // The trusted head is a prefix of the export: fine, also mid-window.
    let mut tree = MerkleTree::new();
    all.iter().for_each(|r| tree.push(r.leaf_hash()));
    for t in [0, 1, 64, 100, 299, 300] {
        let trusted = TreeHead {
            size: t,
            root: tree.root(t).unwrap(),
            time_ms: T0,
            key_id: 1,
        };
        verify_export(&full[..], &keys, Some(&trusted)).unwrap();
    }
    // An older export than the trusted head.
    let (older, _) = export(&Frontier::new(), &all[..200], &k, 1, opts(64, true));
    assert!(matches!(
        verify_export(&older[..], &keys, Some(&full_head.head)),
        Err(ExportError::Rollback {
            seen_size: 300,
            got_size: 200
        })
    ));
    // A fork: same size, different root (one record differs, everything validly signed).
    let mut forked = all.clone();
    forked[150].outcome = "rewritten".to_owned();
    let (fork, fork_head) = export(&Frontier::new(), &forked, &k, 1, opts(64, true));
    verify(&fork, &keys).unwrap();
    assert!(matches!(
        verify_export(&fork[..], &keys, Some(&full_head.head)),
        Err(ExportError::Rollback {
            seen_size: 300,
            got_size: 300
        })
    ));
    // …or a trusted head inside the export that the fork disagrees with.
    let trusted = TreeHead {
        size: 200,
        root: tree.root(200).unwrap(),
        time_ms: T0,
        key_id: 1,
    };
    assert!(matches!(
        verify_export(&fork[..], &keys, Some(&trusted)),
        Err(ExportError::Rollback {
            seen_size: 200,
            got_size: 256
        })
    ));
    // Two signed heads of one size with different roots in one file: equivocation.
    let mut ls = lines(&full);
    let fork_line = lines(&fork).pop().unwrap();
    ls.push(fork_line);
    assert!(matches!(
        verify(&join(&ls), &keys),
        Err(ExportError::Forked { size: 300 })
    ));
    assert_ne!(fork_head.head.root, full_head.head.root);
}

#[test]
fn segments_chain_through_the_trusted_head() {
    let k = key();
    let keys = keys_for(&k, 1, KeyStatus::Active);
    let all = entries(0..3500);
    let mut tree = MerkleTree::new();
    all.iter().for_each(|r| tree.push(r.leaf_hash()));

    let (first, first_head) = export(
        &Frontier::new(),
        &all[..2000],
        &k,
        1,
        ExportOptions::default(),
    );
    let v1 = verify(&first, &keys).unwrap();
    let (second, second_head) = export(&v1.frontier, &all[2000..], &k, 1, ExportOptions::default());
    assert!(String::from_utf8_lossy(&second).starts_with("{\"type\":\"ringzero.audit.segment\""));

    // Continuity from the remembered head; the tree keeps growing across segments.
    let v2 = verify_export(&second[..], &keys, Some(&first_head.head)).unwrap();
    assert_eq!(v2.first_seq, 2000);
    assert_eq!(v2.records, all[2000..]);
    assert_eq!(second_head.head.root, tree.root(3500).unwrap());

    // A trusted head before the segment needs a consistency proof to its start.
    let old = TreeHead {
        size: 1000,
        root: tree.root(1000).unwrap(),
        time_ms: T0,
        key_id: 1,
    };
    assert!(matches!(
        verify_export(&second[..], &keys, Some(&old)),
        Err(ExportError::ConsistencyRequired {
            from: 1000,
            to: 2000
        })
    ));
    let proof = consistency_proof(&tree, 1000, 2000).unwrap();
    let with_proof = |proof: &[[u8; 32]], trusted: &TreeHead| {
        verify_export_with(
            &second[..],
            &keys,
            &VerifyOptions {
                trusted: Some(trusted),
                trusted_consistency: Some(proof),
                keep_records: false,
                ..VerifyOptions::default()
            },
        )
    };
    with_proof(&proof, &old).unwrap();
    let mut bad = proof.clone();
    bad[0][0] ^= 1;
    assert!(matches!(
        with_proof(&bad, &old),
        Err(ExportError::Rollback {
            seen_size: 1000,
            ..
        })
    ));

    // A segment that does not continue the trusted tree (another history before it).
    let mut other = all[..2000].to_vec();
    other[10].actor = "local:someone-else".to_owned();
    let mut other_frontier = Frontier::new();
    other
        .iter()
        .for_each(|r| other_frontier.push(r.leaf_hash()));
    let (forked_segment, _) = export(
        &other_frontier,
        &all[2000..],
        &k,
        1,
        ExportOptions::default(),
    );
    assert!(matches!(
        verify_export(&forked_segment[..], &keys, Some(&first_head.head)),
        Err(ExportError::Rollback {
            seen_size: 2000,
            ..
        })
    ));

    // An edited segment line is caught (the frontier no longer matches the signed heads).
    let mut ls = lines(&second);
    let mut seg: serde_json::Value = serde_json::from_str(&ls[0]).unwrap();
    let mut f = v1.frontier.nodes().to_vec();
    f[0][0] ^= 1;
    let edited = Frontier::from_parts(2000, f.clone()).unwrap();
    seg["prior_frontier"] = f.iter().map(hex::encode).collect::<Vec<_>>().into();
    seg["prior_root"] = hex::encode(edited.root()).into();
    ls[0] = serde_json::to_string(&seg).unwrap();
    assert!(matches!(
        verify(&join(&ls), &keys),
        Err(ExportError::AlteredWithin {
            first_seq: 2000,
            ..
        })
    ));
    // A segment line anywhere but first is malformed.
    let mut ls = lines(&second);
    ls.insert(2, ls[0].clone());
    assert!(matches!(
        verify(&join(&ls), &keys),
        Err(ExportError::Malformed { line: 3, .. })
    ));
    // Without it, the records do not start at 0.
    assert!(matches!(
        verify(&join(&lines(&second)[1..]), &keys),
        Err(ExportError::Dropped { expected_seq: 0 })
    ));
}

#[test]
fn garbage_is_malformed_not_a_panic() {
    let k = key();
    let keys = keys_for(&k, 1, KeyStatus::Active);
    let (data, _) = export(
        &Frontier::new(),
        &entries(0..3),
        &k,
        1,
        ExportOptions::default(),
    );
    let good = lines(&data);
    let record = &good[0];
    let cases: Vec<Vec<u8>> = vec![
        b"not json\n".to_vec(),
        b"{}\n".to_vec(),
        b"[1,2,3]\n".to_vec(),
        b"\xff\xfe\n".to_vec(),
        b"{\"type\":\"ringzero.audit.record\",\"v\":2}\n".to_vec(),
        b"{\"type\":\"something.else\",\"v\":1}\n".to_vec(),
        record.replace("\"v\":1,", "\"v\":1,\"extra\":true,").into_bytes(),
        record.replace("\"v\":1,", "\"v\":1,\"seq\":0,").into_bytes(),
        record.replace("\"v\":1,", "\"v\":1,\"size\":0,").into_bytes(),
        record.replace("\"outcome\":\"done\",", "").into_bytes(),
        record.replace("\"seq\":0", "\"seq\":-1").into_bytes(),
        record.replace("\"seq\":0", "\"seq\":18446744073709551616").into_bytes(),
        record.replace("\"allow\"", "\"maybe\"").into_bytes(),
        record.as_bytes()[..record.len() / 2].to_vec(),
        good[3].replace("\"root\":\"", "\"root\":\"zz").into_bytes(),
        good[3].replace("\"signature\":\"", "\"signature\":\"!!").into_bytes(),
        format!("{}\n", "{\"a\":".repeat(10_000)).into_bytes(),
        vec![b'x'; (1 << 20) + 10],
        b"{\"type\":\"ringzero.audit.segment\",\"v\":1,\"first_seq\":3,\"prior_size\":3,\"prior_root\":\"00\",\"prior_frontier\":[]}\n".to_vec(),
    ];
    for (i, case) in cases.iter().enumerate() {
        let mut input = case.clone();
        if (6..14).contains(&i) {
            // Record-level garbage stands where record 0 was.
            input = [case.clone(), b"\n".to_vec(), join(&good[1..])].concat();
        }
        match verify(&input, &keys) {
            Err(ExportError::Malformed { line: 1, .. }) => {}
            other => panic!("case {i}: {other:?}"),
        }
    }
    // A head line whose leaf hashes are garbage still only serves to localize.
    let mut ls = good.clone();
    let mut head: serde_json::Value = serde_json::from_str(&ls[3]).unwrap();
    head["leaves"] = "%%%".into();
    ls[3] = serde_json::to_string(&head).unwrap();
    verify(&join(&ls), &keys).unwrap();
}
