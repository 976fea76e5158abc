//! [`classify`]: the one place a PostgreSQL error (its SQLSTATE, or a lost
//! socket) is turned into what the caller does next, a [`Failure`]. How a
//! failure is answered on the wire is the server's (`server/failure.rs`).

use super::watchdog::CancelReason;

/// The SQLSTATE `blitz.enter` raises for a session that is not live (the
/// class BZ is blitz's own); answered -32006.
pub const DEAD_SESSION_SQLSTATE: &str = "BZ006";

/// What a failed statement means for the caller.
#[derive(Debug)]
pub enum Failure {
    /// 40001 or 40P01: run the whole transaction again.
    Conflict(String),
    /// A cached plan no longer fits the function: re-prepare and run again.
    StalePlan,
    /// The connection is gone (-32004). `aborted` is true when PostgreSQL
    /// said so (the statement was rolled back, a retry is safe); false when
    /// the socket just broke mid-call (the outcome is unknown).
    ConnectionLost {
        /// What happened.
        detail: String,
        /// Whether the statement is known not to have committed.
        aborted: bool,
    },
    /// Our watchdog cancelled the statement.
    Cancelled(CancelReason),
    /// The function no longer exists (-32601 after a catalogue reload).
    UndefinedFunction,
    /// 42501: the session's role may not do this (-32007).
    PermissionDenied(String),
    /// [`DEAD_SESSION_SQLSTATE`]: the session is not live (-32006).
    DeadSession(String),
    /// Any other SQLSTATE, with PostgreSQL's message (-32010).
    Database {
        /// The SQLSTATE.
        state: String,
        /// PostgreSQL's message.
        message: String,
    },
    /// The client library failed without a SQLSTATE or a lost socket (-32603).
    Client(String),
    /// The request's deadline passed while it waited for a connection
    /// (at the share's gate or in the pool).
    PastDeadline,
    /// The pool gave no connection within the acquire timeout: the database
    /// does not answer (-32004, retryable).
    Unavailable(String),
}

/// The one place SQLSTATEs are mapped. `cancelled` says whether our
/// watchdog sent a cancel for this statement.
pub fn classify(error: &postgres::Error, cancelled: Option<CancelReason>) -> Failure {
    let Some(db) = error.as_db_error() else {
        if error.is_closed()
            || std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
        {
            return Failure::ConnectionLost {
                detail: error.to_string(),
                aborted: false,
            };
        }
        return Failure::Client(format!("database client error: {error}"));
    };
    let state = db.code().code();
    match state {
        "40001" | "40P01" => Failure::Conflict(state.to_string()),
        "0A000" if db.message().contains("cached plan") => Failure::StalePlan,
        "26000" => Failure::StalePlan,
        "42501" => Failure::PermissionDenied(db.message().to_string()),
        DEAD_SESSION_SQLSTATE => Failure::DeadSession(db.message().to_string()),
        "42883" => Failure::UndefinedFunction,
        "57014" => match cancelled {
            Some(reason) => Failure::Cancelled(reason),
            None => database_error(state, db.message()),
        },
        "57P01" | "57P02" | "57P03" | "53300" => Failure::ConnectionLost {
            detail: db.message().to_string(),
            aborted: true,
        },
        s if s.starts_with("08") => Failure::ConnectionLost {
            detail: db.message().to_string(),
            aborted: true,
        },
        _ => database_error(state, db.message()),
    }
}

fn database_error(state: &str, message: &str) -> Failure {
    Failure::Database {
        state: state.to_string(),
        message: message.to_string(),
    }
}
