//! The wire: one open TCP (or TLS over TCP) connection to one server, the request line, and
//! the classification of each reply line for the call waiting on it.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::tls::{ClientTls, Stream};
use crate::protocol::{self, ReplyId, ReplyOutcome};

use super::error::CallError;

/// How long one attempt waits for one TCP connection to be accepted.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`Client::call_with_timeout`](super::Client::call_with_timeout)
/// waits beyond the timeout it sends, so that the server's own `-32002
/// Deadline exceeded` reply arrives in time.
pub const TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// The longest excerpt of a malformed reply quoted in an error message.
const EXCERPT_CHARS: usize = 200;

/// The request as one `\n`-terminated JSON line; `timeout` becomes its
/// `timeout_ms`, `key` its `idempotency_key`, `session` its `session`
/// member (a key that authenticates this request alone).
pub(super) fn request_line(
    id: u64,
    method: &str,
    params: Value,
    timeout: Option<Duration>,
    key: Option<&str>,
    session: Option<&str>,
) -> Vec<u8> {
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
    if let Some(key) = key {
        request.insert("idempotency_key".into(), key.into());
    }
    if let Some(key) = session {
        request.insert("session".into(), key.into());
    }
    let mut line = Value::Object(request).to_string().into_bytes();
    line.push(b'\n');
    line
}

/// `d` in whole milliseconds, rounded up so that a non-zero timeout never
/// becomes `0`.
pub(super) fn ceil_millis(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// How long a call waits for its reply: until `at`, which is the call's
/// deadline plus [`TIMEOUT_MARGIN`]; `timeout` is the caller's figure, for
/// the error message.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplyLimit {
    pub(super) at: Instant,
    pub(super) timeout: Duration,
}

/// One open TCP connection and the bytes of a reply line read so far.
#[derive(Debug)]
pub(super) struct Connection {
    /// The server's index in the client's list.
    pub(super) index: usize,
    /// The server's `host:port`, as given.
    pub(super) server: String,
    /// Whether the client's session is bound to this connection.
    pub(super) joined: bool,
    reader: BufReader<Stream>,
    partial: Vec<u8>,
}

impl Connection {
    /// Connects to `server`, number `index` of the client's list.
    /// With `tls`, the handshake is done before this returns.
    pub(super) fn open(
        index: usize,
        server: &str,
        tls: Option<&ClientTls>,
    ) -> io::Result<Connection> {
        let tcp = connect_one(server)?;
        let stream = match tls {
            Some(tls) => tls.connect(server, tcp)?,
            None => Stream::Plain(tcp),
        };
        Ok(Connection {
            index,
            server: server.to_string(),
            joined: false,
            reader: BufReader::new(stream),
            partial: Vec::new(),
        })
    }

    /// Whether the server has closed the connection (end of stream with no
    /// reply bytes pending), checked without blocking.
    pub(super) fn closed_by_peer(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let stream = self.reader.get_ref().tcp();
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
    /// the one for `id` arrives, or `limit` passes.
    pub(super) fn exchange(
        &mut self,
        id: u64,
        line: &[u8],
        limit: Option<ReplyLimit>,
    ) -> Result<Value, CallError> {
        let deadline = limit.map(|l| l.at);
        self.send(line, deadline)?;
        loop {
            let reply = match self.read_line(deadline) {
                Ok(Some(line)) => line,
                Ok(None) => return Err(self.broken("was closed by the server")),
                Err(e) if is_timeout(&e) => return Err(self.timed_out(limit)),
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

    /// Writes the whole request line, within `deadline` if there is one. A
    /// failed write never sent the line's final `\n`, and the server runs
    /// only complete lines, so the call did not run: the error is a
    /// retryable connection error.
    fn send(&mut self, line: &[u8], deadline: Option<Instant>) -> Result<(), CallError> {
        let stream = self.reader.get_mut();
        let written = (stream.tcp())
            .set_write_timeout(deadline.map(remaining_or_tick))
            .and_then(|()| stream.write_all(line))
            .and_then(|()| stream.flush());
        written.map_err(|e| {
            CallError::connection(
                format!(
                    "cannot send the request to {} ({e}); it did not run",
                    self.server
                ),
                true,
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
            self.reader.get_ref().tcp().set_read_timeout(wait)?;
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
        CallError::lost_after_sending(format!(
            "connection to {} {what} after the request was sent",
            self.server
        ))
    }

    /// The error for a reply that did not come within `limit`; the
    /// connection stays usable (a late reply is skipped by its id).
    fn timed_out(&self, limit: Option<ReplyLimit>) -> CallError {
        let timeout = limit.map(|l| l.timeout).unwrap_or_default();
        let mut error = CallError::lost_after_sending(format!(
            "no reply from {} within the {} ms timeout (+{} ms margin)",
            self.server,
            ceil_millis(timeout),
            TIMEOUT_MARGIN.as_millis()
        ));
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
pub(super) fn remaining_or_tick(deadline: Instant) -> Duration {
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
pub(super) enum Reply {
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
pub(super) fn parse_reply(line: &[u8], id: u64, server: &str) -> Result<Reply, CallError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(Reply::Blank);
    }
    let bad = |what: &dyn std::fmt::Display| {
        CallError::protocol(format!(
            "{server} sent {what}; the outcome is unknown: {}",
            excerpt(line)
        ))
    };
    // serde_json reads a value at most 128 levels deep; the reply parser's
    // raw text has no such limit.
    let value = |raw: &RawValue| {
        serde_json::from_str::<Value>(raw.get())
            .map_err(|e| bad(&format!("a reply it cannot read ({e})")))
    };
    let reply = protocol::parse_reply(line).map_err(|e| bad(&e))?;
    match reply.id {
        ReplyId::Number(n) if n == id => {}
        ReplyId::Null => {}
        ReplyId::Number(n) => return Ok(Reply::Other(n.into())),
        ReplyId::Other(raw) => return Ok(Reply::Other(value(raw)?)),
    }
    Ok(Reply::Done(match reply.outcome {
        ReplyOutcome::Result(raw) => Ok(value(raw)?),
        ReplyOutcome::Error(e) => Err(CallError::server(
            e.code,
            e.message.into_owned(),
            e.data.map(value).transpose()?,
        )),
    }))
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
    use crate::client::error::ErrorKind;
    use serde_json::json;

    #[test]
    fn request_line_carries_id_params_and_timeout() {
        let line = request_line(
            7,
            "api.x",
            json!({"a": 1}),
            Some(Duration::from_micros(1500)),
            Some("k-1"),
            Some("k"),
        );
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "id": 7, "method": "api.x", "params": {"a": 1}, "timeout_ms": 2, "idempotency_key": "k-1", "session": "k"})
        );
        let bare: Value =
            serde_json::from_slice(&request_line(1, "sys.ping", Value::Null, None, None, None))
                .unwrap();
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
    fn a_result_nested_too_deeply_is_a_protocol_error_not_a_panic() {
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        let line = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{deep}}}"#);
        let e = parse(&line, 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
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
