//! The sidecar's configuration: parsed from flags (`Args`, with the `clap` feature) and a TOML
//! file ([`Settings::from_toml`]), merged (flags override the file), then validated into a [`Config`].
//!
//! Every parser here is clap-free and total: hostile input yields a [`ConfigError`], never a
//! panic. Validation reports every problem at once ([`ConfigErrors`]).
//!
//! Safe by default: an inbound listener with no `allow` rule refuses to start unless
//! `allow_trust_domain` says explicitly that any workload of the trust domain may come in, or
//! `allow_from_authority` says explicitly that the authority's mesh policies alone decide (then
//! no one comes in until a policy allows it, and no one at all beside an agent without ringzero's
//! mesh extension), and
//! an inbound target must be a loopback address unless `unsafe_target` is set; outbound
//! listeners are always loopback; the admin address is loopback unless `unsafe_admin` is set.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ringzero_policy::{SpiffeId, SpiffeIdPattern};
use serde::Deserialize;

/// The environment variable that names the Workload API endpoint (SPIFFE Workload Endpoint
/// spec), used when no endpoint is configured.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";
/// Default bound on the wait for the first SVID.
pub const DEFAULT_SVID_TIMEOUT: Duration = Duration::from_secs(30);
/// Default maximum age of a proxied connection: well under the usual SVID lifetime (one hour),
/// so no connection outlives a revocation or an expiry for long.
pub const DEFAULT_MAX_CONN_AGE: Duration = Duration::from_secs(15 * 60);
/// Default time live connections get to finish after a shutdown signal.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest duration accepted for any of the timeouts above (a week): anything longer is a
/// typo, and keeps `Instant` arithmetic far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most listeners (inbound plus outbound) and allow rules accepted.
pub const MAX_ENTRIES: usize = 256;
/// The longest single value accepted (an address, an ID, a path).
pub const MAX_VALUE_LEN: usize = 2048;
/// The largest configuration file accepted, in bytes.
pub const MAX_FILE_LEN: usize = 1024 * 1024;

/// Why a configuration value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: String,
    },
    #[error("no Workload API endpoint: pass --workload-api unix:///PATH or set {ENDPOINT_ENV}")]
    NoWorkloadApi,
    #[error("no listener: give at least one --inbound or --outbound")]
    NoListener,
    #[error(
        "inbound listener {0} would let no one in: add --allow ID|PREFIX/*, --allow-from-authority to admit only whom the authority's mesh policies allow, or --allow-trust-domain to admit every workload of the trust domain"
    )]
    NoAllowRule(SocketAddr),
    #[error(
        "inbound target {target} of {listen} is not a loopback address (pass --unsafe-target to forward off this host in plain text)"
    )]
    TargetNotLoopback { listen: SocketAddr, target: String },
    #[error(
        "outbound listener {0} is not a loopback address: it would lend this workload's identity to anyone who can reach it"
    )]
    OutboundNotLoopback(SocketAddr),
    #[error(
        "admin address {0} is not a loopback address (pass --unsafe-admin to serve /live, /ready and /metrics off this host, e.g. for a Prometheus scraper; /status answers loopback callers only)"
    )]
    AdminNotLoopback(SocketAddr),
    #[error("address {0} is used by more than one listener")]
    DuplicateListen(SocketAddr),
    #[error("more than {MAX_ENTRIES} {0}")]
    TooMany(&'static str),
    #[error("cannot read the configuration file: {0}")]
    File(String),
}

fn invalid(what: &'static str, value: &str, why: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        what,
        value: value.chars().take(120).collect(),
        why: why.to_string(),
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

/// A `host:port` to connect to: an IP literal (`127.0.0.1:80`, `[::1]:80`) or a DNS name
/// (`db.internal:5432`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    /// Parses `host:port`. A DNS name is checked for form (letters, digits, `-`, `.`).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| invalid("address", s, why);
        if s.len() > MAX_VALUE_LEN {
            return Err(bad("too long"));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Self::from_socket_addr(addr).ok_or_else(|| bad("port 0"));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        let dns_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !dns_ok {
            return Err(bad("host is neither an IP address nor a DNS name"));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn from_socket_addr(addr: SocketAddr) -> Option<Self> {
        (addr.port() != 0).then(|| Self {
            host: addr.ip().to_string(),
            port: addr.port(),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the host is a loopback IP address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip_is_loopback(&ip))
    }
}

fn ip_is_loopback(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `--inbound LISTEN=TARGET`: terminate mTLS on `listen`, forward plain TCP to `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub listen: SocketAddr,
    pub target: HostPort,
}

/// `--outbound LISTEN=TARGET@spiffe://…`: accept plain TCP on `listen` (loopback), originate
/// mTLS to `target` and require its SVID to carry exactly `expect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub listen: SocketAddr,
    pub target: HostPort,
    pub expect: SpiffeId,
}

fn parse_listen(s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse::<SocketAddr>()
        .map_err(|_| invalid("listen address", s, "expected IP:PORT"))
}

/// Parses `LISTEN=TARGET`, e.g. `127.0.0.1:8443=127.0.0.1:8080`.
pub fn parse_inbound(s: &str) -> Result<Inbound, ConfigError> {
    if s.len() > MAX_VALUE_LEN {
        return Err(invalid("--inbound", s, "too long"));
    }
    let (listen, target) = s
        .split_once('=')
        .ok_or_else(|| invalid("--inbound", s, "expected LISTEN=TARGET"))?;
    Ok(Inbound {
        listen: parse_listen(listen)?,
        target: HostPort::parse(target)?,
    })
}

/// Parses `LISTEN=TARGET@spiffe://TD/PATH`, e.g.
/// `127.0.0.1:5432=db.internal:8443@spiffe://example.org/ns/shop/db`.
pub fn parse_outbound(s: &str) -> Result<Outbound, ConfigError> {
    if s.len() > MAX_VALUE_LEN {
        return Err(invalid("--outbound", s, "too long"));
    }
    let (listen, rest) = s
        .split_once('=')
        .ok_or_else(|| invalid("--outbound", s, "expected LISTEN=TARGET@spiffe://…"))?;
    let (target, expect) = rest
        .split_once('@')
        .ok_or_else(|| invalid("--outbound", s, "expected LISTEN=TARGET@spiffe://…"))?;
    let expect = SpiffeId::parse(expect).map_err(|e| invalid("expected SPIFFE ID", expect, e))?;
    if expect.path().is_empty() {
        return Err(invalid(
            "expected SPIFFE ID",
            expect.as_str(),
            "a trust domain ID names no workload",
        ));
    }
    Ok(Outbound {
        listen: parse_listen(listen)?,
        target: HostPort::parse(target)?,
        expect,
    })
}

/// Parses an allow rule: `spiffe://TD/exact/id` or `spiffe://TD/prefix/*` (whole path
/// segments: `spiffe://td/ns/shop/*` admits `…/ns/shop/web`, not `…/ns/shopping`).
pub fn parse_allow(s: &str) -> Result<SpiffeIdPattern, ConfigError> {
    if s.len() > MAX_VALUE_LEN {
        return Err(invalid("--allow", s, "too long"));
    }
    let pattern = SpiffeIdPattern::parse(s).map_err(|e| invalid("--allow", s, e))?;
    if let SpiffeIdPattern::Exact(id) = &pattern
        && id.path().is_empty()
    {
        return Err(invalid(
            "--allow",
            s,
            "a trust domain ID names no workload (use --allow-trust-domain to admit all of them)",
        ));
    }
    Ok(pattern)
}

/// Parses a Workload API endpoint: `unix:///abs/path`, `unix:/abs/path` or `/abs/path`.
pub fn parse_workload_api(s: &str) -> Result<PathBuf, ConfigError> {
    let bad = |why: &dyn fmt::Display| invalid("Workload API endpoint", s, why);
    if s.len() > MAX_VALUE_LEN {
        return Err(bad(&"too long"));
    }
    ringzero_proto::workload_api::endpoint_path(s).map_err(|e| bad(&e))
}

/// Parses a duration such as `30s`, `15m`, `1h 30m` (humantime), between 1 ms and
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    if s.len() > 64 {
        return Err(invalid("duration", s, "too long"));
    }
    let d = humantime::parse_duration(s.trim()).map_err(|e| invalid("duration", s, e))?;
    if d < Duration::from_millis(1) || d > MAX_DURATION {
        return Err(invalid("duration", s, "must be between 1ms and 7 days"));
    }
    Ok(d)
}

/// Parses the admin listen address (`127.0.0.1:9901`).
pub fn parse_admin(s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse::<SocketAddr>()
        .map_err(|_| invalid("--admin", s, "expected IP:PORT"))
}

/// A validated sidecar configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The Workload API socket.
    pub workload_api: PathBuf,
    pub inbound: Vec<Inbound>,
    pub outbound: Vec<Outbound>,
    /// Who may come in through the inbound listeners.
    pub allow: Vec<SpiffeIdPattern>,
    /// Admit any workload of the trust domain when no rule is given (explicit opt-in).
    pub allow_trust_domain: bool,
    /// Start inbound listeners with no local rule: the authority's mesh policies (from the
    /// agent's extension) are then the only allow source (explicit opt-in). Authority policies
    /// admit callers with or without it; it only lifts the start-up refusal.
    pub allow_from_authority: bool,
    /// Permit inbound targets that are not loopback addresses.
    pub unsafe_target: bool,
    /// Where `/live`, `/ready`, `/metrics` and `/status` are served: a loopback address unless
    /// `unsafe_admin` was given.
    pub admin: Option<SocketAddr>,
    /// Permit an admin address that is not a loopback address.
    pub unsafe_admin: bool,
    pub svid_timeout: Duration,
    pub max_conn_age: Duration,
    pub drain_timeout: Duration,
    /// Send a PROXY v2 header carrying the caller's SPIFFE ID to inbound targets.
    pub proxy_protocol: bool,
}

/// The configuration before validation, every field optional, as the flags give it and as the
/// TOML file (`--config mesh.toml`) holds it — the flags' names with `_` for `-`:
///
/// ```toml
/// workload_api = "unix:///run/ringzero/agent.sock"
/// inbound = ["0.0.0.0:8443=127.0.0.1:8080"]
/// allow = ["spiffe://example.org/ns/shop/*"]
/// outbound = ["127.0.0.1:5432=db.internal:8443@spiffe://example.org/ns/shop/db"]
/// admin = "127.0.0.1:9901"
/// max_conn_age = "15m"
/// ```
///
/// [`Settings::merge`] lays flags over a file; [`Settings::validate`] makes a [`Config`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub workload_api: Option<String>,
    pub inbound: Vec<String>,
    pub outbound: Vec<String>,
    pub allow: Vec<String>,
    pub allow_trust_domain: Option<bool>,
    pub allow_from_authority: Option<bool>,
    pub unsafe_target: Option<bool>,
    pub admin: Option<String>,
    pub unsafe_admin: Option<bool>,
    pub svid_timeout: Option<String>,
    pub max_conn_age: Option<String>,
    pub drain_timeout: Option<String>,
    pub proxy_protocol: Option<bool>,
}

impl Settings {
    /// Parses the TOML text of a configuration file.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_FILE_LEN {
            return Err(ConfigError::File("larger than 1 MiB".into()));
        }
        toml::from_str(text).map_err(|e| ConfigError::File(e.message().to_owned()))
    }

    /// `self` (the flags) laid over `file`: a value given here wins; a list given here
    /// replaces the file's list.
    pub fn merge(self, file: Settings) -> Settings {
        fn list(flags: Vec<String>, file: Vec<String>) -> Vec<String> {
            if flags.is_empty() { file } else { flags }
        }
        Settings {
            workload_api: self.workload_api.or(file.workload_api),
            inbound: list(self.inbound, file.inbound),
            outbound: list(self.outbound, file.outbound),
            allow: list(self.allow, file.allow),
            allow_trust_domain: self.allow_trust_domain.or(file.allow_trust_domain),
            allow_from_authority: self.allow_from_authority.or(file.allow_from_authority),
            unsafe_target: self.unsafe_target.or(file.unsafe_target),
            unsafe_admin: self.unsafe_admin.or(file.unsafe_admin),
            admin: self.admin.or(file.admin),
            svid_timeout: self.svid_timeout.or(file.svid_timeout),
            max_conn_age: self.max_conn_age.or(file.max_conn_age),
            drain_timeout: self.drain_timeout.or(file.drain_timeout),
            proxy_protocol: self.proxy_protocol.or(file.proxy_protocol),
        }
    }

    /// Validates into a [`Config`], reporting every problem. `endpoint_env` is the value of
    /// [`ENDPOINT_ENV`], used when no endpoint is configured (the caller reads the
    /// environment; this crate does not).
    pub fn validate(self, endpoint_env: Option<&str>) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let errs = &mut errors;

        let workload_api = match self.workload_api.as_deref().or(endpoint_env) {
            Some(s) => keep(errs, parse_workload_api(s)),
            None => keep(errs, Err(ConfigError::NoWorkloadApi)),
        };
        for (what, len) in [
            ("inbound listeners", self.inbound.len()),
            ("outbound listeners", self.outbound.len()),
            ("allow rules", self.allow.len()),
        ] {
            if len > MAX_ENTRIES {
                return Err(ConfigError::TooMany(what).into());
            }
        }
        let inbound: Vec<Inbound> = self
            .inbound
            .iter()
            .filter_map(|s| keep(errs, parse_inbound(s)))
            .collect();
        let outbound: Vec<Outbound> = self
            .outbound
            .iter()
            .filter_map(|s| keep(errs, parse_outbound(s)))
            .collect();
        let allow: Vec<SpiffeIdPattern> = self
            .allow
            .iter()
            .filter_map(|s| keep(errs, parse_allow(s)))
            .collect();
        let duration = |v: Option<String>, default| v.map_or(Ok(default), |s| parse_duration(&s));
        let svid_timeout = keep(errs, duration(self.svid_timeout, DEFAULT_SVID_TIMEOUT));
        let max_conn_age = keep(errs, duration(self.max_conn_age, DEFAULT_MAX_CONN_AGE));
        let drain_timeout = keep(errs, duration(self.drain_timeout, DEFAULT_DRAIN_TIMEOUT));
        let admin = self
            .admin
            .as_deref()
            .and_then(|s| keep(errs, parse_admin(s)));
        let allow_trust_domain = self.allow_trust_domain.unwrap_or(false);
        let allow_from_authority = self.allow_from_authority.unwrap_or(false);
        let unsafe_target = self.unsafe_target.unwrap_or(false);
        let unsafe_admin = self.unsafe_admin.unwrap_or(false);
        if let Some(admin) = admin.filter(|a| !ip_is_loopback(&a.ip()) && !unsafe_admin) {
            errors.push(ConfigError::AdminNotLoopback(admin));
        }

        if self.inbound.is_empty() && self.outbound.is_empty() {
            errors.push(ConfigError::NoListener);
        }
        let mut seen = std::collections::HashSet::new();
        for listen in inbound
            .iter()
            .map(|i| i.listen)
            .chain(outbound.iter().map(|o| o.listen))
            .chain(admin)
        {
            // Port 0 asks for an ephemeral port: never a clash.
            if listen.port() != 0 && !seen.insert(listen) {
                errors.push(ConfigError::DuplicateListen(listen));
            }
        }
        for i in &inbound {
            if allow.is_empty()
                && !allow_trust_domain
                && !allow_from_authority
                && self.allow.is_empty()
            {
                errors.push(ConfigError::NoAllowRule(i.listen));
            }
            if !i.target.is_loopback() && !unsafe_target {
                errors.push(ConfigError::TargetNotLoopback {
                    listen: i.listen,
                    target: i.target.to_string(),
                });
            }
        }
        for o in &outbound {
            if !ip_is_loopback(&o.listen.ip()) {
                errors.push(ConfigError::OutboundNotLoopback(o.listen));
            }
        }

        match (workload_api, svid_timeout, max_conn_age, drain_timeout) {
            (Some(workload_api), Some(svid_timeout), Some(max_conn_age), Some(drain_timeout))
                if errors.is_empty() =>
            {
                Ok(Config {
                    workload_api,
                    inbound,
                    outbound,
                    allow,
                    allow_trust_domain,
                    allow_from_authority,
                    unsafe_target,
                    admin,
                    unsafe_admin,
                    svid_timeout,
                    max_conn_age,
                    drain_timeout,
                    proxy_protocol: self.proxy_protocol.unwrap_or(false),
                })
            }
            _ => Err(ConfigErrors(errors)),
        }
    }
}

/// Keeps the value of `r`, or records its error.
fn keep<T>(errors: &mut Vec<ConfigError>, r: Result<T, ConfigError>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

#[cfg(feature = "clap")]
mod args;
#[cfg(feature = "clap")]
pub use self::args::Args;

#[cfg(test)]
mod tests;
