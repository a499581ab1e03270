//! `ringzero authority …` and `ringzero bundle show`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use ringzero_authority::node::{self, FirstContact};
use ringzero_policy::svid::pem_encode;
use ringzero_proto::client::Profile;
use ringzero_proto::pb;

use super::session::{call_failed, print_table, runtime, session};
use crate::cli::{
    AuthorityCommand, BootstrapArgs, BundleCommand, BundleFormat, GlobalArgs, JoinArgs, JsonArgs,
    RemoveArgs,
};
use crate::daemon::{bind, init_logging, shutdown_signal};
use crate::failure::{EXIT_FAILED, Outcome, bad_input, bad_input_msg, failed};
use crate::input::read_secret;

pub(crate) fn run(global: &GlobalArgs, cmd: AuthorityCommand) -> Outcome {
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            AuthorityCommand::Bootstrap(a) => bootstrap(a).await,
            AuthorityCommand::Run(a) => serve(global, &a.data_dir).await,
            AuthorityCommand::Join(a) => join(global, a).await,
            AuthorityCommand::JoinToken(a) => join_token(global, a.ttl).await,
            AuthorityCommand::Members(a) => members(global, a).await,
            AuthorityCommand::Remove(a) => remove(global, a).await,
            AuthorityCommand::Status(a) => status(global, a).await,
            AuthorityCommand::AdminProfile(a) => super::user::admin_profile(a).await,
        }
    })
}

pub(crate) fn bundle(global: &GlobalArgs, cmd: BundleCommand) -> Outcome {
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            BundleCommand::Show(a) => bundle_show(global, a.format).await,
        }
    })
}

async fn bootstrap(a: BootstrapArgs) -> Outcome {
    let profile = node::bootstrap(&a.trust_domain, &a.data_dir, &a.listen, a.admin_ttl)
        .await
        .map_err(failed)?;
    eprintln!(
        "initialized authority node 1 of trust domain {} in {}",
        a.trust_domain,
        a.data_dir.display()
    );
    eprintln!(
        "admin profile: {} (mode 0600; the admin credential expires in {})",
        profile.display(),
        humantime::format_duration(a.admin_ttl)
    );
    eprintln!();
    eprintln!("next:");
    eprintln!(
        "  ringzero authority run --data-dir {}",
        a.data_dir.display()
    );
    eprintln!("  export RINGZERO_PROFILE={}", profile.display());
    eprintln!("  ringzero authority status");
    eprintln!("  ringzero authority join-token            # then, on another machine:");
    eprintln!(
        "  ringzero authority join --peer {} --token @TOKENFILE --data-dir D --listen ADDR",
        a.listen
    );
    println!("{}", profile.display());
    Ok(ExitCode::SUCCESS)
}

async fn serve(global: &GlobalArgs, dir: &Path) -> Outcome {
    init_logging(global.log_json);
    let listen = node::listen_address(dir).map_err(bad_input)?;
    let listener = bind(&listen).await?;
    tracing::info!(%listen, data_dir = %dir.display(), "authority node serving");
    node::run(dir, listener, shutdown_signal())
        .await
        .map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}

async fn join(global: &GlobalArgs, a: JoinArgs) -> Outcome {
    init_logging(global.log_json);
    let text = read_secret(&a.token).map_err(bad_input)?;
    let token = ringzero_policy::join::JoinToken::parse(&text).map_err(bad_input)?;
    let contact = match (&a.bundle, a.insecure_skip_pin) {
        (Some(_), true) => {
            return Err(bad_input_msg(
                "--bundle and --insecure-skip-pin exclude each other",
            ));
        }
        (Some(path), false) => FirstContact::Bundle(token, super::session::bundle_file(path)?),
        (None, true) => FirstContact::InsecureNoPin(token),
        (None, false) => FirstContact::Pinned(token),
    };
    let listener = bind(&a.listen).await?;
    tracing::info!(peer = %a.peer, listen = %a.listen, "joining");
    node::join(
        &a.data_dir,
        &a.listen,
        listener,
        &a.peer,
        contact,
        shutdown_signal(),
    )
    .await
    .map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}

async fn join_token(global: &GlobalArgs, ttl: Duration) -> Outcome {
    let mut s = session(global)?;
    let reply = s
        .client
        .call(|mut c| async move {
            c.create_join_token(pb::CreateJoinTokenRequest {
                purpose: "authority".into(),
                node_name: String::new(),
                ttl_seconds: ttl.as_secs(),
            })
            .await
        })
        .await
        .map_err(call_failed)?;
    s.refresh().await;
    eprintln!(
        "join token for a new authority node; one use, expires at unix time {}",
        reply.expires_unix
    );
    println!("{}", reply.token);
    Ok(ExitCode::SUCCESS)
}

async fn members(global: &GlobalArgs, a: JsonArgs) -> Outcome {
    let mut s = session(global)?;
    let reply = s
        .client
        .call(|mut c| async move { c.members(pb::MembersRequest {}).await })
        .await
        .map_err(call_failed)?;
    s.refresh().await;
    if a.json {
        let rows: Vec<serde_json::Value> = reply
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.node_id,
                    "address": m.address,
                    "role": m.role,
                    "state": m.state,
                    "last_contact_ms": m.last_contact_ms,
                    "matched_index": m.matched_index,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "ID".to_owned(),
        "ADDRESS".into(),
        "ROLE".into(),
        "STATE".into(),
        "LAST_CONTACT".into(),
        "MATCHED_INDEX".into(),
    ]];
    for m in &reply.members {
        rows.push([
            m.node_id.to_string(),
            m.address.clone(),
            m.role.clone(),
            m.state.clone(),
            m.last_contact_ms.map_or("-".into(), |ms| format!("{ms}ms")),
            m.matched_index.map_or("-".into(), |i| i.to_string()),
        ]);
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

async fn remove(global: &GlobalArgs, a: RemoveArgs) -> Outcome {
    let mut s = session(global)?;
    let (node_id, compromised) = (a.node, a.compromised);
    s.client
        .call(|mut c| async move {
            c.remove_member(pb::RemoveMemberRequest {
                node_id,
                compromised,
            })
            .await
        })
        .await
        .map_err(call_failed)?;
    s.refresh().await;
    if compromised {
        eprintln!(
            "removed node {node_id}; its keys are published as compromised and trusted nowhere \
             any more: everything it issued must be reissued"
        );
    } else {
        eprintln!(
            "removed node {node_id}: its keys are retired. Nothing they sign from now on opens \
             anything on the authority; what node {node_id} issued before stays valid until it \
             expires, and node {node_id} deletes its own keys as soon as it learns it was \
             removed.\n\
             If node {node_id}'s machine, disk or backups may be in someone else's hands (lost, \
             stolen, breached, or decommissioned without wiping), run \
             `ringzero authority remove {node_id} --compromised` now: its keys are then trusted \
             nowhere at once, and everything it issued must be reissued."
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(global: &GlobalArgs, a: JsonArgs) -> Outcome {
    let mut s = session(global)?;
    let reply = s
        .client
        .call(|mut c| async move { c.status(pb::StatusRequest {}).await })
        .await
        .map_err(call_failed)?;
    s.refresh().await;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "node_id": reply.node_id,
                "leader_id": reply.leader_id,
                "leader_address": reply.leader_address,
                "term": reply.term,
                "last_applied": reply.last_applied,
                "writable": reply.writable,
            })
        );
    } else {
        println!(
            "leader: node {} at {} (term {}, applied {}), {}",
            reply.leader_id.map_or("-".into(), |l| l.to_string()),
            reply.leader_address,
            reply.term,
            reply.last_applied,
            if reply.writable {
                "accepting writes"
            } else {
                "NOT accepting writes"
            }
        );
    }
    Ok(if reply.writable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

async fn bundle_show(global: &GlobalArgs, format: BundleFormat) -> Outcome {
    let mut s = session(global)?;
    let bundle = s
        .client
        .call(|mut c| async move { c.get_bundle(pb::GetBundleRequest {}).await })
        .await
        .map_err(call_failed)?;
    // The refreshed profile knows every key marked compromised, in this bundle or before.
    s.refresh().await;
    match format {
        BundleFormat::Pem => {
            for c in s.profile.trusted_cas(&bundle) {
                print!("{}", pem_encode("CERTIFICATE", &c));
            }
        }
        BundleFormat::Jwks => println!("{}", jwks(&bundle, &s.profile).map_err(failed)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// The SPIFFE bundle format: a JWK set with `use: x509-svid` keys (carrying `x5c`) and
/// `use: jwt-svid` keys. Compromised keys are not in it: a SPIFFE bundle lists usable keys
/// only (it has no status to mark them with).
fn jwks(b: &pb::Bundle, profile: &Profile) -> anyhow::Result<serde_json::Value> {
    use base64::Engine;
    use x509_parser::prelude::FromDer;
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut keys = Vec::new();
    for k in b.keys.iter().filter(|k| !profile.is_compromised(k)) {
        let point = match k.kind.as_str() {
            "x509-ca" => {
                let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&k.public_key)
                    .map_err(|e| anyhow!("bundle certificate {}: {e}", k.key_id))?;
                cert.public_key().subject_public_key.data.to_vec()
            }
            "jwt" => {
                let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&k.public_key)
                    .map_err(|e| anyhow!("JWT key {}: {e}", k.key_id))?;
                spki.subject_public_key.data.to_vec()
            }
            _ => continue,
        };
        if point.len() != 65 || point[0] != 4 {
            continue;
        }
        let mut jwk = serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": url.encode(&point[1..33]),
            "y": url.encode(&point[33..]),
            "kid": k.key_id.to_string(),
        });
        if k.kind == "x509-ca" {
            jwk["use"] = "x509-svid".into();
            jwk["x5c"] = serde_json::json!([b64.encode(&k.public_key)]);
        } else {
            jwk["use"] = "jwt-svid".into();
        }
        keys.push(jwk);
    }
    Ok(serde_json::json!({ "keys": keys, "spiffe_refresh_hint": 60 }))
}
