//! For the router's unit tests: a [`Connection`] on a loopback socket
//! pair, with a thread standing in for its event loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::TcpStream;

use super::connection::{Connection, Handles, Home};
use super::outbox::{Flushed, QueuedBytes};
use crate::server::shutdown::Shutdown;
use crate::server::stats::Stats;

/// The write timeout of the tests' connections: short, so that a client
/// that never reads is given up quickly.
pub const WRITE_TIMEOUT: Duration = Duration::from_millis(50);

/// The thread standing in for the event loop; stopped when dropped.
pub struct StandIn {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A connection (the server's side) and the client's socket. The stand-in
/// takes what workers hand over and writes it again until the socket
/// takes it (the real loop waits for writability instead of retrying).
pub fn loopback() -> (Arc<Connection>, std::net::TcpStream, StandIn) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server_side, peer) = listener.accept().unwrap();
    server_side.set_nonblocking(true).unwrap();
    let poll = mio::Poll::new().unwrap();
    let home = Arc::new(Home::new(
        mio::Waker::new(poll.registry(), mio::Token(0)).unwrap(),
    ));
    let mut handles = Handles::new(
        Arc::new(Stats::new()),
        Arc::new(Shutdown::default()),
        QueuedBytes::default(),
    );
    handles.write_timeout = WRITE_TIMEOUT;
    let stream = TcpStream::from_std(server_side);
    let conn = Arc::new(Connection::new(1, stream, peer, home.clone(), handles));
    let stop = Arc::new(AtomicBool::new(false));
    let done = stop.clone();
    let thread = std::thread::spawn(move || {
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
    let stand_in = StandIn {
        stop,
        thread: Some(thread),
    };
    (conn, client, stand_in)
}
