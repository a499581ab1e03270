//! The sidecar's flags, for the CLI to flatten into `ringzero mesh sidecar`.

use std::path::PathBuf;

use super::{ConfigErrors, ENDPOINT_ENV, Settings};

/// `ringzero mesh sidecar` flags. Values are kept as text and parsed by [`Settings::validate`],
/// so that flags and the file are checked by the same code and every error is reported at once.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// The Workload API endpoint (unix:///PATH) [default: $SPIFFE_ENDPOINT_SOCKET].
    #[arg(long, value_name = "unix:///PATH")]
    pub workload_api: Option<String>,
    /// Terminate mTLS on LISTEN and forward plain TCP to TARGET (repeatable).
    #[arg(long, value_name = "LISTEN=TARGET")]
    pub inbound: Vec<String>,
    /// Who may come in: a SPIFFE ID, or a segment-aware prefix ending in /* (repeatable).
    #[arg(long, value_name = "ID|PREFIX/*")]
    pub allow: Vec<String>,
    /// Accept plain TCP on LISTEN (loopback) and originate mTLS to TARGET, which must present
    /// exactly the given SPIFFE ID (repeatable).
    #[arg(long, value_name = "LISTEN=TARGET@spiffe://TD/PATH")]
    pub outbound: Vec<String>,
    /// Serve /live, /ready, /metrics and /status on this address (loopback unless
    /// --unsafe-admin). `--metrics` is the same flag, as on the other daemons.
    #[arg(long, value_name = "ADDR", visible_alias = "metrics")]
    pub admin: Option<String>,
    /// Allow an --admin address that is not loopback (for a scraper: /live, /ready and
    /// /metrics answer whoever can reach it; /status answers loopback callers only).
    #[arg(long)]
    pub unsafe_admin: bool,
    /// Admit every workload of the trust domain on inbound listeners with no allow rule.
    #[arg(long)]
    pub allow_trust_domain: bool,
    /// Start inbound listeners with no --allow rule, admitting only whom the authority's mesh
    /// policies allow (`ringzero mesh allow`); no one until a policy does, and no one at all
    /// beside an agent without ringzero's mesh extension (SPIRE's).
    #[arg(long)]
    pub allow_from_authority: bool,
    /// Allow inbound targets that are not loopback addresses (plain text off this host).
    #[arg(long)]
    pub unsafe_target: bool,
    /// How long to wait for the first SVID [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub svid_timeout: Option<String>,
    /// Close proxied connections older than this [default: 15m].
    #[arg(long, value_name = "DURATION")]
    pub max_conn_age: Option<String>,
    /// On shutdown, how long live connections get to finish [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// Send a PROXY protocol v2 header with the caller's SPIFFE ID to inbound targets.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Read settings from this TOML file; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl Args {
    /// The flags as [`Settings`] (switches that are off leave the file's value in force).
    pub fn settings(&self) -> Settings {
        let switch = |on: bool| on.then_some(true);
        Settings {
            workload_api: self.workload_api.clone(),
            inbound: self.inbound.clone(),
            outbound: self.outbound.clone(),
            allow: self.allow.clone(),
            allow_trust_domain: switch(self.allow_trust_domain),
            allow_from_authority: switch(self.allow_from_authority),
            unsafe_target: switch(self.unsafe_target),
            unsafe_admin: switch(self.unsafe_admin),
            admin: self.admin.clone(),
            svid_timeout: self.svid_timeout.clone(),
            max_conn_age: self.max_conn_age.clone(),
            drain_timeout: self.drain_timeout.clone(),
            proxy_protocol: switch(self.proxy_protocol),
        }
    }

    /// Reads the file named by `--config` (if any), lays the flags over it, reads
    /// `$SPIFFE_ENDPOINT_SOCKET` and validates. For the binary: this is where flags, file and
    /// environment are read.
    pub fn load(&self) -> Result<super::Config, ConfigErrors> {
        let file = match &self.config {
            Some(path) => {
                let text = read_bounded(path)
                    .map_err(|e| super::ConfigError::File(format!("{}: {e}", path.display())))?;
                Settings::from_toml(&text)?
            }
            None => Settings::default(),
        };
        let env = std::env::var(ENDPOINT_ENV).ok();
        self.settings().merge(file).validate(env.as_deref())
    }
}

/// The file's text, reading at most one byte past [`super::MAX_FILE_LEN`] (so that
/// `--config /dev/zero` or a huge file is refused by the size check, not read into memory).
fn read_bounded(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let limit = u64::try_from(super::MAX_FILE_LEN)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(limit)
        .read_to_string(&mut text)?;
    Ok(text)
}
