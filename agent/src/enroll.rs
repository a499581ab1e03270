//! First contact: check the authority against the join token's pin (or a given bundle) before
//! the secret leaves this process, then redeem the token with a CSR for a key generated here.

use std::time::SystemTime;

use ringzero_policy::SpiffeId;
use ringzero_policy::svid::{TrustBundle, Usage, csr_for, generate_key, validate_svid};
use ringzero_proto::client::{
    ClientError, FirstContact, FirstTrust, bundle_cas, first_contact_bundle, redeem_join_token,
};
use rustls_pki_types::CertificateDer;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::error::AgentError;
use crate::state::{NodeCredentials, node_name_of};

/// A node that just enrolled.
#[derive(Debug)]
pub(crate) struct Enrolled {
    pub(crate) node: String,
    pub(crate) creds: NodeCredentials,
}

/// Enrolls at the first of `addrs` that answers.
pub(crate) async fn enroll(
    addrs: &[String],
    contact: &FirstContact,
) -> Result<Enrolled, AgentError> {
    let mut last = AgentError::Config("no authority address".into());
    for addr in addrs {
        match enroll_at(addr, contact).await {
            Ok(e) => return Ok(e),
            // Only an unreachable address is worth trying the next one: a refusal is final.
            Err(Failure::Unreachable(e)) => {
                warn!(%addr, error = %e, "authority unreachable for enrollment");
                last = AgentError::Enroll(format!("{addr}: {e}"));
            }
            Err(Failure::Final(e)) => return Err(e),
        }
    }
    Err(last)
}

enum Failure {
    Unreachable(String),
    Final(AgentError),
}

fn fin(m: impl Into<String>) -> Failure {
    Failure::Final(AgentError::Enroll(m.into()))
}

async fn enroll_at(addr: &str, contact: &FirstContact) -> Result<Enrolled, Failure> {
    // 1. Learn the bundle, and check it, before anything secret is sent.
    let trust = contact.trust();
    if let FirstTrust::Insecure = trust {
        warn!(%addr, "--insecure-skip-pin: sending the join secret to an unverified authority");
    }
    let (_, bundle) = first_contact_bundle(addr, trust)
        .await
        .map_err(|e| match e {
            ClientError::PinMismatch(_) => fin(format!(
                "the trust bundle of the authority at {addr} does not match the join token's \
                 pin: refusing to send the secret (wrong address, wrong cluster, or someone \
                 in the middle)"
            )),
            ClientError::Profile(m) => fin(format!("the authority's bundle is unusable: {m}")),
            other => Failure::Unreachable(other.to_string()),
        })?;
    let td = bundle.trust_domain().clone();

    // 2. Redeem over TLS authenticated by that bundle, with a CSR for a key made here. The
    //    authority names the node (the name is fixed when the token is issued); the CSR
    //    contributes only its public key.
    let key = generate_key().map_err(|e| fin(e.to_string()))?;
    let placeholder = SpiffeId::parse(&format!("spiffe://{td}/ringzero/node/joining"))
        .map_err(|e| fin(e.to_string()))?;
    let csr = csr_for(&key, &placeholder).map_err(|e| fin(e.to_string()))?;
    let reply = redeem_join_token(addr, &bundle, contact.token(), &csr)
        .await
        .map_err(|e| match e {
            ringzero_proto::client::ClientError::Transport(t) => Failure::Unreachable(t),
            other => fin(format!("the authority refused the join token: {other}")),
        })?;
    if reply.node_id != 0 || reply.token.is_empty() {
        return Err(fin(
            "this is not an agent join token (authority nodes join with `ringzero authority join`)",
        ));
    }
    let cas = reply
        .bundle
        .as_ref()
        .map(bundle_cas)
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| bundle.roots().to_vec());
    let chain: Vec<CertificateDer<'static>> = reply
        .svid_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let bundle = TrustBundle::new(td.clone(), cas.clone())
        .map_err(|e| fin(format!("the authority's bundle is unusable: {e}")))?;
    let valid = validate_svid(&chain, &bundle, SystemTime::now(), Usage::Client).map_err(|e| {
        fin(format!(
            "the node SVID the authority sent does not validate: {e}"
        ))
    })?;
    let node = node_name_of(&valid.id).ok_or_else(|| {
        fin(format!(
            "the authority issued {} instead of a node SVID",
            valid.id
        ))
    })?;
    info!(%node, spiffe_id = %valid.id, "enrolled");
    Ok(Enrolled {
        node,
        creds: NodeCredentials {
            trust_domain: td,
            bundle: cas,
            chain,
            key: Zeroizing::new(key.serialize_der()),
            token: Zeroizing::new(reply.token),
        },
    })
}
