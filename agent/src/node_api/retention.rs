//! Logs outlive their task. Each allocation the feed lists has its job recorded in
//! `<data_dir>/node-api/<alloc>` (so its logs stay readable, and gated by the right job, after it
//! left the node); an allocation's directory under `<data_dir>/tasks` is deleted once it is
//! neither listed nor recorded by the supervisor (`task.json`) and nothing in it changed for
//! the retention period, and the oldest such directories go first while they exceed the size
//! cap. The supervisor itself never deletes logs. A recorded job whose allocation never got a
//! task directory is forgotten after the same period.
//!
//! Exec recordings (`<data_dir>/sessions/*.cast`) are evidence an investigation may need long
//! after the session: they are kept [`RECORDINGS.max_age`](RECORDINGS) (30 days), and the oldest
//! go first while all of them exceed [`RECORDINGS.max_bytes`](RECORDINGS) (4 GiB). A live
//! session's recording is the newest file, so it is the last to go.

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

/// How exec recordings are kept.
pub(crate) const RECORDINGS: Retention = Retention {
    max_age: Duration::from_secs(30 * 24 * 3600),
    max_bytes: 4 << 30,
    every: Duration::from_secs(300),
};

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
    // What was recorded for an allocation that never got a task directory (placed, then
    // stopped before it ran) goes once it is past retention.
    if let Ok(entries) = std::fs::read_dir(meta_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > r.max_age);
            if old && !listed.contains(&name) && !tasks_dir.join(&name).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    deleted
}

/// One pass over the exec recordings: deletes those past `r.max_age`, then the oldest while
/// the rest exceed `r.max_bytes`; returns how many went.
pub(crate) fn sweep_recordings(dir: &Path, r: Retention, now: SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "cast"))
        .filter_map(|e| {
            let m = e.metadata().ok().filter(std::fs::Metadata::is_file)?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    files.sort();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    let mut deleted = 0;
    for (modified, bytes, path) in files {
        let old = now.duration_since(modified).unwrap_or_default() > r.max_age;
        if !old && total <= r.max_bytes {
            break;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                total = total.saturating_sub(bytes);
                deleted += 1;
            }
            Err(e) => warn!(file = %path.display(), error = %e, "could not delete a recording"),
        }
    }
    deleted
}

/// Records each listed allocation's job, and sweeps every `r.every`.
pub(crate) async fn retention_task(
    tasks_dir: PathBuf,
    meta_dir: PathBuf,
    sessions_dir: PathBuf,
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
        let (t, m, s) = (tasks_dir.clone(), meta_dir.clone(), sessions_dir.clone());
        let (deleted, recordings) = tokio::task::spawn_blocking(move || {
            let now = SystemTime::now();
            (
                sweep(&t, &m, &listed, r, now),
                sweep_recordings(&s, RECORDINGS, now),
            )
        })
        .await
        .unwrap_or_default();
        if !deleted.is_empty() {
            info!(allocs = %deleted.join(","), "expired task logs deleted");
        }
        if recordings > 0 {
            info!(recordings, "expired exec recordings deleted");
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

    #[test]
    fn a_recorded_job_without_logs_is_forgotten_after_retention() {
        let root = std::env::temp_dir().join(format!("rz-ret-meta-{}", std::process::id()));
        let (tasks, meta) = (root.join("tasks"), root.join("meta"));
        std::fs::create_dir_all(&tasks).unwrap();
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(meta.join("neverran"), "ns/job").unwrap();
        std::fs::write(meta.join("listed"), "ns/job").unwrap();
        let listed = ["listed".to_owned()].into();
        let r = Retention::default();
        sweep(&tasks, &meta, &listed, r, SystemTime::now());
        assert!(
            recorded_job(&meta, "neverran").is_some(),
            "kept within retention"
        );
        let later = SystemTime::now() + r.max_age + Duration::from_secs(60);
        sweep(&tasks, &meta, &listed, r, later);
        assert!(recorded_job(&meta, "neverran").is_none());
        assert!(
            recorded_job(&meta, "listed").is_some(),
            "a listed allocation's job stays"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn recordings_go_by_age_then_oldest_first_over_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, age_s: u64| {
            let p = dir.path().join(name);
            std::fs::write(&p, vec![b'x'; 100]).unwrap();
            let t = SystemTime::now() - Duration::from_secs(age_s);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        };
        write("a.cast", 300);
        write("b.cast", 200);
        write("c.cast", 100);
        write("notes.txt", 400);
        let r = Retention {
            max_age: Duration::from_secs(3600),
            max_bytes: 250,
            every: Duration::from_secs(1),
        };
        // 300 bytes > 250: the oldest recording goes; other files are left alone.
        assert_eq!(sweep_recordings(dir.path(), r, SystemTime::now()), 1);
        assert!(!dir.path().join("a.cast").exists());
        assert!(dir.path().join("b.cast").exists() && dir.path().join("notes.txt").exists());
        // Past the age, every recording goes.
        let later = SystemTime::now() + Duration::from_secs(7200);
        assert_eq!(sweep_recordings(dir.path(), r, later), 2);
        assert!(dir.path().join("notes.txt").exists());
    }
}
