//! The router: the accept loop, and one blocking reader thread per client
//! connection that splits the stream into lines, parses them, and hands
//! each request with its [`Responder`] to the dispatch function it was
//! given (the method table's `route`).
//!
//! Limits enforced here: `max_clients` (one -32005 line, then a clean
//! close), `max_message_bytes` (-32009, the line is skipped, the connection
//! stays open) and `idle_timeout_s` (a silent connection with nothing in
//! flight, or a half-sent line, is closed).

use std::io::{self, BufReader, Read};
use std::net::{Shutdown as SocketShutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod connection;

use connection::{Batch, Connection, Registry, Responder};

use super::shutdown::Shutdown;
use super::stats::Stats;
use crate::config::ServerConfig;
use crate::logging::LogThrottle;
use crate::protocol::{null_id, parse_line, Frame, Line, LineReader, Parsed, Request, RpcError};

/// Where the router hands each request it has read.
pub type Dispatch = dyn Fn(Request, Responder) + Send + Sync;

/// What the router needs: the `[server]` limits, the open connections, the
/// counters, the lifecycle, and where requests go.
pub struct Router {
    /// `[server]` configuration.
    pub config: ServerConfig,
    /// The open connections.
    pub connections: Arc<Registry>,
    /// Counters (errors answered on the router thread).
    pub stats: Arc<Stats>,
    /// Lifecycle state.
    pub shutdown: Arc<Shutdown>,
    /// The method table's routing.
    pub dispatch: Box<Dispatch>,
}

/// Stack of a connection's reader thread: small, so 10,000 idle connections
/// cost little memory; enough for serde_json's nesting limit of 128.
const READER_STACK: usize = 128 * 1024;

/// Starts the accept loop of `listener` on its own thread.
pub fn spawn_acceptor(ctx: Arc<Router>, listener: TcpListener) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("blitz-accept".into())
        .spawn(move || accept_loop(&ctx, &listener))
        .expect("spawn the accept thread")
}

fn accept_loop(ctx: &Arc<Router>, listener: &TcpListener) {
    let mut next_number = 0u64;
    let warnings = LogThrottle::new(Duration::from_secs(10));
    for stream in listener.incoming() {
        if ctx.shutdown.is_stopping() {
            break;
        }
        match stream {
            Ok(stream) => {
                next_number += 1;
                start_connection(ctx, stream, next_number);
            }
            Err(e) => {
                if warnings.ready() {
                    log::warn!(
                        "accept failed: {e} (out of file descriptors? raise `ulimit -n`); at most one such line per {} s",
                        warnings.every_s()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn start_connection(ctx: &Arc<Router>, stream: TcpStream, number: u64) {
    let _ = stream.set_nodelay(true);
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let conn = Connection::new(
        number,
        stream,
        peer,
        ctx.stats.clone(),
        ctx.shutdown.clone(),
    );
    let conn = Arc::new(conn);
    let max = ctx.config.max_clients;
    if !ctx.connections.try_add(&conn, max as usize) {
        return refuse(conn, max);
    }
    let (reader_conn, reader_ctx) = (conn.clone(), ctx.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("blitz-conn-{number}"))
        .stack_size(READER_STACK)
        .spawn(move || read_requests(&reader_ctx, reader_conn));
    if let Err(e) = spawned {
        log::error!("cannot start a reader thread for {peer}: {e}; closing it");
        ctx.connections.remove(number);
        conn.write_error(&null_id(), &RpcError::too_many_connections(max));
        conn.close();
    }
}

/// `max_clients` reached: one -32005 line, then a clean close. The input
/// is drained (at most [`REFUSAL_DRAIN`] long, [`REFUSAL_DRAIN_BYTES`]) before
/// closing so the kernel sends FIN, not RST; beyond [`MAX_REFUSALS`] at once
/// the connection is closed right after the line.
fn refuse(conn: Arc<Connection>, max: u64) {
    conn.write_error(&null_id(), &RpcError::too_many_connections(max));
    let _ = conn.stream().shutdown(SocketShutdown::Write);
    if REFUSALS.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSALS {
        REFUSALS.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let drained = std::thread::Builder::new()
        .name("blitz-refuse".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            drain_input(conn.stream());
            REFUSALS.fetch_sub(1, Ordering::AcqRel);
        });
    if drained.is_err() {
        REFUSALS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Refused connections being drained right now.
static REFUSALS: AtomicUsize = AtomicUsize::new(0);
const MAX_REFUSALS: usize = 256;
const REFUSAL_DRAIN: Duration = Duration::from_secs(1);
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

fn drain_input(mut stream: &TcpStream) {
    let until = Instant::now() + REFUSAL_DRAIN;
    let mut sink = [0u8; 1024];
    let mut total = 0;
    while total < REFUSAL_DRAIN_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => total += n,
            _ => return,
        }
    }
}

fn read_requests(ctx: &Router, conn: Arc<Connection>) {
    let idle = ctx.config.idle_timeout_s;
    let _ = conn
        .stream()
        .set_read_timeout((idle > 0).then(|| Duration::from_secs(idle)));
    let max = ctx.config.max_message_bytes;
    let mut input = BufReader::with_capacity(16 * 1024, conn.stream());
    let mut lines = LineReader::new(max as usize);
    while !conn.is_broken() {
        match lines.read_line(&mut input) {
            Ok(Frame::Line(bytes)) => handle_line(ctx, &conn, &bytes),
            Ok(Frame::TooLarge) => conn.write_error(&null_id(), &RpcError::message_too_large(max)),
            Ok(Frame::Eof) => break,
            Err(e) if is_timeout(&e) => {
                if conn.in_flight() == 0 || lines.has_partial_line() {
                    log::debug!(
                        "connection {} ({}): idle for {idle} s, closing",
                        conn.number,
                        conn.peer
                    );
                    conn.close();
                    break;
                }
            }
            Err(e) => {
                log::debug!(
                    "connection {} ({}): read failed: {e}",
                    conn.number,
                    conn.peer
                );
                break;
            }
        }
    }
    ctx.connections.remove(conn.number);
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn handle_line(ctx: &Router, conn: &Arc<Connection>, bytes: &[u8]) {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match parse_line(bytes) {
        Err(e) => conn.write_error(&null_id(), &e),
        Ok(Line::Single(parsed)) => handle_parsed(ctx, conn, None, parsed),
        Ok(Line::Batch(items)) => {
            let batch = Batch::new(conn.clone(), items.len());
            for parsed in items {
                handle_parsed(ctx, conn, Some(&batch), parsed);
            }
        }
    }
}

fn handle_parsed(ctx: &Router, conn: &Arc<Connection>, batch: Option<&Arc<Batch>>, parsed: Parsed) {
    match parsed {
        Ok(mut request) => {
            let responder = Responder::new(conn, batch, request.id.take());
            (ctx.dispatch)(request, responder);
        }
        Err((id, error)) => {
            Responder::new(conn, batch, Some(id.unwrap_or_else(null_id))).reply(Err(error));
        }
    }
}
