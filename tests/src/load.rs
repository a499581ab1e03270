//! Load for tests that change something under traffic (a key rotation, a failover): an
//! operation repeated every 20 ms until told to stop, its successes counted and every failure
//! kept with what it was.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A running loop of [`repeat`].
#[derive(Debug)]
pub struct Repeated(tokio::task::JoinHandle<(u64, Vec<String>)>);

impl Repeated {
    /// Waits for the loop (after `stop` was set): its successes and its failures.
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.0.await.expect("the load loop panicked")
    }
}

/// Runs `op` every 20 ms until `stop` is set; a failure is kept as `"{what}: {error}"`.
pub fn repeat<F, Fut, T>(stop: Arc<AtomicBool>, what: &'static str, mut op: F) -> Repeated
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>> + Send,
    T: Send,
{
    Repeated(tokio::spawn(async move {
        let (mut ok, mut failures) = (0u64, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match op().await {
                Ok(_) => ok += 1,
                Err(e) => failures.push(format!("{what}: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, failures)
    }))
}

/// `ListEntries` through `client`, as [`repeat`]'s operation: an authorized call with the
/// client's capability.
pub fn list_entries(
    client: ringzero_proto::client::AuthorityClient,
) -> impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + 'static
{
    let client = Arc::new(tokio::sync::Mutex::new(client));
    move || {
        let client = Arc::clone(&client);
        Box::pin(async move {
            let mut c = client.lock().await;
            c.call(|mut g| async move {
                g.list_entries(ringzero_proto::pb::ListEntriesRequest::default())
                    .await
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
    }
}
