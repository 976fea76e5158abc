//! The thin client: a blocking JSON-RPC 2.0 caller over one TCP connection,
//! speaking the wire contract of ARCHITECTURE.md (one JSON text per
//! `\n`-terminated line, the `timeout_ms` extension member).
//!
//! This module owns how a call's outcome is classified for callers: a
//! [`CallError`] says whether the server refused the call ([`ErrorKind::Server`],
//! with the JSON-RPC code and `data`), whether the connection failed
//! ([`ErrorKind::Connection`]) or whether the server sent something that is not
//! a reply ([`ErrorKind::Protocol`]), and whether the call may be retried.
//!
//! One request is in flight at a time. Request ids are increasing integers; a
//! reply carrying another id (say, the late answer to a call that timed out on
//! this side) is skipped, so the connection stays usable after a client-side
//! timeout. After a broken connection or a protocol error the connection is
//! dropped, and the next call connects again, trying the servers in order; a
//! session bound to the old connection is not re-joined.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// How long [`Client::connect`] waits for one TCP connection to be accepted.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`Client::call_with_timeout`] waits beyond the timeout it sends, so
/// that the server's own `-32002 Deadline exceeded` reply arrives in time.
pub const TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// The longest excerpt of a malformed reply quoted in an error message.
const EXCERPT_CHARS: usize = 200;

/// The JSON-RPC code the server sends once before closing a connection over
/// its `max_clients` limit.
const TOO_MANY_CONNECTIONS: i64 = -32005;

/// The class of a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server answered with a JSON-RPC error reply.
    Server,
    /// No connection could be made, or the connection broke or timed out.
    Connection,
    /// The server sent something that is not a valid JSON-RPC reply.
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
    keeps_connection: bool,
}

impl CallError {
    /// A JSON-RPC error reply; retryable when `data.retryable` is `true`.
    fn server(code: i64, message: String, data: Option<Value>) -> CallError {
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

    /// A connection failure; `retryable` only when nothing reached the server.
    fn connection(message: String, retryable: bool) -> CallError {
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

    /// A reply that breaks the protocol; the call's outcome is unknown.
    fn protocol(message: String) -> CallError {
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

    /// Server, connection or protocol failure.
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

    /// How many times the call was sent or tried; always 1 for now.
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
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for CallError {}

/// A blocking JSON-RPC client holding one connection to one of its servers.
#[derive(Debug)]
pub struct Client {
    servers: Vec<String>,
    conn: Option<Connection>,
    last_id: u64,
}

impl Client {
    /// Connects to the first of `servers` (`host:port` each) that accepts a
    /// TCP connection within [`CONNECT_TIMEOUT`], trying them in order.
    ///
    /// The error is a retryable [`ErrorKind::Connection`] error listing why
    /// each server failed (not retryable when no address is usable at all).
    pub fn connect(servers: &[String]) -> Result<Client, CallError> {
        let conn = Connection::open(servers)?;
        Ok(Client {
            servers: servers.to_vec(),
            conn: Some(conn),
            last_id: 0,
        })
    }

    /// The server (as given to [`connect`](Self::connect)) the client is
    /// connected to; `None` after the connection was dropped.
    pub fn server(&self) -> Option<&str> {
        self.conn.as_ref().map(|c| c.server.as_str())
    }

    /// Calls `method` with `params` (an object or an array; `Null` sends no
    /// `params`) and waits for its reply without a limit of its own: the
    /// server answers every request it read, at the latest when its
    /// `invocation.default_timeout_ms` expires.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, CallError> {
        self.invoke(method, params, None)
    }

    /// Like [`call`](Self::call), but sends `timeout` as the request's
    /// `timeout_ms` and waits at most `timeout` + [`TIMEOUT_MARGIN`] for the
    /// reply; after that the call fails with a non-retryable
    /// [`ErrorKind::Connection`] error (outcome unknown) and the connection
    /// stays usable.
    pub fn call_with_timeout(
        &mut self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        self.invoke(method, params, Some(timeout))
    }

    /// Sends one request and returns its outcome, dropping the connection
    /// when it can no longer be trusted.
    fn invoke(
        &mut self,
        method: &str,
        params: Value,
        timeout: Option<Duration>,
    ) -> Result<Value, CallError> {
        self.last_id += 1;
        let id = self.last_id;
        let line = request_line(id, method, params, timeout);
        let conn = self.live_connection()?;
        let outcome = conn.exchange(id, &line, timeout);
        if let Err(e) = &outcome {
            if !e.keeps_connection {
                self.conn = None;
            }
        }
        outcome
    }

    /// The current connection, or a new one when there is none or the
    /// server has closed it while the client was idle.
    fn live_connection(&mut self) -> Result<&mut Connection, CallError> {
        if let Some(conn) = &self.conn {
            if conn.closed_by_peer() {
                log::debug!("{} closed the idle connection; reconnecting", conn.server);
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            self.conn = Some(Connection::open(&self.servers)?);
        }
        Ok(self.conn.as_mut().expect("connection set above"))
    }
}

/// The request as one `\n`-terminated JSON line.
fn request_line(id: u64, method: &str, params: Value, timeout: Option<Duration>) -> Vec<u8> {
    let mut request = Map::new();
    request.insert("jsonrpc".into(), "2.0".into());
    request.insert("id".into(), id.into());
    request.insert("method".into(), method.into());
    if !params.is_null() {
        request.insert("params".into(), params);
    }
    if let Some(timeout) = timeout {
        request.insert("timeout_ms".into(), ceil_millis(timeout).into());
    }
    let mut line = Value::Object(request).to_string().into_bytes();
    line.push(b'\n');
    line
}

/// `d` in whole milliseconds, rounded up so that a non-zero timeout never
/// becomes `0`.
fn ceil_millis(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// One open TCP connection and the bytes of a reply line read so far.
#[derive(Debug)]
struct Connection {
    server: String,
    reader: BufReader<TcpStream>,
    partial: Vec<u8>,
}

impl Connection {
    /// Connects to the first of `servers` that accepts.
    fn open(servers: &[String]) -> Result<Connection, CallError> {
        if servers.is_empty() {
            return Err(CallError::connection(
                "no server address given; expected host:port".into(),
                false,
            ));
        }
        let mut failures = Vec::new();
        let mut retryable = false;
        for server in servers {
            match connect_one(server) {
                Ok(stream) => {
                    return Ok(Connection {
                        server: server.clone(),
                        reader: BufReader::new(stream),
                        partial: Vec::new(),
                    })
                }
                Err(e) => {
                    retryable |= e.kind() != io::ErrorKind::InvalidInput;
                    failures.push(format!("{server}: {e}"));
                }
            }
        }
        let message = if failures.len() == 1 {
            format!("cannot connect to {}", failures[0])
        } else {
            format!(
                "cannot connect to any of {} servers: {}",
                failures.len(),
                failures.join("; ")
            )
        };
        Err(CallError::connection(message, retryable))
    }

    /// Whether the server has closed the connection (end of stream with no
    /// reply bytes pending), checked without blocking.
    fn closed_by_peer(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let stream = self.reader.get_ref();
        if stream.set_nonblocking(true).is_err() {
            return true;
        }
        let closed = match stream.peek(&mut [0u8; 1]) {
            Ok(n) => n == 0,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
        closed || stream.set_nonblocking(false).is_err()
    }

    /// Sends the request line `line` with id `id` and reads replies until
    /// the one for `id` arrives.
    fn exchange(
        &mut self,
        id: u64,
        line: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Value, CallError> {
        let deadline = timeout.map(|t| Instant::now() + t + TIMEOUT_MARGIN);
        self.send(line, deadline)?;
        loop {
            let reply = match self.read_line(deadline) {
                Ok(Some(line)) => line,
                Ok(None) => return Err(self.broken("was closed by the server")),
                Err(e) if is_timeout(&e) => return Err(self.timed_out(timeout)),
                Err(e) => return Err(self.broken(&format!("broke ({e})"))),
            };
            match parse_reply(&reply, id, &self.server)? {
                Reply::Done(outcome) => return outcome,
                Reply::Other(other) => {
                    log::debug!(
                        "{}: skipping a reply for id {other} while waiting for id {id}",
                        self.server
                    )
                }
                Reply::Blank => {}
            }
        }
    }

    /// Writes the whole request line, within `deadline` if there is one.
    fn send(&mut self, line: &[u8], deadline: Option<Instant>) -> Result<(), CallError> {
        let mut stream = self.reader.get_ref();
        let written = stream
            .set_write_timeout(deadline.map(remaining_or_tick))
            .and_then(|()| stream.write_all(line));
        written.map_err(|e| {
            CallError::connection(
                format!(
                    "cannot send the request to {} ({e}); the outcome is unknown",
                    self.server
                ),
                false,
            )
        })
    }

    /// Reads up to and including the next `\n`, keeping a partial line
    /// across calls so that a timeout mid-line loses nothing. `Ok(None)` at
    /// end of stream.
    fn read_line(&mut self, deadline: Option<Instant>) -> io::Result<Option<Vec<u8>>> {
        loop {
            let wait = match deadline {
                Some(d) if Instant::now() >= d => return Err(io::ErrorKind::TimedOut.into()),
                Some(d) => Some(remaining_or_tick(d)),
                None => None,
            };
            self.reader.get_ref().set_read_timeout(wait)?;
            let available = match self.reader.fill_buf() {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok(None);
            }
            match available.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.partial.extend_from_slice(&available[..end]);
                    self.reader.consume(end + 1);
                    return Ok(Some(std::mem::take(&mut self.partial)));
                }
                None => {
                    let n = available.len();
                    self.partial.extend_from_slice(available);
                    self.reader.consume(n);
                }
            }
        }
    }

    /// The error for a connection that broke (`what`) after the request was sent.
    fn broken(&self, what: &str) -> CallError {
        CallError::connection(
            format!(
                "connection to {} {what} after the request was sent; the outcome is unknown",
                self.server
            ),
            false,
        )
    }

    /// The error for a reply that did not come within `timeout` + margin.
    fn timed_out(&self, timeout: Option<Duration>) -> CallError {
        let timeout = timeout.unwrap_or_default();
        let mut error = CallError::connection(
            format!(
                "no reply from {} within the {} ms timeout (+{} ms margin); the outcome is unknown",
                self.server,
                ceil_millis(timeout),
                TIMEOUT_MARGIN.as_millis()
            ),
            false,
        );
        error.keeps_connection = true;
        error
    }
}

/// Resolves `server` and connects to the first of its addresses that accepts.
fn connect_one(server: &str) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = server.to_socket_addrs()?.collect();
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The time left until `deadline`, at least one millisecond (socket
/// timeouts cannot be zero).
fn remaining_or_tick(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// Whether a failed read or write ran out of time (`WouldBlock` on Unix,
/// `TimedOut` elsewhere).
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// What one line from the server means for the call waiting on `id`.
#[derive(Debug)]
enum Reply {
    /// The reply to this call: its result or its error.
    Done(Result<Value, CallError>),
    /// A reply to another request, identified by this id.
    Other(Value),
    /// An empty line, ignored.
    Blank,
}

/// Classifies one reply line for the call waiting on `id`. A reply with a
/// `null` id carrying an error (the server could not read the request's id,
/// or refuses the connection) answers the waiting call.
fn parse_reply(line: &[u8], id: u64, server: &str) -> Result<Reply, CallError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(Reply::Blank);
    }
    let bad = |what: &str| {
        CallError::protocol(format!(
            "{server} sent {what}; the outcome is unknown: {}",
            excerpt(line)
        ))
    };
    let value: Value =
        serde_json::from_slice(line).map_err(|e| bad(&format!("a line that is not JSON ({e})")))?;
    let Value::Object(reply) = value else {
        return Err(bad("a JSON value that is not a reply object"));
    };
    if reply.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(bad("a reply without \"jsonrpc\": \"2.0\""));
    }
    let reply_id = reply
        .get("id")
        .ok_or_else(|| bad("a reply without an id"))?;
    if reply_id.is_null() && !reply.contains_key("error") {
        return Err(bad("a result with a null id"));
    }
    if !reply_id.is_null() && reply_id.as_u64() != Some(id) {
        return Ok(Reply::Other(reply_id.clone()));
    }
    match (reply.get("result"), reply.get("error")) {
        (Some(result), None) => Ok(Reply::Done(Ok(result.clone()))),
        (None, Some(error)) => {
            let error = server_error(error).ok_or_else(|| {
                bad("an error reply without an integer code and a string message")
            })?;
            Ok(Reply::Done(Err(error)))
        }
        _ => Err(bad("a reply with neither or both of result and error")),
    }
}

/// The [`CallError`] of a JSON-RPC error object; `None` when it is malformed.
fn server_error(error: &Value) -> Option<CallError> {
    let code = error.get("code")?.as_i64()?;
    let message = error.get("message")?.as_str()?.to_string();
    let data = error.get("data").filter(|d| !d.is_null()).cloned();
    Some(CallError::server(code, message, data))
}

/// The start of `line` as text, for error messages.
fn excerpt(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

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
            (e.kind(), e.code(), e.retryable()),
            (ErrorKind::Connection, None, true)
        );
        let p = CallError::protocol("garbage".into());
        assert_eq!(
            (p.kind(), p.code(), p.retryable()),
            (ErrorKind::Protocol, None, false)
        );
    }

    #[test]
    fn request_line_carries_id_params_and_timeout() {
        let line = request_line(
            7,
            "api.x",
            json!({"a": 1}),
            Some(Duration::from_micros(1500)),
        );
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "id": 7, "method": "api.x", "params": {"a": 1}, "timeout_ms": 2})
        );
        let bare: Value =
            serde_json::from_slice(&request_line(1, "sys.ping", Value::Null, None)).unwrap();
        assert_eq!(
            bare,
            json!({"jsonrpc": "2.0", "id": 1, "method": "sys.ping"})
        );
    }

    fn parse(line: &str, id: u64) -> Result<Reply, CallError> {
        parse_reply(line.as_bytes(), id, "srv:1")
    }

    #[test]
    fn replies_are_classified_by_id() {
        let ok = parse(r#"{"jsonrpc":"2.0","id":3,"result":{"x":1}}"#, 3).unwrap();
        assert!(matches!(ok, Reply::Done(Ok(v)) if v == json!({"x": 1})));
        let other = parse(r#"{"jsonrpc":"2.0","id":2,"result":null}"#, 3).unwrap();
        assert!(matches!(other, Reply::Other(v) if v == json!(2)));
        let null_id = parse(
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32005,"message":"Too many connections","data":{"retryable":true}}}"#,
            3,
        )
        .unwrap();
        assert!(matches!(null_id, Reply::Done(Err(e)) if e.code() == Some(-32005)));
        assert!(matches!(parse("  ", 3).unwrap(), Reply::Blank));
    }

    #[test]
    fn malformed_replies_are_protocol_errors() {
        for line in [
            "not json",
            "[1]",
            r#"{"id":3,"result":1}"#,
            r#"{"jsonrpc":"2.0","result":1}"#,
            r#"{"jsonrpc":"2.0","id":3}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":1,"error":{"code":1,"message":"m"}}"#,
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":"x","message":"m"}}"#,
            r#"{"jsonrpc":"2.0","id":null,"result":1}"#,
        ] {
            let e = parse(line, 3).expect_err(line);
            assert_eq!(e.kind(), ErrorKind::Protocol, "{line}");
            assert!(e.message().starts_with("srv:1 sent "), "{}", e.message());
        }
    }

    #[test]
    fn long_garbage_is_quoted_shortened() {
        let line = "x".repeat(1000);
        let e = parse(&line, 1).unwrap_err();
        assert!(e
            .message()
            .ends_with(&format!("{}…", "x".repeat(EXCERPT_CHARS))));
    }
}
