//! The wire format: JSON-RPC 2.0, one JSON text per `\n`-terminated line.
//!
//! This module owns the error codes of the contract ([`RpcError`] and its
//! constructors), the parsing of a line into requests ([`parse_line`]), the
//! rendering of replies ([`render_result`], [`render_error`]), and the line
//! framing with a size limit ([`LineReader`]). Request ids are kept as the
//! raw JSON text the client sent, so they are echoed byte for byte.

use std::io::{self, BufRead};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

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
    /// A bug; logged with the request id.
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

    /// -32003: the server is draining for shutdown.
    pub fn shutting_down(retry_after_ms: u64) -> RpcError {
        RpcError::new(code::SHUTTING_DOWN, "Server shutting down", true)
            .with("retry_after_ms", retry_after_ms.max(1))
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

/// The id of a request, as the raw JSON text the client sent (`"null"` for
/// an explicit null id, and for errors about unreadable requests).
pub type Id = Box<RawValue>;

/// The id used in replies to requests whose id could not be read.
pub fn null_id() -> Id {
    RawValue::from_string("null".into()).expect("null is JSON")
}

/// One well-formed request object.
///
/// `params` stays raw JSON text here: the router thread has a small stack,
/// so nested JSON is only turned into a [`Value`] by [`Request::params`] on a
/// worker (serde_json's nesting limit then applies on a full-size stack).
#[derive(Debug)]
pub struct Request {
    /// `None` for a notification (no reply is sent).
    pub id: Option<Id>,
    /// The method name.
    pub method: String,
    /// `params` (an object or an array) as sent, `None` when absent.
    pub raw_params: Option<Box<RawValue>>,
    /// The `timeout_ms` extension member.
    pub timeout_ms: Option<u64>,
    /// The `idempotency_key` extension member.
    pub idempotency_key: Option<String>,
}

impl Request {
    /// `params` as a JSON value (`Value::Null` when absent); -32602 when it
    /// nests deeper than serde_json allows (128 levels).
    pub fn params(&self) -> Result<Value, RpcError> {
        match &self.raw_params {
            None => Ok(Value::Null),
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|e| RpcError::invalid_params(None, format!("params cannot be read: {e}"))),
        }
    }
}

/// What one element of a line turned into: a request, or an error to send
/// back with the id we could recover.
pub type Parsed = Result<Request, (Option<Id>, RpcError)>;

/// A parsed line: one request, or a batch.
#[derive(Debug)]
pub enum Line {
    /// A single request object (or something that failed to be one).
    Single(Parsed),
    /// A batch (JSON array) of one or more elements.
    Batch(Vec<Parsed>),
}

/// The request members as they come off the wire, every one kept raw so
/// that no nested value is parsed recursively on the router thread. An
/// explicit `"id": null` is `Some("null")`.
#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(borrow)]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(default, borrow)]
    id: WireId<'a>,
    #[serde(borrow)]
    timeout_ms: Option<&'a RawValue>,
    #[serde(borrow)]
    idempotency_key: Option<&'a RawValue>,
}

/// Present-or-absent id; serde's `Option` would fold `null` into absent.
#[derive(Default)]
enum WireId<'a> {
    #[default]
    Absent,
    Present(&'a RawValue),
}

impl<'de: 'a, 'a> Deserialize<'de> for WireId<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&RawValue>::deserialize(d).map(WireId::Present)
    }
}

/// Parses one line (without its `\n`). `Err` is a reply to send with a null
/// id: the line is not UTF-8, not JSON, or an empty batch.
pub fn parse_line(bytes: &[u8]) -> Result<Line, RpcError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| RpcError::parse_error(format!("the line is not valid UTF-8: {e}")))?;
    let raw: &RawValue = serde_json::from_str(text).map_err(RpcError::parse_error)?;
    if raw.get().starts_with('[') {
        let elements: Vec<&RawValue> =
            serde_json::from_str(raw.get()).map_err(RpcError::parse_error)?;
        if elements.is_empty() {
            return Err(RpcError::invalid_request("empty batch"));
        }
        return Ok(Line::Batch(
            elements.into_iter().map(parse_request).collect(),
        ));
    }
    Ok(Line::Single(parse_request(raw)))
}

fn parse_request(raw: &RawValue) -> Parsed {
    if !raw.get().starts_with('{') {
        return Err((
            None,
            RpcError::invalid_request("a request must be a JSON object"),
        ));
    }
    let wire: WireRequest = serde_json::from_str(raw.get())
        .map_err(|e| (None, RpcError::invalid_request(e.to_string())))?;
    let id = match wire.id {
        WireId::Absent => None,
        WireId::Present(r) => Some(r.to_owned()),
    };
    validate(&wire, &id).map_err(|e| (Some(id.clone().unwrap_or_else(null_id)), e))?;
    Ok(Request {
        id,
        method: from_raw(wire.method).unwrap_or_default(),
        raw_params: wire.params.map(RawValue::to_owned),
        timeout_ms: from_raw(non_null(wire.timeout_ms)),
        idempotency_key: from_raw(non_null(wire.idempotency_key)),
    })
}

/// A member that is present and not `null`.
fn non_null(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

/// A scalar member read from its raw text (`None` if absent or of another type).
fn from_raw<T: serde::de::DeserializeOwned>(raw: Option<&RawValue>) -> Option<T> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

fn validate(wire: &WireRequest, id: &Option<Id>) -> Result<(), RpcError> {
    if from_raw::<String>(wire.jsonrpc).as_deref() != Some("2.0") {
        return Err(RpcError::invalid_request("\"jsonrpc\" must be \"2.0\""));
    }
    if let Some(id) = id {
        if !matches!(id.get().as_bytes()[0], b'"' | b'-' | b'0'..=b'9' | b'n') {
            return Err(RpcError::invalid_request(
                "\"id\" must be a string, a number or null",
            ));
        }
    }
    if from_raw::<String>(wire.method).is_none() {
        return Err(RpcError::invalid_request("\"method\" must be a string"));
    }
    if let Some(p) = wire.params {
        if !p.get().starts_with(['{', '[']) {
            return Err(RpcError::invalid_request(
                "\"params\" must be an object or an array",
            ));
        }
    }
    if let Some(t) = non_null(wire.timeout_ms) {
        if !matches!(from_raw::<u64>(Some(t)), Some(ms) if ms > 0) {
            return Err(RpcError::invalid_request(
                "\"timeout_ms\" must be a positive integer",
            ));
        }
    }
    if let Some(k) = non_null(wire.idempotency_key) {
        if !matches!(from_raw::<String>(Some(k)), Some(key) if !key.is_empty() && key.len() <= 256)
        {
            return Err(RpcError::invalid_request(
                "\"idempotency_key\" must be a string of 1 to 256 bytes",
            ));
        }
    }
    Ok(())
}

/// `{"jsonrpc":"2.0","id":…,"result":…}` as one line without the `\n`.
pub fn render_result(id: &RawValue, result: &Value) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{},"result":{}}}"#,
        id.get(),
        result
    )
}

/// `{"jsonrpc":"2.0","id":…,"error":{…}}` as one line without the `\n`.
pub fn render_error(id: &RawValue, error: &RpcError) -> String {
    let body = json!({"code": error.code, "message": error.message, "data": error.data});
    format!(r#"{{"jsonrpc":"2.0","id":{},"error":{}}}"#, id.get(), body)
}

/// One result of [`LineReader::read_line`].
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line (without `\n`; a trailing `\r` is removed too).
    Line(Vec<u8>),
    /// A line longer than the limit; its bytes were discarded, not buffered.
    TooLarge,
    /// The peer closed the connection (a partial last line is dropped).
    Eof,
}

/// Splits a byte stream into lines of at most `max` bytes, discarding the
/// rest of any longer line without buffering it.
#[derive(Debug)]
pub struct LineReader {
    max: usize,
    buf: Vec<u8>,
    oversized: bool,
}

impl LineReader {
    /// A reader for lines of at most `max` bytes.
    pub fn new(max: usize) -> LineReader {
        LineReader {
            max,
            buf: Vec::new(),
            oversized: false,
        }
    }

    /// Whether part of a line has been received (and not yet its end).
    pub fn has_partial_line(&self) -> bool {
        !self.buf.is_empty() || self.oversized
    }

    /// Reads the next frame. I/O errors, including read timeouts, are
    /// returned as they are; the partial line is kept for the next call.
    pub fn read_line(&mut self, input: &mut impl BufRead) -> io::Result<Frame> {
        loop {
            let available = input.fill_buf()?;
            if available.is_empty() {
                return Ok(Frame::Eof);
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let take = newline.map_or(available.len(), |i| i);
            if !self.oversized && self.buf.len() + take > self.max {
                self.oversized = true;
                self.buf = Vec::new();
            }
            if !self.oversized {
                self.buf.extend_from_slice(&available[..take]);
            }
            input.consume(newline.map_or(take, |i| i + 1));
            if newline.is_some() {
                return Ok(self.finish_line());
            }
        }
    }

    fn finish_line(&mut self) -> Frame {
        if std::mem::take(&mut self.oversized) {
            return Frame::TooLarge;
        }
        let mut line = std::mem::take(&mut self.buf);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Frame::Line(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(text: &str) -> Parsed {
        match parse_line(text.as_bytes()).unwrap() {
            Line::Single(p) => p,
            Line::Batch(_) => panic!("not a single request"),
        }
    }

    #[test]
    fn ids_are_kept_byte_for_byte() {
        for id in [
            "1",
            "\"a\"",
            "null",
            "-0",
            "1.50",
            "1e3",
            "18446744073709551616",
            "\"\\u00e9\"",
        ] {
            let r = single(&format!(r#"{{"jsonrpc":"2.0","method":"m","id":{id}}}"#)).unwrap();
            assert_eq!(r.id.unwrap().get(), id);
        }
    }

    #[test]
    fn notifications_have_no_id() {
        let r = single(r#"{"jsonrpc":"2.0","method":"m"}"#).unwrap();
        assert!(r.id.is_none());
    }

    #[test]
    fn invalid_requests_are_named() {
        let cases = [
            (r#"{"jsonrpc":"1.0","method":"m","id":1}"#, "jsonrpc"),
            (r#"{"jsonrpc":"2.0","method":5,"id":1}"#, "method"),
            (
                r#"{"jsonrpc":"2.0","method":"m","params":3,"id":1}"#,
                "params",
            ),
            (r#"{"jsonrpc":"2.0","method":"m","id":{}}"#, "id"),
            (
                r#"{"jsonrpc":"2.0","method":"m","id":1,"timeout_ms":-5}"#,
                "timeout_ms",
            ),
            (r#"5"#, "object"),
        ];
        for (text, word) in cases {
            let (_, e) = single(text).unwrap_err();
            assert_eq!(e.code, code::INVALID_REQUEST, "{text}");
            assert!(
                e.data["detail"].as_str().unwrap().contains(word),
                "{text}: {e:?}"
            );
        }
    }

    #[test]
    fn parse_errors_and_empty_batches() {
        assert_eq!(parse_line(b"{nope").unwrap_err().code, code::PARSE_ERROR);
        assert_eq!(parse_line(b"\xff\xfe").unwrap_err().code, code::PARSE_ERROR);
        assert_eq!(parse_line(b"[]").unwrap_err().code, code::INVALID_REQUEST);
        match parse_line(br#"[1, {"jsonrpc":"2.0","method":"m","id":2}]"#).unwrap() {
            Line::Batch(v) => {
                assert!(v[0].is_err());
                assert!(v[1].is_ok());
            }
            Line::Single(_) => panic!("expected a batch"),
        }
    }

    #[test]
    fn oversized_lines_are_discarded_and_the_stream_goes_on() {
        let data = format!("{}\nshort\r\n{}", "x".repeat(100), "tail");
        let mut input = io::BufReader::with_capacity(7, data.as_bytes());
        let mut r = LineReader::new(10);
        assert_eq!(r.read_line(&mut input).unwrap(), Frame::TooLarge);
        assert_eq!(
            r.read_line(&mut input).unwrap(),
            Frame::Line(b"short".to_vec())
        );
        assert_eq!(r.read_line(&mut input).unwrap(), Frame::Eof);
    }

    #[test]
    fn replies_render_with_raw_ids() {
        let id = RawValue::from_string("1.50".into()).unwrap();
        assert_eq!(
            render_result(&id, &json!({"a": 1})),
            r#"{"jsonrpc":"2.0","id":1.50,"result":{"a":1}}"#
        );
        let e = render_error(&id, &RpcError::overloaded(5, 10, 10, "i"));
        assert!(e.contains(r#""code":-32001"#) && e.contains(r#""retryable":true"#));
    }
}
