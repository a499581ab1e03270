//! The JWT side of `ringzero agent fetch --jwt` and `ringzero agent validate-jwt`: one
//! `FetchJWTSVID` or `ValidateJWTSVID` call on the agent's socket, with the security header.

use std::path::Path;
use std::time::Duration;

use ringzero_policy::SpiffeId;
use ringzero_proto::transport::unix_channel;
use ringzero_proto::workload as pb;
use ringzero_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use ringzero_proto::workload_api::SECURITY_HEADER;

use super::FetchError;

/// One JWT-SVID as fetched.
pub struct JwtSvid {
    pub spiffe_id: SpiffeId,
    /// The token (JWS compact serialization). A bearer credential: never log it.
    pub token: String,
    pub hint: String,
}

impl std::fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("token", &"<redacted>")
            .field("hint", &self.hint)
            .finish()
    }
}

/// What `ValidateJWTSVID` answered for a valid token.
#[derive(Debug, Clone)]
pub struct ValidatedJwt {
    pub spiffe_id: SpiffeId,
    /// The token's claims, as JSON.
    pub claims: serde_json::Value,
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

async fn client(
    socket: &Path,
) -> Result<SpiffeWorkloadApiClient<tonic::transport::Channel>, FetchError> {
    let channel = unix_channel(socket).await.map_err(FetchError::Connect)?;
    Ok(SpiffeWorkloadApiClient::new(channel).max_decoding_message_size(1 << 20))
}

/// JWT-SVIDs of the caller for `audience`, only for `spiffe_id` when given; the first is the
/// default identity's. `timeout` bounds the whole call.
pub async fn fetch_jwt(
    socket: &Path,
    audience: &[String],
    spiffe_id: Option<&SpiffeId>,
    timeout: Duration,
) -> Result<Vec<JwtSvid>, FetchError> {
    let call = async {
        let reply = client(socket)
            .await?
            .fetch_jwtsvid(with_header(pb::JwtsvidRequest {
                audience: audience.to_vec(),
                spiffe_id: spiffe_id.map(ToString::to_string).unwrap_or_default(),
            }))
            .await?
            .into_inner();
        if reply.svids.is_empty() {
            return Err(FetchError::Malformed("no JWT-SVID in the answer"));
        }
        reply
            .svids
            .into_iter()
            .map(|s| {
                Ok(JwtSvid {
                    spiffe_id: SpiffeId::parse(&s.spiffe_id)
                        .map_err(|_| FetchError::Malformed("spiffe_id is not a SPIFFE ID"))?,
                    token: s.svid,
                    hint: s.hint,
                })
            })
            .collect()
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

/// Asks the agent to validate `token` for `audience`.
pub async fn validate_jwt(
    socket: &Path,
    token: &str,
    audience: &str,
    timeout: Duration,
) -> Result<ValidatedJwt, FetchError> {
    let call = async {
        let reply = client(socket)
            .await?
            .validate_jwtsvid(with_header(pb::ValidateJwtsvidRequest {
                audience: audience.to_owned(),
                svid: token.to_owned(),
            }))
            .await?
            .into_inner();
        Ok(ValidatedJwt {
            spiffe_id: SpiffeId::parse(&reply.spiffe_id)
                .map_err(|_| FetchError::Malformed("spiffe_id is not a SPIFFE ID"))?,
            claims: reply.claims.as_ref().map_or(serde_json::Value::Null, |s| {
                serde_json::Value::Object(from_struct(s, 0))
            }),
        })
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

fn from_struct(
    s: &prost_types::Struct,
    depth: usize,
) -> serde_json::Map<String, serde_json::Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), from_value(v, depth + 1)))
        .collect()
}

fn from_value(v: &prost_types::Value, depth: usize) -> serde_json::Value {
    use prost_types::value::Kind;
    use serde_json::Value;
    if depth > 16 {
        return Value::Null;
    }
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            // Dates are whole seconds: print them as integers.
            if n.fract() == 0.0 && *n >= 0.0 && *n < 9.0e15 {
                Value::from(*n as u64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => {
            Value::Array(l.values.iter().map(|x| from_value(x, depth + 1)).collect())
        }
        Some(Kind::StructValue(s)) => Value::Object(from_struct(s, depth)),
    }
}
