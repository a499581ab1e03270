//! `ringzero agent fetch --jwt` and `ringzero agent validate-jwt`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use clap::Args;
use ringzero_agent::{endpoint_path, fetch_jwt, validate_jwt};
use ringzero_policy::SpiffeId;

use super::{AgentFetchArgs, print_out, rfc3339};
use crate::args::parse_duration;
use crate::failure::{Outcome, bad_input, bad_input_msg, failed};
use crate::input::read_secret;

#[derive(Debug, Args)]
pub(crate) struct AgentValidateJwtArgs {
    /// The token: TOKEN, @FILE or - (stdin).
    #[arg(value_name = "TOKEN|@FILE|-")]
    pub(crate) token: String,
    /// The audience the token must name (yours, as the party validating it).
    #[arg(long, value_name = "AUDIENCE")]
    pub(crate) audience: String,
    /// The Workload API socket: a path or unix:///path.
    #[arg(long, value_name = "PATH|unix:///PATH", env = "SPIFFE_ENDPOINT_SOCKET")]
    pub(crate) socket: Option<String>,
    /// How long to wait for an answer.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub(crate) timeout: Duration,
    /// Print JSON: `{"spiffe_id": …, "claims": {…}}`.
    #[arg(long)]
    pub(crate) json: bool,
}

fn socket(endpoint: Option<String>) -> Result<std::path::PathBuf, crate::failure::Failure> {
    let endpoint = endpoint.ok_or_else(|| {
        bad_input_msg("no Workload API socket: pass --socket PATH or set SPIFFE_ENDPOINT_SOCKET")
    })?;
    endpoint_path(&endpoint).map_err(bad_input)
}

/// The `exp` of a token, read without verifying it (for display only).
fn unverified_exp(token: &str) -> Option<SystemTime> {
    use base64::Engine as _;
    let claims = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(v.get("exp")?.as_u64()?))
}

/// `agent fetch --jwt`: human text on stderr, the default identity's token alone on the last
/// line of stdout (`--json`: every token as JSON on stdout).
pub(super) async fn fetch(a: AgentFetchArgs) -> Outcome {
    if a.audience.is_empty() {
        return Err(bad_input_msg("--jwt needs at least one --audience"));
    }
    if a.write.is_some() {
        return Err(bad_input_msg("--write is for X.509-SVIDs; not with --jwt"));
    }
    let wanted = a
        .spiffe_id
        .as_deref()
        .map(SpiffeId::parse)
        .transpose()
        .map_err(bad_input)?;
    let socket = socket(a.socket)?;
    let started = std::time::Instant::now();
    let svids = fetch_jwt(&socket, &a.audience, wanted.as_ref(), a.timeout)
        .await
        .map_err(failed)?;
    let took = started.elapsed();
    let default = svids
        .first()
        .ok_or_else(|| failed(anyhow!("the Workload API sent no JWT-SVID")))?;
    if a.json {
        let rows: Vec<serde_json::Value> = svids
            .iter()
            .map(|s| {
                serde_json::json!({
                    "spiffe_id": s.spiffe_id.to_string(),
                    "token": s.token,
                    "hint": s.hint,
                    "expires_at": unverified_exp(&s.token).map(rfc3339),
                })
            })
            .collect();
        let mut out = serde_json::to_string_pretty(&rows).map_err(failed)?;
        out.push('\n');
        print_out(&out);
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "Received {} JWT-SVID{} after {took:.1?}",
        svids.len(),
        if svids.len() == 1 { "" } else { "s" }
    );
    for s in &svids {
        eprintln!();
        eprintln!("SPIFFE ID:  {}", s.spiffe_id);
        eprintln!("Audience:   {}", a.audience.join(", "));
        if let Some(exp) = unverified_exp(&s.token) {
            eprintln!("Expires:    {}", rfc3339(exp));
        }
        if !s.hint.is_empty() {
            eprintln!("Hint:       {}", s.hint);
        }
    }
    print_out(&format!("{}\n", default.token));
    Ok(ExitCode::SUCCESS)
}

/// `agent validate-jwt`: the agent validates; the claims are printed as JSON.
pub(super) async fn validate(a: AgentValidateJwtArgs) -> Outcome {
    let token = read_secret(&a.token).map_err(bad_input)?;
    let socket = socket(a.socket)?;
    let v = validate_jwt(&socket, token.trim(), &a.audience, a.timeout)
        .await
        .map_err(failed)?;
    let out = if a.json {
        serde_json::json!({ "spiffe_id": v.spiffe_id.to_string(), "claims": v.claims })
    } else {
        eprintln!(
            "valid JWT-SVID for {} (audience {})",
            v.spiffe_id, a.audience
        );
        v.claims
    };
    let mut text = serde_json::to_string_pretty(&out).map_err(failed)?;
    text.push('\n');
    print_out(&text);
    Ok(ExitCode::SUCCESS)
}
