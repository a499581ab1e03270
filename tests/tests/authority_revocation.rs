//! Revocation across an authority cluster of real `ringzero` processes: a revocation outlives
//! the leader that took it, and what a member removed as compromised signed stops verifying.
//!
//! Each test runs its own cluster on loopback ports in its own temporary directory (see
//! [`ringzero_tests::cluster`]); set `RINGZERO_KEEP_TMP=1` to keep it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use ringzero_tests::cluster::*;
use ringzero_tests::show;

// ---------------------------------------------------------------------------------------------
// Revocation across nodes
// ---------------------------------------------------------------------------------------------

/// Mints a token for the profile's admin with `authority:read` on `authority`, through the
/// profile (so signed by the current leader's key); writes it to `name` in the test's
/// directory and returns the `@FILE` argument naming it.
fn mint_admin_read(c: &Cluster, name: &str) -> String {
    let admin = ringzero_policy::token::inspect(&c.profile().token)
        .unwrap()
        .subject
        .unwrap();
    let out = c.cli(&[
        "token",
        "mint",
        "--for",
        &admin,
        "--operation",
        "authority:read",
        "--resource",
        "authority",
    ]);
    assert!(out.status.success(), "mint: {}", show(&out));
    let file = c.path().join(name);
    std::fs::write(&file, stdout(&out).trim()).unwrap();
    format!("@{}", file.display())
}

#[test]
fn a_revocation_made_through_one_node_is_enforced_by_the_next_leader() {
    let mut c = Cluster::with_voters("revoke-failover", 3);
    c.wait_replicated(Duration::from_secs(10));
    let with_token = mint_admin_read(&c, "delegated.token");
    let status_with = |c: &Cluster| c.cli(&["--token", &with_token, "authority", "status"]);
    assert!(status_with(&c).status.success());

    let out = c.cli(&["token", "revoke", &with_token]);
    assert!(out.status.success(), "revoke: {}", show(&out));
    let out = status_with(&c);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("revoked"), "{}", show(&out));

    // The leader that took the revocation dies; the next one refuses the token too, and the
    // admin's own capability still works there.
    let old = c.leader();
    c.nodes[old].kill9();
    c.wait_writable(Duration::from_secs(15));
    let out = status_with(&c);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("revoked"), "{}", show(&out));
    assert!(c.status_ok());
}

#[test]
fn tokens_signed_by_a_node_removed_as_compromised_are_refused() {
    let mut c = Cluster::with_voters("compromised", 3);
    c.wait_replicated(Duration::from_secs(10));
    // Kill the bootstrap leader, so that another node — with its own Biscuit key — leads and
    // mints the next token.
    let first = c.leader();
    c.nodes[first].kill9();
    c.wait_writable(Duration::from_secs(15));
    let signer = c.leader();
    let signer_id = c.nodes[signer].node_id();
    let with_token = mint_admin_read(&c, "by-signer.token");
    let status_with = |c: &Cluster| c.cli(&["--token", &with_token, "authority", "status"]);
    let out = status_with(&c);
    assert!(out.status.success(), "{}", show(&out));

    // Bring the first node back, stop the signer, and remove it as compromised.
    c.nodes[first].start();
    c.wait_replicated(Duration::from_secs(15));
    c.nodes[signer].kill9();
    c.wait_writable(Duration::from_secs(15));
    let out = c.cli(&[
        "authority",
        "remove",
        &signer_id.to_string(),
        "--compromised",
    ]);
    assert!(out.status.success(), "remove --compromised: {}", show(&out));

    // Its keys left the bundle at once: what it signed no longer verifies anywhere.
    let out = status_with(&c);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        c.status_ok(),
        "the admin's own capability (another key) still works"
    );
    let out = c.cli(&["bundle", "show", "--format", "jwks"]);
    assert!(out.status.success(), "{}", show(&out));
}
