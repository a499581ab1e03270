//! The one place where the service's errors and the state machine's refusals become gRPC
//! statuses, with one code per cause:
//!
//! | cause | code |
//! |---|---|
//! | malformed request or command (`Rejection::Invalid`, [`invalid`]) | `InvalidArgument` |
//! | no such entry, node, user, member (`NotFound`) | `NotFound` |
//! | a first-contact secret refused (unknown, wrong, used, expired, misnamed token), a banned name, a parent capability revoked, a suspended user | `PermissionDenied` |
//! | the state forbids it now (an inactive node, purging a running job, a scheduler lease held by another, a write under a lease no longer held) | `FailedPrecondition` |
//! | it exists already (`UserExists`) | `AlreadyExists` |
//! | a bound on the state's size (`LimitReached`) | `ResourceExhausted` |
//! | this node's storage or an internal step failed ([`internal`]) | `Internal` |
//!
//! Gate denials are decided in `gate` (`PermissionDenied` / `Unauthenticated`), and "not the
//! leader" in `AuthorityService::require_leader` (`Unavailable` with a leader hint).

use tonic::{Code, Status};

use crate::command::{Outcome, Rejection};

/// A malformed request.
pub(crate) fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// This node failed (storage, encoding, a task): not the caller's fault.
pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// The code for a refusal by the state machine.
pub(crate) fn rejection_code(r: &Rejection) -> Code {
    match r {
        Rejection::Invalid(_) => Code::InvalidArgument,
        Rejection::NotFound => Code::NotFound,
        Rejection::JoinTokenUnknown
        | Rejection::JoinTokenUsed
        | Rejection::JoinTokenExpired
        | Rejection::JoinTokenMismatch
        | Rejection::JoinTokenWrongName
        | Rejection::Banned
        | Rejection::ParentRevoked
        | Rejection::UserSuspended => Code::PermissionDenied,
        Rejection::NodeInactive | Rejection::JobRunning | Rejection::AllocRefused(_) => {
            Code::FailedPrecondition
        }
        Rejection::WrongNode(_) => Code::PermissionDenied,
        Rejection::LeaseHeld { .. } | Rejection::LeaseLost { .. } => Code::FailedPrecondition,
        Rejection::UserExists => Code::AlreadyExists,
        Rejection::LimitReached(_) => Code::ResourceExhausted,
    }
}

/// A refusal by the state machine, its message prefixed with what was refused (`join refused`,
/// `refused`…).
pub(crate) fn rejected(what: &str, r: &Rejection) -> Status {
    Status::new(rejection_code(r), format!("{what}: {r}"))
}

/// The outcome of an applied command, or the status of its refusal.
pub(crate) fn accepted(what: &str, outcome: Outcome) -> Result<Outcome, Status> {
    match outcome {
        Outcome::Rejected(r) => Err(rejected(what, &r)),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_one_code() {
        let all = [
            Rejection::Invalid("x".into()),
            Rejection::NotFound,
            Rejection::JoinTokenUnknown,
            Rejection::JoinTokenUsed,
            Rejection::JoinTokenExpired,
            Rejection::JoinTokenMismatch,
            Rejection::JoinTokenWrongName,
            Rejection::Banned,
            Rejection::NodeInactive,
            Rejection::UserExists,
            Rejection::ParentRevoked,
            Rejection::UserSuspended,
            Rejection::LimitReached("x".into()),
            Rejection::JobRunning,
            Rejection::AllocRefused("x".into()),
            Rejection::WrongNode("x".into()),
            Rejection::LeaseHeld {
                holder: "h".into(),
                expires_ms: 1,
            },
            Rejection::LeaseLost {
                scope: String::new(),
                holder: "h".into(),
                epoch: 1,
            },
        ];
        for r in &all {
            let s = rejected("refused", r);
            assert_eq!(s.code(), rejection_code(r));
            assert!(s.message().starts_with("refused: "), "{s:?}");
        }
        assert!(accepted("x", Outcome::Done).is_ok());
        assert_eq!(
            accepted("x", Outcome::Rejected(Rejection::NotFound))
                .unwrap_err()
                .code(),
            Code::NotFound
        );
    }
}
