//! Attackers with a legitimate account: a developer of one namespace ("shop") reaching for
//! another team's ("payments"), and an operator reaching past its role. Both hold a real
//! profile, issued by the admin, and use it exactly as issued.

use std::path::Path;

use ringzero_proto::client::{AuthorityClient, ClientError};
use ringzero_proto::pb;
use ringzero_tests::cluster::*;

use crate::common::*;

const DEVELOPER: &str = "developer of another namespace";
const OPERATOR: &str = "operator";

/// shop's role: its namespace, uid 1000 on any node, delegation within its namespace, status.
const SHOP_ROLE: &str = r#"[[role]]
name = "shop-dev"
rights = [ { operation = "entry:write", resource = "ns/shop" },
           { operation = "entry:select", resource = "selector/unix/uid/1000" },
           { operation = "token:mint", resource = "ns/shop" },
           { operation = "authority:read", resource = "authority" } ]
"#;

fn entry_create(
    c: &Cluster,
    profile: &Path,
    spiffe_id: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec!["entry", "create", "--spiffe-id", spiffe_id, "--node", "n1"];
    if !extra.contains(&"--selector") {
        args.extend_from_slice(&["--selector", "unix:uid:1000"]);
    }
    args.extend_from_slice(extra);
    as_profile(c, profile, &args)
}

/// No entry with this SPIFFE ID exists (asked as the admin).
fn no_entry(c: &Cluster, spiffe_id: &str) {
    let out = ok(
        c.cli(&["entry", "list", "--spiffe-id", spiffe_id, "--json"]),
        "entry list",
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(0), "{spiffe_id}: {v}");
}

fn client(c: &Cluster, profile: &Path) -> AuthorityClient {
    let p = read_profile(profile);
    AuthorityClient::new(p.credentials().unwrap(), vec![c.nodes[0].addr.clone()])
}

async fn create_entry(
    client: &mut AuthorityClient,
    spiffe_id: &str,
    dns_names: &[&str],
) -> Result<pb::EntryReply, ClientError> {
    let req = pb::PutEntryRequest {
        id: String::new(),
        spiffe_id: spiffe_id.into(),
        parent: "n1".into(),
        selectors: vec!["unix:uid:1000".into()],
        ttl_seconds: 600,
        dns_names: dns_names.iter().map(|d| (*d).to_owned()).collect(),
        allow_weak_selectors: false,
    };
    client
        .call(|mut g| {
            let r = req.clone();
            async move { g.create_entry(r).await }
        })
        .await
}

/// A `MintToken` for `subject`: `token:mint` on `resource`, with `token` over `svid`.
async fn mint_over(
    addr: &str,
    admin: &ringzero_proto::client::Profile,
    svid: &Svid,
    token: &str,
    subject: &str,
    resource: &str,
) -> Result<(), tonic::Status> {
    pb::authority_client::AuthorityClient::new(channel(addr, mtls(admin, svid)))
        .mint_token(with_bearer(
            pb::MintTokenRequest {
                subject: subject.into(),
                operations: vec!["token:mint".into()],
                resource: resource.into(),
                ttl_seconds: 300,
                rights: vec![],
            },
            Some(token),
        ))
        .await
        .map(|_| ())
}

#[test]
fn developer_of_another_namespace_and_operator() {
    let c = Cluster::new("adv-users");
    let admin = c.profile();
    let addr = c.nodes[0].addr.clone();
    let rt = runtime();
    let roles = c.path().join("shop.toml");
    std::fs::write(&roles, SHOP_ROLE).unwrap();
    ok(
        c.cli(&["role", "apply", roles.to_str().unwrap()]),
        "role apply",
    );
    let shop = add_user(&c, "shopdev", &["--role", "shop-dev"]);
    let shop2 = add_user(&c, "shopdev2", &["--role", "shop-dev"]);
    let ops = add_user(&c, "opal", &["--role", "operator"]);
    let (shop_id, shop2_id, ops_id) = (id("user/shopdev"), id("user/shopdev2"), id("user/opal"));
    // What shop may do, for contrast: an entry of its own, for its own uid.
    ok(
        entry_create(&c, &shop, &id("ns/shop/web"), &[]),
        "shop's own entry",
    );

    // payments' entries, made by the admin: what shop would like to take over or remove.
    let payments_entry = |path: &str| {
        last_line(&ok(
            c.cli(&[
                "entry",
                "create",
                "--spiffe-id",
                &id(path),
                "--node",
                "n1",
                "--selector",
                "unix:uid:2000",
            ]),
            "payments' entry",
        ))
    };
    let (payments_db, payments_cache) = (
        payments_entry("ns/payments/db"),
        payments_entry("ns/payments/cache"),
    );
    let payments_unchanged = |entry: &str, path: &str| {
        let out = ok(c.cli(&["entry", "show", entry, "--json"]), "entry show");
        let e: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(e["spiffe_id"].as_str(), Some(id(path).as_str()), "{e}");
        assert_eq!(e["selectors"], serde_json::json!(["unix:uid:2000"]), "{e}");
    };

    let g = Group::new(DEVELOPER, &c);
    g.case(
        "an entry in the payments namespace is denied on entry:write",
        || {
            let out = entry_create(&c, &shop, &id("ns/payments/api"), &[]);
            refused(
                &out,
                &["permission denied", "entry:write on ns/payments/api"],
                "ns/payments",
            );
            let d = audited(&c, &shop_id, "entry:write", "no_matching_right");
            assert_eq!(d.resource, "ns/payments/api");
            no_entry(&c, &id("ns/payments/api"));
        },
    );

    g.case(
        "an entry in its own namespace selecting payments' uid 2000 is denied on entry:select",
        || {
            let out = entry_create(
                &c,
                &shop,
                &id("ns/shop/steal"),
                &["--selector", "unix:uid:2000"],
            );
            refused(
                &out,
                &["entry:select on selector/unix/uid/2000/node/n1"],
                "uid 2000",
            );
            let d = audited(&c, &shop_id, "entry:select", "no_matching_right");
            assert_eq!(d.resource, "selector/unix/uid/2000/node/n1");
            no_entry(&c, &id("ns/shop/steal"));
        },
    );

    g.case(
        "an entry putting api.payments.internal or *.payments.internal in its SVIDs is denied on entry:dns",
        || {
            let out = entry_create(
                &c,
                &shop,
                &id("ns/shop/mitm"),
                &["--dns", "api.payments.internal"],
            );
            refused(
                &out,
                &["entry:dns on dns/internal/payments/api"],
                "payments' DNS name",
            );
            let d = audited(&c, &shop_id, "entry:dns", "no_matching_right");
            assert_eq!(d.resource, "dns/internal/payments/api");
            // The CLI accepts no wildcard; the API does, for those who hold it.
            let e = rt
                .block_on(create_entry(
                    &mut client(&c, &shop),
                    &id("ns/shop/mitm"),
                    &["*.payments.internal"],
                ))
                .expect_err("a wildcard of payments' domain");
            assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
            assert!(
                e.to_string().contains("entry:dns on dns/internal/payments/_wildcard"),
                "{e}"
            );
            no_entry(&c, &id("ns/shop/mitm"));
        },
    );

    g.case(
        "taking over payments' existing entry by updating it to shop's ID or uid is denied",
        || {
            // Through the API: the CLI reads the entry first, which shop may not either.
            let mut me = client(&c, &shop);
            for (what, spiffe_id) in [
                ("renamed into ns/shop", id("ns/shop/cache")),
                ("re-pointed at uid 1000", id("ns/payments/cache")),
            ] {
                let req = pb::PutEntryRequest {
                    id: payments_cache.clone(),
                    spiffe_id,
                    parent: "n1".into(),
                    selectors: vec!["unix:uid:1000".into()],
                    ttl_seconds: 600,
                    dns_names: vec![],
                    allow_weak_selectors: false,
                };
                let e = rt
                    .block_on(me.call(|mut g| {
                        let r = req.clone();
                        async move { g.update_entry(r).await }
                    }))
                    .expect_err(what);
                assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{what}: {e}");
                assert!(
                    e.to_string().contains("entry:write on ns/payments/cache"),
                    "{what}: {e}"
                );
            }
            let d = audited(&c, &shop_id, "entry:write", "no_matching_right");
            assert_eq!(d.resource, "ns/payments/cache", "{d:?}");
            payments_unchanged(&payments_cache, "ns/payments/cache");
        },
    );

    g.case("deleting payments' entry is denied", || {
        // Through the API: the CLI shows the entry first, which shop may not read either.
        let mut me = client(&c, &shop);
        let e = rt
            .block_on(me.call(|mut g| {
                let id = payments_db.clone();
                async move { g.delete_entry(pb::DeleteEntryRequest { id }).await }
            }))
            .expect_err("shop deleted payments' entry");
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
        assert!(
            e.to_string().contains("entry:write on ns/payments/db"),
            "{e}"
        );
        let d = audited(&c, &shop_id, "entry:write", "no_matching_right");
        assert_eq!(d.resource, "ns/payments/db", "{d:?}");
        payments_unchanged(&payments_db, "ns/payments/db");
    });

    g.case(
        "a weak entry (executable path only) in its own namespace, selecting every user's processes, is denied",
        || {
            let out = entry_create(
                &c,
                &shop,
                &id("ns/shop/anyone"),
                &["--selector", "unix:path:/usr/bin/env", "--allow-weak-selectors"],
            );
            refused(&out, &["entry:select on selector/unix/any/node/n1"], "weak entry");
            let d = audited(&c, &shop_id, "entry:select", "no_matching_right");
            assert_eq!(d.resource, "selector/unix/any/node/n1", "{d:?}");
            no_entry(&c, &id("ns/shop/anyone"));
        },
    );

    g.case(
        "entries for the reserved IDs ringzero/authority/1 and user/admin are refused",
        || {
            for reserved in ["ringzero/authority/1", "user/admin"] {
                let out = entry_create(&c, &shop, &id(reserved), &[]);
                refused(&out, &[&format!("entry:write on {reserved}")], reserved);
                no_entry(&c, &id(reserved));
            }
            let all = denials(&c);
            for reserved in ["ringzero/authority/1", "user/admin"] {
                assert!(
                    all.iter().any(|d| d.actor == shop_id
                        && d.operation == "entry:write"
                        && d.resource == reserved),
                    "no denial for {reserved}"
                );
            }
        },
    );

    g.case(
        "look-alike and traversal IDs (NS/shop, ns/shopx, dot segments, percent-encoding) never reach payments",
        || {
            let mut me = client(&c, &shop);
            let td = TD;
            for (bad, want) in [
                (
                    format!("spiffe://{td}/ns/shop/../payments/api"),
                    tonic::Code::InvalidArgument,
                ),
                (
                    format!("spiffe://{td}/ns/shop/%2e%2e/payments/api"),
                    tonic::Code::InvalidArgument,
                ),
                (
                    format!("spiffe://{td}/NS/shop/api"),
                    tonic::Code::PermissionDenied,
                ),
                (
                    format!("spiffe://{td}/ns/shopx/api"),
                    tonic::Code::PermissionDenied,
                ),
            ] {
                let e = rt
                    .block_on(create_entry(&mut me, &bad, &[]))
                    .expect_err(&format!("{bad} was accepted"));
                assert_eq!(e.code(), Some(want), "{bad}: {e}");
            }
            let out = ok(c.cli(&["entry", "list", "--json"]), "entry list");
            let ids: Vec<String> = serde_json::from_str::<serde_json::Value>(&stdout(&out))
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["spiffe_id"].as_str().unwrap().to_owned())
                .collect();
            let bad: Vec<&String> = ids
                .iter()
                .filter(|i| !i.starts_with(&id("ns/payments/")) && **i != id("ns/shop/web"))
                .collect();
            assert!(bad.is_empty(), "{bad:?}");
        },
    );

    g.case(
        "token mint --for a right shop does not hold is denied as widening and audited",
        || {
            let out = as_profile(
                &c,
                &shop,
                &[
                    "token",
                    "mint",
                    "--for",
                    &id("ns/shop/ci"),
                    "--operation",
                    "entry:dns",
                    "--resource",
                    "ns/shop",
                ],
            );
            refused(
                &out,
                &["cannot grant more than its minter holds"],
                "widening",
            );
            let d = audited(&c, &shop_id, "token:mint", "delegation would widen");
            assert!(
                d.details
                    .iter()
                    .any(|(k, v)| k == "subject" && *v == id("ns/shop/ci")),
                "{d:?}"
            );
        },
    );

    g.case(
        "a self-delegated token dies with the main token the admin revokes",
        || {
            let out = ok(
                as_profile(
                    &c,
                    &shop2,
                    &[
                        "token",
                        "mint",
                        "--for",
                        &shop2_id,
                        "--operation",
                        "token:mint",
                        "--resource",
                        "ns/shop",
                    ],
                ),
                "self-delegation",
            );
            let delegated = at_file(&c, "shop2-self.token", &last_line(&out));
            let use_it = |sub: &str| {
                as_profile(
                    &c,
                    &shop2,
                    &[
                        "--token",
                        &delegated,
                        "token",
                        "mint",
                        "--for",
                        &id(&format!("ns/shop/{sub}")),
                        "--operation",
                        "token:mint",
                        "--resource",
                        &format!("ns/shop/{sub}"),
                    ],
                )
            };
            ok(use_it("a"), "the self-delegated token before");
            let main = at_file(&c, "shop2-main.token", &read_profile(&shop2).token);
            ok(
                c.cli(&["token", "revoke", &main]),
                "the admin revokes the main token",
            );
            refused(&use_it("b"), &["revoked"], "the self-delegated token after");
            let all = denials(&c);
            assert!(
                all.iter().any(|d| d.actor == shop2_id
                    && d.operation == "token:mint"
                    && d.reason.as_deref().is_some_and(
                        |r| r.starts_with("revoked") || r.starts_with("cut_off_lineage")
                    )),
                "no denial of the self-delegated token"
            );
        },
    );

    g.case(
        "a suspended user's certificate and the tokens it delegated open nothing until resumed",
        || {
            // shop hands its CI job a token; the job holds an SVID of its own.
            let out = ok(
                as_profile(
                    &c,
                    &shop,
                    &[
                        "token",
                        "mint",
                        "--for",
                        &id("ns/shop/ci"),
                        "--operation",
                        "token:mint",
                        "--resource",
                        "ns/shop",
                    ],
                ),
                "delegation to ci",
            );
            let ci_token = last_line(&out);
            let ci = Svid::forge(&c.node_ca(0), &id("ns/shop/ci"));
            let job = |sub: &str| {
                rt.block_on(mint_over(
                    &addr,
                    &admin,
                    &ci,
                    &ci_token,
                    &id(&format!("ns/shop/ci/{sub}")),
                    &format!("ns/shop/ci/{sub}"),
                ))
            };
            job("1").expect("the job's token before the suspension");
            ok(
                as_profile(&c, &shop, &["authority", "status"]),
                "shop before",
            );

            ok(c.cli(&["user", "suspend", "shopdev"]), "suspend");
            refused(
                &as_profile(&c, &shop, &["authority", "status"]),
                &["suspended"],
                "shop suspended",
            );
            audited(&c, &shop_id, "authority:read", "suspended_user");
            let s = job("2").expect_err("a token delegated by a suspended user");
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            audited(&c, &id("ns/shop/ci"), "token:mint", "cut_off_lineage");
            // Nor can it renew its way out.
            let out = as_profile(&c, &shop, &["login", "--out", "/nonexistent/never.profile"]);
            assert_eq!(out.status.code(), Some(1), "{}", ringzero_tests::show(&out));

            ok(c.cli(&["user", "resume", "shopdev"]), "resume");
            ok(
                as_profile(&c, &shop, &["authority", "status"]),
                "shop resumed",
            );
            job("3").expect("the job's token after the resumption");
        },
    );
    g.finish();

    let g = Group::new(OPERATOR, &c);
    let op_entry = |spiffe_id: &str| {
        as_profile(
            &c,
            &ops,
            &[
                "entry",
                "create",
                "--spiffe-id",
                spiffe_id,
                "--node",
                "n1",
                "--selector",
                "unix:uid:0",
            ],
        )
    };

    g.case(
        "an entry for spiffe://TD/ringzero/authority/1 is refused as reserved (the original attack)",
        || {
            let target = id("ringzero/authority/1");
            refused(&op_entry(&target), &["reserved"], "authority/1");
            no_entry(&c, &target);
            let d = audited(&c, &ops_id, "entry:write", "reserved_id");
            assert!(d.reason.unwrap().contains(&target));
        },
    );

    g.case(
        "the look-alike RingZero/Authority/1 is reserved too",
        || {
            let target = id("RingZero/Authority/1");
            refused(&op_entry(&target), &["reserved"], "RingZero/Authority/1");
            no_entry(&c, &target);
            let d = audited(&c, &ops_id, "entry:write", "reserved_id");
            assert!(d.reason.unwrap().contains(&target));
        },
    );

    g.case(
        "an entry for ringzero/node/x is refused as reserved",
        || {
            let target = id("ringzero/node/x");
            refused(&op_entry(&target), &["reserved"], "node/x");
            no_entry(&c, &target);
            let d = audited(&c, &ops_id, "entry:write", "reserved_id");
            assert!(d.reason.unwrap().contains(&target));
        },
    );

    g.case(
        "changing an existing entry's SPIFFE ID to user/admin is refused",
        || {
            let out = ok(op_entry(&id("ns/ops/web")), "the operator's own entry");
            let entry_id = last_line(&out);
            let out = as_profile(
                &c,
                &ops,
                &[
                    "entry",
                    "update",
                    &entry_id,
                    "--spiffe-id",
                    &id("user/admin"),
                ],
            );
            refused(&out, &["reserved"], "update to user/admin");
            no_entry(&c, &id("user/admin"));
            let d = audited(&c, &ops_id, "entry:write", "reserved_id");
            assert!(d.reason.unwrap().contains(&id("user/admin")));
            let out = ok(c.cli(&["entry", "show", &entry_id, "--json"]), "entry show");
            assert!(stdout(&out).contains(&id("ns/ops/web")), "{}", stdout(&out));
        },
    );

    g.case("user add is denied (user:write)", || {
        let out = as_profile(
            &c,
            &ops,
            &[
                "user",
                "add",
                "eve",
                "--role",
                "admin",
                "--out",
                "eve.profile",
            ],
        );
        refused(&out, &["permission denied"], "user add");
        audited(&c, &ops_id, "user:write", "no_matching_right");
        assert!(!c.path().join("eve.profile").exists());
    });

    g.case(
        "minting itself a cluster:admin token is denied as widening and audited",
        || {
            let out = as_profile(
                &c,
                &ops,
                &[
                    "token",
                    "mint",
                    "--for",
                    &ops_id,
                    "--operation",
                    "cluster:admin",
                ],
            );
            refused(
                &out,
                &["cannot grant more than its minter holds"],
                "cluster:admin",
            );
            let d = audited(&c, &ops_id, "token:mint", "delegation would widen");
            assert!(
                d.reason.as_deref().unwrap().contains("cluster:admin"),
                "{d:?}"
            );
        },
    );

    g.case(
        "applying a custom role that grants cluster:admin is denied (role:write)",
        || {
            let f = c.path().join("ops-root.toml");
            std::fs::write(
                &f,
                "[[role]]\nname = \"ops-root\"\nrights = [ { operation = \"cluster:admin\", resource = \"cluster\" } ]\n",
            )
            .unwrap();
            let out = as_profile(&c, &ops, &["role", "apply", f.to_str().unwrap()]);
            refused(&out, &["permission denied"], "role apply");
            audited(&c, &ops_id, "role:write", "no_matching_right");
            let out = ok(c.cli(&["role", "list", "--json"]), "role list");
            assert!(!stdout(&out).contains("ops-root"), "{}", stdout(&out));
        },
    );

    g.case(
        "an authority join token, to bring in a rogue member, is denied (cluster:admin)",
        || {
            let out = as_profile(&c, &ops, &["authority", "join-token"]);
            refused(&out, &["no right allows cluster:admin"], "join-token");
            audited(&c, &ops_id, "cluster:admin", "no_matching_right");
        },
    );

    g.case(
        "sealing the audit log to drop its own records is denied (audit:seal)",
        || {
            let size_before = records(&c, &[]).len();
            let out = as_profile(
                &c,
                &ops,
                &[
                    "audit",
                    "seal",
                    "--out",
                    &c.path().join("ops.seal").display().to_string(),
                ],
            );
            refused(&out, &["permission denied"], "audit seal");
            audited(&c, &ops_id, "audit:seal", "no_matching_right");
            assert!(
                records(&c, &[]).len() >= size_before,
                "records were dropped"
            );
        },
    );
    g.finish();
}
