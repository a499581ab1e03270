//! clap pieces several subcommands share: `--json`, and durations and lifetimes.

use std::time::Duration;

use clap::Args;

/// The flags of a command whose only option is `--json`.
#[derive(Debug, Args)]
pub(crate) struct JsonArgs {
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The longest a join token may stay redeemable.
const MAX_JOIN_TTL: Duration = Duration::from_secs(24 * 3600);

/// A join token's or invite's redeemable time: 1s to 24h.
pub(crate) fn parse_join_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) || d > MAX_JOIN_TTL {
        return Err("must be from 1s to 24h".into());
    }
    Ok(d)
}

/// A user credential's lifetime: 1m to 7d.
pub(crate) fn parse_user_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(60) || d > Duration::from_secs(7 * 24 * 3600) {
        return Err("must be from 1m to 7d".into());
    }
    Ok(d)
}

/// A duration such as 30s, 10m or 1h30m.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 10m, 1h, 1h30m)"))
}
