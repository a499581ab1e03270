//! `ringzero bundle show`: the trust bundle, as PEM or as a SPIFFE bundle (JWKS).

use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use ringzero_policy::svid::pem_encode;
use ringzero_proto::client::Profile;
use ringzero_proto::pb;

use super::session::{call_failed, runtime, session};
use crate::cli::GlobalArgs;
use crate::failure::{Outcome, failed};

#[derive(Debug, Subcommand)]
pub(crate) enum BundleCommand {
    /// Print the trust bundle.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile bundle show > bundle.pem
  ringzero --profile admin.profile bundle show --format jwks")]
    Show(BundleShowArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BundleShowArgs {
    #[arg(long, value_enum, default_value = "pem")]
    pub(crate) format: BundleFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum BundleFormat {
    Pem,
    /// The SPIFFE bundle format (JWKS).
    Jwks,
}

pub(crate) fn run(global: &GlobalArgs, cmd: BundleCommand) -> Outcome {
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            BundleCommand::Show(a) => bundle_show(global, a.format).await,
        }
    })
}

async fn bundle_show(global: &GlobalArgs, format: BundleFormat) -> Outcome {
    let mut s = session(global)?;
    let bundle = s
        .client
        .call(|mut c| async move { c.get_bundle(pb::GetBundleRequest {}).await })
        .await
        .map_err(call_failed)?;
    // The refreshed profile knows every key marked compromised, in this bundle or before.
    s.refresh().await;
    match format {
        BundleFormat::Pem => {
            for c in s.profile.trusted_cas(&bundle) {
                print!("{}", pem_encode("CERTIFICATE", &c));
            }
        }
        BundleFormat::Jwks => println!("{}", jwks(&bundle, &s.profile).map_err(failed)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// The SPIFFE bundle format: a JWK set with `use: x509-svid` keys (carrying `x5c`) and
/// `use: jwt-svid` keys. Compromised keys are not in it: a SPIFFE bundle lists usable keys
/// only (it has no status to mark them with).
fn jwks(b: &pb::Bundle, profile: &Profile) -> anyhow::Result<serde_json::Value> {
    use base64::Engine;
    use x509_parser::prelude::FromDer;
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut keys = Vec::new();
    for k in b.keys.iter().filter(|k| !profile.is_compromised(k)) {
        let point = match k.kind.as_str() {
            "x509-ca" => {
                let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&k.public_key)
                    .map_err(|e| anyhow!("bundle certificate {}: {e}", k.key_id))?;
                cert.public_key().subject_public_key.data.to_vec()
            }
            "jwt" => {
                let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&k.public_key)
                    .map_err(|e| anyhow!("JWT key {}: {e}", k.key_id))?;
                spki.subject_public_key.data.to_vec()
            }
            _ => continue,
        };
        if point.len() != 65 || point[0] != 4 {
            continue;
        }
        let mut jwk = serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": url.encode(&point[1..33]),
            "y": url.encode(&point[33..]),
            "kid": k.key_id.to_string(),
        });
        if k.kind == "x509-ca" {
            jwk["use"] = "x509-svid".into();
            jwk["x5c"] = serde_json::json!([b64.encode(&k.public_key)]);
        } else {
            jwk["use"] = "jwt-svid".into();
        }
        keys.push(jwk);
    }
    Ok(serde_json::json!({ "keys": keys, "spiffe_refresh_hint": 60 }))
}
