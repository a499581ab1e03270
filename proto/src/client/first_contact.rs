//! First contact: what a joiner (an agent node, an authority node, a user with an invite) does
//! before it holds credentials — fetch the cluster's bundle and check it (against a pin, a given
//! bundle, or not at all), and only then send its secret (a join token, an invite) over TLS
//! authenticated by that bundle, following leader hints.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ringzero_policy::TrustDomain;
use ringzero_policy::join::JoinToken;
use ringzero_policy::svid::TrustBundle;
use ringzero_policy::tls::{BundleSource, PeerMatch, SpiffeServerVerifier};
use rustls_pki_types::CertificateDer;
use tonic::transport::Channel;

use super::{
    CALL_TIMEOUT, CONNECT_TIMEOUT, ClientError, Grpc, authority_pattern, bundle_cas, leader_hint,
};
use crate::pb;

/// Accepts any server certificate: used only to fetch the public trust bundle at first contact,
/// which the caller then checks against a pin before trusting anything it says.
#[derive(Debug)]
struct PinCheckFollows(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for PinCheckFollows {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

fn anonymous_tls(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| ClientError::Transport(e.to_string()))?
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn get_bundle(addr: &str, tls: Arc<rustls::ClientConfig>) -> Result<pb::Bundle, ClientError> {
    let channel = crate::transport::channel(addr, tls, CONNECT_TIMEOUT)
        .map_err(|e| ClientError::Transport(e.to_string()))?;
    let mut c = Grpc::new(channel).max_decoding_message_size(4 * 1024 * 1024);
    let b = tokio::time::timeout(CALL_TIMEOUT, c.get_bundle(pb::GetBundleRequest {}))
        .await
        .map_err(|_| ClientError::Transport(format!("{addr}: timed out")))??;
    Ok(b.into_inner())
}

/// How a joiner that holds no bundle yet decides whom it may send a secret to.
#[derive(Debug, Clone, Copy)]
pub enum FirstTrust<'a> {
    /// The pin a join token or invite carries: a CA of the bundle must have this key hash.
    Pin(&'a [u8; 32]),
    /// Given CA certificates (`--bundle FILE`): the server must present an authority SVID
    /// under them.
    Bundle(&'a [CertificateDer<'static>]),
    /// Nothing is checked (`--insecure-…` flags only).
    Insecure,
}

/// How a joiner that has never joined (an agent node, an authority node) learns to trust the
/// cluster, with the join token it will redeem once it does.
#[derive(Debug)]
pub enum FirstContact {
    /// The join token's pin: the bundle is fetched and must contain the pinned CA key.
    Pinned(JoinToken),
    /// A bundle given out of band (`--bundle FILE`): the authority must present an SVID under
    /// it; the token's pin is not needed.
    Bundle(JoinToken, Vec<CertificateDer<'static>>),
    /// No check of the authority before the secret is sent (`--insecure-skip-pin`).
    InsecureNoPin(JoinToken),
}

impl FirstContact {
    /// The join token to redeem.
    pub fn token(&self) -> &JoinToken {
        match self {
            FirstContact::Pinned(t)
            | FirstContact::Bundle(t, _)
            | FirstContact::InsecureNoPin(t) => t,
        }
    }

    /// How the cluster's bundle is checked before the token's secret is sent, for
    /// [`first_contact_bundle`].
    pub fn trust(&self) -> FirstTrust<'_> {
        match self {
            FirstContact::Pinned(token) => FirstTrust::Pin(&token.pin),
            FirstContact::Bundle(_, cas) => FirstTrust::Bundle(cas),
            FirstContact::InsecureNoPin(_) => FirstTrust::Insecure,
        }
    }
}

/// First contact: fetches the cluster's bundle at `addr` and checks it as `trust` says, before
/// anything secret is sent. Returns the bundle as served and the trust it establishes (the
/// given CAs for [`FirstTrust::Bundle`], the served ones otherwise).
pub async fn first_contact_bundle(
    addr: &str,
    trust: FirstTrust<'_>,
) -> Result<(pb::Bundle, TrustBundle), ClientError> {
    let (bundle, cas) = match trust {
        FirstTrust::Pin(pin) => {
            let b = fetch_bundle_unverified(addr).await?;
            let cas = bundle_cas(&b);
            if !ringzero_policy::join::pin_matches(pin, &cas) {
                return Err(ClientError::PinMismatch(addr.to_owned()));
            }
            (b, cas)
        }
        FirstTrust::Bundle(cas) => (fetch_bundle_verified(addr, cas).await?, cas.to_vec()),
        FirstTrust::Insecure => {
            let b = fetch_bundle_unverified(addr).await?;
            let cas = bundle_cas(&b);
            (b, cas)
        }
    };
    let td = TrustDomain::new(&bundle.trust_domain)
        .map_err(|e| ClientError::Profile(format!("the authority's trust domain: {e}")))?;
    let trust = TrustBundle::new(td, cas)
        .map_err(|e| ClientError::Profile(format!("the authority's bundle: {e}")))?;
    Ok((bundle, trust))
}

/// Fetches the bundle without authenticating the server. The result must be checked against a
/// pin (or otherwise) before anything is sent to or trusted from this server.
pub async fn fetch_bundle_unverified(addr: &str) -> Result<pb::Bundle, ClientError> {
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    get_bundle(addr, anonymous_tls(Arc::new(PinCheckFollows(algs)))?).await
}

/// Fetches the bundle from a server that must present an authority SVID under `cas`.
pub async fn fetch_bundle_verified(
    addr: &str,
    cas: &[CertificateDer<'static>],
) -> Result<pb::Bundle, ClientError> {
    let server = authority_server_verifier(addr, cas, None)?;
    get_bundle(addr, anonymous_tls(server)?).await
}

fn authority_server_verifier(
    _addr: &str,
    cas: &[CertificateDer<'static>],
    td: Option<&TrustDomain>,
) -> Result<Arc<dyn rustls::client::danger::ServerCertVerifier>, ClientError> {
    // The trust domain comes from the CAs themselves when not given.
    let td = match td {
        Some(td) => td.clone(),
        None => {
            let first = cas
                .first()
                .ok_or_else(|| ClientError::Profile("empty bundle".into()))?;
            ca_trust_domain(first)?
        }
    };
    let bundle = TrustBundle::new(td.clone(), cas.to_vec())
        .map_err(|e| ClientError::Profile(e.to_string()))?;
    Ok(SpiffeServerVerifier::new(
        BundleSource::new(bundle),
        PeerMatch::OneOf(vec![authority_pattern(&td)?]),
    ))
}

fn ca_trust_domain(ca: &CertificateDer<'_>) -> Result<TrustDomain, ClientError> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(ca)
        .map_err(|e| ClientError::Profile(format!("bundle certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .ok_or_else(|| ClientError::Profile("bundle certificate has no SPIFFE ID".into()))?;
    for n in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(u) = n
            && let Ok(id) = ringzero_policy::SpiffeId::parse(u)
        {
            return Ok(id.trust_domain());
        }
    }
    Err(ClientError::Profile(
        "bundle certificate has no SPIFFE ID".into(),
    ))
}

/// Redeems a join token at `addr`, over TLS authenticated by `bundle`, with a CSR for a key the
/// caller generated.
pub async fn redeem_join_token(
    addr: &str,
    bundle: &TrustBundle,
    token: &ringzero_policy::join::JoinToken,
    csr: &[u8],
) -> Result<pb::RedeemJoinTokenReply, ClientError> {
    redeem_join_token_as(addr, bundle, token, "", csr).await
}

/// Like [`redeem_join_token`], naming the node the joiner expects to become: the authority
/// refuses a token issued for another name. An empty name takes the token's.
pub async fn redeem_join_token_as(
    addr: &str,
    bundle: &TrustBundle,
    token: &ringzero_policy::join::JoinToken,
    node_name: &str,
    csr: &[u8],
) -> Result<pb::RedeemJoinTokenReply, ClientError> {
    let req = pb::RedeemJoinTokenRequest {
        token_id: hex::encode(token.id),
        secret: token.secret().to_vec(),
        node_name: node_name.to_owned(),
        csr: csr.to_vec(),
    };
    first_contact_call(addr, bundle, |mut c| {
        let req = req.clone();
        async move { c.redeem_join_token(req).await }
    })
    .await
}

/// What a first login with an invite returns: the credentials and the trust domain and CAs of
/// the cluster that issued them (the bundle checked against the invite's pin).
#[derive(Debug)]
pub struct InviteLogin {
    pub credentials: pb::UserCredentials,
    pub trust_domain: TrustDomain,
    pub cas: Vec<CertificateDer<'static>>,
}

/// Logs in with a user invite, at the first of `addrs` that answers: fetches the bundle without
/// authenticating the server, refuses to go on unless a CA in it has the invite's pinned key
/// hash, and only then sends the invite's secret with the CSR `csr_for` makes (given the
/// cluster's trust domain; the key stays with the caller), over TLS authenticated by that
/// bundle. Follows leader hints like [`redeem_join_token`].
pub async fn login_with_invite<E: std::fmt::Display>(
    addrs: &[String],
    invite: &ringzero_policy::join::JoinToken,
    csr_for: impl Fn(&TrustDomain) -> Result<Vec<u8>, E>,
    ttl_seconds: u64,
) -> Result<InviteLogin, ClientError> {
    let mut last = ClientError::NoAddress;
    for addr in addrs {
        let trust = match first_contact_bundle(addr, FirstTrust::Pin(&invite.pin)).await {
            Ok((_, trust)) => trust,
            Err(e @ (ClientError::PinMismatch(_) | ClientError::Profile(_))) => return Err(e),
            Err(e) => {
                last = e;
                continue;
            }
        };
        let td = trust.trust_domain().clone();
        let cas = trust.roots().to_vec();
        let csr = csr_for(&td).map_err(|e| ClientError::Profile(format!("CSR: {e}")))?;
        let req = pb::LoginRequest {
            invite_id: hex::encode(invite.id),
            invite_secret: invite.secret().to_vec(),
            csr,
            ttl_seconds,
        };
        match login_at(addr, &trust, req).await {
            Ok(credentials) => {
                return Ok(InviteLogin {
                    credentials,
                    trust_domain: td,
                    cas,
                });
            }
            Err(ClientError::Transport(t)) => last = ClientError::Transport(t),
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

async fn login_at(
    addr: &str,
    bundle: &TrustBundle,
    req: pb::LoginRequest,
) -> Result<pb::UserCredentials, ClientError> {
    first_contact_call(addr, bundle, |mut c| {
        let req = req.clone();
        async move { c.login(req).await }
    })
    .await
}

/// One unauthenticated-client call at the leader, over TLS authenticated by `bundle`: follows
/// leader hints (redemptions and logins happen on the leader), retrying a few times.
async fn first_contact_call<R, F, Fut>(
    addr: &str,
    bundle: &TrustBundle,
    mut f: F,
) -> Result<R, ClientError>
where
    F: FnMut(Grpc<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let server = authority_server_verifier(addr, bundle.roots(), Some(bundle.trust_domain()))?;
    let tls = anonymous_tls(server)?;
    let mut addr = addr.to_owned();
    let mut last = ClientError::NoAddress;
    for _ in 0..5 {
        let channel = crate::transport::channel(&addr, tls.clone(), CONNECT_TIMEOUT)
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let c = Grpc::new(channel).max_decoding_message_size(4 * 1024 * 1024);
        match tokio::time::timeout(CALL_TIMEOUT, f(c)).await {
            Ok(Ok(r)) => return Ok(r.into_inner()),
            Ok(Err(status)) => {
                let hint = leader_hint(&status);
                let unavailable = status.code() == tonic::Code::Unavailable;
                last = status.into();
                match hint {
                    Some(h) if unavailable => addr = h,
                    _ if unavailable => tokio::time::sleep(Duration::from_millis(300)).await,
                    _ => return Err(last),
                }
            }
            Err(_) => last = ClientError::Transport(format!("{addr}: timed out")),
        }
    }
    Err(last)
}
