//! One router thread: a mio event loop over its share of the connections.
//!
//! A wake-up is one *turn*: for every socket that is ready the loop reads
//! once (one read of up to [`READ_CHUNK`] bytes), frames and parses what
//! arrived, hands each request to the router's dispatch function (which
//! admits it to the queue or answers it on the spot: refusals, parse
//! errors, `sys.ping`), and then writes that socket once. Replies made on
//! this thread are only appended to the outbox; the single write at the end
//! of the connection's turn sends them together.
//!
//! Fairness: a connection gets at most [`TEXTS_PER_TURN`] requests handled
//! per turn; what it has left (bytes read but not handled, or a read that
//! filled the buffer) is kept and served in the next turn, after the other
//! ready sockets. A client whose outbox is full is not read until its
//! replies are written (it cannot make the server buffer without end).
//!
//! TLS: what the loop reads from a TLS connection's socket goes to its
//! [`TlsSession`](super::tls::TlsSession) and the plaintext that comes out
//! to the framing; replies go through the session on their way out (see
//! [`connection`](super::connection)). A full handshake costs a signature,
//! so a turn serves at most [`HANDSHAKES_PER_TURN`] reads of connections
//! still handshaking; the others wait for the next turn, after the sockets
//! that became ready meanwhile (a storm of new clients cannot hold up
//! `sys.ping` on open connections by more than that many signatures). A
//! failed handshake (a plaintext client on a TLS port, a client certificate
//! refused) gets rustls' alert and is closed, counted, and logged at most
//! once per [`TLS_LOG_EVERY`].
//!
//! About once a second ([`TICK`]) the loop walks its connections: it closes
//! those idle for `idle_timeout_s` with nothing in flight (or with a text
//! half sent), those that left their replies unread for the write
//! timeout ([`WRITE_TIMEOUT`](super::outbox::WRITE_TIMEOUT)), and those that sent
//! end of file and have every reply written, and TLS connections whose
//! handshake is not done within `server.tls_handshake_timeout_ms` (the walk
//! then runs at least that often). No timer per connection.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::connection::{mark_event_loop_thread, Connection, Home};
use super::handles::RouterHandles;
use super::outbox::Flushed;
use super::requests::handle_frame;
use super::tls::Received;
use crate::logging::LogThrottle;
use crate::protocol::framing::Framing;

/// The waker's token (connections use their slab index).
const WAKER: Token = Token(usize::MAX);

/// Bytes read from one socket per turn (one read system call).
pub const READ_CHUNK: usize = 64 * 1024;

/// Requests (texts) handled per connection per turn.
pub const TEXTS_PER_TURN: usize = 64;

/// How often the loop walks its connections for timeouts.
pub const TICK: Duration = Duration::from_secs(1);

/// Reads of connections still in their TLS handshake served per turn.
pub const HANDSHAKES_PER_TURN: usize = 16;

/// At most one log line about failed TLS handshakes per this interval.
pub const TLS_LOG_EVERY: Duration = Duration::from_secs(10);

/// Events taken per `epoll_wait`.
const EVENTS: usize = 1024;

/// One connection as its loop sees it.
struct Entry {
    conn: Arc<Connection>,
    framing: Framing,
    /// Bytes read but not handled yet (the turn's budget ran out).
    backlog: Vec<u8>,
    /// How much of `backlog` was handled already.
    backlog_at: usize,
    /// When the client last sent a byte.
    last_read: Instant,
    /// The client sent end of file.
    eof: bool,
    /// epoll reported the peer's end of file or an error: a short read
    /// does not mean the socket is drained (the end of file is still to be
    /// read, and no new event will announce it).
    hup: bool,
    /// The last turn this connection was served in.
    turn: u64,
}

/// An event loop: its poll, its connections, and what other threads ask of it.
pub struct EventLoop {
    router: Arc<RouterHandles>,
    poll: Poll,
    home: Arc<Home>,
    conns: Slab<Entry>,
    buf: Vec<u8>,
    /// The plaintext of what was read from a TLS connection.
    plain: Vec<u8>,
    /// Reads of handshaking connections served this turn.
    handshakes: usize,
    /// How often the loop walks its connections (at most [`TICK`]).
    tick_every: Duration,
    tls_warnings: LogThrottle,
    /// Connections to serve again next turn (input left, or replies left).
    again: Vec<Token>,
    turn: u64,
    next_tick: Instant,
    /// Since when the loop is finishing (no more reading).
    stopping: Option<Instant>,
    /// How long a finishing loop waits for clients that do not read.
    write_timeout: Duration,
}

impl EventLoop {
    /// A loop serving connections of `router`; other threads reach it through [`EventLoop::home`].
    pub fn new(router: Arc<RouterHandles>) -> io::Result<EventLoop> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let write_timeout = router.handles().write_timeout;
        let handshake_timeout = Duration::from_millis(router.config.tls_handshake_timeout_ms);
        let tick_every = match router.tls {
            Some(_) => TICK.min(handshake_timeout).max(Duration::from_millis(10)),
            None => TICK,
        };
        Ok(EventLoop {
            router,
            poll,
            home: Arc::new(Home::new(waker)),
            conns: Slab::new(),
            buf: vec![0; READ_CHUNK],
            plain: Vec::new(),
            handshakes: 0,
            tick_every,
            tls_warnings: LogThrottle::new(TLS_LOG_EVERY),
            again: Vec::new(),
            turn: 0,
            next_tick: Instant::now() + tick_every,
            stopping: None,
            write_timeout,
        })
    }

    /// How other threads reach this loop.
    pub fn home(&self) -> Arc<Home> {
        self.home.clone()
    }

    /// Runs until asked to stop and every connection is closed.
    pub fn run(mut self) {
        mark_event_loop_thread();
        let mut events = Events::with_capacity(EVENTS);
        loop {
            let timeout = if self.again.is_empty() {
                self.next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("event loop: epoll_wait failed: {e}; stopping this router thread");
                    return;
                }
            }
            if self.one_turn(&events) {
                return;
            }
        }
    }

    /// Serves what `events` reported, then the leftovers of the last turn,
    /// then the inbox; true once the loop is done.
    fn one_turn(&mut self, events: &Events) -> bool {
        self.turn += 1;
        self.handshakes = 0;
        let again = std::mem::take(&mut self.again);
        for event in events.iter() {
            match event.token() {
                WAKER => {}
                Token(t) => {
                    let closed = event.is_read_closed() || event.is_error();
                    if let (true, Some(entry)) = (closed, self.conns.get_mut(t)) {
                        entry.hup = true;
                    }
                    if event.is_readable() || closed {
                        self.serve(t);
                    } else if event.is_writable() {
                        self.flush(t);
                    }
                }
            }
        }
        for Token(t) in again {
            if self.conns.get(t).is_some_and(|e| e.turn != self.turn) {
                self.serve(t);
            }
        }
        self.take_inbox();
        let now = Instant::now();
        if now >= self.next_tick {
            self.next_tick = now + self.tick_every;
            self.tick(now);
        }
        self.stopping
            .is_some_and(|since| self.conns.is_empty() || since.elapsed() >= self.write_timeout)
    }

    /// One turn of connection `t`: read once, handle at most
    /// [`TEXTS_PER_TURN`] texts, write once.
    fn serve(&mut self, t: usize) {
        let Some(entry) = self.conns.get_mut(t) else {
            return;
        };
        entry.turn = self.turn;
        let conn = entry.conn.clone();
        if conn.is_broken() {
            return self.remove(t);
        }
        if self.stopping.is_some() || entry.eof || conn.is_read_closed() {
            return self.flush(t);
        }
        if conn.outbox().is_full() {
            conn.set_paused(true);
            return self.flush(t);
        }
        if conn.pause_for_response() {
            return self.flush(t); // HTTP: the next request waits for this response
        }
        if conn.is_handshaking() {
            if self.handshakes >= HANDSHAKES_PER_TURN {
                return self.again.push(Token(t)); // a storm: the next turn
            }
            self.handshakes += 1;
        }
        conn.set_paused(false);
        let mut budget = TEXTS_PER_TURN;
        let mut more = false;
        if entry.backlog_at < entry.backlog.len() {
            let backlog = std::mem::take(&mut entry.backlog);
            let rest = &backlog[entry.backlog_at..];
            let used = handle_input(&self.router, &conn, &mut entry.framing, rest, &mut budget);
            more = used < rest.len();
            entry.backlog_at = if more { entry.backlog_at + used } else { 0 };
            if more {
                entry.backlog = backlog; // freed once handled: idle connections hold no buffer
            }
        }
        if !more {
            match conn.stream().read(&mut self.buf) {
                Ok(0) => {
                    entry.eof = true;
                    if let Some(frame) = entry.framing.at_eof() {
                        handle_frame(&self.router, &conn, frame);
                    }
                    conn.set_read_closed();
                }
                Ok(n) => {
                    entry.last_read = Instant::now();
                    let full = n == self.buf.len();
                    let mut input = &self.buf[..n];
                    let mut closed = Received::Open;
                    if let Some(tls) = conn.tls() {
                        self.plain.clear();
                        match tls.receive(input, &mut self.plain) {
                            Ok(received) => closed = received,
                            Err(e) => return self.tls_failed(t, &e),
                        }
                        input = &self.plain;
                    }
                    let used =
                        handle_input(&self.router, &conn, &mut entry.framing, input, &mut budget);
                    if used < input.len() {
                        entry.backlog.clear();
                        entry.backlog.extend_from_slice(&input[used..]);
                        entry.backlog_at = 0;
                    }
                    // A short read drained the socket (epoll reports new data
                    // anew), unless the end of file is behind it; a full
                    // one may have left some: come back.
                    more = used < input.len() || full || entry.hup;
                    if closed == Received::Closed && !more {
                        entry.eof = true; // close_notify: the end of the client's input
                        if let Some(frame) = entry.framing.at_eof() {
                            handle_frame(&self.router, &conn, frame);
                        }
                        conn.set_read_closed();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => more = true,
                Err(e) => {
                    conn.give_up(&format!("read failed: {e}"));
                    return self.remove(t);
                }
            }
        }
        if more {
            self.again.push(Token(t));
        }
        self.flush(t);
    }

    /// Writes connection `t` once; closes it when it is done or gone.
    fn flush(&mut self, t: usize) {
        let Some(entry) = self.conns.get(t) else {
            return;
        };
        let conn = entry.conn.clone();
        match conn.flush_from_loop() {
            Flushed::Failed => return self.remove(t),
            Flushed::More => self.again.push(Token(t)),
            Flushed::Done | Flushed::Blocked | Flushed::Busy => {}
        }
        let done = conn.is_broken()
            || ((entry.eof || conn.is_read_closed() || self.stopping.is_some())
                && conn.in_flight() == 0
                && conn.is_written());
        if done {
            self.remove(t);
        } else if conn.is_paused() && !conn.outbox().is_full() && !conn.awaits_response() {
            self.again.push(Token(t)); // reading was paused for a full outbox: resume
        }
    }

    /// Closes connection `t` and forgets it.
    fn remove(&mut self, t: usize) {
        let entry = self.conns.remove(t);
        let fd = entry.conn.stream().as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        // Uncounted first: a peer that sees the close may connect again at once.
        self.router.connections.remove(entry.conn.number);
        entry.conn.close();
    }

    /// New connections, hand-overs from workers, and the stop request.
    fn take_inbox(&mut self) {
        let inbox = self.home.take();
        for (conn, framing) in inbox.adopt {
            self.adopt(conn, framing);
        }
        for conn in inbox.flush {
            let t = conn.token();
            let ours = self
                .conns
                .get(t)
                .is_some_and(|e| Arc::ptr_eq(&e.conn, &conn));
            if !ours {
                continue;
            }
            self.flush(t);
        }
        if inbox.stop && self.stopping.is_none() {
            self.stopping = Some(Instant::now());
            let all: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
            for t in all {
                self.flush(t);
            }
        }
    }

    /// Starts serving `conn`.
    fn adopt(&mut self, conn: Arc<Connection>, framing: Framing) {
        if self.stopping.is_some() {
            self.router.connections.remove(conn.number);
            conn.close();
            return;
        }
        let entry = self.conns.vacant_entry();
        let t = entry.key();
        let fd = conn.stream().as_raw_fd();
        let registered = self.poll.registry().register(
            &mut SourceFd(&fd),
            Token(t),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(e) = registered {
            log::warn!(
                "cannot watch connection {} ({}): {e}; closing it",
                conn.number,
                conn.peer
            );
            self.router.connections.remove(conn.number);
            conn.close();
            return;
        }
        conn.set_token(t);
        entry.insert(Entry {
            framing,
            conn,
            backlog: Vec::new(),
            backlog_at: 0,
            last_read: Instant::now(),
            eof: false,
            hup: false,
            turn: 0,
        });
    }

    /// Timeouts: idle clients, clients that do not read, finished ones.
    fn tick(&mut self, now: Instant) {
        let idle = Duration::from_secs(self.router.config.idle_timeout_s);
        let handshake_timeout = Duration::from_millis(self.router.config.tls_handshake_timeout_ms);
        let mut closing = Vec::new();
        for (t, entry) in &self.conns {
            let conn = &entry.conn;
            let outbox = conn.outbox();
            if conn.is_broken() {
                closing.push((t, None));
            } else if outbox.is_stalled(now) {
                closing.push((t, Some("the client reads too slowly")));
            } else if !idle.is_zero()
                && now.saturating_duration_since(entry.last_read) >= idle
                && outbox.is_empty()
                && (conn.in_flight() == 0 || entry.framing.has_partial())
            {
                closing.push((t, Some("idle timeout")));
            } else if entry.eof && conn.in_flight() == 0 && conn.is_written() {
                closing.push((t, None));
            } else if conn.is_handshaking()
                && conn
                    .tls()
                    .is_some_and(|tls| now >= tls.started() + handshake_timeout)
            {
                closing.push((t, Some("TLS handshake timeout")));
            }
        }
        for (t, why) in closing {
            if why == Some("TLS handshake timeout") {
                if let Some(tls) = self.conns[t].conn.tls() {
                    tls.timed_out();
                }
                self.count_tls_failure(t, why.unwrap_or_default());
            }
            if let Some(why) = why {
                self.conns[t].conn.give_up(why);
            }
            self.remove(t);
        }
    }

    /// A TLS handshake or record failed on connection `t`: rustls' alert is
    /// sent if the socket takes it, and the connection is closed and counted.
    fn tls_failed(&mut self, t: usize, why: &str) {
        self.count_tls_failure(t, why);
        let conn = &self.conns[t].conn;
        if let Some(tls) = conn.tls() {
            let _ = tls.send(conn.stream());
        }
        conn.give_up(&format!("TLS: {why}"));
        self.remove(t);
    }

    /// Logs a failed handshake (throttled: one line per burst); the
    /// session counted it.
    fn count_tls_failure(&self, t: usize, why: &str) {
        use crate::server::metrics::tls::HandshakeOutcome::{Failed, Timeout};
        let counted = self.router.stats.metrics.tls();
        let total = counted.counted(Failed) + counted.counted(Timeout);
        if self.tls_warnings.ready() {
            let conn = &self.conns[t].conn;
            log::warn!(
                "TLS failed with {} (connection {}): {why}; {total} TLS failures since start \
                 (a plaintext client on a TLS port?); at most one such line per {} s per router thread",
                conn.peer,
                conn.number,
                self.tls_warnings.every_s()
            );
        }
    }
}

/// Frames and handles `input` until it is used up or `budget` texts were
/// handled; returns how many bytes were used.
fn handle_input(
    router: &RouterHandles,
    conn: &Arc<Connection>,
    framing: &mut Framing,
    input: &[u8],
    budget: &mut usize,
) -> usize {
    let mut rest = input;
    while *budget > 0 && !conn.awaits_response() {
        let Some(frame) = framing.next(&mut rest) else {
            break;
        };
        *budget -= 1;
        handle_frame(router, conn, frame);
    }
    input.len() - rest.len()
}
