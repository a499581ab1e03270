//! `ringzero entry …`: registration entries (which workloads on which node get which SPIFFE ID).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use ringzero_policy::selector::{self, Selector};
use ringzero_policy::{NodeName, SpiffeId};
use ringzero_proto::pb;

use super::session::{Session, print_table, refused, runtime, session};
use crate::args::parse_duration;
use crate::cli::GlobalArgs;
use crate::failure::{Failure, Outcome, bad_input_msg, failed};

mod wait;

#[derive(Debug, Subcommand)]
pub(crate) enum EntryCommand {
    /// Create a registration entry (prints its id alone on stdout).
    #[command(after_help = "\
An entry gives SPIFFE_ID to the workloads on node NODE that match every --selector.
Selectors: unix:uid:N, unix:gid:N, unix:user:NAME, unix:group:NAME, unix:path:/ABS/PATH,
unix:sha256:HEX. Entries without a uid, gid, user or group selector are refused unless
--allow-weak-selectors: anyone able to run the binary would get the identity.

Examples:
  ringzero --profile admin.profile entry create --spiffe-id spiffe://example.org/ns/web \\
      --node n7 --selector unix:uid:1000
  ID=$(ringzero entry create --spiffe-id spiffe://example.org/db --node n7 \\
      --selector unix:user:postgres --selector unix:path:/usr/bin/postgres --ttl 30m --dns db.local)
  ringzero entry create --spiffe-id spiffe://example.org/ns/web --node n7 \\
      --selector unix:uid:1000 --wait=10s   # returns once n7's agent can serve the SVID

--wait[=TIMEOUT] (default 30s, at most 1h) returns only once the agent of the entry's node
holds a valid SVID for it, so a workload's next fetch gets it; the id is printed first.

Exit codes: 0 created (and with --wait: servable on its node), 1 failed or denied, 2 invalid
input, 3 created but --wait timed out (the nodes that have not caught up are named), 4 created
but the node's agent reports it cannot serve the entry (the reason is printed).")]
    Create(EntryCreateArgs),
    /// List entries, all pages, optionally only those of one node or one SPIFFE ID.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile entry list
  ringzero entry list --node n7
  ringzero entry list --spiffe-id spiffe://example.org/ns/web --json")]
    List(EntryListArgs),
    /// Show one entry.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile entry show 6f1c0d2a9b8e4f3a0c1d2e3f4a5b6c7d
  ringzero entry show 6f1c0d2a9b8e4f3a0c1d2e3f4a5b6c7d --json")]
    Show(EntryShowArgs),
    /// Change an entry; what is not given stays as it is (--selector and --dns replace the lists).
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile entry update 6f1c0d2a9b8e4f3a0c1d2e3f4a5b6c7d --ttl 15m
  ringzero entry update 6f1c0d2a9b8e4f3a0c1d2e3f4a5b6c7d --selector unix:uid:1001 --node n8
  ringzero entry update 6f1c0d2a9b8e4f3a0c1d2e3f4a5b6c7d --clear-dns
  ringzero entry update 6f1c0d2a9b8e4f3a0c1d2e3f4a5b6c7d --node n8 --wait

--wait[=TIMEOUT] (default 30s, at most 1h) returns only once the agent of the entry's node
serves it as updated.

Exit codes: 0 updated (and with --wait: servable on its node), 1 failed or denied, 2 invalid
input, 3 updated but --wait timed out (the nodes that have not caught up are named), 4 updated
but the node's agent reports it cannot serve the entry (the reason is printed).")]
    Update(EntryUpdateArgs),
    /// Delete an entry: its workloads stop receiving new SVIDs.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile entry delete 6f1c0d2a9b8e4f3a0c1d2e3f4a5b6c7d")]
    Delete(EntryIdArg),
}

#[derive(Debug, Args)]
pub(crate) struct EntryCreateArgs {
    /// The SPIFFE ID the matching workloads get.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub(crate) spiffe_id: SpiffeId,
    /// The node whose agent may issue it (it need not have enrolled yet).
    #[arg(long, value_name = "NAME")]
    pub(crate) node: NodeName,
    /// A selector the workload must match (repeatable; all must match), e.g. unix:uid:1000.
    #[arg(long = "selector", value_name = "TYPE:KEY:VALUE", required = true)]
    pub(crate) selectors: Vec<Selector>,
    /// Lifetime of the SVIDs issued for the entry (10s to 30d).
    #[arg(long, value_parser = parse_entry_ttl, default_value = "1h")]
    pub(crate) ttl: Duration,
    /// A DNS name to put in the SVIDs (repeatable).
    #[arg(long = "dns", value_name = "NAME", value_parser = parse_dns_name)]
    pub(crate) dns_names: Vec<String>,
    /// Accept selecting only on unix:path / unix:sha256 (anyone who can run the binary gets the
    /// identity).
    #[arg(long)]
    pub(crate) allow_weak_selectors: bool,
    /// Print the created entry as JSON instead of its id.
    #[arg(long)]
    pub(crate) json: bool,
    /// After the commit, wait (default 30s, at most 1h) until the node's agent can serve it.
    #[arg(long, value_name = "TIMEOUT", num_args = 0..=1, require_equals = true,
          default_missing_value = wait::DEFAULT_WAIT, value_parser = wait::parse_wait)]
    pub(crate) wait: Option<Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct EntryListArgs {
    /// Only the entries of this node.
    #[arg(long, value_name = "NAME")]
    pub(crate) node: Option<NodeName>,
    /// Only the entries with this SPIFFE ID.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub(crate) spiffe_id: Option<SpiffeId>,
    /// Print a JSON array.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EntryShowArgs {
    /// The entry id (32 hex characters).
    #[arg(value_name = "ID", value_parser = parse_entry_id)]
    pub(crate) id: String,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EntryIdArg {
    /// The entry id (32 hex characters).
    #[arg(value_name = "ID", value_parser = parse_entry_id)]
    pub(crate) id: String,
}

#[derive(Debug, Args)]
pub(crate) struct EntryUpdateArgs {
    /// The entry id (32 hex characters).
    #[arg(value_name = "ID", value_parser = parse_entry_id)]
    pub(crate) id: String,
    /// A new SPIFFE ID.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub(crate) spiffe_id: Option<SpiffeId>,
    /// A new parent node.
    #[arg(long, value_name = "NAME")]
    pub(crate) node: Option<NodeName>,
    /// Replace the selectors with these (repeatable).
    #[arg(long = "selector", value_name = "TYPE:KEY:VALUE")]
    pub(crate) selectors: Vec<Selector>,
    /// A new SVID lifetime (10s to 30d).
    #[arg(long, value_parser = parse_entry_ttl)]
    pub(crate) ttl: Option<Duration>,
    /// Replace the DNS names with these (repeatable).
    #[arg(long = "dns", value_name = "NAME", value_parser = parse_dns_name, conflicts_with = "clear_dns")]
    pub(crate) dns_names: Vec<String>,
    /// Remove every DNS name.
    #[arg(long)]
    pub(crate) clear_dns: bool,
    /// Accept selecting only on unix:path / unix:sha256 (also needed to keep such an entry).
    #[arg(long)]
    pub(crate) allow_weak_selectors: bool,
    /// Print the updated entry as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// After the commit, wait (default 30s, at most 1h) until the node's agent serves it as
    /// updated.
    #[arg(long, value_name = "TIMEOUT", num_args = 0..=1, require_equals = true,
          default_missing_value = wait::DEFAULT_WAIT, value_parser = wait::parse_wait)]
    pub(crate) wait: Option<Duration>,
}

/// The shortest and longest SVID lifetime an entry may ask for.
const MIN_ENTRY_TTL: Duration = Duration::from_secs(10);
const MAX_ENTRY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

fn parse_entry_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_ENTRY_TTL || d > MAX_ENTRY_TTL {
        return Err("must be from 10s to 30d".into());
    }
    Ok(d)
}

fn parse_dns_name(s: &str) -> Result<String, String> {
    rustls_pki_types::DnsName::try_from(s)
        .map(|_| s.to_ascii_lowercase())
        .map_err(|_| "not a valid DNS name".into())
}

fn parse_entry_id(s: &str) -> Result<String, String> {
    if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("an entry id is 32 hex characters (see `ringzero entry list`)".into())
    }
}

/// Entries asked for per `ListEntries` call.
const PAGE_SIZE: u32 = 500;
/// The most pages one `entry list` follows (5M entries): a server that never stops paging is a
/// bug to report, not a loop to sit in.
const MAX_PAGES: usize = 10_000;

pub(crate) fn run(global: &GlobalArgs, cmd: EntryCommand) -> Outcome {
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            EntryCommand::Create(a) => create(global, a).await,
            EntryCommand::List(a) => list(global, a).await,
            EntryCommand::Show(a) => show(global, a).await,
            EntryCommand::Update(a) => update(global, a).await,
            EntryCommand::Delete(a) => delete(global, a).await,
        }
    })
}

/// Refuses weak selector sets (only `unix:path` / `unix:sha256`) unless allowed by name, and
/// returns the selectors without duplicates, in the order given.
fn checked_selectors(selectors: &[Selector], allow_weak: bool) -> Result<Vec<String>, Failure> {
    if selectors.is_empty() {
        return Err(bad_input_msg(
            "an entry needs at least one --selector, e.g. --selector unix:uid:1000",
        ));
    }
    if selector::is_weak(selectors) && !allow_weak {
        return Err(bad_input_msg(
            "these selectors say what runs (unix:path, unix:sha256) but not who runs it: \
             anyone able to run that binary would get the identity. Add a unix:uid, unix:gid, \
             unix:user or unix:group selector, or pass --allow-weak-selectors to accept it",
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(selectors.len());
    for s in selectors {
        let s = s.to_string();
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

fn ttl_seconds(ttl: Duration) -> Result<u32, Failure> {
    u32::try_from(ttl.as_secs()).map_err(|_| bad_input_msg("--ttl is too long"))
}

/// The entry of a reply, which a well-behaved authority always sends.
fn entry_of(reply: pb::EntryReply) -> Result<pb::RegistrationEntry, Failure> {
    reply
        .entry
        .ok_or_else(|| failed(anyhow!("the authority answered without the entry")))
}

async fn create(global: &GlobalArgs, a: EntryCreateArgs) -> Outcome {
    let selectors = checked_selectors(&a.selectors, a.allow_weak_selectors)?;
    let req = pb::PutEntryRequest {
        id: String::new(),
        spiffe_id: a.spiffe_id.to_string(),
        parent: a.node.as_str().to_owned(),
        selectors,
        ttl_seconds: ttl_seconds(a.ttl)?,
        dns_names: a.dns_names,
        allow_weak_selectors: a.allow_weak_selectors,
    };
    let mut s = session(global)?;
    let entry = put(&mut s, req, false, &format!("entry for {}", a.spiffe_id)).await?;
    eprintln!("created {}", summary(&entry));
    if a.json {
        println!("{}", entry_json(&entry));
    } else {
        println!("{}", entry.id);
    }
    let code = match a.wait {
        Some(timeout) => wait::wait_servable(&mut s, &entry, timeout).await?,
        None => ExitCode::SUCCESS,
    };
    s.refresh().await;
    Ok(code)
}

/// Sends a create (`update == false`) or an update.
async fn put(
    s: &mut Session,
    req: pb::PutEntryRequest,
    update: bool,
    what: &str,
) -> Result<pb::RegistrationEntry, Failure> {
    let reply = s
        .client
        .call(|mut c| {
            let req = req.clone();
            async move {
                if update {
                    c.update_entry(req).await
                } else {
                    c.create_entry(req).await
                }
            }
        })
        .await
        .map_err(|e| refused(e, what))?;
    entry_of(reply)
}

async fn get(s: &mut Session, id: &str) -> Result<pb::RegistrationEntry, Failure> {
    let reply = s
        .client
        .call(|mut c| {
            let id = id.to_owned();
            async move { c.get_entry(pb::GetEntryRequest { id }).await }
        })
        .await
        .map_err(|e| refused(e, &format!("entry {id}")))?;
    entry_of(reply)
}

async fn list(global: &GlobalArgs, a: EntryListArgs) -> Outcome {
    let parent = a.node.as_ref().map_or_else(String::new, |n| n.to_string());
    let spiffe_id = a
        .spiffe_id
        .as_ref()
        .map_or_else(String::new, |i| i.to_string());
    let mut s = session(global)?;
    let mut entries = Vec::new();
    let mut page_token = String::new();
    for _ in 0..MAX_PAGES {
        let req = pb::ListEntriesRequest {
            parent: parent.clone(),
            spiffe_id: spiffe_id.clone(),
            page_token: page_token.clone(),
            page_size: PAGE_SIZE,
        };
        let reply = s
            .client
            .call(|mut c| {
                let req = req.clone();
                async move { c.list_entries(req).await }
            })
            .await
            .map_err(|e| refused(e, "entry list"))?;
        entries.extend(reply.entries);
        if reply.next_page_token.is_empty() {
            s.refresh().await;
            if a.json {
                println!(
                    "{}",
                    serde_json::Value::Array(entries.iter().map(entry_json).collect())
                );
            } else {
                print_table(&entry_rows(&entries));
            }
            return Ok(ExitCode::SUCCESS);
        }
        if reply.next_page_token == page_token {
            return Err(failed(anyhow!(
                "the authority returned the same page token twice; the listing is incomplete"
            )));
        }
        page_token = reply.next_page_token;
    }
    Err(failed(anyhow!(
        "the authority returned more than {MAX_PAGES} pages; the listing is incomplete"
    )))
}

async fn show(global: &GlobalArgs, a: EntryShowArgs) -> Outcome {
    let mut s = session(global)?;
    let entry = get(&mut s, &a.id).await?;
    s.refresh().await;
    if a.json {
        println!("{}", entry_json(&entry));
    } else {
        for line in entry_lines(&entry) {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether an update asks for any change at all.
fn changes_anything(a: &EntryUpdateArgs) -> bool {
    a.spiffe_id.is_some()
        || a.node.is_some()
        || !a.selectors.is_empty()
        || a.ttl.is_some()
        || !a.dns_names.is_empty()
        || a.clear_dns
}

/// The request that turns `current` into what the update asks for. Stored selectors are parsed
/// again so that the weak-selector rule applies to the entry as it will be.
fn updated(
    current: pb::RegistrationEntry,
    a: EntryUpdateArgs,
) -> Result<pb::PutEntryRequest, Failure> {
    let selectors = if a.selectors.is_empty() {
        current
            .selectors
            .iter()
            .map(|s| Selector::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| failed(anyhow!("entry {}: stored selector: {e}", current.id)))?
    } else {
        a.selectors
    };
    let selectors = checked_selectors(&selectors, a.allow_weak_selectors)?;
    let dns_names = if a.clear_dns {
        Vec::new()
    } else if a.dns_names.is_empty() {
        current.dns_names
    } else {
        a.dns_names
    };
    Ok(pb::PutEntryRequest {
        id: current.id,
        spiffe_id: a.spiffe_id.map_or(current.spiffe_id, |i| i.to_string()),
        parent: a.node.map_or(current.parent, |n| n.to_string()),
        selectors,
        ttl_seconds: match a.ttl {
            Some(t) => ttl_seconds(t)?,
            None => current.ttl_seconds,
        },
        dns_names,
        allow_weak_selectors: a.allow_weak_selectors,
    })
}

async fn update(global: &GlobalArgs, a: EntryUpdateArgs) -> Outcome {
    if !changes_anything(&a) {
        return Err(bad_input_msg(
            "nothing to change: pass --spiffe-id, --node, --selector, --ttl, --dns or --clear-dns",
        ));
    }
    let mut s = session(global)?;
    let id = a.id.clone();
    let json = a.json;
    let wait = a.wait;
    let current = get(&mut s, &id).await?;
    let req = updated(current, a)?;
    let entry = put(&mut s, req, true, &format!("entry {id}")).await?;
    eprintln!("updated {}", summary(&entry));
    if json {
        println!("{}", entry_json(&entry));
    }
    let code = match wait {
        Some(timeout) => wait::wait_servable(&mut s, &entry, timeout).await?,
        None => ExitCode::SUCCESS,
    };
    s.refresh().await;
    Ok(code)
}

async fn delete(global: &GlobalArgs, a: EntryIdArg) -> Outcome {
    let mut s = session(global)?;
    let id = a.id;
    s.client
        .call(|mut c| {
            let id = id.clone();
            async move { c.delete_entry(pb::DeleteEntryRequest { id }).await }
        })
        .await
        .map_err(|e| refused(e, &format!("entry {id}")))?;
    s.refresh().await;
    eprintln!("deleted entry {id}: its workloads get no new SVIDs");
    Ok(ExitCode::SUCCESS)
}

fn ttl_text(seconds: u32) -> String {
    humantime::format_duration(Duration::from_secs(seconds.into())).to_string()
}

/// One line: what the entry gives to whom.
fn summary(e: &pb::RegistrationEntry) -> String {
    format!(
        "entry {}: {} on node {} for {} (SVID TTL {}, revision {})",
        e.id,
        e.spiffe_id,
        e.parent,
        e.selectors.join(" + "),
        ttl_text(e.ttl_seconds),
        e.revision
    )
}

fn entry_json(e: &pb::RegistrationEntry) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id,
        "node": e.parent,
        "selectors": e.selectors,
        "ttl_seconds": e.ttl_seconds,
        "dns_names": e.dns_names,
        "revision": e.revision,
    })
}

fn entry_lines(e: &pb::RegistrationEntry) -> Vec<String> {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    vec![
        format!("id:         {}", e.id),
        format!("spiffe_id:  {}", e.spiffe_id),
        format!("node:       {}", e.parent),
        format!("selectors:  {}", list(&e.selectors)),
        format!("ttl:        {}", ttl_text(e.ttl_seconds)),
        format!("dns_names:  {}", list(&e.dns_names)),
        format!("revision:   {}", e.revision),
    ]
}

fn entry_rows(entries: &[pb::RegistrationEntry]) -> Vec<[String; 6]> {
    let mut rows = vec![[
        "ID".to_owned(),
        "SPIFFE_ID".into(),
        "NODE".into(),
        "SELECTORS".into(),
        "TTL".into(),
        "REVISION".into(),
    ]];
    for e in entries {
        rows.push([
            e.id.clone(),
            e.spiffe_id.clone(),
            e.parent.clone(),
            e.selectors.join(","),
            ttl_text(e.ttl_seconds),
            e.revision.to_string(),
        ]);
    }
    rows
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::cmd::session::render_table;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn parse(args: &[&str]) -> Result<EntryCommand, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("ringzero").chain(args.iter().copied()))?;
        match cli.command {
            Command::Entry(c) => Ok(c),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn create(extra: &[&str]) -> Result<EntryCreateArgs, clap::Error> {
        let mut args = vec![
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/ns/web",
            "--node",
            "n7",
        ];
        args.extend_from_slice(extra);
        match parse(&args)? {
            EntryCommand::Create(a) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn entry() -> pb::RegistrationEntry {
        pb::RegistrationEntry {
            id: ID.into(),
            spiffe_id: "spiffe://example.org/ns/web".into(),
            parent: "n7".into(),
            selectors: vec!["unix:uid:1000".into(), "unix:path:/usr/bin/web".into()],
            ttl_seconds: 3600,
            dns_names: vec!["web.local".into()],
            revision: 42,
            created_revision: 40,
            changed_ms: 0,
        }
    }

    #[test]
    fn wait_takes_an_optional_timeout_after_an_equals_sign() {
        assert_eq!(create(&["--selector", "unix:uid:1000"]).unwrap().wait, None);
        let a = create(&["--selector", "unix:uid:1000", "--wait"]).unwrap();
        assert_eq!(a.wait, Some(Duration::from_secs(30)));
        let a = create(&["--selector", "unix:uid:1000", "--wait=5s"]).unwrap();
        assert_eq!(a.wait, Some(Duration::from_secs(5)));
        assert!(create(&["--selector", "unix:uid:1000", "--wait=2h"]).is_err());
        assert!(create(&["--selector", "unix:uid:1000", "--wait", "5s"]).is_err());
    }

    #[test]
    fn create_parses_and_defaults() {
        let a = create(&["--selector", "unix:uid:1000", "--dns", "Web.Local"]).unwrap();
        assert_eq!(a.ttl, Duration::from_secs(3600));
        assert_eq!(a.dns_names, vec!["web.local"]);
        assert_eq!(
            checked_selectors(&a.selectors, false).unwrap(),
            vec!["unix:uid:1000"]
        );
        let a = create(&["--selector", "unix:uid:1000", "--ttl", "10s"]).unwrap();
        assert_eq!(a.ttl, Duration::from_secs(10));
        let a = create(&["--selector", "unix:uid:1000", "--ttl", "30days"]).unwrap();
        assert_eq!(a.ttl, Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn create_refuses_bad_input_with_exit_2() {
        for extra in [
            vec![],
            vec!["--selector", "unix:uid:01000"],
            vec!["--selector", "unix:colour:blue"],
            vec!["--selector", "uid=1000"],
            vec!["--selector", "unix:uid:1000", "--ttl", "9s"],
            vec!["--selector", "unix:uid:1000", "--ttl", "31d"],
            vec!["--selector", "unix:uid:1000", "--ttl", "forever"],
            vec!["--selector", "unix:uid:1000", "--dns", "not a name"],
        ] {
            let e = create(&extra).expect_err(&format!("{extra:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{extra:?}");
        }
        for bad in [
            ["--spiffe-id", "http://example.org/x", "--node", "n7"],
            ["--spiffe-id", "spiffe://example.org/x", "--node", "a/b"],
        ] {
            let mut args = vec!["entry", "create", "--selector", "unix:uid:1"];
            args.extend_from_slice(&bad);
            assert_eq!(parse(&args).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn weak_selectors_need_the_flag_by_name() {
        let a = create(&[
            "--selector",
            "unix:path:/usr/bin/web",
            "--selector",
            "unix:sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ])
        .unwrap();
        let e = checked_selectors(&a.selectors, false).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(format!("{:#}", e.error).contains("--allow-weak-selectors"));
        assert_eq!(checked_selectors(&a.selectors, true).unwrap().len(), 2);
        let a = create(&[
            "--selector",
            "unix:path:/usr/bin/web",
            "--selector",
            "unix:group:web",
            "--selector",
            "unix:group:web",
        ])
        .unwrap();
        assert_eq!(
            checked_selectors(&a.selectors, false).unwrap(),
            vec!["unix:path:/usr/bin/web", "unix:group:web"]
        );
    }

    #[test]
    fn ids_are_32_hex_characters() {
        assert!(matches!(
            parse(&["entry", "show", &ID.to_uppercase()]).unwrap(),
            EntryCommand::Show(EntryShowArgs { id, .. }) if id == ID
        ));
        for bad in [
            "",
            "abc",
            "0123456789abcdef0123456789abcdeg",
            &format!("{ID}0"),
        ] {
            assert_eq!(
                parse(&["entry", "delete", bad]).unwrap_err().exit_code(),
                2,
                "{bad:?}"
            );
        }
    }

    fn update_args(extra: &[&str]) -> EntryUpdateArgs {
        let mut args = vec!["entry", "update", ID];
        args.extend_from_slice(extra);
        match parse(&args).unwrap() {
            EntryCommand::Update(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn update_keeps_what_is_not_given() {
        let a = update_args(&["--ttl", "15m"]);
        assert!(changes_anything(&a));
        let req = updated(entry(), a).unwrap();
        assert_eq!(req.id, ID);
        assert_eq!(req.ttl_seconds, 900);
        assert_eq!(req.spiffe_id, "spiffe://example.org/ns/web");
        assert_eq!(req.parent, "n7");
        assert_eq!(req.selectors, entry().selectors);
        assert_eq!(req.dns_names, vec!["web.local"]);
        assert!(!req.allow_weak_selectors);
    }

    #[test]
    fn update_replaces_lists_and_clears_dns() {
        let a = update_args(&[
            "--selector",
            "unix:uid:1001",
            "--node",
            "n8",
            "--spiffe-id",
            "spiffe://example.org/ns/api",
            "--clear-dns",
        ]);
        let req = updated(entry(), a).unwrap();
        assert_eq!(req.selectors, vec!["unix:uid:1001"]);
        assert_eq!(req.parent, "n8");
        assert_eq!(req.spiffe_id, "spiffe://example.org/ns/api");
        assert!(req.dns_names.is_empty());
        let req = updated(
            entry(),
            update_args(&["--dns", "a.local", "--dns", "b.local"]),
        )
        .unwrap();
        assert_eq!(req.dns_names, vec!["a.local", "b.local"]);
    }

    #[test]
    fn update_checks_weak_selectors_of_the_result() {
        let e = updated(entry(), update_args(&["--selector", "unix:path:/bin/x"])).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(format!("{:#}", e.error).contains("--allow-weak-selectors"));
        let mut weak = entry();
        weak.selectors = vec!["unix:path:/bin/x".into()];
        assert!(updated(weak.clone(), update_args(&["--ttl", "1m"])).is_err());
        let req = updated(
            weak,
            update_args(&["--ttl", "1m", "--allow-weak-selectors"]),
        )
        .unwrap();
        assert!(req.allow_weak_selectors);
        assert!(!changes_anything(&update_args(&[])));
        assert!(!changes_anything(&update_args(&["--allow-weak-selectors"])));
    }

    #[test]
    fn entry_table_and_json() {
        let mut other = entry();
        other.id = "ffffffffffffffffffffffffffffffff".into();
        other.spiffe_id = "spiffe://example.org/db".into();
        other.parent = "node-12".into();
        other.selectors = vec!["unix:user:postgres".into()];
        other.ttl_seconds = 90;
        other.revision = 7;
        assert_eq!(
            render_table(&entry_rows(&[entry(), other])),
            vec![
                "ID                                SPIFFE_ID                    NODE     SELECTORS                             TTL     REVISION",
                "0123456789abcdef0123456789abcdef  spiffe://example.org/ns/web  n7       unix:uid:1000,unix:path:/usr/bin/web  1h      42",
                "ffffffffffffffffffffffffffffffff  spiffe://example.org/db      node-12  unix:user:postgres                    1m 30s  7",
            ]
        );
        let j = entry_json(&entry());
        assert_eq!(j["node"], "n7");
        assert_eq!(j["selectors"][1], "unix:path:/usr/bin/web");
        assert_eq!(j["ttl_seconds"], 3600);
        assert_eq!(j["revision"], 42);
        assert!(entry_lines(&entry())[3].ends_with("unix:uid:1000, unix:path:/usr/bin/web"));
        assert!(summary(&entry()).contains("on node n7"));
    }
}
