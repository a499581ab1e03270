//! `ringzero mesh …`: the mesh sidecar beside one workload (`sidecar`: the data plane is
//! `ringzero_mesh`; this file only reads the flags and runs it until SIGTERM), and the mesh
//! policy in the authority (`allow`, `deny`, `policy list`).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use ringzero_policy::SpiffeIdPattern;
use ringzero_proto::pb;

use super::session::{print_table, refused, runtime, session};
use crate::cli::GlobalArgs;
use crate::failure::Outcome;

#[derive(Debug, Subcommand)]
pub(crate) enum MeshCommand {
    /// Run a sidecar: mTLS in (terminate, check the caller's SPIFFE ID, forward to the local
    /// app) and out (originate, require the peer's SPIFFE ID), identity from the Workload API.
    #[command(after_help = SIDECAR_HELP)]
    Sidecar(ringzero_mesh::config::Args),
    /// Allow workloads matching --from to connect to workloads matching --to (an authority
    /// policy: every sidecar of a --to workload admits them within a second).
    #[command(after_help = "\
Needs mesh:policy on the path of --to: spiffe://TD/ns/shop/db is ns/shop/db, spiffe://TD/ns/shop/*
is ns/shop (a developer holds it on its own namespace). --to must name workloads under ns/…;
patterns are exact IDs or prefixes by whole segments (spiffe://TD/ns/shop/* admits
…/ns/shop/web, never …/ns/shopping). Audited like every write. A sidecar applies the policies of
its own identity, beside its local --allow rules (either one admits a caller).

Examples:
  ringzero mesh allow --to spiffe://example.org/ns/shop/db --from spiffe://example.org/ns/shop/web
  ringzero mesh allow --to 'spiffe://example.org/ns/shop/*' --from 'spiffe://example.org/ns/shop/*'")]
    Allow(MeshRuleArgs),
    /// Remove an allow rule given with `mesh allow` (the same --to and --from): new
    /// connections it admitted are refused within a second.
    #[command(after_help = "\
Needs mesh:policy on the path of --to. Live connections are not cut; they end at the sidecar's
--max-conn-age at the latest.

Examples:
  ringzero mesh deny --to spiffe://example.org/ns/shop/db --from spiffe://example.org/ns/shop/web")]
    Deny(MeshRuleArgs),
    /// Mesh policies in the authority.
    #[command(subcommand)]
    Policy(MeshPolicyCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum MeshPolicyCommand {
    /// List the allow rules (those under --scope only; needs mesh:read there).
    #[command(after_help = "\
Examples:
  ringzero mesh policy list
  ringzero mesh policy list --scope ns/shop --json")]
    List(MeshListArgs),
}

#[derive(Debug, Args)]
pub(crate) struct MeshRuleArgs {
    /// The workloads protected: spiffe://TD/ns/NS/ID or spiffe://TD/ns/NS/PREFIX/*.
    #[arg(long, value_name = "ID|PREFIX/*", value_parser = parse_pattern)]
    pub(crate) to: SpiffeIdPattern,
    /// Who may connect to them: an exact ID, or a prefix ending in /*.
    #[arg(long, value_name = "ID|PREFIX/*", value_parser = parse_pattern)]
    pub(crate) from: SpiffeIdPattern,
}

#[derive(Debug, Args)]
pub(crate) struct MeshListArgs {
    /// Only the rules whose --to lies under this resource path (e.g. ns/shop).
    #[arg(long, value_name = "PATH", default_value = "")]
    pub(crate) scope: String,
    /// Print a JSON array.
    #[arg(long)]
    pub(crate) json: bool,
}

fn parse_pattern(s: &str) -> Result<SpiffeIdPattern, String> {
    SpiffeIdPattern::parse(s).map_err(|e| e.to_string())
}

const SIDECAR_HELP: &str = "\
Runs under the workload's uid, beside it: the sidecar gets that uid's SVID and bundle from the
local agent and follows their rotation; new certificates apply to new handshakes, live
connections are kept. Deny by default: an inbound listener needs an --allow rule (or an
explicit --allow-from-authority or --allow-trust-domain), and its target must be a loopback
address (or --unsafe-target).
Authority policy: beside a ringzero agent, the policies `ringzero mesh allow` gives for this
workload's SPIFFE ID also admit callers (a local --allow OR a policy), and the authority's
revoked serials are refused; changes apply to new connections within a second. With
--allow-from-authority and no --allow, only policies admit anyone (no one until one does; no
one at all beside an agent without ringzero's extension, such as SPIRE's, where only local
rules exist). --allow-trust-domain is never implied.
A connection ends at --max-conn-age, at its peer certificate's expiry, or when the peer's
serial is revoked. SIGTERM drains: listeners close, live connections get --drain-timeout.
Prints `mesh ready: SPIFFE-ID, inbound A…, outbound B…, admin C` on stderr once the first SVID
is held and the listeners serve.

Examples:
  # web's sidecar: its app calls 127.0.0.1:9000 to reach db as spiffe://TD/ns/shop/db
  ringzero mesh sidecar --outbound 127.0.0.1:9000=10.0.0.7:8443@spiffe://TD/ns/shop/db
  # db's sidecar: admit only web, forward to the database on localhost
  ringzero mesh sidecar --inbound 0.0.0.0:8443=127.0.0.1:5432 \\
      --allow spiffe://TD/ns/shop/web --admin 127.0.0.1:9901
  ringzero mesh sidecar --config /etc/ringzero/mesh.toml --proxy-protocol
  # db's sidecar, admitting whom `ringzero mesh allow --to spiffe://TD/ns/shop/db` names
  ringzero mesh sidecar --inbound 0.0.0.0:8443=127.0.0.1:5432 --allow-from-authority";

pub(crate) fn run(global: &GlobalArgs, cmd: MeshCommand) -> Outcome {
    match cmd {
        MeshCommand::Sidecar(args) => crate::sidecar::run(args, global.log_json),
        MeshCommand::Allow(a) => runtime()?.block_on(write(global, a, true)),
        MeshCommand::Deny(a) => runtime()?.block_on(write(global, a, false)),
        MeshCommand::Policy(MeshPolicyCommand::List(a)) => runtime()?.block_on(list(global, a)),
    }
}

/// `mesh allow` (`allow`) or `mesh deny`.
async fn write(global: &GlobalArgs, a: MeshRuleArgs, allow: bool) -> Outcome {
    let req = pb::MeshPolicyRequest {
        to: a.to.to_string(),
        from: a.from.to_string(),
    };
    let what = format!("mesh rule {} -> {}", a.from, a.to);
    let mut s = session(global)?;
    s.client
        .call(|mut c| {
            let req = req.clone();
            async move {
                if allow {
                    c.mesh_allow(req).await
                } else {
                    c.mesh_deny(req).await
                }
            }
        })
        .await
        .map_err(|e| refused(e, &what))?;
    s.refresh().await;
    if allow {
        eprintln!("allowed: {} may connect to {}", a.from, a.to);
    } else {
        eprintln!(
            "removed: {} may no longer connect to {} (unless another rule allows it)",
            a.from, a.to
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(global: &GlobalArgs, a: MeshListArgs) -> Outcome {
    let mut s = session(global)?;
    let scope = a.scope.clone();
    let reply = s
        .client
        .call(|mut c| {
            let scope = scope.clone();
            async move {
                c.list_mesh_policies(pb::ListMeshPoliciesRequest { scope })
                    .await
            }
        })
        .await
        .map_err(|e| refused(e, "mesh policy list"))?;
    s.refresh().await;
    if a.json {
        println!(
            "{}",
            serde_json::Value::Array(reply.policies.iter().map(policy_json).collect())
        );
    } else {
        print_table(&policy_rows(&reply.policies));
    }
    Ok(ExitCode::SUCCESS)
}

fn policy_json(p: &pb::MeshPolicy) -> serde_json::Value {
    serde_json::json!({
        "to": p.to,
        "from": p.from,
        "created_ms": p.created_ms,
        "actor": p.actor,
    })
}

fn policy_rows(policies: &[pb::MeshPolicy]) -> Vec<[String; 4]> {
    let mut rows = vec![[
        "TO".to_owned(),
        "FROM".to_owned(),
        "CREATED".to_owned(),
        "BY".to_owned(),
    ]];
    for p in policies {
        rows.push([
            p.to.clone(),
            p.from.clone(),
            super::session::rfc3339_ms(p.created_ms),
            p.actor.clone(),
        ]);
    }
    rows
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn policy_rows_and_json() {
        let p = pb::MeshPolicy {
            to: "spiffe://td/ns/shop/db".into(),
            from: "spiffe://td/ns/shop/*".into(),
            created_ms: 0,
            actor: "spiffe://td/user/carol".into(),
        };
        let rows = policy_rows(std::slice::from_ref(&p));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1][2], "1970-01-01T00:00:00Z");
        assert_eq!(policy_json(&p)["from"], "spiffe://td/ns/shop/*");
        assert!(parse_pattern("spiffe://td/ns/shop/*").is_ok());
        assert!(parse_pattern("ns/shop").is_err());
    }
}
