//! One client connection's write side, and the guarantee that every request
//! read gets exactly one reply.
//!
//! [`Connection`] owns the socket's write half and the count of requests in
//! flight. Replies go through its outbox: the thread that finds nobody
//! writing becomes the writer and sends everything queued, in order, in as
//! few writes as it can; a thread that finds a writer at work leaves its
//! line to it and goes back to work. No thread waits for another to get a
//! CPU, and only a client that does not read (a write blocked for
//! [`WRITE_TIMEOUT`]) closes a connection.
//!
//! [`Responder`] is the single place a reply is written: it is created for
//! each request the router reads, travels with the request through the
//! queue, and answers exactly once; if it is dropped unanswered (a bug, or
//! shutdown), its `Drop` answers for it.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Shutdown as SocketShutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde_json::Value;

use crate::auth::sessions::Session;
use crate::protocol::{render_error, render_result, Id, RpcError};
use crate::server::shutdown::Shutdown;
use crate::server::stats::Stats;

/// How long the replies queued for a client may take to be delivered once
/// written; after that the connection is closed (the client does not read).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How far the socket's send timeout may differ from the time a write has
/// left before it is set again (a system call per write otherwise).
const WRITE_TIMEOUT_SLACK: Duration = Duration::from_millis(50);

/// How many bytes of replies may wait in a connection's outbox; a thread
/// with more to add waits until the writer at work has taken them (so a
/// client that does not read cannot make the server buffer without end).
/// One reply larger than this still goes in alone.
const OUTBOX_LIMIT: usize = 1 << 20;

/// Replies waiting to be written, and whether a thread is writing.
#[derive(Default)]
struct Outbox {
    /// Lines (each ending in `\n`) not yet handed to the socket.
    pending: Vec<u8>,
    /// A thread is writing; it will also send what is pending.
    writing: bool,
    /// The send timeout last set on the socket.
    send_timeout: Option<Duration>,
}

/// The shared, write side of one client connection.
pub struct Connection {
    /// Sequence number of the connection (for logs and the registry).
    pub number: u64,
    /// The client's address.
    pub peer: SocketAddr,
    stats: Arc<Stats>,
    shutdown: Arc<Shutdown>,
    stream: TcpStream,
    outbox: Mutex<Outbox>,
    /// Signalled whenever the writer takes what is pending.
    outbox_taken: Condvar,
    in_flight: AtomicUsize,
    broken: AtomicBool,
    session: Mutex<Option<Arc<Session>>>,
}

impl Connection {
    /// Wraps an accepted connection (one file descriptor for both
    /// directions: the reader thread reads through [`Connection::stream`]).
    pub fn new(
        number: u64,
        stream: TcpStream,
        peer: SocketAddr,
        stats: Arc<Stats>,
        shutdown: Arc<Shutdown>,
    ) -> Connection {
        Connection {
            number,
            peer,
            stats,
            shutdown,
            stream,
            outbox: Mutex::new(Outbox::default()),
            outbox_taken: Condvar::new(),
            in_flight: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
            session: Mutex::new(None),
        }
    }

    /// The socket, for the reader thread (writes go through [`Connection::write_line`]).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The session bound by `session.login` or `session.join`, if any.
    pub fn session(&self) -> Option<Arc<Session>> {
        self.session.lock().clone()
    }

    /// Binds `session` to this connection (replacing any other).
    pub fn bind_session(&self, session: Arc<Session>) {
        *self.session.lock() = Some(session);
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

    fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Queues one line (a `\n` is added) and, unless another thread is
    /// writing to this client already, writes it and whatever else is
    /// queued meanwhile. Lines go out in the order they were queued. With
    /// [`OUTBOX_LIMIT`] bytes queued already, it first waits for the writer
    /// at work to take them (at most until that writer gives up).
    pub fn write_line(&self, line: &str) {
        let mut outbox = self.outbox.lock();
        while !outbox.pending.is_empty()
            && outbox.pending.len() + line.len() >= OUTBOX_LIMIT
            && !self.is_broken()
        {
            self.outbox_taken.wait(&mut outbox);
        }
        if self.is_broken() {
            return;
        }
        outbox.pending.extend_from_slice(line.as_bytes());
        outbox.pending.push(b'\n');
        if outbox.writing {
            return; // the writer at work sends it
        }
        outbox.writing = true;
        loop {
            let batch = std::mem::take(&mut outbox.pending);
            self.outbox_taken.notify_all();
            if batch.is_empty() || self.is_broken() {
                outbox.writing = false;
                return;
            }
            let mut send_timeout = outbox.send_timeout;
            drop(outbox);
            self.write_all(&batch, &mut send_timeout);
            outbox = self.outbox.lock();
            outbox.send_timeout = send_timeout;
        }
    }

    /// Writes `bytes` within [`WRITE_TIMEOUT`], or gives the client up.
    fn write_all(&self, bytes: &[u8], send_timeout: &mut Option<Duration>) {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let mut rest = bytes;
        while !rest.is_empty() && !self.is_broken() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.bound_send_time(send_timeout, left).is_err() {
                return self.give_up("the client reads too slowly");
            }
            match (&self.stream).write(rest) {
                Ok(0) => return self.give_up("the client closed the connection"),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.give_up(&e.to_string()),
            }
        }
    }

    /// Waits until no thread is writing to this client (at most until
    /// `until`), so that replies queued before a shutdown go out before
    /// the socket is closed.
    pub fn wait_written(&self, until: Instant) {
        while self.outbox.lock().writing && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Makes the socket's send timeout `left`, give or take
    /// [`WRITE_TIMEOUT_SLACK`]; `current` is what it was last set to.
    fn bound_send_time(&self, current: &mut Option<Duration>, left: Duration) -> io::Result<()> {
        let close_enough = current.is_some_and(|c| c.abs_diff(left) <= WRITE_TIMEOUT_SLACK);
        if !close_enough {
            self.stream.set_write_timeout(Some(left))?;
            *current = Some(left);
        }
        Ok(())
    }

    fn give_up(&self, why: &str) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            log::debug!(
                "connection {} ({}): reply not delivered, closing: {why}",
                self.number,
                self.peer
            );
        }
        let _ = self.stream.shutdown(SocketShutdown::Both);
    }

    /// Writes an error reply that belongs to no admitted request (parse
    /// errors, oversized lines, refusals at admission).
    pub fn write_error(&self, id: &Id, error: &RpcError) {
        self.stats.count_error(error.code);
        self.write_line(&render_error(id, error));
    }

    /// Closes both directions; the reader thread then sees end of file.
    pub fn close(&self) {
        self.broken.store(true, Ordering::Release);
        let _ = self.stream.shutdown(SocketShutdown::Both);
    }

    /// Whether the socket failed or was closed by the server.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }
}

/// The open client connections, for `max_clients`, for `sys.status` and
/// for closing them all at shutdown.
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

    /// Forgets a connection whose reader has finished.
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

    /// Unbinds session `key` from every open connection (after a logout).
    pub fn unbind_session(&self, key: &str) {
        for conn in self.all() {
            conn.unbind_session(key);
        }
    }

    /// Every open connection.
    fn all(&self) -> Vec<Arc<Connection>> {
        self.open.lock().values().cloned().collect()
    }

    /// Closes every connection once its writer at work (if any) is done.
    pub fn close_all(&self) {
        for conn in self.all() {
            // Each writer at work is bounded by its own write timeout.
            conn.wait_written(Instant::now() + WRITE_TIMEOUT);
            conn.close();
        }
    }
}

/// Collects the replies of one batch and writes them as one JSON array.
pub struct Batch {
    conn: Arc<Connection>,
    remaining: AtomicUsize,
    replies: Mutex<Vec<String>>,
}

impl Batch {
    /// A batch of `len` elements on `conn`.
    pub fn new(conn: Arc<Connection>, len: usize) -> Arc<Batch> {
        Arc::new(Batch {
            conn,
            remaining: AtomicUsize::new(len),
            replies: Mutex::new(Vec::with_capacity(len)),
        })
    }

    fn complete(&self, reply: Option<String>) {
        if let Some(r) = reply {
            self.replies.lock().push(r);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let replies = std::mem::take(&mut *self.replies.lock());
            if !replies.is_empty() {
                self.conn.write_line(&format!("[{}]", replies.join(",")));
            }
        }
    }
}

/// Where a reply goes.
enum Target {
    Connection(Arc<Connection>),
    Batch(Arc<Batch>),
}

/// The obligation to answer one request exactly once.
pub struct Responder {
    target: Target,
    /// `None` for a notification: it runs, but nothing is written.
    id: Option<Id>,
    /// Whether this request counts in its connection's in-flight total.
    counted: bool,
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
            answered: false,
        }
    }

    /// The connection the request came from.
    pub fn connection(&self) -> &Arc<Connection> {
        match &self.target {
            Target::Connection(c) => c,
            Target::Batch(b) => &b.conn,
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
        self.send(outcome);
    }

    fn send(&mut self, outcome: Result<Value, RpcError>) {
        self.answered = true;
        let conn = self.connection().clone();
        if let Err(e) = &outcome {
            conn.stats.count_error(e.code);
        }
        let line = self.id.as_deref().map(|id| match &outcome {
            Ok(v) => render_result(id, v),
            Err(e) => render_error(id, e),
        });
        match &self.target {
            Target::Connection(c) => {
                if let Some(line) = line {
                    c.write_line(&line);
                }
            }
            Target::Batch(b) => b.complete(line),
        }
        if self.counted {
            conn.end();
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let error = if self.connection().shutdown.is_stopping() {
            RpcError::shutting_down()
        } else {
            log::error!(
                "request {} was dropped without a reply (a bug)",
                self.id_text()
            );
            RpcError::internal("the request was dropped without a reply")
        };
        self.send(Err(error));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    use super::*;

    /// A connection on a loopback socket pair.
    fn loopback() -> (Arc<Connection>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        let (stats, shutdown) = (Arc::new(Stats::new()), Arc::new(Shutdown::default()));
        let conn = Connection::new(1, server_side, peer, stats, shutdown);
        (Arc::new(conn), client)
    }

    #[test]
    fn concurrent_replies_arrive_whole_once_and_in_each_writers_order() {
        let (conn, client) = loopback();
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
                // Read slowly now and then, so that writers find one at work.
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
                        conn.write_line(&format!("{w}:{n}"));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let seen = reader.join().unwrap();
        assert_eq!(seen.len(), WRITERS);
        assert!(seen.values().all(|&n| n == LINES), "{seen:?}");
        assert!(!conn.is_broken());
    }

    #[test]
    fn replies_for_a_client_that_does_not_read_stay_within_the_outbox_limit() {
        let (conn, _client) = loopback(); // never read
        let blocked = {
            let conn = conn.clone();
            std::thread::spawn(move || conn.write_line(&"x".repeat(8 << 20)))
        };
        std::thread::sleep(Duration::from_millis(100)); // that writer is at work
        let adder = {
            let conn = conn.clone();
            std::thread::spawn(move || {
                let line = "y".repeat(100);
                for _ in 0..100_000 {
                    conn.write_line(&line); // 10 MB in all
                }
            })
        };
        let mut most = 0;
        while !adder.is_finished() {
            most = most.max(conn.outbox.lock().pending.len());
            std::thread::sleep(Duration::from_millis(1));
        }
        adder.join().unwrap();
        blocked.join().unwrap();
        assert!(conn.is_broken());
        assert!(most > 0 && most <= OUTBOX_LIMIT, "{most} bytes queued");
    }

    #[test]
    fn a_client_that_does_not_read_is_given_up_without_holding_the_writers() {
        let (conn, _client) = loopback(); // never read
        let big = "x".repeat(1 << 20);
        let start = Instant::now();
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let (conn, big) = (conn.clone(), big.clone());
                std::thread::spawn(move || {
                    for _ in 0..16 {
                        conn.write_line(&big);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert!(conn.is_broken());
        // One writer waits out WRITE_TIMEOUT; the others never wait for it.
        assert!(
            start.elapsed() < WRITE_TIMEOUT * 3,
            "took {:?}",
            start.elapsed()
        );
    }
}
