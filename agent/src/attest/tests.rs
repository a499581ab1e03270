//! Attestation of real processes: this one, copies of `sleep`, and processes in other mount
//! namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

#[test]
fn start_time_survives_hostile_comm() {
    let rest = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21";
    assert_eq!(
        parse_start_time(&format!("42 (a) b) c) {rest}")),
        Some(987654)
    );
    assert_eq!(parse_start_time(&format!("42 (x) {rest}")), Some(987654));
    assert_eq!(parse_start_time("42 (x) S 1 2"), None);
    assert_eq!(parse_start_time("garbage"), None);
}

#[test]
fn names_from_passwd_format() {
    let db = "# comment\nroot:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/a:/bin/sh\n\
              bad\n:x:7:7\n";
    assert_eq!(find_name(db, 0).as_deref(), Some("root"));
    assert_eq!(find_name(db, 1000).as_deref(), Some("alice"));
    assert_eq!(find_name(db, 7), None);
    assert_eq!(find_name(db, 5), None);
}

fn sha256_of(path: &std::path::Path) -> [u8; 32] {
    let hash = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(path).unwrap());
    hash.as_ref().try_into().unwrap()
}

fn path_sel(p: &std::path::Path) -> Selector {
    Selector::new(SelectorKind::UnixPath, p.to_str().unwrap()).unwrap()
}

fn me(attestor: &Attestor) -> Arc<Attestation> {
    let pid = i32::try_from(std::process::id()).unwrap();
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    Arc::new(attestor.attest_process(pid, uid, gid).unwrap())
}

/// A copy of `sleep` with `extra` bytes appended (the ELF loader ignores them), so that a
/// test can rewrite them and still run it.
fn sleeper(dir: &std::path::Path, name: &str, extra: &[u8]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let mut bytes = std::fs::read("/bin/sleep").unwrap();
    bytes.extend_from_slice(extra);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

struct Running(std::process::Child);

impl Running {
    fn start(cmd: &mut std::process::Command) -> Self {
        let child = cmd.spawn().unwrap();
        // Until it has exec'd, /proc/<pid>/exe is the test binary.
        std::thread::sleep(std::time::Duration::from_millis(100));
        Self(child)
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attests_and_verifies_this_process() {
    let attestor = Attestor::new();
    let a = me(&attestor);
    a.verify().unwrap();
    let uid = Selector::uid(a.uid());
    assert!(a.selectors().contains(&uid));
    let exe = std::env::current_exe().unwrap();
    let path = path_sel(&exe);
    let hash = Selector::sha256(&sha256_of(&exe));
    // Path and hash are established only when some entry needs them.
    assert!(a.pending([std::slice::from_ref(&uid)]).is_none());
    attestor
        .resolve(&a, &[std::slice::from_ref(&uid)])
        .await
        .unwrap();
    assert!(!a.selectors().contains(&path));
    assert_eq!(attestor.digests.cached(), 0, "nothing asked for a hash");

    let by_path = [uid.clone(), path.clone()];
    let by_hash = [uid.clone(), hash.clone()];
    attestor.resolve(&a, &[&by_path, &by_hash]).await.unwrap();
    assert!(a.selectors().contains(&path), "{:?}", a.selectors());
    assert!(a.selectors().contains(&hash), "{:?}", a.selectors());
    assert_eq!(attestor.digests.cached(), 1);
    // A second connection of the same binary gets the hash from the cache.
    let b = me(&attestor);
    attestor.resolve(&b, &[&by_hash]).await.unwrap();
    assert!(b.selectors().contains(&hash));
    assert_eq!(attestor.digests.cached(), 1);

    let small = Attestor::with_max_hashed_len(1);
    let c = me(&small);
    small.resolve(&c, &[&by_hash]).await.unwrap();
    assert!(
        !c.selectors()
            .iter()
            .any(|s| s.kind() == SelectorKind::UnixSha256)
    );
}

/// The hash is computed only for an entry whose other selectors already match the caller.
#[test]
fn only_entries_that_could_match_call_for_a_hash_or_a_path_check() {
    let attestor = Attestor::new();
    let a = me(&attestor);
    let mine = Selector::uid(a.uid());
    let theirs = Selector::uid(a.uid().wrapping_add(1));
    let h1 = Selector::sha256(&[1; 32]);
    let h2 = Selector::sha256(&[2; 32]);
    let exe = path_sel(&std::env::current_exe().unwrap());
    let elsewhere = path_sel(std::path::Path::new("/nonexistent/bin"));
    let p = |entries: &[&[Selector]]| a.pending(entries.iter().copied());
    assert!(p(&[&[theirs.clone(), h1.clone()]]).is_none());
    assert!(p(&[&[h1.clone(), h2.clone(), mine.clone()]]).is_none());
    assert!(p(&[&[mine.clone(), elsewhere.clone(), h1.clone()]]).is_none());
    assert!(p(&[&[theirs.clone(), exe.clone()]]).is_none());
    assert!(p(&[&[]]).is_none());
    assert_eq!(
        p(&[&[theirs.clone(), h1.clone()], &[mine.clone(), h1.clone()]]),
        Pending {
            path: false,
            sha256: true
        }
    );
    assert_eq!(
        p(&[&[mine.clone(), exe.clone(), h2.clone()]]),
        Pending {
            path: true,
            sha256: true
        }
    );
    // A path that turned out not to be the executable rules out its entries.
    a.path_ok.set(false).unwrap();
    assert!(p(&[&[mine, exe, h2]]).is_none());
}

/// The attack: the owner of an executable rewrites six bytes in place (same size) and
/// restores its mtime. The hash attested is the new content's, not the cached one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_executable_with_its_mtime_restored_is_hashed_again() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let tool = sleeper(dir.path(), "tool", &[b'A'; 64]);
    let original = sha256_of(&tool);
    let attestor = Attestor::new();
    let attest = |pid: i32| {
        let uid = rustix::process::getuid().as_raw();
        Arc::new(attestor.attest_process(pid, uid, 0).unwrap())
    };
    let wanted = [Selector::sha256(&original)];

    let first = Running::start(std::process::Command::new(&tool).arg("30"));
    let a = attest(first.pid());
    attestor.resolve(&a, &[&wanted]).await.unwrap();
    assert!(a.selectors().contains(&wanted[0]));
    assert_eq!(attestor.digests.cached(), 1);
    drop(first);

    let mtime = std::fs::metadata(&tool).unwrap().modified().unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&tool).unwrap();
    let len = f.metadata().unwrap().len();
    f.seek(SeekFrom::Start(len - 10)).unwrap();
    f.write_all(b"EVIL!!").unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(&tool).unwrap().modified().unwrap(), mtime);
    assert_eq!(std::fs::metadata(&tool).unwrap().len(), len);

    let second = Running::start(std::process::Command::new(&tool).arg("30"));
    let b = attest(second.pid());
    attestor.resolve(&b, &[&wanted]).await.unwrap();
    assert!(!b.selectors().contains(&wanted[0]), "{:?}", b.selectors());
    // It was hashed again, as what it is now.
    let now = [Selector::sha256(&sha256_of(&tool))];
    attestor.resolve(&b, &[&now]).await.unwrap();
    assert!(b.selectors().contains(&now[0]));
}

/// A uid whose executable-read slot is taken by a read that never ends cannot make another
/// uid wait for the hash of a binary both run (it is not the one hashing until it holds
/// its slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_uid_cannot_hold_back_another_uids_hash_of_a_shared_binary() {
    use std::time::Duration;
    let attestor = Attestor::new();
    let pid = i32::try_from(std::process::id()).unwrap();
    let hash = Selector::sha256(&sha256_of(&std::env::current_exe().unwrap()));
    let (release, stuck) = std::sync::mpsc::channel::<()>();
    let gate = Arc::clone(&attestor.exe_reads);
    let stuck_job = tokio::spawn(async move {
        gate.run(4242, move || {
            let _ = stuck.recv();
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mallory = Arc::new(attestor.attest_process(pid, 4242, 4242).unwrap());
    let (a, m, h) = (attestor.clone(), Arc::clone(&mallory), hash.clone());
    let mallorys = tokio::spawn(async move { a.resolve(&m, &[&[h][..]]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let legit = Arc::new(attestor.attest_process(pid, 1000, 1000).unwrap());
    tokio::time::timeout(
        Duration::from_secs(20),
        attestor.resolve(&legit, &[std::slice::from_ref(&hash)]),
    )
    .await
    .expect("another uid is not held back")
    .unwrap();
    assert!(legit.selectors().contains(&hash));
    assert!(!mallorys.is_finished(), "mallory waits for her own slot");

    release.send(()).unwrap();
    stuck_job.await.unwrap().unwrap();
    mallorys.await.unwrap().unwrap();
    assert!(mallory.selectors().contains(&hash));
}

/// What `unix:sha256` relies on (`ETXTBSY`): while a process runs an executable, nobody
/// (root included) can open it for writing, so its content cannot change under the hash.
#[test]
fn a_running_executable_cannot_be_opened_for_writing() {
    let dir = tempfile::tempdir().unwrap();
    let tool = sleeper(dir.path(), "tool", b"");
    let run = Running::start(std::process::Command::new(&tool).arg("30"));
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(&tool)
        .expect_err("a running executable must not open for writing");
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::TXTBSY.raw_os_error())
    );
    drop(run);
}

/// `unix:path` holds only if the path, in the agent's namespace, is the running file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_is_granted_only_while_it_names_the_running_file() {
    let dir = tempfile::tempdir().unwrap();
    let tool = sleeper(dir.path(), "tool", b"");
    let attestor = Attestor::new();
    let uid = rustix::process::getuid().as_raw();
    let wanted = [path_sel(&tool)];

    let run = Running::start(std::process::Command::new(&tool).arg("30"));
    let a = Arc::new(attestor.attest_process(run.pid(), uid, 0).unwrap());
    attestor.resolve(&a, &[&wanted]).await.unwrap();
    assert!(a.selectors().contains(&wanted[0]));

    // Another file renamed over the path: the running process is no longer "the file at
    // that path".
    let other = sleeper(dir.path(), "other", b"x");
    let b = Arc::new(attestor.attest_process(run.pid(), uid, 0).unwrap());
    std::fs::rename(&other, &tool).unwrap();
    attestor.resolve(&b, &[&wanted]).await.unwrap();
    assert!(!b.selectors().contains(&wanted[0]), "{:?}", b.selectors());
}

/// A process in another mount namespace never gets a path selector, even for a path that
/// is the same file in the agent's namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_in_another_mount_namespace_gets_no_path() {
    let dir = tempfile::tempdir().unwrap();
    let tool = sleeper(dir.path(), "tool", b"");
    let mut cmd = std::process::Command::new("unshare");
    if rustix::process::getuid().as_raw() != 0 {
        cmd.arg("--map-root-user");
    }
    cmd.args(["--mount", "--"]).arg(&tool).arg("30");
    let probe = std::process::Command::new("unshare")
        .args(if rustix::process::getuid().as_raw() == 0 {
            &["--mount", "true"][..]
        } else {
            &["--map-root-user", "--mount", "true"][..]
        })
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED a_process_in_another_mount_namespace_gets_no_path: no unshare");
        return;
    }
    let run = Running::start(&mut cmd);
    let attestor = Attestor::new();
    let uid = rustix::process::getuid().as_raw();
    let a = Arc::new(attestor.attest_process(run.pid(), uid, 0).unwrap());
    assert!(a.exe_path.is_none());
    let wanted = [path_sel(&tool)];
    assert!(a.pending([&wanted[..]]).is_none());
    // The namespace is checked again at the moment of the path check.
    let own = attestor.own_mnt_ns;
    let same_file_elsewhere = Attestation {
        exe_path: Some(wanted[0].clone()),
        path_ok: OnceLock::new(),
        digest: OnceLock::new(),
        shared: std::sync::Mutex::new(None),
        base: Vec::new(),
        task: None,
        pidfd: a.pidfd.try_clone().unwrap(),
        proc_dir: a.proc_dir.try_clone().unwrap(),
        ..*a
    };
    assert!(!same_file_elsewhere.path_is_exe(own).unwrap());
    // Control: the same binary in the agent's namespace.
    let here = Running::start(std::process::Command::new(&tool).arg("30"));
    let b = Arc::new(attestor.attest_process(here.pid(), uid, 0).unwrap());
    attestor.resolve(&b, &[&wanted]).await.unwrap();
    assert!(b.selectors().contains(&wanted[0]));
}

/// A `sleep 30` child and its attestation.
fn attested_sleeper() -> (std::process::Child, i32, Attestation) {
    let child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let a = Attestor::new().attest_process(pid, 0, 0).unwrap();
    (child, pid, a)
}

#[test]
fn a_dead_process_fails_verification() {
    let (mut child, pid, a) = attested_sleeper();
    a.verify().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(matches!(a.verify(), Err(AttestError::ProcessGone)));
    assert!(matches!(
        Attestor::new().attest_process(pid, 0, 0),
        Err(AttestError::ProcessGone)
    ));
}

/// A verification for one snapshot serves the connection's other streams for that snapshot,
/// for at most [`SHARED_VERIFICATION`]; another snapshot, or a later moment, verifies afresh,
/// and a failure is never shared.
#[test]
fn a_shared_verification_covers_one_snapshot_for_a_bounded_time() {
    let (mut child, _, a) = attested_sleeper();
    a.verify_for(7).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // Another snapshot: verified afresh, and refused.
    assert!(matches!(a.verify_for(8), Err(AttestError::ProcessGone)));
    // The failure was not recorded as a success: the first snapshot's verification is the only
    // one shared, and only within the bound.
    std::thread::sleep(SHARED_VERIFICATION + Duration::from_millis(10));
    assert!(matches!(a.verify_for(7), Err(AttestError::ProcessGone)));
    assert!(matches!(a.verify_for(8), Err(AttestError::ProcessGone)));
}
