//! Attacker: a removed or compromised authority node. Node 3 of three voters is removed with
//! `authority remove 3`; the attacker kept a copy of its `keys/` (taken before the removal: the
//! removed node deletes its own) and signs with them afterwards. A current member (node 2) sends
//! Raft messages that claim to come from another node. Last, someone on the host opens up a
//! stopped node's data directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ringzero_policy::audit::{AuditEntry, ExportOptions, Frontier, write_export};
use ringzero_policy::svid::{TrustBundle, Usage, validate_svid};
use ringzero_policy::token::{Lifetime, MintRequest, RootKey, RootKeyId};
use ringzero_policy::{Operation, Resource, Right};
use ringzero_proto::client::Profile;
use ringzero_proto::pb;
use ringzero_tests::cluster::*;
use ringzero_tests::{cp_a, ringzero, run_timeout, show, wait_until};

use crate::common::*;

const REMOVED: &str = "removed or compromised authority node";
const LOCAL: &str = "local host";

/// The private key files in `dir/keys`.
fn key_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("keys"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".key"))
                .collect()
        })
        .unwrap_or_default()
}

/// `authority run --data-dir DIR`, which must exit (it is expected to refuse).
fn run_refused(c: &Cluster, dir: &Path) -> std::process::Output {
    let mut cmd = ringzero(c.path());
    cmd.args(["authority", "run", "--data-dir"]).arg(dir);
    let out = run_timeout(cmd, CLI_TIMEOUT);
    assert!(
        !out.status.success(),
        "authority run started: {}",
        show(&out)
    );
    out
}

fn bundle(c: &Cluster) -> pb::Bundle {
    let rt = runtime();
    let profile = c.profile();
    rt.block_on(async {
        pb::authority_client::AuthorityClient::new(channel(
            &c.nodes[0].addr,
            anonymous_tls(&profile),
        ))
        .get_bundle(pb::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner()
    })
}

fn key_of(b: &pb::Bundle, authority: u64, kind: &str) -> pb::BundleKey {
    b.keys
        .iter()
        .find(|k| k.authority == authority && k.kind == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} key of node {authority}: {b:?}"))
}

/// A `Status` call to `addr` over `svid` with `token`.
fn status_over(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    profile: &Profile,
    svid: &Svid,
    token: Option<&str>,
) -> Result<(), tonic::Status> {
    rt.block_on(async {
        pb::authority_client::AuthorityClient::new(channel(addr, mtls(profile, svid)))
            .status(with_bearer(pb::StatusRequest {}, token))
            .await
            .map(|_| ())
    })
}

fn raft_call(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    profile: &Profile,
    svid: &Svid,
    append: bool,
    data: Vec<u8>,
) -> Result<(), tonic::Status> {
    rt.block_on(async {
        let mut client = pb::raft_client::RaftClient::new(channel(addr, mtls(profile, svid)));
        let req = with_bearer(pb::RaftPayload { data }, None);
        if append {
            client.append_entries(req).await.map(|_| ())
        } else {
            client.vote(req).await.map(|_| ())
        }
    })
}

/// One AppendEntries over the `AppendStream` call (what a leader's replication uses): the
/// refusal is either the stream's opening status or its first item.
fn raft_stream_call(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    profile: &Profile,
    svid: &Svid,
    data: Vec<u8>,
) -> Result<(), tonic::Status> {
    rt.block_on(async {
        let mut client = pb::raft_client::RaftClient::new(channel(addr, mtls(profile, svid)));
        let messages = tokio_stream::iter(vec![pb::RaftPayload { data }]);
        let mut answers = client.append_stream(messages).await?.into_inner();
        match answers.message().await? {
            Some(_) => Ok(()),
            None => Err(tonic::Status::unknown("the stream ended without an answer")),
        }
    })
}

/// An SVID for `id` signed by the CA in `keys` (a copy of a node's `keys/`) with a chosen
/// serial number, as only the holder of a CA key can make one.
fn forge_with_serial(keys: &Path, id: &str, serial: &[u8]) -> Svid {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    };
    let ca_der =
        rustls_pki_types::CertificateDer::from(std::fs::read(keys.join("ca.der")).unwrap());
    let ca_key = KeyPair::try_from(std::fs::read(keys.join("ca.key")).unwrap().as_slice()).unwrap();
    let issuer = Issuer::from_ca_cert_der(&ca_der, &ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ringzero");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + Duration::from_secs(3600)).into();
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).unwrap();
    Svid {
        chain: vec![cert.der().clone()],
        key: rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

/// A token for `subject` with `op` on everything, signed offline with `key`, bound to `subject`.
fn forge_token(key: &RootKey, subject: &str, op: Operation) -> String {
    ringzero_policy::token::mint(
        key,
        &MintRequest {
            subject: ringzero_policy::SpiffeId::parse(subject).unwrap(),
            rights: vec![Right::new(op, Resource::root())],
            ttl: Some(Duration::from_secs(600)),
            bind_to_subject: true,
            bind_node: None,
        },
        &Lifetime::default(),
        SystemTime::now(),
    )
    .unwrap()
}

/// Waits for a denial by `actor` whose reason contains every needle (a follower reports the
/// Raft messages it refuses to the leader, asynchronously).
fn wait_denial(c: &Cluster, actor: &str, needles: &[&str]) {
    wait_until(
        "the denial in the audit log",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            denials(c)
                .iter()
                .any(|d| {
                    d.actor == actor
                        && d.reason
                            .as_deref()
                            .is_some_and(|r| needles.iter().all(|n| r.contains(n)))
                })
                .then_some(())
        },
    );
}

#[test]
fn removed_or_compromised_authority_node_and_local_host() {
    let mut c = Cluster::with_voters("adv-removed", 3);
    c.wait_replicated(Duration::from_secs(15));
    let admin = c.profile();
    let addr1 = c.nodes[0].addr.clone();
    let rt = runtime();
    let gone = 2;
    let gone_id = c.nodes[gone].node_id();
    assert_eq!(gone_id, 3);
    let gone_dir = c.nodes[gone].dir.clone();

    // The attacker's copy of node 3's keys, taken while it was a member.
    let stolen: PathBuf = c.path().join("stolen-keys");
    cp_a(&gone_dir.join("keys"), &stolen);
    let stolen_ca = ca_of_keys(&stolen);
    let before = bundle(&c);
    let gone_biscuit = key_of(&before, gone_id, "biscuit");
    let gone_ca = key_of(&before, gone_id, "x509-ca");
    let stolen_biscuit = RootKey::from_private_text(
        RootKeyId(u32::try_from(gone_biscuit.key_id).unwrap()),
        &std::fs::read_to_string(stolen.join("biscuit.key")).unwrap(),
    )
    .unwrap();
    // A workload's token, minted by the cluster while node 3 was a member.
    let web = id("ns/app/web");
    let web_token = last_line(&ok(
        c.cli(&[
            "token",
            "mint",
            "--for",
            &web,
            "--operation",
            "authority:read",
            "--resource",
            "authority",
        ]),
        "mint for the workload",
    ));

    ok(c.cli(&["authority", "remove", "3"]), "remove node 3");
    let members = c.members();
    assert_eq!(members.len(), 2, "{members:?}");

    let g = Group::new(REMOVED, &c);
    g.case(
        "the removed node deletes its keys, leaves REMOVED, exits, and authority run refuses its directory",
        || {
            let status = wait_until(
                "the removed node to exit",
                Duration::from_secs(30),
                POLL,
                || c.nodes[gone].proc.as_mut().and_then(|p| p.exited()),
            );
            assert!(!status.success(), "{}", c.nodes[gone].log_text());
            assert!(gone_dir.join("REMOVED").exists(), "no REMOVED marker");
            assert_eq!(key_files(&gone_dir), Vec::<String>::new(), "keys left behind");
            let out = run_refused(&c, &gone_dir);
            assert!(
                stderr(&out).contains("was removed from the cluster"),
                "{}",
                show(&out)
            );
        },
    );
    c.nodes[gone].proc = None;

    g.case(
        "a directory restored from a backup (keys back, REMOVED deleted) cannot rejoin and deletes its keys again",
        || {
            for f in std::fs::read_dir(&stolen).unwrap().flatten() {
                cp_a(&f.path(), &gone_dir.join("keys").join(f.file_name()));
            }
            std::fs::remove_file(gone_dir.join("REMOVED")).unwrap();
            let term = c.status_json()["term"].as_u64().unwrap();
            c.nodes[gone].start();
            let status = wait_until(
                "the restored node to exit",
                Duration::from_secs(30),
                POLL,
                || c.nodes[gone].proc.as_mut().and_then(|p| p.exited()),
            );
            assert!(!status.success(), "{}", c.nodes[gone].log_text());
            assert!(gone_dir.join("REMOVED").exists(), "no REMOVED marker");
            assert_eq!(key_files(&gone_dir), Vec::<String>::new(), "keys left behind");
            assert_eq!(c.members().len(), 2);
            assert!(c.status_ok());
            // Its campaign did not depose anyone.
            assert_eq!(c.status_json()["term"].as_u64(), Some(term));
        },
    );
    c.nodes[gone].proc = None;

    g.case(
        "its CA signing spiffe://TD/ringzero/authority/1 fails node 1's TLS handshake",
        || {
            let svid = Svid::forge(&stolen_ca, &id("ringzero/authority/1"));
            let alert = rt.block_on(tls_alert(&addr1, mtls(&admin, &svid)));
            assert!(alert.contains("alert"), "{alert}");
            let term = c.status_json()["term"].as_u64().unwrap();
            let r = raft_call(
                &rt,
                &addr1,
                &admin,
                &svid,
                true,
                forged_append_entries(term + 1, 1),
            );
            let s = r.expect_err("a Raft message over a forged member certificate");
            assert!(
                !matches!(s.code(), tonic::Code::Ok | tonic::Code::PermissionDenied),
                "refused in the transport, not by a handler: {s:?}"
            );
        },
    );

    g.case(
        "its own authority/3 certificate is refused by Raft as not a member and by the API as not_a_member",
        || {
            let own = id("ringzero/authority/3");
            let svid = Svid::forge(&stolen_ca, &own);
            let term = c.status_json()["term"].as_u64().unwrap();
            let s = raft_call(&rt, &addr1, &admin, &svid, true, forged_append_entries(term + 1, 3))
                .expect_err("Raft from a removed member");
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            assert!(s.message().contains("not a member"), "{s:?}");
            let s = raft_stream_call(&rt, &addr1, &admin, &svid, forged_append_entries(term + 1, 3))
                .expect_err("a Raft stream from a removed member");
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            assert!(s.message().contains("not a member"), "{s:?}");
            let token = forge_token(&stolen_biscuit, &own, Operation::AuthorityRead);
            let s = status_over(&rt, &addr1, &admin, &svid, Some(&token))
                .expect_err("the API for a removed member");
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            audited(&c, &own, "authority:read", "not_a_member");
        },
    );

    g.case(
        "its CA signing a user/admin certificate, with the admin's real token, is refused as unrecorded_certificate",
        || {
            let svid = Svid::forge(&stolen_ca, &id("user/admin"));
            let s = status_over(&rt, &addr1, &admin, &svid, Some(&admin.token))
                .expect_err("a user certificate the cluster never issued");
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            audited(&c, &id("user/admin"), "authority:read", "unrecorded_certificate");
        },
    );

    g.case(
        "its CA signing a user/admin certificate that reuses the admin's recorded serial, with the admin's real token, is refused",
        || {
            // The admin's serial is no secret: every server it connects to sees it, and the
            // audit log records it.
            let admin_svid = Svid::of_profile(&admin);
            let bundle = TrustBundle::new(td(), admin.bundle_certs().unwrap()).unwrap();
            let serial = validate_svid(&admin_svid.chain, &bundle, SystemTime::now(), Usage::Client)
                .unwrap()
                .serial;
            let svid = forge_with_serial(&stolen, &id("user/admin"), &serial);
            // Listing users: a denial distinct from the previous case's, so it is recorded at
            // once rather than folded into that one.
            let r = rt.block_on(async {
                pb::authority_client::AuthorityClient::new(channel(&addr1, mtls(&admin, &svid)))
                    .list_users(with_bearer(pb::ListUsersRequest {}, Some(&admin.token)))
                    .await
                    .map(|_| ())
            });
            let s = r.expect_err("a forged admin certificate with a recorded serial opened the API");
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            audited(&c, &id("user/admin"), "user:read", "unrecorded_certificate");
        },
    );

    g.case(
        "its CA signing a workload certificate, with a token the cluster minted for that workload, is refused as removed_issuer",
        || {
            // The token is good: over a workload certificate from a current member's CA it works.
            let honest = Svid::forge(&c.node_ca(0), &web);
            status_over(&rt, &addr1, &admin, &honest, Some(&web_token))
                .expect("the workload token over a current member's certificate");
            let svid = Svid::forge(&stolen_ca, &web);
            let s = status_over(&rt, &addr1, &admin, &svid, Some(&web_token))
                .expect_err("a workload certificate from the removed member's CA");
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            audited(&c, &web, "authority:read", "removed_issuer");
        },
    );

    g.case(
        "its Biscuit key minting an admin token after the removal is refused as retired_key",
        || {
            let forged = forge_token(&stolen_biscuit, &id("user/admin"), Operation::UserRead);
            let t = at_file(&c, "retired.token", &forged);
            let out = c.cli(&["--token", &t, "user", "list"]);
            refused(
                &out,
                &["removed authority node"],
                "a token of the retired key",
            );
            audited(&c, &id("user/admin"), "user:read", "retired_key");
        },
    );

    g.case(
        "its audit key signing a rewritten log after the removal is refused by an auditor that refreshed",
        || {
            let gone_audit = key_of(&before, gone_id, "audit");
            // A fresh auditor (nothing remembered), refreshed after the removal.
            let auditor = c.path().join("auditor.profile");
            std::fs::copy(&c.profile, &auditor).unwrap();
            ok(as_profile(&c, &auditor, &["authority", "status"]), "refresh");
            let pin = read_profile(&auditor)
                .audit_keys
                .into_iter()
                .find(|p| p.id == gone_audit.key_id)
                .unwrap();
            assert_eq!(pin.status, "retired", "{pin:?}");
            let live = c.path().join("live.jsonl");
            let live_arg = live.display().to_string();
            ok(c.cli(&["audit", "export", "--out", &live_arg]), "export");
            ok(
                as_profile(&c, &auditor, &["audit", "verify", "--no-remember", "--file", &live_arg]),
                "the honest log",
            );
            // The history the attacker prefers: someone else removed node 3. Signed now, with
            // node 3's audit key.
            let mut entries: Vec<AuditEntry> = std::fs::read_to_string(&live)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|v| v["type"] == "ringzero.audit.record")
                .map(|v| {
                    let mut o = v.as_object().unwrap().clone();
                    o.remove("type");
                    o.remove("v");
                    serde_json::from_value(serde_json::Value::Object(o)).unwrap()
                })
                .collect();
            let removal = entries
                .iter_mut()
                .rev()
                .find(|e| e.operation == "cluster:admin" && e.resource == "cluster")
                .expect("the removal's record");
            removal.actor = id("user/nobody");
            let key = ring::signature::Ed25519KeyPair::from_pkcs8(
                &std::fs::read(stolen.join("audit.key")).unwrap(),
            )
            .unwrap();
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            let mut data = Vec::new();
            write_export(
                &mut data,
                &Frontier::new(),
                &entries,
                &key,
                gone_audit.key_id,
                now,
                &ExportOptions::default(),
            )
            .unwrap();
            let forged = c.path().join("forged.jsonl");
            std::fs::write(&forged, data).unwrap();
            let out = as_profile(
                &c,
                &auditor,
                &["audit", "verify", "--no-remember", "--file", &forged.display().to_string()],
            );
            refused(
                &out,
                &[&format!("audit key {} was retired at", gone_audit.key_id)],
                "a rewritten log signed by the removed node's audit key",
            );
        },
    );

    let member2 = Svid::forge(&c.node_ca(1), &id("ringzero/authority/2"));
    let member2_id = id("ringzero/authority/2");
    g.case(
        "member 2 sending AppendEntries that names removed node 3 as leader is refused and audited",
        || {
            let term = c.status_json()["term"].as_u64().unwrap();
            let s = raft_call(
                &rt,
                &addr1,
                &admin,
                &member2,
                true,
                forged_append_entries(term, 3),
            )
            .expect_err("AppendEntries naming another leader");
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            assert!(s.message().contains("claims to be from node 3"), "{s:?}");
            wait_denial(&c, &member2_id, &["raft_message_refused", "AppendEntries"]);
            // The same message as the first of a stream: admitted at the opening, refused as
            // the message is checked, the refusal the stream's last item.
            let s = raft_stream_call(
                &rt,
                &addr1,
                &admin,
                &member2,
                forged_append_entries(term, 3),
            )
            .expect_err("a streamed AppendEntries naming another leader");
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            assert!(s.message().contains("claims to be from node 3"), "{s:?}");
        },
    );

    g.case(
        "member 2 sending a Vote that names node 3 as candidate is refused and audited",
        || {
            let term = c.status_json()["term"].as_u64().unwrap();
            let s = raft_call(
                &rt,
                &addr1,
                &admin,
                &member2,
                false,
                forged_vote(term + 1, 3),
            )
            .expect_err("a Vote naming another candidate");
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            assert!(s.message().contains("claims to be from node 3"), "{s:?}");
            wait_denial(&c, &member2_id, &["raft_message_refused", "Vote"]);
            assert_eq!(
                c.status_json()["term"].as_u64(),
                Some(term),
                "the term moved"
            );
        },
    );

    g.case(
        "a member's Vote with an empty log and a higher term, sent to the follower while the leader is live, starts no election",
        || {
            // Nodes 1 and 2 remain (index 0 and 1). The attacker holds the leader's keys and
            // stands, with the shortest log there is, against the follower: the follower's
            // lease refuses it, and `takeover` (which answers refusals for the log) must not
            // turn the refusal into an election of its own while the leader is heard.
            let leader = c.leader();
            let follower = 1 - leader;
            let leader_id = c.nodes[leader].node_id();
            let as_leader = Svid::forge(
                &c.node_ca(leader),
                &id(&format!("ringzero/authority/{leader_id}")),
            );
            let term = c.status_json()["term"].as_u64().unwrap();
            for bump in 1..=2 {
                raft_call(
                    &rt,
                    &c.nodes[follower].addr,
                    &admin,
                    &as_leader,
                    false,
                    forged_vote(term + bump, leader_id),
                )
                .expect("a Vote from a member is answered (and refused inside Raft)");
            }
            // Past the follower's lease and election timeout (200 + 200 ms).
            std::thread::sleep(Duration::from_secs(1));
            assert_eq!(c.status_json()["term"].as_u64(), Some(term), "the term moved");
            assert_eq!(c.leader(), leader, "the leader changed");
        },
    );

    g.case(
        "member 2 naming itself but rewriting entries node 1 has applied is refused and audited",
        || {
            let status = c.status_json();
            let term = status["term"].as_u64().unwrap();
            let applied = status["last_applied"].as_u64().unwrap();
            assert!(applied >= 3, "{status}");
            // History from index 0, as if member 2 had led every entry: each one contradicts
            // what node 1 applied.
            let rpc = openraft::raft::AppendEntriesRequest::<ringzero_authority::TypeConfig> {
                vote: openraft::Vote::new_committed(term, 2),
                prev_log_id: None,
                entries: (0..3)
                    .map(|i| openraft::Entry {
                        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(term, 2), i),
                        payload: openraft::EntryPayload::Blank,
                    })
                    .collect(),
                leader_commit: None,
            };
            let data = postcard::to_stdvec(&rpc).unwrap();
            let s = raft_call(&rt, &addr1, &admin, &member2, true, data)
                .expect_err("a rewrite of applied entries");
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            assert!(s.message().contains("contradicts applied entry"), "{s:?}");
            wait_denial(
                &c,
                &member2_id,
                &["raft_message_refused", "contradicts applied entry"],
            );
            assert!(c.status_ok(), "node 1 stopped serving");
            let after = c.status_json();
            assert_eq!(after["term"].as_u64(), Some(term), "{after}");
            assert!(after["last_applied"].as_u64().unwrap() > applied, "{after}");
        },
    );

    g.case(
        "remove 3 --compromised after the plain removal marks its keys compromised: out of the JWKS, its certificates fail the handshake",
        || {
            let kid = gone_ca.key_id.to_string();
            let jwks = stdout(&ok(c.cli(&["bundle", "show", "--format", "jwks"]), "jwks"));
            assert!(jwks.contains(&format!("\"kid\":\"{kid}\"")), "retired, still listed: {jwks}");
            ok(c.cli(&["authority", "remove", "3", "--compromised"]), "--compromised");
            let after = bundle(&c);
            for k in after.keys.iter().filter(|k| k.authority == gone_id) {
                assert_eq!(k.status, "compromised", "{k:?}");
            }
            let jwks = stdout(&ok(c.cli(&["bundle", "show", "--format", "jwks"]), "jwks"));
            assert!(!jwks.contains(&format!("\"kid\":\"{kid}\"")), "{jwks}");
            // What its CA signs no longer even connects.
            let svid = Svid::forge(&stolen_ca, &web);
            let alert = rt.block_on(tls_alert(&addr1, mtls(&admin, &svid)));
            assert!(alert.contains("alert"), "{alert}");
        },
    );
    g.finish();

    let g = Group::without_audit(LOCAL);
    g.case(
        "a world-readable state.redb makes authority run refuse, naming the file and the chmod",
        || {
            use std::os::unix::fs::PermissionsExt;
            c.nodes[1].stop();
            let dir = c.nodes[1].dir.clone();
            let state = dir.join("raft/state.redb");
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
            let out = run_refused(&c, &dir);
            let err = stderr(&out);
            assert!(err.contains(&state.display().to_string()), "{}", show(&out));
            assert!(err.contains("chmod -R go-rwx"), "{}", show(&out));
        },
    );
    g.finish();
}
