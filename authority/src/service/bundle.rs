//! The trust bundle as the service sends it: which keys it carries and with what end of
//! validity, how long a retired CA stays in it, and the wire names of key kinds and statuses.

use ringzero_proto::pb;

use super::status::internal as status_of;
use crate::command::{KeyKind, KeyStatus};
use crate::gate::now_ms;
use crate::store::StateMachineStore;

pub(crate) fn key_kind_name(k: KeyKind) -> &'static str {
    match k {
        KeyKind::X509Ca => "x509-ca",
        KeyKind::Biscuit => "biscuit",
        KeyKind::Jwt => "jwt",
        KeyKind::Audit => "audit",
    }
}

pub(crate) fn key_status_name(s: KeyStatus) -> &'static str {
    match s {
        KeyStatus::Published => "published",
        KeyStatus::Active => "active",
        KeyStatus::Retired => "retired",
        KeyStatus::Compromised => "compromised",
    }
}

pub(super) fn parse_kind(s: &str) -> Option<KeyKind> {
    Some(match s {
        "x509-ca" => KeyKind::X509Ca,
        "biscuit" => KeyKind::Biscuit,
        "jwt" => KeyKind::Jwt,
        "audit" => KeyKind::Audit,
        _ => return None,
    })
}

/// Builds the bundle on demand (see [`AuthorityService::bundle_source`]).
pub(crate) type BundleSource =
    std::sync::Arc<dyn Fn() -> Result<pb::Bundle, tonic::Status> + Send + Sync>;

/// The bundle's keys, every one with its status. A compromised key is published *as
/// compromised*, never left out: a client only updates the keys it is sent, so an absent key
/// would stay trusted wherever it was pinned. Every consumer excludes compromised keys from
/// what it trusts (`ringzero_proto::client::bundle_cas`, `Profile::apply_bundle`). A retired CA (its member removed
/// without `--compromised`, or rotated away from) is sent as retired until everything it can
/// have signed has expired, and then no more: verifiers outside the authority stop trusting it
/// then. See [`retired_ca_until`].
pub(super) fn bundle_keys(sm: &StateMachineStore) -> Result<Vec<pb::BundleKey>, tonic::Status> {
    let reader = sm.reader().map_err(status_of)?;
    let keys = reader.keys().map_err(status_of)?;
    let now = now_ms();
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        if k.kind == KeyKind::X509Ca
            && k.status == KeyStatus::Retired
            && retired_ca_until(&reader, &k).map_err(status_of)? <= now
        {
            continue;
        }
        out.push(k);
    }
    let mut wire = Vec::with_capacity(out.len());
    for k in out {
        let not_after_ms = wire_not_after(&reader, &k).map_err(status_of)?;
        wire.push(pb::BundleKey {
            key_id: k.id,
            authority: k.authority,
            kind: key_kind_name(k.kind).into(),
            public_key: k.public_der,
            status: key_status_name(k.status).into(),
            not_after_ms,
        });
    }
    Ok(wire)
}

/// The longest an X.509-SVID, node, user or authority certificate can live: a CA signs nothing
/// valid for longer.
pub(super) const MAX_CERT_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);

// Every certificate a CA signs lives at most MAX_CERT_LIFETIME.
const _: () = assert!(
    MAX_CERT_LIFETIME.as_secs() >= super::MAX_ENTRY_TTL.as_secs()
        && MAX_CERT_LIFETIME.as_secs() >= super::AUTHORITY_SVID_TTL.as_secs()
        && MAX_CERT_LIFETIME.as_secs() >= crate::node::NODE_SVID_TTL.as_secs()
        && MAX_CERT_LIFETIME.as_secs() >= super::users::MAX_USER_TTL.as_secs()
        && MAX_CERT_LIFETIME.as_secs() >= crate::node::admin_socket::MAX_TTL.as_secs()
);

/// Until when a retired CA `k` must stay in the bundle: until the last certificate recorded as
/// issued by its member expires, and never past the longest lifetime a certificate can have
/// counted from the retirement — it signed nothing after it. The second bound matters for a
/// rotated CA whose member goes on issuing (from the new CA): without it, the old key, if it
/// leaked, would stay trusted as long as the member lives.
fn retired_ca_until(
    reader: &crate::StateReader,
    k: &crate::KeyRecord,
) -> Result<u64, crate::StateError> {
    let retired = reader.key_retired_ms(k.id)?.unwrap_or(k.published_ms);
    let by_lifetime =
        retired.saturating_add(u64::try_from(MAX_CERT_LIFETIME.as_millis()).unwrap_or(u64::MAX));
    Ok(match reader.issued_until(k.authority)? {
        // Nothing recorded (a cluster older than the record): the lifetime bound alone.
        0 => by_lifetime,
        t => t.min(by_lifetime),
    })
}

/// The end of a key's validity as verifiers are told it. A retired signing key (Biscuit, JWT,
/// audit) is good only for what it signed before its retirement, and verifiers read that end
/// from `not_after_ms` (a retired audit pin verifies heads dated before it): so it is the
/// retirement time, not the end the key was published with — else a removed member's stolen
/// audit key would sign tree heads that verify for the rest of its planned life. A CA's
/// validity is its certificate's own; it is sent as published.
pub(crate) fn wire_not_after(
    reader: &crate::StateReader,
    k: &crate::KeyRecord,
) -> Result<u64, crate::StateError> {
    if k.status != KeyStatus::Retired || k.kind == KeyKind::X509Ca {
        return Ok(k.not_after_ms);
    }
    Ok(match reader.key_retired_ms(k.id)? {
        Some(retired) if k.not_after_ms == 0 => retired,
        Some(retired) => retired.min(k.not_after_ms),
        None => k.not_after_ms,
    })
}
