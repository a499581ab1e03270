//! The closed loop: each client calls back to back, one call at a time, for a warmup and then
//! the measured window; only calls completing inside the window count.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::summary::Summary;

/// The load shape: how long to warm up (calls made, not counted) and how long to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one client saw in the window.
#[derive(Debug, Default)]
struct Seen {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
}

/// Runs one closed-loop client per element of `clients` (each its own state, typically its own
/// connection): `call(client, index, i)` for its `i`-th call, which hands the client back with
/// `Ok(())` or the class of its failure. Calls completing inside the window, which opens after
/// `shape.warmup` and lasts `shape.duration`, are counted: a call that started during the
/// warmup counts with its whole latency, one still running when the window closes does not.
///
/// `sample` is called when the window opens and when it closes (CPU counters, for instance);
/// both samples are returned with the summary.
pub async fn closed_loop<C, F, Fut, P, S>(
    clients: Vec<C>,
    shape: Shape,
    call: F,
    mut sample: P,
) -> (Summary, S, S)
where
    C: Send + 'static,
    F: Fn(C, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = (C, Result<(), String>)> + Send + 'static,
    P: FnMut() -> S,
{
    let launched = Instant::now();
    let start = launched + shape.warmup;
    let end = start + shape.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        let call = call.clone();
        tasks.spawn(async move {
            let mut seen = Seen::default();
            let mut client = client;
            let mut i = 0u64;
            while Instant::now() < end {
                let began = Instant::now();
                let (back, outcome) = call(client, index, i).await;
                client = back;
                let done = Instant::now();
                i += 1;
                if done < start || done >= end {
                    continue;
                }
                match outcome {
                    Ok(()) => seen.latencies.push(done - began),
                    Err(class) => *seen.errors.entry(class).or_default() += 1,
                }
            }
            seen
        });
    }
    tokio::time::sleep_until(start).await;
    let before = sample();
    tokio::time::sleep_until(end).await;
    let after = sample();
    let mut all = Seen::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(seen) => {
                all.latencies.extend(seen.latencies);
                for (class, n) in seen.errors {
                    *all.errors.entry(class).or_default() += n;
                }
            }
            // A client task that panicked lost what it measured; say so rather than hide it.
            Err(_) => *all.errors.entry("client task failed".into()).or_default() += 1,
        }
    }
    (
        Summary::new(all.latencies, all.errors, shape.duration),
        before,
        after,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_only_calls_completing_in_the_window() {
        let shape = Shape {
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(500),
        };
        // Client 0 succeeds every 10 ms; client 1 fails every 50 ms.
        let (s, before, after) = closed_loop(
            vec![0u8, 1u8],
            shape,
            |c, index, _i| async move {
                if index == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    (c, Ok(()))
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    (c, Err("Unavailable".to_owned()))
                }
            },
            Instant::now,
        )
        .await;
        // The samples are taken when the timers fire: on a loaded machine the first one can
        // wake later than the second, so the sampled span may be a little short of the window.
        let window = after - before;
        assert!(
            window + Duration::from_millis(50) >= shape.duration && window < shape.duration * 2,
            "{window:?}"
        );
        assert_eq!(s.window, shape.duration);
        // At most one call per 10 ms fits in 500 ms; a loaded machine makes fewer.
        assert!((20..=50).contains(&s.calls), "{}", s.calls);
        assert!(
            s.p50 >= Duration::from_millis(10) && s.p50 <= s.p99,
            "{s:?}"
        );
        assert!(s.p99 <= s.p999 && s.p999 <= s.max, "{s:?}");
        let failed = s.errors.get("Unavailable").copied().unwrap_or(0);
        assert!((4..=10).contains(&failed), "{failed}");
        assert_eq!(s.error_count(), failed);
    }
}
