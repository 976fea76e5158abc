//! [`Responder`]: the obligation to answer one request exactly once, and
//! the one path by which every reply is counted, rendered and written.
//!
//! A responder is created for each request the router reads, travels with
//! the request through the queue, and is consumed by its reply; if it is
//! dropped unanswered (a bug, or shutdown), its `Drop` answers for it. A
//! reply goes to the connection, or to the [`ReplyCollector`] of the
//! requests read with it (a batch, an HTTP request).

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;

use super::collector::ReplyCollector;
use super::connection::Connection;
use crate::protocol::{
    code, write_error, write_raw_result, write_result, Id, Overload, OverloadTemplate, RpcError,
};
use crate::server::metrics::MethodKind;

/// Where a reply goes.
enum Target {
    /// Written to the connection as a line of its own.
    Connection(Arc<Connection>),
    /// Gathered with the replies to the requests read with it.
    Collector(Arc<ReplyCollector>),
}

/// A reply's body: a result to render, a result rendered already (the
/// router's templates), or an error.
pub enum Outcome<'a> {
    /// A result value.
    Result(&'a Value),
    /// A result as JSON text.
    Raw(&'a RawValue),
    /// An error.
    Error(&'a RpcError),
    /// A -32001 from the server's template.
    Overload(&'a OverloadTemplate, &'a Overload),
}

impl Outcome<'_> {
    /// The error code, `None` for a result.
    fn error_code(&self) -> Option<i64> {
        match self {
            Outcome::Result(_) | Outcome::Raw(_) => None,
            Outcome::Error(e) => Some(e.code),
            Outcome::Overload(..) => Some(code::OVERLOADED),
        }
    }

    /// The error itself, `None` for a result.
    fn error(&self) -> Option<Cow<'_, RpcError>> {
        match self {
            Outcome::Result(_) | Outcome::Raw(_) => None,
            Outcome::Error(e) => Some(Cow::Borrowed(*e)),
            Outcome::Overload(template, overload) => Some(Cow::Owned(template.to_error(overload))),
        }
    }

    /// Appends the reply to request `id` (no `\n`).
    fn write(&self, out: &mut Vec<u8>, id: &RawValue) {
        match self {
            Outcome::Result(v) => write_result(out, id, v),
            Outcome::Raw(raw) => write_raw_result(out, id, raw),
            Outcome::Error(e) => write_error(out, id, e),
            Outcome::Overload(template, overload) => template.write(out, id, overload),
        }
    }
}

/// The obligation to answer one request exactly once.
pub struct Responder {
    target: Target,
    /// `None` for a notification: it runs, but nothing is written.
    id: Option<Id>,
    /// Whether this request counts in its connection's in-flight total.
    counted: bool,
    /// What the request asked for, for the request counters.
    kind: MethodKind,
    answered: bool,
}

impl Responder {
    /// A responder for a request read on `conn`; with `collector`, its
    /// reply is gathered with those of the requests read with it.
    pub fn new(
        conn: &Arc<Connection>,
        collector: Option<&Arc<ReplyCollector>>,
        id: Option<Id>,
    ) -> Responder {
        match collector {
            Some(collector) => Responder::collected(collector, id),
            None => Responder::to(Target::Connection(conn.clone()), id),
        }
    }

    /// A responder whose reply `collector` gathers.
    pub fn collected(collector: &Arc<ReplyCollector>, id: Option<Id>) -> Responder {
        Responder::to(Target::Collector(collector.clone()), id)
    }

    fn to(target: Target, id: Option<Id>) -> Responder {
        Responder {
            target,
            id,
            counted: false,
            kind: MethodKind::Other,
            answered: false,
        }
    }

    /// Says what the request asked for (its reply is counted under it).
    pub fn set_kind(&mut self, kind: MethodKind) {
        self.kind = kind;
    }

    /// The connection the request came from.
    pub fn connection(&self) -> &Arc<Connection> {
        match &self.target {
            Target::Connection(conn) => conn,
            Target::Collector(collector) => collector.connection(),
        }
    }

    /// Counts the request in its connection's in-flight total if below
    /// `limit`; false (and nothing counted) otherwise.
    pub fn count_in_flight(&mut self, limit: usize) -> bool {
        self.counted = self.connection().try_begin(limit);
        self.counted
    }

    /// The request's id, for logs (`"notification"` when it has none).
    pub fn id_text(&self) -> &str {
        self.id.as_deref().map_or("notification", |id| id.get())
    }

    /// Sends the one reply.
    pub fn reply(mut self, outcome: Result<Value, RpcError>) {
        match &outcome {
            Ok(v) => self.send(Outcome::Result(v)),
            Err(e) => self.send(Outcome::Error(e)),
        }
    }

    /// Sends the one reply, a result already rendered as JSON.
    pub fn reply_raw(mut self, result: &RawValue) {
        self.send(Outcome::Raw(result));
    }

    /// Sends the one reply, a -32001 rendered from `template`.
    pub fn refuse(mut self, template: &OverloadTemplate, overload: &Overload) {
        self.send(Outcome::Overload(template, overload));
    }

    /// The one reply path: count, render, deliver.
    fn send(&mut self, outcome: Outcome) {
        self.answered = true;
        let conn = self.connection().clone();
        conn.handles()
            .stats
            .count_reply(self.kind, outcome.error_code());
        // The request is done: free its in-flight slot before the client
        // can see the reply, or a client that sends its next request on
        // reading it may be refused for a slot this one still held.
        let was_last = std::mem::take(&mut self.counted) && conn.end();
        let id = self.id.as_deref();
        match &self.target {
            Target::Connection(conn) => {
                if let Some(id) = id {
                    with_line(id, &outcome, |line| conn.deliver(line));
                }
            }
            Target::Collector(collector) => {
                let text = id.map(|id| render(id, &outcome));
                collector.add(text.as_deref(), outcome.error().as_deref());
            }
        }
        if was_last {
            conn.done_if_read_closed();
        }
    }
}

thread_local! {
    /// The buffer this thread renders reply lines in before they are
    /// copied to an outbox: kept, so that a reply allocates nothing.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A line buffer above this capacity is freed rather than kept.
const LINE_CAPACITY: usize = 64 * 1024;

/// Renders the reply to `id` as one line (ending in `\n`) in this thread's
/// buffer and gives it to `deliver`.
fn with_line(id: &RawValue, outcome: &Outcome, deliver: impl FnOnce(&[u8])) {
    // Taken out of the cell, not borrowed: `deliver` may reply again.
    let mut line = LINE.take();
    line.clear();
    outcome.write(&mut line, id);
    line.push(b'\n');
    deliver(&line);
    if line.capacity() <= LINE_CAPACITY {
        LINE.set(line);
    }
}

/// A reply as one JSON text, rendered into a buffer of its own.
fn render(id: &RawValue, outcome: &Outcome) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    outcome.write(&mut out, id);
    out
}

impl Drop for Responder {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let error = if self.connection().handles().shutdown.is_stopping() {
            RpcError::shutting_down()
        } else {
            log::error!(
                "request {} was dropped without a reply (a bug)",
                self.id_text()
            );
            RpcError::internal("the request was dropped without a reply")
        };
        self.send(Outcome::Error(&error));
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::time::Duration;

    use serde_json::json;

    use super::super::loopback::loopback;
    use super::*;
    use crate::protocol::{code, null_id};

    fn id(n: u64) -> Option<Id> {
        Some(RawValue::from_string(n.to_string()).unwrap())
    }

    /// The next line the client reads, as JSON.
    fn next_line(client: &mut BufReader<std::net::TcpStream>) -> Value {
        let mut line = String::new();
        client.read_line(&mut line).expect("a line");
        serde_json::from_str(&line).expect("a JSON line")
    }

    fn reader(client: std::net::TcpStream) -> BufReader<std::net::TcpStream> {
        // Only so that a missing line fails the test instead of hanging it.
        client
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        BufReader::new(client)
    }

    #[test]
    fn a_responder_dropped_unanswered_answers_internal_error_once() {
        let (conn, client, _event_loop) = loopback();
        let mut client = reader(client);
        drop(Responder::new(&conn, None, id(7)));
        Responder::new(&conn, None, id(8)).reply(Ok(json!("next")));
        let dropped = next_line(&mut client);
        assert_eq!(dropped["id"], 7);
        assert_eq!(dropped["error"]["code"], code::INTERNAL_ERROR);
        assert_eq!(next_line(&mut client)["id"], 8, "one reply for 7, then 8's");
    }

    #[test]
    fn a_responder_dropped_while_stopping_answers_shutting_down() {
        let (conn, client, _event_loop) = loopback();
        let mut client = reader(client);
        conn.handles().shutdown.begin(Duration::from_secs(1));
        drop(Responder::new(&conn, None, id(1)));
        assert_eq!(next_line(&mut client)["error"]["code"], code::SHUTTING_DOWN);
    }

    #[test]
    fn a_notification_is_answered_with_nothing() {
        let (conn, client, _event_loop) = loopback();
        let mut client = reader(client);
        Responder::new(&conn, None, None).reply(Ok(json!("unseen")));
        drop(Responder::new(&conn, None, None));
        Responder::new(&conn, None, Some(null_id())).reply(Ok(json!("seen")));
        assert_eq!(next_line(&mut client)["result"], "seen");
    }

    #[test]
    fn the_reply_frees_the_in_flight_slot() {
        let (conn, _client, _event_loop) = loopback();
        let mut first = Responder::new(&conn, None, id(1));
        assert!(first.count_in_flight(1));
        let mut second = Responder::new(&conn, None, id(2));
        assert!(!second.count_in_flight(1), "one slot, taken");
        assert_eq!(conn.in_flight(), 1);
        first.reply(Ok(json!(1)));
        assert_eq!(conn.in_flight(), 0);
        assert!(second.count_in_flight(1));
        second.reply(Ok(json!(2)));
        assert_eq!(conn.in_flight(), 0);
    }

    #[test]
    fn a_batch_is_answered_by_one_line_once_every_element_is() {
        let (conn, client, _event_loop) = loopback();
        let mut client = reader(client);
        let batch = ReplyCollector::for_batch(&conn, 3);
        let (a, b, c) = (
            Responder::new(&conn, Some(&batch), id(1)),
            Responder::new(&conn, Some(&batch), None),
            Responder::new(&conn, Some(&batch), id(3)),
        );
        c.reply(Ok(json!("c")));
        b.reply(Ok(json!("b")));
        drop(a); // answered by its Drop
        let line = next_line(&mut client);
        let replies = line.as_array().expect("one array");
        assert_eq!(replies.len(), 2, "{line}");
        assert_eq!(replies[0]["result"], "c");
        assert_eq!(replies[1]["error"]["code"], code::INTERNAL_ERROR);
    }

    #[test]
    fn a_batch_of_notifications_writes_nothing() {
        let (conn, client, _event_loop) = loopback();
        let mut client = reader(client);
        let batch = ReplyCollector::for_batch(&conn, 2);
        Responder::new(&conn, Some(&batch), None).reply(Ok(json!(1)));
        Responder::new(&conn, Some(&batch), None).reply(Ok(json!(2)));
        Responder::new(&conn, None, id(9)).reply(Ok(json!("after")));
        assert_eq!(next_line(&mut client)["id"], 9);
    }

    /// The head and body of the HTTP response the client reads.
    fn http_response(client: &mut BufReader<std::net::TcpStream>) -> (String, Value) {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            client.read_line(&mut line).expect("a header line");
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_string());
        }
        let length: usize = head
            .iter()
            .find_map(|h| h.strip_prefix("Content-Length: "))
            .expect("a Content-Length")
            .parse()
            .unwrap();
        let mut body = vec![0; length];
        std::io::Read::read_exact(client, &mut body).unwrap();
        (head[0].clone(), serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn an_http_request_is_answered_with_the_status_of_its_one_reply() {
        let (conn, client, _event_loop) = loopback();
        let mut client = reader(client);
        let exchange = ReplyCollector::for_http(&conn, 1, false, true);
        assert!(conn.awaits_response());
        Responder::collected(&exchange, id(1)).reply(Err(RpcError::unauthenticated("no")));
        let (status, body) = http_response(&mut client);
        assert_eq!(status, "HTTP/1.1 401 Unauthorized");
        assert_eq!(body["error"]["code"], code::UNAUTHENTICATED, "{body}");
        assert!(!conn.awaits_response());
        let batch = ReplyCollector::for_http(&conn, 2, true, true);
        Responder::collected(&batch, id(2)).reply(Err(RpcError::unauthenticated("no")));
        Responder::collected(&batch, id(3)).reply(Ok(json!(3)));
        let (status, body) = http_response(&mut client);
        assert_eq!(
            status, "HTTP/1.1 200 OK",
            "a batch is 200 whatever its replies"
        );
        assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
    }
}
