//! The audit API of a real authority process, through the library client: a signed tree head
//! that verifies only against the audit keys pinned in the admin profile, an export that
//! verifies, proofs, queries of denials, and sealing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ringzero_policy::audit::{
    AuditEntry, AuditKeys, KeyStatus, SignedTreeHead, TreeHead, verify_consistency, verify_export,
    verify_inclusion,
};
use ringzero_proto::client::{AuthorityClient, Profile};
use ringzero_proto::pb;
use ringzero_tests::SoloAuthority;

fn pinned(p: &Profile) -> AuditKeys {
    let mut keys = AuditKeys::new();
    for k in &p.audit_keys {
        keys.insert(k.id, k.public_key_bytes().unwrap(), KeyStatus::Active);
    }
    keys
}

fn head(h: &pb::SignedTreeHead) -> SignedTreeHead {
    SignedTreeHead {
        head: TreeHead {
            size: h.size,
            root: h.root.clone().try_into().unwrap(),
            time_ms: h.time_ms,
            key_id: h.key_id,
        },
        signature: h.signature.clone(),
    }
}

async fn export(c: &mut AuthorityClient, since: u64) -> Vec<u8> {
    let mut stream = c
        .call(|mut g| async move {
            g.export_audit(pb::ExportAuditRequest {
                since_seq: since,
                until_seq: 0,
            })
            .await
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        out.extend(chunk.data);
    }
    out
}

#[test]
fn heads_proofs_exports_queries_and_seals() {
    let a = SoloAuthority::start("audit-api", "audit.test");
    // A denial to find later: a call with a garbage token.
    let out = a.cli(&["--token", "garbage", "authority", "status"]);
    assert!(!out.status.success());
    let profile = Profile::from_toml(&std::fs::read_to_string(&a.profile).unwrap()).unwrap();
    assert!(
        !profile.audit_keys.is_empty(),
        "bootstrap pins the audit key"
    );
    let keys = pinned(&profile);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c =
            AuthorityClient::new(profile.credentials().unwrap(), profile.authorities.clone());
        let h1 = c
            .call(|mut g| async move { g.get_tree_head(pb::GetTreeHeadRequest {}).await })
            .await
            .unwrap();
        let s1 = head(&h1);
        s1.verify(&keys).unwrap();
        assert!(
            s1.verify(&AuditKeys::new()).is_err(),
            "no pinned key, no trust"
        );

        // The export verifies against the pinned keys and ends at least at that head.
        let bytes = export(&mut c, 0).await;
        let v = verify_export(bytes.as_slice(), &keys, Some(&s1.head)).unwrap();
        assert!(v.head.head.size >= h1.size);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains(&profile.token), "a token in the audit log");
        assert!(!text.contains("garbage") || text.contains("revocation_ids"));

        // Consistency from the first head to a later one.
        let h2 = c
            .call(|mut g| async move { g.get_tree_head(pb::GetTreeHeadRequest {}).await })
            .await
            .unwrap();
        assert!(h2.size > h1.size);
        let (old, new) = (h1.size, h2.size);
        let proof = c
            .call(|mut g| async move {
                g.get_consistency_proof(pb::ConsistencyProofRequest {
                    old_size: old,
                    new_size: new,
                })
                .await
            })
            .await
            .unwrap();
        let hashes: Vec<[u8; 32]> = proof
            .hashes
            .iter()
            .map(|h| h.clone().try_into().unwrap())
            .collect();
        verify_consistency(old, new, &s1.head.root, &head(&h2).head.root, &hashes).unwrap();

        // Inclusion of record 0.
        let p = c
            .call(|mut g| async move {
                g.get_inclusion_proof(pb::InclusionProofRequest {
                    seq: 0,
                    tree_size: new,
                })
                .await
            })
            .await
            .unwrap();
        let leaf = AuditEntry::from_leaf_bytes(&p.leaf).unwrap().leaf_hash();
        let hashes: Vec<[u8; 32]> = p
            .hashes
            .iter()
            .map(|h| h.clone().try_into().unwrap())
            .collect();
        verify_inclusion(&leaf, 0, new, &hashes, &head(&h2).head.root).unwrap();

        // The denial is found through the denial index.
        let q = c
            .call(|mut g| async move {
                g.query_audit(pb::QueryAuditRequest {
                    decision: "deny".into(),
                    ..Default::default()
                })
                .await
            })
            .await
            .unwrap();
        let denials: Vec<AuditEntry> = q
            .records
            .iter()
            .map(|r| AuditEntry::from_leaf_bytes(r).unwrap())
            .collect();
        assert!(
            denials.iter().any(|d| d.operation == "authority:read"),
            "{denials:?}"
        );

        // Seal the first records with the root of a verified export: they leave the live log,
        // the tree stays, and exports continue from the sealed point as a segment.
        let up_to = v.head.head.size;
        let root = v.head.head.root.to_vec();
        let wrong = c
            .call(|mut g| async move {
                g.seal_audit(pb::SealAuditRequest {
                    up_to_seq: up_to,
                    root: vec![0; 32],
                })
                .await
            })
            .await
            .unwrap_err();
        assert_eq!(
            wrong.code(),
            Some(tonic::Code::FailedPrecondition),
            "{wrong}"
        );
        c.call(|mut g| {
            let root = root.clone();
            async move {
                g.seal_audit(pb::SealAuditRequest {
                    up_to_seq: up_to,
                    root,
                })
                .await
            }
        })
        .await
        .unwrap();
        let h3 = c
            .call(|mut g| async move { g.get_tree_head(pb::GetTreeHeadRequest {}).await })
            .await
            .unwrap();
        assert_eq!(h3.sealed_up_to, up_to);
        let rest = export(&mut c, up_to).await;
        let seg = verify_export(rest.as_slice(), &keys, Some(&v.head.head)).unwrap();
        assert_eq!(seg.first_seq, up_to);
    });
}
