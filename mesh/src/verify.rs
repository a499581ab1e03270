//! Who may connect: the policy crate's SPIFFE verifiers, wrapped with the sidecar's allow
//! rules and its refused-serials set, and the classification of every refusal.
//!
//! The wrapped verifiers ([`SpiffeClientVerifier`], [`SpiffeServerVerifier`]) check the chain
//! against the current bundle ([`BundleSource`], replaced on rotation) and the X509-SVID
//! profile; the wrappers then refuse a revoked serial and an ID no rule allows. Both sets are
//! read at each handshake, so a change applies to the next connection.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use ringzero_policy::svid::SvidError;
use ringzero_policy::svid::ValidatedSvid;
use ringzero_policy::tls::{
    BundleSource, PeerCheck, PeerMatch, SpiffeClientVerifier, SpiffeServerVerifier,
};
use ringzero_policy::{SpiffeId, SpiffeIdPattern};
use rustls::CertificateError;
use tokio::sync::watch;

/// Serials whose certificates are refused, replaceable at run time (the authority's
/// revocations are plugged in here). A change refuses the next handshakes and closes the live
/// connections of a peer whose serial it adds.
#[derive(Debug, Clone)]
pub struct RevokedSerials {
    set: Arc<RwLock<Arc<HashSet<Vec<u8>>>>>,
    /// Bumped at every change, so that live connections can re-check their peer.
    generation: Arc<watch::Sender<u64>>,
}

impl Default for RevokedSerials {
    fn default() -> Self {
        Self {
            set: Arc::default(),
            generation: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl RevokedSerials {
    /// Replaces the whole set.
    pub fn replace(&self, serials: HashSet<Vec<u8>>) {
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(serials);
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Adds one serial (big-endian bytes, as in the certificate).
    pub fn insert(&self, serial: Vec<u8>) {
        {
            let mut guard = self.set.write().unwrap_or_else(|p| p.into_inner());
            let mut set = HashSet::clone(&guard);
            set.insert(serial);
            *guard = Arc::new(set);
        }
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub fn contains(&self, serial: &[u8]) -> bool {
        self.set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(serial)
    }

    pub fn len(&self) -> usize {
        self.set.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns once `serial` is in the set (never, if it never is).
    pub async fn until_revoked(&self, serial: &[u8]) {
        let mut changes = self.generation.subscribe();
        loop {
            if self.contains(serial) {
                return;
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Which peer IDs an inbound listener admits, replaceable at run time: the local rules
/// (`--allow`, `--allow-trust-domain`) and the authority's policies for this workload's
/// identity (from the agent's mesh extension). Either one admits a peer.
#[derive(Debug, Clone)]
pub struct AllowList(Arc<RwLock<Arc<Rules>>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rules {
    local: Allow,
    authority: Vec<SpiffeIdPattern>,
}

/// The rules in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    /// Any workload of the bundle's trust domain (explicit opt-in).
    AnyInTrustDomain,
    /// IDs matching one of these patterns.
    OneOf(Vec<SpiffeIdPattern>),
}

impl AllowList {
    pub fn new(allow: Allow) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(Rules {
            local: allow,
            authority: Vec::new(),
        }))))
    }

    fn modify(&self, change: impl FnOnce(&mut Rules)) {
        let mut guard = self.0.write().unwrap_or_else(|p| p.into_inner());
        let mut next = Rules::clone(&guard);
        change(&mut next);
        *guard = Arc::new(next);
    }

    /// Replaces the local rules.
    pub fn replace(&self, allow: Allow) {
        self.modify(|r| r.local = allow);
    }

    /// Replaces the authority's rules: the `from` patterns of the policies protecting this
    /// workload's identity.
    pub fn set_authority(&self, from: Vec<SpiffeIdPattern>) {
        self.modify(|r| r.authority = from);
    }

    /// The authority's rules in force.
    pub fn authority(&self) -> Vec<SpiffeIdPattern> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .authority
            .clone()
    }

    pub fn allows(&self, id: &SpiffeId) -> bool {
        let rules = Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()));
        let local = match &rules.local {
            Allow::AnyInTrustDomain => true,
            Allow::OneOf(patterns) => patterns.iter().any(|p| p.matches(id)),
        };
        local || rules.authority.iter().any(|p| p.matches(id))
    }
}

/// Why a connection was refused at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The client presented no certificate.
    NoCertificate,
    /// The chain does not lead to a CA of the bundle.
    UntrustedCa,
    /// The SVID names a workload of another trust domain.
    WrongTrustDomain,
    /// The SPIFFE ID is valid but no rule allows it (or, outbound, it is not the expected one).
    NotAllowed,
    /// The certificate's serial is revoked.
    Revoked,
    /// The certificate is outside its validity period (expired, or not yet valid).
    Expired,
    /// The certificate is not a well-formed X509-SVID.
    BadCertificate,
    /// The TLS handshake failed for another reason (protocol error, peer hung up, the peer
    /// refused us, timeout).
    Handshake,
    /// Closed before the handshake: the source already has its share of handshakes in flight,
    /// or all inbound handshake slots are taken.
    Overloaded,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::NoCertificate,
        Refusal::UntrustedCa,
        Refusal::WrongTrustDomain,
        Refusal::NotAllowed,
        Refusal::Revoked,
        Refusal::Expired,
        Refusal::BadCertificate,
        Refusal::Handshake,
        Refusal::Overloaded,
    ];

    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no_certificate",
            Refusal::UntrustedCa => "untrusted_ca",
            Refusal::WrongTrustDomain => "wrong_trust_domain",
            Refusal::NotAllowed => "id_not_allowed",
            Refusal::Revoked => "revoked",
            Refusal::Expired => "expired",
            Refusal::BadCertificate => "bad_certificate",
            Refusal::Handshake => "handshake",
            Refusal::Overloaded => "overloaded",
        }
    }

    /// The position in [`Refusal::ALL`] (a match, so a new variant cannot be miscounted).
    pub(crate) fn index(self) -> usize {
        match self {
            Refusal::NoCertificate => 0,
            Refusal::UntrustedCa => 1,
            Refusal::WrongTrustDomain => 2,
            Refusal::NotAllowed => 3,
            Refusal::Revoked => 4,
            Refusal::Expired => 5,
            Refusal::BadCertificate => 6,
            Refusal::Handshake => 7,
            Refusal::Overloaded => 8,
        }
    }

    /// Classifies a handshake error as returned by tokio-rustls (an `io::Error` wrapping a
    /// `rustls::Error` when rustls refused).
    pub fn of_io(e: &std::io::Error) -> Refusal {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map_or(Refusal::Handshake, Refusal::of)
    }

    /// Classifies a rustls error.
    pub fn of(e: &rustls::Error) -> Refusal {
        match e {
            rustls::Error::NoCertificatesPresented => Refusal::NoCertificate,
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => Refusal::UntrustedCa,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Refusal::Expired,
                CertificateError::Revoked => Refusal::Revoked,
                CertificateError::ApplicationVerificationFailure => Refusal::NotAllowed,
                CertificateError::Other(other) if other.0.is::<PeerRefused>() => other
                    .0
                    .downcast_ref::<PeerRefused>()
                    .map_or(Refusal::BadCertificate, |p| p.reason),
                CertificateError::Other(other) => match other.0.downcast_ref::<SvidError>() {
                    Some(SvidError::WrongTrustDomain { .. }) => Refusal::WrongTrustDomain,
                    Some(SvidError::EmptyChain) => Refusal::NoCertificate,
                    Some(SvidError::Expired | SvidError::NotYetValid) => Refusal::Expired,
                    Some(SvidError::UntrustedIssuer) => Refusal::UntrustedCa,
                    _ => Refusal::BadCertificate,
                },
                _ => Refusal::BadCertificate,
            },
            _ => Refusal::Handshake,
        }
    }
}

/// The checks after chain validation: revoked serial, then the ID rule.
fn check_peer(
    svid: &ValidatedSvid,
    revoked: &RevokedSerials,
    allowed: impl FnOnce(&SpiffeId) -> bool,
) -> Result<(), rustls::Error> {
    let reason = if revoked.contains(&svid.serial) {
        Refusal::Revoked
    } else if !allowed(&svid.id) {
        Refusal::NotAllowed
    } else {
        return Ok(());
    };
    Err(rustls::Error::InvalidCertificate(CertificateError::Other(
        rustls::OtherError(Arc::new(PeerRefused {
            reason,
            id: svid.id.clone(),
            serial: svid.serial.clone(),
        })),
    )))
}

/// A peer whose certificate chains to the bundle but is refused by the sidecar's own checks:
/// carried through rustls so that the refusal is logged with who was turned away.
#[derive(Debug)]
pub(crate) struct PeerRefused {
    pub(crate) reason: Refusal,
    pub(crate) id: SpiffeId,
    pub(crate) serial: Vec<u8>,
}

impl std::fmt::Display for PeerRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let serial: String = self.serial.iter().map(|b| format!("{b:02x}")).collect();
        match self.reason {
            Refusal::Revoked => write!(f, "{} presented revoked serial {serial}", self.id),
            _ => write!(f, "{} (serial {serial}) is not allowed", self.id),
        }
    }
}

impl std::error::Error for PeerRefused {}

impl PeerRefused {
    /// The refused peer inside a handshake error, if the sidecar's checks refused it.
    pub(crate) fn of_io(e: &std::io::Error) -> Option<&PeerRefused> {
        match e.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.downcast_ref::<PeerRefused>()
            }
            _ => None,
        }
    }
}

/// Inbound: admits a client SVID of the bundle that is not revoked and that the rules allow.
#[derive(Debug)]
struct InboundCheck {
    allow: AllowList,
    revoked: RevokedSerials,
}

impl PeerCheck for InboundCheck {
    fn check(&self, svid: &ValidatedSvid) -> Result<(), rustls::Error> {
        check_peer(svid, &self.revoked, |id| self.allow.allows(id))
    }
}

/// The verifier of the inbound listeners: a client SVID of the bundle is required, not
/// revoked, allowed by the rules.
pub(crate) fn inbound_verifier(
    bundle: BundleSource,
    allow: AllowList,
    revoked: RevokedSerials,
) -> Arc<SpiffeClientVerifier> {
    let check = InboundCheck { allow, revoked };
    SpiffeClientVerifier::new(bundle, PeerMatch::Custom(Arc::new(check)))
}

/// Outbound: admits exactly the expected SPIFFE ID, not revoked.
#[derive(Debug)]
struct OutboundCheck {
    expect: SpiffeId,
    revoked: RevokedSerials,
}

impl PeerCheck for OutboundCheck {
    fn check(&self, svid: &ValidatedSvid) -> Result<(), rustls::Error> {
        check_peer(svid, &self.revoked, |id| *id == self.expect)
    }
}

/// The verifier of one outbound listener: the server must present exactly `expect`, not
/// revoked.
pub(crate) fn outbound_verifier(
    bundle: BundleSource,
    expect: SpiffeId,
    revoked: RevokedSerials,
) -> Arc<SpiffeServerVerifier> {
    let check = OutboundCheck { expect, revoked };
    SpiffeServerVerifier::new(bundle, PeerMatch::Custom(Arc::new(check)))
}

/// The TLS 1.3 server configuration of the inbound listeners. Session resumption is off, for
/// the reason given on [`ringzero_policy::tls::server_config`]: a resumed session would skip
/// the verifier (and so a revocation or an expiry).
pub(crate) fn server_config(
    resolver: Arc<crate::identity::CertResolver>,
    verifier: Arc<SpiffeClientVerifier>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_client_cert_verifier(verifier)
    .with_cert_resolver(resolver);
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The TLS 1.3 client configuration of one outbound listener.
pub(crate) fn client_config(
    resolver: Arc<crate::identity::CertResolver>,
    verifier: Arc<SpiffeServerVerifier>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_client_cert_resolver(resolver);
    config.resumption = rustls::client::Resumption::disabled();
    // The peer is identified by its SPIFFE ID, not by a name: send none.
    config.enable_sni = false;
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn classification() {
        use rustls::Error as E;
        let other = |e: SvidError| {
            E::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
        };
        for (err, want) in [
            (E::NoCertificatesPresented, Refusal::NoCertificate),
            (
                E::InvalidCertificate(CertificateError::UnknownIssuer),
                Refusal::UntrustedCa,
            ),
            (
                E::InvalidCertificate(CertificateError::Expired),
                Refusal::Expired,
            ),
            (
                E::InvalidCertificate(CertificateError::Revoked),
                Refusal::Revoked,
            ),
            (
                E::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
                Refusal::NotAllowed,
            ),
            (
                other(SvidError::WrongTrustDomain {
                    expected: "a".into(),
                    found: "b".into(),
                }),
                Refusal::WrongTrustDomain,
            ),
            (other(SvidError::NoUriSan), Refusal::BadCertificate),
            (E::HandshakeNotComplete, Refusal::Handshake),
        ] {
            assert_eq!(Refusal::of(&err), want, "{err:?}");
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
            assert_eq!(Refusal::of_io(&io), want);
        }
        assert_eq!(
            Refusal::of_io(&std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            Refusal::Handshake
        );
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn revoked_set_is_replaceable() {
        let r = RevokedSerials::default();
        assert!(r.is_empty());
        r.insert(vec![1, 2]);
        assert!(r.contains(&[1, 2]));
        r.replace(HashSet::from([vec![3]]));
        assert!(!r.contains(&[1, 2]) && r.contains(&[3]));
    }

    #[test]
    fn allow_list_is_segment_aware() {
        let a = AllowList::new(Allow::OneOf(vec![
            SpiffeIdPattern::parse("spiffe://td/ns/shop/*").unwrap(),
        ]));
        let id = |s| SpiffeId::parse(s).unwrap();
        assert!(a.allows(&id("spiffe://td/ns/shop/web")));
        assert!(!a.allows(&id("spiffe://td/ns/shopping")));
        assert!(!a.allows(&id("spiffe://td/ns/shop")));
        a.replace(Allow::AnyInTrustDomain);
        assert!(a.allows(&id("spiffe://td/ns/shopping")));
    }

    #[test]
    fn local_or_authority_rules_admit() {
        let id = |s| SpiffeId::parse(s).unwrap();
        let a = AllowList::new(Allow::OneOf(vec![
            SpiffeIdPattern::parse("spiffe://td/ns/shop/web").unwrap(),
        ]));
        assert!(!a.allows(&id("spiffe://td/ns/shop/batch")));
        a.set_authority(vec![
            SpiffeIdPattern::parse("spiffe://td/ns/shop/batch").unwrap(),
        ]);
        assert!(a.allows(&id("spiffe://td/ns/shop/batch")));
        assert!(a.allows(&id("spiffe://td/ns/shop/web")), "local rules stay");
        a.set_authority(Vec::new());
        assert!(!a.allows(&id("spiffe://td/ns/shop/batch")));
        let empty = AllowList::new(Allow::OneOf(Vec::new()));
        assert!(!empty.allows(&id("spiffe://td/ns/shop/web")));
    }
}
