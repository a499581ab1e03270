//! Writing user profiles: the key is generated here, only a CSR leaves the machine, and the
//! profile is built from the authority's reply (`user add`, `login`, `authority admin-profile`).

use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use ringzero_policy::svid::{csr_for, generate_key};
use ringzero_policy::{SpiffeId, TrustDomain};
use ringzero_proto::client::Profile;
use ringzero_proto::pb;
use rustls_pki_types::CertificateDer;

use super::session::Session;
use crate::failure::{Failure, bad_input, failed};
use crate::input::write_file;

/// A fresh key and a CSR for it. The CSR's SPIFFE ID is a placeholder: the authority takes
/// only the public key and names the SVID itself.
/// Returns the key (PKCS#8 DER) and the CSR.
pub(crate) fn key_and_csr(td: &TrustDomain, name: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let key = generate_key()?;
    let id = SpiffeId::parse(&format!("spiffe://{td}/user/{name}"))?;
    let csr = csr_for(&key, &id)?;
    Ok((key.serialize_der(), csr))
}

/// A requested credential lifetime on the wire (0: the authority's default).
pub(crate) fn ttl_seconds(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |d| d.as_secs())
}

/// A profile for `reply`'s credentials: the key made here, the bundle of the reply (which came
/// over TLS authenticated by the CAs the caller already trusts), and what the caller's own
/// profile `known` learned so far — its audit pins and the keys it knows are compromised —
/// merged with that bundle.
pub(crate) fn profile_from(
    td: &TrustDomain,
    authorities: Vec<String>,
    fallback_cas: &[CertificateDer<'static>],
    known: Option<&Profile>,
    reply: &pb::UserCredentials,
    key_pkcs8: &[u8],
) -> Profile {
    Profile::from_user_credentials(td, authorities, fallback_cas, known, reply, key_pkcs8)
}

/// The profile that follows the session's own for `reply`'s credentials (a renewal, or a user
/// added by this admin): the same authorities, and what the session's profile learned so far.
pub(crate) fn successor(
    s: &Session,
    td: &TrustDomain,
    reply: &pb::UserCredentials,
    key_pkcs8: &[u8],
) -> Result<Profile, Failure> {
    let cas = s
        .profile
        .bundle_certs()
        .map_err(|e| failed(anyhow!("{e}")))?;
    Ok(profile_from(
        td,
        s.profile.authorities.clone(),
        &cas,
        Some(&s.profile),
        reply,
        key_pkcs8,
    ))
}

/// Writes a profile (mode 0600), replacing a file only if `overwrite`.
pub(crate) fn write_profile(
    path: &Path,
    profile: &Profile,
    overwrite: bool,
) -> Result<(), Failure> {
    let text = profile.to_toml().map_err(|e| failed(anyhow!("{e}")))?;
    write_file(path, text.as_bytes(), 0o600, overwrite).map_err(failed)
}

/// A unix time as RFC 3339, to the second.
pub(crate) fn expiry(expires_unix: u64) -> String {
    super::session::rfc3339_ms(expires_unix.saturating_mul(1000))
}

/// The trust domain of the session's profile.
pub(crate) fn trust_domain(s: &Session) -> Result<TrustDomain, Failure> {
    TrustDomain::new(&s.profile.trust_domain).map_err(|e| bad_input(anyhow!("profile: {e}")))
}
