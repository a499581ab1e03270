//! Why the agent stopped, each with how to recover; and which authority errors are worth a retry.

use std::path::{Path, PathBuf};

use ringzero_proto::client::ClientError;

/// How an operator reaches the agent again: filled into recovery messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryHint {
    /// The node name (when known).
    pub node: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The authority addresses, comma-separated.
    pub authorities: String,
}

/// Why the agent stopped. `Evicted`, `Banned` and `Expired` need an operator; their messages
/// say exactly what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The node was evicted: it may enroll again with a new join token.
    #[error(
        "node {n} was evicted; enroll it again with a new join token: \
         `ringzero node token --name {n}` (on an admin machine), then clear the old credentials \
         (`rm -r {d}`, or use a new --data-dir) and run `ringzero agent run --join-token @FILE \
         --data-dir {d} --authority {a}`",
        n = .0.node, d = .0.data_dir.display(), a = .0.authorities
    )]
    Evicted(RecoveryHint),
    /// The node name was banned: it can never enroll again.
    #[error(
        "node {n} is banned: the name {n} can never enroll again; enroll this machine under \
         another name: `ringzero node token --name NEW_NAME` (on an admin machine), then \
         `rm -r {d}` (or use a new --data-dir) and run `ringzero agent run --join-token @FILE \
         --data-dir {d} --authority {a}`",
        n = .0.node, d = .0.data_dir.display(), a = .0.authorities
    )]
    Banned(RecoveryHint),
    /// The node SVID expired before it could be renewed (the agent was stopped too long, or
    /// could not reach the authority for half a lifetime).
    #[error(
        "the node SVID of {n} has expired, so the agent cannot renew it; re-enroll with a new \
         join token: `ringzero node token --name {n}` (on an admin machine), then `rm -r {d}` \
         (or use a new --data-dir) and run `ringzero agent run --join-token @FILE --data-dir {d} \
         --authority {a}`",
        n = .0.node, d = .0.data_dir.display(), a = .0.authorities
    )]
    Expired(RecoveryHint),
    /// The data directory holds no credentials and no join token was given.
    #[error(
        "{0} holds no node credentials: enroll first with `ringzero agent run --join-token @FILE \
         --data-dir {0} --authority ADDR` (a token from `ringzero node token --name NAME`)"
    )]
    NotEnrolled(String),
    /// Enrollment failed (bad pin, refused token, unreachable authority…).
    #[error("enrollment failed: {0}")]
    Enroll(String),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A file of the data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file of the data directory, or a credential the authority sent, is malformed.
    #[error("{0}")]
    Corrupt(String),
    /// The Workload API could not start or stopped.
    #[error("Workload API: {0}")]
    Serve(#[from] crate::workload::ServeError),
}

impl AgentError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        AgentError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// The process exit code for this error: 2 for unusable input, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Config(_) | AgentError::NotEnrolled(_) => 2,
            _ => 1,
        }
    }
}

/// What to do about a failed call to the authority.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Stop the agent: an operator must act.
    Fatal(AgentError),
    /// Retry later with backoff, keep serving the cache meanwhile.
    Retry,
}

/// Classifies an authority error: eviction and bans stop the agent; everything else (the
/// authority unreachable or electing, a transient denial) is retried.
pub(crate) fn classify(e: &ClientError, hint: &RecoveryHint) -> Verdict {
    if let ClientError::Status { code, message } = e
        && matches!(
            code,
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        )
    {
        let m = message.to_ascii_lowercase();
        if m.contains("banned") {
            return Verdict::Fatal(AgentError::Banned(hint.clone()));
        }
        if m.contains("evicted") {
            return Verdict::Fatal(AgentError::Evicted(hint.clone()));
        }
    }
    Verdict::Retry
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn hint() -> RecoveryHint {
        RecoveryHint {
            node: "n7".into(),
            data_dir: PathBuf::from("/var/lib/ringzero-agent"),
            authorities: "10.0.0.1:7000,10.0.0.2:7000".into(),
        }
    }

    fn status(code: tonic::Code, message: &str) -> ClientError {
        ClientError::Status {
            code,
            message: message.into(),
        }
    }

    #[test]
    fn eviction_and_bans_stop_with_a_recovery_recipe() {
        let evicted = match classify(
            &status(tonic::Code::PermissionDenied, "node n7 is evicted"),
            &hint(),
        ) {
            Verdict::Fatal(e @ AgentError::Evicted(_)) => e.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(evicted.contains("node n7 was evicted"), "{evicted}");
        assert!(
            evicted.contains("ringzero node token --name n7"),
            "{evicted}"
        );
        assert!(
            evicted.contains("rm -r /var/lib/ringzero-agent"),
            "{evicted}"
        );
        assert!(
            evicted.contains(
                "ringzero agent run --join-token @FILE --data-dir /var/lib/ringzero-agent \
                 --authority 10.0.0.1:7000,10.0.0.2:7000"
            ),
            "{evicted}"
        );

        let banned = match classify(
            &status(tonic::Code::PermissionDenied, "node n7 is BANNED"),
            &hint(),
        ) {
            Verdict::Fatal(e @ AgentError::Banned(_)) => e.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(banned.contains("can never enroll again"), "{banned}");
        assert!(banned.contains("--name NEW_NAME"), "{banned}");

        let expired = AgentError::Expired(hint()).to_string();
        assert!(expired.contains("has expired"), "{expired}");
        assert!(
            expired.contains("ringzero node token --name n7"),
            "{expired}"
        );
        assert_eq!(AgentError::Expired(hint()).exit_code(), 1);
    }

    #[test]
    fn transient_errors_are_retried() {
        for e in [
            status(tonic::Code::Unavailable, "no leader"),
            status(tonic::Code::Unimplemented, ""),
            status(tonic::Code::PermissionDenied, "expired"),
            status(tonic::Code::Internal, "evicted"),
            ClientError::Transport("connection refused".into()),
            ClientError::NoAddress,
        ] {
            assert!(matches!(classify(&e, &hint()), Verdict::Retry), "{e:?}");
        }
    }
}
