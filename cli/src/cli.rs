//! The command line, as clap types. Only parsing lives here; `cmd` does the work.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ringzero_policy::selector::Selector;
use ringzero_policy::{NodeName, Operation, Resource, SpiffeId};

const ABOUT: &str = "ringzero: one root of trust for a cluster — SPIFFE identities, capability tokens, an audit log";

const EXIT_CODES: &str = "\
Exit codes: 0 success (token verify: allowed), 1 failed or denied, 2 invalid input or usage.
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

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Generate a root key pair for minting tokens before an authority exists.
    #[command(after_help = "\
Examples:
  ringzero keygen --out root.key            # writes root.key (0600) and root.key.pub
  ringzero keygen --out root2.key --id 2    # a second key, for rotation")]
    Keygen(KeygenArgs),
    /// Mint, attenuate, inspect and verify capability tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run and manage authority nodes: the cluster's root of trust.
    #[command(subcommand)]
    Authority(AuthorityCommand),
    /// Show the trust bundle.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Enroll agent nodes, list them, evict or ban them.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Registration entries: which workloads on which node get which SPIFFE ID.
    #[command(subcommand)]
    Entry(EntryCommand),
    /// Run the node agent (the SPIFFE Workload API) and fetch SVIDs from it.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// A whole single-machine cluster in one command: one authority, one agent, an entry for you.
    #[command(after_help = DEV_HELP)]
    Dev(DevArgs),
    /// Verify, search and export the audit log: a signed, append-only transparency log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Users: add one (writes its profile), invite one, list and remove them.
    #[command(subcommand)]
    User(UserCommand),
    /// Get a user profile with an invite (first login), or renew a profile before it expires.
    #[command(after_help = LOGIN_HELP)]
    Login(LoginArgs),
    /// Roles: the built-in ones and custom ones applied from a TOML file.
    #[command(subcommand)]
    Role(RoleCommand),
    /// If a node, user, authority member or token were compromised now: which SPIFFE IDs the
    /// attacker could obtain, which rights it could exercise, until when, and how to cut it off.
    #[command(after_help = BLAST_HELP)]
    BlastRadius(BlastRadiusArgs),
}

const BLAST_HELP: &str = "\
Answered by the authority from its live state (needs audit:read; the question is audited).
A token is read from its argument, '-' (stdin) or @FILE, and never printed back.

Examples:
  ringzero --profile admin.profile blast-radius node/n7
  ringzero blast-radius user/alice --json
  ringzero blast-radius authority/2
  ringzero blast-radius token @ci.token";

#[derive(Debug, Args)]
pub(crate) struct BlastRadiusArgs {
    /// node/NAME, user/NAME, authority/ID, or the word `token` followed by the token.
    #[arg(value_name = "PRINCIPAL|token")]
    pub(crate) target: String,
    /// After `token`: the token, '-' for stdin, or @FILE. (Not named `token`: that is the
    /// global flag for the capability presented, and clap would merge the two.)
    #[arg(value_name = "TOKEN|-|@FILE")]
    pub(crate) assessed: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

const DEV_HELP: &str = "\
Runs one authority node and one enrolled agent in this process, with data in DIR (a new
temporary directory, removed at exit, when not given), and creates a registration entry
spiffe://TD/ns/dev/<your user name> for your uid. Prints SPIFFE_ENDPOINT_SOCKET=… and the
admin profile's path on stdout, then serves until Ctrl-C. Run it again with the same
--data-dir to pick up where it left off.

Examples:
  ringzero dev
  ringzero dev --data-dir ~/.ringzero-dev --listen 127.0.0.1:7000
  # in another shell, with the two lines it printed exported:
  ringzero agent fetch
  ringzero entry list";

#[derive(Debug, Subcommand)]
pub(crate) enum AgentCommand {
    /// Run the agent: enroll (first start), keep the node SVID renewed, sync entries, issue and
    /// rotate workload SVIDs, serve the SPIFFE Workload API.
    #[command(after_help = "\
The first start needs a join token (from `ringzero node token --name NAME` on an admin machine);
later starts reuse the credentials in the data directory and need none. The token's pin is
checked against the authority before its secret is sent; --bundle FILE checks against a given
bundle instead. Prints `agent ready: node N, E entries, I SVIDs, socket /abs/path` on stderr
once the Workload API serves and the first sync completed.

Examples:
  ringzero agent run --authority 10.0.0.1:7000,10.0.0.2:7000 --join-token @n7.token \\
      --data-dir /var/lib/ringzero-agent
  ringzero agent run --data-dir /var/lib/ringzero-agent     # a restart: no token needed
  ringzero agent run --authority A --join-token - --data-dir D < n7.token")]
    Run(AgentRunArgs),
    /// Fetch this process's X.509-SVIDs from the Workload API (like `spire-agent api fetch x509`).
    #[command(after_help = "\
Examples:
  ringzero agent fetch                                   # socket from SPIFFE_ENDPOINT_SOCKET
  ringzero agent fetch --socket /var/lib/ringzero-agent/workload.sock --write /run/my-service
  ringzero agent fetch --json")]
    Fetch(AgentFetchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AgentRunArgs {
    /// Where the agent keeps its key, SVID, capability and synced state (created; files 0600).
    #[arg(long, value_name = "DIR", env = "RINGZERO_AGENT_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// The one-time join token, for the first start (TOKEN, @FILE or -).
    #[arg(long, value_name = "TOKEN|@FILE|-")]
    pub(crate) join_token: Option<String>,
    /// The Workload API socket (default DIR/workload.sock).
    #[arg(long, value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// Trust this bundle (PEM CA certificates) instead of checking the join token's pin.
    #[arg(long, value_name = "FILE")]
    pub(crate) bundle: Option<PathBuf>,
    /// Send the join secret without verifying the authority first. Only for throwaway clusters.
    #[arg(long)]
    pub(crate) insecure_skip_pin: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AgentFetchArgs {
    /// The Workload API socket: a path or unix:///path.
    #[arg(long, value_name = "PATH|unix:///PATH", env = "SPIFFE_ENDPOINT_SOCKET")]
    pub(crate) socket: Option<String>,
    /// Also write svid.pem, svid.key (0600) and bundle.pem of the default SVID into DIR.
    #[arg(long, value_name = "DIR")]
    pub(crate) write: Option<PathBuf>,
    /// How long to wait for an answer.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub(crate) timeout: Duration,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Keep the cluster's data here (reused when it exists). Default: a new temporary directory,
    /// removed at exit.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Where the authority listens (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub(crate) listen: String,
    /// The trust domain of a new cluster.
    #[arg(long, default_value = "dev.ringzero.internal")]
    pub(crate) trust_domain: ringzero_policy::TrustDomain,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuthorityCommand {
    /// Initialize the first node of a new cluster, write the admin profile, and exit.
    #[command(after_help = "\
Examples:
  ringzero authority bootstrap --trust-domain example.org --data-dir /var/lib/ringzero --listen 10.0.0.1:7000
  ringzero authority run --data-dir /var/lib/ringzero")]
    Bootstrap(BootstrapArgs),
    /// Serve an authority node (first start after bootstrap, and every restart).
    #[command(after_help = "\
Examples:
  ringzero authority run --data-dir /var/lib/ringzero")]
    Run(RunArgs),
    /// Issue a one-time token for a new authority node (prints it alone on the last line).
    #[command(after_help = "\
Examples:
  T=$(ringzero --profile admin.profile authority join-token --ttl 10m)")]
    JoinToken(JoinTokenArgs),
    /// Create a node by joining an existing cluster, then keep serving it.
    #[command(after_help = "\
Examples:
  ringzero authority join --peer 10.0.0.1:7000 --token @join.token --data-dir /var/lib/ringzero --listen 10.0.0.2:7000
  ringzero authority join --peer 10.0.0.1:7000 --token - --bundle bundle.pem --data-dir D --listen ADDR")]
    Join(JoinArgs),
    /// List the members: id, address, role, state, last contact, matched index.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile authority members
  ringzero --profile admin.profile authority members --json")]
    Members(JsonArgs),
    /// Remove a member; --compromised also marks its keys compromised in the bundle at once.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile authority remove 3
  ringzero --profile admin.profile authority remove 3 --compromised")]
    Remove(RemoveArgs),
    /// Exit 0 only when a leader is known and accepts writes.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile authority status")]
    Status(JsonArgs),
    /// Break-glass: get a fresh admin profile from the authority node running on this machine.
    #[command(after_help = "\
Run as root on the machine of the leader node: talks to the node's local admin socket
(DIR/admin.sock, root only, checked by the kernel's peer credentials), which issues a new admin
key, SVID and capability. Every request, granted or refused, is in the audit log.

Examples:
  sudo ringzero authority admin-profile --data-dir /var/lib/ringzero --out /root/admin.profile
  sudo ringzero authority admin-profile --data-dir /var/lib/ringzero --out admin.profile --ttl 1h --force")]
    AdminProfile(AdminProfileArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AdminProfileArgs {
    /// The data directory of the authority node running here.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
    /// Where to write the admin profile (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Lifetime of the credential (default 24h, at most 7d).
    #[arg(long, value_parser = parse_user_ttl)]
    pub(crate) ttl: Option<Duration>,
    /// Replace --out if it exists.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BootstrapArgs {
    /// The trust domain of the new cluster (e.g. example.org).
    #[arg(long)]
    pub(crate) trust_domain: ringzero_policy::TrustDomain,
    /// Where the node keeps its keys and state (created; must not hold a node yet).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
    /// host:port this node listens on and peers reach it at.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: String,
    /// Lifetime of the admin credential (default 24h, at most 7d; renew it with `login`).
    #[arg(long, value_parser = parse_user_ttl, default_value = "24h")]
    pub(crate) admin_ttl: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct JoinTokenArgs {
    /// How long the token may be redeemed (at most 24h).
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub(crate) ttl: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// An existing member's address.
    #[arg(long, value_name = "ADDR")]
    pub(crate) peer: String,
    /// The join token (TOKEN, @FILE or -).
    #[arg(long, value_name = "TOKEN|@FILE|-")]
    pub(crate) token: String,
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
    /// host:port this node listens on and peers reach it at.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: String,
    /// Trust this bundle (PEM) instead of checking the token's pin.
    #[arg(long, value_name = "FILE")]
    pub(crate) bundle: Option<PathBuf>,
    /// Send the secret without verifying the authority first. Only for throwaway clusters.
    #[arg(long)]
    pub(crate) insecure_skip_pin: bool,
}

#[derive(Debug, Args)]
pub(crate) struct JsonArgs {
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RemoveArgs {
    /// The node id to remove.
    pub(crate) node: u64,
    /// Mark the node's keys compromised at once: everything it issued stops verifying.
    #[arg(long)]
    pub(crate) compromised: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BundleCommand {
    /// Print the trust bundle.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile bundle show > bundle.pem
  ringzero --profile admin.profile bundle show --format jwks")]
    Show(BundleShowArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BundleShowArgs {
    #[arg(long, value_enum, default_value = "pem")]
    pub(crate) format: BundleFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum BundleFormat {
    Pem,
    /// The SPIFFE bundle format (JWKS).
    Jwks,
}

#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the private key (mode 0600); the public key goes to FILE.pub.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// The root key id tokens will carry, so verifiers can pick the key (rotation).
    #[arg(long, default_value_t = 1)]
    pub(crate) id: u32,
    /// Overwrite existing files.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Mint a token: through the cluster for another identity (--for), or offline with a root
    /// key (--root-key). Prints the token alone on stdout.
    #[command(after_help = "\
Through the cluster (needs a profile and token:mint), the token is bound to the --for identity
and can never grant more than your own capability: every operation must be yours on the whole
resource prefix, and it never outlives your token. Without --resource, each operation takes
the narrowest prefix your own capability grants it on.

Examples:
  T=$(ringzero --profile alice.profile token mint --for spiffe://example.org/ns/ci/deployer \\
        --operation sched:submit --resource ns/ci --ttl 30m)
  T=$(ringzero token mint --root-key root.key --subject spiffe://example.org/user/alice \\
        --operation logs:read --operation debug:attach --resource ns/default --ttl 1h)
  ringzero token mint --root-key root.key --subject spiffe://example.org/ns/ci/deployer \\
        --operation sched:submit --resource ns/ci --bind-subject")]
    Mint(MintArgs),
    /// Revoke a token's last block (it and every attenuation of it, not its parent), or a
    /// revocation id, through the cluster.
    #[command(after_help = "\
Every connected verifier refuses the revoked token within a second; the revocation is kept
until the token would have expired (24 h for a bare revocation id).

Examples:
  ringzero --profile admin.profile token revoke @deployer.token
  ringzero token revoke --id 3f2a…   # a revocation id from `token inspect` or the audit log")]
    Revoke(RevokeArgs),
    /// Narrow a token offline (prints the new token alone on stdout).
    #[command(after_help = "\
Examples:
  ringzero token attenuate @alice.token --operation logs:read --resource ns/default/web --ttl 10m
  echo \"$T\" | ringzero token attenuate - --bind-peer spiffe://example.org/ns/ci/deployer")]
    Attenuate(AttenuateArgs),
    /// Decode a token without verifying it.
    #[command(after_help = "\
Examples:
  ringzero token inspect \"$T\"
  ringzero token inspect @alice.token --json")]
    Inspect(InspectArgs),
    /// Verify a token offline and decide one request (exit 0 allowed, 1 denied, 2 malformed).
    #[command(after_help = "\
Offline verification checks signatures, expiry, bindings and rights, but cannot see
revocations: only a connected verifier can.

Examples:
  ringzero token verify \"$T\" --root-key root.key.pub --operation logs:read --resource ns/default/web
  ringzero token verify @t --root-key root.key --operation svid:mint --resource node/n7 \\
      --peer spiffe://example.org/ringzero/node/n7 --node n7 --json")]
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct MintArgs {
    /// Mint through the cluster for this identity (a SPIFFE ID of the trust domain); the token
    /// is bound to it.
    #[arg(long = "for", value_name = "SPIFFE_ID", conflicts_with_all = ["root_key", "subject", "bind_subject", "bind_node"], required_unless_present = "root_key")]
    pub(crate) for_id: Option<SpiffeId>,
    /// Mint offline with this root key file, written by `ringzero keygen`.
    #[arg(long, value_name = "FILE", requires = "subject")]
    pub(crate) root_key: Option<PathBuf>,
    /// Who an offline token is for (a SPIFFE ID).
    #[arg(long, value_name = "SPIFFE_ID")]
    pub(crate) subject: Option<SpiffeId>,
    /// An operation to allow (repeatable), e.g. logs:read.
    #[arg(long = "operation", value_name = "OP", required = true)]
    pub(crate) operations: Vec<Operation>,
    /// The resource prefix the operations apply to (whole segments). Default: offline, every
    /// resource; through the cluster, your own scope.
    #[arg(long, value_name = "PREFIX")]
    pub(crate) resource: Option<Resource>,
    /// Lifetime, e.g. 10m, 1h (default 1h, at most 24h).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) ttl: Option<Duration>,
    /// Bind the token to the subject's mTLS identity (refused over any other peer).
    #[arg(long)]
    pub(crate) bind_subject: bool,
    /// Bind the token to one node.
    #[arg(long, value_name = "NAME")]
    pub(crate) bind_node: Option<NodeName>,
}

#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// The token to revoke: the value, '-' for stdin, or @FILE. (Not named `token`: that is
    /// the global flag for the capability presented.)
    #[arg(
        value_name = "TOKEN|-|@FILE",
        required_unless_present = "id",
        conflicts_with = "id"
    )]
    pub(crate) revoked: Option<String>,
    /// A revocation id (hex) instead of a token.
    #[arg(long, value_name = "HEX")]
    pub(crate) id: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RoleCommand {
    /// Apply custom roles from a TOML file (checked before anything is sent).
    #[command(after_help = "\
The file holds [[role]] tables, each with a name and its rights:

  [[role]]
  name = \"deployer\"
  rights = [ { operation = \"sched:submit\", resource = \"ns/shop\" },
             { operation = \"logs:read\", resource = \"ns/shop\" } ]

Unknown operations, malformed, repeated or built-in names and bad resource prefixes are
reported with their line, and nothing is applied (exit 2).

Examples:
  ringzero --profile admin.profile role apply roles.toml")]
    Apply(RoleApplyArgs),
    /// List the built-in and custom roles.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile role list
  ringzero role list --json")]
    List(JsonArgs),
    /// Show one role's rights.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile role show developer
  ringzero role show deployer --json")]
    Show(RoleShowArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RoleApplyArgs {
    /// The TOML file of [[role]] tables.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct RoleShowArgs {
    /// The role's name.
    #[arg(value_name = "NAME")]
    pub(crate) name: String,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AttenuateArgs {
    /// The token: the value, '-' for stdin, or @FILE.
    #[arg(default_value = "-", value_name = "TOKEN|-|@FILE")]
    pub(crate) token: String,
    /// Expire this long from now (never later than the token already expires).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) ttl: Option<Duration>,
    /// Allow only these operations (repeatable).
    #[arg(long = "operation", value_name = "OP")]
    pub(crate) operations: Vec<Operation>,
    /// Allow only resources under this prefix (whole segments).
    #[arg(long, value_name = "PREFIX")]
    pub(crate) resource: Option<Resource>,
    /// Allow only when presented over this mTLS identity.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub(crate) bind_peer: Option<SpiffeId>,
    /// Allow only on this node.
    #[arg(long, value_name = "NAME")]
    pub(crate) bind_node: Option<NodeName>,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The token: the value, '-' for stdin, or @FILE.
    #[arg(default_value = "-", value_name = "TOKEN|-|@FILE")]
    pub(crate) token: String,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The token: the value, '-' for stdin, or @FILE.
    #[arg(value_name = "TOKEN|-|@FILE")]
    pub(crate) token: String,
    /// Root key file (private or .pub) written by `ringzero keygen`.
    #[arg(long, value_name = "KEYFILE")]
    pub(crate) root_key: PathBuf,
    /// The operation requested.
    #[arg(long, value_name = "OP")]
    pub(crate) operation: Operation,
    /// The resource requested.
    #[arg(long, value_name = "RESOURCE")]
    pub(crate) resource: Resource,
    /// The SPIFFE ID of the peer presenting the token.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub(crate) peer: Option<SpiffeId>,
    /// The node the request concerns.
    #[arg(long, value_name = "NAME")]
    pub(crate) node: Option<NodeName>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Issue a one-time join token for an agent node (prints it alone on the last line).
    #[command(after_help = "\
The token is a secret: it is printed only on stdout; what to run on the node goes to stderr.

Examples:
  ringzero --profile admin.profile node token --name n7 > n7.token
  T=$(ringzero node token --name n7 --ttl 1h)")]
    Token(NodeTokenArgs),
    /// List the nodes that enrolled: name, status (active, evicted, banned), since when.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile node list
  ringzero node list --json")]
    List(JsonArgs),
    /// Evict a node: it can no longer renew, and what it was issued is revoked. It may re-enroll
    /// with a new join token.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile node evict n7")]
    Evict(NodeArg),
    /// Ban a node name: like evict, and the name can never enroll again.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile node ban n7")]
    Ban(NodeArg),
}

#[derive(Debug, Args)]
pub(crate) struct NodeTokenArgs {
    /// The name the node will have (its SVID is spiffe://TD/ringzero/node/NAME).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: NodeName,
    /// How long the token may be redeemed (at most 24h).
    #[arg(long, value_parser = parse_join_ttl, default_value = "10m")]
    pub(crate) ttl: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct NodeArg {
    /// The node name.
    #[arg(value_name = "NAME")]
    pub(crate) name: NodeName,
}

const LOGIN_HELP: &str = "\
With --invite (from `ringzero user invite`): fetches the cluster's trust bundle from
--authority, refuses to go on unless it matches the invite's pin, generates the key on this
machine, and only then sends the invite's secret; writes the new profile to --out (0600). An
invite works once.

Without --invite: renews the --profile given, in place (or into --out), with its SVID while
that is still valid: a new key, SVID and capability for the user's current role. An expired
profile cannot renew (ask for a new invite). Credentials last 24h unless --ttl (at most 7d).

Examples:
  ringzero login --invite @alice.invite --authority 10.0.0.1:7000,10.0.0.2:7000 --out alice.profile
  ringzero login --invite - --authority 10.0.0.1:7000 --out alice.profile --ttl 8h < alice.invite
  ringzero --profile alice.profile login                  # renew before it expires";

#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// A one-time invite (INVITE, @FILE or -), for a first login; needs --authority and --out.
    #[arg(long, value_name = "INVITE|@FILE|-", requires = "out")]
    pub(crate) invite: Option<String>,
    /// Where to write the profile (mode 0600). Default when renewing: the --profile itself.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Lifetime of the credential (default 24h, at most 7d).
    #[arg(long, value_parser = parse_user_ttl)]
    pub(crate) ttl: Option<Duration>,
    /// Replace --out if it exists (a first login never replaces a file otherwise).
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user and write its profile: key generated here, SVID spiffe://TD/user/NAME and the
    /// role's capability bound to it.
    #[command(after_help = "\
Needs user:write (the admin role). The profile holds the user's private key: hand it over
safely, or prefer `user invite`, which lets the key be generated on the user's machine.
Built-in roles: admin, operator, developer (needs --namespace), auditor; or a custom role.

Examples:
  ringzero --profile admin.profile user add bob --role operator --out bob.profile
  ringzero user add carol --role developer --namespace shop --ttl 8h --out carol.profile")]
    Add(UserAddArgs),
    /// Invite a user: prints a one-time invite alone on the last line of stdout.
    #[command(after_help = "\
The invite is a secret: it is printed only on stdout; what the user runs goes to stderr.

Examples:
  ringzero --profile admin.profile user invite alice --role developer --namespace shop > alice.invite
  I=$(ringzero user invite dave --role auditor --ttl 2h)")]
    Invite(UserInviteArgs),
    /// List the users: name, role, namespace.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile user list
  ringzero user list --json")]
    List(JsonArgs),
    /// Remove a user: its SVIDs and capabilities are revoked at once.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile user remove alice")]
    Remove(UserArg),
    /// Suspend a user without deleting it: its certificates open nothing, it cannot renew, and
    /// no token it minted (or one minted from those) is honoured, until `user resume`.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile user suspend alice
  ringzero --profile admin.profile user resume alice")]
    Suspend(UserArg),
    /// Resume a suspended user: its unexpired credentials and delegations work again.
    Resume(UserArg),
}

#[derive(Debug, Args)]
pub(crate) struct UserAddArgs {
    /// The user name (its SVID is spiffe://TD/user/NAME).
    #[arg(value_name = "NAME")]
    pub(crate) name: NodeName,
    /// A built-in role (admin, operator, developer, auditor) or a custom one.
    #[arg(long, value_name = "ROLE")]
    pub(crate) role: String,
    /// The namespace, for roles confined to one (developer).
    #[arg(long, value_name = "NS")]
    pub(crate) namespace: Option<NodeName>,
    /// Lifetime of the credential (default 24h, at most 7d).
    #[arg(long, value_parser = parse_user_ttl)]
    pub(crate) ttl: Option<Duration>,
    /// Where to write the user's profile (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct UserInviteArgs {
    /// The user name (its SVID will be spiffe://TD/user/NAME).
    #[arg(value_name = "NAME")]
    pub(crate) name: NodeName,
    /// A built-in role (admin, operator, developer, auditor) or a custom one.
    #[arg(long, value_name = "ROLE")]
    pub(crate) role: String,
    /// The namespace, for roles confined to one (developer).
    #[arg(long, value_name = "NS")]
    pub(crate) namespace: Option<NodeName>,
    /// How long the invite may be used (at most 24h).
    #[arg(long, value_parser = parse_join_ttl, default_value = "1h")]
    pub(crate) ttl: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct UserArg {
    /// The user name.
    #[arg(value_name = "NAME")]
    pub(crate) name: NodeName,
}

#[derive(Debug, Subcommand)]
pub(crate) enum EntryCommand {
    /// Create a registration entry (prints its id alone on stdout).
    #[command(after_help = "\
An entry gives SPIFFE_ID to the workloads on node NODE that match every --selector.
Selectors: unix:uid:N, unix:gid:N, unix:user:NAME, unix:group:NAME, unix:path:/ABS/PATH,
unix:sha256:HEX. Entries without a uid, gid, user or group selector are refused unless
--allow-weak-selectors: anyone able to run the binary would get the identity.

Examples:
  ringzero --profile admin.profile entry create --spiffe-id spiffe://example.org/ns/web \\
      --node n7 --selector unix:uid:1000
  ID=$(ringzero entry create --spiffe-id spiffe://example.org/db --node n7 \\
      --selector unix:user:postgres --selector unix:path:/usr/bin/postgres --ttl 30m --dns db.local)")]
    Create(EntryCreateArgs),
    /// List entries, all pages, optionally only those of one node or one SPIFFE ID.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile entry list
  ringzero entry list --node n7
  ringzero entry list --spiffe-id spiffe://example.org/ns/web --json")]
    List(EntryListArgs),
    /// Show one entry.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile entry show 6f1c0d2a9b8e4f3a0c1d2e3f4a5b6c7d
  ringzero entry show 6f1c0d2a9b8e4f3a0c1d2e3f4a5b6c7d --json")]
    Show(EntryShowArgs),
    /// Change an entry; what is not given stays as it is (--selector and --dns replace the lists).
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile entry update 6f1c0d2a9b8e4f3a0c1d2e3f4a5b6c7d --ttl 15m
  ringzero entry update 6f1c0d2a9b8e4f3a0c1d2e3f4a5b6c7d --selector unix:uid:1001 --node n8
  ringzero entry update 6f1c0d2a9b8e4f3a0c1d2e3f4a5b6c7d --clear-dns")]
    Update(EntryUpdateArgs),
    /// Delete an entry: its workloads stop receiving new SVIDs.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile entry delete 6f1c0d2a9b8e4f3a0c1d2e3f4a5b6c7d")]
    Delete(EntryIdArg),
}

#[derive(Debug, Args)]
pub(crate) struct EntryCreateArgs {
    /// The SPIFFE ID the matching workloads get.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub(crate) spiffe_id: SpiffeId,
    /// The node whose agent may issue it (it need not have enrolled yet).
    #[arg(long, value_name = "NAME")]
    pub(crate) node: NodeName,
    /// A selector the workload must match (repeatable; all must match), e.g. unix:uid:1000.
    #[arg(long = "selector", value_name = "TYPE:KEY:VALUE", required = true)]
    pub(crate) selectors: Vec<Selector>,
    /// Lifetime of the SVIDs issued for the entry (10s to 30d).
    #[arg(long, value_parser = parse_entry_ttl, default_value = "1h")]
    pub(crate) ttl: Duration,
    /// A DNS name to put in the SVIDs (repeatable).
    #[arg(long = "dns", value_name = "NAME", value_parser = parse_dns_name)]
    pub(crate) dns_names: Vec<String>,
    /// Accept selecting only on unix:path / unix:sha256 (anyone who can run the binary gets the
    /// identity).
    #[arg(long)]
    pub(crate) allow_weak_selectors: bool,
    /// Print the created entry as JSON instead of its id.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EntryListArgs {
    /// Only the entries of this node.
    #[arg(long, value_name = "NAME")]
    pub(crate) node: Option<NodeName>,
    /// Only the entries with this SPIFFE ID.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub(crate) spiffe_id: Option<SpiffeId>,
    /// Print a JSON array.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EntryShowArgs {
    /// The entry id (32 hex characters).
    #[arg(value_name = "ID", value_parser = parse_entry_id)]
    pub(crate) id: String,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EntryIdArg {
    /// The entry id (32 hex characters).
    #[arg(value_name = "ID", value_parser = parse_entry_id)]
    pub(crate) id: String,
}

#[derive(Debug, Args)]
pub(crate) struct EntryUpdateArgs {
    /// The entry id (32 hex characters).
    #[arg(value_name = "ID", value_parser = parse_entry_id)]
    pub(crate) id: String,
    /// A new SPIFFE ID.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub(crate) spiffe_id: Option<SpiffeId>,
    /// A new parent node.
    #[arg(long, value_name = "NAME")]
    pub(crate) node: Option<NodeName>,
    /// Replace the selectors with these (repeatable).
    #[arg(long = "selector", value_name = "TYPE:KEY:VALUE")]
    pub(crate) selectors: Vec<Selector>,
    /// A new SVID lifetime (10s to 30d).
    #[arg(long, value_parser = parse_entry_ttl)]
    pub(crate) ttl: Option<Duration>,
    /// Replace the DNS names with these (repeatable).
    #[arg(long = "dns", value_name = "NAME", value_parser = parse_dns_name, conflicts_with = "clear_dns")]
    pub(crate) dns_names: Vec<String>,
    /// Remove every DNS name.
    #[arg(long)]
    pub(crate) clear_dns: bool,
    /// Accept selecting only on unix:path / unix:sha256 (also needed to keep such an entry).
    #[arg(long)]
    pub(crate) allow_weak_selectors: bool,
    /// Print the updated entry as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the log against the profile's pinned audit keys: live, or exported files.
    #[command(after_help = AUDIT_VERIFY_HELP)]
    Verify(AuditVerifyArgs),
    /// Find records by actor, operation, resource, decision and time (oldest first).
    #[command(after_help = "\
TIME is an RFC 3339 time (2026-01-31T12:00:00Z, 2026-01-31T13:00:00+01:00) or a duration
meaning that long ago (30m, 1h, 7d). --resource matches whole path segments: ns/a matches
ns/a and ns/a/web, not ns/ab. The table truncates long fields; --json prints every field,
one record per line (the export's record fields).

Examples:
  ringzero --profile admin.profile audit query --decision deny --since 1h
  ringzero audit query --actor spiffe://example.org/user/alice --operation entry:write
  ringzero audit query --resource ns/default --since 2026-01-31T00:00:00Z --limit 1000 --json")]
    Query(AuditQueryArgs),
    /// Print the last records, then with -f every new record as it is committed.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile audit tail
  ringzero audit tail -n 100
  ringzero audit tail -f --json | my-siem-forwarder")]
    Tail(AuditTailArgs),
    /// Write the live log as a JSON-lines export (records and signed tree heads).
    #[command(after_help = "\
One JSON object per line: a segment line when the export starts after sealed records, one
line per record, and a signed tree head after every 1024 records and at the end. Check it
with `ringzero audit verify --file FILE`. Default start: the first live (unsealed) record.

Examples:
  ringzero --profile admin.profile audit export --out audit.jsonl
  ringzero audit export --since 5000 > recent.jsonl")]
    Export(AuditExportArgs),
    /// Prove that a record is in the current signed tree (verified here, with the pinned keys).
    #[command(after_help = "\
Prints the record, then `included in tree of size N (root …), signed by key K`.

Examples:
  ringzero --profile admin.profile audit prove 1234
  ringzero audit prove 1234 --json")]
    Prove(AuditProveArgs),
    /// Move old records into a signed segment file and drop them from the live log.
    #[command(after_help = AUDIT_SEAL_HELP)]
    Seal(AuditSealArgs),
}

const AUDIT_VERIFY_HELP: &str = "\
Tree heads are checked only against the audit keys pinned in the profile, never against keys
carried by the data. Live (the default): checks the cluster's signed tree head, demands a
consistency proof from the last head this profile accepted (remembered in PROFILE.audit-head;
a smaller or diverging tree is reported as a rollback), re-derives the tree from every live
record, then remembers the new head. With --file: verifies the files in order as one chain
(sealed segments oldest first, then optionally a live export), each continuing the previous
one, and holds them to the remembered head exactly as the live check does: their tree at its
size must be the one accepted (a fork is named by its first differing record), files that end
before it or start after it are refused; the chain's last head is then remembered. The first
altered, dropped, reordered, inserted or truncated record is named. --no-remember checks
against the remembered head without updating it.

Examples:
  ringzero --profile admin.profile audit verify
  ringzero audit verify --json
  ringzero audit verify --file seg-0.jsonl --file seg-1.jsonl --file live.jsonl
  ringzero audit verify --no-remember --file copy-from-a-colleague.jsonl";

const AUDIT_SEAL_HELP: &str = "\
Exports the live records from the current start up to --up-to (default: all but the last
1000 records, or all of them when there are fewer) into FILE (mode 0600), verifies FILE with
the pinned keys and against the signed live tree, then asks the authority to drop those
records: it does so only if the root of FILE's tree matches its own. The Merkle tree keeps
growing across segments; keep every segment file: `audit verify --file` checks the chain
seg-1 seg-2 … live.

Examples:
  ringzero --profile admin.profile audit seal --out /backup/audit-seg-0001.jsonl
  ringzero audit seal --out seg.jsonl --up-to 100000";

#[derive(Debug, Args)]
pub(crate) struct AuditVerifyArgs {
    /// Verify this export instead of the live log (repeatable: a chain, oldest first).
    #[arg(long = "file", value_name = "EXPORT")]
    pub(crate) files: Vec<PathBuf>,
    /// Check against the remembered head, but do not remember the head verified now.
    #[arg(long)]
    pub(crate) no_remember: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AuditQueryArgs {
    /// Only records by this actor (a SPIFFE ID, or local:… for the admin socket).
    #[arg(long, value_name = "ID", value_parser = parse_audit_filter)]
    pub(crate) actor: Option<String>,
    /// Only records of this operation, e.g. entry:write.
    #[arg(long, value_name = "OP", value_parser = parse_audit_filter)]
    pub(crate) operation: Option<String>,
    /// Only records whose resource is under this prefix (whole segments).
    #[arg(long, value_name = "PREFIX", value_parser = parse_audit_filter)]
    pub(crate) resource: Option<String>,
    /// Only allowed or only denied requests.
    #[arg(long, value_enum)]
    pub(crate) decision: Option<AuditDecisionArg>,
    /// Only records at or after TIME (RFC 3339, or a duration ago such as 1h).
    #[arg(long, value_name = "TIME", value_parser = parse_audit_time)]
    pub(crate) since: Option<AuditTime>,
    /// Only records at or before TIME (RFC 3339, or a duration ago such as 10m).
    #[arg(long, value_name = "TIME", value_parser = parse_audit_time)]
    pub(crate) until: Option<AuditTime>,
    /// At most this many records (1 to 1000000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) limit: u32,
    /// Print JSON lines (one record per line) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AuditDecisionArg {
    Allow,
    Deny,
}

/// A point in time given on the command line: absolute, or a duration before now (resolved when
/// the command runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuditTime {
    /// Unix milliseconds.
    At(u64),
    /// This long before now.
    Ago(Duration),
}

#[derive(Debug, Args)]
pub(crate) struct AuditTailArgs {
    /// Keep printing new records as they are committed (until interrupted).
    #[arg(short = 'f', long)]
    pub(crate) follow: bool,
    /// How many of the latest records to print first.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 20)]
    pub(crate) lines: u64,
    /// Print JSON lines instead of columns.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AuditExportArgs {
    /// The first record to export (default: the first live record).
    #[arg(long, value_name = "SEQ")]
    pub(crate) since: Option<u64>,
    /// Write to FILE (mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// The export format.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub(crate) format: AuditFormat,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum AuditFormat {
    /// JSON lines: records and signed tree heads (see `audit verify --file`).
    Jsonl,
}

#[derive(Debug, Args)]
pub(crate) struct AuditProveArgs {
    /// The record's sequence number (its SEQ in `audit query`).
    #[arg(value_name = "SEQ")]
    pub(crate) seq: u64,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AuditSealArgs {
    /// Where to write the sealed segment (mode 0600). Keep it: it is the only copy afterwards.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Seal the records before this seq (default: all but the last 1000, or all if fewer).
    #[arg(long, value_name = "SEQ")]
    pub(crate) up_to: Option<u64>,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub(crate) force: bool,
}

/// The longest actor, operation or resource filter accepted.
const MAX_AUDIT_FILTER: usize = 1024;

fn parse_audit_filter(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_AUDIT_FILTER {
        return Err(format!("longer than {MAX_AUDIT_FILTER} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(s.to_owned())
}

pub(crate) fn parse_audit_time(s: &str) -> Result<AuditTime, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        return u64::try_from(ms)
            .map(AuditTime::At)
            .map_err(|_| "must not be before 1970".into());
    }
    humantime::parse_duration(s).map(AuditTime::Ago).map_err(|_| {
        format!(
            "{s:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration ago (30m, 1h, 7d)"
        )
    })
}

/// The longest a join token may stay redeemable.
pub(crate) const MAX_JOIN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The shortest and longest SVID lifetime an entry may ask for.
pub(crate) const MIN_ENTRY_TTL: Duration = Duration::from_secs(10);
pub(crate) const MAX_ENTRY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

fn parse_join_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) || d > MAX_JOIN_TTL {
        return Err("must be from 1s to 24h".into());
    }
    Ok(d)
}

fn parse_user_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(60) || d > Duration::from_secs(7 * 24 * 3600) {
        return Err("must be from 1m to 7d".into());
    }
    Ok(d)
}

fn parse_entry_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_ENTRY_TTL || d > MAX_ENTRY_TTL {
        return Err("must be from 10s to 30d".into());
    }
    Ok(d)
}

fn parse_dns_name(s: &str) -> Result<String, String> {
    rustls_pki_types::DnsName::try_from(s)
        .map(|_| s.to_ascii_lowercase())
        .map_err(|_| "not a valid DNS name".into())
}

fn parse_entry_id(s: &str) -> Result<String, String> {
    if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("an entry id is 32 hex characters (see `ringzero entry list`)".into())
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 10m, 1h, 1h30m)"))
}
