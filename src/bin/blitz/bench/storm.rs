//! `blitz bench --handshakes`: a storm of new TLS connections. Each
//! connection connects, handshakes (full: the client keeps no session, so
//! the server signs every time; `--resume` keeps rustls' session store and
//! resumes instead), sends one `sys.ping`, reads its reply, and closes with
//! a close_notify; its slot then opens the next connection at once. Every
//! thread keeps its share of `connections` in flight on its own mio loop,
//! rustls driven sans-IO as the server drives it, so the generator costs
//! about what the server does per handshake and is not the limit.
//!
//! The close: the client sends close_notify and waits for the server's
//! FIN before closing, so TIME_WAIT stays on the server's side (its port
//! is the listener's) and a storm of tens of thousands of connections does
//! not use up the client's ephemeral ports.
//!
//! The report: handshakes completed per second, their kinds, failures, the
//! time from connect to the ping's reply (percentiles), and CPU per
//! handshake of the server (all threads, and the router's alone: its
//! acceptor and event loops, where handshakes run) and of the generator.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blitz::protocol::ReplyOutcome;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind};
use serde::Serialize;
use slab::Slab;

use super::cpu::{own_cpu_seconds, process_ticks, thread_ticks, ticks_per_second};
use super::report::Latency;

/// The router's threads, where the server's handshakes run.
const ROUTER_THREADS: [&str; 2] = ["blitz-router", "blitz-accept"];

/// What to run.
pub(super) struct Storm {
    /// The server and the name its certificate is checked against.
    pub(super) addr: SocketAddr,
    /// The host name of `--server`.
    pub(super) host: String,
    /// The client's TLS configuration (`--ca` / `--tls`).
    pub(super) tls: Arc<ClientConfig>,
    /// Keep sessions and resume them (default: every handshake full).
    pub(super) resume: bool,
    /// Connections in flight, all threads together.
    pub(super) in_flight: usize,
    /// Event-loop threads.
    pub(super) threads: usize,
    /// How long to run.
    pub(super) duration: Duration,
    /// The server's pid, for its CPU per handshake.
    pub(super) server_pid: Option<u32>,
}

/// What a storm measured (`--json` prints it as it is).
#[derive(Debug, Default, Serialize)]
pub(super) struct StormReport {
    /// Always `"handshakes"`.
    pub mode: String,
    /// Connections in flight.
    pub connections: usize,
    /// Event-loop threads.
    pub threads: usize,
    /// The measured time, s.
    pub elapsed_s: f64,
    /// Connections that handshook, were answered and closed.
    pub handshakes: u64,
    /// `handshakes` per second.
    pub handshakes_per_s: f64,
    /// Of them, full handshakes.
    pub full: u64,
    /// Of them, resumed handshakes.
    pub resumed: u64,
    /// Connections that failed (connect, handshake, or no reply).
    pub failed: u64,
    /// The first failure, for the report.
    pub first_failure: Option<String>,
    /// From connect to the ping's reply.
    pub latency: Latency,
    /// Server CPU (all threads) per handshake, µs.
    pub server_us_per_handshake: Option<f64>,
    /// Server router CPU (acceptor and event loops) per handshake, µs.
    pub router_us_per_handshake: Option<f64>,
    /// This generator's CPU per handshake, µs.
    pub client_us_per_handshake: f64,
}

impl StormReport {
    /// The text report.
    pub(super) fn to_text(&self) -> String {
        let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} µs"));
        let l = &self.latency;
        format!(
            "handshakes: {:.0}/s ({} in {:.1} s: {} full, {} resumed; {} failed{}) \
             from {} connections in flight on {} threads\n\
             connect to reply: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n\
             CPU per handshake: server {}, its router {}, this generator {:.0} µs\n",
            self.handshakes_per_s,
            self.handshakes,
            self.elapsed_s,
            self.full,
            self.resumed,
            self.failed,
            self.first_failure
                .as_ref()
                .map_or(String::new(), |f| format!(", first: {f}")),
            self.connections,
            self.threads,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            us(self.server_us_per_handshake),
            us(self.router_us_per_handshake),
            self.client_us_per_handshake,
        )
    }
}

/// Runs the storm and measures it.
pub(super) fn run(storm: &Storm) -> Result<StormReport, String> {
    let name = ServerName::try_from(storm.host.clone())
        .map_err(|e| format!("TLS: {:?} is not a host name ({e})", storm.host))?;
    let mut config = (*storm.tls).clone();
    if !storm.resume {
        config.resumption = Resumption::disabled();
    }
    let config = Arc::new(config);
    let threads = storm.threads.clamp(1, storm.in_flight.max(1));
    let server = |pid: Option<u32>| pid.and_then(process_ticks);
    let router = |pid: Option<u32>| pid.and_then(|p| thread_ticks(p, &ROUTER_THREADS));
    let (server0, router0, client0) = (
        server(storm.server_pid),
        router(storm.server_pid),
        own_cpu_seconds(),
    );
    let t0 = Instant::now();
    let until = t0 + storm.duration;
    let mut handles = Vec::new();
    for t in 0..threads {
        let slots = (t..storm.in_flight).step_by(threads).count();
        let plan = Plan {
            addr: storm.addr,
            name: name.clone(),
            config: config.clone(),
            slots,
            until,
        };
        let handle = std::thread::Builder::new()
            .name(format!("storm-{t}"))
            .spawn(move || plan.run())
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        handles.push(handle);
    }
    let mut total = Tally::new();
    for h in handles {
        total.merge(h.join().expect("a storm thread panicked")?);
    }
    let elapsed_s = t0.elapsed().as_secs_f64();
    let n = total.full + total.resumed;
    let per = |before: Option<u64>, after: Option<u64>| {
        let (b, a) = (before?, after?);
        (n > 0).then(|| a.saturating_sub(b) as f64 / ticks_per_second() * 1e6 / n as f64)
    };
    Ok(StormReport {
        mode: "handshakes".into(),
        connections: storm.in_flight,
        threads,
        elapsed_s,
        handshakes: n,
        handshakes_per_s: n as f64 / elapsed_s,
        full: total.full,
        resumed: total.resumed,
        failed: total.failed,
        first_failure: total.first_failure,
        latency: Latency::of(&total.latency),
        server_us_per_handshake: per(server0, server(storm.server_pid)),
        router_us_per_handshake: per(router0, router(storm.server_pid)),
        client_us_per_handshake: if n > 0 {
            (own_cpu_seconds() - client0) * 1e6 / n as f64
        } else {
            0.0
        },
    })
}

/// What one thread counted.
struct Tally {
    full: u64,
    resumed: u64,
    failed: u64,
    first_failure: Option<String>,
    /// Connect to reply, µs.
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            full: 0,
            resumed: 0,
            failed: 0,
            first_failure: None,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        }
    }

    fn merge(&mut self, other: Tally) {
        self.full += other.full;
        self.resumed += other.resumed;
        self.failed += other.failed;
        self.first_failure = self.first_failure.take().or(other.first_failure);
        let _ = self.latency.add(&other.latency);
    }

    fn fail(&mut self, why: String) {
        self.failed += 1;
        self.first_failure.get_or_insert(why);
    }
}

/// One thread's part of the storm.
struct Plan {
    addr: SocketAddr,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
    slots: usize,
    until: Instant,
}

/// One connection in flight.
struct Conn {
    socket: TcpStream,
    tls: ClientConnection,
    started: Instant,
    /// The ping's reply arrived; close_notify sent, waiting for the FIN.
    answered: bool,
    plain: Vec<u8>,
}

/// Where a connection stands after a step.
enum Step {
    /// Waiting for the socket.
    Pending,
    /// Answered and closed by the server: done.
    Done,
    /// Failed: why.
    Failed(String),
}

const PING: &[u8] = b"{\"jsonrpc\":\"2.0\",\"method\":\"sys.ping\",\"id\":1}\n";

impl Plan {
    fn run(self) -> Result<Tally, String> {
        let mut poll = Poll::new().map_err(|e| format!("cannot make a poll: {e}"))?;
        let mut events = Events::with_capacity(1024);
        let mut conns: Slab<Conn> = Slab::with_capacity(self.slots);
        let mut tally = Tally::new();
        let mut buf = vec![0u8; 16 * 1024];
        while Instant::now() < self.until {
            while conns.len() < self.slots {
                if let Err(e) = self.open(&mut poll, &mut conns) {
                    tally.fail(e);
                    std::thread::sleep(Duration::from_millis(1));
                    break;
                }
            }
            if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(10))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(format!("epoll_wait failed: {e}"));
                }
            }
            for event in events.iter() {
                let t = event.token().0;
                let Some(conn) = conns.get_mut(t) else {
                    continue;
                };
                match step(conn, &mut buf) {
                    Step::Pending => continue,
                    Step::Done if !is_result(&conn.plain) => {
                        let line = String::from_utf8_lossy(&conn.plain);
                        tally.fail(format!("the server answered {}", line.trim_end()));
                    }
                    Step::Done => match conn.tls.handshake_kind() {
                        Some(HandshakeKind::Resumed) => tally.resumed += 1,
                        _ => tally.full += 1,
                    },
                    Step::Failed(why) => tally.fail(why),
                }
                let done = conns.remove(t);
                if Instant::now() <= self.until {
                    let us = done.started.elapsed().as_micros() as u64;
                    let _ = tally.latency.record(us.max(1));
                }
                let mut socket = done.socket;
                let _ = poll.registry().deregister(&mut socket);
            }
        }
        Ok(tally)
    }

    /// Starts one connection: a nonblocking connect, the ping queued in
    /// rustls behind the handshake.
    fn open(&self, poll: &mut Poll, conns: &mut Slab<Conn>) -> Result<(), String> {
        let mut socket =
            TcpStream::connect(self.addr).map_err(|e| format!("connect {}: {e}", self.addr))?;
        let _ = socket.set_nodelay(true);
        let mut tls = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(|e| format!("TLS: {e}"))?;
        tls.writer()
            .write_all(PING)
            .map_err(|e| format!("TLS: {e}"))?;
        let entry = conns.vacant_entry();
        poll.registry()
            .register(
                &mut socket,
                Token(entry.key()),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("cannot poll a socket: {e}"))?;
        entry.insert(Conn {
            socket,
            tls,
            started: Instant::now(),
            answered: false,
            plain: Vec::new(),
        });
        Ok(())
    }
}

/// Whether `line` is a JSON-RPC result (not an error, not garbage).
fn is_result(line: &[u8]) -> bool {
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    matches!(
        blitz::protocol::parse_reply(&line[..end]).map(|r| r.outcome),
        Ok(ReplyOutcome::Result(_))
    )
}

/// Moves a connection on as far as its socket allows (mio is
/// edge-triggered: read and write until the socket would block).
fn step(conn: &mut Conn, buf: &mut [u8]) -> Step {
    match conn.socket.take_error() {
        Ok(None) => {}
        Ok(Some(e)) | Err(e) => return Step::Failed(format!("connect: {e}")),
    }
    loop {
        while conn.tls.wants_write() {
            match conn.tls.write_tls(&mut conn.socket) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Step::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Step::Failed(format!("write: {e}")),
            }
        }
        match conn.tls.read_tls(&mut conn.socket) {
            Ok(0) if conn.answered => return Step::Done,
            Ok(0) => return Step::Failed("the server closed before its reply".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Pending,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Step::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) if conn.answered => return Step::Done, // a reset after the reply
            Err(e) => return Step::Failed(format!("read: {e}")),
        }
        if let Err(e) = conn.tls.process_new_packets() {
            return Step::Failed(format!("TLS: {e}"));
        }
        loop {
            match conn.tls.reader().read(buf) {
                Ok(0) => break,
                Ok(n) => conn.plain.extend_from_slice(&buf[..n]),
                Err(_) => break, // WouldBlock: no plaintext yet; EOF: below
            }
        }
        if !conn.answered && conn.plain.contains(&b'\n') {
            conn.answered = true;
            conn.tls.send_close_notify();
        }
    }
}
