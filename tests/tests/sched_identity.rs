//! The scheduler with its own identity, real processes: `sched token` (admin only) →
//! `sched run --join-token @file --data-dir D` enrolls as `spiffe://TD/ringzero/sched/<name>`
//! and places a job's allocations; a wrong or reused token is refused; the credentials in D
//! cannot add a user, apply a role, create an entry, submit a job or mint a token (denied and
//! audited); a `ringzero/sched/<name>` certificate the authority never recorded issuing opens
//! nothing even with the scheduler's real capability (`unrecorded_certificate`); they renew at
//! half-life while the daemon keeps placing; a restart with the same D needs no token;
//! `sched remove` cuts it off at its next call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ringzero_proto::client::{AuthorityClient, Profile};
use ringzero_proto::pb;
use ringzero_tests::agent::{agent_cmd, my_uid, spawn_ready_agent};
use ringzero_tests::{Proc, SoloAuthority, audit, ringzero, show, wait_until};

const TD: &str = "schedid.test";
const POLL: Duration = Duration::from_millis(300);

fn allocs(a: &SoloAuthority) -> Vec<pb::Alloc> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let p = Profile::from_toml(&std::fs::read_to_string(&a.profile).unwrap()).unwrap();
    let mut c = AuthorityClient::new(p.credentials().unwrap(), p.authorities.clone());
    rt.block_on(
        c.call(|mut g| async move { g.list_allocs(pb::ListAllocsRequest::default()).await }),
    )
    .unwrap()
    .allocs
}

fn placed(a: &SoloAuthority, job: &str) -> Vec<pb::Alloc> {
    allocs(a)
        .into_iter()
        .filter(|x| x.job == job && x.desired == pb::AllocDesired::Run as i32)
        .collect()
}

fn job_file(a: &SoloAuthority, name: &str) -> String {
    let uid = my_uid();
    let path = a.root.path().join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "namespace = \"shop\"\nname = \"{name}\"\ncommand = \"/bin/sleep\"\n\
             args = [\"120\"]\nuid = {uid}\ngid = {uid}\ncount = 1\n\
             spiffe_id = \"spiffe://{TD}/ns/shop/{name}\"\n"
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn with_profile(a: &SoloAuthority, profile: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = ringzero(a.root.path());
    cmd.arg("--profile").arg(profile).args(args);
    ringzero_tests::run_timeout(cmd, Duration::from_secs(60))
}

/// `sched run` with its own identity in `dir` (and `extra` flags).
fn sched_cmd(a: &SoloAuthority, dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = ringzero(a.root.path());
    cmd.args(["sched", "run", "--authority", &a.addr, "--data-dir"])
        .arg(dir)
        .args(extra);
    cmd
}

const RUN_FLAGS: &[&str] = &[
    "--interval",
    "300ms",
    "--lost-after",
    "2s",
    "--lease-ttl",
    "3s",
];

/// A client presenting a certificate for `id` signed by the authority's own CA key with a
/// fresh serial (one the authority never recorded), and `token`.
fn forged_client(a: &SoloAuthority, id: &str, token: &str) -> AuthorityClient {
    use rcgen::{
        CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType, SerialNumber,
    };
    let keys = a.dir.join("keys");
    let ca_der =
        rustls_pki_types::CertificateDer::from(std::fs::read(keys.join("ca.der")).unwrap());
    let ca_key = KeyPair::try_from(std::fs::read(keys.join("ca.key")).unwrap().as_slice()).unwrap();
    let issuer = Issuer::from_ca_cert_der(&ca_der, &ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    let now = std::time::SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + Duration::from_secs(600)).into();
    params.serial_number = Some(SerialNumber::from_slice(&[0x5c, 0xed, 0x01, 0x02, 0x03]));
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).unwrap();
    let mut p = Profile::from_toml(&std::fs::read_to_string(&a.profile).unwrap()).unwrap();
    p.svid_pem = cert.pem();
    p.key_pem = key.serialize_pem();
    p.token = token.to_owned();
    AuthorityClient::new(p.credentials().unwrap(), vec![a.addr.clone()])
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn scheduler_enrolls_with_its_own_identity_and_is_cut_off() {
    let a = SoloAuthority::start("sched-identity", TD);
    let root = a.root.path().to_path_buf();
    let sched_id = format!("spiffe://{TD}/ringzero/sched/s1");

    // Minting a scheduler token is an admin's act: an operator (node:enroll, user:read…) is
    // refused.
    let op = root.join("op.profile");
    let out = a.cli(&[
        "user",
        "add",
        "op",
        "--role",
        "operator",
        "--out",
        op.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "user add op: {}", show(&out));
    let out = with_profile(&a, &op, &["sched", "token", "--name", "s1"]);
    assert!(
        !out.status.success(),
        "an operator minted a scheduler token: {}",
        show(&out)
    );

    // The token: alone on the last line of stdout; --json for data.
    let out = a.cli(&["sched", "token", "--name", "s1", "--ttl", "10m"]);
    assert!(out.status.success(), "sched token: {}", show(&out));
    let token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&token));
    let token_file = root.join("s1.token");
    std::fs::write(&token_file, &token).unwrap();
    let token_arg = format!("@{}", token_file.display());

    // A wrong secret is refused, and nothing is written in its data directory.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = "A".repeat(parts[1].len());
    let wrong = parts.join(".");
    let d0 = root.join("sched-wrong");
    let out = ringzero_tests::run_timeout(
        sched_cmd(&a, &d0, &["--join-token", &wrong, "--once"]),
        Duration::from_secs(60),
    );
    assert!(
        !out.status.success(),
        "a wrong token enrolled: {}",
        show(&out)
    );
    assert!(!d0.join("profile.toml").exists());

    let _n1 = {
        let t = a.node_token("n1", "10m");
        let t = format!("@{}", t.display());
        let dir = root.join("agent-n1");
        let cmd = agent_cmd(&root, &a.addr, Some(&t), &dir, &root.join("n1.sock"));
        spawn_ready_agent(
            "agent-n1",
            cmd,
            &root.join("agent-n1.log"),
            Duration::from_secs(30),
        )
    };

    // First start: enrolls with the token, holds the lease. Short-lived credentials (20 s) so
    // that the test sees a renewal.
    let d = root.join("sched-s1");
    let mut flags = vec![
        "--join-token",
        token_arg.as_str(),
        "--credential-ttl",
        "20s",
    ];
    flags.extend_from_slice(RUN_FLAGS);
    let log = root.join("sched-s1.log");
    let mut sched = Proc::spawn("sched-s1", sched_cmd(&a, &d, &flags), &log);
    wait_until(
        "the scheduler to hold the lease",
        Duration::from_secs(30),
        POLL,
        || {
            assert!(sched.is_running(), "sched exited: {}", sched.log());
            sched.log().contains("lease acquired").then_some(())
        },
    );
    assert!(
        sched.log().contains(&format!("enrolled as {sched_id}")),
        "{}",
        sched.log()
    );
    let profile = d.join("profile.toml");
    assert_eq!(mode(&d), 0o700);
    assert_eq!(mode(&profile), 0o600);

    // The token was used: a second redemption is refused.
    let out = ringzero_tests::run_timeout(
        sched_cmd(
            &a,
            &root.join("sched-again"),
            &["--join-token", &token_arg, "--once"],
        ),
        Duration::from_secs(60),
    );
    assert!(
        !out.status.success(),
        "a used token enrolled again: {}",
        show(&out)
    );

    // It places a job, as itself.
    let out = a.cli(&["job", "run", &job_file(&a, "web")]);
    assert!(out.status.success(), "job run: {}", show(&out));
    let web = wait_until("web placed", Duration::from_secs(20), POLL, || {
        let p = placed(&a, "web");
        (p.len() == 1).then_some(p)
    });
    assert_eq!(web[0].placed_by, sched_id);
    assert_eq!(web[0].node, "n1");

    // Listed by `sched list`, not by `user list`.
    let out = a.cli(&["sched", "list", "--json"]);
    assert!(out.status.success(), "sched list: {}", show(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "s1", "{list}");
    let out = a.cli(&["user", "list", "--json"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("sched:"),
        "{}",
        show(&out)
    );

    // Renewal at half-life (10 s), over mTLS with its own SVID; it keeps placing after it.
    wait_until("a renewal", Duration::from_secs(30), POLL, || {
        sched
            .log()
            .contains("scheduler credentials renewed")
            .then_some(())
    });
    // Renewed at half-life, not in a loop (the SVID's notBefore is backdated for clock skew).
    let renewals = sched.log().matches("scheduler credentials renewed").count();
    assert!(renewals <= 2, "{renewals} renewals: {}", sched.log());
    let out = a.cli(&["job", "run", &job_file(&a, "api")]);
    assert!(out.status.success(), "job run: {}", show(&out));
    wait_until(
        "api placed after the renewal",
        Duration::from_secs(20),
        POLL,
        || (placed(&a, "api").len() == 1).then_some(()),
    );

    // Its credentials (a copy of the fresh profile) hold the scheduler role and nothing else.
    let stolen = root.join("stolen.profile");
    std::fs::copy(&profile, &stolen).unwrap();
    let roles = root.join("evil-role.toml");
    std::fs::write(
        &roles,
        "[[role]]\nname = \"evil\"\nrights = [ { operation = \"user:write\", resource = \"user\" } ]\n",
    )
    .unwrap();
    let mallory = root.join("mallory.profile");
    let evil_id = format!("spiffe://{TD}/ns/shop/evil");
    let attempts: [&[&str]; 7] = [
        &[
            "user",
            "add",
            "mallory",
            "--role",
            "admin",
            "--out",
            mallory.to_str().unwrap(),
        ],
        &["role", "apply", roles.to_str().unwrap()],
        &[
            "entry",
            "create",
            "--spiffe-id",
            &evil_id,
            "--node",
            "n1",
            "--selector",
            "unix:uid:0",
        ],
        &["job", "run", &job_file(&a, "evil")],
        &[
            "token",
            "mint",
            "--for",
            &evil_id,
            "--operation",
            "job:launch",
            "--resource",
            "ns",
        ],
        &["sched", "token", "--name", "s2"],
        &["node", "token", "--name", "n9"],
    ];
    for args in attempts {
        let out = with_profile(&a, &stolen, args);
        assert!(
            !out.status.success(),
            "{args:?} was allowed: {}",
            show(&out)
        );
    }
    let denied = audit(&a, &["--decision", "deny", "--actor", &sched_id]);
    for op in [
        "user:write",
        "role:write",
        "entry:write",
        "sched:submit",
        "token:mint",
        "cluster:admin",
        "node:enroll",
    ] {
        assert!(
            denied.iter().any(|r| r["operation"] == op),
            "no denial of {op} recorded: {denied:?}"
        );
    }

    // An identity string is not an identity: a ringzero/sched/s1 certificate the authority
    // never recorded issuing (here signed by its own CA key, as only a CA key holder can),
    // presented with the scheduler's real capability, opens nothing.
    let token = Profile::from_toml(&std::fs::read_to_string(&stolen).unwrap())
        .unwrap()
        .token;
    let mut forged = forged_client(&a, &sched_id, &token);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(
            forged.call(|mut g| async move { g.list_jobs(pb::ListJobsRequest::default()).await }),
        )
        .expect_err("a forged scheduler certificate was honoured");
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
    let denied = audit(&a, &["--decision", "deny", "--actor", &sched_id]);
    assert!(
        denied.iter().any(|r| r["reason"]
            .as_str()
            .is_some_and(|w| w.starts_with("unrecorded_certificate"))),
        "no unrecorded_certificate denial: {denied:?}"
    );

    // A restart with the same directory needs no token.
    let status = sched
        .terminate(Duration::from_secs(10))
        .expect("the scheduler exits");
    assert!(status.success(), "{status:?}: {}", sched.log());
    let log2 = root.join("sched-s1-restart.log");
    let mut sched = Proc::spawn("sched-s1b", sched_cmd(&a, &d, RUN_FLAGS), &log2);
    wait_until(
        "the restarted scheduler to hold the lease",
        Duration::from_secs(30),
        POLL,
        || {
            assert!(sched.is_running(), "sched exited: {}", sched.log());
            sched.log().contains("lease acquired").then_some(())
        },
    );
    assert!(!sched.log().contains("enrolled as"), "{}", sched.log());
    let out = a.cli(&["job", "run", &job_file(&a, "db")]);
    assert!(out.status.success(), "job run: {}", show(&out));
    wait_until(
        "db placed after the restart",
        Duration::from_secs(20),
        POLL,
        || {
            placed(&a, "db")
                .first()
                .map(|x| assert_eq!(x.placed_by, sched_id))
        },
    );

    // `sched remove`: its serials and capabilities are revoked; its next call fails.
    let out = a.cli(&["sched", "remove", "s1"]);
    assert!(out.status.success(), "sched remove: {}", show(&out));
    let out = a.cli(&["job", "run", &job_file(&a, "late")]);
    assert!(out.status.success(), "job run: {}", show(&out));
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        placed(&a, "late").is_empty(),
        "a removed scheduler placed a job"
    );
    let out = with_profile(&a, &profile, &["job", "list"]);
    assert!(
        !out.status.success(),
        "a removed scheduler read jobs: {}",
        show(&out)
    );
    let denied = audit(&a, &["--decision", "deny", "--actor", &sched_id]);
    assert!(
        denied.iter().any(|r| r["operation"] == "sched:read"),
        "no denial of the removed scheduler's reads: {denied:?}"
    );
    let out = a.cli(&["sched", "list", "--json"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[]",
        "{}",
        show(&out)
    );
    let _ = sched.terminate(Duration::from_secs(10));
}
