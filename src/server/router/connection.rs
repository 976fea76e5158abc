//! One client connection as its event loop and the workers share it, and
//! [`Home`], its event loop as other threads reach it.
//!
//! [`Connection`] owns the nonblocking socket, its [`Outbox`], the count of
//! requests in flight and the bound session. It holds the [`Handles`] it
//! needs (counters, lifecycle, write timeout, the gauge of queued reply
//! bytes) and its loop's [`Home`], never the server context.
//!
//! Who writes: a worker that replies appends to the outbox and writes it at
//! once if the socket takes it without blocking; whatever is left (a full
//! socket, or replies added during its write) it hands to the connection's
//! event loop through [`Home`], which wakes the loop. On an event-loop
//! thread replies are only appended: the loop writes each socket once,
//! after it has read everything that socket had ready in this wake-up.

use std::cell::Cell;
use std::net::{Shutdown as SocketShutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::net::TcpStream;
use parking_lot::Mutex;

use super::outbox::{Flushed, Outbox, Pushed, QueuedBytes, WRITE_TIMEOUT};
use super::tls::TlsSession;
use crate::auth::sessions::Session;
use crate::protocol::framing::Framing;
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

/// What a connection needs from the server: counters, the lifecycle, the
/// write timeout and the gauge of queued reply bytes.
#[derive(Clone)]
pub struct Handles {
    /// Counters (every error reply is counted).
    pub stats: Arc<Stats>,
    /// Lifecycle state (a reply dropped while stopping is -32003).
    pub shutdown: Arc<Shutdown>,
    /// How long a client may leave its replies unread before it is closed.
    pub write_timeout: Duration,
    /// Reply bytes queued in all the server's outboxes.
    pub queued_bytes: QueuedBytes,
}

impl Handles {
    /// The handles of a server's connections, with the server's
    /// [`WRITE_TIMEOUT`].
    pub fn new(stats: Arc<Stats>, shutdown: Arc<Shutdown>, queued_bytes: QueuedBytes) -> Handles {
        Handles {
            stats,
            shutdown,
            write_timeout: WRITE_TIMEOUT,
            queued_bytes,
        }
    }
}

/// The shared state of one client connection.
pub struct Connection {
    /// Sequence number of the connection (for logs and the registry).
    pub number: u64,
    /// The client's address.
    pub peer: SocketAddr,
    stream: TcpStream,
    /// The TLS session, on a TLS listener: every byte goes through it.
    tls: Option<TlsSession>,
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
    /// Wraps an accepted nonblocking socket served by the loop at `home`,
    /// speaking TLS through `tls` if given.
    pub fn new(
        number: u64,
        stream: TcpStream,
        tls: Option<TlsSession>,
        peer: SocketAddr,
        home: Arc<Home>,
        handles: Handles,
    ) -> Connection {
        Connection {
            number,
            peer,
            stream,
            tls,
            outbox: Outbox::new(handles.write_timeout, handles.queued_bytes.clone()),
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

    /// What the connection was given by the server.
    pub fn handles(&self) -> &Handles {
        &self.handles
    }

    /// The socket (the event loop reads it; writes go through the outbox).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The TLS session, on a TLS listener (the event loop feeds it what it reads).
    pub fn tls(&self) -> Option<&TlsSession> {
        self.tls.as_ref()
    }

    /// Whether the TLS handshake is still under way (never on plaintext).
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(TlsSession::is_handshaking)
    }

    /// Whether every reply (and, with TLS, every record) is on the socket.
    pub fn is_written(&self) -> bool {
        self.outbox.is_empty() && !self.tls.as_ref().is_some_and(TlsSession::wants_write)
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
    pub(super) fn end(&self) -> bool {
        self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// After the last reply of a client that sent end of file: its loop
    /// may close it now (once the reply is written).
    pub(super) fn done_if_read_closed(self: &Arc<Self>) {
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

    /// One write of the outbox, through TLS if the connection speaks it:
    /// records left in rustls count as a full socket ([`Flushed::Blocked`]).
    fn write_once(&self) -> Flushed {
        let Some(tls) = &self.tls else {
            return self.outbox.flush(&self.stream);
        };
        match tls.send(&self.stream) {
            Err(_) => return Flushed::Failed,
            Ok(false) => return Flushed::Blocked,
            Ok(true) => {}
        }
        match self.outbox.flush(tls.writer(&self.stream)) {
            Flushed::Done | Flushed::Busy if tls.wants_write() => Flushed::Blocked,
            flushed => flushed,
        }
    }

    fn write_or_hand_over(self: &Arc<Self>) {
        match self.write_once() {
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
        let flushed = self.write_once();
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

    /// Closes both directions (idle timeout, shutdown, end of the
    /// connection), with a TLS close_notify if the socket takes it.
    pub fn close(&self) {
        if let (Some(tls), false) = (&self.tls, self.broken.load(Ordering::Acquire)) {
            tls.close(&self.stream);
        }
        self.broken.store(true, Ordering::Release);
        self.outbox.close();
        let _ = self.stream.shutdown(SocketShutdown::Both);
    }

    /// Whether the socket failed or was closed by the server.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }
}
