//! One client connection as its event loop and the workers share it, and
//! [`Responder`], the one path by which every reply is rendered, counted
//! and written.
//!
//! [`Connection`] owns the nonblocking socket, its [`Outbox`], the count of
//! requests in flight and the bound session. It holds the handles it needs
//! (counters, lifecycle, its loop's [`Home`]), never the server context.
//!
//! Who writes: a worker that replies appends to the outbox and writes it at
//! once if the socket takes it without blocking; whatever is left (a full
//! socket, or replies added during its write) it hands to the connection's
//! event loop through [`Home`], which wakes the loop. On an event-loop
//! thread replies are only appended: the loop writes each socket once,
//! after it has read everything that socket had ready in this wake-up.
//!
//! [`Responder`] is created for each request the router reads, travels
//! with the request through the queue, and answers exactly once; if it is
//! dropped unanswered (a bug, or shutdown), its `Drop` answers for it.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{Shutdown as SocketShutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use mio::net::TcpStream;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::Value;

use super::outbox::{Flushed, Outbox, Pushed};
use crate::auth::sessions::Session;
use crate::protocol::framing::Framing;
use crate::protocol::http;
use crate::protocol::{write_error, write_raw_result, write_result, Id, RpcError};
use crate::server::metrics::MethodKind;
use crate::server::shutdown::Shutdown;
use crate::server::stats::Stats;

thread_local! {
    /// Set on event-loop threads: replies made there are appended only, and
    /// the loop writes the socket once at the end of its turn.
    static ON_EVENT_LOOP: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as an event loop (see the module doc).
pub fn mark_event_loop_thread() {
    ON_EVENT_LOOP.with(|on| on.set(true));
}

fn on_event_loop() -> bool {
    ON_EVENT_LOOP.with(Cell::get)
}

/// What an event loop is asked to do by other threads.
#[derive(Default)]
pub struct Inbox {
    /// New connections to serve (from the acceptor).
    pub adopt: Vec<(Arc<Connection>, Framing)>,
    /// Connections with replies left to write, or that may be done.
    pub flush: Vec<Arc<Connection>>,
    /// Finish: write what is queued, close, exit.
    pub stop: bool,
}

/// An event loop as other threads see it: a [`mio::Waker`] and an inbox.
pub struct Home {
    waker: mio::Waker,
    inbox: Mutex<Inbox>,
    /// A wake-up is on its way (saves a system call per hand-over).
    woken: AtomicBool,
}

impl Home {
    /// The home of a loop woken through `waker`.
    pub fn new(waker: mio::Waker) -> Home {
        Home {
            waker,
            inbox: Mutex::new(Inbox::default()),
            woken: AtomicBool::new(false),
        }
    }

    /// Gives the loop a new connection.
    pub fn adopt(&self, conn: Arc<Connection>, framing: Framing) {
        self.inbox.lock().adopt.push((conn, framing));
        self.wake();
    }

    /// Asks the loop to write what `conn` has left, or to see whether it is done.
    pub fn hand_over(&self, conn: Arc<Connection>) {
        self.inbox.lock().flush.push(conn);
        self.wake();
    }

    /// Asks the loop to finish.
    pub fn stop(&self) {
        self.inbox.lock().stop = true;
        self.wake();
    }

    fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                log::error!("cannot wake an event loop: {e}");
            }
        }
    }

    /// The loop takes what it was asked (clearing `woken` first, so that a
    /// request added meanwhile wakes it again).
    pub fn take(&self) -> Inbox {
        self.woken.store(false, Ordering::Release);
        std::mem::take(&mut *self.inbox.lock())
    }
}

/// What a connection needs from the server: counters and the lifecycle.
#[derive(Clone)]
pub struct Handles {
    /// Counters (every error reply is counted).
    pub stats: Arc<Stats>,
    /// Lifecycle state (a reply dropped while stopping is -32003).
    pub shutdown: Arc<Shutdown>,
}

/// The shared state of one client connection.
pub struct Connection {
    /// Sequence number of the connection (for logs and the registry).
    pub number: u64,
    /// The client's address.
    pub peer: SocketAddr,
    stream: TcpStream,
    outbox: Outbox,
    home: Arc<Home>,
    handles: Handles,
    in_flight: AtomicUsize,
    broken: AtomicBool,
    /// The client sent end of file: close once every reply is written.
    read_closed: AtomicBool,
    /// The loop stopped reading because the outbox is full, or while an
    /// HTTP response is awaited.
    paused: AtomicBool,
    /// An HTTP request is being answered: the next is not read before its
    /// response is queued (HTTP/1.1 responses go out in request order).
    awaiting: AtomicBool,
    /// HTTP: no session is bound to the connection.
    stateless: AtomicBool,
    /// The loop's token for this connection.
    token: AtomicUsize,
    session: Mutex<Option<Arc<Session>>>,
}

impl Connection {
    /// Wraps an accepted nonblocking socket served by the loop at `home`.
    pub fn new(
        number: u64,
        stream: TcpStream,
        peer: SocketAddr,
        home: Arc<Home>,
        handles: Handles,
    ) -> Connection {
        Connection {
            number,
            peer,
            stream,
            outbox: Outbox::new(),
            home,
            handles,
            in_flight: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
            read_closed: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            awaiting: AtomicBool::new(false),
            stateless: AtomicBool::new(false),
            token: AtomicUsize::new(usize::MAX),
            session: Mutex::new(None),
        }
    }

    /// The socket (the event loop reads it; writes go through the outbox).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The session bound by `session.login` or `session.join`, if any.
    pub fn session(&self) -> Option<Arc<Session>> {
        self.session.lock().clone()
    }

    /// Binds `session` to this connection (replacing any other); not on
    /// an HTTP connection, where each request is authenticated alone (a
    /// proxy may carry many clients' requests on one connection).
    pub fn bind_session(&self, session: Arc<Session>) {
        if !self.stateless.load(Ordering::Acquire) {
            *self.session.lock() = Some(session);
        }
    }

    /// Makes this an HTTP connection: sessions are never bound to it.
    pub fn set_stateless(&self) {
        self.stateless.store(true, Ordering::Release);
    }

    /// Unbinds the session if its key is `key` (after a logout).
    pub fn unbind_session(&self, key: &str) {
        let mut bound = self.session.lock();
        if bound.as_ref().is_some_and(|s| s.key == key) {
            *bound = None;
        }
    }

    /// Requests of this connection queued or running.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts one more request in flight if fewer than `limit` are.
    pub fn try_begin(&self, limit: usize) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Frees one request's in-flight slot; true when it was the last.
    fn end(&self) -> bool {
        self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// After the last reply of a client that sent end of file: its loop
    /// may close it now (once the reply is written).
    fn done_if_read_closed(self: &Arc<Self>) {
        if self.is_read_closed() && !on_event_loop() {
            self.home.hand_over(self.clone());
        }
    }

    /// The loop's token (set once, when the loop adopts the connection).
    pub fn token(&self) -> usize {
        self.token.load(Ordering::Acquire)
    }

    /// Records the loop's token.
    pub fn set_token(&self, token: usize) {
        self.token.store(token, Ordering::Release);
    }

    /// The outbox (the loop checks whether it is full, empty, stalled).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Queues one whole message (ending in `\n`) and, off the event loop,
    /// writes it at once if the socket takes it (see the module doc).
    pub fn deliver(self: &Arc<Self>, message: &[u8]) {
        if self.is_broken() {
            return;
        }
        let on_loop = on_event_loop();
        match self.outbox.push(message, !on_loop) {
            Pushed::Queued => {}
            Pushed::Closed => return,
            Pushed::GaveUp => return self.give_up("the client reads too slowly"),
        }
        if !on_loop {
            self.write_or_hand_over();
        }
    }

    fn write_or_hand_over(self: &Arc<Self>) {
        match self.outbox.flush(&self.stream) {
            Flushed::Done if self.paused.load(Ordering::Acquire) => {
                self.home.hand_over(self.clone()); // the loop reads again
            }
            Flushed::Done | Flushed::Busy => {}
            Flushed::Blocked | Flushed::More => self.home.hand_over(self.clone()),
            Flushed::Failed => self.give_up("the client closed the connection"),
        }
    }

    /// One write of what is queued, by the event loop.
    pub fn flush_from_loop(&self) -> Flushed {
        let flushed = self.outbox.flush(&self.stream);
        if flushed == Flushed::Failed {
            self.give_up("the client closed the connection");
        }
        flushed
    }

    /// Records that the loop paused reading (outbox full) or resumed.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
    }

    /// Whether the loop paused reading (outbox full).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Notes that an HTTP request is being answered (see `awaiting`).
    pub fn begin_exchange(&self) {
        self.awaiting.store(true, Ordering::SeqCst);
    }

    /// Whether an HTTP response is awaited.
    pub fn awaits_response(&self) -> bool {
        self.awaiting.load(Ordering::SeqCst)
    }

    /// Pauses reading while an HTTP response is awaited; false (and not
    /// paused) when none is. The flag is checked again after pausing, so a
    /// response queued meanwhile by a worker cannot leave the loop paused:
    /// that worker either sees the pause and hands the connection back, or
    /// cleared the flag before the second check.
    pub fn pause_for_response(&self) -> bool {
        if !self.awaits_response() {
            return false;
        }
        self.paused.store(true, Ordering::SeqCst);
        self.awaits_response()
    }

    /// Queues an HTTP response and lets the next request be read; with
    /// `close`, the connection closes once its replies are written.
    pub fn deliver_response(self: &Arc<Self>, response: &[u8], close: bool) {
        if close {
            self.set_read_closed();
        }
        self.awaiting.store(false, Ordering::SeqCst);
        self.deliver(response);
    }

    /// Marks that the client sent end of file.
    pub fn set_read_closed(&self) {
        self.read_closed.store(true, Ordering::Release);
    }

    /// Whether the client sent end of file.
    pub fn is_read_closed(&self) -> bool {
        self.read_closed.load(Ordering::Acquire)
    }

    /// Gives the client up: nothing more is written, the socket is shut.
    pub fn give_up(&self, why: &str) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            log::debug!("connection {} ({}): closing: {why}", self.number, self.peer);
        }
        self.outbox.close();
        let _ = self.stream.shutdown(SocketShutdown::Both);
    }

    /// Closes both directions (idle timeout, shutdown, end of the connection).
    pub fn close(&self) {
        self.broken.store(true, Ordering::Release);
        self.outbox.close();
        let _ = self.stream.shutdown(SocketShutdown::Both);
    }

    /// Whether the socket failed or was closed by the server.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }
}

/// The open client connections, for `max_clients`, for `sys.status` and
/// for unbinding a session everywhere at logout.
#[derive(Default)]
pub struct Registry {
    open: Mutex<HashMap<u64, Arc<Connection>>>,
}

impl Registry {
    /// Registers `conn` unless `max` are already open.
    pub fn try_add(&self, conn: &Arc<Connection>, max: usize) -> bool {
        let mut open = self.open.lock();
        if open.len() >= max {
            return false;
        }
        open.insert(conn.number, conn.clone());
        true
    }

    /// Forgets a connection its loop has closed.
    pub fn remove(&self, number: u64) {
        self.open.lock().remove(&number);
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.open.lock().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reply bytes queued in the outboxes of all open connections.
    pub fn outbox_bytes(&self) -> usize {
        let open: Vec<_> = self.open.lock().values().cloned().collect();
        open.iter().map(|conn| conn.outbox.queued()).sum()
    }

    /// Unbinds session `key` from every open connection (after a logout).
    pub fn unbind_session(&self, key: &str) {
        let open: Vec<_> = self.open.lock().values().cloned().collect();
        for conn in open {
            conn.unbind_session(key);
        }
    }
}

/// Collects the replies of one batch and writes them as one JSON array.
pub struct Batch {
    conn: Arc<Connection>,
    remaining: AtomicUsize,
    replies: Mutex<Vec<u8>>,
}

impl Batch {
    /// A batch of `len` elements on `conn`.
    pub fn new(conn: Arc<Connection>, len: usize) -> Arc<Batch> {
        Arc::new(Batch {
            conn,
            remaining: AtomicUsize::new(len),
            replies: Mutex::new(Vec::new()),
        })
    }

    fn complete(&self, reply: Option<&[u8]>) {
        if let Some(r) = reply {
            let mut replies = self.replies.lock();
            let separator = if replies.is_empty() { b'[' } else { b',' };
            replies.push(separator);
            replies.extend_from_slice(r);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut replies = std::mem::take(&mut *self.replies.lock());
            if !replies.is_empty() {
                replies.extend_from_slice(b"]\n");
                self.conn.deliver(&replies);
            }
        }
    }
}

/// Collects the replies to one HTTP request (one request or a batch) and
/// sends them as one HTTP response, with the status the wire contract
/// gives them (see [`http::rpc_status`]).
pub struct Exchange {
    conn: Arc<Connection>,
    batch: bool,
    keep_alive: bool,
    remaining: AtomicUsize,
    replies: Mutex<Collected>,
}

/// The replies of an [`Exchange`] so far.
#[derive(Default)]
struct Collected {
    /// `[r1,r2` (batch) or the one reply.
    body: Vec<u8>,
    /// Replies written (notifications have none).
    count: usize,
    /// The error of a single request, for its status.
    error: Option<RpcError>,
}

impl Exchange {
    /// An exchange for `len` requests read from one HTTP request on `conn`
    /// (`batch`: the body was an array); the connection reads no further
    /// request until its response is queued.
    pub fn new(conn: &Arc<Connection>, len: usize, batch: bool, keep_alive: bool) -> Arc<Exchange> {
        conn.begin_exchange();
        Arc::new(Exchange {
            conn: conn.clone(),
            batch,
            keep_alive,
            remaining: AtomicUsize::new(len),
            replies: Mutex::new(Collected::default()),
        })
    }

    fn complete(&self, reply: Option<&[u8]>, error: Option<&RpcError>) {
        {
            let mut collected = self.replies.lock();
            if let Some(r) = reply {
                if self.batch {
                    let separator = if collected.count == 0 { b'[' } else { b',' };
                    collected.body.push(separator);
                }
                collected.body.extend_from_slice(r);
                collected.count += 1;
                if !self.batch {
                    collected.error = error.cloned();
                }
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let collected = std::mem::take(&mut *self.replies.lock());
            let status = match self.batch {
                true => http::rpc_status(None),
                false => http::rpc_status(collected.error.as_ref()),
            };
            let mut body = collected.body;
            if self.batch && collected.count > 0 {
                body.push(b']');
            }
            let body = (collected.count > 0).then(|| String::from_utf8_lossy(&body).into_owned());
            let response = http::rpc_response(status, body, self.keep_alive);
            self.conn
                .deliver_response(&response.to_bytes(), !self.keep_alive);
        }
    }
}

/// Where a reply goes.
enum Target {
    Connection(Arc<Connection>),
    Batch(Arc<Batch>),
    Exchange(Arc<Exchange>),
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
    /// A responder for a request read on `conn` (`batch`: part of a batch).
    pub fn new(conn: &Arc<Connection>, batch: Option<&Arc<Batch>>, id: Option<Id>) -> Responder {
        let target = match batch {
            Some(b) => Target::Batch(b.clone()),
            None => Target::Connection(conn.clone()),
        };
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

    /// A responder for a request read from an HTTP request (`exchange`).
    pub fn for_exchange(exchange: &Arc<Exchange>, id: Option<Id>) -> Responder {
        Responder {
            target: Target::Exchange(exchange.clone()),
            id,
            counted: false,
            kind: MethodKind::Other,
            answered: false,
        }
    }

    /// The connection the request came from.
    pub fn connection(&self) -> &Arc<Connection> {
        match &self.target {
            Target::Connection(c) => c,
            Target::Batch(b) => &b.conn,
            Target::Exchange(x) => &x.conn,
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

    /// The one reply path: count, render, deliver.
    fn send(&mut self, outcome: Outcome) {
        self.answered = true;
        let conn = self.connection().clone();
        let error = match &outcome {
            Outcome::Error(e) => Some(e.code),
            _ => None,
        };
        conn.handles.stats.count_reply(self.kind, error);
        let text = self.id.as_deref().map(|id| render(id, &outcome));
        // The request is done: free its in-flight slot before the client
        // can see the reply, or a client that sends its next request on
        // reading it may be refused for a slot this one still held.
        let was_last = std::mem::take(&mut self.counted) && conn.end();
        match &self.target {
            Target::Connection(c) => {
                if let Some(mut text) = text {
                    text.push(b'\n');
                    c.deliver(&text);
                }
            }
            Target::Batch(b) => b.complete(text.as_deref()),
            Target::Exchange(x) => {
                let error = match &outcome {
                    Outcome::Error(e) => Some(*e),
                    _ => None,
                };
                x.complete(text.as_deref(), error)
            }
        }
        if was_last {
            conn.done_if_read_closed();
        }
    }
}

/// A reply as one JSON text, rendered into one buffer with room for the
/// `\n` that ends it on the stream.
fn render(id: &RawValue, outcome: &Outcome) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    match outcome {
        Outcome::Result(v) => write_result(&mut out, id, v),
        Outcome::Raw(raw) => write_raw_result(&mut out, id, raw),
        Outcome::Error(e) => write_error(&mut out, id, e),
    }
    out
}

impl Drop for Responder {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let error = if self.connection().handles.shutdown.is_stopping() {
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
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    use super::*;

    /// A connection on a loopback socket pair, and a thread standing in for
    /// its event loop: it takes what workers hand over and writes it again
    /// until the socket takes it (the real loop waits for writability).
    fn loopback() -> (Arc<Connection>, std::net::TcpStream, Arc<AtomicBool>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        server_side.set_nonblocking(true).unwrap();
        let poll = mio::Poll::new().unwrap();
        let home = Arc::new(Home::new(
            mio::Waker::new(poll.registry(), mio::Token(0)).unwrap(),
        ));
        let handles = Handles {
            stats: Arc::new(Stats::new()),
            shutdown: Arc::new(Shutdown::default()),
        };
        let stream = TcpStream::from_std(server_side);
        let conn = Arc::new(Connection::new(1, stream, peer, home.clone(), handles));
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        std::thread::spawn(move || {
            let _poll = poll; // keeps the waker's poll alive
            let mut pending: Vec<Arc<Connection>> = Vec::new();
            while !done.load(Ordering::Acquire) {
                pending.extend(home.take().flush);
                pending.retain(|c| {
                    matches!(
                        c.flush_from_loop(),
                        Flushed::Blocked | Flushed::More | Flushed::Busy
                    )
                });
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        (conn, client, stop)
    }

    #[test]
    fn concurrent_replies_arrive_whole_once_and_in_each_writers_order() {
        let (conn, client, stop) = loopback();
        const WRITERS: usize = 8;
        const LINES: usize = 2_000;
        let reader = std::thread::spawn(move || {
            let mut next: HashMap<usize, usize> = HashMap::new();
            for line in BufReader::new(client).lines().take(WRITERS * LINES) {
                let line = line.expect("a whole line");
                let (writer, n) = line.split_once(':').expect("writer:n, not interleaved");
                let (writer, n): (usize, usize) = (writer.parse().unwrap(), n.parse().unwrap());
                let expected = next.entry(writer).or_default();
                assert_eq!(n, *expected, "writer {writer}'s lines out of order");
                *expected += 1;
                // Read slowly now and then, so that writers find the socket full.
                if n % 500 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            next
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let conn = conn.clone();
                std::thread::spawn(move || {
                    for n in 0..LINES {
                        conn.deliver(format!("{w}:{n}\n").as_bytes());
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let seen = reader.join().unwrap();
        stop.store(true, Ordering::Release);
        assert_eq!(seen.len(), WRITERS);
        assert!(seen.values().all(|&n| n == LINES), "{seen:?}");
        assert!(!conn.is_broken());
    }

    #[test]
    fn a_client_that_does_not_read_is_given_up_without_holding_the_writers() {
        let (conn, _client, stop) = loopback(); // never read
        let big = vec![b'x'; 1 << 20];
        let start = Instant::now();
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let (conn, big) = (conn.clone(), big.clone());
                std::thread::spawn(move || {
                    let mut most = 0;
                    for _ in 0..16 {
                        conn.deliver(&big);
                        most = most.max(conn.outbox().queued());
                    }
                    most
                })
            })
            .collect();
        let most = writers.into_iter().map(|w| w.join().unwrap()).max();
        stop.store(true, Ordering::Release);
        assert!(conn.is_broken());
        // Nothing is added to a full outbox (one reply over the limit goes in alone).
        assert!(most.unwrap() <= 1 << 20, "{most:?} bytes queued");
        // The writers wait for room at most WRITE_TIMEOUT, then give the client up.
        let took = start.elapsed();
        assert!(
            took < super::super::outbox::WRITE_TIMEOUT * 3,
            "took {took:?}"
        );
    }
}
