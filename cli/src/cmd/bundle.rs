//! `ringzero bundle show`: the trust bundle, as PEM or as a SPIFFE bundle (JWKS).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use ringzero_policy::svid::pem_encode;
use ringzero_proto::pb;

use super::session::{call_failed, runtime, session};
use crate::cli::GlobalArgs;
use crate::failure::Outcome;

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
        BundleFormat::Jwks => println!(
            "{}",
            ringzero_proto::jwks::bundle_document(&bundle, |k| s.profile.is_compromised(k))
        ),
    }
    Ok(ExitCode::SUCCESS)
}
