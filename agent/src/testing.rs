//! Helpers for tests and benches (feature `testing`): what the sync loop would put in the cache,
//! without an authority, and a Workload API server to stop at will.

use std::path::Path;
use std::time::Duration;

use ringzero_policy::SpiffeId;
use ringzero_policy::selector::Selector;
use ringzero_policy::svid::SigningCa;
use ringzero_policy::testing::SvidBuilder;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::attest::Attestor;
use crate::cache::{Identity, SvidCache};
use crate::workload::{Limits, ServeError, bind, serve_listener};

/// A fresh key and a one-hour SVID for `id` from `ca`, as the cache holds it: the identity of
/// entry `entry`, for workloads with all of `selectors`.
pub fn identity(ca: &SigningCa, entry: &str, id: SpiffeId, selectors: Vec<Selector>) -> Identity {
    let svid = SvidBuilder::new(ca, &id)
        .ttl(Duration::from_secs(3600))
        .issue();
    Identity {
        entry_id: entry.to_owned(),
        spiffe_id: id,
        selectors,
        key: Zeroizing::new(svid.key_pkcs8()),
        chain: svid.issued.chain,
        not_after: svid.issued.not_after,
        hint: String::new(),
        created_revision: 0,
    }
}

/// A Workload API server serving a cache on a socket, with the default attestor, until
/// [`Serving::stop`] (or until dropped, which begins its shutdown without waiting for it).
#[derive(Debug)]
pub struct Serving {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

/// Why a [`Serving`] server did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("the server did not stop within {0:?}")]
    Timeout(Duration),
    #[error("the server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the server failed: {0}")]
    Serve(#[from] ServeError),
}

impl Serving {
    /// Binds `socket` and serves `cache` on it with `limits`.
    pub async fn start(
        socket: &Path,
        cache: SvidCache,
        limits: Limits,
    ) -> Result<Self, ServeError> {
        let listener = bind(socket).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_listener(
            listener,
            cache,
            Attestor::new(),
            limits,
            None,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            stop: Some(stop),
            task,
        })
    }

    /// Shuts the server down and waits for it to end, at most `within`.
    pub async fn stop(mut self, within: Duration) -> Result<(), StopError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let joined = tokio::time::timeout(within, &mut self.task)
            .await
            .map_err(|_| StopError::Timeout(within))?;
        Ok(joined??)
    }
}
