//! Readying one connection before the measured phase: connect within
//! [`CONNECT_TIMEOUT`], log in when asked (`session.login {"user": …}` on
//! the line protocol, or over HTTP where the session key then goes in an
//! `Authorization: Bearer` header), and make the socket nonblocking.
//! Over TLS the handshake is done first, blocking, and the session goes on
//! with the socket into the [`Wire`].

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blitz::protocol::{self, code, ReplyOutcome};
use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use serde_json::Value;

use super::http_client::{http_body, http_post};
use super::wire::Wire;

/// How long to connect (and to log in) before counting a connection error.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection ready for the measured phase.
pub(super) struct Opened {
    /// The socket, nonblocking, and its TLS session if any.
    pub(super) stream: Wire,
    /// Bytes read past the login reply (normally none).
    pub(super) input: Vec<u8>,
    /// HTTP: `Authorization: Bearer …\r\n` (empty without a session).
    pub(super) bearer: String,
}

/// A blocking byte stream for the login: the socket, or TLS over it.
trait Blocking: Read + Write {}
impl<T: Read + Write> Blocking for T {}

/// Connects to `addr` (over TLS with `tls`: its configuration and the
/// server's host name), logs in as `user` if given (over HTTP with
/// `http`), and makes the socket nonblocking.
pub(super) fn open(
    addr: SocketAddr,
    tls: Option<(&Arc<ClientConfig>, &str)>,
    user: Option<&str>,
    http: bool,
) -> Result<Opened, Open> {
    let fail = |e: io::Error| Open::Failed(e.to_string());
    let mut stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(fail)?;
    stream.set_nodelay(true).map_err(fail)?;
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(fail)?;
    let mut session = tls
        .map(|(config, host)| handshake(config, host, &mut stream))
        .transpose()?;
    let mut socket = &stream;
    let io: &mut dyn Blocking = match &mut session {
        Some(session) => &mut rustls::Stream::new(session, &mut socket),
        None => &mut socket,
    };
    let (input, bearer) = match (user, http) {
        (Some(user), false) => (login(io, user)?, String::new()),
        (Some(user), true) => {
            let key = login_http(io, user)?;
            (Vec::new(), format!("Authorization: Bearer {key}\r\n"))
        }
        (None, _) => (Vec::new(), String::new()),
    };
    stream.set_read_timeout(None).map_err(fail)?;
    stream.set_nonblocking(true).map_err(fail)?;
    Ok(Opened {
        stream: Wire::new(TcpStream::from_std(stream), session),
        input,
        bearer,
    })
}

/// The TLS handshake with `host` on `stream`, blocking.
fn handshake(
    config: &Arc<ClientConfig>,
    host: &str,
    stream: &mut std::net::TcpStream,
) -> Result<ClientConnection, Open> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| Open::Refused(format!("TLS: {host:?} is not a host name ({e})")))?;
    let mut session = ClientConnection::new(config.clone(), name)
        .map_err(|e| Open::Refused(format!("TLS: {e}")))?;
    while session.is_handshaking() {
        session
            .complete_io(stream)
            .map_err(|e| Open::Failed(format!("TLS handshake: {e}")))?;
    }
    Ok(session)
}

/// Why a connection could not be readied.
pub(super) enum Open {
    /// The login was refused: the run stops (wrong setup, not load).
    Refused(String),
    /// Connecting or the login exchange failed: a connection error.
    Failed(String),
}

/// `session.login {"user": user}` on a fresh blocking connection.
/// Returns the bytes read after the reply.
fn login(stream: &mut dyn Blocking, user: &str) -> Result<Vec<u8>, Open> {
    let fail = |e: io::Error| Open::Failed(format!("login: {e}"));
    let line = serde_json::json!({
        "jsonrpc": "2.0", "id": 0, "method": "session.login", "params": {"user": user}
    });
    let mut out = line.to_string().into_bytes();
    out.push(b'\n');
    stream.write_all(&out).map_err(fail)?;
    // Nothing else is outstanding, so whatever follows the reply's newline
    // (nothing, normally) is kept for the event loop.
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    let newline = loop {
        if let Some(pos) = reply.iter().position(|&b| b == b'\n') {
            break pos;
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(Open::Failed(
                    "login: the server closed the connection".into(),
                ))
            }
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(e)),
        }
    };
    let rest = reply.split_off(newline + 1);
    match protocol::parse_reply(&reply).map(|r| r.outcome) {
        Ok(ReplyOutcome::Result(_)) => Ok(rest),
        Ok(ReplyOutcome::Error(e)) => Err(Open::Refused(format!(
            "session.login as {user:?} refused: {} {}{}",
            e.code,
            e.message,
            if e.code == code::METHOD_NOT_FOUND {
                " (this server has no sessions: run without --user)"
            } else {
                ""
            }
        ))),
        Err(bad) => Err(Open::Failed(format!(
            "login: the server sent {bad}: {}",
            String::from_utf8_lossy(&reply[..reply.len().min(200)])
        ))),
    }
}

/// `session.login {"user": user}` as one HTTP request on a fresh blocking
/// connection; returns the session key.
fn login_http(stream: &mut dyn Blocking, user: &str) -> Result<String, Open> {
    let fail = |e: io::Error| Open::Failed(format!("login: {e}"));
    let call = serde_json::json!({
        "jsonrpc": "2.0", "id": 0, "method": "session.login", "params": {"user": user}
    });
    let mut out = Vec::new();
    http_post("", call.to_string().as_bytes(), &mut out);
    stream.write_all(&out).map_err(fail)?;
    let mut input = Vec::new();
    let mut chunk = [0u8; 4096];
    let body = loop {
        match http_body(&input).map_err(Open::Failed)? {
            Some((_, body)) => break input[body].to_vec(),
            None => match stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(Open::Failed(
                        "login: the server closed the connection".into(),
                    ))
                }
                Ok(n) => input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fail(e)),
            },
        }
    };
    let reply: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match reply["result"]["session"].as_str() {
        Some(key) => Ok(key.to_string()),
        None => Err(Open::Refused(format!(
            "session.login as {user:?} over HTTP refused: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))),
    }
}
