//! The contract's error codes ([`code`]) and [`RpcError`], the one type a
//! failed request is answered with: its constructors are the only place the
//! code, message and `data` members of each error are decided.

use serde_json::{Map, Value};

/// The `retry_after_ms` of a -32003 (the server is draining).
pub const SHUTDOWN_RETRY_AFTER_MS: u64 = 1000;

/// JSON-RPC error codes of the blitz contract.
pub mod code {
    /// The line is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method or function.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Missing, extra or ill-typed arguments.
    pub const INVALID_PARAMS: i64 = -32602;
    /// A bug: a failure with no code of its own (a panic, or a request
    /// dropped without a reply, is logged with the request id).
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Queue full, or the connection's in-flight limit reached.
    pub const OVERLOADED: i64 = -32001;
    /// Expired while queued, or the statement was cancelled at the deadline.
    pub const DEADLINE_EXCEEDED: i64 = -32002;
    /// Draining for shutdown.
    pub const SHUTTING_DOWN: i64 = -32003;
    /// No database connection within the acquire timeout.
    pub const DB_UNAVAILABLE: i64 = -32004;
    /// `max_clients` reached.
    pub const TOO_MANY_CONNECTIONS: i64 = -32005;
    /// No session, or it expired.
    pub const UNAUTHENTICATED: i64 = -32006;
    /// The database refused (SQLSTATE 42501).
    pub const PERMISSION_DENIED: i64 = -32007;
    /// 40001/40P01 still failing after the retries.
    pub const TRANSACTION_CONFLICT: i64 = -32008;
    /// A line over `max_message_bytes`.
    pub const MESSAGE_TOO_LARGE: i64 = -32009;
    /// The function raised an error.
    pub const DATABASE_ERROR: i64 = -32010;
}

/// A JSON-RPC error object: code, message and a `data` object that always
/// holds `"retryable"`.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// One of [`code`].
    pub code: i64,
    /// The contract's message for the code, sometimes with a detail.
    pub message: String,
    /// Extra members; `retryable` is always present.
    pub data: Map<String, Value>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>, retryable: bool) -> RpcError {
        let mut data = Map::new();
        data.insert("retryable".into(), Value::Bool(retryable));
        RpcError {
            code,
            message: message.into(),
            data,
        }
    }

    /// Adds one member to `data`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> RpcError {
        self.data.insert(key.into(), value.into());
        self
    }

    /// -32700: the line is not JSON (or not UTF-8).
    pub fn parse_error(detail: impl std::fmt::Display) -> RpcError {
        RpcError::new(code::PARSE_ERROR, "Parse error", false).with("detail", detail.to_string())
    }

    /// -32600: valid JSON, but not a request object.
    pub fn invalid_request(detail: impl Into<String>) -> RpcError {
        RpcError::new(code::INVALID_REQUEST, "Invalid Request", false).with("detail", detail.into())
    }

    /// -32601: no such method (or `api.` function).
    pub fn method_not_found(method: &str) -> RpcError {
        RpcError::new(code::METHOD_NOT_FOUND, "Method not found", false).with("method", method)
    }

    /// -32602: a parameter is missing, unknown or ill-typed.
    pub fn invalid_params(param: Option<&str>, detail: impl Into<String>) -> RpcError {
        let e = RpcError::new(code::INVALID_PARAMS, "Invalid params", false)
            .with("detail", detail.into());
        match param {
            Some(p) => e.with("param", p),
            None => e,
        }
    }

    /// -32603: a bug in the server.
    pub fn internal(detail: impl Into<String>) -> RpcError {
        RpcError::new(code::INTERNAL_ERROR, "Internal error", false).with("detail", detail.into())
    }

    /// -32001: the queue is full, the connection's in-flight limit is
    /// reached, or the deadline is shorter than the expected queue wait.
    pub fn overloaded(
        retry_after_ms: u64,
        depth: usize,
        capacity: usize,
        instance: &str,
    ) -> RpcError {
        RpcError::new(code::OVERLOADED, "Server overloaded", true)
            .with("retry_after_ms", retry_after_ms.max(1))
            .with("queue_depth", depth)
            .with("queue_capacity", capacity)
            .with("instance", instance)
    }

    /// -32002: the deadline passed while queued or while running.
    pub fn deadline_exceeded(queued_ms: u64) -> RpcError {
        RpcError::new(code::DEADLINE_EXCEEDED, "Deadline exceeded", true)
            .with("queued_ms", queued_ms)
    }

    /// -32003: the server is draining for shutdown. Another instance is
    /// the better target, so `retry_after_ms` ([`SHUTDOWN_RETRY_AFTER_MS`])
    /// only paces a client that has no other.
    pub fn shutting_down() -> RpcError {
        RpcError::new(code::SHUTTING_DOWN, "Server shutting down", true)
            .with("retry_after_ms", SHUTDOWN_RETRY_AFTER_MS)
    }

    /// -32004: no database connection within the acquire timeout.
    pub fn db_unavailable(retry_after_ms: u64, detail: impl Into<String>) -> RpcError {
        RpcError::new(code::DB_UNAVAILABLE, "Database unavailable", true)
            .with("retry_after_ms", retry_after_ms.max(1))
            .with("detail", detail.into())
    }

    /// -32005: `max_clients` reached; the connection is closed after this.
    pub fn too_many_connections(max_clients: u64) -> RpcError {
        RpcError::new(code::TOO_MANY_CONNECTIONS, "Too many connections", true)
            .with("max_clients", max_clients)
    }

    /// -32006: no session bound to the connection, or it expired.
    pub fn unauthenticated(detail: impl Into<String>) -> RpcError {
        RpcError::new(code::UNAUTHENTICATED, "Unauthenticated", false).with("detail", detail.into())
    }

    /// -32007: the database refused the call (SQLSTATE 42501).
    pub fn permission_denied(detail: impl Into<String>) -> RpcError {
        RpcError::new(code::PERMISSION_DENIED, "Permission denied", false)
            .with("detail", detail.into())
            .with("sqlstate", "42501")
    }

    /// -32008: serialization failure or deadlock after every retry.
    pub fn transaction_conflict(attempts: u32, sqlstate: &str) -> RpcError {
        RpcError::new(code::TRANSACTION_CONFLICT, "Transaction conflict", true)
            .with("attempts", attempts)
            .with("sqlstate", sqlstate)
    }

    /// -32009: a line longer than `max_message_bytes`.
    pub fn message_too_large(max_message_bytes: u64) -> RpcError {
        RpcError::new(code::MESSAGE_TOO_LARGE, "Message too large", false)
            .with("max_message_bytes", max_message_bytes)
    }

    /// -32010: the function raised; SQLSTATE and message passed on.
    pub fn database_error(sqlstate: &str, message: &str) -> RpcError {
        RpcError::new(code::DATABASE_ERROR, "Database error", false)
            .with("sqlstate", sqlstate)
            .with("detail", message)
    }

    /// Whether the client may retry the same call.
    pub fn retryable(&self) -> bool {
        self.data.get("retryable") == Some(&Value::Bool(true))
    }
}
