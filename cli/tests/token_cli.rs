//! The `ringzero` binary as a user drives it: real processes, temp dirs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use assert_cmd::Command;

fn rz(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("ringzero").unwrap();
    c.current_dir(dir);
    c
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn keygen(dir: &Path) {
    let out = rz(dir)
        .args(["keygen", "--out", "root.key"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn mint(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "token",
        "mint",
        "--root-key",
        "root.key",
        "--subject",
        "spiffe://example.org/user/alice",
        "--operation",
        "logs:read",
        "--operation",
        "debug:attach",
        "--resource",
        "ns/default",
    ];
    args.extend_from_slice(extra);
    let out = rz(dir).args(&args).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let s = stdout(&out);
    // The token alone on stdout: one line, nothing else.
    assert_eq!(s.lines().count(), 1, "{s:?}");
    s.trim().to_owned()
}

fn verify(dir: &Path, token: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["token", "verify", token, "--root-key", "root.key.pub"];
    args.extend_from_slice(extra);
    let out = rz(dir).args(&args).output().unwrap();
    (out.status.code().unwrap(), stdout(&out))
}

#[test]
fn keygen_writes_a_private_file_0600_and_refuses_to_overwrite() {
    let d = tempfile::tempdir().unwrap();
    keygen(d.path());
    let mode = std::fs::metadata(d.path().join("root.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let public = std::fs::read_to_string(d.path().join("root.key.pub")).unwrap();
    assert!(!public.contains("private"), "{public}");
    let again = rz(d.path())
        .args(["keygen", "--out", "root.key"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    let forced = rz(d.path())
        .args(["keygen", "--out", "root.key", "--force"])
        .output()
        .unwrap();
    assert!(forced.status.success());
}

#[test]
fn mint_attenuate_verify_workflow() {
    let d = tempfile::tempdir().unwrap();
    keygen(d.path());
    let t = mint(d.path(), &["--ttl", "1h"]);
    let ok = ["--operation", "logs:read", "--resource", "ns/default/web"];
    assert_eq!(verify(d.path(), &t, &ok).0, 0);
    // Segment-aware: ns/defaultx is not under ns/default.
    let (code, out) = verify(
        d.path(),
        &t,
        &["--operation", "logs:read", "--resource", "ns/defaultx"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no right allows"), "{out}");

    // Attenuate from stdin, then from @FILE.
    let out = rz(d.path())
        .args([
            "token",
            "attenuate",
            "-",
            "--operation",
            "logs:read",
            "--resource",
            "ns/default/web",
            "--ttl",
            "10m",
        ])
        .write_stdin(t.clone())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let narrowed = stdout(&out).trim().to_owned();
    std::fs::write(d.path().join("narrowed.token"), &narrowed).unwrap();
    assert_eq!(verify(d.path(), "@narrowed.token", &ok).0, 0);
    let (code, out) = verify(
        d.path(),
        "@narrowed.token",
        &[
            "--operation",
            "debug:attach",
            "--resource",
            "ns/default/web",
        ],
    );
    assert_eq!(code, 1);
    assert!(out.contains("operation not allowed"), "{out}");

    // Bound to a peer.
    let out = rz(d.path())
        .args([
            "token",
            "attenuate",
            &narrowed,
            "--bind-peer",
            "spiffe://example.org/ns/ci/deployer",
        ])
        .output()
        .unwrap();
    let bound = stdout(&out).trim().to_owned();
    let (code, out) = verify(
        d.path(),
        &bound,
        &[
            "--operation",
            "logs:read",
            "--resource",
            "ns/default/web",
            "--peer",
            "spiffe://example.org/ns/ci/deployer",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["decision"], "allow");
    assert_eq!(json["subject"], "spiffe://example.org/user/alice");
    assert_eq!(json["revocation_ids"].as_array().unwrap().len(), 3);
    let (code, out) = verify(
        d.path(),
        &bound,
        &[
            "--operation",
            "logs:read",
            "--resource",
            "ns/default/web",
            "--json",
        ],
    );
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["code"], "peer_mismatch");
    assert!(json["note"].as_str().unwrap().contains("revocations"));
}

#[test]
fn a_token_from_another_root_is_denied() {
    let d = tempfile::tempdir().unwrap();
    keygen(d.path());
    let t = mint(d.path(), &[]);
    let other = tempfile::tempdir().unwrap();
    keygen(other.path());
    let (code, out) = verify(
        other.path(),
        &t,
        &["--operation", "logs:read", "--resource", "ns/default"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signature"), "{out}");
}

#[test]
fn verify_refuses_a_hostile_block_quickly_and_says_why() {
    // The reported attack: a holder appends 18 facts and a check joining six atoms (about 34
    // million combinations; a minute of CPU before blocks were vetted before evaluation).
    let d = tempfile::tempdir().unwrap();
    keygen(d.path());
    let t = mint(d.path(), &[]);
    let mut code = String::new();
    for i in 0..18 {
        code.push_str(&format!("f({i});\n"));
    }
    code.push_str(
        "check if f($a), f($b), f($c), f($d), f($e), f($g), $a + $b + $c + $d + $e + $g == -1;",
    );
    let hostile = biscuit_auth::UnverifiedBiscuit::from_base64(&t)
        .unwrap()
        .append(
            biscuit_auth::builder::BlockBuilder::new()
                .code(&code)
                .unwrap(),
        )
        .unwrap()
        .to_base64()
        .unwrap();
    let ok = ["--operation", "logs:read", "--resource", "ns/default/web"];
    let start = std::time::Instant::now();
    let (status, out) = verify(d.path(), &hostile, &ok);
    let took = start.elapsed();
    assert_eq!(status, 1, "{out}");
    assert!(out.contains("refused before evaluation"), "{out}");
    assert!(
        out.contains("block 1 holds a fact in an appended block"),
        "{out}"
    );
    assert!(!out.contains(&hostile), "the reason never echoes the token");
    // A whole process run, on a loaded machine: seconds at most, not a minute.
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    let (status, out) = verify(d.path(), &hostile, &[&ok[..], &["--json"]].concat());
    assert_eq!(status, 1, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["code"], "unsupported_block");

    // inspect shows it, flagged; attenuate refuses to extend it (bad input, exit 2).
    let out = rz(d.path())
        .args(["token", "inspect", &hostile])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("UNSUPPORTED: block 1"),
        "{}",
        stdout(&out)
    );
    let out = rz(d.path())
        .args(["token", "attenuate", &hostile, "--ttl", "1m"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported token"));
}

#[test]
fn inspect_human_and_json() {
    let d = tempfile::tempdir().unwrap();
    keygen(d.path());
    let t = mint(d.path(), &["--bind-subject", "--bind-node", "n7"]);
    let out = rz(d.path())
        .args(["token", "inspect", &t])
        .output()
        .unwrap();
    let s = stdout(&out);
    assert!(
        s.contains("UNVERIFIED") && s.contains("logs:read") && s.contains("bound node:   n7"),
        "{s}"
    );
    let out = rz(d.path())
        .args(["token", "inspect", "--json"])
        .write_stdin(t)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["bound_nodes"][0], "n7");
    assert_eq!(json["rights"].as_array().unwrap().len(), 2);
}

#[test]
fn bad_input_exits_2_with_one_clear_line_and_no_panic() {
    let d = tempfile::tempdir().unwrap();
    keygen(d.path());
    std::fs::write(d.path().join("junk.key"), "kind = \"nope\"\n").unwrap();
    std::fs::write(d.path().join("empty.token"), "").unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "token",
            "verify",
            "garbage",
            "--root-key",
            "root.key.pub",
            "--operation",
            "logs:read",
            "--resource",
            "x",
        ],
        vec![
            "token",
            "verify",
            "@missing.token",
            "--root-key",
            "root.key.pub",
            "--operation",
            "logs:read",
            "--resource",
            "x",
        ],
        vec![
            "token",
            "verify",
            "@empty.token",
            "--root-key",
            "root.key.pub",
            "--operation",
            "logs:read",
            "--resource",
            "x",
        ],
        vec!["token", "inspect", "%%%"],
        vec!["token", "attenuate", "AAAA", "--ttl", "1m"],
        vec![
            "token",
            "mint",
            "--root-key",
            "junk.key",
            "--subject",
            "spiffe://a/b",
            "--operation",
            "logs:read",
        ],
        vec![
            "token",
            "mint",
            "--root-key",
            "root.key.pub",
            "--subject",
            "spiffe://a/b",
            "--operation",
            "logs:read",
        ],
        vec![
            "token",
            "mint",
            "--root-key",
            "root.key",
            "--subject",
            "spiffe://a/b",
            "--operation",
            "logs:read",
            "--ttl",
            "48h",
        ],
        vec![
            "token",
            "mint",
            "--root-key",
            "root.key",
            "--subject",
            "spiffe://A/b",
            "--operation",
            "logs:read",
        ],
        vec![
            "token",
            "mint",
            "--root-key",
            "root.key",
            "--subject",
            "spiffe://a/b",
            "--operation",
            "nope:nope",
        ],
        vec![
            "token",
            "mint",
            "--root-key",
            "root.key",
            "--subject",
            "spiffe://a/b",
            "--operation",
            "logs:read",
            "--resource",
            "ns/../x",
        ],
        vec![
            "token",
            "verify",
            "x",
            "--root-key",
            "root.key.pub",
            "--operation",
            "logs:read",
            "--resource",
            "/abs",
        ],
    ];
    for args in cases {
        let out = rz(d.path()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{args:?}: {err}"
        );
        assert!(err.starts_with("error:"), "{args:?}: {err}");
    }
}

#[test]
fn help_has_examples() {
    for sub in [
        vec!["keygen"],
        vec!["token", "mint"],
        vec!["token", "attenuate"],
        vec!["token", "verify"],
        vec!["token", "inspect"],
    ] {
        let mut args = sub.clone();
        args.push("--help");
        let out = Command::cargo_bin("ringzero")
            .unwrap()
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(stdout(&out).contains("Examples:"), "{sub:?}");
    }
}
