//! Applying a bundle received over an authenticated channel to what a profile trusts: its CA
//! certificates, its pinned audit keys, and its memory of compromised keys.
//!
//! The cluster publishes a compromised key *as compromised* (it never just leaves it out: a
//! client only updates the keys it is sent, so an absent key would stay trusted wherever it was
//! pinned). The rules, in order:
//!
//! 1. **Compromised wins and is never forgotten.** Every key a bundle marks compromised is
//!    remembered by [`key_fingerprint`] in [`Profile::compromised_keys`]; from then on that key
//!    is trusted nowhere, whatever a later bundle says (a lagging follower may still list it as
//!    active, and a key is compromised once and for all).
//! 2. **Audit pins are never dropped and never revived** ([`Profile::merge_audit_keys`]): a
//!    retired key still verifies old heads; a pin whose key is compromised (by status, or by
//!    fingerprint under another id) becomes compromised and stays so.
//! 3. **The CA certificates are the bundle's, less the compromised ones**; a bundle with no
//!    usable CA leaves them as they are, less any now known compromised.

use ringzero_policy::join::sha256;
use ringzero_policy::svid::pem_encode;
use rustls_pki_types::CertificateDer;

use super::{ED25519_SPKI_PREFIX, Profile};
use crate::pb;

/// The status of a key that must never be trusted again.
pub const COMPROMISED: &str = "compromised";

/// What a profile remembers a compromised key by: the SHA-256 (hex) of the key as a bundle
/// carries it (X.509: the CA certificate; JWT and audit: the SPKI; Biscuit: the raw key).
pub fn key_fingerprint(k: &pb::BundleKey) -> String {
    hex::encode(sha256(&k.public_key))
}

impl Profile {
    /// Whether `k` must not be trusted: the bundle marks it compromised, or this profile
    /// learned so before.
    pub fn is_compromised(&self, k: &pb::BundleKey) -> bool {
        k.status == COMPROMISED || self.compromised_keys.contains(&key_fingerprint(k))
    }

    /// The CA certificates of `bundle` this profile may trust.
    pub fn trusted_cas(&self, bundle: &pb::Bundle) -> Vec<CertificateDer<'static>> {
        bundle
            .keys
            .iter()
            .filter(|k| k.kind == "x509-ca" && !self.is_compromised(k))
            .map(|k| CertificateDer::from(k.public_key.clone()))
            .collect()
    }

    /// Applies a bundle received over an authenticated channel (see the module docs): learns
    /// the compromised keys, merges the audit pins, replaces the CAs and the authority
    /// addresses.
    pub fn apply_bundle(&mut self, bundle: &pb::Bundle) {
        for k in bundle.keys.iter().filter(|k| k.status == COMPROMISED) {
            let fp = key_fingerprint(k);
            if !self.compromised_keys.contains(&fp) {
                self.compromised_keys.push(fp);
            }
        }
        self.merge_audit_keys(bundle);
        let known = &self.compromised_keys;
        for pin in &mut self.audit_keys {
            let spki = pin
                .public_key_bytes()
                .map(|raw| [&ED25519_SPKI_PREFIX[..], &raw[..]].concat());
            if spki.is_some_and(|s| known.contains(&hex::encode(sha256(&s)))) {
                pin.status = COMPROMISED.into();
                pin.retired_ms = None;
            }
        }
        let mut cas = self.trusted_cas(bundle);
        if cas.is_empty() {
            cas = self.bundle_certs().unwrap_or_default();
        }
        cas.retain(|c| !known.contains(&hex::encode(sha256(c))));
        self.bundle_pem = cas.iter().map(|c| pem_encode("CERTIFICATE", c)).collect();
        let addrs: Vec<String> = bundle.members.iter().map(|m| m.address.clone()).collect();
        if !addrs.is_empty() {
            self.authorities = addrs;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::client::{AuditKeyPin, bundle_cas};

    fn ca(name: &str) -> Vec<u8> {
        let td = ringzero_policy::testing::trust_domain("example.org");
        ringzero_policy::testing::ca(&td, name).cert_der().to_vec()
    }

    fn key(
        id: u64,
        authority: u64,
        kind: &str,
        public_key: Vec<u8>,
        status: &str,
    ) -> pb::BundleKey {
        pb::BundleKey {
            key_id: id,
            authority,
            kind: kind.into(),
            public_key,
            status: status.into(),
            not_after_ms: 0,
        }
    }

    fn audit(raw: u8) -> Vec<u8> {
        [&ED25519_SPKI_PREFIX[..], &[raw; 32][..]].concat()
    }

    /// Node `n`'s keys, all with `status`.
    fn node_keys(n: u64, cas: &[Vec<u8>], status: &str) -> Vec<pb::BundleKey> {
        vec![
            key(n * 10, n, "x509-ca", cas[n as usize].clone(), status),
            key(n * 10 + 1, n, "audit", audit(n as u8), status),
            key(n * 10 + 2, n, "biscuit", vec![n as u8; 32], status),
        ]
    }

    fn bundle(keys: Vec<pb::BundleKey>) -> pb::Bundle {
        pb::Bundle {
            trust_domain: "example.org".into(),
            keys,
            members: vec![],
        }
    }

    fn profile(cas: &[Vec<u8>]) -> Profile {
        let certs: Vec<CertificateDer<'static>> = cas
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let mut p = Profile::new(
            &ringzero_policy::TrustDomain::new("example.org").unwrap(),
            vec!["127.0.0.1:1".into()],
            &certs[1..],
            &certs[1..2],
            b"key",
            "token",
        );
        p.apply_bundle(&bundle(
            (1..=3).flat_map(|n| node_keys(n, cas, "active")).collect(),
        ));
        p
    }

    fn status_of(p: &Profile, id: u64) -> &str {
        &p.audit_keys.iter().find(|k| k.id == id).unwrap().status
    }

    #[test]
    fn compromised_keys_leave_the_cas_and_their_audit_pins_are_compromised() {
        let cas: Vec<Vec<u8>> = (0..4).map(|i| ca(&format!("n{i}"))).collect();
        let mut p = profile(&cas);
        assert_eq!(p.bundle_certs().unwrap().len(), 3);
        assert_eq!(status_of(&p, 21), "active");

        // Node 2 removed as compromised: its keys are published as such.
        let mut keys: Vec<pb::BundleKey> = [1, 3]
            .iter()
            .flat_map(|&n| node_keys(n, &cas, "active"))
            .collect();
        keys.extend(node_keys(2, &cas, COMPROMISED));
        let b = bundle(keys);
        assert!(bundle_cas(&b).iter().all(|c| c.as_ref() != cas[2]));
        p.apply_bundle(&b);
        let certs = p.bundle_certs().unwrap();
        assert_eq!(certs.len(), 2);
        assert!(certs.iter().all(|c| c.as_ref() != cas[2]));
        assert_eq!(status_of(&p, 21), COMPROMISED);
        assert_eq!(status_of(&p, 11), "active");
        assert_eq!(p.compromised_keys.len(), 3, "one per key kind");
        assert!(p.trusted_cas(&b).iter().all(|c| c.as_ref() != cas[2]));
    }

    #[test]
    fn a_compromised_key_never_revives_and_compromised_wins() {
        let cas: Vec<Vec<u8>> = (0..4).map(|i| ca(&format!("n{i}"))).collect();
        let mut p = profile(&cas);
        p.apply_bundle(&bundle(node_keys(2, &cas, COMPROMISED)));
        let after = p.clone();

        // A stale bundle (a lagging node) lists node 2's keys as active again: nothing revives.
        p.apply_bundle(&bundle(
            (1..=3).flat_map(|n| node_keys(n, &cas, "active")).collect(),
        ));
        assert_eq!(status_of(&p, 21), COMPROMISED);
        assert!(
            p.bundle_certs()
                .unwrap()
                .iter()
                .all(|c| c.as_ref() != cas[2])
        );
        assert_eq!(p.compromised_keys, after.compromised_keys);
        let stale = bundle(node_keys(2, &cas, "active"));
        assert!(p.trusted_cas(&stale).is_empty());
        assert!(stale.keys.iter().all(|k| p.is_compromised(k)));

        // The same audit key under another id, or a bundle that omits it: still compromised.
        p.apply_bundle(&bundle(vec![key(99, 2, "audit", audit(2), "published")]));
        assert_eq!(status_of(&p, 99), COMPROMISED);
        p.apply_bundle(&bundle(vec![]));
        assert_eq!(status_of(&p, 21), COMPROMISED);
        // A bundle with no usable CA keeps the others.
        assert_eq!(p.bundle_certs().unwrap().len(), 2);

        // A pin compromised before never goes back, even if the bundle says retired.
        let mut retired = node_keys(2, &cas, "retired");
        retired.truncate(2);
        p.apply_bundle(&bundle(retired));
        assert_eq!(status_of(&p, 21), COMPROMISED);
        assert!(
            p.bundle_certs()
                .unwrap()
                .iter()
                .all(|c| c.as_ref() != cas[2])
        );
    }

    #[test]
    fn an_offline_profile_learns_the_compromise_on_its_first_refresh() {
        let cas: Vec<Vec<u8>> = (0..4).map(|i| ca(&format!("n{i}"))).collect();
        // Copied before the removal, refreshed after it: the state keeps compromised keys
        // forever, so any later bundle carries them.
        let mut offline = profile(&cas);
        let mut keys: Vec<pb::BundleKey> = node_keys(2, &cas, COMPROMISED);
        keys.extend(node_keys(1, &cas, "active"));
        keys.extend(node_keys(3, &cas, "retired"));
        offline.apply_bundle(&bundle(keys));
        assert_eq!(status_of(&offline, 21), COMPROMISED);
        assert_eq!(status_of(&offline, 31), "retired");
        let pins: Vec<AuditKeyPin> = offline.audit_keys.clone();
        assert_eq!(pins.len(), 3, "pins are never dropped");
        assert!(
            offline
                .bundle_certs()
                .unwrap()
                .iter()
                .all(|c| c.as_ref() != cas[2])
        );
    }

    #[test]
    fn a_user_profile_keeps_what_the_callers_profile_learned_and_applies_the_reply_bundle() {
        let cas: Vec<Vec<u8>> = (0..4).map(|i| ca(&format!("n{i}"))).collect();
        let mut known = profile(&cas);
        known.apply_bundle(&bundle(node_keys(2, &cas, COMPROMISED)));
        let td = ringzero_policy::TrustDomain::new("example.org").unwrap();
        let fallback = [CertificateDer::from(cas[1].clone())];
        let mut reply = pb::UserCredentials {
            svid_chain: vec![cas[3].clone()],
            bundle: None,
            token: "user-token".into(),
            expires_unix: 0,
        };

        // No bundle in the reply: the fallback CAs, the reply's chain and token, the key.
        let p = Profile::from_user_credentials(&td, vec![], &fallback, None, &reply, b"k");
        assert_eq!(p.bundle_certs().unwrap(), fallback);
        assert_eq!(p.token, "user-token");
        assert_eq!(
            p,
            Profile::new(
                &td,
                vec![],
                &fallback,
                &[cas[3].clone().into()],
                b"k",
                "user-token"
            )
        );

        // The reply's bundle replaces the CAs, and what `known` learned stays learned: a
        // compromised key in it is not trusted again, whatever the reply says.
        reply.bundle = Some(bundle(
            (1..=3).flat_map(|n| node_keys(n, &cas, "active")).collect(),
        ));
        let p = Profile::from_user_credentials(&td, vec![], &fallback, Some(&known), &reply, b"k");
        assert_eq!(p.compromised_keys, known.compromised_keys);
        assert_eq!(status_of(&p, 21), COMPROMISED);
        let certs = p.bundle_certs().unwrap();
        assert_eq!(certs.len(), 2);
        assert!(certs.iter().all(|c| c.as_ref() != cas[2]));
    }
}
