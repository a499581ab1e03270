//! Failures and the exit codes they map to (see the crate docs for what each code means).

use std::fmt::Display;
use std::process::ExitCode;

/// Exit code 1: the operation failed or was denied.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit code 2: invalid input or usage.
pub(crate) const EXIT_BAD_INPUT: u8 = 2;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) error: anyhow::Error,
}

/// What a command returns: its exit code, or a failure to report.
pub(crate) type Outcome = Result<ExitCode, Failure>;

/// Exit code 2: the input was invalid.
pub(crate) fn bad_input(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_BAD_INPUT,
        error: e.into(),
    }
}

/// Exit code 1: the operation failed.
pub(crate) fn failed(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_FAILED,
        error: e.into(),
    }
}

/// Exit code 2 with a message.
pub(crate) fn bad_input_msg(m: impl Display) -> Failure {
    bad_input(anyhow::anyhow!("{m}"))
}
