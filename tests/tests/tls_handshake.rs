//! Real rustls handshakes over loopback TCP with the SPIFFE verifiers of `ringzero_policy::tls`.
//!
//! Every SVID is issued at the real clock (rustls validates with `SystemTime::now()`). Each test
//! runs one server task and one client on `127.0.0.1:0`; the whole exchange is bounded by a
//! timeout so that a hang fails instead of blocking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ringzero_policy::svid::{SigningCa, SvidError};
use ringzero_policy::testing::{
    CA_TTL, CaBuilder, LEAF_TTL, SvidBuilder, TestSvid as Svid, one_of, spiffe_id as id, svid,
    trust_bundle, trust_domain,
};
use ringzero_policy::tls::{
    BundleSource, PeerMatch, SpiffeClientVerifier, SpiffeServerVerifier, peer_id,
};
use ringzero_policy::{SpiffeId, TrustDomain};
use rustls::{AlertDescription, CertificateError};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const SERVER_ID: &str = "spiffe://td/ringzero/authority/a1";
const CLIENT_ID: &str = "spiffe://td/ringzero/node/n1";

fn td() -> TrustDomain {
    trust_domain("td")
}

/// A self-signed CA made three hours ago, so that leaves can be issued in the past.
fn ca(td: &TrustDomain, cn: &str) -> SigningCa {
    CaBuilder::new(td, cn)
        .made_at(SystemTime::now() - Duration::from_secs(3 * 3600))
        .build()
}

fn svid_at(ca: &SigningCa, spiffe_id: &str, now: SystemTime, ttl: Duration) -> Svid {
    SvidBuilder::new(ca, &id(spiffe_id))
        .at(now)
        .ttl(ttl)
        .issue()
}

fn source(cas: &[&SigningCa]) -> BundleSource {
    BundleSource::new(trust_bundle(&td(), cas))
}

fn server_cfg(svid: &Svid, bundle: BundleSource, peers: PeerMatch) -> Arc<rustls::ServerConfig> {
    svid.server_config(SpiffeClientVerifier::new(bundle, peers))
}

fn client_cfg(svid: &Svid, bundle: BundleSource, peers: PeerMatch) -> Arc<rustls::ClientConfig> {
    svid.client_config(SpiffeServerVerifier::new(bundle, peers))
}

// ---------------------------------------------------------------------------------------------
// Running one connection
// ---------------------------------------------------------------------------------------------

/// What one side saw: the peer's SPIFFE ID once the handshake completed and one message went
/// each way, or the error that stopped it.
type Side = Result<Option<SpiffeId>, io::Error>;

#[derive(Debug)]
struct Outcome {
    server: Side,
    client: Side,
}

/// Runs one TLS connection over loopback: after the handshake the server sends `hello`, the
/// client answers `ping`, the server answers `pong` and closes.
async fn connect(server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let (_, conn) = tls.get_ref();
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let peer = peer_id(conn.peer_certificates());
        tls.write_all(b"hello").await?;
        tls.flush().await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await?;
        tls.shutdown().await?;
        Ok::<_, io::Error>(peer)
    });
    let client_side = async move {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("ignored.invalid").unwrap();
        let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
        let peer = peer_id(tls.get_ref().1.peer_certificates());
        // In TLS 1.3 the client finishes its handshake before the server has checked the
        // client certificate: a refusal by the server shows up on this first read.
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"hello");
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        Ok::<_, io::Error>(peer)
    };
    tokio::time::timeout(Duration::from_secs(30), async move {
        let client = client_side.await;
        let server = server_task.await.unwrap();
        Outcome { server, client }
    })
    .await
    .expect("the connection hung")
}

/// [`connect`] with both sides trusting `cas` and accepting any peer of the trust domain.
async fn connect_trusting(server: &Svid, client: &Svid, cas: &[&SigningCa]) -> Outcome {
    connect(
        server_cfg(server, source(cas), PeerMatch::AnyInTrustDomain),
        client_cfg(client, source(cas), PeerMatch::AnyInTrustDomain),
    )
    .await
}

/// The rustls error inside an I/O error from tokio-rustls.
fn tls_error(side: &Side) -> &rustls::Error {
    let err = side.as_ref().expect_err("this side should have failed");
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a TLS error: {err:?}"))
}

/// The `SvidError` a verifier refused a certificate with (`CertificateError::Other`).
fn svid_error(side: &Side) -> SvidError {
    match tls_error(side) {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other
            .0
            .downcast_ref::<SvidError>()
            .unwrap_or_else(|| panic!("not an SvidError: {other:?}"))
            .clone(),
        other => panic!("not a certificate refusal with an SvidError: {other:?}"),
    }
}

/// The peer of the refusing side failed too; when it got to read the refusal, it is `alert`.
fn assert_peer_failed(side: &Side, alert: AlertDescription) {
    let err = side.as_ref().expect_err("the peer should have failed too");
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(got)) => assert_eq!(*got, alert),
        Some(other) => panic!("expected alert {alert:?}, got {other:?}"),
        // The refusing side may close before the alert is read.
        None => assert!(
            matches!(
                err.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
            ),
            "{err:?}"
        ),
    }
}

fn assert_success(outcome: &Outcome, server_sees: &str, client_sees: &str) {
    match (&outcome.server, &outcome.client) {
        (Ok(s), Ok(c)) => {
            assert_eq!(
                s.as_ref(),
                Some(&id(server_sees)),
                "server's view of its peer"
            );
            assert_eq!(
                c.as_ref(),
                Some(&id(client_sees)),
                "client's view of its peer"
            );
        }
        _ => panic!("handshake should succeed: {outcome:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn mutual_handshake_succeeds_and_both_sides_see_the_peer_id() {
    let authority = ca(&td(), "ringzero authority a1");
    let server = svid(&authority, SERVER_ID);
    let client = svid(&authority, CLIENT_ID);
    let outcome = connect_trusting(&server, &client, &[&authority]).await;
    assert_success(&outcome, CLIENT_ID, SERVER_ID);
}

#[tokio::test]
async fn handshake_with_intermediate_chain_against_root_bundle() {
    let root = ca(&td(), "ringzero root");
    let inter = root
        .sign_intermediate(
            "ringzero authority a1",
            CA_TTL,
            SystemTime::now() - Duration::from_secs(3600),
            Some(0),
        )
        .unwrap();
    let server = svid(&inter, SERVER_ID);
    let client = svid(&inter, CLIENT_ID);
    assert_eq!(server.issued.chain.len(), 2);
    let outcome = connect_trusting(&server, &client, &[&root]).await;
    assert_success(&outcome, CLIENT_ID, SERVER_ID);
}

#[tokio::test]
async fn client_from_another_trust_domain_is_refused_by_the_server() {
    let authority = ca(&td(), "ringzero authority a1");
    let other_td = TrustDomain::new("other").unwrap();
    let foreign = ca(&other_td, "ringzero authority a1");
    let server = svid(&authority, SERVER_ID);
    let client = svid(&foreign, "spiffe://other/ringzero/node/n1");
    let outcome = connect(
        server_cfg(&server, source(&[&authority]), PeerMatch::AnyInTrustDomain),
        // The client itself trusts the server.
        client_cfg(&client, source(&[&authority]), PeerMatch::AnyInTrustDomain),
    )
    .await;
    assert!(
        matches!(
            svid_error(&outcome.server),
            SvidError::WrongTrustDomain { .. }
        ),
        "{outcome:?}"
    );
    assert_peer_failed(&outcome.client, AlertDescription::CertificateUnknown);
}

#[tokio::test]
async fn client_from_an_untrusted_ca_of_the_same_trust_domain_is_refused() {
    let authority = ca(&td(), "ringzero authority a1");
    let rogue = ca(&td(), "rogue");
    let server = svid(&authority, SERVER_ID);
    let client = svid(&rogue, CLIENT_ID);
    let outcome = connect_trusting(&server, &client, &[&authority]).await;
    assert_eq!(
        tls_error(&outcome.server),
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert_peer_failed(&outcome.client, AlertDescription::UnknownCA);
}

#[tokio::test]
async fn server_from_an_untrusted_ca_is_refused_by_the_client() {
    let authority = ca(&td(), "ringzero authority a1");
    let rogue = ca(&td(), "rogue");
    let server = svid(&rogue, SERVER_ID);
    let client = svid(&authority, CLIENT_ID);
    let outcome = connect_trusting(&server, &client, &[&authority]).await;
    assert_eq!(
        tls_error(&outcome.client),
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert_peer_failed(&outcome.server, AlertDescription::UnknownCA);
}

#[tokio::test]
async fn server_from_another_trust_domain_is_refused_by_the_client() {
    let authority = ca(&td(), "ringzero authority a1");
    let other_td = TrustDomain::new("other").unwrap();
    let foreign = ca(&other_td, "ringzero authority a1");
    let server = svid(&foreign, "spiffe://other/ringzero/authority/a1");
    let client = svid(&authority, CLIENT_ID);
    let outcome = connect_trusting(&server, &client, &[&authority]).await;
    assert!(
        matches!(
            svid_error(&outcome.client),
            SvidError::WrongTrustDomain { .. }
        ),
        "{outcome:?}"
    );
    assert_peer_failed(&outcome.server, AlertDescription::CertificateUnknown);
}

#[tokio::test]
async fn client_peer_match_that_excludes_the_server_is_refused() {
    let authority = ca(&td(), "ringzero authority a1");
    let server = svid(&authority, SERVER_ID);
    let client = svid(&authority, CLIENT_ID);
    let outcome = connect(
        server_cfg(&server, source(&[&authority]), PeerMatch::AnyInTrustDomain),
        client_cfg(
            &client,
            source(&[&authority]),
            one_of(&[
                "spiffe://td/ringzero/node/*",
                "spiffe://td/ringzero/authority",
                "spiffe://td/ringzero/authority/a2",
                "spiffe://other/ringzero/authority/*",
            ]),
        ),
    )
    .await;
    assert_eq!(
        tls_error(&outcome.client),
        &rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    );
    assert_peer_failed(&outcome.server, AlertDescription::AccessDenied);
}

#[tokio::test]
async fn client_peer_match_that_includes_the_server_succeeds() {
    let authority = ca(&td(), "ringzero authority a1");
    let server = svid(&authority, SERVER_ID);
    let client = svid(&authority, CLIENT_ID);
    for patterns in [
        &["spiffe://td/ringzero/authority/*"][..],
        &["spiffe://td/ringzero/node/*", SERVER_ID][..],
    ] {
        let outcome = connect(
            server_cfg(&server, source(&[&authority]), PeerMatch::AnyInTrustDomain),
            client_cfg(&client, source(&[&authority]), one_of(patterns)),
        )
        .await;
        assert_success(&outcome, CLIENT_ID, SERVER_ID);
    }
}

#[tokio::test]
async fn server_peer_match_restricts_clients() {
    let authority = ca(&td(), "ringzero authority a1");
    let server = svid(&authority, SERVER_ID);
    let only_authorities = || one_of(&["spiffe://td/ringzero/authority/*"]);

    // A node is refused.
    let node = svid(&authority, CLIENT_ID);
    let outcome = connect(
        server_cfg(&server, source(&[&authority]), only_authorities()),
        client_cfg(&node, source(&[&authority]), PeerMatch::AnyInTrustDomain),
    )
    .await;
    assert_eq!(
        tls_error(&outcome.server),
        &rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    );
    assert_peer_failed(&outcome.client, AlertDescription::AccessDenied);

    // Another authority is accepted.
    let peer = svid(&authority, "spiffe://td/ringzero/authority/a2");
    let outcome = connect(
        server_cfg(&server, source(&[&authority]), only_authorities()),
        client_cfg(&peer, source(&[&authority]), PeerMatch::AnyInTrustDomain),
    )
    .await;
    assert_success(&outcome, "spiffe://td/ringzero/authority/a2", SERVER_ID);
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() {
    let authority = ca(&td(), "ringzero authority a1");
    let server = svid(&authority, SERVER_ID);
    let verifier = SpiffeServerVerifier::new(source(&[&authority]), PeerMatch::AnyInTrustDomain);
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    let outcome = connect(
        server_cfg(&server, source(&[&authority]), PeerMatch::AnyInTrustDomain),
        Arc::new(anonymous),
    )
    .await;
    assert_eq!(
        tls_error(&outcome.server),
        &rustls::Error::NoCertificatesPresented
    );
    assert_peer_failed(&outcome.client, AlertDescription::CertificateRequired);
}

#[tokio::test]
async fn expired_client_is_refused() {
    let authority = ca(&td(), "ringzero authority a1");
    let server = svid(&authority, SERVER_ID);
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    let client = svid_at(
        &authority,
        CLIENT_ID,
        two_hours_ago,
        Duration::from_secs(60),
    );
    assert!(client.issued.not_after < SystemTime::now());
    let outcome = connect_trusting(&server, &client, &[&authority]).await;
    assert_eq!(
        tls_error(&outcome.server),
        &rustls::Error::InvalidCertificate(CertificateError::Expired)
    );
    assert_peer_failed(&outcome.client, AlertDescription::CertificateExpired);
}

#[tokio::test]
async fn expired_server_is_refused() {
    let authority = ca(&td(), "ringzero authority a1");
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    let server = svid_at(
        &authority,
        SERVER_ID,
        two_hours_ago,
        Duration::from_secs(60),
    );
    let client = svid(&authority, CLIENT_ID);
    let outcome = connect_trusting(&server, &client, &[&authority]).await;
    assert_eq!(
        tls_error(&outcome.client),
        &rustls::Error::InvalidCertificate(CertificateError::Expired)
    );
    assert_peer_failed(&outcome.server, AlertDescription::CertificateExpired);
}

#[tokio::test]
async fn not_yet_valid_client_is_refused() {
    let authority = ca(&td(), "ringzero authority a1");
    let server = svid(&authority, SERVER_ID);
    let in_two_hours = SystemTime::now() + Duration::from_secs(2 * 3600);
    let client = svid_at(&authority, CLIENT_ID, in_two_hours, LEAF_TTL);
    let outcome = connect_trusting(&server, &client, &[&authority]).await;
    assert_eq!(
        tls_error(&outcome.server),
        &rustls::Error::InvalidCertificate(CertificateError::NotValidYet)
    );
    assert_peer_failed(&outcome.client, AlertDescription::CertificateExpired);
}

#[tokio::test]
async fn replacing_the_server_bundle_applies_to_the_next_handshake() {
    let old = ca(&td(), "ringzero authority a1");
    let new = ca(&td(), "ringzero authority a2");
    let server = svid(&old, SERVER_ID);
    let client = svid(&old, CLIENT_ID);
    let new_client = svid(&new, "spiffe://td/ringzero/node/n2");

    // One server configuration for the whole test; only its bundle source changes.
    let server_bundle = source(&[&old]);
    let server_config = server_cfg(&server, server_bundle.clone(), PeerMatch::AnyInTrustDomain);
    let client_config = || client_cfg(&client, source(&[&old]), PeerMatch::AnyInTrustDomain);
    let new_client_config =
        || client_cfg(&new_client, source(&[&old]), PeerMatch::AnyInTrustDomain);

    let outcome = connect(server_config.clone(), client_config()).await;
    assert_success(&outcome, CLIENT_ID, SERVER_ID);
    let outcome = connect(server_config.clone(), new_client_config()).await;
    assert_eq!(
        tls_error(&outcome.server),
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );

    // Overlap: both CAs.
    server_bundle.replace(trust_bundle(&td(), &[&old, &new]));
    let outcome = connect(server_config.clone(), client_config()).await;
    assert_success(&outcome, CLIENT_ID, SERVER_ID);
    let outcome = connect(server_config.clone(), new_client_config()).await;
    assert_success(&outcome, "spiffe://td/ringzero/node/n2", SERVER_ID);

    // The old CA is dropped: its client is refused by the very same configuration.
    server_bundle.replace(trust_bundle(&td(), &[&new]));
    assert_eq!(server_bundle.current().roots(), [new.cert_der().clone()]);
    let outcome = connect(server_config.clone(), client_config()).await;
    assert_eq!(
        tls_error(&outcome.server),
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert_peer_failed(&outcome.client, AlertDescription::UnknownCA);
    let outcome = connect(server_config.clone(), new_client_config()).await;
    assert_success(&outcome, "spiffe://td/ringzero/node/n2", SERVER_ID);
}

#[tokio::test]
async fn replacing_the_client_bundle_applies_to_the_next_handshake() {
    let old = ca(&td(), "ringzero authority a1");
    let new = ca(&td(), "ringzero authority a2");
    let server = svid(&old, SERVER_ID);
    let client = svid(&old, CLIENT_ID);

    let client_bundle = source(&[&old]);
    let client_config = client_cfg(&client, client_bundle.clone(), PeerMatch::AnyInTrustDomain);
    let server_config = || server_cfg(&server, source(&[&old]), PeerMatch::AnyInTrustDomain);

    let outcome = connect(server_config(), client_config.clone()).await;
    assert_success(&outcome, CLIENT_ID, SERVER_ID);

    client_bundle.replace(trust_bundle(&td(), &[&new]));
    let outcome = connect(server_config(), client_config.clone()).await;
    assert_eq!(
        tls_error(&outcome.client),
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert_peer_failed(&outcome.server, AlertDescription::UnknownCA);
}

#[test]
fn peer_id_of_nothing_or_garbage_is_none() {
    assert_eq!(peer_id(None), None);
    assert_eq!(peer_id(Some(&[])), None);
    let junk = [CertificateDer::from(b"junk".to_vec())];
    assert_eq!(peer_id(Some(&junk)), None);
    let authority = ca(&td(), "ringzero authority a1");
    // A CA certificate names no workload.
    assert_eq!(peer_id(Some(&[authority.cert_der().clone()])), None);
    let leaf = svid(&authority, CLIENT_ID);
    assert_eq!(peer_id(Some(&leaf.issued.chain)), Some(id(CLIENT_ID)));
}
