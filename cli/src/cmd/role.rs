//! `ringzero role apply|list|show`: custom roles from a TOML file, and the built-in ones.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use ringzero_policy::{NodeName, Operation, Resource, Role};
use ringzero_proto::pb;
use serde::Deserialize;
use toml::Spanned;

use super::session::{print_table, refused, runtime, session};
use crate::args::JsonArgs;
use crate::cli::GlobalArgs;
use crate::failure::{Failure, Outcome, bad_input, failed};
use crate::input::read_bounded;

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

pub(crate) fn run(global: &GlobalArgs, cmd: RoleCommand) -> Outcome {
    // Validation needs no cluster: a bad file is refused before any connection.
    let roles = match &cmd {
        RoleCommand::Apply(a) => Some(load(&a.file)?),
        _ => None,
    };
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            RoleCommand::Apply(a) => apply(global, &a, roles.unwrap_or_default()).await,
            RoleCommand::List(a) => list(global, a).await,
            RoleCommand::Show(a) => show(global, a).await,
        }
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    #[serde(default)]
    role: Vec<Spanned<RoleTable>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleTable {
    name: Spanned<String>,
    rights: Spanned<Vec<Spanned<RightTable>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RightTable {
    operation: Spanned<String>,
    resource: Spanned<String>,
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.get(..at).map_or(0, |s| s.matches('\n').count()) + 1
}

/// Reads and checks a role file; every problem is reported with its line (exit 2).
fn load(path: &Path) -> Result<Vec<pb::RoleInfo>, Failure> {
    let text = read_bounded(path).map_err(bad_input)?;
    parse(&text).map_err(|problems| {
        let shown: Vec<String> = problems
            .iter()
            .map(|p| format!("{}:{p}", path.display()))
            .collect();
        bad_input(anyhow!(
            "{} problem(s), nothing applied:\n{}",
            problems.len(),
            shown.join("\n")
        ))
    })
}

/// Parses a role file: `[[role]]` tables with a `name` and `rights` of `{ operation, resource }`.
/// Returns the roles, or every problem found as `LINE: message`.
fn parse(text: &str) -> Result<Vec<pb::RoleInfo>, Vec<String>> {
    let file: RoleFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        vec![format!("{line}: {}", e.message())]
    })?;
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut roles = Vec::new();
    if file.role.is_empty() {
        problems.push("1: no [[role]] table".to_owned());
    }
    for table in &file.role {
        let t = table.get_ref();
        let name = t.name.get_ref();
        let line = line_of(text, t.name.span().start);
        if Role::ALL.iter().any(|r| r.name() == name) {
            problems.push(format!(
                "{line}: role name {name:?} is a built-in role; choose another name"
            ));
        } else if let Err(e) = NodeName::parse(name) {
            problems.push(format!("{line}: role name {name:?}: {e}"));
        } else if let Some(first) = seen.get(name) {
            problems.push(format!(
                "{line}: role {name:?} is defined twice (first on line {first})"
            ));
        } else {
            seen.insert(name.clone(), line);
        }
        if t.rights.get_ref().is_empty() {
            problems.push(format!(
                "{}: role {name:?} has no rights",
                line_of(text, t.rights.span().start)
            ));
        }
        let mut rights = Vec::new();
        let mut distinct = BTreeSet::new();
        for r in t.rights.get_ref() {
            let r = r.get_ref();
            let op_line = line_of(text, r.operation.span().start);
            let op = r.operation.get_ref().parse::<Operation>();
            if let Err(e) = &op {
                problems.push(format!("{op_line}: {e}"));
            }
            let res_line = line_of(text, r.resource.span().start);
            let resource = Resource::parse(r.resource.get_ref());
            if let Err(e) = &resource {
                problems.push(format!(
                    "{res_line}: resource prefix {:?}: {e}",
                    r.resource.get_ref()
                ));
            }
            if let (Ok(op), Ok(resource)) = (op, resource) {
                if !distinct.insert((op, resource.clone())) {
                    problems.push(format!(
                        "{op_line}: role {name:?} gives {op} on {resource:?} twice"
                    ));
                }
                rights.push(pb::RoleRight {
                    operation: op.as_str().to_owned(),
                    resource: resource.as_str().to_owned(),
                });
            }
        }
        roles.push(pb::RoleInfo {
            name: name.clone(),
            rights,
            builtin: false,
            namespaced: false,
        });
    }
    if problems.is_empty() {
        Ok(roles)
    } else {
        Err(problems)
    }
}

async fn apply(global: &GlobalArgs, a: &RoleApplyArgs, roles: Vec<pb::RoleInfo>) -> Outcome {
    let mut s = session(global)?;
    let what = format!("roles of {}", a.file.display());
    let reply = s
        .client
        .call(|mut c| {
            let req = pb::ApplyRolesRequest {
                roles: roles.clone(),
            };
            async move { c.apply_roles(req).await }
        })
        .await
        .map_err(|e| refused(e, &what))?;
    for name in &reply.applied {
        println!("applied role {name}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn fetch(global: &GlobalArgs) -> Result<Vec<pb::RoleInfo>, Failure> {
    let mut s = session(global)?;
    let reply = s
        .client
        .call(|mut c| async move { c.list_roles(pb::ListRolesRequest {}).await })
        .await
        .map_err(|e| refused(e, "roles"))?;
    Ok(reply.roles)
}

/// A role's rights in one line, grouped by prefix: `entry:read, entry:write on ns/shop; …`.
fn summary(role: &pb::RoleInfo) -> String {
    let mut by_prefix: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &role.rights {
        by_prefix
            .entry(r.resource.as_str())
            .or_default()
            .push(r.operation.as_str());
    }
    by_prefix
        .into_iter()
        .map(|(prefix, ops)| format!("{} on {}", ops.join(", "), shown_prefix(prefix)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn shown_prefix(p: &str) -> &str {
    if p.is_empty() { "(all)" } else { p }
}

fn to_json(r: &pb::RoleInfo) -> serde_json::Value {
    serde_json::json!({
        "name": r.name,
        "builtin": r.builtin,
        "namespaced": r.namespaced,
        "rights": r.rights.iter().map(|x| serde_json::json!({
            "operation": x.operation,
            "resource": x.resource,
        })).collect::<Vec<_>>(),
    })
}

async fn list(global: &GlobalArgs, a: JsonArgs) -> Outcome {
    let roles = fetch(global).await?;
    if a.json {
        let json: Vec<_> = roles.iter().map(to_json).collect();
        println!("{}", serde_json::to_string_pretty(&json).map_err(failed)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![["NAME".to_owned(), "RIGHTS".to_owned()]];
    rows.extend(roles.iter().map(|r| {
        let name = if r.builtin {
            format!("{} (built-in)", r.name)
        } else {
            r.name.clone()
        };
        [name, summary(r)]
    }));
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

async fn show(global: &GlobalArgs, a: RoleShowArgs) -> Outcome {
    let roles = fetch(global).await?;
    let Some(role) = roles.into_iter().find(|r| r.name == a.name) else {
        return Err(failed(anyhow!("role {}: not found", a.name)));
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&role)).map_err(failed)?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let kind = match (role.builtin, role.namespaced) {
        (true, true) => "built-in, confined to the user's namespace",
        (true, false) => "built-in",
        _ => "custom",
    };
    println!("role {} ({kind})", role.name);
    let mut rows = vec![["OPERATION".to_owned(), "RESOURCE".to_owned()]];
    rows.extend(
        role.rights
            .iter()
            .map(|r| [r.operation.clone(), shown_prefix(&r.resource).to_owned()]),
    );
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_file_parses() {
        let text = r#"
[[role]]
name = "deployer"
rights = [ { operation = "sched:submit", resource = "ns/shop" }, { operation = "logs:read", resource = "ns/shop" } ]
"#;
        let roles = parse(text).unwrap_or_default();
        assert_eq!(roles.len(), 1);
        assert_eq!(roles[0].rights.len(), 2);
    }

    #[test]
    fn problems_carry_their_line() {
        let text = r#"[[role]]
name = "deployer"
rights = [ { operation = "sched:launch", resource = "ns/shop" } ]

[[role]]
name = "admin"
rights = [ { operation = "logs:read", resource = "ns//x" } ]

[[role]]
name = "deployer"
rights = [ { operation = "logs:read", resource = "ns" } ]
"#;
        let problems = parse(text).err().unwrap_or_default();
        let joined = problems.join("\n");
        assert!(joined.contains("3: unknown operation"), "{joined}");
        assert!(
            joined.contains("6: role name \"admin\" is a built-in"),
            "{joined}"
        );
        assert!(joined.contains("7: resource prefix"), "{joined}");
        assert!(
            joined.contains("10: role \"deployer\" is defined twice (first on line 2)"),
            "{joined}"
        );
    }

    #[test]
    fn syntax_errors_carry_their_line() {
        let text = "[[role]]\nname = \"x\"\nrights = [ { operation = \"logs:read\" } ]\n";
        let problems = parse(text).err().unwrap_or_default();
        assert!(
            problems.first().is_some_and(|p| p.starts_with("3: ")),
            "{problems:?}"
        );
    }
}
