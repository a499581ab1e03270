//! Test fixture: CAs and SVIDs (through the policy crate's public issuance API), a tiny
//! Workload API server on a unix socket, echo targets, mTLS peers, and a sidecar runner.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use ringzero_mesh::config::Settings;
use ringzero_mesh::{MeshError, Sidecar};
use ringzero_policy::svid::{SigningCa, TrustBundle};
use ringzero_policy::testing::{CaBuilder, SvidBuilder, spiffe_id, trust_bundle, trust_domain};
use ringzero_policy::tls::{BundleSource, PeerMatch, SpiffeClientVerifier, SpiffeServerVerifier};
use ringzero_policy::{SpiffeId, TrustDomain};
use ringzero_proto::workload as pb;
use ringzero_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub const TD: &str = "example.org";

/// A signing CA of one trust domain.
pub struct Ca {
    pub ca: SigningCa,
    pub td: TrustDomain,
}

impl Ca {
    pub fn new(td: &str) -> Self {
        Self::named(td, "mesh test ca")
    }

    /// A CA with its own subject name.
    pub fn named(td: &str, name: &str) -> Self {
        let td = trust_domain(td);
        let ca = CaBuilder::new(&td, name)
            .made_at(SystemTime::now() - Duration::from_secs(3 * 3600))
            .ttl(Duration::from_secs(24 * 3600))
            .path_len(0)
            .build();
        Self { ca, td }
    }

    /// An SVID for `path`, valid for an hour from now.
    pub fn svid(&self, path: &str) -> Svid {
        self.svid_at(path, SystemTime::now(), Duration::from_secs(3600))
    }

    /// An SVID issued at `now` for `ttl` (in the past for an expired one).
    pub fn svid_at(&self, path: &str, now: SystemTime, ttl: Duration) -> Svid {
        let id = spiffe_id(&format!("spiffe://{}{path}", self.td));
        let svid = SvidBuilder::new(&self.ca, &id)
            .at(now)
            .ttl(ttl)
            .from_public_key()
            .issue();
        Svid {
            id,
            key: svid.key_pkcs8(),
            chain: svid.issued.chain,
            serial: svid.issued.serial,
            bundle: vec![self.ca.cert_der().clone()],
            td: self.td.clone(),
        }
    }

    pub fn bundle(&self) -> TrustBundle {
        trust_bundle(&self.td, &[&self.ca])
    }
}

/// An issued SVID with its key and the bundle it validates against.
#[derive(Clone)]
pub struct Svid {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Vec<u8>,
    pub serial: Vec<u8>,
    pub bundle: Vec<CertificateDer<'static>>,
    pub td: TrustDomain,
}

impl Svid {
    /// The Workload API message carrying this SVID.
    pub fn response(&self) -> pb::X509svidResponse {
        pb::X509svidResponse {
            svids: vec![pb::X509svid {
                spiffe_id: self.id.to_string(),
                x509_svid: self.chain.iter().flat_map(|c| c.to_vec()).collect(),
                x509_svid_key: self.key.clone(),
                bundle: self.bundle.iter().flat_map(|c| c.to_vec()).collect(),
                hint: String::new(),
            }],
            ..Default::default()
        }
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    /// A client presenting this SVID and trusting `trust` (any ID of its trust domain).
    pub fn client(&self, trust: &Ca) -> tokio_rustls::TlsConnector {
        let verifier = SpiffeServerVerifier::new(
            BundleSource::new(trust.bundle()),
            PeerMatch::AnyInTrustDomain,
        );
        let config =
            ringzero_policy::tls::client_config(self.chain.clone(), self.key_der(), verifier)
                .unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// A server presenting this SVID and requiring a client SVID of `trust`.
    pub fn server(&self, trust: &Ca) -> tokio_rustls::TlsAcceptor {
        let verifier = SpiffeClientVerifier::new(
            BundleSource::new(trust.bundle()),
            PeerMatch::AnyInTrustDomain,
        );
        let config =
            ringzero_policy::tls::server_config(self.chain.clone(), self.key_der(), verifier)
                .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// A client without a certificate, trusting `trust`.
pub fn anonymous_client(trust: &Ca) -> tokio_rustls::TlsConnector {
    let verifier = SpiffeServerVerifier::new(
        BundleSource::new(trust.bundle()),
        PeerMatch::AnyInTrustDomain,
    );
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

pub async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("mesh.test").unwrap(), tcp)
        .await
}

/// A Workload API server on a unix socket in a temp dir, streaming whatever
/// [`Agent::publish`] sets.
pub struct Agent {
    pub socket: PathBuf,
    tx: watch::Sender<Option<pb::X509svidResponse>>,
    /// Bumped to end every open stream.
    kill: watch::Sender<u64>,
    _dir: tempfile::TempDir,
    server: AbortOnDrop,
}

struct Api {
    rx: watch::Receiver<Option<pb::X509svidResponse>>,
    kill: watch::Receiver<u64>,
}

type Unimplemented<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for Api {
    type FetchX509SVIDStream = ReceiverStream<Result<pb::X509svidResponse, Status>>;
    type FetchX509BundlesStream = Unimplemented<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = Unimplemented<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        if request
            .metadata()
            .get("workload.spiffe.io")
            .is_none_or(|v| v.as_bytes() != b"true")
        {
            return Err(Status::invalid_argument("security header missing"));
        }
        let mut rx = self.rx.clone();
        let mut kill = self.kill.clone();
        kill.mark_unchanged();
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let next = rx.borrow_and_update().clone();
                if let Some(resp) = next
                    && tx.send(Ok(resp)).await.is_err()
                {
                    return;
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    _ = kill.changed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("test agent"))
    }

    async fn fetch_jwtsvid(
        &self,
        _: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        Err(Status::unimplemented("test agent"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("test agent"))
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("test agent"))
    }
}

impl Agent {
    /// Starts serving; `svid` is the first answer (none: the stream stays silent).
    pub fn start(svid: Option<&Svid>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let (tx, _) = watch::channel(svid.map(Svid::response));
        let (kill, _) = watch::channel(0);
        let server = Self::serve(&socket, &tx, &kill);
        Self {
            socket,
            tx,
            kill,
            _dir: dir,
            server,
        }
    }

    fn serve(
        socket: &std::path::Path,
        tx: &watch::Sender<Option<pb::X509svidResponse>>,
        kill: &watch::Sender<u64>,
    ) -> AbortOnDrop {
        let listener = UnixListener::bind(socket).unwrap();
        let api = Api {
            rx: tx.subscribe(),
            kill: kill.subscribe(),
        };
        let incoming =
            ringzero_proto::transport::accept(listener, |s, _| Some(async move { Some(s) }));
        AbortOnDrop(tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(api))
                .serve_with_incoming(incoming)
                .await;
        }))
    }

    /// Stops the server (every stream ends, the socket goes away) and starts a new one on the
    /// same path after `down`.
    pub async fn restart(&mut self, down: Duration) {
        self.kill.send_modify(|k| *k += 1);
        self.server.0.abort();
        let _ = std::fs::remove_file(&self.socket);
        tokio::time::sleep(down).await;
        self.server = Self::serve(&self.socket, &self.tx, &self.kill);
    }

    /// Streams any message, valid or not.
    pub fn publish_raw(&self, resp: pb::X509svidResponse) {
        self.tx.send_replace(Some(resp));
    }

    /// Streams a new SVID to every client.
    pub fn publish(&self, svid: &Svid) {
        self.tx.send_replace(Some(svid.response()));
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A plain TCP echo server; counts the connections it accepted.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

impl Echo {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Self {
            addr,
            accepted,
            _task: AbortOnDrop(task),
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A running sidecar and the handle that stops it.
pub struct Running {
    pub inbound: Vec<SocketAddr>,
    pub outbound: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub metrics: Arc<ringzero_mesh::Metrics>,
    pub revoked: ringzero_mesh::RevokedSerials,
    stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<Result<(), MeshError>>>,
}

impl Running {
    pub async fn start(settings: Settings) -> Self {
        let config = settings.validate(None).unwrap();
        let sidecar = Sidecar::bind(config).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let inbound = sidecar.inbound_addrs();
        let outbound = sidecar.outbound_addrs();
        let admin = sidecar.admin_addr();
        let metrics = sidecar.metrics();
        let revoked = sidecar.revocations();
        let done = tokio::spawn(sidecar.run(async move {
            let _ = stopped.await;
        }));
        Self {
            inbound,
            outbound,
            admin,
            metrics,
            revoked,
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// Sends the shutdown signal.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for `run` to return.
    pub async fn finished(&mut self) -> Result<(), MeshError> {
        let done = self.done.take().expect("already awaited");
        tokio::time::timeout(Duration::from_secs(20), done)
            .await
            .expect("the sidecar did not stop")
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(done) = &self.done {
            done.abort();
        }
    }
}

/// A GET on the admin server: (status, body).
pub async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `f` every 20 ms until it holds, for at most 10 s.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deterministic pseudo-random bytes.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes `data` and reads the same length back concurrently over `stream`; returns what
/// came back.
pub async fn round_trip<S>(stream: S, data: Vec<u8>) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let len = data.len();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.flush().await.unwrap();
        w
    });
    let mut back = vec![0u8; len];
    r.read_exact(&mut back).await.unwrap();
    let _w = writer.await.unwrap();
    back
}

/// Whether the peer refuses: a read ends in an error or EOF (within 10 s).
pub async fn is_refused<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) -> bool {
    let _ = s.write_all(b"hello").await;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("neither data nor a refusal within 10 s"),
    }
}
