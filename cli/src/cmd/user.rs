//! `ringzero user …`: add users (writing their profile), invite, list, remove, suspend them.
//!
//! Keys are always generated here, on the machine that will use them: `user add` on the
//! admin's, `login --invite` (see [`super::login`]) on the user's. Only a CSR leaves the machine.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use ringzero_policy::NodeName;
use ringzero_proto::pb;

use super::profile::{expiry, key_and_csr, successor, trust_domain, ttl_seconds, write_profile};
use super::session::{print_table, refused, runtime, session};
use crate::args::{JsonArgs, parse_join_ttl, parse_user_ttl};
use crate::cli::GlobalArgs;
use crate::failure::{Outcome, bad_input_msg, failed};

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
    #[command(flatten)]
    pub(crate) grant: RoleGrant,
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
    #[command(flatten)]
    pub(crate) grant: RoleGrant,
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

/// The role a user is given, and its namespace.
#[derive(Debug, Args)]
pub(crate) struct RoleGrant {
    /// A built-in role (admin, operator, developer, auditor) or a custom one.
    #[arg(long, value_name = "ROLE")]
    pub(crate) role: String,
    /// The namespace, for roles confined to one (developer).
    #[arg(long, value_name = "NS")]
    pub(crate) namespace: Option<NodeName>,
}

impl RoleGrant {
    /// The namespace as the wire carries it: empty when none.
    fn wire_namespace(&self) -> String {
        self.namespace
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

impl fmt::Display for RoleGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "role {}, namespace {ns}", self.role),
            None => write!(f, "role {}", self.role),
        }
    }
}

pub(crate) fn run(global: &GlobalArgs, cmd: UserCommand) -> Outcome {
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            UserCommand::Add(a) => add(global, a).await,
            UserCommand::Invite(a) => invite(global, a).await,
            UserCommand::List(a) => list(global, a).await,
            UserCommand::Remove(a) => remove(global, a.name.as_str()).await,
            UserCommand::Suspend(a) => suspend(global, a.name.as_str(), true).await,
            UserCommand::Resume(a) => suspend(global, a.name.as_str(), false).await,
        }
    })
}

async fn add(global: &GlobalArgs, a: UserAddArgs) -> Outcome {
    if !a.force && a.out.exists() {
        return Err(bad_input_msg(format!(
            "{} exists (use --force to replace it)",
            a.out.display()
        )));
    }
    let mut s = session(global)?;
    let td = trust_domain(&s)?;
    let (key, csr) = key_and_csr(&td, a.name.as_str()).map_err(failed)?;
    let req = pb::AddUserRequest {
        name: a.name.to_string(),
        role: a.grant.role.clone(),
        namespace: a.grant.wire_namespace(),
        csr,
        ttl_seconds: ttl_seconds(a.ttl),
    };
    let reply = s
        .client
        .call(|mut c| {
            let req = req.clone();
            async move { c.add_user(req).await }
        })
        .await
        .map_err(|e| refused(e, &format!("user {}", a.name)))?;
    s.refresh().await;
    let profile = successor(&s, &td, &reply, &key)?;
    write_profile(&a.out, &profile, a.force)?;
    eprintln!(
        "user {} ({}): profile written to {} (0600), valid until {}",
        a.name,
        a.grant,
        a.out.display(),
        expiry(reply.expires_unix)
    );
    println!("{}", a.out.display());
    Ok(ExitCode::SUCCESS)
}

async fn invite(global: &GlobalArgs, a: UserInviteArgs) -> Outcome {
    let mut s = session(global)?;
    let req = pb::InviteUserRequest {
        name: a.name.to_string(),
        role: a.grant.role.clone(),
        namespace: a.grant.wire_namespace(),
        ttl_seconds: a.ttl.as_secs(),
    };
    let reply = s
        .client
        .call(|mut c| {
            let req = req.clone();
            async move { c.invite_user(req).await }
        })
        .await
        .map_err(|e| refused(e, &format!("invite for user {}", a.name)))?;
    s.refresh().await;
    let authorities = if global.authority.is_empty() {
        s.profile.authorities.join(",")
    } else {
        global.authority.join(",")
    };
    eprintln!(
        "invite for user {} ({}): one use, expires {} (in {}); it is the last line of stdout.",
        a.name,
        a.grant,
        expiry(reply.expires_unix),
        humantime::format_duration(a.ttl)
    );
    eprintln!(
        "Send it to {} privately; with it saved in {}.invite, they run:",
        a.name, a.name
    );
    eprintln!(
        "  ringzero login --invite @{}.invite --authority {authorities} --out {}.profile",
        a.name, a.name
    );
    println!("{}", reply.invite);
    Ok(ExitCode::SUCCESS)
}

async fn list(global: &GlobalArgs, a: JsonArgs) -> Outcome {
    let mut s = session(global)?;
    let reply = s
        .client
        .call(|mut c| async move { c.list_users(pb::ListUsersRequest {}).await })
        .await
        .map_err(|e| refused(e, "user list"))?;
    s.refresh().await;
    if a.json {
        let users: serde_json::Value = reply
            .users
            .iter()
            .map(|u| {
                serde_json::json!({
                    "name": u.name,
                    "role": u.role,
                    "namespace": (!u.namespace.is_empty()).then_some(&u.namespace),
                    "suspended": u.suspended,
                })
            })
            .collect();
        println!("{users}");
    } else {
        let mut rows = vec![[
            "NAME".to_owned(),
            "ROLE".into(),
            "NAMESPACE".into(),
            "STATE".into(),
        ]];
        for u in &reply.users {
            let ns = if u.namespace.is_empty() {
                "-".to_owned()
            } else {
                u.namespace.clone()
            };
            let state = if u.suspended { "suspended" } else { "active" };
            rows.push([u.name.clone(), u.role.clone(), ns, state.into()]);
        }
        print_table(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

async fn remove(global: &GlobalArgs, name: &str) -> Outcome {
    let mut s = session(global)?;
    let req = pb::RemoveUserRequest {
        name: name.to_owned(),
    };
    s.client
        .call(|mut c| {
            let req = req.clone();
            async move { c.remove_user(req).await }
        })
        .await
        .map_err(|e| refused(e, &format!("user {name}")))?;
    s.refresh().await;
    eprintln!("user {name} removed: its SVIDs and capabilities are revoked");
    Ok(ExitCode::SUCCESS)
}

async fn suspend(global: &GlobalArgs, name: &str, suspended: bool) -> Outcome {
    let mut s = session(global)?;
    let req = pb::SuspendUserRequest {
        name: name.to_owned(),
        suspended,
    };
    s.client
        .call(|mut c| {
            let req = req.clone();
            async move { c.suspend_user(req).await }
        })
        .await
        .map_err(|e| refused(e, &format!("user {name}")))?;
    s.refresh().await;
    if suspended {
        eprintln!(
            "user {name} suspended: its certificates, renewals and delegated tokens open nothing \
             until `ringzero user resume {name}`"
        );
    } else {
        eprintln!("user {name} resumed");
    }
    Ok(ExitCode::SUCCESS)
}
