//! `ringzero token mint|attenuate|inspect|verify`

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::SystemTime;

use ringzero_policy::token::{
    self, Attenuation, Decision, KeySet, Lifetime, Limits, MintRequest, Request, RevocationId,
};
use ringzero_policy::{Resource, Right};

use super::{Outcome, bad_input, bad_input_msg, failed};
use crate::cli::{AttenuateArgs, InspectArgs, MintArgs, VerifyArgs};
use crate::input::read_secret;

pub(crate) fn mint(a: MintArgs) -> Outcome {
    let key = super::keyfile::load_private(&a.root_key).map_err(bad_input)?;
    let prefix = a.resource.unwrap_or_else(Resource::root);
    let mut operations = a.operations;
    operations.sort();
    operations.dedup();
    let req = MintRequest {
        subject: a.subject,
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
        ExitCode::from(1)
    })
}
