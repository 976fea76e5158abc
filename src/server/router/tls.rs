//! The TLS session of one connection: a rustls [`ServerConnection`] behind
//! a lock, driven sans-IO by whichever thread reads or writes the socket.
//!
//! - Reading (the event loop only): the loop reads ciphertext from the
//!   socket itself (one read per turn, as for plaintext) and hands it to
//!   [`TlsSession::receive`], which feeds rustls, runs the handshake or
//!   decrypts, and appends the plaintext for the connection's framing.
//! - Writing (a worker or the event loop, one at a time: the outbox lets
//!   only one thread write): [`TlsSession::writer`] is the `Write` the
//!   outbox flushes into; it encrypts the replies and writes the records
//!   to the socket. Records the socket did not take stay in rustls (at most
//!   its buffer limit); [`TlsSession::send`] writes them when the socket is
//!   writable again, and the handshake's own messages, alerts and session
//!   tickets the same way.
//!
//! The lock is held for one feed or one write, never across a wait.
//!
//! The session counts how its handshake ended (`/metrics`'
//! `blitz_tls_handshakes_total`): done or failed in
//! [`TlsSession::receive`], which sees it end, and timed out when the
//! event loop says so ([`TlsSession::timed_out`]).

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use parking_lot::Mutex;
use rustls::ServerConnection;

use crate::server::metrics::tls::HandshakeOutcome;
use crate::server::stats::Stats;

/// The TLS state of one connection.
pub struct TlsSession {
    state: Mutex<ServerConnection>,
    /// When the connection was accepted (for the handshake timeout).
    started: Instant,
    /// Where the handshake's outcome is counted.
    stats: Arc<Stats>,
}

/// What [`TlsSession::receive`] found besides the plaintext.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// The peer may send more.
    Open,
    /// The peer sent its close_notify: no more plaintext will come.
    Closed,
}

impl TlsSession {
    /// The session of a connection accepted now, with the server side of
    /// its handshake, counting the handshake's outcome in `stats`.
    pub fn new(state: ServerConnection, stats: Arc<Stats>) -> TlsSession {
        TlsSession {
            state: Mutex::new(state),
            started: Instant::now(),
            stats,
        }
    }

    /// Counts the handshake as timed out (the loop closes the connection).
    pub fn timed_out(&self) {
        self.stats.metrics.tls().count(HandshakeOutcome::Timeout);
    }

    /// When the connection was accepted.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.state.lock().is_handshaking()
    }

    /// Whether records wait to be written to the socket.
    pub fn wants_write(&self) -> bool {
        self.state.lock().wants_write()
    }

    /// Feeds `cipher` (read from the socket) to rustls and appends the
    /// plaintext it yields to `plain`. An error (a failed handshake, a
    /// plaintext client, a corrupt record) leaves an alert queued for
    /// [`TlsSession::send`]; the connection is to be closed.
    pub fn receive(&self, cipher: &[u8], plain: &mut Vec<u8>) -> Result<Received, String> {
        let mut state = self.state.lock();
        let handshaking = state.is_handshaking();
        let fed = feed(&mut state, cipher, plain);
        match (&fed, handshaking, state.is_handshaking()) {
            (Err(_), _, true) => self.stats.metrics.tls().count(HandshakeOutcome::Failed),
            (_, true, false) => self.stats.metrics.tls().done(self.started.elapsed()),
            _ => {}
        }
        fed
    }

    /// Writes queued records to `socket` until none is left (true) or the
    /// socket is full (false).
    pub fn send(&self, socket: &TcpStream) -> io::Result<bool> {
        send_records(&mut self.state.lock(), socket)
    }

    /// The `Write` that encrypts into this session and sends to `socket`.
    pub fn writer<'a>(&'a self, socket: &'a TcpStream) -> TlsWriter<'a> {
        TlsWriter {
            session: self,
            socket,
        }
    }

    /// Queues a close_notify and tries once to send it (a clean close).
    pub fn close(&self, socket: &TcpStream) {
        let mut state = self.state.lock();
        state.send_close_notify();
        let _ = send_records(&mut state, socket);
    }
}

/// Feeds `cipher` to `state` and appends the plaintext it yields to `plain`.
fn feed(
    state: &mut ServerConnection,
    mut cipher: &[u8],
    plain: &mut Vec<u8>,
) -> Result<Received, String> {
    let mut received = Received::Open;
    while !cipher.is_empty() {
        if state.read_tls(&mut cipher).map_err(|e| e.to_string())? == 0 {
            break;
        }
        let io = state.process_new_packets().map_err(|e| e.to_string())?;
        let n = io.plaintext_bytes_to_read();
        if n > 0 {
            let at = plain.len();
            plain.resize(at + n, 0);
            state
                .reader()
                .read_exact(&mut plain[at..])
                .map_err(|e| e.to_string())?;
        }
        if io.peer_has_closed() {
            received = Received::Closed;
        }
    }
    Ok(received)
}

/// Writes `state`'s records until none is left (true) or the socket is full.
fn send_records(state: &mut ServerConnection, mut socket: &TcpStream) -> io::Result<bool> {
    while state.wants_write() {
        match state.write_tls(&mut socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Plaintext in, records out to the socket (see the module doc).
pub struct TlsWriter<'a> {
    session: &'a TlsSession,
    socket: &'a TcpStream,
}

impl Write for TlsWriter<'_> {
    /// Takes what rustls accepts of `buf` once the older records are out;
    /// `WouldBlock` when the socket is full or rustls' buffer is.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.session.state.lock();
        if !send_records(&mut state, self.socket)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = state.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        send_records(&mut state, self.socket)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        send_records(&mut self.session.state.lock(), self.socket).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::tls::{ServerTls, TlsFiles};
    use crate::test_certs::{temp_dir, TestCa};

    fn session() -> TlsSession {
        let ca = TestCa::new("blitz test CA");
        let dir = temp_dir("session"); // read by ServerTls::load below
        let (cert, key) = ca.leaf("s", &["localhost"]).write(&dir, "s");
        let files = TlsFiles {
            cert,
            key,
            client_ca: None,
        };
        TlsSession::new(
            ServerTls::load(files).unwrap().new_connection(),
            Arc::new(Stats::new()),
        )
    }

    #[test]
    fn plaintext_fails_the_handshake_and_leaves_an_alert_to_send() {
        let session = session();
        let mut plain = Vec::new();
        let line = b"{\"jsonrpc\":\"2.0\",\"method\":\"sys.ping\",\"id\":1}\n";
        assert!(session.receive(line, &mut plain).is_err());
        assert!(plain.is_empty(), "nothing of it reaches the framing");
        assert!(session.wants_write(), "rustls' alert");
    }

    #[test]
    fn a_new_session_is_handshaking_and_has_nothing_to_send() {
        let session = session();
        assert!(session.is_handshaking());
        assert!(!session.wants_write());
        let mut plain = Vec::new();
        assert_eq!(session.receive(b"", &mut plain), Ok(Received::Open));
    }
}
