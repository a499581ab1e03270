//! `ringzero login`: a first login with an invite, or renewing a profile before it expires.
//!
//! The key is generated here, on the user's machine; only a CSR leaves it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use ringzero_policy::SpiffeId;
use ringzero_policy::join::JoinToken;
use ringzero_policy::svid::{csr_for, generate_key};
use ringzero_proto::client::{ClientError, login_with_invite};
use ringzero_proto::pb;

use super::profile::{
    expiry, key_and_csr, profile_from, successor, trust_domain, ttl_seconds, write_profile,
};
use super::session::{refused, runtime, session};
use crate::args::parse_user_ttl;
use crate::cli::GlobalArgs;
use crate::failure::{Outcome, bad_input, bad_input_msg, failed};
use crate::input::read_secret;

/// The `login` help's closing text.
pub(crate) const HELP: &str = "\
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

pub(crate) fn run(global: &GlobalArgs, a: LoginArgs) -> Outcome {
    let rt = runtime()?;
    rt.block_on(async move {
        match a.invite.clone() {
            Some(invite) => login_invite(global, &invite, a).await,
            None => renew(global, a).await,
        }
    })
}

async fn login_invite(global: &GlobalArgs, invite: &str, a: LoginArgs) -> Outcome {
    let Some(out) = a.out.as_deref() else {
        return Err(bad_input_msg("--invite needs --out FILE"));
    };
    if global.authority.is_empty() {
        return Err(bad_input_msg(
            "--invite needs --authority ADDR[,ADDR…] (the addresses `user invite` printed)",
        ));
    }
    if !a.force && out.exists() {
        return Err(bad_input_msg(format!(
            "{} exists (use --force to replace it)",
            out.display()
        )));
    }
    let invite = JoinToken::parse(&read_secret(invite).map_err(bad_input)?)
        .map_err(|e| bad_input(anyhow!("invite: {e}")))?;
    let key = generate_key().map_err(failed)?;
    let login = login_with_invite(
        &global.authority,
        &invite,
        |td| {
            let id = SpiffeId::parse(&format!("spiffe://{td}/user/invitee"))
                .map_err(|e| e.to_string())?;
            csr_for(&key, &id).map_err(|e| e.to_string())
        },
        ttl_seconds(a.ttl),
    )
    .await
    .map_err(|e| match e {
        ClientError::PinMismatch(_) => failed(anyhow!("{e}")),
        other => refused(other, "login"),
    })?;
    let members: Vec<String> = login
        .credentials
        .bundle
        .as_ref()
        .map(|b| b.members.iter().map(|m| m.address.clone()).collect())
        .unwrap_or_default();
    let authorities = if members.is_empty() {
        global.authority.clone()
    } else {
        members
    };
    let profile = profile_from(
        &login.trust_domain,
        authorities,
        &login.cas,
        None,
        &login.credentials,
        &key.serialize_der(),
    );
    write_profile(out, &profile, a.force)?;
    eprintln!(
        "logged in: profile written to {} (0600), valid until {}; renew it before then with \
         `ringzero --profile {} login`",
        out.display(),
        expiry(login.credentials.expires_unix),
        out.display()
    );
    println!("{}", out.display());
    Ok(ExitCode::SUCCESS)
}

async fn renew(global: &GlobalArgs, a: LoginArgs) -> Outcome {
    let mut s = session(global)?;
    let td = trust_domain(&s)?;
    let (key, csr) = key_and_csr(&td, "renewing").map_err(failed)?;
    let req = pb::LoginRequest {
        invite_id: String::new(),
        invite_secret: Vec::new(),
        csr,
        ttl_seconds: ttl_seconds(a.ttl),
    };
    let reply = s
        .client
        .call(|mut c| {
            let req = req.clone();
            async move { c.login(req).await }
        })
        .await
        .map_err(|e| refused(e, "login"))?;
    let profile = successor(&s, &td, &reply, &key)?;
    // In place by default: an atomic rename, so the old profile stays whole until the new one
    // is complete.
    let (out, overwrite) = match &a.out {
        Some(p) => (p.as_path(), a.force),
        None => (s.path.as_path(), true),
    };
    if !overwrite && out.exists() {
        return Err(bad_input_msg(format!(
            "{} exists (use --force to replace it)",
            out.display()
        )));
    }
    write_profile(out, &profile, overwrite)?;
    eprintln!(
        "renewed: {} valid until {}",
        out.display(),
        expiry(reply.expires_unix)
    );
    Ok(ExitCode::SUCCESS)
}
