//! `audit query`, `audit tail`, `audit export`: reading the log.

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::anyhow;
use ringzero_policy::audit::{AuditEntry, Decision};
use ringzero_proto::pb;

use super::super::session::{print_table, refused, session};
use super::args::{
    AuditDecisionArg, AuditExportArgs, AuditFormat, AuditQueryArgs, AuditTailArgs, AuditTime,
};
use super::{format_ms, stream};
use crate::cli::GlobalArgs;
use crate::failure::{Failure, Outcome, bad_input_msg, failed};

/// The most records one `QueryAudit` call returns.
const MAX_PAGE: u32 = 10_000;
/// The widest a table cell gets before it is cut (with `…`).
const MAX_CELL: usize = 48;
/// The widest REASON cell (the last column).
const MAX_REASON: usize = 80;

/// The table header.
pub(super) const HEADER: [&str; 7] = [
    "SEQ",
    "TIME",
    "ACTOR",
    "OPERATION",
    "RESOURCE",
    "DECISION",
    "REASON",
];

fn decision_str(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
    }
}

/// `s` cut to `max` characters, the last one `…` when cut.
pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// One table row. Control characters (from a hostile record) are shown escaped, so a record
/// cannot rewrite the operator's terminal.
pub(super) fn row(e: &AuditEntry) -> [String; 7] {
    let cell = |s: &str, max: usize| truncate(&s.escape_debug().to_string(), max);
    [
        e.seq.to_string(),
        format_ms(e.time_ms),
        cell(&e.actor, MAX_CELL),
        cell(&e.operation, MAX_CELL),
        cell(&e.resource, MAX_CELL),
        decision_str(e.decision).to_owned(),
        e.reason
            .as_deref()
            .map_or_else(|| "-".to_owned(), |r| cell(r, MAX_REASON)),
    ]
}

/// The full record, one `field: value` line each, for `prove`.
pub(super) fn describe(e: &AuditEntry) -> Vec<String> {
    let esc = |s: &str| s.escape_debug().to_string();
    let mut lines = vec![
        format!("record      {}", e.seq),
        format!("time        {} ({} ms)", format_ms(e.time_ms), e.time_ms),
        format!("actor       {}", esc(&e.actor)),
        format!("operation   {}", esc(&e.operation)),
        format!("resource    {}", esc(&e.resource)),
        format!("decision    {}", decision_str(e.decision)),
    ];
    if let Some(r) = &e.reason {
        lines.push(format!("reason      {}", esc(r)));
    }
    lines.push(format!("outcome     {}", esc(&e.outcome)));
    lines.push(format!("authority   {}", e.authority));
    lines.push(format!("request id  {}", esc(&e.request_id)));
    lines.push(format!("log index   {}", e.log_index));
    if !e.revocation_ids.is_empty() {
        lines.push(format!("revocation  {}", e.revocation_ids.join(", ")));
    }
    for (k, v) in &e.details {
        lines.push(format!("detail      {}={}", esc(k), esc(v)));
    }
    lines
}

fn parse_record(bytes: &[u8]) -> Result<AuditEntry, Failure> {
    AuditEntry::from_leaf_bytes(bytes)
        .map_err(|e| failed(anyhow!("the authority sent a malformed audit record: {e}")))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A command-line time as unix milliseconds, at `now_ms`.
pub(super) fn resolve(t: AuditTime, now_ms: u64) -> u64 {
    match t {
        AuditTime::At(ms) => ms,
        AuditTime::Ago(d) => {
            now_ms.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        }
    }
}

pub(super) async fn query(global: &GlobalArgs, a: AuditQueryArgs) -> Outcome {
    let now = now_ms();
    let since_ms = a.since.map_or(0, |t| resolve(t, now));
    // 0 means unbounded on the wire; a bound resolving to 0 (1970) is as good as none.
    let until_ms = a.until.map_or(0, |t| resolve(t, now).max(1));
    if until_ms != 0 && since_ms > until_ms {
        return Err(bad_input_msg(format!(
            "--since ({}) is after --until ({})",
            format_ms(since_ms),
            format_ms(until_ms)
        )));
    }
    let mut s = session(global)?;
    let base = pb::QueryAuditRequest {
        actor: a.actor.unwrap_or_default(),
        operation: a.operation.unwrap_or_default(),
        resource: a.resource.unwrap_or_default(),
        decision: match a.decision {
            Some(AuditDecisionArg::Allow) => "allow".into(),
            Some(AuditDecisionArg::Deny) => "deny".into(),
            None => String::new(),
        },
        since_ms,
        until_ms,
        limit: 0,
        after_seq: None,
    };
    let mut rows = vec![HEADER.map(str::to_owned)];
    let mut remaining = a.limit;
    let mut after: Option<u64> = None;
    let stdout = std::io::stdout();
    while remaining > 0 {
        let req = pb::QueryAuditRequest {
            limit: remaining.min(MAX_PAGE),
            after_seq: after,
            ..base.clone()
        };
        let reply = s
            .client
            .call(|mut c| {
                let req = req.clone();
                async move { c.query_audit(req).await }
            })
            .await
            .map_err(|e| refused(e, "audit query"))?;
        let n = u32::try_from(reply.records.len()).unwrap_or(u32::MAX);
        if n > remaining {
            return Err(failed(anyhow!(
                "the authority sent {n} records when asked for at most {remaining}"
            )));
        }
        for bytes in &reply.records {
            let e = parse_record(bytes)?;
            if after.is_some_and(|s| e.seq <= s) {
                return Err(failed(anyhow!(
                    "the authority sent record {} again (or out of order) while paging",
                    e.seq
                )));
            }
            if a.json {
                let mut out = stdout.lock();
                out.write_all(&e.leaf_bytes())
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|e| failed(anyhow!("writing stdout: {e}")))?;
            } else {
                rows.push(row(&e));
            }
        }
        remaining -= n;
        match reply.next_after_seq {
            // Each page must move forward, so a confused server cannot keep us paging.
            Some(next) if after.is_none_or(|prev| next > prev) => after = Some(next),
            Some(next) if remaining > 0 => {
                eprintln!(
                    "warning: the authority asked to continue after record {next} again; \
                     stopping here, so more records may match"
                );
                break;
            }
            _ => break,
        }
    }
    s.refresh().await;
    if !a.json {
        if rows.len() == 1 {
            eprintln!("no record matches");
        }
        print_table(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// Fixed-width columns for a stream that cannot be aligned in advance.
fn tail_line(cells: &[String; 7]) -> String {
    format!(
        "{:<7}  {:<20}  {:<40}  {:<18}  {:<28}  {:<8}  {}",
        cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
    )
}

pub(super) async fn tail(global: &GlobalArgs, a: AuditTailArgs) -> Outcome {
    let mut s = session(global)?;
    let reply = s
        .client
        .call(|mut c| async move { c.get_tree_head(pb::GetTreeHeadRequest {}).await })
        .await
        .map_err(|e| refused(e, "audit tree head"))?;
    let from_seq = reply.size.saturating_sub(a.lines).max(reply.sealed_up_to);
    let follow = a.follow;
    let mut records = s
        .client
        .call(|mut c| async move {
            c.tail_audit(pb::TailAuditRequest { from_seq, follow })
                .await
        })
        .await
        .map_err(|e| refused(e, "audit tail"))?;
    let stdout = std::io::stdout();
    if !a.json {
        println!("{}", tail_line(&HEADER.map(str::to_owned)));
    }
    let mut expected = from_seq;
    loop {
        let batch = if follow {
            // Following waits as long as the log is quiet.
            records
                .message()
                .await
                .map_err(|st| refused(st.into(), "audit tail"))?
        } else {
            stream::next(&mut records, "audit tail").await?
        };
        let Some(batch) = batch else { break };
        let mut out = stdout.lock();
        for bytes in &batch.records {
            let e = parse_record(bytes)?;
            if e.seq != expected {
                eprintln!(
                    "warning: record {} follows record {}",
                    e.seq,
                    expected.wrapping_sub(1)
                );
            }
            expected = e.seq.saturating_add(1);
            let written = if a.json {
                out.write_all(&e.leaf_bytes())
                    .and_then(|()| out.write_all(b"\n"))
            } else {
                writeln!(out, "{}", tail_line(&row(&e)))
            };
            written.map_err(|e| failed(anyhow!("writing stdout: {e}")))?;
        }
        out.flush()
            .map_err(|e| failed(anyhow!("writing stdout: {e}")))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn export(global: &GlobalArgs, a: AuditExportArgs) -> Outcome {
    // JSON lines is the one format (the policy::audit export), what the server streams.
    let AuditFormat::Jsonl = a.format;
    let mut s = session(global)?;
    let since = match a.since {
        Some(seq) => seq,
        None => {
            s.client
                .call(|mut c| async move { c.get_tree_head(pb::GetTreeHeadRequest {}).await })
                .await
                .map_err(|e| refused(e, "audit tree head"))?
                .sealed_up_to
        }
    };
    let chunks = stream::export(&mut s, since, 0).await?;
    match &a.out {
        Some(path) => {
            let n = stream::to_file(chunks, path, a.force).await?;
            eprintln!(
                "exported the audit log from record {since} to {} ({n} bytes); check it with \
                 `ringzero audit verify --file {}`",
                path.display(),
                path.display()
            );
        }
        None => {
            stream::to_stdout(chunks).await?;
        }
    }
    s.refresh().await;
    Ok(ExitCode::SUCCESS)
}
