//! The label values of the metrics, and the one classification of a reply
//! by its error code: what a request asked for ([`MethodKind`]), how it
//! ended (the code labels of `blitz_requests_total` and the coarse
//! [`CallOutcome`] of `blitz_api_calls_total`), and why a request was
//! refused before a worker took it ([`Refusal`]).

use crate::protocol::code;

/// What a request asked for, as the `kind` label of `blitz_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// `api.<name>`.
    Api,
    /// `session.*`.
    Session,
    /// `sys.*`.
    Sys,
    /// `rpc.*` (`rpc.discover`).
    Rpc,
    /// Anything else, and texts that were no request at all.
    Other,
}

impl MethodKind {
    /// Every kind, in the order the counters are kept.
    pub const ALL: [MethodKind; 5] = [
        MethodKind::Api,
        MethodKind::Session,
        MethodKind::Sys,
        MethodKind::Rpc,
        MethodKind::Other,
    ];

    /// The kind of `method`.
    pub fn of(method: &str) -> MethodKind {
        match method.split_once('.').map(|(prefix, _)| prefix) {
            Some("api") => MethodKind::Api,
            Some("session") => MethodKind::Session,
            Some("sys") => MethodKind::Sys,
            Some("rpc") => MethodKind::Rpc,
            _ => MethodKind::Other,
        }
    }

    /// The `kind` label value.
    pub fn label(self) -> &'static str {
        match self {
            MethodKind::Api => "api",
            MethodKind::Session => "session",
            MethodKind::Sys => "sys",
            MethodKind::Rpc => "rpc",
            MethodKind::Other => "other",
        }
    }
}

/// The `outcome` labels of `blitz_requests_total`: a result, each error
/// code of the contract, any other code.
pub const REPLY_CODES: [(&str, Option<i64>); 17] = [
    ("ok", None),
    ("-32700", Some(code::PARSE_ERROR)),
    ("-32600", Some(code::INVALID_REQUEST)),
    ("-32601", Some(code::METHOD_NOT_FOUND)),
    ("-32602", Some(code::INVALID_PARAMS)),
    ("-32603", Some(code::INTERNAL_ERROR)),
    ("-32001", Some(code::OVERLOADED)),
    ("-32002", Some(code::DEADLINE_EXCEEDED)),
    ("-32003", Some(code::SHUTTING_DOWN)),
    ("-32004", Some(code::DB_UNAVAILABLE)),
    ("-32005", Some(code::TOO_MANY_CONNECTIONS)),
    ("-32006", Some(code::UNAUTHENTICATED)),
    ("-32007", Some(code::PERMISSION_DENIED)),
    ("-32008", Some(code::TRANSACTION_CONFLICT)),
    ("-32009", Some(code::MESSAGE_TOO_LARGE)),
    ("-32010", Some(code::DATABASE_ERROR)),
    ("other", None),
];

/// The index in [`REPLY_CODES`] of a reply with error `code` (`None`: a result).
pub fn reply_code_index(error: Option<i64>) -> usize {
    match error {
        None => 0,
        Some(c) => REPLY_CODES
            .iter()
            .position(|(_, known)| *known == Some(c))
            .unwrap_or(REPLY_CODES.len() - 1),
    }
}

/// How a call ended, coarsely: the `outcome` label of `blitz_api_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// A result.
    Ok,
    /// Refused for load: -32001, -32005.
    Overloaded,
    /// Its deadline passed: -32002.
    Timeout,
    /// The database or the server could not take it: -32004, -32003.
    Unavailable,
    /// Any other error (the caller's or the function's).
    Error,
}

impl CallOutcome {
    /// Every outcome, in the order the counters are kept.
    pub const ALL: [CallOutcome; 5] = [
        CallOutcome::Ok,
        CallOutcome::Error,
        CallOutcome::Overloaded,
        CallOutcome::Timeout,
        CallOutcome::Unavailable,
    ];

    /// The outcome of a reply with error `code` (`None`: a result).
    pub fn of(error: Option<i64>) -> CallOutcome {
        match error {
            None => CallOutcome::Ok,
            Some(code::OVERLOADED | code::TOO_MANY_CONNECTIONS) => CallOutcome::Overloaded,
            Some(code::DEADLINE_EXCEEDED) => CallOutcome::Timeout,
            Some(code::DB_UNAVAILABLE | code::SHUTTING_DOWN) => CallOutcome::Unavailable,
            Some(_) => CallOutcome::Error,
        }
    }

    /// Its index in [`CallOutcome::ALL`].
    pub fn index(self) -> usize {
        CallOutcome::ALL
            .iter()
            .position(|&o| o == self)
            .unwrap_or(0)
    }

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Error => "error",
            CallOutcome::Overloaded => "overloaded",
            CallOutcome::Timeout => "timeout",
            CallOutcome::Unavailable => "unavailable",
        }
    }
}

/// Why a request was refused before it reached a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// -32001: the queue was full.
    QueueFull,
    /// -32001: the connection had `max_in_flight_per_connection` requests in flight.
    InFlightLimit,
    /// -32001: the deadline was shorter than the expected queue wait.
    Deadline,
    /// -32001: the queue was standing and the expected wait over the target.
    QueueWait,
    /// -32003: the server is draining.
    Draining,
    /// -32005: `max_clients` connections were open.
    MaxClients,
}

impl Refusal {
    /// Every reason, in the order the counters are kept.
    pub const ALL: [Refusal; 6] = [
        Refusal::QueueFull,
        Refusal::InFlightLimit,
        Refusal::Deadline,
        Refusal::QueueWait,
        Refusal::Draining,
        Refusal::MaxClients,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue_full",
            Refusal::InFlightLimit => "in_flight_limit",
            Refusal::Deadline => "deadline_shorter_than_queue_wait",
            Refusal::QueueWait => "queue_wait_over_target",
            Refusal::Draining => "draining",
            Refusal::MaxClients => "max_clients",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_kinds_come_from_the_prefix() {
        assert_eq!(MethodKind::of("api.transfer"), MethodKind::Api);
        assert_eq!(MethodKind::of("session.login"), MethodKind::Session);
        assert_eq!(MethodKind::of("sys.ping"), MethodKind::Sys);
        assert_eq!(MethodKind::of("rpc.discover"), MethodKind::Rpc);
        assert_eq!(MethodKind::of("nope"), MethodKind::Other);
    }

    #[test]
    fn call_outcomes_come_from_the_error_code() {
        let outcome = |error| CallOutcome::of(error).label();
        assert_eq!(outcome(None), "ok");
        assert_eq!(outcome(Some(code::OVERLOADED)), "overloaded");
        assert_eq!(outcome(Some(code::TOO_MANY_CONNECTIONS)), "overloaded");
        assert_eq!(outcome(Some(code::DEADLINE_EXCEEDED)), "timeout");
        assert_eq!(outcome(Some(code::DB_UNAVAILABLE)), "unavailable");
        assert_eq!(outcome(Some(code::SHUTTING_DOWN)), "unavailable");
        assert_eq!(outcome(Some(code::DATABASE_ERROR)), "error");
        assert_eq!(outcome(Some(-1)), "error");
    }
}
