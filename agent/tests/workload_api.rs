//! The Workload API end to end: a cache filled with a real CA and SVIDs, the server on a temp
//! socket, and callers that are the standard `spiffe` crate client, ringzero's own fetch
//! client, raw generated gRPC stubs, raw bytes, and helper processes that exec after connecting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use ringzero_agent::testing::Serving;
use ringzero_agent::{
    FetchError, Identity, NO_IDENTITY, SvidCache, WorkloadLimits, bind_workload_socket,
    endpoint_path, fetch_x509,
};
use ringzero_policy::selector::{Selector, SelectorKind};
use ringzero_policy::svid::{SigningCa, TrustBundle, Usage, validate_svid};
use ringzero_policy::testing::CaBuilder;
use ringzero_policy::{SpiffeId, TrustDomain};
use ringzero_proto::transport::unix_channel;
use ringzero_proto::workload as pb;
use ringzero_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use rustls_pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

const TIMEOUT: Duration = Duration::from_secs(20);

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn ca() -> SigningCa {
    CaBuilder::new(&td(), "test-ca")
        .made_at(SystemTime::now())
        .build()
}

fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// A fresh key and SVID for `path` from `ca`, as the cache holds it.
fn identity(ca: &SigningCa, entry: &str, path: &str, selectors: Vec<Selector>) -> Identity {
    let id = SpiffeId::parse(&format!("spiffe://example.org/{path}")).unwrap();
    ringzero_agent::testing::identity(ca, entry, id, selectors)
}

struct Server {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    cache: SvidCache,
    ca: SigningCa,
    serving: Serving,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(WorkloadLimits::default()).await
    }

    async fn start_with(limits: WorkloadLimits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let cache = SvidCache::new();
        let ca = ca();
        cache.set_bundle(td(), vec![ca.cert_der().clone()]);
        let serving = Serving::start(&socket, cache.clone(), limits)
            .await
            .unwrap();
        Self {
            _dir: dir,
            socket,
            cache,
            ca,
            serving,
        }
    }

    fn uri(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle::new(td(), vec![self.ca.cert_der().clone()]).unwrap()
    }

    async fn spiffe_client(&self) -> spiffe::WorkloadApiClient {
        spiffe::WorkloadApiClient::connect_to(self.uri())
            .await
            .unwrap()
    }

    async fn raw_client(&self) -> SpiffeWorkloadApiClient<Channel> {
        SpiffeWorkloadApiClient::new(unix_channel(&self.socket).await.unwrap())
    }

    async fn stop(self) {
        self.serving.stop(TIMEOUT).await.unwrap();
    }
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    req
}

fn ders(certs: &[spiffe::cert::Certificate]) -> Vec<CertificateDer<'static>> {
    certs
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect()
}

#[tokio::test]
async fn spiffe_client_gets_the_svid_and_rotations_on_the_open_stream() {
    let server = Server::start().await;
    let first = identity(
        &server.ca,
        "web",
        "ns/default/web",
        vec![Selector::uid(my_uid())],
    );
    let first_leaf = first.chain[0].clone();
    server.cache.upsert(first);
    // An entry for another uid is not handed out.
    server.cache.upsert(identity(
        &server.ca,
        "other",
        "ns/default/other",
        vec![Selector::uid(my_uid().wrapping_add(1))],
    ));

    let client = server.spiffe_client().await;
    let svids = client.fetch_all_x509_svids().await.unwrap();
    assert_eq!(svids.len(), 1);
    let svid = &svids[0];
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/ns/default/web"
    );
    let chain = ders(svid.cert_chain());
    assert_eq!(chain[0], first_leaf);
    let validated = validate_svid(&chain, &server.bundle(), SystemTime::now(), Usage::Client)
        .expect("the served SVID verifies against the served bundle");
    assert_eq!(
        validated.id.to_string(),
        "spiffe://example.org/ns/default/web"
    );

    // Bundles, keyed by the trust domain.
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let ours = bundles
        .get(&spiffe::TrustDomain::new("example.org").unwrap())
        .unwrap();
    assert_eq!(ders(ours.authorities()), vec![server.ca.cert_der().clone()]);

    // Rotation: a new certificate arrives on the open stream.
    let mut stream = client.stream_x509_svids().await.unwrap();
    let initial = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ders(initial.cert_chain())[0], first_leaf);
    let rotated = identity(
        &server.ca,
        "web",
        "ns/default/web",
        vec![Selector::uid(my_uid())],
    );
    let rotated_leaf = rotated.chain[0].clone();
    assert_ne!(rotated_leaf, first_leaf);
    server.cache.upsert(rotated);
    let next = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ders(next.cert_chain())[0], rotated_leaf);
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn bundle_changes_and_losing_every_identity_reach_open_streams() {
    let server = Server::start().await;
    server.cache.upsert(identity(
        &server.ca,
        "web",
        "web",
        vec![Selector::uid(my_uid())],
    ));
    let mut client = server.raw_client().await;
    let mut svids = client
        .fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut bundles = client
        .fetch_x509_bundles(with_header(pb::X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = svids.message().await.unwrap().unwrap();
    assert_eq!(first.svids.len(), 1);
    assert_eq!(first.svids[0].bundle, server.ca.cert_der().to_vec());
    let b = bundles.message().await.unwrap().unwrap();
    assert_eq!(
        b.bundles.keys().collect::<Vec<_>>(),
        ["spiffe://example.org"]
    );

    // A second CA joins the bundle: both streams send the new state.
    let second_ca = ca();
    server.cache.set_bundle(
        td(),
        vec![server.ca.cert_der().clone(), second_ca.cert_der().clone()],
    );
    let both: Vec<u8> = [server.ca.cert_der().to_vec(), second_ca.cert_der().to_vec()].concat();
    let m = svids.message().await.unwrap().unwrap();
    assert_eq!(m.svids[0].bundle, both);
    let b = bundles.message().await.unwrap().unwrap();
    assert_eq!(b.bundles["spiffe://example.org"], both);

    // A federated trust domain appears in federated_bundles.
    let other = CaBuilder::new(&TrustDomain::new("other.org").unwrap(), "other")
        .made_at(SystemTime::now())
        .ttl(Duration::from_secs(3600))
        .build();
    server.cache.set_bundle(
        TrustDomain::new("other.org").unwrap(),
        vec![other.cert_der().clone()],
    );
    let m = svids.message().await.unwrap().unwrap();
    assert_eq!(
        m.federated_bundles["spiffe://other.org"],
        other.cert_der().to_vec()
    );

    // The entry goes away: the stream ends with PermissionDenied.
    assert!(server.cache.remove("web"));
    let end = svids.message().await.unwrap_err();
    assert_eq!(end.code(), tonic::Code::PermissionDenied);
    assert_eq!(end.message(), NO_IDENTITY);
    server.stop().await;
}

#[tokio::test]
async fn missing_header_is_invalid_argument_and_disturbs_nobody() {
    let server = Server::start().await;
    server.cache.upsert(identity(
        &server.ca,
        "web",
        "web",
        vec![Selector::uid(my_uid())],
    ));
    // Another client's stream is open throughout.
    let mut bystander = server.raw_client().await;
    let mut open = bystander
        .fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    open.message().await.unwrap().unwrap();

    let mut client = server.raw_client().await;
    let err = client
        .fetch_x509svid(tonic::Request::new(pb::X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut wrong = tonic::Request::new(pb::X509BundlesRequest {});
    wrong
        .metadata_mut()
        .insert("workload.spiffe.io", "yes".parse().unwrap());
    let err = client.fetch_x509_bundles(wrong).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // A bare Workload API server (no authority behind it to mint through) serves no
    // JWT-SVIDs: Unavailable, and the connection goes on.
    let err = client
        .fetch_jwtsvid(with_header(pb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    // The same connection and the bystander still work.
    let ok = client
        .fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ok.svids.len(), 1);
    let rotated = identity(&server.ca, "web", "web", vec![Selector::uid(my_uid())]);
    server.cache.upsert(rotated);
    open.message().await.unwrap().unwrap();
    server.stop().await;
}

#[tokio::test]
async fn no_matching_entry_is_permission_denied() {
    let server = Server::start().await;
    // Nothing at all, then only an entry for another uid.
    let err = fetch_x509(&server.socket, TIMEOUT).await.unwrap_err();
    assert!(
        matches!(&err, FetchError::Status { code: tonic::Code::PermissionDenied, message } if message == NO_IDENTITY),
        "{err}"
    );
    server.cache.upsert(identity(
        &server.ca,
        "other",
        "other",
        vec![Selector::uid(my_uid().wrapping_add(1))],
    ));
    let client = server.spiffe_client().await;
    let err = client.fetch_x509_svid().await.unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn fetch_validates_and_writes_files() {
    let server = Server::start().await;
    let id = identity(&server.ca, "web", "web", vec![Selector::uid(my_uid())]);
    let key = id.key.clone();
    server.cache.upsert(id);
    let socket = endpoint_path(&server.uri()).unwrap();
    let svids = fetch_x509(&socket, TIMEOUT).await.unwrap();
    assert_eq!(svids.len(), 1);
    let svid = &svids[0];
    assert_eq!(svid.spiffe_id.to_string(), "spiffe://example.org/web");
    assert_eq!(svid.key, key);
    assert!(svid.not_after > SystemTime::now());
    assert_eq!(svid.bundle, vec![server.ca.cert_der().clone()]);

    let out = tempfile::tempdir().unwrap();
    svid.write_to(out.path()).unwrap();
    svid.write_to(out.path()).unwrap(); // again, over the first files
    use std::os::unix::fs::PermissionsExt;
    let mode = |name: &str| {
        std::fs::metadata(out.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("svid.key"), 0o600);
    let key_pem = std::fs::read_to_string(out.path().join("svid.key")).unwrap();
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let chain_pem = std::fs::read_to_string(out.path().join("svid.pem")).unwrap();
    assert_eq!(chain_pem.matches("BEGIN CERTIFICATE").count(), 1);
    let bundle_pem = std::fs::read_to_string(out.path().join("bundle.pem")).unwrap();
    assert_eq!(bundle_pem, server.bundle().to_pem());
    server.stop().await;
}

#[tokio::test]
async fn garbage_and_oversized_requests_do_not_take_the_server_down() {
    let server = Server::start().await;
    server.cache.upsert(identity(
        &server.ca,
        "web",
        "web",
        vec![Selector::uid(my_uid())],
    ));
    // Raw garbage, an HTTP/1 request, and a connection that says nothing and stays open.
    for junk in [
        &b"\x00\xff garbage \x16\x03\x01 not http2"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0u8; 70_000][..],
    ] {
        let mut s = tokio::net::UnixStream::connect(&server.socket)
            .await
            .unwrap();
        let _ = s.write_all(junk).await;
        drop(s);
    }
    let _silent = tokio::net::UnixStream::connect(&server.socket)
        .await
        .unwrap();

    // An oversized message is refused; the connection and the server live on.
    let mut client = server.raw_client().await;
    let err = client
        .fetch_jwtsvid(with_header(pb::JwtsvidRequest {
            audience: vec!["a".repeat(1024 * 1024)],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    assert_ne!(err.code(), tonic::Code::Unimplemented, "{err:?}");

    let svids = fetch_x509(&server.socket, TIMEOUT).await.unwrap();
    assert_eq!(svids.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed() {
    connection_cap(WorkloadLimits {
        max_connections: 2,
        ..WorkloadLimits::default()
    })
    .await;
}

#[tokio::test]
async fn connections_beyond_the_per_uid_cap_are_closed() {
    connection_cap(WorkloadLimits {
        max_connections_per_uid: 2,
        ..WorkloadLimits::default()
    })
    .await;
}

/// Two connections are allowed by `limits`: a third is closed, until one of them goes away.
async fn connection_cap(limits: WorkloadLimits) {
    let server = Server::start_with(limits).await;
    server.cache.upsert(identity(
        &server.ca,
        "web",
        "web",
        vec![Selector::uid(my_uid())],
    ));
    let hold1 = server.raw_client().await;
    let hold2 = server.raw_client().await;
    // Each held channel has completed its connection; a third is turned away.
    let mut c1 = hold1.clone();
    c1.fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await
        .unwrap();
    let mut c2 = hold2.clone();
    c2.fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await
        .unwrap();
    assert!(
        fetch_x509(&server.socket, Duration::from_secs(5))
            .await
            .is_err()
    );
    drop((hold1, hold2, c1, c2));
    // Slots are freed when connections close.
    let mut ok = false;
    for _ in 0..50 {
        if fetch_x509(&server.socket, TIMEOUT).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a slot must free up once a connection closes");
    server.stop().await;
}

#[tokio::test]
async fn bind_replaces_only_stale_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(bind_workload_socket(&file).await.is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    let sock = dir.path().join("agent.sock");
    let live = bind_workload_socket(&sock).await.unwrap();
    assert!(
        bind_workload_socket(&sock).await.is_err(),
        "a live socket must not be stolen"
    );
    drop(live);
    let again = bind_workload_socket(&sock).await.unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
    drop(again);
}

// ---------------------------------------------------------------------------------------------
// Exec after connect
// ---------------------------------------------------------------------------------------------

/// The real Python interpreter binary, if there is one.
fn python() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os,sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    path.is_absolute().then_some(path)
}

/// Connects to the agent, waits for the server's first HTTP/2 bytes (sent only once the agent
/// has accepted and attested the connection), forwards them to stdout, then execs `target`
/// running a relay between the inherited socket and stdin/stdout.
const CONNECT_THEN_EXEC: &str = r#"
import os, socket, sys
sock_path, target = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.connect(sock_path)
s.settimeout(10)
first = s.recv(65536)
os.write(1, first)
s.settimeout(None)
os.set_inheritable(s.fileno(), True)
os.execv(target, [target, "-c", RELAY, str(s.fileno())])
"#;

const RELAY: &str = r#"
import os, socket, sys, threading
s = socket.socket(fileno=int(sys.argv[1]))
def up():
    while True:
        b = os.read(0, 65536)
        if not b:
            try: s.shutdown(socket.SHUT_WR)
            except OSError: pass
            return
        s.sendall(b)
threading.Thread(target=up, daemon=True).start()
while True:
    b = s.recv(65536)
    if not b:
        break
    os.write(1, b)
"#;

/// Runs the helper so that it connects as `python` and execs `target`, and makes one
/// FetchX509SVID call through it.
async fn fetch_through_exec(
    server: &Server,
    python: &Path,
    target: &Path,
) -> Result<pb::X509svidResponse, tonic::Status> {
    let script = CONNECT_THEN_EXEC.replace("RELAY", &format!("{RELAY:?}"));
    let mut child = tokio::process::Command::new(python)
        .args(["-c", &script])
        .arg(&server.socket)
        .arg(target)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let io = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let io = Arc::new(Mutex::new(Some(io)));
    let channel = Endpoint::from_static("http://workload.invalid")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let io = io.lock().unwrap().take();
            async move {
                io.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the relay serves one connection"))
            }
        }))
        .await
        .unwrap();
    let mut client = SpiffeWorkloadApiClient::new(channel);
    let result = tokio::time::timeout(TIMEOUT, async {
        client
            .fetch_x509svid(with_header(pb::X509svidRequest {}))
            .await?
            .into_inner()
            .message()
            .await?
            .ok_or_else(|| tonic::Status::internal("empty stream"))
    })
    .await
    .expect("the call through the relay finished");
    let _ = child.kill().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_after_connect_never_gets_the_new_binarys_identity() {
    let Some(python) = python() else {
        eprintln!("SKIPPED exec_after_connect_never_gets_the_new_binarys_identity: no python3");
        return;
    };
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-binary");
    std::fs::copy(&python, &other).unwrap();
    let path_sel = |p: &Path| Selector::new(SelectorKind::UnixPath, p.to_str().unwrap()).unwrap();
    server.cache.upsert(identity(
        &server.ca,
        "python",
        "python",
        vec![Selector::uid(my_uid()), path_sel(&python)],
    ));
    server.cache.upsert(identity(
        &server.ca,
        "other",
        "other",
        vec![Selector::uid(my_uid()), path_sel(&other)],
    ));

    // Control: connecting as python and exec'ing python again is the same binary; the caller
    // is python and gets python's identity (and only that).
    let same = fetch_through_exec(&server, &python, &python).await.unwrap();
    let ids: Vec<_> = same.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, ["spiffe://example.org/python"]);

    // The attack: connect as python, exec another binary that an entry selects.
    let status = fetch_through_exec(&server, &python, &other)
        .await
        .expect_err("an exec'd binary must get no identity");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        !status.message().contains("no identity issued"),
        "{status:?}"
    );

    // The other binary connecting by itself is entitled to its own identity.
    let direct = fetch_through_exec(&server, &other, &other).await.unwrap();
    let ids: Vec<_> = direct.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, ["spiffe://example.org/other"]);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_holds_back_only_itself() {
    let server = Server::start().await;
    let rotate = || identity(&server.ca, "web", "web", vec![Selector::uid(my_uid())]);
    server.cache.upsert(rotate());
    // Opens a stream and never reads it, while the cache changes many times.
    let mut stuck = server.raw_client().await;
    let _unread = stuck
        .fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    for _ in 0..200 {
        let id = rotate();
        last = Some(id.chain[0].clone());
        server.cache.upsert(id);
        tokio::task::yield_now().await;
    }
    // Everybody else is served the latest state at once.
    let svids = fetch_x509(&server.socket, TIMEOUT).await.unwrap();
    assert_eq!(Some(svids[0].chain[0].clone()), last);
    server.stop().await;
}
