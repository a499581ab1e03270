//! The agent side of the authority API against a real authority process: enrollment with a
//! pinned join token, SVIDs only for the node's own entries, the incremental entry feed,
//! entries, eviction and bans. The test plays the agents through the library client, with
//! keys generated here, exactly as an agent would (the `ringzero agent` daemon is tested
//! end to end in `agent_processes.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime};

use ringzero_authority::store::StateMachineStore;
use ringzero_policy::join::{JoinToken, pin_matches};
use ringzero_policy::svid::{TrustBundle, Usage, csr_for, generate_key, validate_svid};
use ringzero_policy::{SpiffeId, TrustDomain};
use ringzero_proto::client::{
    AuthorityClient, Credentials, Profile, bundle_cas, fetch_bundle_unverified, redeem_join_token,
};
use ringzero_proto::pb;
use ringzero_tests::SoloAuthority;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const TD: &str = "agents.test";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn admin(a: &SoloAuthority) -> AuthorityClient {
    let p = Profile::from_toml(&std::fs::read_to_string(&a.profile).unwrap()).unwrap();
    AuthorityClient::new(p.credentials().unwrap(), p.authorities.clone())
}

async fn node_token(admin: &mut AuthorityClient, name: &str, ttl: u64) -> String {
    let name = name.to_owned();
    admin
        .call(|mut g| {
            let node_name = name.clone();
            async move {
                g.create_join_token(pb::CreateJoinTokenRequest {
                    purpose: "agent".into(),
                    node_name,
                    ttl_seconds: ttl,
                    namespace: String::new(),
                })
                .await
            }
        })
        .await
        .unwrap()
        .token
}

/// An enrolled agent's credentials.
struct Agent {
    name: String,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
    token: String,
    bundle: TrustBundle,
    addr: String,
}

impl Agent {
    fn client(&self) -> AuthorityClient {
        self.client_with_token(&self.token)
    }

    fn client_with_token(&self, token: &str) -> AuthorityClient {
        let creds = Credentials::new(
            TrustDomain::new(TD).unwrap(),
            self.bundle.clone(),
            self.chain.clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
            Some(token.to_owned()),
        );
        AuthorityClient::new(creds, vec![self.addr.clone()])
    }
}

/// Enrolls as an agent would: fetch the bundle, check the pin, only then present the secret.
async fn enroll(addr: &str, token: &str) -> Result<Agent, ringzero_proto::client::ClientError> {
    let token = JoinToken::parse(token).unwrap();
    let bundle = fetch_bundle_unverified(addr).await?;
    let cas = bundle_cas(&bundle);
    assert!(pin_matches(&token.pin, &cas), "the pin must match");
    let td = TrustDomain::new(TD).unwrap();
    let bundle = TrustBundle::new(td.clone(), cas).unwrap();
    let key = generate_key().unwrap();
    // The CSR names some ID; the authority decides the node ID from the token.
    let csr = csr_for(&key, &td.id_with_path(&["ringzero", "node", "x"]).unwrap()).unwrap();
    let reply = redeem_join_token(addr, &bundle, &token, &csr).await?;
    let chain: Vec<CertificateDer<'static>> = reply
        .svid_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let v = validate_svid(&chain, &bundle, SystemTime::now(), Usage::Client).unwrap();
    let name = v.id.segments().last().unwrap().to_owned();
    assert_eq!(v.id.path(), format!("/ringzero/node/{name}"));
    // Node SVIDs are short-lived.
    let ttl = v.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(ttl <= Duration::from_secs(3600), "{ttl:?}");
    assert!(!reply.token.is_empty(), "an agent receives its capability");
    Ok(Agent {
        name,
        chain,
        key: key.serialize_der(),
        token: reply.token,
        bundle,
        addr: addr.to_owned(),
    })
}

fn entry_req(spiffe_id: &str, parent: &str, selectors: &[&str]) -> pb::PutEntryRequest {
    pb::PutEntryRequest {
        id: String::new(),
        spiffe_id: spiffe_id.into(),
        parent: parent.into(),
        selectors: selectors.iter().map(|s| s.to_string()).collect(),
        ttl_seconds: 600,
        dns_names: vec![],
        allow_weak_selectors: false,
    }
}

async fn create_entry(
    admin: &mut AuthorityClient,
    req: pb::PutEntryRequest,
) -> Result<pb::RegistrationEntry, ringzero_proto::client::ClientError> {
    admin
        .call(|mut g| {
            let r = req.clone();
            async move { g.create_entry(r).await }
        })
        .await
        .map(|r| r.entry.unwrap())
}

async fn mint(
    agent: &mut AuthorityClient,
    ids: &[&str],
) -> Result<Vec<(pb::MintedSvid, rcgen::KeyPair)>, ringzero_proto::client::ClientError> {
    let mut keys = Vec::new();
    let mut requests = Vec::new();
    for id in ids {
        let key = generate_key().unwrap();
        let any = SpiffeId::parse(&format!("spiffe://{TD}/csr")).unwrap();
        requests.push(pb::SvidRequest {
            entry_id: id.to_string(),
            csr: csr_for(&key, &any).unwrap(),
        });
        keys.push(key);
    }
    let reply = agent
        .call(|mut g| {
            let requests = requests.clone();
            async move { g.mint_svids(pb::MintSvidsRequest { requests }).await }
        })
        .await?;
    Ok(reply.svids.into_iter().zip(keys).collect())
}

async fn next_event(
    stream: &mut tonic::Streaming<pb::SyncEntriesEvent>,
) -> Result<pb::SyncEntriesEvent, tonic::Status> {
    match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
        Ok(Ok(Some(e))) => Ok(e),
        Ok(Ok(None)) => panic!("the feed ended"),
        Ok(Err(s)) => Err(s),
        Err(_) => panic!("no feed event within 2 s"),
    }
}

async fn open_feed(
    agent: &mut AuthorityClient,
    since: u64,
) -> tonic::Streaming<pb::SyncEntriesEvent> {
    agent
        .call(|mut g| async move {
            g.sync_entries(pb::SyncEntriesRequest {
                since_revision: since,
                ..Default::default()
            })
            .await
        })
        .await
        .unwrap()
}

#[test]
fn agents_get_only_their_own_identities_and_follow_their_entries() {
    let a = SoloAuthority::start("agent-api", TD);
    let rt = runtime();
    rt.block_on(async {
        let mut admin = admin(&a);
        let t1 = node_token(&mut admin, "n1", 600).await;
        let t2 = node_token(&mut admin, "n2", 600).await;
        let n1 = enroll(&a.addr, &t1).await.unwrap();
        let n2 = enroll(&a.addr, &t2).await.unwrap();
        assert_eq!((n1.name.as_str(), n2.name.as_str()), ("n1", "n2"));

        // A join token works once.
        let again = enroll(&a.addr, &t1).await.err().expect("reuse refused");
        assert!(again.to_string().contains("already used"), "{again}");

        let web = create_entry(
            &mut admin,
            entry_req(&format!("spiffe://{TD}/ns/a/web"), "n1", &["unix:uid:1000"]),
        )
        .await
        .unwrap();
        let db = create_entry(
            &mut admin,
            entry_req(&format!("spiffe://{TD}/ns/b/db"), "n2", &["unix:uid:1001"]),
        )
        .await
        .unwrap();
        // Identical selectors with another SPIFFE ID are allowed.
        create_entry(
            &mut admin,
            entry_req(
                &format!("spiffe://{TD}/ns/a/web2"),
                "n1",
                &["unix:uid:1000"],
            ),
        )
        .await
        .unwrap();
        // Weak selectors need the explicit flag; nonsense is refused with a reason.
        let weak = create_entry(
            &mut admin,
            entry_req(
                &format!("spiffe://{TD}/ns/a/w"),
                "n1",
                &["unix:path:/usr/bin/w"],
            ),
        )
        .await
        .unwrap_err();
        assert!(
            weak.to_string().contains("--allow-weak-selectors"),
            "{weak}"
        );
        let mut ok_weak = entry_req(
            &format!("spiffe://{TD}/ns/a/w"),
            "n1",
            &["unix:path:/usr/bin/w"],
        );
        ok_weak.allow_weak_selectors = true;
        create_entry(&mut admin, ok_weak).await.unwrap();
        for bad in [
            entry_req("spiffe://other.test/ns/a/x", "n1", &["unix:uid:1"]),
            entry_req(&format!("spiffe://{TD}/ns/a/x"), "n/1", &["unix:uid:1"]),
            entry_req(&format!("spiffe://{TD}/ns/a/x"), "n1", &["unix:uid:abc"]),
            entry_req(&format!("spiffe://{TD}/ns/a/x"), "n1", &[]),
            pb::PutEntryRequest {
                ttl_seconds: 5,
                ..entry_req(&format!("spiffe://{TD}/ns/a/x"), "n1", &["unix:uid:1"])
            },
        ] {
            let e = create_entry(&mut admin, bad.clone()).await.unwrap_err();
            assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{bad:?}: {e}");
        }

        // n1 gets its own entry's SVID; asking for n2's entry with its own credentials, it
        // gets nothing, and the refusal is audited.
        let mut c1 = n1.client();
        let minted = mint(&mut c1, &[&web.id, &db.id, "nope"]).await.unwrap();
        let (own, _) = &minted[0];
        assert!(own.error.is_empty(), "{}", own.error);
        let chain: Vec<CertificateDer<'static>> = own
            .svid_chain
            .iter()
            .cloned()
            .map(CertificateDer::from)
            .collect();
        let v = validate_svid(&chain, &n1.bundle, SystemTime::now(), Usage::Client).unwrap();
        assert_eq!(v.id.as_str(), format!("spiffe://{TD}/ns/a/web"));
        let (other, _) = &minted[1];
        assert!(other.svid_chain.is_empty());
        assert!(other.error.contains("not parented"), "{}", other.error);
        assert!(minted[2].0.svid_chain.is_empty());

        // n1's capability presented over n2's identity is refused (bound to n1's SVID).
        let mut stolen = n2.client_with_token(&n1.token);
        let e = mint(&mut stolen, &[&db.id]).await.unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
        // An admin token does not make an admin an agent: the node comes from the SVID.
        let admin_token = Profile::from_toml(&std::fs::read_to_string(&a.profile).unwrap())
            .unwrap()
            .token;
        let mut admin_as_agent = AuthorityClient::new(
            Profile::from_toml(&std::fs::read_to_string(&a.profile).unwrap())
                .unwrap()
                .credentials()
                .unwrap(),
            vec![a.addr.clone()],
        );
        let e = mint(&mut admin_as_agent, &[&web.id]).await.unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
        drop(admin_token);

        // The feed: everything of n1 first, then each change as it happens.
        let mut feed = open_feed(&mut c1, 0).await;
        let first = next_event(&mut feed).await.unwrap();
        assert!(first.synced);
        assert!(first.bundle.is_some());
        assert!(
            first.revocations.is_some(),
            "the revocation set comes first"
        );
        let mut ids: Vec<&str> = first.upserts.iter().map(|e| e.spiffe_id.as_str()).collect();
        ids.sort();
        assert_eq!(
            ids,
            [
                format!("spiffe://{TD}/ns/a/w"),
                format!("spiffe://{TD}/ns/a/web"),
                format!("spiffe://{TD}/ns/a/web2")
            ]
        );
        assert!(first.upserts.iter().all(|e| e.parent == "n1"));
        let c = create_entry(
            &mut admin,
            entry_req(&format!("spiffe://{TD}/ns/a/c"), "n1", &["unix:gid:5"]),
        )
        .await
        .unwrap();
        let ev = next_event(&mut feed).await.unwrap();
        assert_eq!(ev.upserts.len(), 1);
        assert_eq!(ev.upserts[0].id, c.id);
        assert!(ev.revision >= c.revision);
        // Moving an entry to another node removes it from this node's feed.
        let mut moved = entry_req(&c.spiffe_id, "n2", &["unix:gid:5"]);
        moved.id = c.id.clone();
        admin
            .call(|mut g| {
                let r = moved.clone();
                async move { g.update_entry(r).await }
            })
            .await
            .unwrap();
        let ev = next_event(&mut feed).await.unwrap();
        assert_eq!(ev.removed, vec![c.id.clone()]);
        assert!(ev.upserts.is_empty());
        let resume_from = ev.revision;
        // A deletion.
        let del = web.id.clone();
        admin
            .call(|mut g| {
                let id = del.clone();
                async move { g.delete_entry(pb::DeleteEntryRequest { id }).await }
            })
            .await
            .unwrap();
        let ev = next_event(&mut feed).await.unwrap();
        assert_eq!(ev.removed, vec![web.id.clone()]);
        // Resuming from a revision brings only what came after it.
        let mut resumed = open_feed(&mut c1, resume_from).await;
        let ev = next_event(&mut resumed).await.unwrap();
        assert!(ev.synced);
        assert_eq!(ev.removed, vec![web.id.clone()]);
        assert!(ev.upserts.is_empty());

        // Listing pages through everything.
        for i in 0..7 {
            create_entry(
                &mut admin,
                entry_req(&format!("spiffe://{TD}/ns/p/s{i}"), "n3", &["unix:uid:7"]),
            )
            .await
            .unwrap();
        }
        let mut seen = Vec::new();
        let mut page_token = String::new();
        let mut pages = 0;
        loop {
            let req = pb::ListEntriesRequest {
                parent: "n3".into(),
                spiffe_id: String::new(),
                page_token: page_token.clone(),
                page_size: 3,
            };
            let reply = admin
                .call(|mut g| {
                    let r = req.clone();
                    async move { g.list_entries(r).await }
                })
                .await
                .unwrap();
            pages += 1;
            seen.extend(reply.entries.into_iter().map(|e| e.spiffe_id));
            if reply.next_page_token.is_empty() {
                break;
            }
            page_token = reply.next_page_token;
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 7);
        assert!(pages >= 3);

        // Renewal works with the current SVID, then eviction stops it, and the open feed.
        let key = generate_key().unwrap();
        let csr = csr_for(&key, &SpiffeId::parse(&format!("spiffe://{TD}/x")).unwrap()).unwrap();
        let renewed = c1
            .call(|mut g| {
                let csr = csr.clone();
                async move { g.renew_node(pb::RenewNodeRequest { csr }).await }
            })
            .await
            .unwrap();
        assert!(!renewed.token.is_empty());
        // n2 watches its feed: n1's eviction revokes n1's serials, and every node learns it.
        let mut c2 = n2.client();
        let mut feed2 = open_feed(&mut c2, 0).await;
        let first2 = next_event(&mut feed2).await.unwrap();
        assert!(first2.revocations.unwrap().serials.is_empty());
        let node_serial = validate_svid(&n1.chain, &n1.bundle, SystemTime::now(), Usage::Client)
            .unwrap()
            .serial;
        admin
            .call(|mut g| async move {
                g.set_node_status(pb::SetNodeStatusRequest {
                    name: "n1".into(),
                    status: "evicted".into(),
                })
                .await
            })
            .await
            .unwrap();
        let revoked = loop {
            let ev = next_event(&mut feed2).await.unwrap();
            if let Some(r) = ev.revocations {
                break r;
            }
        };
        let serials: Vec<Vec<u8>> = revoked.serials.iter().map(|s| s.serial.clone()).collect();
        assert!(
            serials.contains(&v.serial),
            "the workload SVID's serial is revoked"
        );
        assert!(
            serials.contains(&node_serial),
            "the node SVID's serial is revoked"
        );
        let e = c1
            .call(|mut g| {
                let csr = csr.clone();
                async move { g.renew_node(pb::RenewNodeRequest { csr }).await }
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
        assert!(e.to_string().contains("evicted"), "{e}");
        let ended = loop {
            match next_event(&mut feed).await {
                Ok(_) => continue,
                Err(s) => break s,
            }
        };
        assert_eq!(ended.code(), tonic::Code::PermissionDenied);
        // An evicted node may enroll again with a new token; a banned name may not.
        let t1b = node_token(&mut admin, "n1", 600).await;
        enroll(&a.addr, &t1b).await.unwrap();
        let t2b = node_token(&mut admin, "n2", 600).await;
        admin
            .call(|mut g| async move {
                g.set_node_status(pb::SetNodeStatusRequest {
                    name: "n2".into(),
                    status: "banned".into(),
                })
                .await
            })
            .await
            .unwrap();
        let e = enroll(&a.addr, &t2b).await.err().expect("banned");
        assert!(e.to_string().contains("banned"), "{e}");
        // A joiner naming another node than the token's is refused, and the token stays
        // unused for the right node.
        let t5 = node_token(&mut admin, "n5", 600).await;
        let jt = JoinToken::parse(&t5).unwrap();
        let key = generate_key().unwrap();
        let csr = csr_for(&key, &SpiffeId::parse(&format!("spiffe://{TD}/x")).unwrap()).unwrap();
        let e = ringzero_proto::client::redeem_join_token_as(&a.addr, &n1.bundle, &jt, "n6", &csr)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("another node name"), "{e}");
        ringzero_proto::client::redeem_join_token_as(&a.addr, &n1.bundle, &jt, "n5", &csr)
            .await
            .unwrap();
        // An expired join token is refused.
        let short = node_token(&mut admin, "n4", 1).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let e = enroll(&a.addr, &short).await.err().expect("expired");
        assert!(e.to_string().contains("expired"), "{e}");
    });

    // The audit log holds every issued SVID and the refused request for n2's entry.
    let mut a = a;
    a.proc.terminate(Duration::from_secs(10));
    let sm = StateMachineStore::open(
        &a.dir.join("raft/state.redb"),
        &a.dir.join("raft/snapshots"),
    )
    .unwrap();
    let audit = sm.reader().unwrap().audit(0, usize::MAX).unwrap();
    let issued: Vec<_> = audit
        .iter()
        .filter(|r| {
            r.record.operation == "svid:mint"
                && r.record
                    .details
                    .iter()
                    .any(|(k, v)| k == "spiffe_id" && v.ends_with("/ns/a/web"))
        })
        .collect();
    assert_eq!(issued.len(), 1);
    let d = &issued[0].record.details;
    for k in ["svid_serial", "node", "public_key_sha256", "not_after"] {
        assert!(d.iter().any(|(key, _)| key == k), "{k} missing in {d:?}");
    }
    assert!(audit.iter().any(|r| {
        r.record.operation == "svid:mint"
            && r.record
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("another node")
    }));
}

/// A feed heartbeat comes at most FEED_HEARTBEAT (10 s) after the last event, even while
/// entries that concern other nodes are applied all along: such applies wake the feed, send
/// nothing, and must not put the heartbeat off (the agent's watchdog and its revocation
/// freshness live on it).
#[test]
fn a_feed_beats_while_unrelated_entries_are_applied() {
    let a = SoloAuthority::start("feed-beat", TD);
    let rt = runtime();
    rt.block_on(async {
        let mut admin = admin(&a);
        let t1 = node_token(&mut admin, "n1", 600).await;
        let n1 = enroll(&a.addr, &t1).await.unwrap();
        let mut c1 = n1.client();
        let mut feed = open_feed(&mut c1, 0).await;
        loop {
            if next_event(&mut feed).await.unwrap().synced {
                break;
            }
        }
        let start = std::time::Instant::now();
        // Writes that change nothing n1 is sent: join tokens for other nodes, every 300 ms.
        let writer = tokio::spawn(async move {
            for i in 0..60 {
                node_token(&mut admin, &format!("other{i}"), 600).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let beat = tokio::time::timeout(Duration::from_secs(13), feed.message())
            .await
            .expect("a heartbeat within 13 s despite the writes")
            .unwrap()
            .expect("the feed goes on");
        assert!(
            beat.upserts.is_empty() && beat.removed.is_empty(),
            "{beat:?}"
        );
        assert!(
            start.elapsed() >= Duration::from_secs(9),
            "{:?}",
            start.elapsed()
        );
        writer.abort();
    });
}
