//! JWT-SVIDs on the Workload API: `FetchJWTSVID`, `FetchJWTBundles`, `ValidateJWTSVID`.
//!
//! - **Fetch**: the caller is admitted and attested exactly as for `FetchX509SVID`; of the
//!   identities it matches (oldest entry first), all of them, or the one named by `spiffe_id`,
//!   get a token for the requested audiences (checked and normalized by
//!   `ringzero_policy::jwt::audiences`). Tokens are minted by the authority (`MintJwtSvid`,
//!   with this node's SVID and capability; the authority signs and audits) and cached here
//!   per (entry, sorted audience set) until half of their lifetime has passed, so repeated
//!   fetches cost no authority call and no audit record. The cache is bounded
//!   ([`MAX_CACHED`]); at most [`MAX_CONCURRENT_MINTS`] mints are in flight.
//! - **Bundles**: a stream of JWK sets keyed by trust domain ID, from the bundle's JWT keys
//!   (compromised keys left out), every message complete, sent again when the keys change.
//! - **Validate**: `ringzero_policy::jwt::validate` against those keys; any attested caller
//!   may validate (bundles are public). Refusals are `InvalidArgument` naming the check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringzero_policy::SpiffeId;
use ringzero_policy::jwt::JwtError;
use ringzero_proto::client::AuthorityClient;
use ringzero_proto::pb as authority_pb;
use ringzero_proto::workload as pb;
use tokio::sync::{Semaphore, watch};
use tonic::Status;
use tracing::{debug, info, warn};

use crate::cache::{Identity, Snapshot};
use crate::daemon::ClientSetup;

/// Cached tokens, at most.
pub(crate) const MAX_CACHED: usize = 4096;
/// `MintJwtSvid` calls in flight, at most.
pub(crate) const MAX_CONCURRENT_MINTS: usize = 8;
/// How long one mint may take.
const MINT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Cached {
    token: String,
    refresh_at: SystemTime,
    expires_at: SystemTime,
}

/// Mints JWT-SVIDs through the authority and caches them until half-life.
pub(crate) struct JwtIssuer {
    setup: watch::Receiver<Arc<ClientSetup>>,
    cache: Mutex<HashMap<(String, Vec<String>), Cached>>,
    mints: Semaphore,
}

impl std::fmt::Debug for JwtIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtIssuer").finish_non_exhaustive()
    }
}

impl JwtIssuer {
    pub(crate) fn new(setup: watch::Receiver<Arc<ClientSetup>>) -> Self {
        Self {
            setup,
            cache: Mutex::new(HashMap::new()),
            mints: Semaphore::new(MAX_CONCURRENT_MINTS),
        }
    }

    fn cached(&self, key: &(String, Vec<String>), now: SystemTime) -> Option<String> {
        let map = self.cache.lock().ok()?;
        map.get(key)
            .filter(|c| now < c.refresh_at)
            .map(|c| c.token.clone())
    }

    fn store(&self, key: (String, Vec<String>), c: Cached, now: SystemTime) {
        let Ok(mut map) = self.cache.lock() else {
            return;
        };
        if map.len() >= MAX_CACHED {
            map.retain(|_, v| v.expires_at > now);
        }
        if map.len() >= MAX_CACHED {
            // Still full of live tokens: drop the one closest to expiry.
            if let Some(k) = map
                .iter()
                .min_by_key(|(_, v)| v.expires_at)
                .map(|(k, _)| k.clone())
            {
                map.remove(&k);
            }
        }
        map.insert(key, c);
    }

    /// A token of `identity` for `audience` (normalized), from the cache or minted now.
    async fn token(&self, identity: &Identity, audience: &[String]) -> Result<String, Status> {
        let key = (identity.entry_id.clone(), audience.to_vec());
        if let Some(t) = self.cached(&key, SystemTime::now()) {
            return Ok(t);
        }
        let _permit = self
            .mints
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        // Another call may have minted it while this one waited.
        if let Some(t) = self.cached(&key, SystemTime::now()) {
            return Ok(t);
        }
        let setup = self.setup.borrow().clone();
        let creds = setup
            .creds
            .client_credentials()
            .map_err(|e| Status::unavailable(format!("node credentials: {e}")))?;
        let mut client = AuthorityClient::new(creds, setup.addrs.clone());
        let req = authority_pb::MintJwtSvidRequest {
            entry_id: identity.entry_id.clone(),
            audience: audience.to_vec(),
        };
        let call = client.call(move |mut c| {
            let req = req.clone();
            async move { c.mint_jwt_svid(req).await }
        });
        let reply = match tokio::time::timeout(MINT_TIMEOUT, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                warn!(entry = %identity.entry_id, error = %e, "MintJwtSvid failed");
                return Err(match e.code() {
                    Some(tonic::Code::PermissionDenied) => Status::permission_denied(e.to_string()),
                    Some(tonic::Code::InvalidArgument) => Status::invalid_argument(e.to_string()),
                    _ => Status::unavailable(format!("cannot mint a JWT-SVID: {e}")),
                });
            }
            Err(_) => return Err(Status::unavailable("the authority did not answer in time")),
        };
        if reply.spiffe_id != identity.spiffe_id.as_str() {
            return Err(Status::internal("the authority minted another identity"));
        }
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let (iat, exp) = (at(reply.issued_at_ms), at(reply.expires_at_ms));
        let half = exp.duration_since(iat).unwrap_or_default() / 2;
        debug!(entry = %identity.entry_id, kid = %reply.key_id, "JWT-SVID minted");
        self.store(
            key,
            Cached {
                token: reply.token.clone(),
                refresh_at: iat + half,
                expires_at: exp,
            },
            SystemTime::now(),
        );
        Ok(reply.token)
    }
}

/// `FetchJWTSVID` for an admitted, established caller against `snap`.
pub(super) async fn fetch(
    issuer: Option<&JwtIssuer>,
    snap: &Snapshot,
    caller: &crate::attest::Attestation,
    req: &pb::JwtsvidRequest,
) -> Result<pb::JwtsvidResponse, Status> {
    let audience = ringzero_policy::jwt::audiences(&req.audience)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let wanted = if req.spiffe_id.is_empty() {
        None
    } else {
        Some(
            SpiffeId::parse(&req.spiffe_id)
                .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?,
        )
    };
    let mut identities: Vec<&Arc<Identity>> = snap
        .matching(&caller.selectors())
        .filter(|i| wanted.as_ref().is_none_or(|w| &i.spiffe_id == w))
        .collect();
    // One token per SPIFFE ID (two entries may name the same one): the oldest entry's.
    let mut seen = std::collections::HashSet::new();
    identities.retain(|i| seen.insert(i.spiffe_id.clone()));
    if identities.is_empty() {
        info!(
            pid = caller.pid(),
            uid = caller.uid(),
            "FetchJWTSVID: no identity issued"
        );
        return Err(Status::permission_denied(super::NO_IDENTITY));
    }
    let issuer =
        issuer.ok_or_else(|| Status::unavailable("this server does not mint JWT-SVIDs"))?;
    let mut svids = Vec::with_capacity(identities.len());
    for identity in identities {
        let token = issuer.token(identity, &audience).await?;
        svids.push(pb::Jwtsvid {
            spiffe_id: identity.spiffe_id.to_string(),
            svid: token,
            hint: identity.hint.clone(),
        });
    }
    info!(
        pid = caller.pid(),
        uid = caller.uid(),
        svids = svids.len(),
        "FetchJWTSVID: serving"
    );
    Ok(pb::JwtsvidResponse { svids })
}

/// The JWT bundles of `snap`, keyed by trust domain ID; `None` when there are none.
pub(super) fn bundles_response(snap: &Snapshot) -> Option<pb::JwtBundlesResponse> {
    let bundles: HashMap<String, Vec<u8>> = snap
        .jwt_bundles()
        .iter()
        .filter(|(_, keys)| !keys.is_empty())
        .map(|(td, keys)| {
            (
                td.id().to_string(),
                ringzero_proto::jwks::jwt_bundle_document(keys),
            )
        })
        .collect();
    (!bundles.is_empty()).then_some(pb::JwtBundlesResponse { bundles })
}

/// `ValidateJWTSVID` against the JWT keys of `snap`.
pub(super) fn validate(
    snap: &Snapshot,
    req: &pb::ValidateJwtsvidRequest,
) -> Result<pb::ValidateJwtsvidResponse, Status> {
    if req.audience.is_empty() {
        return Err(Status::invalid_argument("audience must be specified"));
    }
    if req.svid.is_empty() {
        return Err(Status::invalid_argument("svid must be specified"));
    }
    let claims = ringzero_policy::jwt::validate(
        &req.svid,
        &req.audience,
        snap.jwt_bundles(),
        SystemTime::now(),
    )
    .map_err(|e: JwtError| {
        debug!(code = e.code(), "ValidateJWTSVID: refused");
        Status::invalid_argument(format!("invalid JWT-SVID: {e}"))
    })?;
    Ok(pb::ValidateJwtsvidResponse {
        spiffe_id: claims.subject.to_string(),
        claims: Some(to_struct(&claims.all)),
    })
}

/// JSON claims as a `google.protobuf.Struct`.
fn to_struct(map: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), to_value(v, 0)))
            .collect(),
    }
}

fn to_value(v: &serde_json::Value, depth: usize) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value;
    let kind = match v {
        _ if depth > 16 => Kind::NullValue(0),
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(|x| to_value(x, depth + 1)).collect(),
        }),
        Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o
                .iter()
                .map(|(k, x)| (k.clone(), to_value(x, depth + 1)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}
