//! The root key file format written by `ringzero keygen`: TOML, private (0600) or public.

use std::path::Path;

use anyhow::{Context, Result, bail};
use ringzero_policy::token::{PublicRootKey, RootKey, RootKeyId};

const PRIVATE_KIND: &str = "ringzero-root-key";
const PUBLIC_KIND: &str = "ringzero-root-public-key";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    kind: String,
    root_key_id: u32,
    public_key: String,
    private_key: Option<String>,
}

pub(crate) fn private_text(key: &RootKey) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(format!(
        "# ringzero root key: anyone holding this file can mint any capability. Keep it secret.\n\
         kind = \"{PRIVATE_KIND}\"\n\
         root_key_id = {}\n\
         public_key = \"{}\"\n\
         private_key = \"{}\"\n",
        key.id(),
        key.public().to_text(),
        key.private_text().as_str()
    ))
}

pub(crate) fn public_text(key: &PublicRootKey) -> String {
    format!(
        "# ringzero root public key: verifies tokens minted with the matching root key.\n\
         kind = \"{PUBLIC_KIND}\"\n\
         root_key_id = {}\n\
         public_key = \"{}\"\n",
        key.id,
        key.to_text()
    )
}

fn parse(path: &Path) -> Result<KeyFile> {
    let text = crate::input::read_bounded(path)?;
    let file: KeyFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a ringzero key file", path.display()))?;
    if file.kind != PRIVATE_KIND && file.kind != PUBLIC_KIND {
        bail!("{}: unknown key file kind {:?}", path.display(), file.kind);
    }
    Ok(file)
}

/// Loads a private root key, checking it matches the public key recorded beside it.
pub(crate) fn load_private(path: &Path) -> Result<RootKey> {
    let file = parse(path)?;
    let private = file
        .private_key
        .filter(|_| file.kind == PRIVATE_KIND)
        .with_context(|| {
            format!(
                "{} holds only a public key; minting needs the private key file",
                path.display()
            )
        })?;
    let key = RootKey::from_private_text(RootKeyId(file.root_key_id), &private)
        .with_context(|| format!("{}: bad private key", path.display()))?;
    if key.public().to_text() != file.public_key.trim() {
        bail!("{}: private and public keys do not match", path.display());
    }
    Ok(key)
}

/// Loads the public half from a private or public key file.
pub(crate) fn load_public(path: &Path) -> Result<PublicRootKey> {
    let file = parse(path)?;
    PublicRootKey::from_text(RootKeyId(file.root_key_id), &file.public_key)
        .with_context(|| format!("{}: bad public key", path.display()))
}
