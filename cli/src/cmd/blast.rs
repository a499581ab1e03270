//! `ringzero blast-radius node/NAME | user/NAME | authority/ID | token TOKEN`: what the principal
//! (or token) could reach if it were compromised now — SPIFFE IDs, rights, until when — and the
//! commands that cut it off, as the authority computes it from its live state.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Args;
use ringzero_policy::NodeName;
use ringzero_proto::pb;

use super::session::{refused, render_table, runtime, session};
use crate::cli::GlobalArgs;
use crate::failure::{Failure, Outcome, bad_input, bad_input_msg, failed};
use crate::input::read_secret;

/// The `blast-radius` help's closing text.
pub(crate) const HELP: &str = "\
Answered by the authority from its live state (needs audit:read; the question is audited).
A token is read from its argument, '-' (stdin) or @FILE, and never printed back.

Examples:
  ringzero --profile admin.profile blast-radius node/n7
  ringzero blast-radius user/alice --json
  ringzero blast-radius authority/2
  ringzero blast-radius token @ci.token";

#[derive(Debug, Args)]
pub(crate) struct BlastRadiusArgs {
    /// node/NAME, user/NAME, authority/ID, or the word `token` followed by the token.
    #[arg(value_name = "PRINCIPAL|token")]
    pub(crate) target: String,
    /// After `token`: the token, '-' for stdin, or @FILE. (Not named `token`: that is the
    /// global flag for the capability presented, and clap would merge the two.)
    #[arg(value_name = "TOKEN|-|@FILE")]
    pub(crate) assessed: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Checks the target before any connection (bad input is exit 2), reading a token from its
/// argument, `-` or `@FILE`.
fn request(a: &BlastRadiusArgs) -> Result<pb::BlastRadiusRequest, Failure> {
    let target = a.target.trim();
    if target == "token" {
        let arg = a.assessed.as_deref().ok_or_else(|| {
            bad_input_msg("blast-radius token: give the token (TOKEN, @FILE or -)")
        })?;
        let token = read_secret(arg).map_err(bad_input)?;
        // A token that does not decode is refused here, never sent.
        ringzero_policy::token::reach(&token).map_err(bad_input)?;
        return Ok(pb::BlastRadiusRequest {
            principal: String::new(),
            token,
        });
    }
    if a.assessed.is_some() {
        return Err(bad_input_msg(format!(
            "unexpected argument after {target:?} (only `token` takes one)"
        )));
    }
    let ok = match target.split_once('/') {
        Some(("node" | "user", name)) => NodeName::parse(name).is_ok(),
        Some(("authority", id)) => id.parse::<u64>().is_ok_and(|n| n.to_string() == id),
        _ => false,
    };
    if !ok {
        return Err(bad_input_msg(format!(
            "{target:?}: expected node/NAME, user/NAME, authority/ID or `token TOKEN`"
        )));
    }
    Ok(pb::BlastRadiusRequest {
        principal: target.to_owned(),
        token: String::new(),
    })
}

pub(crate) fn run(global: &GlobalArgs, a: BlastRadiusArgs) -> Outcome {
    let req = request(&a)?;
    let what = if req.principal.is_empty() {
        "blast radius of the token".to_owned()
    } else {
        format!("blast radius of {}", req.principal)
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let mut s = session(global)?;
        let reply = s
            .client
            .call(|mut c| {
                let req = req.clone();
                async move { c.blast_radius(req).await }
            })
            .await
            .map_err(|e| refused(e, &what))?;
        let text = if a.json {
            let mut t = serde_json::to_string_pretty(&to_json(&reply)).map_err(failed)?;
            t.push('\n');
            t
        } else {
            report(&reply)
        };
        emit(&text)?;
        Ok(ExitCode::SUCCESS)
    })
}

use super::session::format_ms as time_ms;

fn prefix(p: &str) -> &str {
    if p.is_empty() { "(all)" } else { p }
}

fn right_json(r: &pb::BlastRight) -> serde_json::Value {
    serde_json::json!({
        "operation": r.operation,
        "resource": r.resource,
        "source": r.source,
        "bound": r.bound,
    })
}

fn token_json(t: &pb::BlastToken) -> serde_json::Value {
    serde_json::json!({
        "revocation_id": t.revocation_id,
        "minter": t.minter,
        "subject": t.subject,
        "rights": t.rights,
        "expires_ms": t.expires_ms,
        "revoked": t.revoked,
        "cut_off": t.cut_off,
    })
}

/// The JSON form. Field names are stable: scripts and the threat model's tests read them.
fn to_json(r: &pb::BlastRadiusReply) -> serde_json::Value {
    serde_json::json!({
        "principal": r.principal,
        "kind": r.kind,
        "status": r.status,
        "identities": r.identities.iter().map(|i| serde_json::json!({
            "spiffe_id": i.spiffe_id,
            "via": i.via,
            "entry_id": i.entry_id,
            "parent": i.parent,
            "selectors": i.selectors,
            "ttl_seconds": i.ttl_seconds,
            "dns_names": i.dns_names,
        })).collect::<Vec<_>>(),
        "all_identities": r.all_identities,
        "rights": r.rights.iter().map(right_json).collect::<Vec<_>>(),
        "until_cut_off": r.until_cut_off,
        "until_ms": r.until_ms,
        "credentials": r.credentials.iter().map(|c| serde_json::json!({
            "kind": c.kind,
            "id": c.id,
            "expires_ms": c.expires_ms,
            "revoked": c.revoked,
        })).collect::<Vec<_>>(),
        "minted": r.minted.iter().map(token_json).collect::<Vec<_>>(),
        "held": r.held.iter().map(token_json).collect::<Vec<_>>(),
        "keys": r.keys.iter().map(|k| serde_json::json!({
            "key_id": k.key_id,
            "kind": k.kind,
            "status": k.status,
            "not_after_ms": k.not_after_ms,
            "trusted_until_ms": k.trusted_until_ms,
        })).collect::<Vec<_>>(),
        "cut_off": r.cut_off,
        "notes": r.notes,
        "token": r.token.as_ref().map(|t| serde_json::json!({
            "subject": t.subject,
            "bound_peers": t.bound_peers,
            "bound_nodes": t.bound_nodes,
            "root_key_id": t.root_key_id,
            "signature": t.signature,
            "expires_ms": t.expires_ms,
            "minted_by": t.minted_by,
            "revoked_blocks": t.revoked_blocks,
            "cut_off_reason": t.cut_off_reason,
            "blocks": t.blocks.iter().map(|b| serde_json::json!({
                "index": b.index,
                "revocation_id": b.revocation_id,
                "rights": b.rights.iter().map(|x| serde_json::json!({
                    "operation": x.operation,
                    "resource": x.resource,
                })).collect::<Vec<_>>(),
                "operations": if b.restricts_operations {
                    serde_json::json!(b.operations)
                } else {
                    serde_json::Value::Null
                },
                "resources": b.resources,
                "peers": b.peers,
                "nodes": b.nodes,
                "expires_ms": b.expires_ms,
            })).collect::<Vec<_>>(),
        })),
    })
}

fn short(id: &str) -> String {
    if id.chars().count() > 16 {
        format!("{}…", id.chars().take(16).collect::<String>())
    } else {
        id.to_owned()
    }
}

/// Appends one line to a report (writing to a `String` cannot fail).
macro_rules! out {
    ($o:expr) => {
        $o.push('\n')
    };
    ($o:expr, $($arg:tt)*) => {{
        let _ = writeln!($o, $($arg)*);
    }};
}

fn table<const N: usize>(o: &mut String, rows: &[[String; N]]) {
    for line in render_table(rows) {
        out!(o, "{line}");
    }
}

/// Writes `text` to stdout; a closed pipe (`| head`) ends the output quietly.
fn emit(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(failed(e)),
        _ => Ok(()),
    }
}

/// The readable report.
fn report(r: &pb::BlastRadiusReply) -> String {
    let mut o = String::new();
    out!(
        o,
        "blast radius of {} ({}, {})",
        r.principal,
        r.kind,
        r.status
    );

    out!(o);
    if r.all_identities {
        out!(o, "SPIFFE IDs: every ID of the trust domain");
    } else {
        out!(o, "SPIFFE IDs it could obtain: {}", r.identities.len());
    }
    if !r.identities.is_empty() {
        let mut rows = vec![[
            "SPIFFE ID".to_owned(),
            "VIA".to_owned(),
            "DETAIL".to_owned(),
        ]];
        for i in &r.identities {
            let mut detail = Vec::new();
            if !i.entry_id.is_empty() {
                detail.push(format!("entry {} on {}", short(&i.entry_id), i.parent));
            }
            if !i.selectors.is_empty() {
                detail.push(format!("selectors {}", i.selectors.join(" ")));
            }
            if i.ttl_seconds > 0 {
                detail.push(format!("ttl {}s", i.ttl_seconds));
            }
            if !i.dns_names.is_empty() {
                detail.push(format!("dns {}", i.dns_names.join(" ")));
            }
            rows.push([i.spiffe_id.clone(), i.via.clone(), detail.join("; ")]);
        }
        table(&mut o, &rows);
    }

    out!(o);
    // Rights are reported as they stand even when the principal is cut off (a resumed user
    // gets them back); the heading says whether they can be used now.
    let usable = matches!(
        r.status.as_str(),
        "active" | "member" | "valid" | "not_enrolled"
    );
    if usable {
        out!(o, "Rights it could exercise: {}", r.rights.len());
    } else {
        out!(
            o,
            "Rights (none usable while {}): {}",
            r.status,
            r.rights.len()
        );
    }
    if !r.rights.is_empty() {
        let mut rows = vec![[
            "OPERATION".to_owned(),
            "RESOURCE".to_owned(),
            "FROM".to_owned(),
            "BOUND".to_owned(),
        ]];
        rows.extend(r.rights.iter().map(|x| {
            [
                x.operation.clone(),
                prefix(&x.resource).to_owned(),
                x.source.clone(),
                x.bound.clone(),
            ]
        }));
        table(&mut o, &rows);
    }

    out!(o);
    match (r.until_cut_off, r.until_ms) {
        (true, 0) => out!(o, "Until: it is cut off"),
        (true, t) => out!(
            o,
            "Until: it is cut off; what it already obtained stays valid until {}",
            time_ms(t)
        ),
        (false, 0) => out!(o, "Until: nothing it holds is valid now"),
        (false, t) => out!(o, "Until: {}", time_ms(t)),
    }

    if let Some(t) = &r.token {
        out!(o);
        out!(o, "Token (never shown): subject {}", dash(&t.subject));
        out!(
            o,
            "  signature {} (root key {}), expires {}, minted by {}",
            t.signature,
            t.root_key_id,
            time_ms(t.expires_ms),
            dash(&t.minted_by)
        );
        if !t.bound_peers.is_empty() {
            out!(o, "  bound to peer {}", t.bound_peers.join(", "));
        }
        if !t.bound_nodes.is_empty() {
            out!(o, "  bound to node {}", t.bound_nodes.join(", "));
        }
        for b in &t.blocks {
            let mut says = Vec::new();
            if !b.rights.is_empty() {
                says.push(format!(
                    "rights {}",
                    b.rights
                        .iter()
                        .map(|x| format!("{} on {}", x.operation, prefix(&x.resource)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if b.restricts_operations {
                says.push(format!("only {}", b.operations.join(", ")));
            }
            if !b.resources.is_empty() {
                says.push(format!("within {}", b.resources.join(", ")));
            }
            if !b.peers.is_empty() {
                says.push(format!("peer {}", b.peers.join(", ")));
            }
            if !b.nodes.is_empty() {
                says.push(format!("node {}", b.nodes.join(", ")));
            }
            if b.expires_ms > 0 {
                says.push(format!("before {}", time_ms(b.expires_ms)));
            }
            let revoked = if t.revoked_blocks.contains(&b.revocation_id) {
                " REVOKED"
            } else {
                ""
            };
            out!(
                o,
                "  block {} ({}){revoked}: {}",
                b.index,
                short(&b.revocation_id),
                says.join("; ")
            );
        }
        if !t.cut_off_reason.is_empty() {
            out!(o, "  cut off: {}", t.cut_off_reason);
        }
    }

    if !r.credentials.is_empty() {
        out!(o);
        out!(o, "Credentials it holds:");
        let mut rows = vec![[
            "KIND".to_owned(),
            "ID".to_owned(),
            "EXPIRES".to_owned(),
            "STATE".to_owned(),
        ]];
        rows.extend(r.credentials.iter().map(|c| {
            [
                c.kind.clone(),
                short(&c.id),
                time_ms(c.expires_ms),
                if c.revoked { "revoked" } else { "valid" }.to_owned(),
            ]
        }));
        table(&mut o, &rows);
    }
    for (title, list) in [
        ("Delegations it holds:", &r.held),
        ("Tokens minted from it:", &r.minted),
    ] {
        if list.is_empty() {
            continue;
        }
        out!(o);
        out!(o, "{title}");
        let mut rows = vec![[
            "REVOCATION ID".to_owned(),
            "MINTER".to_owned(),
            "SUBJECT".to_owned(),
            "RIGHTS".to_owned(),
            "EXPIRES".to_owned(),
            "STATE".to_owned(),
        ]];
        rows.extend(list.iter().map(|t| {
            [
                short(&t.revocation_id),
                t.minter.clone(),
                t.subject.clone(),
                dash(&t.rights).to_owned(),
                time_ms(t.expires_ms),
                match (t.revoked, t.cut_off) {
                    (true, _) => "revoked",
                    (false, true) => "cut off",
                    _ => "valid",
                }
                .to_owned(),
            ]
        }));
        table(&mut o, &rows);
    }
    if !r.keys.is_empty() {
        out!(o);
        out!(o, "Keys:");
        let mut rows = vec![[
            "KEY".to_owned(),
            "KIND".to_owned(),
            "STATUS".to_owned(),
            "TRUSTED UNTIL".to_owned(),
        ]];
        rows.extend(r.keys.iter().map(|k| {
            [
                k.key_id.to_string(),
                k.kind.clone(),
                k.status.clone(),
                time_ms(k.trusted_until_ms),
            ]
        }));
        table(&mut o, &rows);
    }

    out!(o);
    if r.cut_off.is_empty() {
        out!(o, "Cut off: nothing left to do");
    } else {
        out!(o, "Cut it off with:");
        for c in &r.cut_off {
            out!(o, "  {c}");
        }
    }
    if !r.notes.is_empty() {
        out!(o);
        out!(o, "Notes:");
        for n in &r.notes {
            out!(o, "  - {n}");
        }
    }
    o
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]

    use super::*;

    fn args(target: &str, token: Option<&str>) -> BlastRadiusArgs {
        BlastRadiusArgs {
            target: target.into(),
            assessed: token.map(str::to_owned),
            json: false,
        }
    }

    #[test]
    fn the_assessed_token_is_never_the_presented_one() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "ringzero",
            "blast-radius",
            "token",
            "@assessed.token",
        ])
        .ok();
        let Some(cli) = cli else {
            panic!("blast-radius token @FILE does not parse")
        };
        assert!(
            cli.global.token.is_none(),
            "the assessed token was presented"
        );
        let crate::cli::Command::BlastRadius(a) = cli.command else {
            panic!("not blast-radius")
        };
        assert_eq!(a.assessed.as_deref(), Some("@assessed.token"));
    }

    #[test]
    fn targets_are_checked_before_any_call() {
        assert!(request(&args("node/n7", None)).is_ok());
        assert!(request(&args("user/alice", None)).is_ok());
        assert!(request(&args("authority/3", None)).is_ok());
        for bad in [
            "n7",
            "node/",
            "node/a/b",
            "authority/x",
            "authority/03",
            "ns/x",
        ] {
            let e = request(&args(bad, None)).err().map(|f| f.code);
            assert_eq!(e, Some(2), "{bad}");
        }
        assert_eq!(request(&args("token", None)).err().map(|f| f.code), Some(2));
        assert_eq!(
            request(&args("token", Some("not-a-token")))
                .err()
                .map(|f| f.code),
            Some(2)
        );
        assert_eq!(
            request(&args("node/n7", Some("extra")))
                .err()
                .map(|f| f.code),
            Some(2)
        );
    }
}
