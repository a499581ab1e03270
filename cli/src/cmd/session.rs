//! What every command that talks to the cluster shares: the profile, a client built from it and
//! the global overrides, the runtime, and error and table helpers.

use std::path::PathBuf;

use anyhow::anyhow;
use ringzero_proto::client::{AuthorityClient, ClientError, Profile};
use ringzero_proto::pb;

use crate::cli::GlobalArgs;
use crate::failure::{Failure, bad_input, bad_input_msg, failed};
use crate::input::{read_bounded, read_secret, write_file};

/// A multi-threaded tokio runtime for one command.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(failed)
}

/// The profile, its path, and a client built from it and the global overrides.
pub(crate) struct Session {
    pub(crate) path: PathBuf,
    pub(crate) profile: Profile,
    pub(crate) client: AuthorityClient,
}

pub(crate) fn session(global: &GlobalArgs) -> Result<Session, Failure> {
    let path = global
        .profile
        .clone()
        .ok_or_else(|| bad_input_msg("no profile: pass --profile FILE or set RINGZERO_PROFILE"))?;
    let text = read_bounded(&path).map_err(bad_input)?;
    let profile =
        Profile::from_toml(&text).map_err(|e| bad_input(anyhow!("{}: {e}", path.display())))?;
    let token = match &global.token {
        Some(t) => Some(read_secret(t).map_err(bad_input)?),
        None => None,
    };
    Ok(Session {
        client: client_of(&path, &profile, global, token)?,
        path,
        profile,
    })
}

/// A client with `profile`'s credentials (presenting `token` instead of the profile's, if
/// given), calling the addresses the global flags name, else the profile's.
fn client_of(
    path: &std::path::Path,
    profile: &Profile,
    global: &GlobalArgs,
    token: Option<String>,
) -> Result<AuthorityClient, Failure> {
    let mut creds = profile
        .credentials()
        .map_err(|e| bad_input(anyhow!("{}: {e}", path.display())))?;
    if token.is_some() {
        creds.token = token;
    }
    let addrs = if global.authority.is_empty() {
        profile.authorities.clone()
    } else {
        global.authority.clone()
    };
    Ok(AuthorityClient::new(creds, addrs))
}

impl Session {
    /// Another client with this session's credentials and the addresses the global flags or
    /// the (refreshed) profile name: its own connections.
    pub(crate) fn new_client(&self, global: &GlobalArgs) -> Result<AuthorityClient, Failure> {
        // The capability the session presents: the profile's, or the --token override (read
        // once: `-` is stdin).
        let token = self.client.token().map(str::to_owned);
        client_of(&self.path, &self.profile, global, token)
    }

    /// Refreshes the profile's bundle and member list from the cluster (atomic rename, 0600).
    pub(crate) async fn refresh(&mut self) {
        let Ok(bundle) = self
            .client
            .call(|mut c| async move { c.get_bundle(pb::GetBundleRequest {}).await })
            .await
        else {
            return;
        };
        // The bundle came over mTLS checked against the pinned CAs: new audit keys (a node that
        // joined) are learned here, and keys marked compromised leave every trusted set for
        // good — the CAs, the audit pins — whatever a later bundle says.
        let mut updated = self.profile.clone();
        updated.apply_bundle(&bundle);
        if updated != self.profile
            && let Ok(text) = updated.to_toml()
            && write_file(&self.path, text.as_bytes(), 0o600, true).is_ok()
        {
            self.profile = updated;
        }
    }
}

pub(crate) fn call_failed(e: ClientError) -> Failure {
    failed(anyhow!("{e}"))
}

/// gRPC codes the node and entry commands explain (`tonic::Code` as `i32`).
const INVALID_ARGUMENT: i32 = 3;
const NOT_FOUND: i32 = 5;
const ALREADY_EXISTS: i32 = 6;
const PERMISSION_DENIED: i32 = 7;
const FAILED_PRECONDITION: i32 = 9;
const UNIMPLEMENTED: i32 = 12;
const UNAUTHENTICATED: i32 = 16;

/// Exit 1 with the server's message, said in words for the codes an operator meets; `what` names
/// the thing the call was about (`entry 0a1b…`, `node n7`).
pub(crate) fn refused(e: ClientError, what: &str) -> Failure {
    failed(anyhow!("{}", explain(&e, what)))
}

pub(crate) fn explain(e: &ClientError, what: &str) -> String {
    let ClientError::Status { message, .. } = e else {
        return e.to_string();
    };
    let Some(code) = e.code().map(i32::from) else {
        return e.to_string();
    };
    // The server's message is repeated only when it adds something to what we say.
    let detail = |said: &str| {
        let subject = what.rsplit(' ').next().unwrap_or(what);
        if message.is_empty() || message.contains(subject) {
            format!("{what}: {said}")
        } else {
            format!("{what}: {said} ({message})")
        }
    };
    match code {
        NOT_FOUND => detail("not found"),
        ALREADY_EXISTS => detail("already exists"),
        INVALID_ARGUMENT | FAILED_PRECONDITION if message.starts_with("refused") => {
            format!("{what}: {message}")
        }
        INVALID_ARGUMENT | FAILED_PRECONDITION => {
            format!("{what}: refused by the authority: {message}")
        }
        PERMISSION_DENIED => format!("{what}: permission denied: {message}"),
        UNAUTHENTICATED => {
            format!("{what}: not authenticated ({message}); is the profile's credential expired?")
        }
        UNIMPLEMENTED => format!(
            "{what}: the authority does not implement this call ({message}); is it older than this CLI?"
        ),
        _ => e.to_string(),
    }
}

/// Prints rows as aligned columns separated by two spaces (the last column unpadded).
/// The last second RFC 3339 can write (9999-12-31T23:59:59Z), in milliseconds since 1970.
const RFC3339_MAX_MS: u64 = 253_402_300_799_999;

/// A unix time in milliseconds as RFC 3339, to the second. Times in replies come from a
/// server: one past year 9999 is shown as its raw number instead of failing the output.
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    match std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms)) {
        Some(t) if ms <= RFC3339_MAX_MS => humantime::format_rfc3339_seconds(t).to_string(),
        _ => format!("{ms} ms after 1970"),
    }
}

/// [`rfc3339_ms`], or `-` when the time is unknown (0).
pub(crate) fn format_ms(ms: u64) -> String {
    if ms == 0 { "-".into() } else { rfc3339_ms(ms) }
}

pub(crate) fn print_table<const N: usize>(rows: &[[String; N]]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for line in render_table(rows) {
        // A closed pipe (`| head`) ends the output quietly instead of panicking.
        if writeln!(out, "{line}").is_err() {
            return;
        }
    }
}

/// The lines `print_table` prints.
pub(crate) fn render_table<const N: usize>(rows: &[[String; N]]) -> Vec<String> {
    let mut widths = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    rows.iter()
        .map(|r| {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i + 1 == N {
                        c.clone()
                    } else {
                        format!("{c:<w$}", w = widths[i])
                    }
                })
                .collect();
            line.join("  ")
        })
        .collect()
}

/// The CA certificates of a `--bundle FILE` (PEM): at least one, or a clear error (exit 2).
pub(crate) fn bundle_file(
    path: &std::path::Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, Failure> {
    use rustls_pki_types::pem::PemObject;
    let pem = crate::input::read_bounded(path).map_err(bad_input)?;
    let cas: Result<Vec<rustls_pki_types::CertificateDer<'static>>, _> =
        rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let cas = cas.map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", path.display())))?;
    if cas.is_empty() {
        return Err(bad_input_msg(format!("{}: no certificate", path.display())));
    }
    Ok(cas)
}

#[cfg(test)]
mod time_tests {
    use super::{format_ms, rfc3339_ms};

    #[test]
    fn server_times_never_fail_the_output() {
        assert_eq!(format_ms(0), "-");
        assert_eq!(rfc3339_ms(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(rfc3339_ms(253_402_300_799_000), "9999-12-31T23:59:59Z");
        // Past what RFC 3339 can write, and the largest value a reply can hold.
        assert_eq!(
            rfc3339_ms(253_402_300_800_000),
            "253402300800000 ms after 1970"
        );
        assert_eq!(rfc3339_ms(u64::MAX), format!("{} ms after 1970", u64::MAX));
    }
}
