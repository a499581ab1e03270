//! `ringzero node …` and `ringzero entry …` refusing bad input before calling anything: real
//! processes, no cluster (the live-cluster tests are in `tests/`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;

/// A profile path that does not exist: a command that got past argument validation stops at
/// reading it, with an error naming the file.
const PROFILE_MISSING: &str = "no-such.profile";

fn rz(dir: &Path, args: &[&str]) -> Output {
    Command::cargo_bin("ringzero")
        .unwrap()
        .current_dir(dir)
        .env_remove("RINGZERO_PROFILE")
        .env_remove("RINGZERO_AUTHORITY")
        .env_remove("RINGZERO_TOKEN")
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_usage_error(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = stderr(out);
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

fn create(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--profile",
        PROFILE_MISSING,
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/ns/web",
        "--node",
        "n7",
    ];
    args.extend_from_slice(extra);
    rz(dir, &args)
}

#[test]
fn bad_node_names_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a/b", "", "..", "has space"] {
        let out = rz(
            dir.path(),
            &[
                "--profile",
                PROFILE_MISSING,
                "node",
                "token",
                "--name",
                name,
            ],
        );
        assert_usage_error(&out, "--name");
    }
    let out = rz(dir.path(), &["node", "evict", "a/b"]);
    assert_usage_error(&out, "NAME");
    let out = rz(dir.path(), &["node", "ban", "x y"]);
    assert_usage_error(&out, "NAME");
    let out = create(dir.path(), &["--node", "a/b", "--selector", "unix:uid:1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn join_token_ttl_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    for ttl in ["25h", "0s", "tomorrow"] {
        let out = rz(
            dir.path(),
            &[
                "--profile",
                PROFILE_MISSING,
                "node",
                "token",
                "--name",
                "n7",
                "--ttl",
                ttl,
            ],
        );
        assert_usage_error(&out, "--ttl");
    }
}

#[test]
fn weak_selectors_need_the_flag_and_the_message_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = create(dir.path(), &["--selector", "unix:path:/usr/bin/web"]);
    assert_usage_error(&out, "--allow-weak-selectors");
    let digest = format!("unix:sha256:{}", "ab".repeat(32));
    let out = create(
        dir.path(),
        &[
            "--selector",
            "unix:path:/usr/bin/web",
            "--selector",
            &digest,
        ],
    );
    assert_usage_error(&out, "--allow-weak-selectors");
    // With the flag the selectors pass; what fails next is the missing profile (still exit 2,
    // but about the profile, not the selectors).
    let out = create(
        dir.path(),
        &[
            "--selector",
            "unix:path:/usr/bin/web",
            "--allow-weak-selectors",
        ],
    );
    assert_usage_error(&out, PROFILE_MISSING);
    assert!(!stderr(&out).contains("--allow-weak-selectors"), "{out:?}");
}

#[test]
fn bad_selectors_exit_2_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    for (sel, why) in [
        ("unix:uid:01000", "unix:uid"),
        ("unix:colour:blue", "colour"),
        ("uid=1000", "<type>:<key>:<value>"),
        ("unix:path:relative/path", "unix:path"),
    ] {
        let out = create(dir.path(), &["--selector", sel]);
        assert_usage_error(&out, why);
    }
    let out = create(dir.path(), &[]);
    assert_usage_error(&out, "--selector");
}

#[test]
fn bad_entry_ttls_and_ids_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for ttl in ["9s", "31d", "forever"] {
        let out = create(dir.path(), &["--selector", "unix:uid:1000", "--ttl", ttl]);
        assert_usage_error(&out, "--ttl");
    }
    for cmd in ["show", "delete", "update"] {
        let out = rz(dir.path(), &["entry", cmd, "not-an-id"]);
        assert_usage_error(&out, "32 hex");
    }
    let out = rz(
        dir.path(),
        &[
            "entry",
            "create",
            "--spiffe-id",
            "https://x",
            "--node",
            "n7",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn without_a_profile_every_command_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let id = "0123456789abcdef0123456789abcdef";
    for args in [
        vec!["node", "token", "--name", "n7"],
        vec!["node", "list"],
        vec!["node", "evict", "n7"],
        vec!["node", "ban", "n7"],
        vec![
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/ns/web",
            "--node",
            "n7",
            "--selector",
            "unix:uid:1000",
        ],
        vec!["entry", "list"],
        vec!["entry", "show", id],
        vec!["entry", "update", id, "--ttl", "1m"],
        vec!["entry", "delete", id],
    ] {
        let out = rz(dir.path(), &args);
        assert_usage_error(&out, "no profile");
    }
}

#[test]
fn update_without_changes_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = rz(
        dir.path(),
        &["entry", "update", "0123456789abcdef0123456789abcdef"],
    );
    assert_usage_error(&out, "nothing to change");
}

#[test]
fn every_command_has_examples() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        ["node", "token"],
        ["node", "list"],
        ["node", "evict"],
        ["node", "ban"],
        ["entry", "create"],
        ["entry", "list"],
        ["entry", "show"],
        ["entry", "update"],
        ["entry", "delete"],
    ] {
        let out = rz(dir.path(), &[cmd[0], cmd[1], "--help"]);
        assert!(out.status.success(), "{out:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Examples:\n  ringzero"), "{cmd:?}: {help}");
        assert!(
            help.contains(&format!("{} {}", cmd[0], cmd[1])),
            "{cmd:?}: {help}"
        );
    }
}
