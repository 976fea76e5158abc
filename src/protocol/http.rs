//! HTTP/1.1 framing, sans-IO: bytes in, requests and rejections out, and
//! the responses rendered as bytes. No socket is touched here, so the same
//! code serves the JSON-RPC transport on the router's event loops and the
//! metrics/health listener, and is tested without a network.
//!
//! [`RequestReader`] reads one request at a time from the front of a byte
//! buffer: the head is parsed by `httparse` (a well-kept, zero-copy
//! parser; writing our own would be a security liability), the body is
//! `Content-Length` bytes. What it does not accept it answers with a
//! [`Rejection`] naming the status and whether the connection can go on:
//!
//! - a malformed request line or header: 400, close (the stream cannot be
//!   resynchronised);
//! - a head over [`MAX_HEAD_BYTES`] or more than [`MAX_HEADERS`] headers: 431, close;
//! - `Content-Length` that is not a number or appears twice with two
//!   values: 400, close;
//! - a body over the limit: 413; its bytes are skipped and the connection
//!   stays open (closed instead when the client waits for `100 Continue`,
//!   as it will not send the body);
//! - `Transfer-Encoding` (chunked bodies): 411, close: blitz needs the
//!   length up front to apply `server.max_message_bytes`.
//!
//! Which methods and paths a listener serves is its own business (the
//! JSON-RPC transport: `POST /` only; [`rpc_status`] maps its replies to
//! statuses as the wire contract says).

use super::{code, RpcError};

/// The most headers a request may have.
pub const MAX_HEADERS: usize = 64;

/// The longest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The interim response to a request that sent `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method, e.g. `POST`.
    pub method: String,
    /// The request target as sent, e.g. `/` or `/metrics?x=1`.
    pub target: String,
    /// Whether the connection stays open after the response (HTTP/1.1
    /// unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// The `Content-Length` sent, if any.
    pub content_length: Option<usize>,
    /// The token of `Authorization: Bearer <token>`, if sent.
    pub bearer: Option<String>,
    /// The body (`content_length` bytes).
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The target without its query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// A request that is answered with an error status instead of being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status.
    pub status: u16,
    /// What was wrong, for the response body.
    pub detail: String,
    /// Whether the connection must be closed after the response.
    pub close: bool,
}

impl Rejection {
    fn new(status: u16, detail: impl Into<String>, close: bool) -> Rejection {
        Rejection {
            status,
            detail: detail.into(),
            close,
        }
    }

    /// The JSON-RPC error the JSON-RPC transport sends as the body: -32009
    /// for a body over `max_body` bytes, else -32600 with the detail.
    pub fn rpc_error(&self, max_body: usize) -> RpcError {
        match self.status {
            413 => RpcError::message_too_large(max_body as u64),
            _ => RpcError::invalid_request(format!("HTTP {}: {}", self.status, self.detail)),
        }
    }
}

/// What [`RequestReader::next`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete request.
    Request(HttpRequest),
    /// The head of a request that waits for `100 Continue` before sending
    /// its body: write [`CONTINUE`], then keep feeding bytes.
    Continue,
    /// A request that must be answered with an error status.
    Reject(Rejection),
}

/// What the reader is in the middle of.
#[derive(Debug)]
enum State {
    /// Waiting for a request head.
    Head,
    /// Head read; `request.body` fills up to `len` bytes.
    Body { request: HttpRequest, len: usize },
    /// Skipping `left` bytes of a body that was refused.
    Skip { left: usize },
    /// A rejection closed the connection: everything after it is ignored.
    Closed,
}

/// Reads HTTP/1.1 requests from a byte stream, one at a time.
#[derive(Debug)]
pub struct RequestReader {
    max_body: usize,
    state: State,
}

impl RequestReader {
    /// A reader for requests whose body is at most `max_body` bytes.
    pub fn new(max_body: usize) -> RequestReader {
        RequestReader {
            max_body,
            state: State::Head,
        }
    }

    /// The body limit.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Whether part of a request has been read (a head, or body bytes):
    /// an end of stream now cuts a request short.
    pub fn in_request(&self) -> bool {
        matches!(self.state, State::Body { .. } | State::Skip { .. })
    }

    /// Consumes bytes from the front of `input`; returns how many it took
    /// and the event they completed, if any. `(n, None)` means: drop `n`
    /// bytes and call again when more have arrived. Call again at once
    /// after an event: the input may hold the next request (pipelining).
    pub fn next(&mut self, input: &[u8]) -> (usize, Option<Event>) {
        let (used, event) = self.step(input);
        if matches!(&event, Some(Event::Reject(r)) if r.close) {
            self.state = State::Closed;
        }
        (used, event)
    }

    fn step(&mut self, input: &[u8]) -> (usize, Option<Event>) {
        match std::mem::replace(&mut self.state, State::Head) {
            State::Closed => {
                self.state = State::Closed;
                (input.len(), None)
            }
            State::Head => self.read_head(input),
            State::Body { mut request, len } => {
                let take = (len - request.body.len()).min(input.len());
                request.body.extend_from_slice(&input[..take]);
                if request.body.len() == len {
                    (take, Some(Event::Request(request)))
                } else {
                    self.state = State::Body { request, len };
                    (take, None)
                }
            }
            State::Skip { left } => {
                let take = left.min(input.len());
                if take < left {
                    self.state = State::Skip { left: left - take };
                    return (take, None);
                }
                let (more, event) = self.step(&input[take..]);
                (take + more, event)
            }
        }
    }

    fn read_head(&mut self, input: &[u8]) -> (usize, Option<Event>) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let used = match parsed.parse(input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if input.len() > MAX_HEAD_BYTES => {
                return reject(431, format!("request head over {MAX_HEAD_BYTES} bytes"));
            }
            Ok(httparse::Status::Partial) => return (0, None),
            Err(httparse::Error::TooManyHeaders) => {
                return reject(431, format!("more than {MAX_HEADERS} headers"));
            }
            Err(e) => return reject(400, format!("malformed request line or header: {e}")),
        };
        let head = match Head::of(&parsed) {
            Ok(head) => head,
            Err(rejection) => return (used, Some(Event::Reject(rejection))),
        };
        match self.start_body(head) {
            Some(event) => (used, Some(event)),
            None => {
                let (more, event) = self.step(&input[used..]);
                (used + more, event)
            }
        }
    }

    /// After a head: the body's state, and the event to report now
    /// (`None`: read the body first).
    fn start_body(&mut self, head: Head) -> Option<Event> {
        let len = head.request.content_length.unwrap_or(0);
        if len > self.max_body {
            let detail = format!(
                "body of {len} bytes over the limit of {} (server.max_message_bytes)",
                self.max_body
            );
            if head.expects_continue {
                return Some(Event::Reject(Rejection::new(413, detail, true)));
            }
            self.state = State::Skip { left: len };
            let close = !head.request.keep_alive;
            return Some(Event::Reject(Rejection::new(413, detail, close)));
        }
        if len == 0 {
            return Some(Event::Request(head.request));
        }
        let mut request = head.request;
        request.body = Vec::with_capacity(len);
        self.state = State::Body { request, len };
        head.expects_continue.then_some(Event::Continue)
    }
}

fn reject(status: u16, detail: String) -> (usize, Option<Event>) {
    (0, Some(Event::Reject(Rejection::new(status, detail, true))))
}

/// A parsed head and what it asks of the body.
struct Head {
    request: HttpRequest,
    expects_continue: bool,
}

impl Head {
    fn of(parsed: &httparse::Request) -> Result<Head, Rejection> {
        let version = parsed.version.unwrap_or(1);
        let mut keep_alive = version >= 1;
        let mut content_length: Option<usize> = None;
        let mut bearer = None;
        let mut expects_continue = false;
        for h in parsed.headers.iter() {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| Rejection::new(400, format!("header {} is not UTF-8", h.name), true))?
                .trim();
            match h.name.to_ascii_lowercase().as_str() {
                "content-length" => {
                    let n = parse_length(value)?;
                    if content_length.is_some_and(|m| m != n) {
                        return Err(Rejection::new(400, "two different Content-Length headers", true));
                    }
                    content_length = Some(n);
                }
                "transfer-encoding" => {
                    return Err(Rejection::new(
                        411,
                        format!("Transfer-Encoding {value:?} is not supported; send the body with a Content-Length"),
                        true,
                    ))
                }
                "connection" => {
                    for token in value.split(',').map(|t| t.trim().to_ascii_lowercase()) {
                        match token.as_str() {
                            "close" => keep_alive = false,
                            "keep-alive" => keep_alive = true,
                            _ => {}
                        }
                    }
                }
                "expect" if value.eq_ignore_ascii_case("100-continue") => expects_continue = true,
                "authorization" => bearer = parse_bearer(value),
                _ => {}
            }
        }
        Ok(Head {
            request: HttpRequest {
                method: parsed.method.unwrap_or("").to_string(),
                target: parsed.path.unwrap_or("").to_string(),
                keep_alive,
                content_length,
                bearer,
                body: Vec::new(),
            },
            expects_continue,
        })
    }
}

fn parse_length(value: &str) -> Result<usize, Rejection> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::new(
            400,
            format!("Content-Length {value:?} is not a number of bytes"),
            true,
        ));
    }
    value
        .parse()
        .map_err(|_| Rejection::new(400, format!("Content-Length {value} is too large"), true))
}

/// `Bearer <token>` (the scheme is case-insensitive).
fn parse_bearer(value: &str) -> Option<String> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// [`RequestReader`] over a connection's reads, for the router's event
/// loop: it takes bytes off the front of each read only up to the end of
/// the request it completes, so what follows stays with the caller (who
/// keeps it while that request is answered); the bytes of an unfinished
/// request are kept here.
#[derive(Debug)]
pub struct HttpFramer {
    reader: RequestReader,
    /// The start of an unfinished request (a head split across reads).
    partial: Vec<u8>,
}

impl HttpFramer {
    /// A framer for bodies of at most `max_body` bytes.
    pub fn new(max_body: usize) -> HttpFramer {
        HttpFramer {
            reader: RequestReader::new(max_body),
            partial: Vec::new(),
        }
    }

    /// The next event; `None` once `input` is used up.
    pub fn next(&mut self, input: &mut &[u8]) -> Option<Event> {
        if self.partial.is_empty() {
            let (used, event) = self.reader.next(input);
            match event {
                Some(event) => {
                    *input = &input[used..];
                    return Some(event);
                }
                None => {
                    self.partial.extend_from_slice(&input[used..]);
                    *input = &[];
                    return None;
                }
            }
        }
        let before = self.partial.len();
        self.partial.extend_from_slice(input);
        let (used, event) = self.reader.next(&self.partial);
        match event {
            Some(event) => {
                *input = &input[used.saturating_sub(before).min(input.len())..];
                self.partial.clear();
                Some(event)
            }
            None => {
                self.partial.drain(..used);
                *input = &[];
                None
            }
        }
    }

    /// Whether a request has begun and not ended.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty() || self.reader.in_request()
    }

    /// At the end of the stream: a 400 for a request cut short, if any.
    pub fn at_eof(&mut self) -> Option<Event> {
        if !self.has_partial() {
            return None;
        }
        self.partial.clear();
        self.reader = RequestReader::new(self.reader.max_body());
        Some(Event::Reject(Rejection::new(
            400,
            "the connection ended before the request was complete (a head, or fewer body bytes than Content-Length)",
            true,
        )))
    }
}

/// The reason phrase of the statuses blitz sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A response ready to be rendered by [`Response::to_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status.
    pub status: u16,
    /// Extra headers (`Content-Length` and `Connection` are added).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Whether the connection stays open after it.
    pub keep_alive: bool,
}

impl Response {
    /// A response with `status`, a `content_type` body, and no other header.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        let body = body.into();
        let mut headers = Vec::new();
        if status != 204 {
            headers.push(("Content-Type", content_type.to_string()));
        }
        Response {
            status,
            headers,
            body,
            keep_alive: true,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Sets whether the connection stays open.
    pub fn keep_alive(mut self, keep_alive: bool) -> Response {
        self.keep_alive = keep_alive;
        self
    }

    /// The response as HTTP/1.1 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.status != 204 {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        let connection = if self.keep_alive {
            "keep-alive"
        } else {
            "close"
        };
        head.push_str(&format!("Connection: {connection}\r\n\r\n"));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// The HTTP status of a JSON-RPC reply, as the wire contract says, and the
/// `Retry-After` seconds that go with a 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcStatus {
    /// The HTTP status.
    pub status: u16,
    /// `Retry-After` in whole seconds (with 503 only).
    pub retry_after_s: Option<u64>,
}

/// The status of the reply to a single request: 200 for a result and for
/// errors the contract does not list; 400 for -32700/-32600; 401 for
/// -32006; 403 for -32007; 413 for -32009; 503 with `Retry-After` (seconds,
/// rounded up from `retry_after_ms`, at least 1) for -32001, -32003,
/// -32004 and -32005. A batch is always 200 and notifications alone 204
/// (the transport knows which it has).
pub fn rpc_status(error: Option<&RpcError>) -> RpcStatus {
    let Some(error) = error else {
        return RpcStatus {
            status: 200,
            retry_after_s: None,
        };
    };
    let status = match error.code {
        code::PARSE_ERROR | code::INVALID_REQUEST => 400,
        code::UNAUTHENTICATED => 401,
        code::PERMISSION_DENIED => 403,
        code::MESSAGE_TOO_LARGE => 413,
        code::OVERLOADED
        | code::SHUTTING_DOWN
        | code::DB_UNAVAILABLE
        | code::TOO_MANY_CONNECTIONS => 503,
        _ => 200,
    };
    let retry_after_s = (status == 503).then(|| {
        let ms = error
            .data
            .get("retry_after_ms")
            .and_then(|v| v.as_u64())
            .unwrap_or(1000);
        ms.div_ceil(1000).max(1)
    });
    RpcStatus {
        status,
        retry_after_s,
    }
}

/// A JSON-RPC response: `body` (a reply or a batch of them) with `status`,
/// `Retry-After` when it has one; 204 with no body for notifications only.
pub fn rpc_response(status: RpcStatus, body: Option<String>, keep_alive: bool) -> Response {
    let response = match body {
        None => Response::new(204, "", Vec::new()),
        Some(body) => Response::new(status.status, "application/json", body),
    };
    let response = match status.retry_after_s {
        Some(s) => response.header("Retry-After", s.to_string()),
        None => response,
    };
    response.keep_alive(keep_alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; collects the events.
    fn feed(reader: &mut RequestReader, input: &[u8], step: usize) -> Vec<Event> {
        let mut buf = Vec::new();
        let mut events = Vec::new();
        for chunk in input.chunks(step) {
            buf.extend_from_slice(chunk);
            loop {
                let (used, event) = reader.next(&buf);
                buf.drain(..used);
                match event {
                    Some(e) => events.push(e),
                    None => break,
                }
            }
        }
        events
    }

    fn request(events: &[Event], i: usize) -> &HttpRequest {
        match &events[i] {
            Event::Request(r) => r,
            other => panic!("event {i} is {other:?}"),
        }
    }

    fn rejection(events: &[Event], i: usize) -> &Rejection {
        match &events[i] {
            Event::Reject(r) => r,
            other => panic!("event {i} is {other:?}"),
        }
    }

    const TWO: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nAuthorization: Bearer k3y\r\n\r\nhello\
POST /b HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

    #[test]
    fn pipelined_requests_are_read_whole_in_any_pieces() {
        for step in [1, 2, 7, TWO.len()] {
            let mut r = RequestReader::new(100);
            let events = feed(&mut r, TWO, step);
            assert_eq!(events.len(), 2, "step {step}: {events:?}");
            let first = request(&events, 0);
            assert_eq!((first.method.as_str(), first.path()), ("POST", "/"));
            assert_eq!(first.body, b"hello");
            assert_eq!(first.bearer.as_deref(), Some("k3y"));
            assert!(first.keep_alive);
            let second = request(&events, 1);
            assert_eq!(second.path(), "/b");
            assert!(!second.keep_alive && second.body.is_empty());
            assert!(!r.in_request());
        }
    }

    #[test]
    fn http_1_0_closes_unless_asked_to_keep_alive() {
        let mut r = RequestReader::new(10);
        let e = feed(
            &mut r,
            b"GET /metrics HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            100,
        );
        assert!(!request(&e, 0).keep_alive);
        assert!(request(&e, 1).keep_alive);
        assert_eq!(request(&e, 0).content_length, None);
    }

    #[test]
    fn a_body_over_the_limit_is_413_and_skipped() {
        let mut r = RequestReader::new(4);
        let input = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok";
        for step in [1, 3, input.len()] {
            let e = feed(&mut r, input, step);
            let refused = rejection(&e, 0);
            assert_eq!((refused.status, refused.close), (413, false));
            assert_eq!(refused.rpc_error(4).code, code::MESSAGE_TOO_LARGE);
            assert_eq!(request(&e, 1).body, b"ok", "step {step}");
        }
    }

    #[test]
    fn expect_100_continue_gets_an_interim_response() {
        let mut r = RequestReader::new(10);
        let e = feed(
            &mut r,
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            100,
        );
        assert_eq!(e, vec![Event::Continue]);
        assert!(r.in_request());
        let e = feed(&mut r, b"{}", 100);
        assert_eq!(request(&e, 0).body, b"{}");
        let mut r = RequestReader::new(1);
        let e = feed(
            &mut r,
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            100,
        );
        assert!(
            rejection(&e, 0).close,
            "a refused 100-continue body is never sent: close"
        );
    }

    #[test]
    fn malformed_heads_are_rejected_with_a_clear_status() {
        let cases: [(&[u8], u16); 7] = [
            (b"POST / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
            (b"NOT A REQUEST LINE AT ALL\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                411,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                400,
            ),
        ];
        for (input, status) in cases {
            let mut r = RequestReader::new(100);
            let e = feed(&mut r, input, input.len());
            let refused = rejection(&e, 0);
            assert_eq!(refused.status, status, "{}", String::from_utf8_lossy(input));
            assert!(refused.close);
            assert!(!refused.detail.is_empty());
        }
    }

    #[test]
    fn oversized_heads_and_too_many_headers_are_431() {
        let mut r = RequestReader::new(100);
        let long = format!("POST / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            rejection(&feed(&mut r, long.as_bytes(), long.len()), 0).status,
            431
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let input = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let mut r = RequestReader::new(100);
        assert_eq!(
            rejection(&feed(&mut r, input.as_bytes(), input.len()), 0).status,
            431
        );
    }

    #[test]
    fn statuses_follow_the_contract() {
        let status = |e: RpcError| rpc_status(Some(&e));
        assert_eq!(rpc_status(None).status, 200);
        assert_eq!(status(RpcError::parse_error("x")).status, 400);
        assert_eq!(status(RpcError::invalid_request("x")).status, 400);
        assert_eq!(status(RpcError::unauthenticated("x")).status, 401);
        assert_eq!(status(RpcError::permission_denied("x")).status, 403);
        assert_eq!(status(RpcError::message_too_large(1)).status, 413);
        assert_eq!(status(RpcError::method_not_found("m")).status, 200);
        assert_eq!(status(RpcError::database_error("P0001", "x")).status, 200);
        let overloaded = status(RpcError::overloaded(1001, 5, 5, "i"));
        assert_eq!(
            overloaded,
            RpcStatus {
                status: 503,
                retry_after_s: Some(2)
            }
        );
        assert_eq!(status(RpcError::shutting_down()).retry_after_s, Some(1));
        assert_eq!(
            status(RpcError::db_unavailable(1000, "x")).retry_after_s,
            Some(1)
        );
        assert_eq!(status(RpcError::too_many_connections(5)).status, 503);
    }

    #[test]
    fn responses_render_with_length_and_connection() {
        let r = rpc_response(
            rpc_status(Some(&RpcError::overloaded(2500, 1, 1, "i"))),
            Some("{}".into()),
            true,
        );
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nRetry-After: 3\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Length: 2\r\n"), "{text}");
        assert!(text.ends_with("Connection: keep-alive\r\n\r\n{}"), "{text}");
        let none =
            String::from_utf8(rpc_response(rpc_status(None), None, false).to_bytes()).unwrap();
        assert_eq!(none, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn the_framer_leaves_what_follows_a_request_to_the_caller() {
        let mut framer = HttpFramer::new(100);
        // A head split across reads is kept by the framer.
        let mut first: &[u8] = b"POST / HTTP/1.1\r\nContent-Le";
        assert_eq!(framer.next(&mut first), None);
        assert!(first.is_empty() && framer.has_partial());
        let mut rest: &[u8] = b"ngth: 2\r\n\r\n{}GET /next HTTP/1.1\r\n\r\n";
        let Some(Event::Request(r)) = framer.next(&mut rest) else {
            panic!("a request");
        };
        assert_eq!(r.body, b"{}");
        assert_eq!(
            rest, b"GET /next HTTP/1.1\r\n\r\n",
            "the next request stays with the caller"
        );
        let Some(Event::Request(next)) = framer.next(&mut rest) else {
            panic!("the next request");
        };
        assert_eq!(next.path(), "/next");
        assert!(rest.is_empty() && !framer.has_partial());
        // A body cut short by the end of the stream is answered 400.
        let mut cut: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n{}";
        assert_eq!(framer.next(&mut cut), None);
        let Some(Event::Reject(r)) = framer.at_eof() else {
            panic!("a rejection");
        };
        assert_eq!((r.status, r.close), (400, true));
        assert_eq!(framer.at_eof(), None);
    }
}
