//! [`CallError`] and [`ErrorKind`]: how a failed call is classified for
//! callers, and whether it may be sent again.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::protocol::code::{SHUTTING_DOWN, TOO_MANY_CONNECTIONS};

/// The class of a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server answered with a JSON-RPC error reply.
    Server,
    /// No connection could be made, or it broke before the whole request
    /// was written: the call did not run.
    Connection,
    /// The connection broke, or no reply came in time, after the request
    /// was sent: the call may or may not have run.
    OutcomeUnknown,
    /// The server sent something that is not a valid JSON-RPC reply; the
    /// call may or may not have run.
    Protocol,
}

/// Why a call failed. `Display` gives one line a user can act on, e.g.
/// `error -32001 Server overloaded (retry after 120 ms)`.
#[derive(Debug, Clone)]
pub struct CallError {
    kind: ErrorKind,
    code: Option<i64>,
    message: String,
    data: Option<Value>,
    retryable: bool,
    attempts: u32,
    /// Whether the connection is still in step after this error.
    pub(super) keeps_connection: bool,
}

impl CallError {
    /// A JSON-RPC error reply; retryable when `data.retryable` is `true`.
    pub(super) fn server(code: i64, message: String, data: Option<Value>) -> CallError {
        let retryable = data
            .as_ref()
            .and_then(|d| d.get("retryable"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        CallError {
            kind: ErrorKind::Server,
            code: Some(code),
            message,
            data,
            retryable,
            attempts: 1,
            keeps_connection: code != TOO_MANY_CONNECTIONS,
        }
    }

    /// A connection failure before the request was sent; `retryable`
    /// unless no address was usable at all.
    pub(super) fn connection(message: String, retryable: bool) -> CallError {
        CallError {
            kind: ErrorKind::Connection,
            code: None,
            message,
            data: None,
            retryable,
            attempts: 1,
            keeps_connection: false,
        }
    }

    /// The connection failed after the request was sent (`what` says how);
    /// never retryable, and the message says how to retry safely.
    pub(super) fn lost_after_sending(what: String) -> CallError {
        CallError {
            kind: ErrorKind::OutcomeUnknown,
            code: None,
            message: format!(
                "{what}; the outcome is unknown: the call may or may not have run \
                 (retrying it safely needs an idempotency key)"
            ),
            data: None,
            retryable: false,
            attempts: 1,
            keeps_connection: false,
        }
    }

    /// A reply that breaks the protocol; the call's outcome is unknown.
    pub(super) fn protocol(message: String) -> CallError {
        CallError {
            kind: ErrorKind::Protocol,
            code: None,
            message,
            data: None,
            retryable: false,
            attempts: 1,
            keeps_connection: false,
        }
    }

    /// This error, counted as the outcome of `attempts` attempts.
    pub(super) fn after_attempts(mut self, attempts: u32) -> CallError {
        self.attempts = attempts;
        self
    }

    /// Whether the next attempt should go to another instance: this one is
    /// draining (-32003), full (-32005), or could not be reached.
    pub(super) fn fails_over(&self) -> bool {
        self.kind == ErrorKind::Connection
            || matches!(self.code, Some(SHUTTING_DOWN | TOO_MANY_CONNECTIONS))
    }

    /// Server, connection, outcome-unknown or protocol failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The JSON-RPC error code; `None` unless [`kind`](Self::kind) is `Server`.
    pub fn code(&self) -> Option<i64> {
        self.code
    }

    /// The server's error message, or what went wrong on this side.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error reply's `data` member, if the server sent one.
    pub fn data(&self) -> Option<&Value> {
        self.data.as_ref()
    }

    /// Whether the same call may be sent again: the server's
    /// `data.retryable`, or `true` for a connection that failed before the
    /// request was sent. `false` whenever the outcome is unknown.
    pub fn retryable(&self) -> bool {
        self.retryable
    }

    /// Whether the call may have run although it failed: the connection
    /// broke or timed out after sending, or the reply was unreadable.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self.kind, ErrorKind::OutcomeUnknown | ErrorKind::Protocol)
    }

    /// How long the server asks the caller to wait before retrying
    /// (`data.retry_after_ms`).
    pub fn retry_after(&self) -> Option<Duration> {
        let ms = self.data.as_ref()?.get("retry_after_ms")?;
        match ms.as_u64() {
            Some(ms) => Some(Duration::from_millis(ms)),
            None => ms
                .as_f64()
                .filter(|ms| ms.is_finite() && *ms >= 0.0)
                .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        }
    }

    /// How many attempts the call made before failing with this error,
    /// including the automatic retries and moves to other instances.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The `data` member `key` as display text: strings bare, the rest as JSON.
    fn data_text(&self, key: &str) -> Option<String> {
        match self.data.as_ref()?.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// The parenthesised details of a server error: `(param aid, retry after 120 ms)`.
    fn details(&self) -> String {
        let mut parts = Vec::new();
        if let Some(param) = self.data_text("param") {
            parts.push(format!("param {param}"));
        }
        if let Some(sqlstate) = self.data_text("sqlstate") {
            parts.push(format!("sqlstate {sqlstate}"));
        }
        if let Some(after) = self.retry_after() {
            parts.push(format!("retry after {} ms", after.as_millis()));
        }
        if self.attempts > 1 {
            parts.push(format!("{} attempts", self.attempts));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => match self.data_text("detail") {
                Some(detail) => write!(
                    f,
                    "error {code} {}: {detail}{}",
                    self.message,
                    self.details()
                ),
                None => write!(f, "error {code} {}{}", self.message, self.details()),
            },
            None if self.attempts > 1 => {
                write!(f, "{} (after {} attempts)", self.message, self.attempts)
            }
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for CallError {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server_err(code: i64, message: &str, data: Value) -> CallError {
        CallError::server(code, message.into(), Some(data))
    }

    #[test]
    fn overloaded_error_shows_the_retry_delay_and_is_retryable() {
        let e = server_err(
            -32001,
            "Server overloaded",
            json!({"retryable": true, "retry_after_ms": 120, "queue_depth": 1000}),
        );
        assert_eq!(
            e.to_string(),
            "error -32001 Server overloaded (retry after 120 ms)"
        );
        assert_eq!(e.kind(), ErrorKind::Server);
        assert_eq!(e.code(), Some(-32001));
        assert!(e.retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_millis(120)));
        assert_eq!(e.attempts(), 1);
        assert_eq!(
            e.after_attempts(3).to_string(),
            "error -32001 Server overloaded (retry after 120 ms, 3 attempts)"
        );
    }

    #[test]
    fn invalid_params_error_names_the_param() {
        let e = server_err(
            -32602,
            "Invalid params: parameter \"aid\": expected an integer",
            json!({"retryable": false, "param": "aid"}),
        );
        assert_eq!(
            e.to_string(),
            "error -32602 Invalid params: parameter \"aid\": expected an integer (param aid)"
        );
        assert!(!e.retryable());
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn database_error_shows_sqlstate_and_every_detail_in_one_parenthesis() {
        let e = server_err(
            -32010,
            "Database error: duplicate key",
            json!({"retryable": false, "sqlstate": "23505", "param": "id", "retry_after_ms": 5}),
        );
        assert_eq!(
            e.to_string(),
            "error -32010 Database error: duplicate key (param id, sqlstate 23505, retry after 5 ms)"
        );
    }

    #[test]
    fn error_without_data_is_final_and_bare() {
        let e = CallError::server(-32601, "Method not found".into(), None);
        assert_eq!(e.to_string(), "error -32601 Method not found");
        assert!(!e.retryable());
        assert!(e.data().is_none());
    }

    #[test]
    fn connection_and_protocol_errors_display_their_message_only() {
        let e = CallError::connection("cannot connect to x:1: refused".into(), true);
        assert_eq!(e.to_string(), "cannot connect to x:1: refused");
        assert_eq!(
            (e.kind(), e.code(), e.retryable(), e.outcome_unknown()),
            (ErrorKind::Connection, None, true, false)
        );
        assert_eq!(
            e.after_attempts(2).to_string(),
            "cannot connect to x:1: refused (after 2 attempts)"
        );
        let p = CallError::protocol("garbage".into());
        assert_eq!(
            (p.kind(), p.code(), p.retryable(), p.outcome_unknown()),
            (ErrorKind::Protocol, None, false, true)
        );
    }

    #[test]
    fn outcome_unknown_says_the_call_may_have_run_and_how_to_retry() {
        let e = CallError::lost_after_sending("connection to x:1 broke".into());
        assert_eq!(e.kind(), ErrorKind::OutcomeUnknown);
        assert!(!e.retryable() && e.outcome_unknown());
        assert!(e.to_string().starts_with("connection to x:1 broke; "));
        assert!(e.to_string().contains("may or may not have run"));
        assert!(e.to_string().contains("idempotency key"));
    }

    #[test]
    fn failover_errors_are_draining_full_and_unreachable() {
        let data = || Some(json!({"retryable": true}));
        for (code, over) in [
            (-32003, true),
            (-32005, true),
            (-32001, false),
            (-32004, false),
        ] {
            let e = CallError::server(code, "m".into(), data());
            assert_eq!(e.fails_over(), over, "{code}");
        }
        assert!(CallError::connection("refused".into(), true).fails_over());
        assert!(!CallError::lost_after_sending("broke".into()).fails_over());
        assert!(!CallError::server(-32005, "m".into(), data()).keeps_connection);
    }
}
