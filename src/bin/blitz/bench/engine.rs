//! One event-loop thread of `blitz bench`: it opens its share of the
//! connections, waits at the barrier for the others, then sends calls and
//! reads replies on nonblocking sockets until the stop rule says done and
//! the replies still awaited are in (or the drain gives up on them).
//!
//! # Loops
//!
//! - **Closed loop** (the default): every connection has exactly one call
//!   outstanding and sends the next as soon as the reply arrives, like
//!   `pgbench`. Throughput is whatever the server sustains.
//! - **Open loop** (`rate`): calls leave on a fixed schedule whatever the
//!   replies do. Call k of the run is due at `t0 + k / rate` on connection
//!   `k mod connections`, so a connection pipelines when replies are slower
//!   than its share of the schedule (the server matches replies by id). Each
//!   latency is measured from the *intended* send time, so a stalled server
//!   (or a client late on its own schedule) shows up in the percentiles
//!   instead of silently lowering the offered load (no coordinated omission).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::connect::{open, Open, Opened};
use super::http_client::{http_body, http_post};
use super::options::{Options, Stop};
use super::poller::Poller;
use super::progress::Shared;
use super::requests::{parse_reply, Outcome, RequestTemplate};
use super::tally::{micros, ThreadResult};
use super::wire::Wire;

/// Longest wait for replies still outstanding once sending stopped, beyond
/// the calls' own deadline.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Deadline assumed for the drain when calls carry none (the server's
/// default `invocation.default_timeout_ms`).
const DEFAULT_DEADLINE: Duration = Duration::from_millis(blitz::Config::DEFAULT_TIMEOUT_MS);

/// Longest single wait, so the stop rules are looked at regularly.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// What a thread is given.
pub(super) struct ThreadPlan {
    pub(super) opts: Options,
    pub(super) addrs: Vec<SocketAddr>,
    /// The host name of each of `addrs`, as in `--server` (TLS checks it).
    pub(super) names: Vec<String>,
    /// Global indices of this thread's connections.
    pub(super) indices: Vec<usize>,
    pub(super) request: RequestTemplate,
    pub(super) shared: Arc<Shared>,
    pub(super) barrier: Arc<Barrier>,
}

/// One client connection of a thread.
struct Conn {
    stream: Wire,
    /// Bytes read and not yet split into lines.
    input: Vec<u8>,
    /// Bytes to send; `written` of them are gone.
    output: Vec<u8>,
    written: usize,
    /// Calls sent and not answered: id and the time the latency counts from.
    pending: VecDeque<(u64, Instant)>,
    next_id: u64,
    /// Open loop: when this connection's next call is due.
    due: Instant,
    /// Whether the poller also reports writability (output is stuck).
    waiting_writable: bool,
    alive: bool,
    /// This connection's draw of params (forked from the thread's generator).
    rng: fastrand::Rng,
    /// HTTP: `Authorization: Bearer …\r\n` (empty without a session).
    bearer: String,
}

impl Conn {
    /// A readied connection with nothing sent yet.
    fn new(opened: Opened) -> Conn {
        Conn {
            stream: opened.stream,
            input: opened.input,
            output: Vec::with_capacity(4096),
            written: 0,
            pending: VecDeque::new(),
            next_id: 1,
            due: Instant::now(),
            waiting_writable: false,
            alive: true,
            rng: fastrand::Rng::new(),
            bearer: opened.bearer,
        }
    }
}

impl ThreadPlan {
    /// Opens this thread's connections, meets the other threads at the
    /// barrier, then runs the event loop until the run is over.
    pub(super) fn run(self) -> ThreadResult {
        let mut result = ThreadResult::new();
        let mut conns = Vec::with_capacity(self.indices.len());
        for &i in &self.indices {
            let addr = self.addrs[i % self.addrs.len()];
            let name = &self.names[i % self.names.len()];
            let tls = self.opts.tls.as_ref().map(|config| (config, name.as_str()));
            match open(addr, tls, self.opts.user.as_deref(), self.opts.http) {
                Ok(opened) => {
                    self.shared.ready.fetch_add(1, Ordering::AcqRel);
                    conns.push(Conn::new(opened));
                }
                Err(Open::Refused(m)) => {
                    result.login_refused.get_or_insert(m);
                }
                Err(Open::Failed(m)) => {
                    result.connection_error(&self.shared, format!("connection to {addr}: {m}"))
                }
            }
        }
        self.barrier.wait();
        if result.login_refused.is_some() {
            return result;
        }
        let t0 = *self.shared.t0.get_or_init(Instant::now);
        self.event_loop(&mut conns, t0, &mut result);
        result
    }

    /// Sends and reads on `conns` from `t0` until nothing more will be
    /// sent and nothing is awaited, or the drain after sending gives up.
    fn event_loop(&self, conns: &mut [Conn], t0: Instant, result: &mut ThreadResult) {
        let open_loop = self.opts.rate.map(|rate| {
            let n = self.opts.connections as f64;
            // Connection i sends at t0 + (i + j·n) / rate, j = 0, 1, …
            Duration::from_secs_f64(n / rate)
        });
        if let Some(rate) = self.opts.rate {
            for (c, &i) in conns.iter_mut().zip(&self.indices) {
                c.due = t0 + Duration::from_secs_f64(i as f64 / rate);
            }
        }
        let end = match self.opts.stop {
            Stop::Duration(d) => Some(t0 + d),
            Stop::Calls(_) => None,
        };
        let deadline = self
            .opts
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_DEADLINE);
        let mut poller = match Poller::new(conns.iter_mut().map(|c| c.stream.socket())) {
            Ok(p) => p,
            Err(e) => {
                for c in conns.iter_mut() {
                    self.broken(c, result, format!("cannot poll: {e}"));
                }
                return;
            }
        };
        let mut drain_until: Option<Instant> = None;
        let mut ready = Vec::with_capacity(conns.len());
        let mut line_buf = Vec::new();
        // Open loop: this thread's connections fall due in index order, one
        // period apart each, so the next due one is always at the cursor.
        let mut cursor = 0;
        let mut first = true;
        loop {
            let now = Instant::now();
            let sending = end.is_none_or(|e| now < e) && self.shared.tickets_left();
            if sending {
                match open_loop {
                    // Closed loop: one call on every connection to begin
                    // with; afterwards each reply sends the next call.
                    None if first => {
                        for (i, c) in conns.iter_mut().enumerate() {
                            self.send_next(c, i, &mut poller, now, result);
                        }
                    }
                    None => {}
                    Some(period) => {
                        self.send_due(conns, &mut cursor, period, &mut poller, now, result)
                    }
                }
                first = false;
            }
            // Done when nothing more will be sent and nothing is awaited.
            let awaiting = conns.iter().any(|c| c.alive && !c.pending.is_empty());
            let any_alive = conns.iter().any(|c| c.alive);
            let sending = sending && self.shared.tickets_left();
            if (!sending && !awaiting) || !any_alive {
                break;
            }
            if !sending {
                let until = *drain_until.get_or_insert(now + deadline + DRAIN_GRACE);
                if now >= until {
                    for c in conns.iter_mut().filter(|c| c.alive) {
                        result.lost += c.pending.len() as u64;
                        c.pending.clear();
                    }
                    break;
                }
            }
            // Wait for replies, writability, or the next due time.
            let wake = match (sending, open_loop) {
                (true, Some(_)) => Some(conns[cursor].due),
                (true, None) => end,
                (false, _) => drain_until,
            };
            let timeout = wake.map_or(MAX_WAIT, |w| {
                w.saturating_duration_since(Instant::now()).min(MAX_WAIT)
            });
            poller.wait(timeout, &mut ready);
            for &(i, readable, writable) in &ready {
                let c = &mut conns[i];
                if !c.alive {
                    // Broken earlier: stop hearing about it.
                    poller.remove(c.stream.socket());
                    continue;
                }
                if writable {
                    self.flush_or_break(c, i, &mut poller, result);
                }
                if readable && c.alive {
                    let answered = self.read_replies(c, result, deadline, &mut line_buf);
                    if answered && open_loop.is_none() && c.alive && c.pending.is_empty() {
                        let now = Instant::now();
                        if end.is_none_or(|e| now < e) {
                            self.send_next(c, i, &mut poller, now, result);
                        }
                    }
                }
            }
        }
    }

    /// Open loop: sends every call that is due, connection by connection
    /// from the `cursor` on, each `period` after the last on its connection.
    fn send_due(
        &self,
        conns: &mut [Conn],
        cursor: &mut usize,
        period: Duration,
        poller: &mut Poller,
        now: Instant,
        result: &mut ThreadResult,
    ) {
        for _ in 0..conns.len() {
            if !conns[*cursor].alive {
                *cursor = (*cursor + 1) % conns.len();
                continue;
            }
            let c = &mut conns[*cursor];
            if c.due > now || !self.shared.take_ticket() {
                break;
            }
            // Behind schedule by more than a whole round:
            // catch up call by call, at once, on this connection.
            while c.due <= now {
                let due = c.due;
                c.due += period;
                self.queue(c, due, now, result);
                if c.due <= now && !self.shared.take_ticket() {
                    break;
                }
            }
            self.flush_or_break(c, *cursor, poller, result);
            *cursor = (*cursor + 1) % conns.len();
        }
    }

    /// Closed loop: sends the connection's next call if calls are left.
    fn send_next(
        &self,
        c: &mut Conn,
        i: usize,
        poller: &mut Poller,
        now: Instant,
        result: &mut ThreadResult,
    ) {
        if c.alive && self.shared.take_ticket() {
            self.queue(c, now, now, result);
            self.flush_or_break(c, i, poller, result);
        }
    }

    /// Writes what the socket takes; asks the poller for writability while
    /// something is left; a write error breaks the connection.
    fn flush_or_break(
        &self,
        c: &mut Conn,
        i: usize,
        poller: &mut Poller,
        result: &mut ThreadResult,
    ) {
        let was_waiting =
            (c.written < c.output.len() || c.stream.is_sending()) && c.waiting_writable;
        match flush(c) {
            Ok(()) => {
                let waiting = c.written < c.output.len() || c.stream.is_sending();
                if waiting != was_waiting {
                    c.waiting_writable = waiting;
                    if let Err(e) = poller.want_write(c.stream.socket(), i, waiting) {
                        self.broken(c, result, format!("cannot poll: {e}"));
                    }
                }
            }
            Err(e) => self.broken(c, result, format!("write failed: {e}")),
        }
    }

    /// Renders one call into the connection's output.
    fn queue(&self, c: &mut Conn, due: Instant, now: Instant, result: &mut ThreadResult) {
        let id = c.next_id;
        c.next_id += 1;
        if self.opts.http {
            let mut body = Vec::with_capacity(256);
            self.request.render(id, &mut c.rng, &mut body);
            body.pop(); // the line's \n
            http_post(&c.bearer, &body, &mut c.output);
        } else {
            self.request.render(id, &mut c.rng, &mut c.output);
        }
        c.pending.push_back((id, due));
        result.sent += 1;
        result.last_send = Some(now);
        if self.opts.rate.is_some() {
            result
                .lag_hist
                .saturating_record(micros(now.saturating_duration_since(due)));
        }
    }

    /// Reads what the socket holds and handles every complete reply in
    /// it; true if at least one was. A read error, a close or a bad reply
    /// breaks the connection.
    fn read_replies(
        &self,
        c: &mut Conn,
        result: &mut ThreadResult,
        deadline: Duration,
        line_buf: &mut Vec<u8>,
    ) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    let why = if c.pending.is_empty() {
                        "the server closed the connection"
                    } else {
                        "the server closed the connection with calls outstanding"
                    };
                    self.broken(c, result, why.into());
                    return false;
                }
                Ok(n) => {
                    c.input.extend_from_slice(&chunk[..n]);
                    // A short read drained the socket; poll says when there
                    // is more (saves a read that would only say WouldBlock).
                    // Not so over TLS: rustls may hold more, so read on.
                    if n < chunk.len() && !c.stream.is_tls() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.broken(c, result, format!("read failed: {e}"));
                    return false;
                }
            }
        }
        let now = Instant::now();
        let mut start = 0;
        loop {
            let next = if self.opts.http {
                http_body(&c.input[start..])
            } else {
                Ok(c.input[start..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map(|pos| (pos + 1, 0..pos)))
            };
            let (used, body) = match next {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(why) => {
                    self.broken(c, result, why);
                    return false;
                }
            };
            line_buf.clear();
            line_buf.extend_from_slice(&c.input[start..][body]);
            start += used;
            if let Err(why) = self.on_reply(c, line_buf, now, result, deadline) {
                c.input.drain(..start);
                self.broken(c, result, why);
                return false;
            }
        }
        c.input.drain(..start);
        start > 0
    }

    /// Counts one reply and its latency against the call it answers; an
    /// error for a reply that answers no outstanding call.
    fn on_reply(
        &self,
        c: &mut Conn,
        line: &[u8],
        now: Instant,
        result: &mut ThreadResult,
        deadline: Duration,
    ) -> Result<(), String> {
        let (id, code) = match parse_reply(line) {
            Outcome::Ok(id) => (id, None),
            Outcome::Error(id, code) => (id, Some(code)),
            Outcome::Unaddressed(code) => {
                *result.codes.entry(code).or_default() += 1;
                return Err(format!("the server sent error {code} for no request"));
            }
            Outcome::Garbage => {
                return Err(format!(
                    "not a JSON-RPC reply: {}",
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                ))
            }
        };
        // Replies come back mostly in order: look from the front.
        let Some(pos) = c.pending.iter().position(|(p, _)| *p == id) else {
            return Err(format!("a reply for id {id}, which is not outstanding"));
        };
        let (_, sent_at) = c.pending.remove(pos).expect("position is in range");
        let latency = now.saturating_duration_since(sent_at);
        let us = micros(latency);
        result.last_reply = Some(now);
        match code {
            None => {
                result.ok += 1;
                result.ok_hist.saturating_record(us);
                if let (Some(_), Some(&t0)) = (&self.opts.series, self.shared.t0.get()) {
                    result.series.push(super::series::sample(t0, now, us));
                }
                if latency <= deadline || self.opts.timeout_ms.is_none() {
                    result.ok_in_deadline += 1;
                }
                self.shared.ok.fetch_add(1, Ordering::Relaxed);
                self.shared.ok_latency_us.fetch_add(us, Ordering::Relaxed);
            }
            Some(code) => {
                result.rejected += 1;
                result.rejected_hist.saturating_record(us);
                *result.codes.entry(code).or_default() += 1;
                result.samples.entry(code).or_insert_with(|| {
                    String::from_utf8_lossy(&line[..line.len().min(300)]).into()
                });
                self.shared.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Gives up on a connection: its outstanding calls are lost.
    fn broken(&self, c: &mut Conn, result: &mut ThreadResult, why: String) {
        c.alive = false;
        result.lost += c.pending.len() as u64;
        c.pending.clear();
        c.stream.shutdown();
        result.connection_error(&self.shared, why);
    }
}

/// Writes as much of the pending output as the socket takes.
fn flush(c: &mut Conn) -> io::Result<()> {
    while c.written < c.output.len() {
        match c.stream.write(&c.output[c.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => c.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    c.output.clear();
    c.written = 0;
    c.stream.send_records()
}
