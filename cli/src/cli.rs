//! The command line's top level: the `ringzero` parser, the global flags and the list of
//! subcommands. Each subcommand's own flags live beside its code, in [`crate::cmd`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::cmd::{
    agent, audit, authority, bench, blast, bundle, dev, entry, job, keygen, login, mesh, node,
    role, sched, token, user,
};

const ABOUT: &str = "ringzero: one root of trust for a cluster — SPIFFE identities, capability tokens, an audit log";

const EXIT_CODES: &str = "\
Exit codes: 0 success (token verify: allowed), 1 failed or denied, 2 invalid input or usage;
entry create|update --wait: 3 timed out, 4 unservable (see their --help).
Secrets and tokens are accepted as an argument, as '-' (read from stdin) or as '@FILE'.";

#[derive(Debug, Parser)]
#[command(name = "ringzero", version, about = ABOUT, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every command that talks to the cluster understands.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// The client profile (credentials and authority addresses), as written by bootstrap.
    #[arg(long, global = true, env = "RINGZERO_PROFILE", value_name = "FILE")]
    pub(crate) profile: Option<PathBuf>,
    /// Authority addresses to call, overriding the profile's (comma-separated host:port).
    #[arg(
        long,
        global = true,
        env = "RINGZERO_AUTHORITY",
        value_name = "ADDR[,ADDR…]",
        value_delimiter = ','
    )]
    pub(crate) authority: Vec<String>,
    /// The capability to present instead of the profile's (TOKEN, @FILE or -).
    #[arg(
        long,
        global = true,
        env = "RINGZERO_TOKEN",
        value_name = "TOKEN|@FILE|-",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,
    /// Log as JSON lines (daemons).
    #[arg(long, global = true)]
    pub(crate) log_json: bool,
}

/// The subcommands. Each one's flags and long help live beside its code, in [`crate::cmd`].
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Generate a root key pair for minting tokens before an authority exists.
    #[command(after_help = keygen::HELP)]
    Keygen(keygen::KeygenArgs),
    /// Mint, attenuate, inspect and verify capability tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Run and manage authority nodes: the cluster's root of trust.
    #[command(subcommand)]
    Authority(authority::AuthorityCommand),
    /// Load generators that drive a real cluster through the profile: rate, latency, CPU.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Show the trust bundle.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// Enroll agent nodes, list them, evict or ban them.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Registration entries: which workloads on which node get which SPIFFE ID.
    #[command(subcommand)]
    Entry(entry::EntryCommand),
    /// Jobs: submit one from a TOML file, show, list, stop and purge them, read their history.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// The scheduler: place jobs' allocations on nodes, replace lost ones (one active per lease).
    #[command(subcommand)]
    Sched(sched::SchedCommand),
    /// Run the node agent (the SPIFFE Workload API) and fetch SVIDs from it.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// The mesh sidecar: mTLS between workloads, authorized by SPIFFE ID.
    #[command(subcommand)]
    Mesh(mesh::MeshCommand),
    /// A whole single-machine cluster in one command: one authority, one agent, an entry for you.
    #[command(after_help = dev::HELP)]
    Dev(dev::DevArgs),
    /// Verify, search and export the audit log: a signed, append-only transparency log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Users: add one (writes its profile), invite one, list and remove them.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Get a user profile with an invite (first login), or renew a profile before it expires.
    #[command(after_help = login::HELP)]
    Login(login::LoginArgs),
    /// Roles: the built-in ones and custom ones applied from a TOML file.
    #[command(subcommand)]
    Role(role::RoleCommand),
    /// If a node, user, authority member or token were compromised now: which SPIFFE IDs the
    /// attacker could obtain, which rights it could exercise, until when, and how to cut it off.
    #[command(after_help = blast::HELP)]
    BlastRadius(blast::BlastRadiusArgs),
}
