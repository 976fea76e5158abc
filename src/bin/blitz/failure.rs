//! [`Failure`]: why a `blitz` run failed, with its exit code (the table
//! is in the crate doc) and the one line printed to stderr; shared by the
//! commands and `blitz bench`.

use blitz::client::{CallError, ErrorKind};

/// Why a run failed, each with its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments: exit 2.
    Usage(String),
    /// The call failed: exit 3, 4, 5 or 6 by class; `hint` says what to do.
    Call {
        error: CallError,
        hint: Option<String>,
    },
    /// The stored session is unknown to the server or expired: exit 4.
    SessionExpired,
    /// stdout or the session file could not be used: exit 1.
    Local(String),
    /// `blitz bench` could not connect or log in: exit 5.
    Connect(String),
}

impl From<CallError> for Failure {
    fn from(error: CallError) -> Failure {
        Failure::Call { error, hint: None }
    }
}

impl Failure {
    /// The exit code of this failure (see the crate doc).
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Local(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Call { error, .. } => call_exit_code(error),
            Failure::SessionExpired => 4,
            Failure::Connect(_) => 5,
        }
    }

    /// The one line printed to stderr after `blitz: `.
    pub fn message(&self) -> String {
        match self {
            Failure::Usage(m) | Failure::Local(m) | Failure::Connect(m) => m.clone(),
            Failure::Call { error, hint: None } => error.to_string(),
            Failure::Call {
                error,
                hint: Some(hint),
            } => format!("{error}; {hint}"),
            Failure::SessionExpired => "session expired or unknown; run `blitz login`".into(),
        }
    }
}

/// 3 for a retryable server refusal, 4 for a final one, 5 when the call
/// did not run for want of a connection, 6 when it may have run.
fn call_exit_code(error: &CallError) -> u8 {
    match error.kind() {
        ErrorKind::Server if error.retryable() => 3,
        ErrorKind::Server => 4,
        ErrorKind::Connection => 5,
        ErrorKind::OutcomeUnknown | ErrorKind::Protocol => 6,
    }
}
