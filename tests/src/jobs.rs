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

/// Writes `NAME.toml` (namespace `shop`, one task running `sh -c SCRIPT` as `uid`, `count`
/// instances, no restart, identity `spiffe://TD/ns/shop/NAME`) and submits it with `job run`.
pub fn run_shop_job(a: &SoloAuthority, td: &str, name: &str, script: &str, uid: u32, count: u32) {
    let text = format!(
        r#"namespace = "shop"
name = "{name}"
count = {count}
command = "/bin/sh"
args = ["-c", {script:?}]
env = {{ PATH = "/usr/bin:/bin" }}
uid = {uid}
gid = {uid}
spiffe_id = "spiffe://{td}/ns/shop/{name}"

[restart]
policy = "never"
"#
    );
    let file = a.root.path().join(format!("{name}.toml"));
    std::fs::write(&file, text).expect("write the job file");
    let out = a.cli(&["job", "run", &file.to_string_lossy()]);
    assert!(out.status.success(), "job run {name}: {}", show(&out));
}

/// Starts the agent of `node` serving its node API on loopback, with `extra` flags; returns the
/// process, its data directory and its log.
pub fn start_node_agent(
    a: &SoloAuthority,
    node: &str,
    extra: &[&str],
) -> (crate::Proc, PathBuf, PathBuf) {
    let token = a.node_token(node, "10m");
    let dir = a.root.path().join(format!("agent-{node}"));
    let socket = a.root.path().join(format!("{node}.sock"));
    let mut cmd = crate::agent::agent_cmd(
        a.root.path(),
        &a.addr,
        Some(&format!("@{}", token.display())),
        &dir,
        &socket,
    );
    cmd.args(["--node-api", "127.0.0.1:0"]).args(extra);
    let log = a.root.path().join(format!("agent-{node}.log"));
    let p = crate::agent::spawn_ready_agent(
        &format!("agent-{node}"),
        cmd,
        &log,
        std::time::Duration::from_secs(20),
    );
    (p, dir, log)
}

/// The node-API address the authority lists for `namespace/job`'s allocations on `node`
/// (empty until the agent announced it).
pub async fn node_api_of(
    c: &mut AuthorityClient,
    namespace: &str,
    job: &str,
    node: &str,
) -> String {
    let req = pb::ListAllocsRequest {
        namespace: namespace.into(),
        job: job.into(),
        node: node.into(),
    };
    let reply = c
        .call(|mut g| {
            let r = req.clone();
            async move { g.list_allocs(r).await }
        })
        .await
        .expect("list the allocations");
    reply
        .allocs
        .first()
        .map(|a| a.node_api.clone())
        .unwrap_or_default()
}

/// A node-API client of `node` (trust domain `td`) at `addr`, over `profile`'s SVID, presenting
/// the profile's own capability on every call. Build it inside a runtime.
pub type NodeClient = ringzero_proto::node::node_client::NodeClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// Adds `authorization: Bearer …` to every call.
#[derive(Clone, Debug)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

/// See [`NodeClient`].
pub fn node_client(profile: &Path, td: &str, node: &str, addr: &str) -> NodeClient {
    node_client_presenting(profile, &token_of(profile), td, node, addr)
}

/// A [`NodeClient`] over `profile`'s SVID presenting `token` (which may be someone else's).
pub fn node_client_presenting(
    profile: &Path,
    token: &str,
    td: &str,
    node: &str,
    addr: &str,
) -> NodeClient {
    let text = std::fs::read_to_string(profile).expect("profile readable");
    let p = Profile::from_toml(&text).expect("profile parses");
    let creds = p.credentials().expect("profile credentials");
    let server =
        ringzero_policy::SpiffeIdPattern::parse(&format!("spiffe://{td}/ringzero/node/{node}"))
            .expect("node identity");
    let tls = creds.tls_to(server).expect("TLS to the node");
    let channel = ringzero_proto::transport::channel(addr, tls, std::time::Duration::from_secs(5))
        .expect("node-API channel");
    let bearer = format!("Bearer {token}").parse().expect("bearer header");
    ringzero_proto::node::node_client::NodeClient::with_interceptor(channel, Bearer(bearer))
}

/// Waits (up to 20 s) until the authority lists a node-API address for `namespace/job` on
/// `node`; returns it.
pub async fn wait_for_node_api(
    c: &mut AuthorityClient,
    namespace: &str,
    job: &str,
    node: &str,
) -> String {
    for _ in 0..100 {
        let addr = node_api_of(c, namespace, job, node).await;
        if !addr.is_empty() {
            return addr;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("the node API address of {namespace}/{job} on {node} was never announced");
}

/// `ReadLogs` of `alloc` (stdout): the first chunk's text, or the error.
pub async fn first_log_chunk(c: &mut NodeClient, alloc: &str) -> Result<String, tonic::Status> {
    let req = ringzero_proto::node::ReadLogsRequest {
        alloc_id: alloc.into(),
        ..Default::default()
    };
    let mut stream = c.read_logs(req).await?.into_inner();
    match stream.message().await? {
        Some(chunk) => Ok(String::from_utf8_lossy(&chunk.data).into_owned()),
        None => Ok(String::new()),
    }
}
