//! `ringzero token mint|revoke|attenuate|inspect|verify`

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use ringzero_policy::token::{
    self, Attenuation, Decision, KeySet, Lifetime, Limits, MintRequest, Request, RevocationId,
};
use ringzero_policy::{Resource, Right};

use ringzero_proto::pb;

use super::session::{refused, runtime, session};
use crate::cli::{AttenuateArgs, GlobalArgs, InspectArgs, MintArgs, RevokeArgs, VerifyArgs};
use crate::failure::{EXIT_FAILED, Outcome, bad_input, bad_input_msg, failed};
use crate::input::read_secret;

pub(crate) fn mint(global: &GlobalArgs, a: MintArgs) -> Outcome {
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
        let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(reply.expires_unix);
        eprintln!(
            "minted {what}, bound to it, expires {}; revocation id {}",
            humantime::format_rfc3339_seconds(expires),
            reply.revocation_ids.last().map_or("-", String::as_str)
        );
        println!("{}", reply.token);
        Ok(ExitCode::SUCCESS)
    })
}

/// Revokes a token's last block, or a revocation id, through the cluster.
pub(crate) fn revoke(global: &GlobalArgs, a: RevokeArgs) -> Outcome {
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

pub(crate) fn attenuate(a: AttenuateArgs) -> Outcome {
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

pub(crate) fn inspect(a: InspectArgs) -> Outcome {
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

pub(crate) fn verify(a: VerifyArgs) -> Outcome {
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
