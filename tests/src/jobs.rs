//! What the job, allocation and node-API tests share: placing an allocation by hand (standing in
//! for the scheduler), adding a user, and reading a profile's capability.

use std::path::{Path, PathBuf};

use ringzero_proto::client::{AuthorityClient, Profile};
use ringzero_proto::pb;

use crate::{SoloAuthority, show};

/// Places allocation `id` of job `namespace/job` (version 1), index `index`, on `node`, with the
/// client's credentials and no scheduler lease.
pub async fn place_by_hand(
    c: &mut AuthorityClient,
    id: &str,
    namespace: &str,
    job: &str,
    index: u32,
    node: &str,
) {
    let p = pb::AllocPlacement {
        id: id.into(),
        namespace: namespace.into(),
        job: job.into(),
        job_version: 1,
        index,
        node: node.into(),
        previous: String::new(),
    };
    c.call(|mut g| {
        let r = pb::PlaceAllocsRequest {
            allocs: vec![p.clone()],
            lease: None,
        };
        async move { g.place_allocs(r).await }
    })
    .await
    .expect("place the allocation");
}

/// `user add NAME --role ROLE [--namespace NS]` as the admin; returns the new profile's path.
pub fn add_user(a: &SoloAuthority, name: &str, role: &str, ns: Option<&str>) -> PathBuf {
    let out_path = a.root.path().join(format!("{name}.profile"));
    let path = out_path.to_string_lossy().into_owned();
    let mut args = vec!["user", "add", name, "--role", role, "--out", &path];
    if let Some(ns) = ns {
        args.extend(["--namespace", ns]);
    }
    let out = a.cli(&args);
    assert!(out.status.success(), "user add {name}: {}", show(&out));
    out_path
}

/// The capability a profile file holds.
pub fn token_of(profile: &Path) -> String {
    let text = std::fs::read_to_string(profile).expect("profile readable");
    Profile::from_toml(&text).expect("profile parses").token
}
