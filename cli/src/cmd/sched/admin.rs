//! `ringzero sched token`, `sched list`, `sched remove`: enrolling schedulers with their own
//! identity (`spiffe://TD/ringzero/sched/<name>`), listing them, cutting one off.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use ringzero_policy::NodeName;
use ringzero_proto::pb;

use super::super::session::{print_table, refused, runtime, session};
use crate::args::{JsonArgs, parse_join_ttl};
use crate::cli::GlobalArgs;
use crate::failure::{Outcome, bad_input_msg};

#[derive(Debug, Args)]
pub(crate) struct SchedTokenArgs {
    /// The scheduler's name (its SVID is spiffe://TD/ringzero/sched/NAME).
    #[arg(long, value_name = "NAME", default_value = "sched")]
    pub(crate) name: NodeName,
    /// Confine the scheduler to this namespace (default: cluster-wide).
    #[arg(long, value_name = "NS")]
    pub(crate) namespace: Option<String>,
    /// How long the token may be redeemed (at most 24h).
    #[arg(long, value_parser = parse_join_ttl, default_value = "10m")]
    pub(crate) ttl: Duration,
    /// Print JSON (the token, the scheduler's name, namespace and the token's expiry).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SchedNameArg {
    /// The scheduler's name.
    #[arg(value_name = "NAME")]
    pub(crate) name: NodeName,
}

pub(crate) fn token(global: &GlobalArgs, a: SchedTokenArgs) -> Outcome {
    if let Some(ns) = &a.namespace
        && NodeName::parse(ns).is_err()
    {
        return Err(bad_input_msg(format!(
            "--namespace {ns:?}: not a namespace name"
        )));
    }
    let rt = runtime()?;
    rt.block_on(async move {
        let mut s = session(global)?;
        let req = pb::CreateJoinTokenRequest {
            purpose: "sched".into(),
            node_name: a.name.to_string(),
            ttl_seconds: a.ttl.as_secs(),
            namespace: a.namespace.clone().unwrap_or_default(),
        };
        let reply = s
            .client
            .call(|mut c| {
                let req = req.clone();
                async move { c.create_join_token(req).await }
            })
            .await
            .map_err(|e| refused(e, &format!("token for scheduler {}", a.name)))?;
        s.refresh().await;
        if a.json {
            let v = serde_json::json!({
                "token": reply.token,
                "name": a.name.as_str(),
                "namespace": a.namespace,
                "spiffe_id": format!("spiffe://{}/ringzero/sched/{}", s.profile.trust_domain, a.name),
                "expires_unix": reply.expires_unix,
            });
            println!("{v}");
            return Ok(ExitCode::SUCCESS);
        }
        let authorities = if global.authority.is_empty() {
            s.profile.authorities.clone()
        } else {
            global.authority.clone()
        };
        for line in run_instructions(&a, reply.expires_unix, &authorities) {
            eprintln!("{line}");
        }
        println!("{}", reply.token);
        Ok(ExitCode::SUCCESS)
    })
}

/// What an operator does with a fresh scheduler token (the secret itself goes to stdout only).
fn run_instructions(a: &SchedTokenArgs, expires_unix: u64, authorities: &[String]) -> Vec<String> {
    let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(expires_unix);
    let authority = if authorities.is_empty() {
        "ADDR".to_owned()
    } else {
        authorities.join(",")
    };
    let scope = match &a.namespace {
        Some(ns) => format!("namespace {ns}"),
        None => "the whole cluster".into(),
    };
    let ns_flag = a
        .namespace
        .as_ref()
        .map(|ns| format!(" --namespace {ns}"))
        .unwrap_or_default();
    let name = &a.name;
    vec![
        format!(
            "token for scheduler {name} ({scope}): one use, expires {} (in {}); it is the last \
             line of stdout.",
            humantime::format_rfc3339_seconds(expires),
            humantime::format_duration(a.ttl),
        ),
        format!("Where the scheduler runs, with the token saved in {name}.token (mode 0600):"),
        format!(
            "  ringzero sched run --join-token @{name}.token --authority {authority} \
             --data-dir /var/lib/ringzero/sched{ns_flag}"
        ),
    ]
}

pub(crate) fn list(global: &GlobalArgs, a: JsonArgs) -> Outcome {
    let rt = runtime()?;
    rt.block_on(async move {
        let mut s = session(global)?;
        let reply = s
            .client
            .call(|mut c| async move { c.list_scheds(pb::ListSchedsRequest {}).await })
            .await
            .map_err(|e| refused(e, "sched list"))?;
        if a.json {
            println!("{}", scheds_json(&reply.scheds));
            return Ok(ExitCode::SUCCESS);
        }
        let mut rows = vec![[
            "NAME".to_string(),
            "NAMESPACE".to_string(),
            "STATUS".to_string(),
        ]];
        for sc in &reply.scheds {
            rows.push([
                sc.name.clone(),
                if sc.namespace.is_empty() {
                    "*".into()
                } else {
                    sc.namespace.clone()
                },
                if sc.suspended { "suspended" } else { "active" }.into(),
            ]);
        }
        print_table(&rows);
        Ok(ExitCode::SUCCESS)
    })
}

fn scheds_json(scheds: &[pb::SchedInfo]) -> serde_json::Value {
    serde_json::Value::Array(
        scheds
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "namespace": (!s.namespace.is_empty()).then_some(&s.namespace),
                    "suspended": s.suspended,
                })
            })
            .collect(),
    )
}

pub(crate) fn remove(global: &GlobalArgs, a: SchedNameArg) -> Outcome {
    let rt = runtime()?;
    rt.block_on(async move {
        let mut s = session(global)?;
        let name = a.name.to_string();
        s.client
            .call(|mut c| {
                let name = name.clone();
                async move { c.remove_sched(pb::RemoveSchedRequest { name }).await }
            })
            .await
            .map_err(|e| refused(e, &format!("scheduler {name}")))?;
        eprintln!(
            "removed scheduler {name}: its certificates and capabilities are revoked; it fails \
             at its next call"
        );
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_never_hold_the_token_and_name_the_namespace() {
        let a = SchedTokenArgs {
            name: NodeName::parse("s1").unwrap(),
            namespace: Some("shop".into()),
            ttl: Duration::from_secs(600),
            json: false,
        };
        let lines = run_instructions(&a, 0, &["10.0.0.1:7000".into()]);
        let joined = lines.join("\n");
        assert!(joined.contains("--join-token @s1.token"));
        assert!(joined.contains("--namespace shop"));
        assert!(joined.contains("--authority 10.0.0.1:7000"));
    }

    #[test]
    fn list_json() {
        let v = scheds_json(&[pb::SchedInfo {
            name: "sched".into(),
            namespace: String::new(),
            suspended: false,
        }]);
        assert_eq!(v[0]["name"], "sched");
        assert!(v[0]["namespace"].is_null());
    }
}
