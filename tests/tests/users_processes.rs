//! Users end to end, all real processes: an authority (`authority run`) and the CLI. `user add`
//! profiles, role confinement, token binding, one-time invites, renewal with `login`, expiry,
//! removal (revoking what the user holds), and no secret in the authority's log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ringzero_policy::svid::{csr_for, generate_key};
use ringzero_policy::{SpiffeId, TrustDomain};
use ringzero_proto::client::{AuthorityClient, Profile, bundle_cas};
use ringzero_proto::pb;
use ringzero_tests::{SoloAuthority, ringzero, run_timeout, show};
use rustls_pki_types::CertificateDer;

const TD: &str = "users.test";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ringzero --profile PROFILE ARGS…`.
fn as_user(a: &SoloAuthority, profile: &Path, args: &[&str]) -> Output {
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile").arg(profile).args(args);
    run_timeout(cmd, Duration::from_secs(60))
}

fn profile(path: &Path) -> Profile {
    Profile::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn add_user(a: &SoloAuthority, name: &str, role: &[&str]) -> PathBuf {
    let out_path = a.root.path().join(format!("{name}.profile"));
    let mut args = vec!["user", "add", name];
    args.extend_from_slice(role);
    let out_arg = out_path.to_string_lossy().into_owned();
    args.extend_from_slice(&["--out", &out_arg]);
    let out = a.cli(&args);
    assert!(out.status.success(), "user add {name}: {}", show(&out));
    assert_eq!(mode(&out_path), 0o600);
    out_path
}

fn invite(a: &SoloAuthority, name: &str, role: &[&str]) -> PathBuf {
    let mut args = vec!["user", "invite", name];
    args.extend_from_slice(role);
    let out = a.cli(&args);
    assert!(out.status.success(), "user invite: {}", show(&out));
    let invite = stdout(&out).lines().last().unwrap().trim().to_owned();
    assert!(
        !stderr(&out).contains(&invite),
        "the invite went to stderr: {}",
        show(&out)
    );
    let path = a.root.path().join(format!("{name}.invite"));
    std::fs::write(&path, &invite).unwrap();
    path
}

fn login_invite(a: &SoloAuthority, invite: &Path, out_path: &Path) -> Output {
    let mut cmd = ringzero(a.root.path());
    cmd.args(["login", "--authority", &a.addr])
        .arg("--invite")
        .arg(format!("@{}", invite.display()))
        .arg("--out")
        .arg(out_path);
    run_timeout(cmd, Duration::from_secs(60))
}

fn entry_create(a: &SoloAuthority, profile: &Path, id: &str) -> Output {
    as_user(
        a,
        profile,
        &[
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--node",
            "n1",
            "--selector",
            "unix:uid:1000",
        ],
    )
}

#[test]
fn users_roles_invites_renewal_and_removal() {
    let a = SoloAuthority::start("users-proc", TD);

    // An operator added by the admin: a 0600 profile that works.
    let bob = add_user(&a, "bob", &["--role", "operator"]);
    let out = as_user(&a, &bob, &["authority", "status"]);
    assert!(out.status.success(), "bob's status: {}", show(&out));
    let out = as_user(
        &a,
        &bob,
        &["user", "add", "eve", "--role", "admin", "--out", "eve.p"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "an operator adds no users: {}",
        show(&out)
    );
    assert!(stderr(&out).contains("permission denied"), "{}", show(&out));

    // Bad input is refused before or by the authority, exit 2 or 1 with a reason.
    let out = a.cli(&["user", "add", "x", "--role", "developer", "--out", "x.p"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("namespace"), "{}", show(&out));
    let out = a.cli(&["user", "add", "x", "--role", "nosuchrole", "--out", "x.p"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let out = a.cli(&["user", "add", "a/b", "--role", "auditor", "--out", "x.p"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let out = a.cli(&["user", "add", "bob", "--role", "auditor", "--out", "bob2.p"]);
    assert_eq!(out.status.code(), Some(1), "bob exists: {}", show(&out));

    // A developer is confined to its namespace, and may select only the processes an admin
    // gave it: the built-in role gives none.
    let carol = add_user(&a, "carol", &["--role", "developer", "--namespace", "shop"]);
    let out = entry_create(&a, &carol, &format!("spiffe://{TD}/ns/shop/x"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "carol selects uid 1000: {}",
        show(&out)
    );
    assert!(
        stderr(&out).contains("entry:select on selector/unix/uid/1000/node/n1"),
        "{}",
        show(&out)
    );
    let roles = a.root.path().join("shop.toml");
    std::fs::write(
        &roles,
        "[[role]]\nname = \"shop-dev\"\nrights = [ { operation = \"entry:write\", resource = \"ns/shop\" }, { operation = \"entry:select\", resource = \"selector/unix/uid/1000\" }, { operation = \"authority:read\", resource = \"authority\" } ]\n",
    )
    .unwrap();
    let out = a.cli(&["role", "apply", roles.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let erin = add_user(&a, "erin", &["--role", "shop-dev"]);
    let out = entry_create(&a, &erin, &format!("spiffe://{TD}/ns/shop/x"));
    assert!(
        out.status.success(),
        "erin in her namespace with her uid: {}",
        show(&out)
    );
    let out = entry_create(&a, &carol, &format!("spiffe://{TD}/ns/other/x"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "carol elsewhere: {}",
        show(&out)
    );
    assert!(stderr(&out).contains("permission denied"), "{}", show(&out));

    // A token bound to one user is refused over another user's mTLS identity.
    let mut crossed = profile(&bob);
    crossed.token = profile(&carol).token;
    let crossed_path = a.root.path().join("crossed.profile");
    std::fs::write(&crossed_path, crossed.to_toml().unwrap()).unwrap();
    let out = as_user(&a, &crossed_path, &["authority", "status"]);
    assert_eq!(out.status.code(), Some(1), "crossed token: {}", show(&out));
    assert!(stderr(&out).contains("peer"), "{}", show(&out));

    // An invite works once; the key is made by `login`.
    let dave_invite = invite(&a, "dave", &["--role", "auditor"]);
    let dave = a.root.path().join("dave.profile");
    let out = login_invite(&a, &dave_invite, &dave);
    assert!(out.status.success(), "dave's login: {}", show(&out));
    assert_eq!(mode(&dave), 0o600);
    let out = as_user(&a, &dave, &["authority", "status"]);
    assert!(out.status.success(), "dave's status: {}", show(&out));
    let out = login_invite(&a, &dave_invite, &a.root.path().join("dave2.profile"));
    assert_eq!(out.status.code(), Some(1), "a second login: {}", show(&out));
    assert!(stderr(&out).contains("already used"), "{}", show(&out));
    let out = a.cli(&["user", "list", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let users: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "bob", "carol", "dave", "erin"]);

    // `login` renews a profile in place: new key, new SVID, new token, still working.
    let before = profile(&dave);
    let out = as_user(&a, &dave, &["login"]);
    assert!(out.status.success(), "renewal: {}", show(&out));
    let after = profile(&dave);
    assert_ne!(before.svid_pem, after.svid_pem);
    assert_ne!(before.key_pem, after.key_pem);
    assert_ne!(before.token, after.token);
    assert_eq!(mode(&dave), 0o600);
    let out = as_user(&a, &dave, &["authority", "status"]);
    assert!(out.status.success(), "renewed status: {}", show(&out));

    // Removing a user revokes what it holds: its still-valid profile is refused, and it
    // cannot renew.
    // A capability delegated to bob (not minted with his user record) must die with him too.
    let td = profile(&bob).trust_domain;
    let out = a.cli(&[
        "token",
        "mint",
        "--for",
        &format!("spiffe://{td}/user/bob"),
        "--operation",
        "authority:read",
        "--resource",
        "authority",
    ]);
    assert!(out.status.success(), "mint for bob: {}", show(&out));
    let delegated = stdout(&out).lines().last().unwrap().trim().to_owned();
    let bob_delegated = a.root.path().join("bob-delegated.profile");
    let mut p = profile(&bob);
    p.token = delegated;
    std::fs::write(&bob_delegated, p.to_toml().unwrap()).unwrap();
    let out = as_user(&a, &bob_delegated, &["authority", "status"]);
    assert!(
        out.status.success(),
        "delegated before removal: {}",
        show(&out)
    );

    let out = a.cli(&["user", "remove", "bob"]);
    assert!(out.status.success(), "remove bob: {}", show(&out));
    let out = as_user(&a, &bob_delegated, &["authority", "status"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "delegated after removal: {}",
        show(&out)
    );
    let out = as_user(&a, &bob, &["authority", "status"]);
    assert_eq!(out.status.code(), Some(1), "removed bob: {}", show(&out));
    assert!(stderr(&out).contains("revoked"), "{}", show(&out));
    let out = as_user(&a, &bob, &["login"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "removed bob renews: {}",
        show(&out)
    );
    let out = a.cli(&["user", "remove", "bob"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("not found"), "{}", show(&out));

    // An expired profile is refused, renewal included (its SVID no longer connects).
    let short = short_lived_profile(&a, "frank", 4);
    std::thread::sleep(Duration::from_secs(5));
    let out = as_user(&a, &short, &["authority", "status"]);
    assert_eq!(out.status.code(), Some(1), "expired: {}", show(&out));
    let out = as_user(&a, &short, &["login"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expired renewal: {}",
        show(&out)
    );

    // No capability, key or invite secret in the authority's log.
    let log = std::fs::read_to_string(a.root.path().join("n1.log")).unwrap();
    for p in [&bob, &carol, &dave] {
        let p = profile(p);
        assert!(!log.contains(&p.token), "a token in the log");
        assert!(
            !log.contains(p.key_pem.lines().nth(1).unwrap()),
            "a key in the log"
        );
    }
    assert!(!log.contains(&before.token));
    let dave_invite = std::fs::read_to_string(&dave_invite).unwrap();
    let secret = dave_invite.split('.').nth(1).unwrap();
    assert!(!log.contains(secret), "an invite secret in the log");
    assert!(!log.contains("PRIVATE KEY"));
}

/// Adds a user through the API with a credential lifetime of `secs` seconds (the CLI's
/// minimum is a minute) and writes its profile.
fn short_lived_profile(a: &SoloAuthority, name: &str, secs: u64) -> PathBuf {
    let admin = profile(&a.profile);
    let td = TrustDomain::new(TD).unwrap();
    let key = generate_key().unwrap();
    let id = SpiffeId::parse(&format!("spiffe://{TD}/user/{name}")).unwrap();
    let csr = csr_for(&key, &id).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reply = rt.block_on(async {
        let mut client =
            AuthorityClient::new(admin.credentials().unwrap(), admin.authorities.clone());
        client
            .call(|mut c| {
                let csr = csr.clone();
                let name = name.to_owned();
                async move {
                    c.add_user(pb::AddUserRequest {
                        name,
                        role: "auditor".into(),
                        namespace: String::new(),
                        csr,
                        ttl_seconds: secs,
                    })
                    .await
                }
            })
            .await
            .unwrap()
    });
    let chain: Vec<CertificateDer<'static>> = reply
        .svid_chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let cas = bundle_cas(reply.bundle.as_ref().unwrap());
    let p = Profile::new(
        &td,
        admin.authorities.clone(),
        &cas,
        &chain,
        &key.serialize_der(),
        &reply.token,
    );
    let path = a.root.path().join(format!("{name}.profile"));
    std::fs::write(&path, p.to_toml().unwrap()).unwrap();
    let out = as_user(a, &path, &["authority", "status"]);
    assert!(out.status.success(), "{name} before expiry: {}", show(&out));
    path
}

#[test]
fn break_glass_admin_profile_and_admin_renewal() {
    use std::os::unix::fs::PermissionsExt;
    let a = SoloAuthority::start("users-breakglass", TD);

    // The bootstrap admin is a user like any other: it renews with `login`.
    let before = profile(&a.profile);
    let out = a.cli(&["login"]);
    assert!(out.status.success(), "admin renewal: {}", show(&out));
    assert_ne!(profile(&a.profile).svid_pem, before.svid_pem);
    let out = a.cli(&["user", "list"]);
    assert!(
        out.status.success() && stdout(&out).contains("admin"),
        "{}",
        show(&out)
    );

    // Root on the node's machine gets a fresh admin profile from the admin socket.
    let bg = a.root.path().join("bg.profile");
    let mut cmd = ringzero(a.root.path());
    cmd.args(["authority", "admin-profile", "--ttl", "1h", "--data-dir"])
        .arg(&a.dir)
        .arg("--out")
        .arg(&bg);
    let out = run_timeout(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "admin-profile: {}", show(&out));
    assert_eq!(mode(&bg), 0o600);
    assert_eq!(
        mode(&a.dir.join("admin.sock")),
        0o600,
        "the socket is root's alone"
    );
    let out = as_user(&a, &bg, &["authority", "status"]);
    assert!(out.status.success(), "break-glass status: {}", show(&out));
    let out = as_user(
        &a,
        &bg,
        &["user", "add", "gina", "--role", "auditor", "--out", "g.p"],
    );
    assert!(
        out.status.success(),
        "break-glass admin adds: {}",
        show(&out)
    );

    // Anyone else is refused by the peer-credential check (the socket opened up on purpose to
    // reach it), and the refusal is audited.
    let whoami = run_timeout(
        {
            let mut c = std::process::Command::new("id");
            c.arg("-u");
            c
        },
        Duration::from_secs(5),
    );
    let as_root = whoami.stdout == b"0\n";
    if as_root && Path::new("/usr/bin/setpriv").exists() {
        for dir in [a.root.path(), a.dir.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        }
        std::fs::set_permissions(
            a.dir.join("admin.sock"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let mut cmd = std::process::Command::new("/usr/bin/setpriv");
        cmd.current_dir("/")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(ringzero_tests::ringzero_bin())
            .args(["authority", "admin-profile", "--data-dir"])
            .arg(&a.dir)
            .args(["--out", "/tmp/never.profile"]);
        let out = run_timeout(cmd, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(1), "non-root: {}", show(&out));
        assert!(stderr(&out).contains("root only"), "{}", show(&out));
        assert!(!Path::new("/tmp/never.profile").exists());
        let out = a.cli(&["audit", "query", "--decision", "deny", "--json"]);
        assert!(out.status.success(), "{}", show(&out));
        assert!(
            stdout(&out).contains("local:admin-socket uid=65534"),
            "the refusal is audited: {}",
            show(&out)
        );
    }
    let out = a.cli(&["audit", "query", "--operation", "token:mint", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stdout(&out).contains("local:admin-socket uid=0"),
        "the break-glass issue is audited: {}",
        show(&out)
    );
}
