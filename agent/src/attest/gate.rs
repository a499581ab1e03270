//! Bounded blocking work, fair between uids.
//!
//! Attestation reads `/proc` and, for `unix:path` and `unix:sha256`, the caller's executable.
//! Those reads block a thread, and a read from an executable on a slow or hostile filesystem
//! (a FUSE server that never answers, a hung network mount) may block it for good. A [`Gate`]
//! runs such jobs on tokio's blocking pool with at most `per_uid` jobs of one uid and `global`
//! jobs in all in flight, so that one local user can hold at most `per_uid` threads however
//! many connections it opens, and the agent's thread count stays bounded.
//!
//! The permits travel with the job: a caller that stops waiting (its attestation timed out)
//! does not give its uid's slot back; the job does, when it really ends.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Past this many idle uids in the map, idle ones are dropped on the next acquisition.
const IDLE_UIDS: usize = 1024;

/// Why a gated job produced no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum GateError {
    /// The job panicked or the runtime is shutting down.
    #[error("the attestation job did not finish")]
    Interrupted,
}

/// Runs blocking jobs, at most `per_uid` of one uid and `global` in all at once.
pub(crate) struct Gate {
    global: Arc<Semaphore>,
    per_uid: usize,
    uids: Arc<Mutex<HashMap<u32, Arc<Semaphore>>>>,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("global_available", &self.global.available_permits())
            .field("per_uid", &self.per_uid)
            .finish_non_exhaustive()
    }
}

/// One uid's permit; forgets the uid's semaphore once nobody uses it.
struct UidPermit {
    uid: u32,
    permit: Option<OwnedSemaphorePermit>,
    sem: Arc<Semaphore>,
    uids: Arc<Mutex<HashMap<u32, Arc<Semaphore>>>>,
}

impl Drop for UidPermit {
    fn drop(&mut self) {
        drop(self.permit.take());
        if let Ok(mut map) = self.uids.lock() {
            // Clones are only taken under this lock: the map's and ours are the last two.
            if Arc::strong_count(&self.sem) <= 2
                && map
                    .get(&self.uid)
                    .is_some_and(|s| Arc::ptr_eq(s, &self.sem))
            {
                map.remove(&self.uid);
            }
        }
    }
}

/// A uid's slot and one of the gate's, held: dropping it gives them back.
pub(crate) struct Slot {
    _uid: UidPermit,
    _global: OwnedSemaphorePermit,
}

impl Slot {
    /// Runs `job` on the blocking pool, holding this slot until the job ends. Cancelling the
    /// returned future does not stop the job, nor give the slot back before it ends.
    pub(crate) async fn run<T: Send + 'static>(
        self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, GateError> {
        tokio::task::spawn_blocking(move || {
            let _held = self;
            job()
        })
        .await
        .map_err(|_| GateError::Interrupted)
    }
}

impl Gate {
    /// A gate letting `per_uid` jobs of one uid and `global` jobs in all run at once (each at
    /// least 1).
    pub(crate) fn new(per_uid: usize, global: usize) -> Self {
        Self {
            global: Arc::new(Semaphore::new(global.clamp(1, Semaphore::MAX_PERMITS))),
            per_uid: per_uid.clamp(1, Semaphore::MAX_PERMITS),
            uids: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Runs `job` on the blocking pool once `uid` and the gate have a free slot: [`Gate::slot`]
    /// then [`Slot::run`].
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        uid: u32,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, GateError> {
        self.slot(uid).await?.run(job).await
    }

    /// Waits (in FIFO order) for a free slot of `uid`, then for one of the gate's.
    pub(crate) async fn slot(&self, uid: u32) -> Result<Slot, GateError> {
        let sem = self.uid_semaphore(uid)?;
        let mut slot = UidPermit {
            uid,
            permit: None,
            sem: Arc::clone(&sem),
            uids: Arc::clone(&self.uids),
        };
        slot.permit = Some(
            sem.acquire_owned()
                .await
                .map_err(|_| GateError::Interrupted)?,
        );
        let global = Arc::clone(&self.global)
            .acquire_owned()
            .await
            .map_err(|_| GateError::Interrupted)?;
        Ok(Slot {
            _uid: slot,
            _global: global,
        })
    }

    /// Jobs of `uid` in flight now.
    #[cfg(test)]
    pub(crate) fn in_flight(&self, uid: u32) -> usize {
        self.uids
            .lock()
            .ok()
            .and_then(|m| m.get(&uid).map(|s| self.per_uid - s.available_permits()))
            .unwrap_or(0)
    }

    /// Jobs in flight in all.
    #[cfg(test)]
    pub(crate) fn total_in_flight(&self, global: usize) -> usize {
        global - self.global.available_permits()
    }

    fn uid_semaphore(&self, uid: u32) -> Result<Arc<Semaphore>, GateError> {
        let mut map = self.uids.lock().map_err(|_| GateError::Interrupted)?;
        if map.len() > IDLE_UIDS {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let sem = map
            .entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_uid)));
        Ok(Arc::clone(sem))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// A job of uid 1 stuck forever (a read from a FUSE server that never answers) holds only
    /// uid 1's slot, even after its caller gave up; uid 2 keeps being served; uid 1's next job
    /// waits until the stuck one really ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_job_holds_only_its_uids_slot_until_it_really_ends() {
        let gate = Arc::new(Gate::new(1, 2));
        let (release, stuck) = mpsc::channel::<()>();
        // The caller of the stuck job gives up (its attestation timed out): the job keeps
        // running, and keeps the slot.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(200),
            gate.run(1, move || {
                let _ = stuck.recv();
            }),
        )
        .await;
        assert!(gave_up.is_err());
        assert_eq!(gate.in_flight(1), 1);

        // Another uid is served at once.
        let other = tokio::time::timeout(Duration::from_secs(5), gate.run(2, || 2))
            .await
            .expect("uid 2 is not held back by uid 1")
            .unwrap();
        assert_eq!(other, 2);

        // uid 1 waits for its own slot.
        let waiting = tokio::time::timeout(Duration::from_millis(100), gate.run(1, || 1)).await;
        assert!(waiting.is_err(), "uid 1 has one job in flight at most");
        assert_eq!(gate.total_in_flight(2), 1);

        // Once the stuck job ends, uid 1 runs again and its semaphore is forgotten.
        release.send(()).unwrap();
        let again = tokio::time::timeout(Duration::from_secs(5), gate.run(1, || 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again, 1);
        // The released job's thread drops its permit as it ends, which on a loaded machine can
        // come a moment after uid 1's next job was served.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while gate.in_flight(1) != 0 || !gate.uids.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "uid 1's slot is never forgotten"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The global cap holds whatever the number of uids.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_global_cap_bounds_jobs_across_uids() {
        let gate = Arc::new(Gate::new(1, 2));
        let (release, stuck) = mpsc::channel::<()>();
        let stuck = Arc::new(Mutex::new(stuck));
        for uid in 0..2 {
            let g = Arc::clone(&gate);
            let s = Arc::clone(&stuck);
            tokio::spawn(async move {
                g.run(uid, move || {
                    let _ = s.lock().unwrap().recv();
                })
                .await
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(gate.total_in_flight(2), 2);
        let third = tokio::time::timeout(Duration::from_millis(100), gate.run(7, || ())).await;
        assert!(third.is_err(), "a third uid waits for a global slot");
        release.send(()).unwrap();
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), gate.run(7, || ()))
            .await
            .unwrap()
            .unwrap();
    }
}
