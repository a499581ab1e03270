//! Startup: the credentials stored at enrollment, or enrollment now.

use ringzero_policy::SpiffeId;
use rustls_pki_types::CertificateDer;
use tracing::info;

use super::AgentConfig;
use crate::enroll::enroll;
use crate::error::AgentError;
use crate::state::{DataDir, NodeCredentials, node_name_of};

/// The node's name, credentials and authority addresses: the stored ones (with
/// `config.authorities` in place of the stored addresses when given), or enrolled now with
/// `config.join`.
pub(super) async fn load_or_enroll(
    dir: &DataDir,
    config: &AgentConfig,
) -> Result<(String, NodeCredentials, Vec<String>), AgentError> {
    Ok(match dir.load_credentials()? {
        Some((creds, stored)) => {
            if config.join.is_some() {
                info!(
                    data_dir = %dir.path().display(),
                    "already enrolled: the join token is not used"
                );
            }
            let addrs = if config.authorities.is_empty() {
                stored
            } else {
                config.authorities.clone()
            };
            let node = creds
                .chain
                .first()
                .and_then(leaf_id)
                .as_ref()
                .and_then(node_name_of)
                .ok_or_else(|| {
                    AgentError::Corrupt(format!(
                        "{}: the stored SVID is not a node SVID",
                        dir.credentials_path().display()
                    ))
                })?;
            (node, creds, addrs)
        }
        None => {
            let Some(contact) = &config.join else {
                return Err(AgentError::NotEnrolled(dir.path().display().to_string()));
            };
            if config.authorities.is_empty() {
                return Err(AgentError::Config(
                    "no authority address (--authority ADDR[,ADDR…])".into(),
                ));
            }
            let enrolled = enroll(&config.authorities, contact).await?;
            dir.save_credentials(&enrolled.creds, &config.authorities)?;
            (enrolled.node, enrolled.creds, config.authorities.clone())
        }
    })
}

fn leaf_id(leaf: &CertificateDer<'_>) -> Option<SpiffeId> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    let san = cert.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => SpiffeId::parse(u).ok(),
        _ => None,
    })
}
