//! Logs outlive their task. Each allocation the feed lists has its job recorded in
//! `<data_dir>/node-api/<alloc>` (so its logs stay readable, and gated by the right job, after it
//! left the node); an allocation's directory under `<data_dir>/tasks` is deleted once it is
//! neither listed nor recorded by the supervisor (`task.json`) and nothing in it changed for
//! the retention period, and the oldest such directories go first while they exceed the size
//! cap. The supervisor itself never deletes logs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ringzero_proto::pb;
use tokio::sync::watch;
use tracing::{info, warn};

/// How logs are kept after their allocation left the node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    pub max_age: Duration,
    /// Total bytes of the logs of allocations no longer on the node.
    pub max_bytes: u64,
    pub every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: 1 << 30,
            every: Duration::from_secs(300),
        }
    }
}

/// The job recorded for `alloc`, if any.
pub(crate) fn recorded_job(meta_dir: &Path, alloc: &str) -> Option<(String, String)> {
    let text = std::fs::read_to_string(meta_dir.join(alloc)).ok()?;
    let (ns, job) = text.trim().split_once('/')?;
    Some((ns.to_owned(), job.to_owned()))
}

fn record(meta_dir: &Path, a: &pb::NodeAlloc) {
    let path = meta_dir.join(&a.id);
    if path.exists() {
        return;
    }
    if let Err(e) = std::fs::write(&path, format!("{}/{}", a.namespace, a.job)) {
        warn!(alloc = %a.id, error = %e, "could not record the allocation's job");
    }
}

/// A directory's size and the last time anything in it changed.
fn usage(dir: &Path) -> (u64, SystemTime) {
    let mut bytes = 0;
    let mut newest = SystemTime::UNIX_EPOCH;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(m) = e.metadata() {
                bytes += m.len();
                if let Ok(t) = m.modified() {
                    newest = newest.max(t);
                }
            }
        }
    }
    (bytes, newest)
}

/// One pass: deletes what is past retention; returns the directories deleted.
pub(crate) fn sweep(
    tasks_dir: &Path,
    meta_dir: &Path,
    listed: &std::collections::HashSet<String>,
    r: Retention,
    now: SystemTime,
) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(tasks_dir) else {
        return Vec::new();
    };
    let mut gone: Vec<(SystemTime, u64, String, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || listed.contains(&name) || path.join("task.json").exists() {
            continue;
        }
        let (bytes, newest) = usage(&path);
        gone.push((newest, bytes, name, path));
    }
    gone.sort();
    let mut total: u64 = gone.iter().map(|g| g.1).sum();
    let mut deleted = Vec::new();
    for (newest, bytes, name, path) in gone {
        let old = now.duration_since(newest).unwrap_or_default() > r.max_age;
        if old || total > r.max_bytes {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                warn!(dir = %path.display(), error = %e, "could not delete expired logs");
                continue;
            }
            let _ = std::fs::remove_file(meta_dir.join(&name));
            total = total.saturating_sub(bytes);
            deleted.push(name);
        }
    }
    deleted
}

/// Records each listed allocation's job, and sweeps every `r.every`.
pub(crate) async fn retention_task(
    tasks_dir: PathBuf,
    meta_dir: PathBuf,
    mut allocs: watch::Receiver<Option<Arc<pb::NodeAllocSet>>>,
    r: Retention,
) {
    if let Err(e) = std::fs::create_dir_all(&meta_dir) {
        warn!(error = %e, "node API: cannot create {}", meta_dir.display());
    }
    let mut tick = tokio::time::interval(r.every);
    loop {
        tokio::select! {
            changed = allocs.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let Some(set) = allocs.borrow_and_update().clone() else {
            continue;
        };
        let listed: std::collections::HashSet<String> =
            set.allocs.iter().map(|a| a.id.clone()).collect();
        for a in &set.allocs {
            record(&meta_dir, a);
        }
        let (t, m) = (tasks_dir.clone(), meta_dir.clone());
        let deleted =
            tokio::task::spawn_blocking(move || sweep(&t, &m, &listed, r, SystemTime::now()))
                .await
                .unwrap_or_default();
        if !deleted.is_empty() {
            info!(allocs = %deleted.join(","), "expired task logs deleted");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keeps_listed_and_running_allocations_and_deletes_old_or_oversized_logs() {
        let root = std::env::temp_dir().join(format!("rz-ret-{}", std::process::id()));
        let (tasks, meta) = (root.join("tasks"), root.join("meta"));
        for d in ["listed", "running", "stopped1", "stopped2"] {
            std::fs::create_dir_all(tasks.join(d)).unwrap();
            std::fs::write(tasks.join(d).join("stdout.log"), vec![b'x'; 100]).unwrap();
        }
        std::fs::write(tasks.join("running").join("task.json"), "{}").unwrap();
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(meta.join("stopped1"), "ns/job").unwrap();
        assert_eq!(
            recorded_job(&meta, "stopped1"),
            Some(("ns".into(), "job".into()))
        );
        let listed = ["listed".to_owned()].into();
        let r = Retention {
            max_age: Duration::from_secs(3600),
            max_bytes: 150,
            every: Duration::from_secs(1),
        };
        // Within age, over the cap (200 > 150): the oldest goes, one remains.
        let deleted = sweep(&tasks, &meta, &listed, r, SystemTime::now());
        assert_eq!(deleted.len(), 1, "{deleted:?}");
        // A day later every stopped allocation's logs are past retention.
        let later = SystemTime::now() + Duration::from_secs(7200);
        let mut all = deleted;
        all.extend(sweep(&tasks, &meta, &listed, r, later));
        all.sort();
        assert_eq!(all, ["stopped1", "stopped2"]);
        assert!(tasks.join("listed").exists() && tasks.join("running").exists());
        assert!(recorded_job(&meta, "stopped1").is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
