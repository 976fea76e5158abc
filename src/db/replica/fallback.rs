//! What a call that failed on a standby does next ([`after_failure`]): a
//! failure the standby caused (it is read-only, in recovery, behind, or
//! gone) is retried once on the primary, which is safe because nothing
//! commits on a standby; the function's own answer is the caller's.

use crate::db::sqlstate::DEAD_SESSION_SQLSTATE;
use crate::db::Failure;

/// Where a call goes after it failed on a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The failure is the call's own: answer it.
    Answer,
    /// Run it on the primary (once).
    Primary,
    /// Run it on the primary, and take the standby out of routing now.
    PrimaryAndMarkDown,
}

/// The fallback for `failure`, classified from `error` on a standby.
pub fn after_failure(error: &postgres::Error, failure: &Failure) -> Fallback {
    if let Some(db) = error.as_db_error() {
        let state = db.code().code();
        // 25006: the function wrote (a STABLE that is not); BZ006: the
        // standby has not replayed the session yet.
        if state == "25006" || state == DEAD_SESSION_SQLSTATE {
            return Fallback::Primary;
        }
        if db.message().contains("conflict with recovery") {
            return Fallback::Primary;
        }
    }
    match failure {
        Failure::ConnectionLost { .. } | Failure::Unavailable(_) => Fallback::PrimaryAndMarkDown,
        Failure::Conflict(_) | Failure::StalePlan | Failure::UndefinedFunction => Fallback::Primary,
        Failure::Client(_) => Fallback::Primary,
        Failure::Database { .. }
        | Failure::PermissionDenied(_)
        | Failure::Cancelled(_)
        | Failure::DeadSession(_)
        | Failure::PastDeadline => Fallback::Answer,
    }
}
