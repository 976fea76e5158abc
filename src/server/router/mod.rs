//! The router: a fixed set of threads that own every client connection.
//!
//! - One acceptor thread ([`acceptor`]) accepts on every listener and gives
//!   each new connection to the next event loop in turn (round robin), or,
//!   past `max_clients`, answers it one -32005 line and closes it cleanly.
//! - `server.router_threads` event loops ([`event_loop`]) read, frame and
//!   parse requests, answer on the spot what needs no worker (refusals,
//!   parse errors, `sys.ping`), hand the rest to the route function
//!   (the method table's `route`), and write replies.
//!
//! The thread count is fixed at start whatever the number of clients.
//! Per connection: [`connection`] (the socket and its [`outbox`]), kept in
//! the [`registry`]; per request: its [`responder`], whose reply a
//! [`collector`] gathers with the others of a batch or an HTTP request;
//! what every router thread is given: [`handles`]; from frames to
//! dispatched requests: [`requests`], and for HTTP, [`http`].
//!
//! With TLS, each connection's [`tls`] session sits between the socket and
//! the framing (and the outbox): the loops drive rustls sans-IO.
//!
//! The files build on each other one way: `outbox` and `tls`, then `connection`,
//! then `registry`, `responder` and `collector`, then `handles`, then
//! `http` and `requests`, then the threads, `event_loop` and `acceptor`.
//!
//! The transport seam: each listener is of a [`Wire`] kind and gives its
//! connections the matching [`Framing`]; the loop only ever asks a framing
//! for the next frame, so a second transport (HTTP/1.1) adds a variant to
//! both and a listener of that kind, not a second loop.

pub mod acceptor;
pub mod collector;
pub mod connection;
pub mod event_loop;
pub mod handles;
pub mod http;
#[cfg(test)]
mod loopback;
pub mod outbox;
pub mod registry;
pub mod requests;
pub mod responder;
pub mod tls;

use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use connection::Home;
pub use handles::RouterHandles;

use crate::protocol::framing::Wire;

/// The running router threads.
pub struct RouterThreads {
    acceptor: acceptor::Handle,
    loops: Vec<(Arc<Home>, JoinHandle<()>)>,
}

/// Starts `threads` event loops and the acceptor over `listeners` (each a
/// listener and the wire its connections speak).
pub fn start(
    router: Arc<RouterHandles>,
    listeners: Vec<(TcpListener, Wire)>,
    threads: usize,
) -> io::Result<RouterThreads> {
    let mut loops = Vec::new();
    for i in 0..threads.max(1) {
        let event_loop = event_loop::EventLoop::new(router.clone())?;
        let home = event_loop.home();
        let thread = std::thread::Builder::new()
            .name(format!("blitz-router-{i}"))
            .spawn(move || event_loop.run())?;
        loops.push((home, thread));
    }
    let homes = loops.iter().map(|(home, _)| home.clone()).collect();
    let acceptor = acceptor::start(router, listeners, homes)?;
    Ok(RouterThreads { acceptor, loops })
}

impl RouterThreads {
    /// Stops accepting (the listeners are closed); the loops go on serving.
    pub fn stop_accepting(&mut self) {
        self.acceptor.stop();
    }

    /// Asks every loop to write what is queued and close its connections
    /// (at most [`outbox::WRITE_TIMEOUT`] for clients that do not read),
    /// and waits for them.
    pub fn finish(mut self) {
        self.acceptor.stop();
        for (home, _) in &self.loops {
            home.stop();
        }
        for (_, thread) in self.loops {
            let _ = thread.join();
        }
    }
}
