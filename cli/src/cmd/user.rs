//! `ringzero user …` and `ringzero login`: users' profiles, invites and renewal.
//!
//! Keys are always generated here, on the machine that will use them: `user add` on the
//! admin's, `login --invite` on the user's. Only a CSR leaves the machine.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use ringzero_policy::join::JoinToken;
use ringzero_policy::svid::{csr_for, generate_key};
use ringzero_policy::{SpiffeId, TrustDomain};
use ringzero_proto::client::{ClientError, Profile, login_with_invite};
use ringzero_proto::pb;
use rustls_pki_types::CertificateDer;

use super::session::{Session, print_table, refused, runtime, session};
use crate::cli::{
    AdminProfileArgs, GlobalArgs, JsonArgs, LoginArgs, UserAddArgs, UserCommand, UserInviteArgs,
};
use crate::failure::{Failure, Outcome, bad_input, bad_input_msg, failed};
use crate::input::{read_secret, write_file};

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

pub(crate) fn login(global: &GlobalArgs, a: LoginArgs) -> Outcome {
    let rt = runtime()?;
    rt.block_on(async move {
        match a.invite.clone() {
            Some(invite) => login_invite(global, &invite, a).await,
            None => renew(global, a).await,
        }
    })
}

/// A fresh key and a CSR for it. The CSR's SPIFFE ID is a placeholder: the authority takes
/// only the public key and names the SVID itself.
/// Returns the key (PKCS#8 DER) and the CSR.
fn key_and_csr(td: &TrustDomain, name: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let key = generate_key()?;
    let id = SpiffeId::parse(&format!("spiffe://{td}/user/{name}"))?;
    let csr = csr_for(&key, &id)?;
    Ok((key.serialize_der(), csr))
}

fn ttl_seconds(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |d| d.as_secs())
}

/// A profile for `reply`'s credentials: the key made here, the bundle of the reply (which came
/// over TLS authenticated by the CAs the caller already trusts), and what the caller's own
/// profile `known` learned so far — its audit pins and the keys it knows are compromised —
/// merged with that bundle.
fn profile_from(
    td: &TrustDomain,
    authorities: Vec<String>,
    fallback_cas: &[CertificateDer<'static>],
    known: Option<&Profile>,
    reply: &pb::UserCredentials,
    key_pkcs8: &[u8],
) -> Profile {
    Profile::from_user_credentials(td, authorities, fallback_cas, known, reply, key_pkcs8)
}

fn write_profile(path: &Path, profile: &Profile, overwrite: bool) -> Result<(), Failure> {
    let text = profile.to_toml().map_err(|e| failed(anyhow!("{e}")))?;
    write_file(path, text.as_bytes(), 0o600, overwrite).map_err(failed)
}

fn expiry(expires_unix: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(expires_unix))
        .to_string()
}

fn trust_domain(s: &Session) -> Result<TrustDomain, Failure> {
    TrustDomain::new(&s.profile.trust_domain).map_err(|e| bad_input(anyhow!("profile: {e}")))
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
        role: a.role.clone(),
        namespace: a
            .namespace
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
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
    let cas = s
        .profile
        .bundle_certs()
        .map_err(|e| failed(anyhow!("{e}")))?;
    let profile = profile_from(
        &td,
        s.profile.authorities.clone(),
        &cas,
        Some(&s.profile),
        &reply,
        &key,
    );
    write_profile(&a.out, &profile, a.force)?;
    eprintln!(
        "user {} ({}): profile written to {} (0600), valid until {}",
        a.name,
        role_text(&a.role, a.namespace.as_ref().map(|n| n.as_str())),
        a.out.display(),
        expiry(reply.expires_unix)
    );
    println!("{}", a.out.display());
    Ok(ExitCode::SUCCESS)
}

fn role_text(role: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("role {role}, namespace {ns}"),
        None => format!("role {role}"),
    }
}

async fn invite(global: &GlobalArgs, a: UserInviteArgs) -> Outcome {
    let mut s = session(global)?;
    let req = pb::InviteUserRequest {
        name: a.name.to_string(),
        role: a.role.clone(),
        namespace: a
            .namespace
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
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
        role_text(&a.role, a.namespace.as_ref().map(|n| n.as_str())),
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
    let cas = s
        .profile
        .bundle_certs()
        .map_err(|e| failed(anyhow!("{e}")))?;
    let profile = profile_from(
        &td,
        s.profile.authorities.clone(),
        &cas,
        Some(&s.profile),
        &reply,
        &key,
    );
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

/// Break-glass: a fresh admin profile from the local node's admin socket (root only).
pub(crate) async fn admin_profile(a: AdminProfileArgs) -> Outcome {
    if !a.force && a.out.exists() {
        return Err(bad_input_msg(format!(
            "{} exists (use --force to replace it)",
            a.out.display()
        )));
    }
    let text = ringzero_authority::admin_socket::request_admin_profile(&a.data_dir, a.ttl)
        .await
        .map_err(failed)?;
    let profile = Profile::from_toml(&text)
        .map_err(|e| failed(anyhow!("the authority sent a bad profile: {e}")))?;
    write_profile(&a.out, &profile, a.force)?;
    eprintln!(
        "admin profile written to {} (0600); this was recorded in the audit log",
        a.out.display()
    );
    println!("{}", a.out.display());
    Ok(ExitCode::SUCCESS)
}
