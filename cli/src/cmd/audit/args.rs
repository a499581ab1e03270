//! The `audit` subcommands' flags and value parsers.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the log against the profile's pinned audit keys: live, or exported files.
    #[command(after_help = AUDIT_VERIFY_HELP)]
    Verify(AuditVerifyArgs),
    /// Find records by actor, operation, resource, decision and time (oldest first).
    #[command(after_help = "\
TIME is an RFC 3339 time (2026-01-31T12:00:00Z, 2026-01-31T13:00:00+01:00) or a duration
meaning that long ago (30m, 1h, 7d). --resource matches whole path segments: ns/a matches
ns/a and ns/a/web, not ns/ab. The table truncates long fields; --json prints every field,
one record per line (the export's record fields).

Examples:
  ringzero --profile admin.profile audit query --decision deny --since 1h
  ringzero audit query --actor spiffe://example.org/user/alice --operation entry:write
  ringzero audit query --resource ns/default --since 2026-01-31T00:00:00Z --limit 1000 --json")]
    Query(AuditQueryArgs),
    /// Print the last records, then with -f every new record as it is committed.
    #[command(after_help = "\
Examples:
  ringzero --profile admin.profile audit tail
  ringzero audit tail -n 100
  ringzero audit tail -f --json | my-siem-forwarder")]
    Tail(AuditTailArgs),
    /// Write the live log as a JSON-lines export (records and signed tree heads).
    #[command(after_help = "\
One JSON object per line: a segment line when the export starts after sealed records, one
line per record, and a signed tree head after every 1024 records and at the end. Check it
with `ringzero audit verify --file FILE`. Default start: the first live (unsealed) record.

Examples:
  ringzero --profile admin.profile audit export --out audit.jsonl
  ringzero audit export --since 5000 > recent.jsonl")]
    Export(AuditExportArgs),
    /// Prove that a record is in the current signed tree (verified here, with the pinned keys).
    #[command(after_help = "\
Prints the record, then `included in tree of size N (root …), signed by key K`.

Examples:
  ringzero --profile admin.profile audit prove 1234
  ringzero audit prove 1234 --json")]
    Prove(AuditProveArgs),
    /// Move old records into a signed segment file and drop them from the live log.
    #[command(after_help = AUDIT_SEAL_HELP)]
    Seal(AuditSealArgs),
    /// Exec sessions' recordings: fetch one from its node, or check it against the audit log.
    #[command(subcommand, after_help = super::session::SESSION_HELP)]
    Session(super::session::AuditSessionCommand),
}

const AUDIT_VERIFY_HELP: &str = "\
Tree heads are checked only against the audit keys pinned in the profile, never against keys
carried by the data. Live (the default): checks the cluster's signed tree head, demands a
consistency proof from the last head this profile accepted (remembered in PROFILE.audit-head;
a smaller or diverging tree is reported as a rollback), re-derives the tree from every live
record, then remembers the new head. With --file: verifies the files in order as one chain
(sealed segments oldest first, then optionally a live export), each continuing the previous
one, and holds them to the remembered head exactly as the live check does: their tree at its
size must be the one accepted (a fork is named by its first differing record), files that end
before it or start after it are refused; the chain's last head is then remembered. The first
altered, dropped, reordered, inserted or truncated record is named. --no-remember checks
against the remembered head without updating it.

Examples:
  ringzero --profile admin.profile audit verify
  ringzero audit verify --json
  ringzero audit verify --file seg-0.jsonl --file seg-1.jsonl --file live.jsonl
  ringzero audit verify --no-remember --file copy-from-a-colleague.jsonl";

const AUDIT_SEAL_HELP: &str = "\
Exports the live records from the current start up to --up-to (default: all but the last
1000 records, or all of them when there are fewer) into FILE (mode 0600), verifies FILE with
the pinned keys and against the signed live tree, then asks the authority to drop those
records: it does so only if the root of FILE's tree matches its own. The Merkle tree keeps
growing across segments; keep every segment file: `audit verify --file` checks the chain
seg-1 seg-2 … live.

Examples:
  ringzero --profile admin.profile audit seal --out /backup/audit-seg-0001.jsonl
  ringzero audit seal --out seg.jsonl --up-to 100000";

#[derive(Debug, Args)]
pub(crate) struct AuditVerifyArgs {
    /// Verify this export instead of the live log (repeatable: a chain, oldest first).
    #[arg(long = "file", value_name = "EXPORT")]
    pub(crate) files: Vec<PathBuf>,
    /// Check against the remembered head, but do not remember the head verified now.
    #[arg(long)]
    pub(crate) no_remember: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AuditQueryArgs {
    /// Only records by this actor (a SPIFFE ID, or local:… for the admin socket).
    #[arg(long, value_name = "ID", value_parser = parse_audit_filter)]
    pub(crate) actor: Option<String>,
    /// Only records of this operation, e.g. entry:write.
    #[arg(long, value_name = "OP", value_parser = parse_audit_filter)]
    pub(crate) operation: Option<String>,
    /// Only records whose resource is under this prefix (whole segments).
    #[arg(long, value_name = "PREFIX", value_parser = parse_audit_filter)]
    pub(crate) resource: Option<String>,
    /// Only allowed or only denied requests.
    #[arg(long, value_enum)]
    pub(crate) decision: Option<AuditDecisionArg>,
    /// Only records at or after TIME (RFC 3339, or a duration ago such as 1h).
    #[arg(long, value_name = "TIME", value_parser = parse_audit_time)]
    pub(crate) since: Option<AuditTime>,
    /// Only records at or before TIME (RFC 3339, or a duration ago such as 10m).
    #[arg(long, value_name = "TIME", value_parser = parse_audit_time)]
    pub(crate) until: Option<AuditTime>,
    /// At most this many records (1 to 1000000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) limit: u32,
    /// Print JSON lines (one record per line) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AuditDecisionArg {
    Allow,
    Deny,
}

/// A point in time given on the command line: absolute, or a duration before now (resolved when
/// the command runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuditTime {
    /// Unix milliseconds.
    At(u64),
    /// This long before now.
    Ago(Duration),
}

#[derive(Debug, Args)]
pub(crate) struct AuditTailArgs {
    /// Keep printing new records as they are committed (until interrupted).
    #[arg(short = 'f', long)]
    pub(crate) follow: bool,
    /// How many of the latest records to print first.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 20)]
    pub(crate) lines: u64,
    /// Print JSON lines instead of columns.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AuditExportArgs {
    /// The first record to export (default: the first live record).
    #[arg(long, value_name = "SEQ")]
    pub(crate) since: Option<u64>,
    /// Write to FILE (mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// The export format.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub(crate) format: AuditFormat,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum AuditFormat {
    /// JSON lines: records and signed tree heads (see `audit verify --file`).
    Jsonl,
}

#[derive(Debug, Args)]
pub(crate) struct AuditProveArgs {
    /// The record's sequence number (its SEQ in `audit query`).
    #[arg(value_name = "SEQ")]
    pub(crate) seq: u64,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AuditSealArgs {
    /// Where to write the sealed segment (mode 0600). Keep it: it is the only copy afterwards.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Seal the records before this seq (default: all but the last 1000, or all if fewer).
    #[arg(long, value_name = "SEQ")]
    pub(crate) up_to: Option<u64>,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub(crate) force: bool,
}

/// The longest actor, operation or resource filter accepted.
const MAX_AUDIT_FILTER: usize = 1024;

fn parse_audit_filter(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_AUDIT_FILTER {
        return Err(format!("longer than {MAX_AUDIT_FILTER} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(s.to_owned())
}

pub(crate) fn parse_audit_time(s: &str) -> Result<AuditTime, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        return u64::try_from(ms)
            .map(AuditTime::At)
            .map_err(|_| "must not be before 1970".into());
    }
    humantime::parse_duration(s).map(AuditTime::Ago).map_err(|_| {
        format!(
            "{s:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration ago (30m, 1h, 7d)"
        )
    })
}
