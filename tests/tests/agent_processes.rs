//! The node agent end to end, all real processes: an authority (`authority run`), an agent
//! (`agent run`) enrolled with `node token`, an entry from `entry create`, and a workload
//! fetching its SVID through the Workload API with the standard `spiffe` client library —
//! then rotation on the open stream, eviction, and refused enrollments.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ringzero_policy::TrustDomain;
use ringzero_policy::svid::{TrustBundle, Usage, validate_svid};
use ringzero_proto::client::Profile;
use ringzero_tests::agent::{agent_cmd, my_uid, spawn_ready_agent};
use ringzero_tests::{Proc, SoloAuthority, ringzero, show, wait_until};
use rustls_pki_types::CertificateDer;
use tokio_stream::StreamExt;

const TD: &str = "agentproc.test";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_agent(a: &SoloAuthority, name: &str, token: &Path) -> (Proc, PathBuf, PathBuf) {
    let dir = a.root.path().join(format!("agent-{name}"));
    let socket = a.root.path().join(format!("{name}.sock"));
    let token = format!("@{}", token.display());
    let cmd = agent_cmd(a.root.path(), &a.addr, Some(&token), &dir, &socket);
    let log = a.root.path().join(format!("agent-{name}.log"));
    let p = spawn_ready_agent(&format!("agent-{name}"), cmd, &log, Duration::from_secs(20));
    (p, dir, socket)
}

fn bundle(a: &SoloAuthority) -> TrustBundle {
    let p = Profile::from_toml(&std::fs::read_to_string(&a.profile).unwrap()).unwrap();
    TrustBundle::new(TrustDomain::new(TD).unwrap(), p.bundle_certs().unwrap()).unwrap()
}

fn ders(certs: &[spiffe::cert::Certificate]) -> Vec<CertificateDer<'static>> {
    certs
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect()
}

#[test]
fn enroll_fetch_rotate_and_evict() {
    let a = SoloAuthority::start("agent-proc", TD);
    let token = a.node_token("n7", "10m");
    let (mut agent, data_dir, socket) = start_agent(&a, "n7", &token);

    // Key, SVID and token persist with owner-only modes.
    use std::os::unix::fs::PermissionsExt;
    for f in std::fs::read_dir(&data_dir).unwrap().flatten() {
        let meta = f.metadata().unwrap();
        if meta.is_file() {
            assert_eq!(
                meta.permissions().mode() & 0o077,
                0,
                "{} is readable by others",
                f.path().display()
            );
        }
    }

    // An entry for this test's uid on n7, with a short TTL so it rotates during the test.
    let me = format!("spiffe://{TD}/ns/test/me");
    let uid = my_uid().to_string();
    let out = a.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &me,
        "--node",
        "n7",
        "--selector",
        &format!("unix:uid:{uid}"),
        "--ttl",
        "10s",
    ]);
    assert!(out.status.success(), "entry create: {}", show(&out));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bundle = bundle(&a);
    rt.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
            .await
            .unwrap();
        // The entry reaches the agent through its feed and is issued within seconds.
        let deadline = Instant::now() + Duration::from_secs(15);
        let svid = loop {
            match client.fetch_all_x509_svids().await {
                Ok(s) if !s.is_empty() => break s.into_iter().next().unwrap(),
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "no SVID: {other:?}\n{}",
                        agent.log()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        assert_eq!(svid.spiffe_id().to_string(), me);
        let chain = ders(svid.cert_chain());
        let v = validate_svid(&chain, &bundle, SystemTime::now(), Usage::Client)
            .expect("the SVID verifies against the cluster's bundle");
        assert_eq!(v.id.to_string(), me);

        // Rotation at half-life (5 s of 10 s ± 10 %) arrives on the open stream.
        let mut stream = client.stream_x509_svids().await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let first_leaf = ders(first.cert_chain())[0].clone();
        let rotated = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                let next = stream.next().await.unwrap().unwrap();
                let leaf = ders(next.cert_chain())[0].clone();
                if leaf != first_leaf {
                    return next;
                }
            }
        })
        .await
        .expect("a rotated SVID within 15 s");
        let rchain = ders(rotated.cert_chain());
        validate_svid(&rchain, &bundle, SystemTime::now(), Usage::Client).unwrap();
    });

    // `agent fetch` writes the files a spiffe-helper-style tool would.
    let out_dir = a.root.path().join("fetched");
    let mut cmd = ringzero(a.root.path());
    cmd.args(["agent", "fetch", "--json", "--socket"])
        .arg(&socket)
        .arg("--write")
        .arg(&out_dir);
    let out = ringzero_tests::run_timeout(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "agent fetch: {}", show(&out));
    assert!(stdout(&out).contains(&me), "{}", show(&out));
    for f in ["svid.pem", "svid.key", "bundle.pem"] {
        assert!(out_dir.join(f).exists(), "{f} missing");
    }
    let key_mode = std::fs::metadata(out_dir.join("svid.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    // Evicting the node stops the agent with a message that says how to recover.
    let out = a.cli(&["node", "evict", "n7"]);
    assert!(out.status.success(), "evict: {}", show(&out));
    let status = wait_until(
        "the evicted agent to stop",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || agent.exited(),
    );
    assert!(!status.success());
    let log = agent.log();
    assert!(log.contains("evicted"), "{log}");
    assert!(log.contains("ringzero node token"), "{log}");
    // Restarting it does not bring it back: it cannot renew.
    let again = a.root.path().join("again.sock");
    let cmd = agent_cmd(a.root.path(), &a.addr, None, &data_dir, &again);
    let out = ringzero_tests::run_timeout(cmd, Duration::from_secs(30));
    assert!(!out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("evicted"), "{}", show(&out));

    // No token, key or join secret in the agent's log.
    let secret = std::fs::read_to_string(&token).unwrap();
    let secret_part = secret.trim().split('.').nth(1).unwrap().to_owned();
    assert!(!log.contains(&secret_part), "the join secret is in the log");
    for f in std::fs::read_dir(&data_dir).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name.contains("token") {
            let t = std::fs::read_to_string(f.path()).unwrap();
            assert!(!log.contains(t.trim()), "the capability is in the log");
        }
    }
}

#[test]
fn enrollment_is_refused_for_a_reused_wrong_pin_or_expired_token() {
    let a = SoloAuthority::start("agent-refusals", TD);
    let token = a.node_token("n1", "10m");
    let (agent, _, _) = start_agent(&a, "n1", &token);
    drop(agent);

    let try_enroll = |name: &str, token: &str| {
        let tfile = a.root.path().join(format!("{name}.try"));
        std::fs::write(&tfile, token).unwrap();
        let cmd = agent_cmd(
            a.root.path(),
            &a.addr,
            Some(&format!("@{}", tfile.display())),
            &a.root.path().join(format!("d-{name}")),
            &a.root.path().join(format!("{name}.sock")),
        );
        ringzero_tests::run_timeout(cmd, Duration::from_secs(30))
    };

    // Reuse.
    let used = std::fs::read_to_string(&token).unwrap();
    let out = try_enroll("reuse", &used);
    assert!(!out.status.success());
    assert!(show(&out).contains("already used"), "{}", show(&out));

    // A wrong pin: refused before the secret is presented, so the token still works after.
    let fresh = std::fs::read_to_string(a.node_token("n2", "10m")).unwrap();
    let mut parts: Vec<String> = fresh.trim().split('.').map(str::to_owned).collect();
    let pin = parts[2].clone();
    parts[2] = pin
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let out = try_enroll("badpin", &parts.join("."));
    assert!(!out.status.success());
    assert!(show(&out).to_lowercase().contains("pin"), "{}", show(&out));
    let (ok, _, _) = start_agent(&a, "n2", &a.root.path().join("n2.token"));
    drop(ok);

    // Expired.
    let short = std::fs::read_to_string(a.node_token("n3", "1s")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let out = try_enroll("expired", &short);
    assert!(!out.status.success());
    assert!(show(&out).contains("expired"), "{}", show(&out));
}

#[test]
fn an_authority_with_open_agent_feeds_shuts_down_promptly() {
    let mut a = SoloAuthority::start("agent-shutdown", TD);
    let token = a.node_token("n1", "10m");
    let (mut agent, _, _) = start_agent(&a, "n1", &token);
    // The agent holds its entry feed open; SIGTERM must still stop the authority at once.
    let t = Instant::now();
    let status = a.proc.terminate(Duration::from_secs(15));
    let took = t.elapsed();
    assert!(status.is_some_and(|s| s.success()), "{}", a.proc.log());
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    // The agent keeps serving its cache while the authority is away.
    assert!(agent.is_running(), "{}", agent.log());
}
