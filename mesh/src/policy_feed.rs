//! The authority's side of the sidecar's rules: a client of ringzero's mesh extension on the
//! agent's socket (`ringzero.mesh.v1.MeshPolicy/Watch`), beside the standard Workload API.
//!
//! Each update carries the authority's policies for the identities this sidecar was attested
//! for and the revoked serials. The `from` patterns of the policies whose `to` matches the
//! sidecar's current SVID become the [`AllowList`]'s authority rules (recomputed when the SVID
//! changes), and the serials replace the [`RevokedSerials`]; both are read at every handshake,
//! so a change applies to the next connection as soon as the agent streams it.
//!
//! An agent without the extension (SPIRE's) answers `Unimplemented`: the client then stops for
//! good and the sidecar keeps to its local rules. Any other failure is retried with backoff,
//! keeping the last rules and serials received (an allow rule the authority removed meanwhile
//! stays in force until the agent answers again; a revocation is never forgotten on a hiccup).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringzero_policy::SpiffeIdPattern;
use ringzero_proto::mesh as pb;
use ringzero_proto::mesh::mesh_policy_client::MeshPolicyClient;
use ringzero_proto::transport::unix_channel;

use crate::identity::{Current, SECURITY_HEADER};
use crate::verify::{AllowList, RevokedSerials};

/// The largest update accepted.
const MAX_UPDATE_LEN: usize = 8 * 1024 * 1024;
/// The most rules and serials taken from one update.
const MAX_RULES: usize = 10_000;
const MAX_SERIALS: usize = 100_000;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How one watch ended.
enum Ended {
    /// The agent does not offer the extension.
    Unimplemented,
    /// The stream ended or failed after at least one update.
    AfterUpdates,
    Failed(String),
}

/// What the sidecar applies.
pub(crate) struct Targets {
    pub(crate) current: Current,
    pub(crate) allow: AllowList,
    pub(crate) revoked: RevokedSerials,
}

/// Follows the extension on `socket` until it is unimplemented (or forever).
pub(crate) async fn follow(socket: PathBuf, mut targets: Targets) {
    let mut backoff = BACKOFF_MIN;
    let mut applied = Applied::default();
    loop {
        match watch_once(&socket, &mut targets, &mut applied).await {
            Ended::Unimplemented => {
                tracing::info!(
                    socket = %socket.display(),
                    "the agent offers no ringzero mesh extension: local allow rules only, no authority policies or revoked serials"
                );
                return;
            }
            Ended::AfterUpdates => backoff = BACKOFF_MIN,
            Ended::Failed(e) => {
                tracing::warn!(socket = %socket.display(), error = %e, "mesh policy stream failed; keeping the last policies")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The last update applied.
#[derive(Default)]
struct Applied {
    /// `(to, from)` of every rule received.
    rules: Option<Vec<(SpiffeIdPattern, SpiffeIdPattern)>>,
    serials: Option<HashSet<Vec<u8>>>,
}

async fn watch_once(socket: &Path, targets: &mut Targets, applied: &mut Applied) -> Ended {
    let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let channel = unix_channel(socket).await.map_err(|e| e.to_string())?;
        let mut client = MeshPolicyClient::new(channel).max_decoding_message_size(MAX_UPDATE_LEN);
        let mut req = tonic::Request::new(pb::WatchRequest {});
        req.metadata_mut().insert(
            SECURITY_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        client
            .watch(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| {
                if s.code() == tonic::Code::Unimplemented {
                    String::new()
                } else {
                    format!("{:?}: {}", s.code(), s.message())
                }
            })
    })
    .await;
    let mut stream = match opened {
        Err(_) => return Ended::Failed("timed out connecting".into()),
        Ok(Err(e)) if e.is_empty() => return Ended::Unimplemented,
        Ok(Err(e)) => return Ended::Failed(e),
        Ok(Ok(s)) => s,
    };
    let mut received = false;
    loop {
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(update)) => {
                    received = true;
                    apply(update, targets, applied);
                }
                Ok(None) => return ended(received, "the agent ended the stream"),
                Err(s) if s.code() == tonic::Code::Unimplemented => return Ended::Unimplemented,
                Err(s) => return ended(received, &format!("{:?}: {}", s.code(), s.message())),
            },
            changed = targets.current.changed() => {
                if changed.is_err() {
                    // The sidecar is gone.
                    std::future::pending::<()>().await;
                }
                apply_rules(targets, applied);
            }
        }
    }
}

fn ended(received: bool, why: &str) -> Ended {
    if received {
        tracing::info!(reason = why, "mesh policy stream ended; reconnecting");
        Ended::AfterUpdates
    } else {
        Ended::Failed(why.to_owned())
    }
}

fn apply(update: pb::MeshPolicyUpdate, targets: &Targets, applied: &mut Applied) {
    let rules: Vec<(SpiffeIdPattern, SpiffeIdPattern)> = update
        .rules
        .iter()
        .take(MAX_RULES)
        .filter_map(|r| {
            match (
                SpiffeIdPattern::parse(&r.to),
                SpiffeIdPattern::parse(&r.from),
            ) {
                (Ok(to), Ok(from)) => Some((to, from)),
                _ => {
                    tracing::warn!(to = %r.to, from = %r.from, "mesh policy not usable; dropped");
                    None
                }
            }
        })
        .collect();
    applied.rules = Some(rules);
    apply_rules(targets, applied);
    let serials: HashSet<Vec<u8>> = update
        .revoked_serials
        .into_iter()
        .take(MAX_SERIALS)
        .filter(|s| !s.serial.is_empty() && s.serial.len() <= 20)
        .map(|s| s.serial)
        .collect();
    if applied.serials.as_ref() != Some(&serials) {
        tracing::info!(serials = serials.len(), "revoked serials updated");
        targets.revoked.replace(serials.clone());
        applied.serials = Some(serials);
    }
}

/// The authority rules for the current SVID: the `from` of every rule whose `to` matches it.
fn apply_rules(targets: &Targets, applied: &Applied) {
    let Some(rules) = &applied.rules else {
        return;
    };
    let id = targets.current.borrow().as_ref().map(|i| i.id.clone());
    let from: Vec<SpiffeIdPattern> = match &id {
        Some(id) => rules
            .iter()
            .filter(|(to, _)| to.matches(id))
            .map(|(_, from)| from.clone())
            .collect(),
        None => Vec::new(),
    };
    if targets.allow.authority() != from {
        tracing::info!(
            rules = from.len(),
            allowed = %from.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
            "authority mesh policies applied"
        );
        targets.allow.set_authority(from);
    }
}
