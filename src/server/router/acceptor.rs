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
//! A refused connection gets one -32005 line (on a TLS listener, where
//! the acceptor runs no handshake, it is closed without one), its write side is shut (FIN),
//! and its input is read and discarded until the client closes (at most
//! [`REFUSAL_DRAIN`], [`REFUSAL_DRAIN_BYTES`]): closing a socket with
//! unread input makes the kernel send a reset, which can destroy the line
//! before the client reads it. Draining is done by this thread's own poll,
//! so a thousand refusals at once cost no thread.

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
}

struct Acceptor {
    router: Arc<RouterHandles>,
    poll: Poll,
    listeners: Vec<(mio::net::TcpListener, Wire)>,
    homes: Vec<Arc<Home>>,
    next_home: usize,
    next_number: u64,
    refused: Slab<Refused>,
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
        let tls = (self.router.tls.as_ref()).map(|tls| TlsSession::new(tls.new_connection()));
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

    /// One -32005 reply (a line, or an HTTP 503), FIN, then drain (see the module doc).
    fn refuse(&mut self, conn: Arc<Connection>, max: u64, wire: Wire) {
        self.router.stats.count_refusal(Refusal::MaxClients);
        if conn.tls().is_some() {
            // No handshake here: a TLS client is closed without the line.
            return conn.close();
        }
        let responder = match wire {
            Wire::Stream => Responder::new(&conn, None, Some(null_id())),
            // An HTTP client gets a 503 response (Connection: close) with it.
            Wire::Http => Responder::collected(
                &ReplyCollector::for_http(&conn, 1, false, false),
                Some(null_id()),
            ),
        };
        responder.reply(Err(RpcError::too_many_connections(max)));
        let _ = conn.stream().shutdown(SocketShutdown::Write);
        if self.refused.len() >= MAX_DRAINING {
            return;
        }
        let entry = self.refused.vacant_entry();
        let fd = conn.stream().as_raw_fd();
        let token = Token(REFUSED + entry.key());
        if self
            .poll
            .registry()
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
            .is_ok()
        {
            entry.insert(Refused {
                conn,
                until: Instant::now() + REFUSAL_DRAIN,
                drained: 0,
            });
        }
    }

    /// Reads and discards a refused connection's input; closes it at end
    /// of file or past the drain limit.
    fn drain(&mut self, key: usize) {
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
        let fd = refused.conn.stream().as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        refused.conn.close();
    }
}
