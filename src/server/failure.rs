//! How a database [`Failure`] is answered on the wire: the one mapping
//! from what went wrong in `db` to the contract's [`RpcError`]. A lost
//! connection is also reported to the database's health here, so that
//! `/health/ready` and -32004 follow an outage.

use crate::db::{CancelReason, Database, Deadline, Failure};
use crate::protocol::RpcError;

/// The reply for `failure` of a request under `deadline`, not retried
/// (after `attempts`).
pub fn failure_reply(
    db: &Database,
    failure: Failure,
    deadline: &Deadline,
    attempts: u32,
) -> RpcError {
    let retry_after_ms = db.acquire_timeout().as_millis() as u64;
    match failure {
        Failure::Conflict(state) => RpcError::transaction_conflict(attempts, &state),
        Failure::StalePlan => {
            RpcError::internal("the function changed shape twice during one call")
        }
        Failure::ConnectionLost { detail, aborted } => {
            db.health.report_down(&detail);
            let error = RpcError::db_unavailable(retry_after_ms, detail);
            if aborted {
                error
            } else {
                // The socket broke mid-call: the call may or may not have committed.
                error.with("retryable", false).with("outcome", "unknown")
            }
        }
        Failure::Cancelled(CancelReason::Deadline) | Failure::PastDeadline => {
            RpcError::deadline_exceeded(deadline.elapsed_ms())
        }
        Failure::Cancelled(CancelReason::Shutdown) => RpcError::shutting_down(),
        Failure::UndefinedFunction => {
            RpcError::internal("a catalogue query named a function that does not exist")
        }
        Failure::PermissionDenied(message) => RpcError::permission_denied(message),
        Failure::DeadSession(message) => RpcError::unauthenticated(message),
        Failure::Database { state, message } => RpcError::database_error(&state, &message),
        Failure::Client(detail) => RpcError::internal(detail),
        Failure::Unavailable(detail) => RpcError::db_unavailable(retry_after_ms, detail),
    }
}
