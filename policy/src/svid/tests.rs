//! Unit tests of the X.509-SVID module: what `SigningCa` issues (inspected with x509-parser)
//! and what `validate_svid` refuses (hand-crafted with rcgen, signed by a real CA key).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
    PublicKeyData, SanType,
};
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::*;
use crate::spiffe::{IdError, SpiffeId, TrustDomain};
use crate::testing::{CaBuilder, SvidBuilder, trust_bundle};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const CA_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const LEAF_TTL: Duration = Duration::from_secs(3600);

/// A fixed instant, so that every test is deterministic.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn secs(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn other_td() -> TrustDomain {
    TrustDomain::new("other.org").unwrap()
}

fn wid(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://example.org/{path}")).unwrap()
}

fn root(cn: &str) -> SigningCa {
    CaBuilder::new(&td(), cn).made_at(now()).ttl(CA_TTL).build()
}

fn bundle(cas: &[&SigningCa]) -> TrustBundle {
    trust_bundle(&td(), cas)
}

fn issue_csr_at(
    ca: &SigningCa,
    id: &SpiffeId,
    ttl: Duration,
    dns: &[String],
    at: SystemTime,
) -> (KeyPair, IssuedSvid) {
    let svid = SvidBuilder::new(ca, id)
        .ttl(ttl)
        .dns_names(dns)
        .at(at)
        .issue();
    (svid.key, svid.issued)
}

fn issue_csr(ca: &SigningCa, id: &SpiffeId) -> (KeyPair, IssuedSvid) {
    issue_csr_at(ca, id, LEAF_TTL, &[], now())
}

fn request<'a>(id: &'a SpiffeId, key: LeafKey<'a>) -> LeafRequest<'a> {
    LeafRequest {
        id,
        key,
        ttl: LEAF_TTL,
        dns_names: &[],
        now: now(),
    }
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    general_names(cert)
        .into_iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_owned()),
            _ => None,
        })
        .collect()
}

fn dns_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    general_names(cert)
        .into_iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_owned()),
            _ => None,
        })
        .collect()
}

fn general_names<'a>(cert: &'a X509Certificate<'_>) -> Vec<GeneralName<'a>> {
    cert.subject_alternative_name()
        .unwrap()
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default()
}

fn skid(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

fn akid(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle not found")
}

fn validate(chain: &[CertificateDer<'_>], b: &TrustBundle) -> Result<ValidatedSvid, SvidError> {
    validate_svid(chain, b, now(), Usage::Client)
}

// --- hand-crafting certificates with rcgen, signed by a real CA's key -------------------------

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// The rcgen issuer of a `SigningCa`, rebuilt from its exported certificate and key.
fn issuer_of(ca: &SigningCa) -> Issuer<'static, KeyPair> {
    let key = KeyPair::try_from(ca.key_pkcs8_der().as_slice()).unwrap();
    Issuer::from_ca_cert_der(ca.cert_der(), key).unwrap()
}

/// Exactly the SPIFFE leaf profile, for `spiffe://example.org/workload`.
fn good_leaf_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ringzero");
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.subject_alt_names = vec![uri("spiffe://example.org/workload")];
    p.not_before = (now() - NOT_BEFORE_BACKDATE).into();
    p.not_after = (now() + LEAF_TTL).into();
    p.use_authority_key_identifier_extension = true;
    p
}

/// A CA profile with the given name, SANs, key usages and basic constraints.
fn ca_like_params(
    cn: &str,
    sans: Vec<SanType>,
    key_usages: Vec<KeyUsagePurpose>,
    is_ca: IsCa,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ringzero");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = is_ca;
    p.key_usages = key_usages;
    p.subject_alt_names = sans;
    p.not_before = (now() - NOT_BEFORE_BACKDATE).into();
    p.not_after = (now() + CA_TTL).into();
    p.use_authority_key_identifier_extension = true;
    p
}

fn ca_usages() -> Vec<KeyUsagePurpose> {
    vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]
}

fn sign(params: &CertificateParams, issuer: &Issuer<'_, KeyPair>) -> CertificateDer<'static> {
    let key = generate_key().unwrap();
    params.signed_by(&key, issuer).unwrap().der().clone()
}

/// A leaf signed by `ca`'s key: the good profile, changed by `change`.
fn craft_leaf(
    ca: &SigningCa,
    change: impl FnOnce(&mut CertificateParams),
) -> CertificateDer<'static> {
    let mut p = good_leaf_params();
    change(&mut p);
    sign(&p, &issuer_of(ca))
}

/// `[leaf, intermediate]`, where the intermediate is signed by `root` with the given profile and
/// signs a good leaf.
fn crafted_intermediate_chain(
    root: &SigningCa,
    sans: Vec<SanType>,
    key_usages: Vec<KeyUsagePurpose>,
    is_ca: IsCa,
) -> Vec<CertificateDer<'static>> {
    let params = ca_like_params("crafted intermediate", sans, key_usages, is_ca);
    let key = generate_key().unwrap();
    let inter = params
        .signed_by(&key, &issuer_of(root))
        .unwrap()
        .der()
        .clone();
    let leaf = sign(&good_leaf_params(), &Issuer::new(params, key));
    vec![leaf, inter]
}

/// A self-signed CA certificate with the given SANs, and its PKCS#8 key.
fn crafted_root(
    cn: &str,
    sans: Vec<SanType>,
) -> (CertificateDer<'static>, Vec<u8>, CertificateParams) {
    let params = ca_like_params(
        cn,
        sans,
        ca_usages(),
        IsCa::Ca(BasicConstraints::Unconstrained),
    );
    let key = generate_key().unwrap();
    let cert = params.self_signed(&key).unwrap().der().clone();
    (cert, key.serialize_der(), params)
}

// ---------------------------------------------------------------------------------------------
// SigningCa::self_signed
// ---------------------------------------------------------------------------------------------

#[test]
fn self_signed_ca_profile() {
    let ca =
        SigningCa::self_signed(&td(), "ringzero authority a1", CA_TTL, now(), Some(0)).unwrap();
    let cert = parse(ca.cert_der());

    let bc = cert.basic_constraints().unwrap().expect("basicConstraints");
    assert!(bc.critical);
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    assert!(cert.is_ca());

    let ku = cert.key_usage().unwrap().expect("keyUsage");
    assert!(ku.critical);
    assert!(ku.value.key_cert_sign());
    assert!(ku.value.crl_sign());
    assert!(!ku.value.digital_signature());

    assert_eq!(uri_sans(&cert), vec!["spiffe://example.org".to_owned()]);
    assert!(dns_sans(&cert).is_empty());
    // The pin join tokens carry, from the key, is the pin of the certificate.
    assert_eq!(Some(ca.pin()), crate::join::ca_pin(ca.cert_der()));
    // So is the pin of the same CA loaded from its files.
    let reloaded = SigningCa::from_der(ca.cert_der(), &ca.key_pkcs8_der(), Vec::new()).unwrap();
    assert_eq!(reloaded.pin(), ca.pin());

    let skid = skid(&cert).expect("subjectKeyIdentifier");
    assert!(!skid.is_empty());

    // Self-signed: issuer == subject, AKID == SKID, signature verifies with its own key.
    assert_eq!(cert.issuer().as_raw(), cert.subject().as_raw());
    assert_eq!(akid(&cert), Some(skid));
    cert.verify_signature(None).unwrap();

    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cn, ["ringzero authority a1"]);

    assert_eq!(
        cert.validity().not_before.timestamp(),
        secs(now() - NOT_BEFORE_BACKDATE)
    );
    assert_eq!(cert.validity().not_after.timestamp(), secs(now() + CA_TTL));
    assert_eq!(ca.not_after(), now() + CA_TTL);
    assert_eq!(ca.trust_domain(), &td());
    assert!(
        ca.chain().is_empty(),
        "a self-signed CA sends no intermediates"
    );

    // 128-bit positive serial.
    let serial = cert.raw_serial();
    assert_eq!(serial.len(), 16);
    assert!(serial[0] != 0 && serial[0] & 0x80 == 0);
}

#[test]
fn self_signed_ca_without_path_len_is_unconstrained() {
    let ca = root("ringzero authority a1");
    let cert = parse(ca.cert_der());
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, None);
}

#[test]
fn two_cas_have_distinct_subjects_keys_and_serials() {
    let a1 = root("ringzero authority a1");
    let a2 = root("ringzero authority a2");
    let (c1, c2) = (parse(a1.cert_der()), parse(a2.cert_der()));
    assert_ne!(c1.subject().as_raw(), c2.subject().as_raw());
    assert_ne!(c1.subject().to_string(), c2.subject().to_string());
    assert_ne!(skid(&c1), skid(&c2));
    assert_ne!(c1.raw_serial(), c2.raw_serial());
    assert_ne!(c1.public_key().raw, c2.public_key().raw);
    // Each only validates its own leaves.
    let (_, svid) = issue_csr(&a1, &wid("w"));
    assert!(validate(&svid.chain, &bundle(&[&a1])).is_ok());
    assert!(matches!(
        validate(&svid.chain, &bundle(&[&a2])),
        Err(SvidError::UntrustedIssuer)
    ));
}

#[test]
fn debug_of_signing_ca_does_not_show_the_key() {
    let ca = root("ringzero authority a1");
    let dbg = format!("{ca:?}");
    assert!(dbg.contains("example.org"));
    assert!(!dbg.contains("key"), "{dbg}");
    let key_hex = hex::encode(ca.key_pkcs8_der().as_slice());
    assert!(!dbg.contains(&key_hex[key_hex.len() - 32..]));
}

// ---------------------------------------------------------------------------------------------
// Issuance
// ---------------------------------------------------------------------------------------------

/// Asserts the exact SPIFFE leaf profile of `svid`, issued by `ca` for `id` at `now()`.
fn assert_leaf_profile(ca: &SigningCa, svid: &IssuedSvid, id: &SpiffeId, spki: &[u8]) {
    let leaf = parse(&svid.chain[0]);
    let ca_cert = parse(ca.cert_der());

    assert_eq!(&svid.id, id);
    assert_eq!(uri_sans(&leaf), vec![id.as_str().to_owned()]);

    let bc = leaf.basic_constraints().unwrap().expect("basicConstraints");
    assert!(!bc.value.ca);
    assert!(!leaf.is_ca());

    let ku = leaf.key_usage().unwrap().expect("keyUsage");
    assert!(ku.critical, "key usage must be critical");
    let ku = ku.value;
    assert!(ku.digital_signature());
    assert!(
        !(ku.non_repudiation()
            || ku.key_encipherment()
            || ku.data_encipherment()
            || ku.key_agreement()
            || ku.key_cert_sign()
            || ku.crl_sign()
            || ku.encipher_only()
            || ku.decipher_only()),
        "digitalSignature only, got {ku:?}"
    );

    let eku = leaf
        .extended_key_usage()
        .unwrap()
        .expect("extendedKeyUsage")
        .value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(
        !(eku.any
            || eku.code_signing
            || eku.email_protection
            || eku.time_stamping
            || eku.ocsp_signing)
            && eku.other.is_empty()
    );

    // Issued by the CA: issuer name, AKID, signature.
    assert_eq!(leaf.issuer().as_raw(), ca_cert.subject().as_raw());
    assert_eq!(akid(&leaf), skid(&ca_cert));
    assert!(akid(&leaf).is_some());
    leaf.verify_signature(Some(ca_cert.public_key())).unwrap();

    // Validity.
    assert_eq!(
        leaf.validity().not_before.timestamp(),
        secs(now() - NOT_BEFORE_BACKDATE)
    );
    assert_eq!(svid.not_before, now() - NOT_BEFORE_BACKDATE);
    assert_eq!(leaf.validity().not_after.timestamp(), secs(svid.not_after));

    // 128-bit positive serial, reported as issued.
    let serial = leaf.raw_serial();
    assert_eq!(serial.len(), 16, "128-bit serial");
    assert!(serial[0] & 0x80 == 0, "positive serial");
    assert!(serial[0] != 0, "minimal DER");
    assert_eq!(svid.serial, serial);

    // The key is the requested one, and its digest is reported.
    assert_eq!(leaf.public_key().raw, spki);
    assert_eq!(svid.public_key_sha256, sha256(leaf.public_key().raw));
    assert_eq!(svid.public_key_sha256.len(), 32);
}

#[test]
fn issue_from_csr_has_the_spiffe_leaf_profile() {
    let ca = root("ringzero authority a1");
    let id = wid("ns/default/web");
    let (key, svid) = issue_csr(&ca, &id);
    assert_eq!(svid.chain.len(), 1, "self-signed CA: leaf only");
    assert_eq!(svid.not_after, now() + LEAF_TTL);
    assert_leaf_profile(&ca, &svid, &id, &key.subject_public_key_info());
    assert!(dns_sans(&parse(&svid.chain[0])).is_empty());
    assert_eq!(general_names(&parse(&svid.chain[0])).len(), 1);

    let v = validate(&svid.chain, &bundle(&[&ca])).unwrap();
    assert_eq!(v.id, id);
    assert_eq!(v.serial, svid.serial);
    assert_eq!(v.not_after, svid.not_after);
}

#[test]
fn issue_from_spki_has_the_spiffe_leaf_profile() {
    let ca = root("ringzero authority a1");
    let id = wid("ringzero/node/n7");
    let key = generate_key().unwrap();
    let spki = PublicKeyData::subject_public_key_info(&key);
    let svid = ca.issue(&request(&id, LeafKey::PublicKey(&spki))).unwrap();
    assert_leaf_profile(&ca, &svid, &id, &spki);
    assert_eq!(svid.public_key_sha256, sha256(&spki));
    let v = validate_svid(&svid.chain, &bundle(&[&ca]), now(), Usage::Server).unwrap();
    assert_eq!(v.id, id);
}

#[test]
fn issue_uses_only_the_public_key_of_the_csr() {
    // The CSR names another workload (and even another trust domain): the issued leaf carries
    // the requested ID only.
    let ca = root("ringzero authority a1");
    let key = generate_key().unwrap();
    let csr = csr_for(&key, &SpiffeId::parse("spiffe://other.org/admin").unwrap()).unwrap();
    let id = wid("ns/default/web");
    let svid = ca.issue(&request(&id, LeafKey::Csr(&csr))).unwrap();
    assert_leaf_profile(&ca, &svid, &id, &key.subject_public_key_info());
}

#[test]
fn issue_with_dns_names() {
    let ca = root("ringzero authority a1");
    let id = wid("ringzero/authority/a1");
    let dns = vec!["a1.example.org".to_owned(), "localhost".to_owned()];
    let (key, svid) = issue_csr_at(&ca, &id, LEAF_TTL, &dns, now());
    assert_leaf_profile(&ca, &svid, &id, &key.subject_public_key_info());
    let leaf = parse(&svid.chain[0]);
    assert_eq!(dns_sans(&leaf), dns);
    assert_eq!(uri_sans(&leaf).len(), 1, "DNS SANs never add a URI");
    assert!(validate(&svid.chain, &bundle(&[&ca])).is_ok());
}

#[test]
fn issue_rejects_bad_dns_names() {
    let ca = root("ringzero authority a1");
    let id = wid("w");
    let key = generate_key().unwrap();
    let spki = key.subject_public_key_info();
    for bad in [
        String::new(),
        "a b".to_owned(),
        "a/b".to_owned(),
        "a_b".to_owned(),
        "exämple.org".to_owned(),
        "a\0b".to_owned(),
        "spiffe://example.org/x".to_owned(),
        "a".repeat(254),
    ] {
        let dns = [bad.clone()];
        let err = ca
            .issue(&LeafRequest {
                dns_names: &dns,
                ..request(&id, LeafKey::PublicKey(&spki))
            })
            .unwrap_err();
        assert!(matches!(err, SvidError::BadDnsName(_)), "{bad:?}: {err:?}");
    }
}

#[test]
fn issue_caps_not_after_at_the_ca_not_after() {
    let ca =
        SigningCa::self_signed(&td(), "short", Duration::from_secs(3600), now(), None).unwrap();
    let id = wid("w");
    let (_, svid) = issue_csr_at(&ca, &id, Duration::from_secs(10 * 24 * 3600), &[], now());
    assert_eq!(svid.not_after, ca.not_after());
    let leaf = parse(&svid.chain[0]);
    let ca_cert = parse(ca.cert_der());
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        ca_cert.validity().not_after.timestamp()
    );
    // Later in the CA's life, the cap is what remains of it.
    let later = now() + Duration::from_secs(3000);
    let (_, svid) = issue_csr_at(&ca, &id, LEAF_TTL, &[], later);
    assert_eq!(svid.not_after, ca.not_after());
    assert_eq!(svid.not_before, later - NOT_BEFORE_BACKDATE);
    // A TTL inside the CA's life is kept.
    let (_, svid) = issue_csr_at(&ca, &id, Duration::from_secs(600), &[], now());
    assert_eq!(svid.not_after, now() + Duration::from_secs(600));
}

#[test]
fn issue_rejects_short_ttl_and_expired_ca() {
    let ca = root("ringzero authority a1");
    let id = wid("w");
    let key = generate_key().unwrap();
    let spki = key.subject_public_key_info();
    for ttl in [Duration::ZERO, Duration::from_millis(999)] {
        let err = ca
            .issue(&LeafRequest {
                ttl,
                ..request(&id, LeafKey::PublicKey(&spki))
            })
            .unwrap_err();
        assert!(matches!(err, SvidError::TtlTooShort), "{err:?}");
    }
    let err = ca
        .issue(&LeafRequest {
            now: ca.not_after() + Duration::from_secs(1),
            ..request(&id, LeafKey::PublicKey(&spki))
        })
        .unwrap_err();
    assert!(matches!(err, SvidError::CaExpired), "{err:?}");
}

#[test]
fn issued_serials_are_distinct() {
    let ca = root("ringzero authority a1");
    let key = generate_key().unwrap();
    let spki = key.subject_public_key_info();
    let id = wid("w");
    let mut serials = std::collections::HashSet::new();
    for _ in 0..32 {
        let svid = ca.issue(&request(&id, LeafKey::PublicKey(&spki))).unwrap();
        assert_eq!(svid.serial.len(), 16);
        assert!(serials.insert(svid.serial));
    }
    // Serials issued later sort later (their first 6 bytes are the issue time in milliseconds), so
    // the authority's per-node records of them grow at the end of their table.
    let first = ca.issue(&request(&id, LeafKey::PublicKey(&spki))).unwrap();
    let later = ca
        .issue(&LeafRequest {
            now: now() + Duration::from_millis(1),
            ..request(&id, LeafKey::PublicKey(&spki))
        })
        .unwrap();
    assert!(later.serial > first.serial);
    assert!(
        (0x01..=0x7f).contains(&later.serial[0]),
        "positive, no leading zero"
    );
}

/// `IssuedSvid` is what the audit record stores: its times must be those written in the
/// certificate, even when `now` has a sub-second part (as `SystemTime::now()` always does).
#[test]
fn issued_times_match_the_certificate_with_subsecond_now() {
    let ca = root("ringzero authority a1");
    let at = now() + Duration::from_millis(500);
    let (_, svid) = issue_csr_at(&ca, &wid("w"), LEAF_TTL, &[], at);
    let v = validate_svid(&svid.chain, &bundle(&[&ca]), at, Usage::Client).unwrap();
    assert_eq!(v.not_after, svid.not_after);
    let leaf = parse(&svid.chain[0]);
    assert_eq!(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(leaf.validity().not_before.timestamp()).unwrap()),
        svid.not_before
    );
}

// ---------------------------------------------------------------------------------------------
// Intermediates
// ---------------------------------------------------------------------------------------------

#[test]
fn intermediate_chain_validates_against_the_root_only() {
    let root_ca = root("ringzero root");
    let inter = root_ca
        .sign_intermediate("ringzero authority a1", CA_TTL, now(), Some(0))
        .unwrap();
    assert_eq!(inter.chain(), [inter.cert_der().clone()]);
    assert_eq!(inter.trust_domain(), &td());

    // The intermediate's own profile.
    let ic = parse(inter.cert_der());
    let rc = parse(root_ca.cert_der());
    assert!(ic.is_ca());
    let ku = ic.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert_eq!(uri_sans(&ic), vec!["spiffe://example.org".to_owned()]);
    assert_eq!(ic.issuer().as_raw(), rc.subject().as_raw());
    assert_ne!(ic.subject().as_raw(), rc.subject().as_raw());
    assert_eq!(akid(&ic), skid(&rc));
    assert!(skid(&ic).is_some());
    ic.verify_signature(Some(rc.public_key())).unwrap();

    let id = wid("ns/default/web");
    let (key, svid) = issue_csr(&inter, &id);
    assert_eq!(svid.chain.len(), 2);
    assert_eq!(&svid.chain[1], inter.cert_der());
    assert_leaf_profile(&inter, &svid, &id, &key.subject_public_key_info());

    let v = validate(&svid.chain, &bundle(&[&root_ca])).unwrap();
    assert_eq!(v.id, id);
    assert_eq!(v.serial, svid.serial);
    // Without the intermediate, the leaf does not chain to the root.
    assert!(matches!(
        validate(&svid.chain[..1], &bundle(&[&root_ca])),
        Err(SvidError::UntrustedIssuer)
    ));
}

#[test]
fn two_level_intermediates_chain_in_order() {
    let root_ca = root("ringzero root");
    let i1 = root_ca
        .sign_intermediate("i1", CA_TTL, now(), None)
        .unwrap();
    let i2 = i1.sign_intermediate("i2", CA_TTL, now(), Some(0)).unwrap();
    assert_eq!(i2.chain(), [i2.cert_der().clone(), i1.cert_der().clone()]);
    let (_, svid) = issue_csr(&i2, &wid("w"));
    assert_eq!(svid.chain.len(), 3);
    assert_eq!(&svid.chain[1], i2.cert_der());
    assert_eq!(&svid.chain[2], i1.cert_der());
    assert_eq!(
        validate(&svid.chain, &bundle(&[&root_ca])).unwrap().id,
        wid("w")
    );
}

#[test]
fn intermediate_validity_is_capped_at_the_parent() {
    let root_ca =
        SigningCa::self_signed(&td(), "root", Duration::from_secs(7200), now(), None).unwrap();
    let inter = root_ca
        .sign_intermediate("i", Duration::from_secs(365 * 24 * 3600), now(), Some(0))
        .unwrap();
    assert_eq!(inter.not_after(), root_ca.not_after());
    assert_eq!(
        parse(inter.cert_der()).validity().not_after.timestamp(),
        secs(root_ca.not_after())
    );
    let (_, svid) = issue_csr_at(&inter, &wid("w"), CA_TTL, &[], now());
    assert_eq!(svid.not_after, root_ca.not_after());
}

#[test]
fn path_len_zero_intermediate_cannot_sign_an_intermediate() {
    let root_ca = root("root");
    let i1 = root_ca
        .sign_intermediate("i1", CA_TTL, now(), Some(0))
        .unwrap();
    let err = i1.sign_intermediate("i2", CA_TTL, now(), None).unwrap_err();
    assert_eq!(err, SvidError::PathLenExceeded);
    // An intermediate crafted under it anyway is refused by validation.
    let chain = crafted_intermediate_chain(
        &i1,
        vec![uri("spiffe://example.org")],
        ca_usages(),
        IsCa::Ca(BasicConstraints::Unconstrained),
    );
    let mut full = chain.clone();
    full.push(i1.cert_der().clone());
    let err = validate(&full, &bundle(&[&root_ca])).unwrap_err();
    assert!(matches!(err, SvidError::Path(_)), "{err:?}");
}

/// A path-length-0 root signs only leaves: `sign_intermediate` refuses, and validation refuses
/// an intermediate crafted under it anyway (rustls-webpki does not apply a trust anchor's own
/// constraints; `validate_svid` does).
#[test]
fn path_len_zero_root_cannot_vouch_for_an_intermediate() {
    let root_ca = SigningCa::self_signed(&td(), "root", CA_TTL, now(), Some(0)).unwrap();
    assert_eq!(
        root_ca
            .sign_intermediate("i", CA_TTL, now(), None)
            .unwrap_err(),
        SvidError::PathLenExceeded
    );
    let chain = crafted_intermediate_chain(
        &root_ca,
        vec![uri("spiffe://example.org")],
        ca_usages(),
        IsCa::Ca(BasicConstraints::Unconstrained),
    );
    let err = validate(&chain, &bundle(&[&root_ca])).unwrap_err();
    assert!(matches!(err, SvidError::Path(_)), "{err:?}");
    // Its own leaves still validate.
    let (_, svid) = issue_csr(&root_ca, &wid("w"));
    assert!(validate(&svid.chain, &bundle(&[&root_ca])).is_ok());
}

/// webpki builds paths of at most 6 intermediates, so a leaf plus 6 intermediates validates.
#[test]
fn chain_of_seven_validates() {
    let root_ca = root("root");
    let mut ca = root_ca
        .sign_intermediate("i1", CA_TTL, now(), None)
        .unwrap();
    for n in 2..=6 {
        ca = ca
            .sign_intermediate(&format!("i{n}"), CA_TTL, now(), None)
            .unwrap();
    }
    let (_, svid) = issue_csr(&ca, &wid("deep"));
    assert_eq!(svid.chain.len(), 7);
    assert_eq!(
        validate(&svid.chain, &bundle(&[&root_ca])).unwrap().id,
        wid("deep")
    );
}

/// `MAX_CHAIN_LEN` documents 8 certificates (leaf plus 7 intermediates) as the longest chain
/// accepted; rustls-webpki refuses more than 6 intermediates, so the limit cannot be reached.
#[test]
fn chain_of_max_chain_len_validates() {
    let root_ca = root("root");
    let mut ca = root_ca
        .sign_intermediate("i1", CA_TTL, now(), None)
        .unwrap();
    for n in 2..MAX_CHAIN_LEN {
        ca = ca
            .sign_intermediate(&format!("i{n}"), CA_TTL, now(), None)
            .unwrap();
    }
    let (_, svid) = issue_csr(&ca, &wid("deep"));
    assert_eq!(svid.chain.len(), MAX_CHAIN_LEN);
    assert_eq!(
        validate(&svid.chain, &bundle(&[&root_ca])).unwrap().id,
        wid("deep")
    );
}

// ---------------------------------------------------------------------------------------------
// validate_svid: accepted chains
// ---------------------------------------------------------------------------------------------

#[test]
fn validate_accepts_a_good_chain_for_both_usages() {
    let ca = root("ringzero authority a1");
    let id = wid("ns/default/web");
    let (_, svid) = issue_csr(&ca, &id);
    let b = bundle(&[&ca]);
    for usage in [Usage::Client, Usage::Server] {
        let v = validate_svid(&svid.chain, &b, now(), usage).unwrap();
        assert_eq!(
            v,
            ValidatedSvid {
                id: id.clone(),
                not_after: now() + LEAF_TTL,
                serial: svid.serial.clone(),
                issuer_authority: None,
            }
        );
    }
    assert_eq!(spiffe_id_of(&svid.chain[0]).unwrap(), id);
}

#[test]
fn validate_accepts_during_bundle_rotation() {
    let old = root("ringzero authority a1");
    let new = root("ringzero authority a2");
    let both = bundle(&[&old, &new]);
    for ca in [&old, &new] {
        let (_, svid) = issue_csr(ca, &wid("w"));
        assert!(validate(&svid.chain, &both).is_ok());
    }
}

#[test]
fn crafted_good_leaf_validates() {
    // The baseline of the hand-crafted negative cases below.
    let ca = root("ringzero authority a1");
    let leaf = craft_leaf(&ca, |_| {});
    assert_eq!(
        validate(&[leaf], &bundle(&[&ca])).unwrap().id,
        wid("workload")
    );
    let chain = crafted_intermediate_chain(
        &ca,
        vec![uri("spiffe://example.org")],
        ca_usages(),
        IsCa::Ca(BasicConstraints::Unconstrained),
    );
    assert_eq!(
        validate(&chain, &bundle(&[&ca])).unwrap().id,
        wid("workload")
    );
}

// ---------------------------------------------------------------------------------------------
// validate_svid: refused chains
// ---------------------------------------------------------------------------------------------

#[test]
fn validate_rejects_empty_chain() {
    let ca = root("a1");
    assert!(matches!(
        validate(&[], &bundle(&[&ca])),
        Err(SvidError::EmptyChain)
    ));
}

#[test]
fn validate_rejects_too_long_chain() {
    let ca = root("a1");
    let (_, svid) = issue_csr(&ca, &wid("w"));
    let b = bundle(&[&ca]);
    let chain: Vec<_> = std::iter::repeat_n(svid.chain[0].clone(), MAX_CHAIN_LEN + 1).collect();
    assert!(matches!(validate(&chain, &b), Err(SvidError::ChainTooLong)));
    // Junk certificates do not matter: the length is checked first.
    let junk = vec![CertificateDer::from(vec![0u8; 3]); 100];
    assert!(matches!(validate(&junk, &b), Err(SvidError::ChainTooLong)));
}

#[test]
fn validate_rejects_oversized_der() {
    let ca = root("a1");
    let b = bundle(&[&ca]);
    let (_, svid) = issue_csr(&ca, &wid("w"));
    let big = CertificateDer::from(vec![0x30u8; MAX_DER_LEN + 1]);
    assert!(matches!(
        validate(std::slice::from_ref(&big), &b),
        Err(SvidError::TooLarge)
    ));
    // An oversized intermediate, too.
    assert!(matches!(
        validate(&[svid.chain[0].clone(), big.clone()], &b),
        Err(SvidError::TooLarge)
    ));
    assert!(matches!(spiffe_id_of(&big), Err(SvidError::TooLarge)));
    // At the limit, the size is accepted and the content is parsed (and refused).
    let at_limit = CertificateDer::from(vec![0x30u8; MAX_DER_LEN]);
    assert!(matches!(
        validate(&[at_limit], &b),
        Err(SvidError::Parse { .. })
    ));
}

#[test]
fn validate_rejects_garbage_and_truncated_der() {
    let ca = root("a1");
    let b = bundle(&[&ca]);
    let (_, svid) = issue_csr(&ca, &wid("w"));
    let good = svid.chain[0].as_ref().to_vec();

    let mut cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"not a certificate".to_vec(),
        vec![0x30, 0x82, 0xff, 0xff],
        vec![0xff; 64],
    ];
    for cut in [1, 10, good.len() / 2, good.len() - 1] {
        cases.push(good[..cut].to_vec());
    }
    let mut trailing = good.clone();
    trailing.push(0);
    cases.push(trailing);
    for der in cases {
        let err = validate(&[CertificateDer::from(der.clone())], &b).unwrap_err();
        assert!(
            matches!(
                err,
                SvidError::Parse {
                    what: "certificate",
                    ..
                }
            ),
            "{} bytes: {err:?}",
            der.len()
        );
    }
    // A garbage intermediate after a good leaf.
    let err = validate(
        &[
            svid.chain[0].clone(),
            CertificateDer::from(b"junk".to_vec()),
        ],
        &b,
    )
    .unwrap_err();
    assert!(matches!(err, SvidError::Parse { .. }), "{err:?}");
}

#[test]
fn validate_rejects_tampered_leaf() {
    let ca = root("a1");
    let b = bundle(&[&ca]);
    let (_, svid) = issue_csr(&ca, &wid("workload"));
    // Change the SPIFFE ID to another valid one of the same length.
    let mut der = svid.chain[0].as_ref().to_vec();
    let at = find(&der, b"spiffe://example.org/workload");
    der[at + "spiffe://example.org/".len()] = b'x';
    assert_eq!(spiffe_id_of(&der).unwrap(), wid("xorkload"));
    let err = validate(&[CertificateDer::from(der)], &b).unwrap_err();
    assert!(matches!(err, SvidError::Path(_)), "{err:?}");
    // Flip the last byte of the signature.
    let mut der = svid.chain[0].as_ref().to_vec();
    *der.last_mut().unwrap() ^= 0x01;
    let err = validate(&[CertificateDer::from(der)], &b).unwrap_err();
    assert!(matches!(err, SvidError::Path(_)), "{err:?}");
}

#[test]
fn validate_rejects_untrusted_issuer() {
    let ca = root("a1");
    let stranger = root("a2"); // same trust domain, another CA
    let (_, svid) = issue_csr(&ca, &wid("w"));
    assert!(matches!(
        validate(&svid.chain, &bundle(&[&stranger])),
        Err(SvidError::UntrustedIssuer)
    ));
    // A CA with the very same subject name but another key: the issuer is found by name, and
    // its signature does not verify.
    let impostor = root("a1");
    let err = validate(&svid.chain, &bundle(&[&impostor])).unwrap_err();
    assert_eq!(err, SvidError::Path("InvalidSignatureForPublicKey".into()));
    let empty = TrustBundle::new(td(), Vec::new()).unwrap();
    assert!(matches!(
        validate(&svid.chain, &empty),
        Err(SvidError::UntrustedIssuer)
    ));
}

#[test]
fn validate_rejects_wrong_trust_domain() {
    let foreign = SigningCa::self_signed(&other_td(), "a1", CA_TTL, now(), None).unwrap();
    let id = SpiffeId::parse("spiffe://other.org/ns/default/web").unwrap();
    let (_, svid) = issue_csr(&foreign, &id);
    // Even a bundle that (wrongly) holds the foreign CA for example.org does not help: the
    // foreign CA itself is refused by the bundle, and the leaf's ID is checked first.
    let err = validate(&svid.chain, &bundle(&[&root("a1")])).unwrap_err();
    match err {
        SvidError::WrongTrustDomain { expected, found } => {
            assert_eq!(expected, "example.org");
            assert_eq!(found, "spiffe://other.org/ns/default/web");
        }
        other => panic!("{other:?}"),
    }
    // It validates in its own trust domain.
    let own = TrustBundle::new(other_td(), vec![foreign.cert_der().clone()]).unwrap();
    assert_eq!(validate(&svid.chain, &own).unwrap().id, id);
}

#[test]
fn validate_rejects_expired_and_not_yet_valid() {
    let ca = root("a1");
    let b = bundle(&[&ca]);
    let (_, svid) = issue_csr(&ca, &wid("w"));
    let at = |t: SystemTime| validate_svid(&svid.chain, &b, t, Usage::Client);

    // Valid over [not_before, not_after], both ends included.
    assert!(at(svid.not_before).is_ok());
    assert!(at(svid.not_after).is_ok());
    assert!(at(now() - Duration::from_secs(30)).is_ok(), "backdated");
    assert!(matches!(
        at(svid.not_after + Duration::from_secs(1)),
        Err(SvidError::Expired)
    ));
    assert!(matches!(
        at(now() + Duration::from_secs(365 * 24 * 3600)),
        Err(SvidError::Expired)
    ));
    assert!(matches!(
        at(svid.not_before - Duration::from_secs(1)),
        Err(SvidError::NotYetValid)
    ));
    assert!(matches!(
        at(SystemTime::UNIX_EPOCH),
        Err(SvidError::NotYetValid)
    ));
}

#[test]
fn validate_rejects_ca_presented_as_leaf() {
    let ca = root("a1");
    let b = bundle(&[&ca]);
    // A CA carries the trust domain ID, which names no workload: refused by its ID first.
    for cert in [
        ca.cert_der().clone(),
        ca.sign_intermediate("i", CA_TTL, now(), None)
            .unwrap()
            .cert_der()
            .clone(),
    ] {
        let err = validate(&[cert], &b).unwrap_err();
        assert!(
            matches!(err, SvidError::BadSpiffeId(IdError::EmptySegment)),
            "{err:?}"
        );
    }
    // A CA certificate carrying a workload ID.
    let leaf = craft_leaf(&ca, |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    });
    assert!(matches!(validate(&[leaf], &b), Err(SvidError::LeafIsCa)));
    let leaf = craft_leaf(&ca, |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = ca_usages();
    });
    assert!(matches!(validate(&[leaf], &b), Err(SvidError::LeafIsCa)));
}

#[test]
fn validate_rejects_bad_uri_sans() {
    let ca = root("a1");
    let b = bundle(&[&ca]);
    let check = |change: &dyn Fn(&mut CertificateParams), want: &dyn Fn(&SvidError) -> bool| {
        let leaf = craft_leaf(&ca, change);
        let err = validate(std::slice::from_ref(&leaf), &b).unwrap_err();
        assert!(want(&err), "{err:?}");
        // `spiffe_id_of` (used for `peer_id`) agrees on the form.
        assert!(spiffe_id_of(&leaf).is_err());
    };

    // No URI SAN at all, and a DNS SAN only.
    check(&|p| p.subject_alt_names.clear(), &|e| {
        matches!(e, SvidError::NoUriSan)
    });
    check(
        &|p| {
            p.subject_alt_names = vec![SanType::DnsName("workload.example.org".try_into().unwrap())]
        },
        &|e| matches!(e, SvidError::NoUriSan),
    );
    // Two URI SANs, even two valid IDs, even the same ID twice.
    check(
        &|p| p.subject_alt_names.push(uri("spiffe://example.org/other")),
        &|e| matches!(e, SvidError::MultipleUriSans(2)),
    );
    check(
        &|p| {
            p.subject_alt_names
                .push(uri("spiffe://example.org/workload"))
        },
        &|e| matches!(e, SvidError::MultipleUriSans(2)),
    );
    check(
        &|p| {
            p.subject_alt_names
                .extend([uri("https://example.org/"), uri("spiffe://example.org/c")]);
        },
        &|e| matches!(e, SvidError::MultipleUriSans(3)),
    );
    // The trust domain ID names a CA, never a workload.
    check(
        &|p| p.subject_alt_names = vec![uri("spiffe://example.org")],
        &|e| matches!(e, SvidError::BadSpiffeId(IdError::EmptySegment)),
    );
    // Not a SPIFFE ID.
    check(
        &|p| p.subject_alt_names = vec![uri("https://example.org/workload")],
        &|e| matches!(e, SvidError::BadSpiffeId(IdError::WrongScheme)),
    );
    check(
        &|p| p.subject_alt_names = vec![uri("SPIFFE://example.org/workload")],
        &|e| matches!(e, SvidError::BadSpiffeId(IdError::WrongScheme)),
    );
    check(
        &|p| p.subject_alt_names = vec![uri("spiffe://example.org:443/workload")],
        &|e| matches!(e, SvidError::BadSpiffeId(IdError::BadTrustDomainChar(':'))),
    );
    check(
        &|p| p.subject_alt_names = vec![uri("spiffe://example.org/a/../b")],
        &|e| matches!(e, SvidError::BadSpiffeId(IdError::DotSegment)),
    );
    check(
        &|p| p.subject_alt_names = vec![uri("spiffe://example.org/w?x=1")],
        &|e| matches!(e, SvidError::BadSpiffeId(IdError::BadPathChar('?'))),
    );
}

#[test]
fn validate_rejects_bad_leaf_key_usage() {
    let ca = root("a1");
    let b = bundle(&[&ca]);
    let cases: Vec<(&str, Vec<KeyUsagePurpose>)> = vec![
        (
            "keyCertSign",
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ],
        ),
        ("keyCertSign only", vec![KeyUsagePurpose::KeyCertSign]),
        (
            "cRLSign",
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign],
        ),
        ("no key usage", Vec::new()),
        (
            "keyEncipherment only",
            vec![KeyUsagePurpose::KeyEncipherment],
        ),
        ("keyAgreement only", vec![KeyUsagePurpose::KeyAgreement]),
    ];
    for (what, usages) in cases {
        let leaf = craft_leaf(&ca, |p| p.key_usages = usages);
        let err = validate(&[leaf], &b).unwrap_err();
        assert!(matches!(err, SvidError::LeafKeyUsage(_)), "{what}: {err:?}");
    }
    // Missing key usage has its own message.
    let leaf = craft_leaf(&ca, |p| p.key_usages.clear());
    assert_eq!(
        validate(&[leaf], &b),
        Err(SvidError::LeafKeyUsage("missing"))
    );
}

#[test]
fn validate_enforces_the_requested_extended_key_usage() {
    let ca = root("a1");
    let b = bundle(&[&ca]);
    let server_only = craft_leaf(&ca, |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    let chain = [server_only];
    assert!(validate_svid(&chain, &b, now(), Usage::Server).is_ok());
    let err = validate_svid(&chain, &b, now(), Usage::Client).unwrap_err();
    assert!(matches!(err, SvidError::Path(_)), "{err:?}");

    let client_only = craft_leaf(&ca, |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    });
    let chain = [client_only];
    assert!(validate_svid(&chain, &b, now(), Usage::Client).is_ok());
    let err = validate_svid(&chain, &b, now(), Usage::Server).unwrap_err();
    assert!(matches!(err, SvidError::Path(_)), "{err:?}");
}

#[test]
fn validate_rejects_bad_intermediates() {
    let root_ca = root("root");
    let b = bundle(&[&root_ca]);
    let td_uri = || vec![uri("spiffe://example.org")];
    let unconstrained = || IsCa::Ca(BasicConstraints::Unconstrained);

    // Without keyCertSign.
    let chain = crafted_intermediate_chain(
        &root_ca,
        td_uri(),
        vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign],
        unconstrained(),
    );
    assert_eq!(
        validate(&chain, &b),
        Err(SvidError::BadIntermediate("keyCertSign is not set"))
    );
    // Without key usage.
    let chain = crafted_intermediate_chain(&root_ca, td_uri(), Vec::new(), unconstrained());
    assert_eq!(
        validate(&chain, &b),
        Err(SvidError::BadIntermediate("key usage missing"))
    );
    // Not a CA (explicit cA=false, and no basic constraints at all).
    for is_ca in [IsCa::ExplicitNoCa, IsCa::NoCa] {
        let chain = crafted_intermediate_chain(&root_ca, td_uri(), ca_usages(), is_ca);
        assert_eq!(
            validate(&chain, &b),
            Err(SvidError::BadIntermediate("cA is not set"))
        );
    }
    // A SPIFFE ID with a path.
    let chain = crafted_intermediate_chain(
        &root_ca,
        vec![uri("spiffe://example.org/ca")],
        ca_usages(),
        unconstrained(),
    );
    assert_eq!(validate(&chain, &b), Err(SvidError::CaIdHasPath));
    // Another trust domain's ID.
    let chain = crafted_intermediate_chain(
        &root_ca,
        vec![uri("spiffe://other.org")],
        ca_usages(),
        unconstrained(),
    );
    assert!(matches!(
        validate(&chain, &b),
        Err(SvidError::WrongTrustDomain { .. })
    ));
    // A URI that is not a SPIFFE ID.
    let chain = crafted_intermediate_chain(
        &root_ca,
        vec![uri("https://example.org")],
        ca_usages(),
        unconstrained(),
    );
    assert!(matches!(
        validate(&chain, &b),
        Err(SvidError::BadSpiffeId(_))
    ));
    // An upstream intermediate with no SPIFFE ID at all is allowed.
    let chain = crafted_intermediate_chain(&root_ca, Vec::new(), ca_usages(), unconstrained());
    assert!(validate(&chain, &b).is_ok());
}

#[test]
fn validate_rejects_an_intermediate_from_another_ca() {
    let root_ca = root("root");
    let stranger = root("stranger");
    let inter = stranger
        .sign_intermediate("i", CA_TTL, now(), Some(0))
        .unwrap();
    let (_, svid) = issue_csr(&inter, &wid("w"));
    assert!(matches!(
        validate(&svid.chain, &bundle(&[&root_ca])),
        Err(SvidError::UntrustedIssuer)
    ));
}

#[test]
fn leaf_signed_by_a_leaf_is_refused() {
    // A workload uses its own SVID key to sign a certificate for another ID.
    let ca = root("root");
    let b = bundle(&[&ca]);
    let (key, svid) = issue_csr(&ca, &wid("mallory"));
    let issuer = Issuer::from_ca_cert_der(&svid.chain[0], key).unwrap();
    let mut p = good_leaf_params();
    p.subject_alt_names = vec![uri("spiffe://example.org/admin")];
    let forged = sign(&p, &issuer);
    let err = validate(&[forged, svid.chain[0].clone()], &b).unwrap_err();
    assert!(
        matches!(err, SvidError::BadIntermediate("cA is not set")),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile CSRs and keys
// ---------------------------------------------------------------------------------------------

fn issue_from_csr(ca: &SigningCa, csr: &[u8]) -> Result<IssuedSvid, SvidError> {
    ca.issue(&request(&wid("w"), LeafKey::Csr(csr)))
}

#[test]
fn csr_with_flipped_signature_is_refused() {
    let ca = root("a1");
    let key = generate_key().unwrap();
    let csr = csr_for(&key, &wid("w")).unwrap();
    assert!(issue_from_csr(&ca, &csr).is_ok());

    let mut bad = csr.clone();
    *bad.last_mut().unwrap() ^= 0x01;
    assert!(matches!(
        issue_from_csr(&ca, &bad),
        Err(SvidError::CsrSignature)
    ));

    // A byte of the signed request info (inside the URI SAN).
    let mut bad = csr.clone();
    let at = find(&bad, b"spiffe://example.org/w");
    bad[at + 10] ^= 0x01;
    let err = issue_from_csr(&ca, &bad).unwrap_err();
    assert!(matches!(err, SvidError::CsrSignature), "{err:?}");
}

#[test]
fn csr_with_substituted_public_key_is_refused() {
    // The CSR of one key with another key's point put in: no proof of possession.
    let ca = root("a1");
    let key = generate_key().unwrap();
    let victim = generate_key().unwrap();
    let mut csr = csr_for(&key, &wid("w")).unwrap();
    let at = find(&csr, key.public_key_raw());
    csr[at..at + key.public_key_raw().len()].copy_from_slice(victim.public_key_raw());
    assert!(matches!(
        issue_from_csr(&ca, &csr),
        Err(SvidError::CsrSignature)
    ));
}

/// Every single-bit flip of a CSR is refused, or else certifies the same key: no corruption
/// gets another public key certified.
#[test]
fn no_bit_flip_of_a_csr_certifies_another_key() {
    let ca = root("a1");
    let key = generate_key().unwrap();
    let csr = csr_for(&key, &wid("w")).unwrap();
    let spki = key.subject_public_key_info();
    for i in 0..csr.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = csr.clone();
            bad[i] ^= bit;
            match issue_from_csr(&ca, &bad) {
                Err(
                    SvidError::CsrSignature | SvidError::Parse { .. } | SvidError::UnsupportedKey,
                ) => {}
                Err(other) => panic!("byte {i} bit {bit:#x}: unexpected {other:?}"),
                Ok(svid) => assert_eq!(
                    parse(&svid.chain[0]).public_key().raw,
                    spki.as_slice(),
                    "byte {i} bit {bit:#x}"
                ),
            }
        }
    }
}

#[test]
fn csr_for_unsupported_keys_is_refused() {
    let ca = root("a1");
    for alg in [&PKCS_ED25519, &PKCS_ECDSA_P384_SHA384] {
        let key = KeyPair::generate_for(alg).unwrap();
        let csr = csr_for(&key, &wid("w")).unwrap();
        let err = issue_from_csr(&ca, &csr).unwrap_err();
        assert!(matches!(err, SvidError::UnsupportedKey), "{err:?}");
        // The same key as a bare SPKI.
        let spki = key.subject_public_key_info();
        let err = ca
            .issue(&request(&wid("w"), LeafKey::PublicKey(&spki)))
            .unwrap_err();
        assert!(matches!(err, SvidError::UnsupportedKey), "{err:?}");
    }
    // The P-256 key this module generates is the supported one.
    assert!(
        generate_key()
            .unwrap()
            .is_compatible(&PKCS_ECDSA_P256_SHA256)
    );
}

/// A bare P-256 key is certified only if it is an uncompressed point on the curve: an
/// off-curve point (invalid-curve attacks), the point at infinity, a compressed point (which
/// ring and TLS peers refuse) and coordinates past the field prime are all refused.
#[test]
fn a_public_key_off_the_curve_is_refused() {
    let ca = root("a1");
    let key = generate_key().unwrap();
    let spki = key.subject_public_key_info();
    let raw = key.public_key_raw().to_vec();
    assert_eq!(raw.len(), 65);
    let at = find(&spki, &raw);
    let with_point = |point: &[u8]| {
        let mut s = spki[..at].to_vec();
        s.extend_from_slice(point);
        s
    };
    // The key itself is accepted; this is the shape every case below changes.
    ca.issue(&request(&wid("w"), LeafKey::PublicKey(&with_point(&raw))))
        .unwrap();
    let mut off_curve = raw.clone();
    off_curve[64] ^= 1; // y changed: y² ≠ x³ − 3x + b
    let mut compressed = vec![0x02 | (raw[64] & 1)];
    compressed.extend_from_slice(&raw[1..33]);
    compressed.resize(65, 0); // same length as an uncompressed point, so the DER still fits
    let mut past_prime = vec![0x04];
    past_prime.extend_from_slice(&[0xff; 64]);
    let mut zero = vec![0x04];
    zero.extend_from_slice(&[0; 64]);
    for (what, point) in [
        ("off the curve", off_curve),
        ("compressed prefix", compressed),
        ("coordinates past the prime", past_prime),
        ("all zero", zero),
        ("infinity", {
            let mut v = vec![0u8];
            v.resize(65, 0);
            v
        }),
    ] {
        let err = ca
            .issue(&request(&wid("w"), LeafKey::PublicKey(&with_point(&point))))
            .unwrap_err();
        assert!(matches!(err, SvidError::UnsupportedKey), "{what}: {err:?}");
    }
}

#[test]
fn garbage_spki_is_refused() {
    let ca = root("a1");
    let key = generate_key().unwrap();
    let spki = key.subject_public_key_info();
    let mut trailing = spki.clone();
    trailing.push(0);
    for bad in [
        Vec::new(),
        b"not a key".to_vec(),
        spki[..spki.len() - 1].to_vec(),
        trailing,
        key.public_key_raw().to_vec(),
    ] {
        let err = ca
            .issue(&request(&wid("w"), LeafKey::PublicKey(&bad)))
            .unwrap_err();
        assert!(matches!(err, SvidError::UnsupportedKey), "{err:?}");
    }
    let big = vec![0x30u8; MAX_DER_LEN + 1];
    let err = ca
        .issue(&request(&wid("w"), LeafKey::PublicKey(&big)))
        .unwrap_err();
    assert!(matches!(err, SvidError::TooLarge), "{err:?}");
}

#[test]
fn csr_with_trailing_bytes_is_refused() {
    let ca = root("a1");
    let key = generate_key().unwrap();
    let mut csr = csr_for(&key, &wid("w")).unwrap();
    csr.extend_from_slice(&[0, 0]);
    let err = issue_from_csr(&ca, &csr).unwrap_err();
    assert!(
        matches!(err, SvidError::Parse { what: "CSR", .. }),
        "{err:?}"
    );
}

#[test]
fn garbage_and_truncated_csrs_are_refused() {
    let ca = root("a1");
    let key = generate_key().unwrap();
    let csr = csr_for(&key, &wid("w")).unwrap();
    for bad in [
        Vec::new(),
        b"garbage".to_vec(),
        csr[..csr.len() / 2].to_vec(),
        csr[..csr.len() - 1].to_vec(),
    ] {
        let err = issue_from_csr(&ca, &bad).unwrap_err();
        assert!(
            matches!(err, SvidError::Parse { what: "CSR", .. }),
            "{err:?}"
        );
    }
}

#[test]
fn oversized_csr_is_refused() {
    let ca = root("a1");
    let key = generate_key().unwrap();
    // A well-formed, correctly signed CSR that is simply too large.
    let mut params = CertificateParams::default();
    params.subject_alt_names = (0..800)
        .map(|i| SanType::DnsName(format!("host-{i:04}.example.org").try_into().unwrap()))
        .collect();
    let big = params.serialize_request(&key).unwrap().der().to_vec();
    assert!(big.len() > MAX_DER_LEN);
    assert!(matches!(
        issue_from_csr(&ca, &big),
        Err(SvidError::TooLarge)
    ));
    // A valid CSR padded past the limit.
    let mut padded = csr_for(&key, &wid("w")).unwrap();
    padded.resize(MAX_DER_LEN + 1, 0);
    assert!(matches!(
        issue_from_csr(&ca, &padded),
        Err(SvidError::TooLarge)
    ));
}

#[test]
fn request_for_another_trust_domain_is_refused() {
    let ca = root("a1");
    let id = SpiffeId::parse("spiffe://other.org/ns/default/web").unwrap();
    let key = generate_key().unwrap();
    let csr = csr_for(&key, &id).unwrap();
    let err = ca.issue(&request(&id, LeafKey::Csr(&csr))).unwrap_err();
    match err {
        SvidError::WrongTrustDomain { expected, found } => {
            assert_eq!(expected, "example.org");
            assert_eq!(found, "spiffe://other.org/ns/default/web");
        }
        other => panic!("{other:?}"),
    }
    // A trust domain that merely shares a prefix is another trust domain.
    let id = SpiffeId::parse("spiffe://example.org.evil/w").unwrap();
    let spki = key.subject_public_key_info();
    assert!(matches!(
        ca.issue(&request(&id, LeafKey::PublicKey(&spki))),
        Err(SvidError::WrongTrustDomain { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// SigningCa::from_der
// ---------------------------------------------------------------------------------------------

#[test]
fn from_der_round_trips_a_root() {
    let ca = root("ringzero authority a1");
    let loaded = SigningCa::from_der(ca.cert_der(), &ca.key_pkcs8_der(), Vec::new()).unwrap();
    assert_eq!(loaded.cert_der(), ca.cert_der());
    assert_eq!(loaded.trust_domain(), &td());
    assert_eq!(loaded.not_after(), ca.not_after());
    assert!(loaded.chain().is_empty());
    assert_eq!(*loaded.key_pkcs8_der(), *ca.key_pkcs8_der());

    let id = wid("w");
    let (key, svid) = issue_csr(&loaded, &id);
    assert_leaf_profile(&ca, &svid, &id, &key.subject_public_key_info());
    assert_eq!(validate(&svid.chain, &bundle(&[&ca])).unwrap().id, id);
}

#[test]
fn from_der_round_trips_an_intermediate() {
    let root_ca = root("root");
    let inter = root_ca
        .sign_intermediate("i", CA_TTL, now(), Some(0))
        .unwrap();
    let loaded = SigningCa::from_der(
        inter.cert_der(),
        &inter.key_pkcs8_der(),
        inter.chain().to_vec(),
    )
    .unwrap();
    let (_, svid) = issue_csr(&loaded, &wid("w"));
    assert_eq!(svid.chain.len(), 2);
    assert_eq!(
        validate(&svid.chain, &bundle(&[&root_ca])).unwrap().id,
        wid("w")
    );
}

#[test]
fn from_der_rejects_a_mismatched_key() {
    let ca = root("a1");
    let other = root("a1");
    let err = SigningCa::from_der(ca.cert_der(), &other.key_pkcs8_der(), Vec::new()).unwrap_err();
    assert!(
        matches!(err, SvidError::Parse { what: "CA key", .. }),
        "{err:?}"
    );
    // A P-384 key, and garbage.
    let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    for key in [p384.serialize_der(), b"garbage".to_vec(), Vec::new()] {
        let err = SigningCa::from_der(ca.cert_der(), &key, Vec::new()).unwrap_err();
        assert!(
            matches!(err, SvidError::Parse { what: "CA key", .. }),
            "{err:?}"
        );
    }
}

#[test]
fn from_der_rejects_bad_certificates() {
    let ca = root("a1");
    let key = ca.key_pkcs8_der();

    // A leaf is not a CA.
    let (leaf_key, svid) = issue_csr(&ca, &wid("w"));
    let err =
        SigningCa::from_der(&svid.chain[0], &leaf_key.serialize_der(), Vec::new()).unwrap_err();
    assert!(matches!(err, SvidError::BadIntermediate(_)), "{err:?}");

    // Garbage, truncated and trailing bytes.
    let good = ca.cert_der().as_ref();
    let mut trailing = good.to_vec();
    trailing.push(0);
    for der in [b"junk".to_vec(), good[..good.len() - 1].to_vec(), trailing] {
        let err = SigningCa::from_der(&der, &key, Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                SvidError::Parse {
                    what: "CA certificate",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    // A CA whose SPIFFE ID has a path, and one without any URI SAN.
    let (cert, key, _) = crafted_root("pathy", vec![uri("spiffe://example.org/ca")]);
    assert_eq!(
        SigningCa::from_der(&cert, &key, Vec::new()).unwrap_err(),
        SvidError::CaIdHasPath
    );
    let (cert, key, _) = crafted_root("anonymous", Vec::new());
    assert_eq!(
        SigningCa::from_der(&cert, &key, Vec::new()).unwrap_err(),
        SvidError::NoUriSan
    );
    // A URI that is not a SPIFFE ID.
    let (cert, key, _) = crafted_root("web", vec![uri("https://example.org")]);
    assert!(matches!(
        SigningCa::from_der(&cert, &key, Vec::new()),
        Err(SvidError::BadSpiffeId(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// TrustBundle
// ---------------------------------------------------------------------------------------------

#[test]
fn bundle_rejects_a_non_ca_certificate() {
    let ca = root("a1");
    let (_, svid) = issue_csr(&ca, &wid("w"));
    let err =
        TrustBundle::new(td(), vec![ca.cert_der().clone(), svid.chain[0].clone()]).unwrap_err();
    assert!(matches!(err, SvidError::Bundle(_)), "{err:?}");
}

#[test]
fn bundle_rejects_a_ca_of_another_trust_domain() {
    let foreign = SigningCa::self_signed(&other_td(), "a1", CA_TTL, now(), None).unwrap();
    let err = TrustBundle::new(td(), vec![foreign.cert_der().clone()]).unwrap_err();
    match err {
        SvidError::WrongTrustDomain { expected, found } => {
            assert_eq!(expected, "example.org");
            assert_eq!(found, "spiffe://other.org");
        }
        other => panic!("{other:?}"),
    }
    // A CA of a trust domain sharing a prefix.
    let evil_td = TrustDomain::new("example.org.evil").unwrap();
    let evil = SigningCa::self_signed(&evil_td, "a1", CA_TTL, now(), None).unwrap();
    assert!(matches!(
        TrustBundle::new(td(), vec![evil.cert_der().clone()]),
        Err(SvidError::WrongTrustDomain { .. })
    ));
}

#[test]
fn bundle_rejects_malformed_roots() {
    let err = TrustBundle::new(td(), vec![CertificateDer::from(b"junk".to_vec())]).unwrap_err();
    assert!(matches!(err, SvidError::Parse { .. }), "{err:?}");
    let err = TrustBundle::new(
        td(),
        vec![CertificateDer::from(vec![0x30; MAX_DER_LEN + 1])],
    )
    .unwrap_err();
    assert!(matches!(err, SvidError::TooLarge), "{err:?}");
    let (cert, _, _) = crafted_root("pathy", vec![uri("spiffe://example.org/ca")]);
    assert_eq!(
        TrustBundle::new(td(), vec![cert]).unwrap_err(),
        SvidError::CaIdHasPath
    );
}

#[test]
fn bundle_accepts_an_upstream_root_without_spiffe_id() {
    let (cert, key, params) = crafted_root("upstream", Vec::new());
    let b = TrustBundle::new(td(), vec![cert.clone()]).unwrap();
    assert_eq!(b.roots(), [cert]);
    let issuer = Issuer::new(params, KeyPair::try_from(key.as_slice()).unwrap());
    let leaf = sign(&good_leaf_params(), &issuer);
    assert_eq!(validate(&[leaf], &b).unwrap().id, wid("workload"));
}

#[test]
fn bundle_pem_holds_every_root() {
    let a1 = root("a1");
    let a2 = root("a2");
    let b = bundle(&[&a1, &a2]);
    assert_eq!(b.trust_domain(), &td());
    let pem = b.to_pem();
    assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----\n").count(), 2);
    assert!(pem.lines().all(|l| l.len() <= 64));
    let ders: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| p.unwrap().contents)
        .collect();
    assert_eq!(ders, [a1.cert_der().to_vec(), a2.cert_der().to_vec()]);
}
