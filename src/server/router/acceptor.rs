//! The acceptor thread: accepts on every listener, gives each connection
//! to the next event loop in turn, and refuses those past `max_clients`.
//!
//! Why one acceptor and round robin rather than a listener per loop with
//! `SO_REUSEPORT`: with `SO_REUSEPORT` a second server started on the same
//! port by mistake binds without error and silently takes half the
//! connections; the kernel's hash spreads connections by address, not by
//! load; and the `max_clients` refusal would need a lock shared by every
//! loop anyway. Accepting costs one system call and one hand-over per
//! connection, which long-lived connections make negligible (measured in
//! the README: 10,000 connections opened in about a second).
//!
//! A refused connection gets one -32005 line, its write side is shut (FIN),
//! and its input is read and discarded until the client closes (at most
//! [`REFUSAL_DRAIN`], [`REFUSAL_DRAIN_BYTES`]): closing a socket with
//! unread input makes the kernel send a reset, which can destroy the line
//! before the client reads it. Draining is done by this thread's own poll,
//! so a thousand refusals at once cost no thread.
//!
//! On a TLS listener the line needs a handshake first: the acceptor runs it
//! on its own poll (the line waits in rustls until the keys exist; TLS 1.3
//! sends it with the server's first flight), then sends close_notify and
//! FIN and drains as above, all within [`REFUSAL_DRAIN`]. A handshake costs
//! a signature on this thread, so at most [`TLS_REFUSALS_AT_ONCE`] run at
//! once and at most [`TLS_REFUSALS_PER_S`] start in a second (a few
//! percent of a core); a TLS client beyond either is closed without the
//! line, as a storm of clients past `max_clients` must not take the CPU of
//! the event loops serving the admitted ones.

use std::io::{self, Read};
use std::net::{Shutdown as SocketShutdown, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::collector::ReplyCollector;
use super::connection::{Connection, Home};
use super::handles::RouterHandles;
use super::responder::Responder;
use super::tls::TlsSession;
use crate::logging::LogThrottle;
use crate::protocol::framing::{Framing, Wire};
use crate::protocol::{null_id, RpcError};
use crate::server::metrics::Refusal;

/// The longest a refused connection is drained before it is closed.
pub const REFUSAL_DRAIN: Duration = Duration::from_secs(1);
/// The most input read from a refused connection before it is closed.
pub const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;
/// Refused connections drained at once; beyond, closed right after the line.
const MAX_DRAINING: usize = 10_000;
/// TLS refusals whose handshake runs at once; beyond, closed without the line.
pub const TLS_REFUSALS_AT_ONCE: usize = 64;
/// TLS refusals whose handshake starts within one second; beyond, closed
/// without the line.
pub const TLS_REFUSALS_PER_S: u32 = 200;

const WAKER: Token = Token(usize::MAX);
/// Tokens of refused connections start here (listeners use 0..).
const REFUSED: usize = 1 << 20;

/// Stops the acceptor thread.
pub struct Handle {
    waker: Arc<Waker>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    /// Stops accepting and waits for the thread (idempotent).
    pub fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Refused {
    conn: Arc<Connection>,
    until: Instant,
    drained: usize,
    /// TLS: the handshake that carries the line is still under way.
    handshaking: bool,
}

/// How many TLS refusals may start a handshake (see the module doc).
struct TlsRefusals {
    /// Handshakes under way.
    running: usize,
    /// Started in the current one-second window, and when it began.
    started: u32,
    window: Instant,
}

impl TlsRefusals {
    /// Whether one more may start now (and counts it if so).
    fn admit(&mut self, now: Instant) -> bool {
        if now >= self.window + Duration::from_secs(1) {
            self.window = now;
            self.started = 0;
        }
        if self.running >= TLS_REFUSALS_AT_ONCE || self.started >= TLS_REFUSALS_PER_S {
            return false;
        }
        self.running += 1;
        self.started += 1;
        true
    }
}

/// Where a refused TLS connection's handshake stands.
enum Handshake {
    /// Waiting for the socket.
    Pending,
    /// Done, the line and close_notify sent (or in the socket's buffer).
    Done,
    /// Failed, or the client went away.
    Failed,
}

struct Acceptor {
    router: Arc<RouterHandles>,
    poll: Poll,
    listeners: Vec<(mio::net::TcpListener, Wire)>,
    homes: Vec<Arc<Home>>,
    next_home: usize,
    next_number: u64,
    refused: Slab<Refused>,
    tls_refusals: TlsRefusals,
    warnings: LogThrottle,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Starts the acceptor over `listeners`, handing connections to `homes`.
pub fn start(
    router: Arc<RouterHandles>,
    listeners: Vec<(TcpListener, Wire)>,
    homes: Vec<Arc<Home>>,
) -> io::Result<Handle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let mut watched = Vec::new();
    for (i, (listener, wire)) in listeners.into_iter().enumerate() {
        listener.set_nonblocking(true)?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, Token(i), Interest::READABLE)?;
        watched.push((listener, wire));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acceptor = Acceptor {
        router,
        poll,
        listeners: watched,
        homes,
        next_home: 0,
        next_number: 0,
        refused: Slab::new(),
        tls_refusals: TlsRefusals {
            running: 0,
            started: 0,
            window: Instant::now(),
        },
        warnings: LogThrottle::new(Duration::from_secs(10)),
        stop: stop.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("blitz-accept".into())
        .spawn(move || acceptor.run())?;
    Ok(Handle {
        waker,
        stop,
        thread: Some(thread),
    })
}

impl Acceptor {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut retry = false;
        while !self.stop.load(std::sync::atomic::Ordering::Acquire) {
            let timeout = if retry {
                Duration::from_millis(20)
            } else {
                REFUSAL_DRAIN / 4
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!(
                        "acceptor: epoll_wait failed: {e}; no more connections are accepted"
                    );
                    return;
                }
            }
            retry = false;
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(t) if t >= REFUSED => self.drain(t - REFUSED),
                    Token(i) => retry |= self.accept_all(i),
                }
            }
            if retry || events.is_empty() {
                for i in 0..self.listeners.len() {
                    retry |= self.accept_all(i);
                }
            }
            self.expire_refused();
        }
    }

    /// Accepts until the listener's queue is empty; true when accepting
    /// failed (out of descriptors) and should be tried again soon.
    fn accept_all(&mut self, i: usize) -> bool {
        loop {
            let (listener, wire) = &self.listeners[i];
            match listener.accept() {
                Ok((stream, peer)) => {
                    let wire = *wire;
                    let _ = stream.set_nodelay(true);
                    self.next_number += 1;
                    self.start_connection(stream, peer, wire);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if self.warnings.ready() {
                        log::warn!(
                            "accept failed: {e} (out of file descriptors? raise `ulimit -n`); at most one such line per {} s",
                            self.warnings.every_s()
                        );
                    }
                    return true;
                }
            }
        }
    }

    fn start_connection(
        &mut self,
        stream: mio::net::TcpStream,
        peer: std::net::SocketAddr,
        wire: Wire,
    ) {
        let home = self.homes[self.next_home % self.homes.len()].clone();
        let stats = &self.router.stats;
        let tls = (self.router.tls.as_ref())
            .map(|tls| TlsSession::new(tls.new_connection(), stats.clone()));
        let conn = Arc::new(Connection::new(
            self.next_number,
            stream,
            tls,
            peer,
            home.clone(),
            self.router.handles(),
        ));
        let max = self.router.config.max_clients;
        if !self.router.connections.try_add(&conn, max as usize) {
            return self.refuse(conn, max, wire);
        }
        self.next_home = self.next_home.wrapping_add(1);
        if wire == Wire::Http {
            conn.set_stateless();
        }
        let framing = Framing::new(wire, self.router.config.max_message_bytes as usize);
        home.adopt(conn, framing);
    }

    /// One -32005 reply (a line, or an HTTP 503), FIN, then drain (see the
    /// module doc); over TLS after a handshake, when one may start.
    fn refuse(&mut self, conn: Arc<Connection>, max: u64, wire: Wire) {
        self.router.stats.count_refusal(Refusal::MaxClients);
        let tls = conn.tls().is_some();
        if tls && (self.refused.len() >= MAX_DRAINING || !self.tls_refusals.admit(Instant::now())) {
            return conn.close(); // no handshake for it: closed without the line
        }
        let responder = match wire {
            Wire::Stream => Responder::new(&conn, None, Some(null_id())),
            // An HTTP client gets a 503 response (Connection: close) with it.
            Wire::Http => Responder::collected(
                &ReplyCollector::for_http(&conn, 1, false, false),
                Some(null_id()),
            ),
        };
        // Over TLS the line waits in rustls for the handshake's keys.
        responder.reply(Err(RpcError::too_many_connections(max)));
        if !tls {
            let _ = conn.stream().shutdown(SocketShutdown::Write);
        }
        if self.refused.len() >= MAX_DRAINING {
            return;
        }
        let entry = self.refused.vacant_entry();
        let fd = conn.stream().as_raw_fd();
        let token = Token(REFUSED + entry.key());
        let interest = match tls {
            true => Interest::READABLE | Interest::WRITABLE,
            false => Interest::READABLE,
        };
        if (self.poll.registry())
            .register(&mut SourceFd(&fd), token, interest)
            .is_ok()
        {
            entry.insert(Refused {
                conn,
                until: Instant::now() + REFUSAL_DRAIN,
                drained: 0,
                handshaking: tls,
            });
        } else if tls {
            self.tls_refusals.running -= 1;
            conn.close();
        }
    }

    /// Moves a refused TLS connection's handshake on; once it is done, the
    /// connection is drained as a plaintext refusal is.
    fn refusal_handshake(&mut self, key: usize) -> Handshake {
        let Some(refused) = self.refused.get_mut(key) else {
            return Handshake::Failed;
        };
        let (conn, stream) = (&refused.conn, refused.conn.stream());
        let Some(tls) = conn.tls() else {
            return Handshake::Failed;
        };
        let mut sink = [0u8; 4096];
        let mut plain = Vec::new();
        loop {
            if tls.send(stream).is_err() {
                return Handshake::Failed;
            }
            if !tls.is_handshaking() && !tls.wants_write() {
                tls.close(stream); // close_notify after the line
                let _ = stream.shutdown(SocketShutdown::Write);
                refused.handshaking = false;
                self.tls_refusals.running -= 1;
                return Handshake::Done;
            }
            match (&mut &*stream).read(&mut sink) {
                Ok(0) => return Handshake::Failed,
                Ok(n) => {
                    plain.clear();
                    if tls.receive(&sink[..n], &mut plain).is_err() {
                        let _ = tls.send(stream); // rustls' alert
                        return Handshake::Failed;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Handshake::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Handshake::Failed,
            }
        }
    }

    /// Reads and discards a refused connection's input; closes it at end
    /// of file or past the drain limit.
    fn drain(&mut self, key: usize) {
        if self.refused.get(key).is_some_and(|r| r.handshaking) {
            match self.refusal_handshake(key) {
                Handshake::Pending => return,
                Handshake::Failed => return self.close_refused(key),
                Handshake::Done => {}
            }
        }
        let Some(refused) = self.refused.get_mut(key) else {
            return;
        };
        let mut sink = [0u8; 4096];
        let done = loop {
            match refused.conn.stream().read(&mut sink) {
                Ok(0) => break true,
                Ok(n) => {
                    refused.drained += n;
                    if refused.drained >= REFUSAL_DRAIN_BYTES {
                        break true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        if done {
            self.close_refused(key);
        }
    }

    fn expire_refused(&mut self) {
        let now = Instant::now();
        let expired: Vec<usize> = self
            .refused
            .iter()
            .filter(|(_, r)| r.until <= now)
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            self.drain(key);
            if self.refused.contains(key) {
                self.close_refused(key);
            }
        }
    }

    fn close_refused(&mut self, key: usize) {
        let refused = self.refused.remove(key);
        if refused.handshaking {
            self.tls_refusals.running -= 1;
        }
        let fd = refused.conn.stream().as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        refused.conn.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_refusals_are_bounded_at_once_and_per_second() {
        let t0 = Instant::now();
        let mut refusals = TlsRefusals {
            running: 0,
            started: 0,
            window: t0,
        };
        let admitted = (0..100).filter(|_| refusals.admit(t0)).count();
        assert_eq!(admitted, TLS_REFUSALS_AT_ONCE);
        // Each handshake done at once: the second's budget is the bound.
        let mut started = admitted;
        for _ in 0..1000 {
            refusals.running = 0;
            started += (0..TLS_REFUSALS_AT_ONCE)
                .filter(|_| refusals.admit(t0))
                .count();
        }
        assert_eq!(started, TLS_REFUSALS_PER_S as usize);
        refusals.running = 0;
        assert!(refusals.admit(t0 + Duration::from_secs(1)), "a new second");
    }
}
