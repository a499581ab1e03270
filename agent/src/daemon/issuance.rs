//! Workload SVIDs: each entry's issuance timer, and batched `MintSvids` calls whose keys never
//! leave this process.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use ringzero_policy::SpiffeId;
use ringzero_policy::selector::Selector;
use ringzero_policy::svid::{TrustBundle, Usage, csr_for, generate_key, validate_svid};
use ringzero_proto::pb;
use rustls_pki_types::CertificateDer;
use tokio::time::Instant;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::{Agent, COALESCE, MIN_REISSUE, MINT_BATCH, REFUSED_RETRY};
use crate::cache::Identity;
use crate::error::AgentError;
use crate::rotation::{Validity, random_jitter, renew_in};

impl Agent {
    pub(super) fn schedule(&mut self, id: &str, at: Instant) {
        self.unschedule(id);
        self.timers.insert((at, id.to_owned()));
        self.due.insert(id.to_owned(), at);
    }

    pub(super) fn unschedule(&mut self, id: &str) {
        if let Some(at) = self.due.remove(id) {
            self.timers.remove(&(at, id.to_owned()));
        }
    }

    /// Issues an SVID for every entry due now (and within [`COALESCE`]), in batches.
    pub(super) async fn issue_due(&mut self) -> Result<(), AgentError> {
        let horizon = Instant::now() + COALESCE;
        let due: Vec<String> = self
            .timers
            .iter()
            .take_while(|(t, _)| *t <= horizon)
            .map(|(_, id)| id.clone())
            .collect();
        for chunk in due.chunks(MINT_BATCH) {
            self.issue(chunk).await?;
        }
        Ok(())
    }

    async fn issue(&mut self, ids: &[String]) -> Result<(), AgentError> {
        let mut keys: HashMap<String, (rcgen::KeyPair, SpiffeId, Vec<Selector>, u64, u64)> =
            HashMap::new();
        let mut requests = Vec::with_capacity(ids.len());
        for id in ids {
            self.unschedule(id);
            let Some(held) = self.entries.get(id) else {
                continue;
            };
            let Some((spiffe_id, selectors)) = &held.parsed else {
                continue;
            };
            let key = match generate_key() {
                Ok(k) => k,
                Err(e) => {
                    warn!(error = %e, "key generation failed");
                    self.schedule(id, Instant::now() + REFUSED_RETRY);
                    continue;
                }
            };
            let csr = match csr_for(&key, spiffe_id) {
                Ok(c) => c,
                Err(e) => {
                    warn!(entry = %id, error = %e, "CSR failed");
                    self.schedule(id, Instant::now() + REFUSED_RETRY);
                    continue;
                }
            };
            requests.push(pb::SvidRequest {
                entry_id: id.clone(),
                csr,
            });
            keys.insert(
                id.clone(),
                (
                    key,
                    spiffe_id.clone(),
                    selectors.clone(),
                    held.entry.revision,
                    held.entry.created_revision,
                ),
            );
        }
        if requests.is_empty() {
            return Ok(());
        }
        let req = pb::MintSvidsRequest { requests };
        let n = req.requests.len();
        let reply = self
            .client
            .call(move |mut c| {
                let req = req.clone();
                async move { c.mint_svids(req).await }
            })
            .await;
        let reply = match reply {
            Ok(r) => {
                self.mint_backoff.reset();
                r
            }
            Err(e) => {
                let retry = self.mint_backoff.next();
                self.verdict(&e, "minting SVIDs", retry)?;
                let at = Instant::now() + retry;
                for id in keys.keys() {
                    self.schedule(id, at);
                }
                return Ok(());
            }
        };
        let bundle = TrustBundle::new(self.td.clone(), self.creds.bundle.clone())
            .map_err(|e| AgentError::Corrupt(format!("bundle: {e}")))?;
        let mut issued = 0usize;
        for minted in reply.svids {
            let Some((key, spiffe_id, selectors, revision, created_revision)) =
                keys.remove(&minted.entry_id)
            else {
                continue;
            };
            let id = minted.entry_id;
            if !minted.error.is_empty() {
                warn!(entry = %id, error = %minted.error, "the authority refused an SVID");
                self.servable.unservable(
                    &id,
                    revision,
                    &format!("the authority refused an SVID: {}", minted.error),
                );
                self.schedule(&id, Instant::now() + REFUSED_RETRY);
                continue;
            }
            if minted.revision != 0 && minted.revision < revision {
                // Issued for an older version of the entry: ask again.
                self.schedule(&id, Instant::now() + Duration::from_secs(1));
                continue;
            }
            let chain: Vec<CertificateDer<'static>> = minted
                .svid_chain
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            let checked = validate_svid(&chain, &bundle, SystemTime::now(), Usage::Client)
                .ok()
                .filter(|v| v.id == spiffe_id);
            let (Some(valid), Some(validity)) = (
                checked,
                chain
                    .first()
                    .and_then(|c| Validity::of(c, SystemTime::now())),
            ) else {
                warn!(entry = %id, "the authority sent an SVID that does not validate");
                self.servable.unservable(
                    &id,
                    revision,
                    "the authority sent an SVID that does not validate",
                );
                self.schedule(&id, Instant::now() + REFUSED_RETRY);
                continue;
            };
            self.cache.upsert(Identity {
                entry_id: id.clone(),
                spiffe_id: valid.id,
                selectors,
                chain,
                key: Zeroizing::new(key.serialize_der()),
                not_after: valid.not_after,
                hint: String::new(),
                created_revision,
            });
            self.servable.served(&id, revision);
            let wait = renew_in(validity, random_jitter(), SystemTime::now()).max(MIN_REISSUE);
            self.schedule(&id, Instant::now() + wait);
            issued += 1;
        }
        // Requests the authority did not answer.
        for id in keys.into_keys() {
            warn!(entry = %id, "no answer for this entry; retrying later");
            self.schedule(&id, Instant::now() + REFUSED_RETRY);
        }
        info!(requested = n, issued, "workload SVIDs issued");
        Ok(())
    }
}
