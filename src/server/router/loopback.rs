//! For the router's unit tests: a [`Connection`] on a loopback socket
//! pair, with a thread standing in for its event loop; and the
//! connection's own tests on it (they live here, above `connection.rs`,
//! so that the harness and the connection do not import each other).

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
    let conn = Arc::new(Connection::new(
        1,
        stream,
        None,
        peer,
        home.clone(),
        handles,
    ));
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    use super::{loopback, WRITE_TIMEOUT};

    #[test]
    fn concurrent_replies_arrive_whole_once_and_in_each_writers_order() {
        let (conn, client, _event_loop) = loopback();
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
        assert_eq!(seen.len(), WRITERS);
        assert!(seen.values().all(|&n| n == LINES), "{seen:?}");
        assert!(!conn.is_broken());
    }

    #[test]
    fn a_client_that_does_not_read_is_given_up_without_holding_the_writers() {
        let (conn, _client, _event_loop) = loopback(); // never read
        let big = vec![b'x'; 1 << 20];
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let (conn, big) = (conn.clone(), big.clone());
                std::thread::spawn(move || {
                    let mut most = 0;
                    let mut longest = Duration::ZERO;
                    for _ in 0..16 {
                        let start = Instant::now();
                        conn.deliver(&big);
                        longest = longest.max(start.elapsed());
                        most = most.max(conn.outbox().queued());
                    }
                    (most, longest)
                })
            })
            .collect();
        let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        assert!(conn.is_broken());
        // Nothing is added to a full outbox (one reply over the limit goes in alone).
        let most = results.iter().map(|r| r.0).max().unwrap();
        assert!(most <= 1 << 20, "{most} bytes queued");
        // A writer waits for room while the client reads nothing for the
        // write timeout, then gives the client up: no writer is held much
        // beyond it (the bound is loose: a loaded machine may be slow to
        // wake a thread; the outbox's tests show the wait itself).
        let longest = results.iter().map(|r| r.1).max().unwrap();
        assert!(
            longest < WRITE_TIMEOUT * 40,
            "a writer was held {longest:?}"
        );
    }
}
