//! `ringzero keygen`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ringzero_policy::token::{RootKey, RootKeyId};

use crate::failure::{Outcome, failed};
use crate::input::write_file;

/// The `keygen` help's closing text.
pub(crate) const HELP: &str = "\
Examples:
  ringzero keygen --out root.key            # writes root.key (0600) and root.key.pub
  ringzero keygen --out root2.key --id 2    # a second key, for rotation";

#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the private key (mode 0600); the public key goes to FILE.pub.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// The root key id tokens will carry, so verifiers can pick the key (rotation).
    #[arg(long, default_value_t = 1)]
    pub(crate) id: u32,
    /// Overwrite existing files.
    #[arg(long)]
    pub(crate) force: bool,
}

pub(crate) fn run(a: KeygenArgs) -> Outcome {
    let key = RootKey::generate(RootKeyId(a.id));
    let mut public_path = a.out.clone().into_os_string();
    public_path.push(".pub");
    let public_path = PathBuf::from(public_path);
    write_file(
        &a.out,
        super::keyfile::private_text(&key).as_bytes(),
        0o600,
        a.force,
    )
    .map_err(failed)?;
    write_file(
        &public_path,
        super::keyfile::public_text(&key.public()).as_bytes(),
        0o644,
        a.force,
    )
    .map_err(failed)?;
    eprintln!(
        "wrote root key {} to {} (mode 0600) and its public half to {}",
        a.id,
        a.out.display(),
        public_path.display()
    );
    eprintln!(
        "mint with: ringzero token mint --root-key {} --subject SPIFFE_ID --operation OP",
        a.out.display()
    );
    println!("{}", key.public().to_text());
    Ok(ExitCode::SUCCESS)
}
