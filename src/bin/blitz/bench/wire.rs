//! One load-generator connection's byte stream on its nonblocking socket:
//! plaintext, or TLS through a rustls [`ClientConnection`] driven sans-IO
//! (`read_tls` / `process_new_packets` / `reader()` on the way in,
//! `writer()` / `write_tls` on the way out). Records the socket did not
//! take stay in rustls: [`Wire::is_sending`] says so, and the engine then
//! polls for writability as it does for its own unsent bytes.

use std::io::{self, Read, Write};

use mio::net::TcpStream;
use rustls::ClientConnection;

/// A connection's socket and, over TLS, its session.
pub(super) struct Wire {
    socket: TcpStream,
    tls: Option<Box<ClientConnection>>,
}

impl Wire {
    /// `socket` (nonblocking), through `tls` if given (its handshake done or under way).
    pub(super) fn new(socket: TcpStream, tls: Option<ClientConnection>) -> Wire {
        Wire {
            socket,
            tls: tls.map(Box::new),
        }
    }

    /// The socket, for the poller.
    pub(super) fn socket(&mut self) -> &mut TcpStream {
        &mut self.socket
    }

    /// Shuts the socket both ways.
    pub(super) fn shutdown(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    /// Whether the connection speaks TLS.
    pub(super) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether TLS records wait for the socket.
    pub(super) fn is_sending(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Writes waiting TLS records until none is left or the socket is full.
    pub(super) fn send_records(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => send(tls, &mut self.socket),
            None => Ok(()),
        }
    }
}

/// Writes `tls`'s waiting records until none is left or `socket` is full.
fn send(tls: &mut ClientConnection, socket: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Read for Wire {
    /// Plaintext: what the socket has. TLS: decrypted bytes, reading
    /// records from the socket until some come (0: the server closed).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &mut self.tls else {
            return (&self.socket).read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if tls.read_tls(&mut self.socket)? == 0 {
                return Ok(0);
            }
            tls.process_new_packets().map_err(io::Error::other)?;
            send(tls, &mut self.socket)?;
        }
    }
}

impl Write for Wire {
    /// Plaintext: what the socket takes. TLS: what rustls takes once the
    /// older records are out (`WouldBlock` while they are not).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return (&self.socket).write(buf);
        }
        self.send_records()?;
        if self.is_sending() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let tls = self.tls.as_mut().expect("TLS");
        let n = tls.writer().write(buf)?;
        self.send_records()?;
        match n {
            0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_records()
    }
}
