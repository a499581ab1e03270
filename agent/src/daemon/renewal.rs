//! The node SVID: renewed at half-life (± 10 %) with a fresh key through `RenewNode`; the new
//! key, SVID, token and bundle replace the old ones in one atomic write.

use std::time::SystemTime;

use ringzero_policy::svid::{TrustBundle, Usage, csr_for, generate_key, validate_svid};
use ringzero_proto::client::bundle_cas;
use ringzero_proto::pb;
use rustls_pki_types::CertificateDer;
use tokio::time::Instant;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::Agent;
use crate::error::AgentError;
use crate::rotation::{Validity, random_jitter, renew_in};
use crate::state::NodeCredentials;

impl Agent {
    pub(super) fn schedule_node_renewal(&mut self) {
        let wait = renew_in(self.node_validity, random_jitter(), SystemTime::now());
        self.node_renew_at = Instant::now() + wait;
        info!(node = %self.node, renew_in = ?wait, "node SVID renewal scheduled");
    }

    pub(super) async fn renew_node(&mut self) -> Result<(), AgentError> {
        if self.node_validity.expired_at(SystemTime::now()) {
            return Err(AgentError::Expired(self.hint.clone()));
        }
        let key = generate_key().map_err(|e| AgentError::Corrupt(e.to_string()))?;
        let csr = csr_for(&key, &self.node_id).map_err(|e| AgentError::Corrupt(e.to_string()))?;
        let reply = self
            .client
            .call(move |mut c| {
                let csr = csr.clone();
                async move { c.renew_node(pb::RenewNodeRequest { csr }).await }
            })
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                let retry = self.node_backoff.next();
                self.verdict(&e, "renewing the node SVID", retry)?;
                self.node_renew_at = Instant::now() + retry;
                return Ok(());
            }
        };
        let cas = reply
            .bundle
            .as_ref()
            .map(bundle_cas)
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| self.creds.bundle.clone());
        let chain: Vec<CertificateDer<'static>> = reply
            .svid_chain
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let checked = TrustBundle::new(self.td.clone(), cas.clone())
            .ok()
            .and_then(|b| validate_svid(&chain, &b, SystemTime::now(), Usage::Client).ok())
            .filter(|v| v.id == self.node_id);
        let (Some(_), Some(validity)) = (
            checked,
            chain
                .first()
                .and_then(|c| Validity::of(c, SystemTime::now())),
        ) else {
            let retry = self.node_backoff.next();
            warn!(retry_in = ?retry, "the renewed node SVID does not validate; retrying");
            self.node_renew_at = Instant::now() + retry;
            return Ok(());
        };
        self.node_backoff.reset();
        let token = if reply.token.is_empty() {
            self.creds.token.clone()
        } else {
            Zeroizing::new(reply.token)
        };
        let creds = NodeCredentials {
            trust_domain: self.td.clone(),
            bundle: cas,
            chain,
            key: Zeroizing::new(key.serialize_der()),
            token,
        };
        // Persisted before use: a crash now restarts with the new credentials.
        self.dir.save_credentials(&creds, &self.addrs)?;
        self.cache.set_bundle(self.td.clone(), creds.bundle.clone());
        self.creds = creds;
        self.node_validity = validity;
        self.refresh_clients();
        info!(node = %self.node, "node SVID renewed");
        self.schedule_node_renewal();
        Ok(())
    }
}
