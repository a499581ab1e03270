//! A scheduler with its own identity: `sched run --join-token T --data-dir D`.
//!
//! The first start generates the key here, checks the token's pin against the authority
//! before sending its secret, and redeems the token with `Login` and a CSR: the authority
//! answers with an SVID `spiffe://TD/ringzero/sched/<name>` and the `scheduler` role's
//! capability bound to it (at most 1 h). They are kept in `D/profile.toml` (D 0700, the file
//! 0600), the same profile format a user's `login` writes, so `ringzero --profile
//! D/profile.toml …` presents exactly the scheduler's credentials. Later starts reuse D and
//! need no token. A task renews the credentials at half their lifetime over mTLS with the
//! current SVID and capability (`Login` without an invite), rewrites the profile (atomic
//! rename) and hands them to the daemon, which presents them from its next call on.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use ringzero_policy::join::JoinToken;
use ringzero_policy::svid::{NOT_BEFORE_BACKDATE, csr_for, generate_key};
use ringzero_policy::{SpiffeId, TrustDomain};
use ringzero_proto::client::{AuthorityClient, ClientError, Profile, login_with_invite};
use ringzero_proto::pb;
use tokio::sync::watch;

use super::super::session::refused;
use crate::failure::{Failure, bad_input, bad_input_msg, failed};
use crate::input::{read_bounded, read_secret, write_file};

/// The profile's file name in the data directory.
pub(crate) const PROFILE_FILE: &str = "profile.toml";

/// The scheduler's credentials, where they are kept, and where the authority is.
pub(crate) struct Identity {
    pub(crate) path: PathBuf,
    pub(crate) profile: Profile,
    pub(crate) addrs: Vec<String>,
    /// The credentials' lifetime asked for at enrollment and at each renewal (0: the
    /// authority's default, 1 h, which is also the most it grants).
    pub(crate) ttl_seconds: u64,
}

/// Creates `dir` (0700) or checks that an existing one is private.
pub(crate) fn private_dir(dir: &Path) -> Result<(), Failure> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(bad_input_msg(format!("{}: not a directory", dir.display()))),
        Ok(m) => check_private(dir, m.permissions().mode(), 0o700),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| failed(anyhow!("creating {}: {e}", dir.display()))),
        Err(e) => Err(failed(anyhow!("{}: {e}", dir.display()))),
    }
}

/// Refuses a file or directory that others than its owner may read or enter.
fn check_private(path: &Path, mode: u32, want: u32) -> Result<(), Failure> {
    if mode & 0o077 != 0 {
        return Err(bad_input_msg(format!(
            "{} is accessible to other users (mode {:o}); it holds the scheduler's key: \
             chmod {want:o} {}",
            path.display(),
            mode & 0o777,
            path.display()
        )));
    }
    Ok(())
}

/// The identity kept in `dir`, or a new one enrolled with `join_token` at `authorities`.
pub(crate) async fn load_or_enroll(
    dir: &Path,
    join_token: Option<&str>,
    authorities: &[String],
    ttl_seconds: u64,
) -> Result<Identity, Failure> {
    private_dir(dir)?;
    let path = dir.join(PROFILE_FILE);
    let profile = match std::fs::metadata(&path) {
        Ok(m) => {
            check_private(&path, m.permissions().mode(), 0o600)?;
            if join_token.is_some() {
                eprintln!(
                    "{} holds the scheduler's credentials already: the join token is not used",
                    path.display()
                );
            }
            let text = read_bounded(&path).map_err(bad_input)?;
            Profile::from_toml(&text).map_err(|e| bad_input(anyhow!("{}: {e}", path.display())))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(token) = join_token else {
                return Err(bad_input_msg(format!(
                    "{} holds no credentials: the first start needs --join-token (from \
                     `ringzero sched token`)",
                    dir.display()
                )));
            };
            enroll(&path, token, authorities, ttl_seconds).await?
        }
        Err(e) => return Err(failed(anyhow!("{}: {e}", path.display()))),
    };
    let addrs = if authorities.is_empty() {
        profile.authorities.clone()
    } else {
        authorities.to_vec()
    };
    Ok(Identity {
        path,
        profile,
        addrs,
        ttl_seconds,
    })
}

/// Redeems `token` (pin checked first) for credentials made for a key generated here.
async fn enroll(
    path: &Path,
    token: &str,
    authorities: &[String],
    ttl_seconds: u64,
) -> Result<Profile, Failure> {
    if authorities.is_empty() {
        return Err(bad_input_msg(
            "the first start needs --authority ADDR[,ADDR…] (the addresses `sched token` printed)",
        ));
    }
    let token = JoinToken::parse(&read_secret(token).map_err(bad_input)?)
        .map_err(|e| bad_input(anyhow!("join token: {e}")))?;
    let key = generate_key().map_err(failed)?;
    let login = login_with_invite(
        authorities,
        &token,
        |td| placeholder_id(td).and_then(|id| csr_for(&key, &id).map_err(|e| e.to_string())),
        ttl_seconds,
    )
    .await
    .map_err(|e| match e {
        ClientError::PinMismatch(_) => failed(anyhow!("{e}")),
        other => refused(other, "scheduler enrollment"),
    })?;
    let members: Vec<String> = login
        .credentials
        .bundle
        .as_ref()
        .map(|b| b.members.iter().map(|m| m.address.clone()).collect())
        .unwrap_or_default();
    let profile = Profile::from_user_credentials(
        &login.trust_domain,
        if members.is_empty() {
            authorities.to_vec()
        } else {
            members
        },
        &login.cas,
        None,
        &login.credentials,
        &key.serialize_der(),
    );
    save(path, &profile, false)?;
    eprintln!(
        "enrolled as {}: credentials in {} (0600), renewed automatically",
        leaf(&profile).map_or_else(|| "?".into(), |l| l.id),
        path.display()
    );
    Ok(profile)
}

/// The SPIFFE ID in the CSRs: a placeholder, since the authority takes only the public key and
/// names the SVID after the token.
fn placeholder_id(td: &TrustDomain) -> Result<SpiffeId, String> {
    SpiffeId::parse(&format!("spiffe://{td}/ringzero/sched/enrolling")).map_err(|e| e.to_string())
}

fn save(path: &Path, profile: &Profile, overwrite: bool) -> Result<(), Failure> {
    let text = profile.to_toml().map_err(|e| failed(anyhow!("{e}")))?;
    write_file(path, text.as_bytes(), 0o600, overwrite).map_err(failed)
}

impl Identity {
    /// A client presenting these credentials.
    pub(crate) fn client(&self) -> Result<AuthorityClient, Failure> {
        let creds = self
            .profile
            .credentials()
            .map_err(|e| bad_input(anyhow!("{}: {e}", self.path.display())))?;
        Ok(AuthorityClient::new(creds, self.addrs.clone()))
    }

    /// Renews the credentials at half their lifetime, forever, publishing each new profile.
    /// A failed renewal is retried (every tenth of what is left, 1 s to 30 s) until it
    /// succeeds or the credentials expire, after which the daemon's calls fail too.
    pub(crate) async fn renew_forever(mut self, tx: watch::Sender<Profile>) {
        loop {
            let wait = match leaf(&self.profile) {
                Some(l) => renew_in(l.not_before, l.not_after, SystemTime::now()),
                None => Duration::from_secs(30),
            };
            tokio::time::sleep(wait).await;
            loop {
                match self.renew_once().await {
                    Ok(next) => {
                        tracing::info!(
                            until = ?leaf(&next).map(|l| l.not_after),
                            "scheduler credentials renewed"
                        );
                        self.profile = next.clone();
                        tx.send_replace(next);
                        // Never more than one renewal a second, whatever the certificate says.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                    Err(e) => {
                        let left = leaf(&self.profile)
                            .and_then(|l| l.not_after.duration_since(SystemTime::now()).ok())
                            .unwrap_or_default();
                        tracing::warn!(error = %e, ?left, "renewing the scheduler's credentials failed");
                        let retry =
                            (left / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
                        tokio::time::sleep(retry).await;
                    }
                }
            }
        }
    }

    async fn renew_once(&self) -> anyhow::Result<Profile> {
        let td = TrustDomain::new(&self.profile.trust_domain)?;
        let key = generate_key()?;
        let id = placeholder_id(&td).map_err(|e| anyhow!("CSR: {e}"))?;
        let csr = csr_for(&key, &id)?;
        let mut client = self.client().map_err(|f| f.error)?;
        let req = pb::LoginRequest {
            invite_id: String::new(),
            invite_secret: Vec::new(),
            csr,
            ttl_seconds: self.ttl_seconds,
        };
        let reply = client
            .call(|mut c| {
                let req = req.clone();
                async move { c.login(req).await }
            })
            .await?;
        let cas = self.profile.bundle_certs()?;
        let next = Profile::from_user_credentials(
            &td,
            self.profile.authorities.clone(),
            &cas,
            Some(&self.profile),
            &reply,
            &key.serialize_der(),
        );
        save(&self.path, &next, true).map_err(|f| f.error)?;
        Ok(next)
    }
}

/// How long to wait before renewing a credential valid from `not_before` to `not_after`: until
/// half its lifetime (at once if that is past). The lifetime counts from `not_before +`
/// [`NOT_BEFORE_BACKDATE`] (the authority backdates for clock skew; counted from `not_before`,
/// a 20 s credential would be past half-life at birth and renewed in a loop).
fn renew_in(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> Duration {
    let start = (not_before + NOT_BEFORE_BACKDATE).min(not_after);
    let life = not_after.duration_since(start).unwrap_or_default();
    (start + life / 2).duration_since(now).unwrap_or_default()
}

/// The profile's SVID: its SPIFFE ID and validity.
pub(crate) struct Leaf {
    pub(crate) id: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

pub(crate) fn leaf(profile: &Profile) -> Option<Leaf> {
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(profile.svid_pem.as_bytes())
        .next()?
        .ok()?;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(&der).ok()?;
    let at = |t: i64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).ok()?));
    let id = c
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
        })?;
    Some(Leaf {
        id,
        not_before: at(c.validity().not_before.timestamp())?,
        not_after: at(c.validity().not_after.timestamp())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_half_life() {
        // As issued: notBefore backdated by NOT_BEFORE_BACKDATE, valid 1 h from issue.
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let nb = issued - NOT_BEFORE_BACKDATE;
        let na = issued + Duration::from_secs(3600);
        assert_eq!(renew_in(nb, na, issued), Duration::from_secs(1800));
        assert_eq!(
            renew_in(nb, na, issued + Duration::from_secs(1000)),
            Duration::from_secs(800)
        );
        // A 20 s credential is not past half-life at birth.
        let short = issued + Duration::from_secs(20);
        assert_eq!(renew_in(nb, short, issued), Duration::from_secs(10));
        // Past half-life (a restart late in the lifetime), or nonsense: at once.
        assert_eq!(
            renew_in(nb, na, issued + Duration::from_secs(2000)),
            Duration::ZERO
        );
        assert_eq!(renew_in(na, nb, issued), Duration::ZERO);
    }

    #[test]
    fn a_data_dir_is_private() {
        let d = std::env::temp_dir().join(format!("rz-sched-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        private_dir(&d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = private_dir(&d).unwrap_err();
        assert!(e.error.to_string().contains("chmod 700"), "{}", e.error);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
