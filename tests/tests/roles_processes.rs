//! Roles, delegation and revocation against a real authority process: every built-in role ×
//! every operation with an RPC today, allowed or denied exactly as the role says; delegation
//! that cannot widen the minter's rights and binds the token to its subject; revoked,
//! attenuated-from-revoked, wrong-root-key and expired tokens refused; custom roles applied
//! from a TOML file with their problems reported by line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use ringzero_policy::{Operation, Resource, Right, Role};
use ringzero_proto::client::{AuthorityClient, ClientError, Profile};
use ringzero_proto::pb;
use ringzero_tests::{SoloAuthority, show};

const TD: &str = "roles.test";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn profile(a: &SoloAuthority) -> Profile {
    Profile::from_toml(&std::fs::read_to_string(&a.profile).unwrap()).unwrap()
}

/// A client over the admin profile's SVID presenting `token` (the profile's own when `None`).
fn client(a: &SoloAuthority, token: Option<&str>) -> AuthorityClient {
    let p = profile(a);
    let mut creds = p.credentials().unwrap();
    if let Some(t) = token {
        creds.token = Some(t.to_owned());
    }
    AuthorityClient::new(creds, p.authorities.clone())
}

/// The SPIFFE ID of the admin profile's SVID: the subject of its capability.
fn admin_id(a: &SoloAuthority) -> String {
    ringzero_policy::token::inspect(&profile(a).token)
        .unwrap()
        .subject
        .unwrap()
}

async fn mint(
    c: &mut AuthorityClient,
    subject: &str,
    rights: &[Right],
    ttl_seconds: u64,
) -> Result<pb::MintTokenReply, ClientError> {
    let rights: Vec<pb::RoleRight> = rights
        .iter()
        .map(|r| pb::RoleRight {
            operation: r.operation.as_str().into(),
            resource: r.prefix.as_str().into(),
        })
        .collect();
    let subject = subject.to_owned();
    c.call(|mut g| {
        let req = pb::MintTokenRequest {
            subject: subject.clone(),
            operations: Vec::new(),
            resource: String::new(),
            ttl_seconds,
            rights: rights.clone(),
        };
        async move { g.mint_token(req).await }
    })
    .await
}

fn right(op: Operation, prefix: &str) -> Right {
    Right::new(op, Resource::parse(prefix).unwrap())
}

/// Whether a call was refused by the gate (anything else, success or another error, means the
/// gate let it through).
fn denied<T>(r: &Result<T, ClientError>) -> bool {
    matches!(r, Err(e) if e.code() == Some(tonic::Code::PermissionDenied))
}

async fn status(c: &mut AuthorityClient) -> Result<pb::StatusReply, ClientError> {
    c.call(|mut g| async move { g.status(pb::StatusRequest {}).await })
        .await
}

/// Calls the RPC gated by `op`, returning whether the gate refused it, and the resource the
/// gate checked.
async fn exercise(c: &mut AuthorityClient, op: Operation, tag: &str, me: &str) -> (bool, String) {
    use Operation::*;
    let tag = tag.to_owned();
    let me = me.to_owned();
    match op {
        AuthorityRead => (denied(&status(c).await), "authority".into()),
        NodeRead => (
            denied(
                &c.call(|mut g| async move { g.list_nodes(pb::ListNodesRequest {}).await })
                    .await,
            ),
            "node".into(),
        ),
        NodeEnroll => {
            let name = format!("m-{tag}");
            let r = c
                .call(|mut g| {
                    let node_name = name.clone();
                    async move {
                        g.create_join_token(pb::CreateJoinTokenRequest {
                            purpose: "agent".into(),
                            node_name,
                            ttl_seconds: 600,
                            namespace: String::new(),
                        })
                        .await
                    }
                })
                .await;
            (denied(&r), format!("node/m-{tag}"))
        }
        NodeEvict => {
            let r = c
                .call(|mut g| async move {
                    g.set_node_status(pb::SetNodeStatusRequest {
                        name: "ghost".into(),
                        status: "evicted".into(),
                    })
                    .await
                })
                .await;
            (denied(&r), "node/ghost".into())
        }
        EntryRead => {
            let r = c
                .call(
                    |mut g| async move { g.list_entries(pb::ListEntriesRequest::default()).await },
                )
                .await;
            (denied(&r), String::new())
        }
        EntryWrite => {
            let id = format!("spiffe://{TD}/ns/shop/web-{tag}");
            let r = c
                .call(|mut g| {
                    let spiffe_id = id.clone();
                    async move {
                        g.create_entry(pb::PutEntryRequest {
                            spiffe_id,
                            parent: "n7".into(),
                            selectors: vec!["unix:uid:1000".into()],
                            ttl_seconds: 600,
                            ..Default::default()
                        })
                        .await
                    }
                })
                .await;
            (denied(&r), format!("ns/shop/web-{tag}"))
        }
        AuditRead => (
            denied(
                &c.call(|mut g| async move { g.get_tree_head(pb::GetTreeHeadRequest {}).await })
                    .await,
            ),
            "audit".into(),
        ),
        AuditSeal => {
            // Allowed, it still fails: the root given matches nothing.
            let r = c
                .call(|mut g| async move {
                    g.seal_audit(pb::SealAuditRequest {
                        up_to_seq: 1,
                        root: vec![0; 32],
                    })
                    .await
                })
                .await;
            assert!(r.is_err(), "a seal with a made-up root must fail");
            (denied(&r), "audit".into())
        }
        TokenMint => {
            let r = c
                .call(|mut g| {
                    let subject = me.clone();
                    async move {
                        g.mint_token(pb::MintTokenRequest {
                            subject,
                            operations: vec!["logs:read".into()],
                            resource: "ns/shop".into(),
                            ttl_seconds: 60,
                            rights: Vec::new(),
                        })
                        .await
                    }
                })
                .await;
            (denied(&r), "ns/shop".into())
        }
        TokenRevoke => {
            let r = c
                .call(|mut g| async move {
                    g.revoke_token(pb::RevokeTokenRequest {
                        token: String::new(),
                        revocation_id: "00ff00ff00ff00ff".into(),
                    })
                    .await
                })
                .await;
            (denied(&r), "token".into())
        }
        RoleRead => (
            denied(
                &c.call(|mut g| async move { g.list_roles(pb::ListRolesRequest {}).await })
                    .await,
            ),
            "role".into(),
        ),
        RoleWrite => {
            let name = format!("matrix-{tag}");
            let r = c
                .call(|mut g| {
                    let name = name.clone();
                    async move {
                        g.apply_roles(pb::ApplyRolesRequest {
                            roles: vec![pb::RoleInfo {
                                name,
                                rights: vec![pb::RoleRight {
                                    operation: "logs:read".into(),
                                    resource: "ns/shop".into(),
                                }],
                                builtin: false,
                                namespaced: false,
                            }],
                        })
                        .await
                    }
                })
                .await;
            (denied(&r), format!("role/matrix-{tag}"))
        }
        ClusterAdmin => {
            let r = c
                .call(|mut g| async move {
                    g.create_join_token(pb::CreateJoinTokenRequest {
                        purpose: "authority".into(),
                        node_name: String::new(),
                        ttl_seconds: 600,
                        namespace: String::new(),
                    })
                    .await
                })
                .await;
            (denied(&r), "cluster".into())
        }
        other => panic!("no RPC exercises {other} yet"),
    }
}

/// The operations that have an RPC today.
const GATED: &[Operation] = &[
    Operation::AuthorityRead,
    Operation::NodeRead,
    Operation::NodeEnroll,
    Operation::NodeEvict,
    Operation::EntryRead,
    Operation::EntryWrite,
    Operation::AuditRead,
    Operation::AuditSeal,
    Operation::TokenMint,
    Operation::TokenRevoke,
    Operation::RoleRead,
    Operation::RoleWrite,
    Operation::ClusterAdmin,
];

#[test]
fn every_built_in_role_is_allowed_exactly_what_it_grants() {
    let a = SoloAuthority::start("roles-matrix", TD);
    let me = admin_id(&a);
    runtime().block_on(async {
        let mut admin = client(&a, None);
        let mut failures = Vec::new();
        let mut allowed_somewhere = 0;
        for role in Role::ALL {
            let ns = role.needs_namespace().then_some("shop");
            let rights = role.rights(ns).unwrap();
            let token = mint(&mut admin, &me, &rights, 600).await.unwrap().token;
            let mut c = client(&a, Some(&token));
            for (i, op) in GATED.iter().enumerate() {
                let tag = format!("{}-{i}", role.name());
                let (was_denied, resource) = exercise(&mut c, *op, &tag, &me).await;
                let resource = Resource::parse(&resource).unwrap();
                let mut expected = rights.iter().any(|r| r.allows(*op, &resource));
                if *op == Operation::EntryWrite {
                    // Creating an entry also needs the right to select its processes.
                    let select = Resource::parse("selector/unix/uid/1000/node/n7").unwrap();
                    expected &= rights
                        .iter()
                        .any(|r| r.allows(Operation::EntrySelect, &select));
                }
                allowed_somewhere += usize::from(expected);
                if was_denied == expected {
                    failures.push(format!(
                        "{role} × {op} on {resource:?}: expected {}, got {}",
                        if expected { "allowed" } else { "denied" },
                        if was_denied { "denied" } else { "allowed" },
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // The matrix is not trivially all-denied or all-allowed.
        assert!(allowed_somewhere > GATED.len());
        assert!(allowed_somewhere < GATED.len() * Role::ALL.len());
    });
}

#[test]
fn delegation_cannot_widen_and_binds_the_token_to_its_subject() {
    let a = SoloAuthority::start("roles-delegate", TD);
    let me = admin_id(&a);
    let bob = format!("spiffe://{TD}/user/bob");
    // A developer-like caller: token:mint and logs:read in ns/shop only, for 10 minutes.
    let dev = runtime().block_on(async {
        let mut admin = client(&a, None);
        mint(
            &mut admin,
            &me,
            &[
                right(Operation::TokenMint, "ns/shop"),
                right(Operation::LogsRead, "ns/shop"),
                right(Operation::AuthorityRead, "authority"),
            ],
            600,
        )
        .await
        .unwrap()
        .token
    });
    let dev_file = a.root.path().join("dev.token");
    std::fs::write(&dev_file, &dev).unwrap();
    let dev_arg = format!("@{}", dev_file.display());

    // Within the caller's rights: the resource defaults to the caller's own scope.
    let out = a.cli(&[
        "--token",
        &dev_arg,
        "token",
        "mint",
        "--for",
        &bob,
        "--operation",
        "logs:read",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let minted = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        minted.trim().lines().count(),
        1,
        "the token alone on stdout"
    );
    let view = ringzero_policy::token::inspect(minted.trim()).unwrap();
    assert_eq!(view.subject.as_deref(), Some(bob.as_str()));
    assert_eq!(view.bound_peers, vec![bob.clone()]);
    assert_eq!(view.rights.len(), 1);
    assert_eq!(view.rights[0].operation, "logs:read");
    assert_eq!(view.rights[0].prefix, "ns/shop");
    let dev_expiry = ringzero_policy::token::inspect(&dev)
        .unwrap()
        .expires_unix
        .unwrap();
    assert!(view.expires_unix.unwrap() <= dev_expiry);

    // An operation the caller lacks, a wider or another resource, a longer life: refused.
    for extra in [
        &["--operation", "sched:submit"][..],
        &["--operation", "logs:read", "--resource", "ns"],
        &["--operation", "logs:read", "--resource", "ns/shopping"],
        &["--operation", "logs:read", "--ttl", "2h"],
        &["--operation", "entry:write", "--resource", "ns/shop"],
    ] {
        let mut args = vec!["--token", &dev_arg, "token", "mint", "--for", &bob];
        args.extend_from_slice(extra);
        let out = a.cli(&args);
        assert!(!out.status.success(), "{extra:?} must be refused");
        assert!(out.stdout.is_empty(), "{extra:?}: no token on stdout");
    }
    // Refusals and grants alike are on the audit log; the grant names the subject, the rights
    // and the minted token's revocation ids — never the token.
    let out = a.cli(&["audit", "query", "--operation", "token:mint", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("delegation would widen"), "{log}");
    assert!(log.contains(&bob), "{log}");
    assert!(
        log.contains(view.blocks[0].revocation_id.to_hex().as_str()),
        "{log}"
    );
    assert!(!log.contains(minted.trim()), "no token in the audit log");

    // Narrower is fine.
    let out = a.cli(&[
        "--token",
        &dev_arg,
        "token",
        "mint",
        "--for",
        &bob,
        "--operation",
        "logs:read",
        "--resource",
        "ns/shop/web",
        "--ttl",
        "5m",
    ]);
    assert!(out.status.success(), "{}", show(&out));

    // A token minted for bob, presented over the admin's SVID: denied. The same rights minted
    // for the admin's own identity: allowed.
    runtime().block_on(async {
        let mut admin = client(&a, None);
        let for_bob = mint(
            &mut admin,
            &bob,
            &[right(Operation::AuthorityRead, "authority")],
            60,
        )
        .await
        .unwrap()
        .token;
        assert!(denied(&status(&mut client(&a, Some(&for_bob))).await));
        let for_me = mint(
            &mut admin,
            &me,
            &[right(Operation::AuthorityRead, "authority")],
            60,
        )
        .await
        .unwrap()
        .token;
        status(&mut client(&a, Some(&for_me))).await.unwrap();
        // A subject outside the trust domain is refused.
        let r = mint(
            &mut admin,
            "spiffe://elsewhere.test/user/eve",
            &[right(Operation::AuthorityRead, "authority")],
            60,
        )
        .await;
        assert_eq!(
            r.err().and_then(|e| e.code()),
            Some(tonic::Code::InvalidArgument)
        );
    });
}

/// Polls `Status` with `token` until the gate refuses it; returns how long that took.
async fn until_denied(a: &SoloAuthority, token: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if denied(&status(&mut client(a, Some(token))).await) {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "still allowed after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn revoked_attenuated_wrong_key_and_expired_tokens_are_refused() {
    let a = SoloAuthority::start("roles-revoke", TD);
    let me = admin_id(&a);
    let read = [right(Operation::AuthorityRead, "authority")];
    let (parent, parent_ids) = runtime().block_on(async {
        let reply = mint(&mut client(&a, None), &me, &read, 600).await.unwrap();
        (reply.token, reply.revocation_ids)
    });
    let attenuate = |token: &str, args: &[&str]| {
        let mut all = vec!["token", "attenuate", token];
        all.extend_from_slice(args);
        let out = a.cli(&all);
        assert!(out.status.success(), "{}", show(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let child = attenuate(&parent, &["--ttl", "5m"]);
    let grandchild = attenuate(&child, &["--operation", "authority:read"]);
    runtime().block_on(async {
        for t in [&parent, &child, &grandchild] {
            status(&mut client(&a, Some(t))).await.unwrap();
        }
    });

    // Revoking the child (its last block) kills it and its attenuation, not its parent.
    let child_file = a.root.path().join("child.token");
    std::fs::write(&child_file, &child).unwrap();
    let out = a.cli(&["token", "revoke", &format!("@{}", child_file.display())]);
    assert!(out.status.success(), "{}", show(&out));
    runtime().block_on(async {
        let took = until_denied(&a, &child, Duration::from_secs(1)).await;
        assert!(took < Duration::from_secs(1), "{took:?}");
        until_denied(&a, &grandchild, Duration::from_secs(1)).await;
        status(&mut client(&a, Some(&parent))).await.unwrap();
    });

    // Revoking by id: the parent's authority block.
    let out = a.cli(&["token", "revoke", "--id", parent_ids.last().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    runtime().block_on(async {
        until_denied(&a, &parent, Duration::from_secs(1)).await;
    });
    // Malformed input is refused before any call.
    assert_eq!(
        a.cli(&["token", "revoke", "not-a-token"]).status.code(),
        Some(2)
    );
    assert_eq!(
        a.cli(&["token", "revoke", "--id", "xyz"]).status.code(),
        Some(2)
    );

    // A token signed by a key the cluster does not know: denied.
    let key = a.root.path().join("rogue.key");
    let out = a.cli(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let out = a.cli(&[
        "token",
        "mint",
        "--root-key",
        key.to_str().unwrap(),
        "--subject",
        &me,
        "--operation",
        "authority:read",
        "--resource",
        "authority",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let rogue = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    runtime().block_on(async {
        assert!(denied(&status(&mut client(&a, Some(&rogue))).await));

        // An expired token: denied.
        let short = mint(&mut client(&a, None), &me, &read, 1)
            .await
            .unwrap()
            .token;
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(denied(&status(&mut client(&a, Some(&short))).await));
    });
}

#[test]
fn role_files_are_checked_by_line_then_applied_and_listed() {
    let a = SoloAuthority::start("roles-apply", TD);
    let bad = a.root.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[role]]\nname = \"deployer\"\nrights = [ { operation = \"sched:launch\", resource = \"ns/shop\" } ]\n\n[[role]]\nname = \"operator\"\nrights = [ { operation = \"logs:read\", resource = \"ns/-x/\" } ]\n",
    )
    .unwrap();
    let out = a.cli(&["role", "apply", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3: unknown operation"), "{err}");
    assert!(
        err.contains("bad.toml:6: role name \"operator\" is a built-in"),
        "{err}"
    );
    assert!(err.contains("bad.toml:7: resource prefix"), "{err}");

    let good = a.root.path().join("good.toml");
    std::fs::write(
        &good,
        "[[role]]\nname = \"deployer\"\nrights = [ { operation = \"sched:submit\", resource = \"ns/shop\" }, { operation = \"logs:read\", resource = \"ns/shop\" } ]\n",
    )
    .unwrap();
    let out = a.cli(&["role", "apply", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let out = a.cli(&["role", "list"]);
    assert!(out.status.success(), "{}", show(&out));
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.starts_with("NAME"), "{list}");
    for name in ["admin", "operator", "developer", "auditor", "deployer"] {
        assert!(
            list.lines().any(|l| l.starts_with(name)),
            "{name} in\n{list}"
        );
    }
    assert!(
        list.contains("logs:read, sched:submit on ns/shop")
            || list.contains("sched:submit, logs:read on ns/shop"),
        "{list}"
    );
    let out = a.cli(&["role", "show", "deployer", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["name"], "deployer");
    assert_eq!(json["rights"].as_array().map(Vec::len), Some(2));
    assert_eq!(a.cli(&["role", "show", "nobody"]).status.code(), Some(1));
}
