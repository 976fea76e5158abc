//! The HTTP listener on `metrics.listen`: `GET /metrics`, `/health/live`
//! and `/health/ready`, served by one housekeeping thread on a mio event
//! loop (as the router's loops are) over nonblocking sockets.
//!
//! Each connection carries one short exchange: the request is framed by
//! [`crate::protocol::http`], answered with `Connection: close`, and the
//! connection is closed once the response is written. The loop serves many
//! connections at once, so a slow or silent client holds only its own
//! connection, and that for at most [`EXCHANGE_DEADLINE`]. About once a
//! second the loop calls a tick, which the server uses to probe the
//! database so that `/health/ready` follows an outage even when no call is
//! running.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::json;
use slab::Slab;

use crate::protocol::http::{self, Event, RequestReader, Response};

/// The content type of the OpenMetrics text format, which prometheus-client writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the listener serves, as closures over the server's state (so this
/// module needs no server context).
pub struct Endpoints {
    /// The body of `GET /metrics`.
    pub metrics: Box<dyn Fn() -> String + Send>,
    /// `GET /health/ready`: `Ok` when ready, else the reason.
    pub ready: Box<dyn Fn() -> Result<(), String> + Send>,
    /// Called about once a second (the database probe).
    pub tick: Box<dyn FnMut() + Send>,
}

/// How often [`Endpoints::tick`] is called.
pub const TICK: Duration = Duration::from_secs(1);

/// How long one connection may take to send its request and read the reply.
pub const EXCHANGE_DEADLINE: Duration = Duration::from_secs(2);

/// Connections served at once; one more is closed at once.
const MAX_CONNECTIONS: usize = 64;

/// The largest request body read (the listener serves only GET).
const MAX_BODY: usize = 64 * 1024;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);

/// The running listener; [`MetricsListener::stop`] ends it.
pub struct MetricsListener {
    waker: Waker,
    addr: SocketAddr,
    thread: JoinHandle<()>,
}

impl MetricsListener {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        if self.waker.wake().is_ok() {
            let _ = self.thread.join();
        }
    }
}

/// Serves `endpoints` on `listener` from a thread of its own.
pub fn spawn_listener(
    listener: std::net::TcpListener,
    endpoints: Endpoints,
) -> io::Result<MetricsListener> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let mut event_loop = EventLoop {
        poll,
        listener,
        exchanges: Slab::new(),
        endpoints,
    };
    let thread = std::thread::Builder::new()
        .name("blitz-metrics".into())
        .spawn(move || event_loop.run())?;
    Ok(MetricsListener {
        waker,
        addr,
        thread,
    })
}

/// The listener's loop: its socket, its open exchanges, what it serves.
struct EventLoop {
    poll: Poll,
    listener: TcpListener,
    exchanges: Slab<Exchange>,
    endpoints: Endpoints,
}

impl EventLoop {
    /// Serves until woken by [`MetricsListener::stop`].
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        let mut next_tick = Instant::now();
        loop {
            if Instant::now() >= next_tick {
                (self.endpoints.tick)();
                next_tick = Instant::now() + TICK;
            }
            let wake_at = self
                .earliest_deadline()
                .map_or(next_tick, |d| d.min(next_tick));
            let timeout = wake_at.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("the metrics listener stops: {e}");
                    return;
                }
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => return,
                    LISTENER => self.accept(),
                    Token(key) => self.advance(key),
                }
            }
            self.close_expired();
        }
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.exchanges.iter().map(|(_, x)| x.deadline).min()
    }

    /// Takes every pending connection; beyond [`MAX_CONNECTIONS`] they are closed.
    fn accept(&mut self) {
        loop {
            let mut stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("metrics listener: accept failed: {e}");
                    return;
                }
            };
            if self.exchanges.len() >= MAX_CONNECTIONS {
                continue; // dropped: closed at once
            }
            let entry = self.exchanges.vacant_entry();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .register(&mut stream, Token(entry.key()), interest)
                .is_ok()
            {
                entry.insert(Exchange::new(stream));
            }
        }
    }

    /// Reads, answers and writes what connection `key` is ready for;
    /// closes it when its exchange is over.
    fn advance(&mut self, key: usize) {
        let Some(exchange) = self.exchanges.get_mut(key) else {
            return;
        };
        if exchange.advance(&self.endpoints) == Progress::Done {
            self.close(key);
        }
    }

    fn close_expired(&mut self) {
        let now = Instant::now();
        let expired: Vec<usize> = self
            .exchanges
            .iter()
            .filter(|(_, x)| x.deadline <= now)
            .map(|(key, _)| key)
            .collect();
        expired.into_iter().for_each(|key| self.close(key));
    }

    fn close(&mut self, key: usize) {
        let mut exchange = self.exchanges.remove(key);
        let _ = self.poll.registry().deregister(&mut exchange.stream);
        let _ = exchange.stream.shutdown(std::net::Shutdown::Write);
    }
}

/// Whether an exchange goes on.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Waiting,
    Done,
}

/// One connection: its request as read so far, then its response.
struct Exchange {
    stream: TcpStream,
    reader: RequestReader,
    input: Vec<u8>,
    /// Bytes to write (a `100 Continue`, then the response).
    output: Vec<u8>,
    /// Whether `output` holds the whole response.
    answered: bool,
    deadline: Instant,
}

impl Exchange {
    fn new(stream: TcpStream) -> Exchange {
        Exchange {
            stream,
            reader: RequestReader::new(MAX_BODY),
            input: Vec::new(),
            output: Vec::new(),
            answered: false,
            deadline: Instant::now() + EXCHANGE_DEADLINE,
        }
    }

    /// Reads what has come, answers a whole request, writes what it can.
    fn advance(&mut self, endpoints: &Endpoints) -> Progress {
        if !self.answered {
            let input = self.read();
            self.frame(endpoints);
            if !self.answered && input == Progress::Done {
                return Progress::Done; // closed or failed before a whole request
            }
        }
        match self.write() {
            Progress::Waiting => Progress::Waiting,
            Progress::Done if self.answered => Progress::Done,
            Progress::Done => Progress::Waiting,
        }
    }

    /// Reads until the socket would block; `Done` when the peer closed its
    /// side or the read failed (what came before is still framed).
    fn read(&mut self) -> Progress {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Progress::Done,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Progress::Done,
            }
        }
    }

    /// Frames the input read so far; a whole request (or a malformed one)
    /// is answered into `output`.
    fn frame(&mut self, endpoints: &Endpoints) {
        loop {
            let (used, event) = self.reader.next(&self.input);
            self.input.drain(..used);
            let response = match event {
                None => return,
                Some(Event::Continue) => {
                    self.output.extend_from_slice(http::CONTINUE);
                    continue;
                }
                Some(Event::Request(request)) => route(&request.method, request.path(), endpoints),
                Some(Event::Reject(r)) => Response::new(
                    r.status,
                    "text/plain; charset=utf-8",
                    format!("{}\n", r.detail),
                ),
            };
            self.output
                .extend_from_slice(&response.keep_alive(false).to_bytes());
            self.answered = true;
            return;
        }
    }

    /// Writes `output` until it is empty (`Done`) or the socket would block.
    fn write(&mut self) -> Progress {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return Progress::Done,
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.output.clear();
                    self.answered = true; // nothing more can reach the peer
                    return Progress::Done;
                }
            }
        }
        Progress::Done
    }
}

/// The response to `method path`.
fn route(method: &str, path: &str, endpoints: &Endpoints) -> Response {
    if method != "GET" {
        return Response::new(
            405,
            "text/plain; charset=utf-8",
            format!("method {method} not allowed: GET only\n"),
        )
        .header("Allow", "GET");
    }
    let json = |status: u16, body: serde_json::Value| {
        Response::new(status, "application/json", format!("{body}\n"))
    };
    match path {
        "/metrics" => Response::new(200, CONTENT_TYPE, (endpoints.metrics)()),
        "/health/live" => json(200, json!({"live": true})),
        "/health/ready" => match (endpoints.ready)() {
            Ok(()) => json(200, json!({"ready": true})),
            Err(reason) => json(503, json!({"ready": false, "reason": reason})),
        },
        _ => Response::new(
            404,
            "text/plain; charset=utf-8",
            format!("no such path {path}: GET /metrics, /health/live or /health/ready\n"),
        ),
    }
}
