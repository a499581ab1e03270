//! `ringzero token mint|revoke|attenuate|inspect|verify`

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use ringzero_policy::token::{
    self, Attenuation, Decision, KeySet, Lifetime, Limits, MintRequest, Request, RevocationId,
};
use ringzero_policy::{NodeName, Operation, Resource, Right, SpiffeId};

use ringzero_proto::pb;

use super::session::{refused, runtime, session};
use crate::args::parse_duration;
use crate::cli::GlobalArgs;
use crate::failure::{EXIT_FAILED, Outcome, bad_input, bad_input_msg, failed};
use crate::input::read_secret;

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

pub(crate) fn run(global: &GlobalArgs, cmd: TokenCommand) -> Outcome {
    match cmd {
        TokenCommand::Mint(a) => mint(global, a),
        TokenCommand::Revoke(a) => revoke(global, a),
        TokenCommand::Attenuate(a) => attenuate(a),
        TokenCommand::Inspect(a) => inspect(a),
        TokenCommand::Verify(a) => verify(a),
    }
}

fn mint(global: &GlobalArgs, a: MintArgs) -> Outcome {
    match (&a.for_id, &a.root_key, &a.subject) {
        (Some(_), _, _) => mint_through_cluster(global, a),
        (None, Some(key), Some(subject)) => {
            let (key, subject) = (key.clone(), subject.clone());
            mint_offline(&key, subject, a)
        }
        _ => Err(bad_input_msg(
            "give --for SPIFFE_ID (through the cluster) or --root-key FILE --subject SPIFFE_ID (offline)",
        )),
    }
}

/// Asks the cluster to mint a token for another identity out of the caller's own rights.
fn mint_through_cluster(global: &GlobalArgs, a: MintArgs) -> Outcome {
    let subject = a.for_id.map(|s| s.to_string()).unwrap_or_default();
    let operations: Vec<String> = a.operations.iter().map(|o| o.as_str().to_owned()).collect();
    let resource = a
        .resource
        .map(|r| r.as_str().to_owned())
        .unwrap_or_default();
    let ttl_seconds = a.ttl.map_or(0, |t| t.as_secs());
    let rt = runtime()?;
    rt.block_on(async move {
        let mut s = session(global)?;
        let what = format!("token for {subject}");
        let reply = s
            .client
            .call(|mut c| {
                let req = pb::MintTokenRequest {
                    subject: subject.clone(),
                    operations: operations.clone(),
                    resource: resource.clone(),
                    ttl_seconds,
                    rights: Vec::new(),
                };
                async move { c.mint_token(req).await }
            })
            .await
            .map_err(|e| refused(e, &what))?;
        eprintln!(
            "minted {what}, bound to it, expires {}; revocation id {}",
            super::profile::expiry(reply.expires_unix),
            reply.revocation_ids.last().map_or("-", String::as_str)
        );
        println!("{}", reply.token);
        Ok(ExitCode::SUCCESS)
    })
}

/// Revokes a token's last block, or a revocation id, through the cluster.
fn revoke(global: &GlobalArgs, a: RevokeArgs) -> Outcome {
    let (token, revocation_id) = match (&a.revoked, &a.id) {
        (Some(t), None) => {
            let t = read_secret(t).map_err(bad_input)?;
            // Malformed input is exit 2: decode before calling.
            token::inspect(&t).map_err(bad_input)?;
            (t, String::new())
        }
        (None, Some(id)) => {
            RevocationId::from_hex(id).map_err(bad_input)?;
            (String::new(), id.trim().to_owned())
        }
        _ => return Err(bad_input_msg("give a token or --id HEX, not both")),
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let mut s = session(global)?;
        let reply = s
            .client
            .call(|mut c| {
                let req = pb::RevokeTokenRequest {
                    token: token.clone(),
                    revocation_id: revocation_id.clone(),
                };
                async move { c.revoke_token(req).await }
            })
            .await
            .map_err(|e| refused(e, "revocation"))?;
        let until = SystemTime::UNIX_EPOCH + Duration::from_secs(reply.until_unix);
        if a.json {
            let json = serde_json::json!({
                "revoked": reply.revoked,
                "until_unix": reply.until_unix,
            });
            println!("{json}");
        } else {
            for id in &reply.revoked {
                println!(
                    "revoked {id} (kept until {})",
                    humantime::format_rfc3339_seconds(until)
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn mint_offline(
    root_key: &std::path::Path,
    subject: ringzero_policy::SpiffeId,
    a: MintArgs,
) -> Outcome {
    let key = super::keyfile::load_private(root_key).map_err(bad_input)?;
    let prefix = a.resource.unwrap_or_else(Resource::root);
    let mut operations = a.operations;
    operations.sort();
    operations.dedup();
    let req = MintRequest {
        subject,
        rights: operations
            .into_iter()
            .map(|op| Right::new(op, prefix.clone()))
            .collect(),
        ttl: a.ttl,
        bind_to_subject: a.bind_subject,
        bind_node: a.bind_node,
    };
    let t = token::mint(&key, &req, &Lifetime::default(), SystemTime::now()).map_err(bad_input)?;
    if prefix.is_root() {
        eprintln!("note: no --resource given: the token covers every resource");
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

fn attenuate(a: AttenuateArgs) -> Outcome {
    let t = read_secret(&a.token).map_err(bad_input)?;
    let att = Attenuation {
        ttl: a.ttl,
        operations: a.operations,
        resource: a.resource,
        bind_peer: a.bind_peer,
        bind_node: a.bind_node,
    };
    let narrowed = token::attenuate(&t, &att, SystemTime::now()).map_err(bad_input)?;
    println!("{narrowed}");
    Ok(ExitCode::SUCCESS)
}

fn inspect(a: InspectArgs) -> Outcome {
    let t = read_secret(&a.token).map_err(bad_input)?;
    let view = token::inspect(&t).map_err(bad_input)?;
    if a.json {
        let json = serde_json::to_string_pretty(&view).map_err(failed)?;
        println!("{json}");
    } else {
        print!("{view}");
    }
    Ok(ExitCode::SUCCESS)
}

const OFFLINE_NOTE: &str = "offline verification cannot see revocations";

fn verify(a: VerifyArgs) -> Outcome {
    let t = read_secret(&a.token).map_err(bad_input)?;
    let public = super::keyfile::load_public(&a.root_key).map_err(bad_input)?;
    // Malformed input is exit 2, not a denial: decode first.
    token::inspect(&t).map_err(bad_input)?;
    let keys = KeySet::single(public);
    let req = Request {
        operation: a.operation,
        resource: &a.resource,
        peer: a.peer.as_ref(),
        node: a.node.as_ref(),
        time: SystemTime::now(),
    };
    let none: HashSet<RevocationId> = HashSet::new();
    let decision = token::authorize(&t, &keys, &none, &req, Limits::default());
    if let Decision::Deny(d @ token::Denial::Malformed(_)) = &decision {
        return Err(bad_input_msg(d));
    }
    if a.json {
        let json = match &decision {
            Decision::Allow(g) => serde_json::json!({
                "decision": "allow",
                "subject": g.subject,
                "root_key_id": g.root_key_id,
                "revocation_ids": g.revocation_ids,
                "note": OFFLINE_NOTE,
            }),
            Decision::Deny(d) => serde_json::json!({
                "decision": "deny",
                "code": d.code(),
                "reason": d.to_string(),
                "note": OFFLINE_NOTE,
            }),
        };
        println!("{json}");
    } else {
        match &decision {
            Decision::Allow(g) => println!(
                "allowed: {} on {} (subject {})",
                a.operation,
                a.resource,
                g.subject.as_deref().unwrap_or("-")
            ),
            Decision::Deny(d) => println!("denied: {d}"),
        }
        eprintln!("note: {OFFLINE_NOTE}");
    }
    Ok(if decision.is_allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}
