//! `ringzero node …`: enroll agent nodes, list, evict and ban them.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use ringzero_policy::NodeName;
use ringzero_proto::pb;

use super::session::{Session, print_table, refused, runtime, session};
use crate::args::{JsonArgs, parse_join_ttl};
use crate::cli::GlobalArgs;
use crate::failure::Outcome;

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
    /// Drain a node: no new allocation is placed on it (the scheduler moves what runs there).
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile node drain n7
  ringzero node drain n7 --undo")]
    Drain(NodeDrainArgs),
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

#[derive(Debug, Args)]
pub(crate) struct NodeDrainArgs {
    /// The node name.
    #[arg(value_name = "NAME")]
    pub(crate) name: NodeName,
    /// Undo the drain.
    #[arg(long)]
    pub(crate) undo: bool,
}

pub(crate) fn run(global: &GlobalArgs, cmd: NodeCommand) -> Outcome {
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            NodeCommand::Token(a) => token(global, a).await,
            NodeCommand::List(a) => list(global, a).await,
            NodeCommand::Evict(a) => set_status(global, a.name, Status::Evicted).await,
            NodeCommand::Ban(a) => set_status(global, a.name, Status::Banned).await,
            NodeCommand::Drain(a) => drain(global, a).await,
        }
    })
}

async fn token(global: &GlobalArgs, a: NodeTokenArgs) -> Outcome {
    let mut s = session(global)?;
    let (name, ttl) = (a.name.as_str().to_owned(), a.ttl);
    let reply = s
        .client
        .call(|mut c| {
            let node_name = name.clone();
            async move {
                c.create_join_token(pb::CreateJoinTokenRequest {
                    purpose: "agent".into(),
                    node_name,
                    ttl_seconds: ttl.as_secs(),
                    namespace: String::new(),
                })
                .await
            }
        })
        .await
        .map_err(|e| refused(e, &format!("join token for node {}", a.name)))?;
    s.refresh().await;
    for line in enroll_instructions(&a.name, ttl, reply.expires_unix, &addresses(global, &s)) {
        eprintln!("{line}");
    }
    println!("{}", reply.token);
    Ok(ExitCode::SUCCESS)
}

/// The authority addresses to tell a new agent: the overrides if given, else the profile's
/// (refreshed from the cluster's member list).
fn addresses(global: &GlobalArgs, s: &Session) -> Vec<String> {
    if global.authority.is_empty() {
        s.profile.authorities.clone()
    } else {
        global.authority.clone()
    }
}

/// What an operator does with a fresh join token. The secret itself is left out: it goes to
/// stdout only, so that capturing stdout and logging stderr never copies it into a log.
fn enroll_instructions(
    name: &NodeName,
    ttl: Duration,
    expires_unix: u64,
    authorities: &[String],
) -> Vec<String> {
    let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(expires_unix);
    let authority = if authorities.is_empty() {
        "ADDR".to_owned()
    } else {
        authorities.join(",")
    };
    vec![
        format!(
            "join token for node {name}: one use, expires {} (in {}); it is the last line of stdout.",
            humantime::format_rfc3339_seconds(expires),
            humantime::format_duration(ttl),
        ),
        format!("On the node, with the token saved in {name}.token (mode 0600), run:"),
        format!(
            "  ringzero agent run --join-token @{name}.token --authority {authority} --data-dir /var/lib/ringzero/agent"
        ),
    ]
}

async fn list(global: &GlobalArgs, a: JsonArgs) -> Outcome {
    let mut s = session(global)?;
    let reply = s
        .client
        .call(|mut c| async move { c.list_nodes(pb::ListNodesRequest {}).await })
        .await
        .map_err(|e| refused(e, "node list"))?;
    s.refresh().await;
    if a.json {
        println!("{}", nodes_json(&reply.nodes));
    } else {
        print_table(&node_rows(&reply.nodes));
    }
    Ok(ExitCode::SUCCESS)
}

fn nodes_json(nodes: &[pb::NodeInfo]) -> serde_json::Value {
    nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "name": n.name,
                "status": n.status,
                "since_ms": n.since_ms,
            })
        })
        .collect()
}

fn node_rows(nodes: &[pb::NodeInfo]) -> Vec<[String; 3]> {
    let mut rows = vec![["NAME".to_owned(), "STATUS".into(), "SINCE".into()]];
    for n in nodes {
        rows.push([n.name.clone(), n.status.clone(), since(n.since_ms)]);
    }
    rows
}

use super::session::format_ms as since;

#[derive(Debug, Clone, Copy)]
enum Status {
    Evicted,
    Banned,
}

impl Status {
    fn wire(self) -> &'static str {
        match self {
            Status::Evicted => "evicted",
            Status::Banned => "banned",
        }
    }
}

async fn drain(global: &GlobalArgs, a: NodeDrainArgs) -> Outcome {
    let mut s = session(global)?;
    let (name, drain) = (a.name.as_str().to_owned(), !a.undo);
    s.client
        .call(|mut c| {
            let name = name.clone();
            async move {
                c.set_node_drain(pb::SetNodeDrainRequest { name, drain })
                    .await
            }
        })
        .await
        .map_err(|e| refused(e, &format!("node {name}")))?;
    s.refresh().await;
    if drain {
        eprintln!("drained node {name}: no new allocation is placed on it");
    } else {
        eprintln!("node {name} takes allocations again");
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_status(global: &GlobalArgs, name: NodeName, status: Status) -> Outcome {
    let mut s = session(global)?;
    let wire_name = name.as_str().to_owned();
    s.client
        .call(|mut c| {
            let name = wire_name.clone();
            async move {
                c.set_node_status(pb::SetNodeStatusRequest {
                    name,
                    status: status.wire().into(),
                })
                .await
            }
        })
        .await
        .map_err(|e| refused(e, &format!("node {name}")))?;
    s.refresh().await;
    match status {
        Status::Evicted => eprintln!(
            "evicted node {name}: it can no longer renew and its certificates are revoked; \
             it may enroll again with a new `ringzero node token --name {name}`"
        ),
        Status::Banned => eprintln!(
            "banned node {name}: it can no longer renew, its certificates are revoked, \
             and the name can never enroll again"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::cmd::session::render_table;

    fn parse(args: &[&str]) -> Result<NodeCommand, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("ringzero").chain(args.iter().copied()))?;
        match cli.command {
            Command::Node(c) => Ok(c),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn token_takes_a_node_name_and_a_bounded_ttl() {
        let NodeCommand::Token(a) = parse(&["node", "token", "--name", "n7"]).unwrap() else {
            panic!("not token");
        };
        assert_eq!(a.name.as_str(), "n7");
        assert_eq!(a.ttl, Duration::from_secs(600));
        let NodeCommand::Token(a) =
            parse(&["node", "token", "--name", "n7", "--ttl", "24h"]).unwrap()
        else {
            panic!("not token");
        };
        assert_eq!(a.ttl, Duration::from_secs(86_400));
        for bad in [
            vec!["node", "token", "--name", "a/b"],
            vec!["node", "token", "--name", ""],
            vec!["node", "token", "--name", ".."],
            vec!["node", "token", "--name", "n7", "--ttl", "25h"],
            vec!["node", "token", "--name", "n7", "--ttl", "0s"],
            vec!["node", "token", "--name", "n7", "--ttl", "soon"],
            vec!["node", "token"],
        ] {
            let e = parse(&bad).expect_err(&format!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn evict_and_ban_validate_the_name() {
        assert!(matches!(
            parse(&["node", "evict", "n7"]).unwrap(),
            NodeCommand::Evict(_)
        ));
        assert!(matches!(
            parse(&["node", "ban", "n7"]).unwrap(),
            NodeCommand::Ban(_)
        ));
        assert_eq!(parse(&["node", "ban", "x y"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn instructions_name_the_command_and_never_the_secret() {
        let name = NodeName::parse("n7").unwrap();
        let lines = enroll_instructions(
            &name,
            Duration::from_secs(600),
            1_800_000_000,
            &["10.0.0.1:7000".into(), "10.0.0.2:7000".into()],
        );
        let text = lines.join("\n");
        assert!(text.contains("one use"), "{text}");
        assert!(text.contains("2027-01-15T08:00:00Z"), "{text}");
        assert!(text.contains("10m"), "{text}");
        assert!(
            text.contains(
                "ringzero agent run --join-token @n7.token --authority 10.0.0.1:7000,10.0.0.2:7000"
            ),
            "{text}"
        );
    }

    #[test]
    fn node_table_is_aligned() {
        let nodes = vec![
            pb::NodeInfo {
                name: "n7".into(),
                status: "active".into(),
                since_ms: 1_800_000_000_000,
                drained: false,
            },
            pb::NodeInfo {
                name: "worker-long-name".into(),
                status: "banned".into(),
                since_ms: 0,
                drained: false,
            },
        ];
        assert_eq!(
            render_table(&node_rows(&nodes)),
            vec![
                "NAME              STATUS  SINCE",
                "n7                active  2027-01-15T08:00:00Z",
                "worker-long-name  banned  -",
            ]
        );
        let json = nodes_json(&nodes);
        assert_eq!(json[0]["name"], "n7");
        assert_eq!(json[1]["status"], "banned");
        assert_eq!(json.as_array().map(Vec::len), Some(2));
    }
}
