//! `blitz bench`: a load generator that speaks the line protocol itself and
//! measures what a client sees: throughput, goodput (successes within the
//! deadline), latency percentiles of successes and of rejections kept apart
//! in HdrHistograms, counts by error code, connection errors, and the CPU the
//! server (and PostgreSQL) spent per call.
//!
//! It does not use [`blitz::client`]: a benchmark must count a refusal, not
//! retry it.
//!
//! With `http` it speaks JSON-RPC over HTTP/1.1 instead (`server.http_listen`):
//! each call is a `POST /` on a keep-alive connection, the session key of
//! `user` goes in `Authorization: Bearer`, and each response's body is the
//! reply (responses come back in request order).
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
//!
//! # Threads
//!
//! Connections are spread over a few event-loop threads (`threads`, default
//! `min(connections, 4)`), each polling its nonblocking sockets the way
//! `pgbench -j` does. The load generator shares the machine with the server
//! and PostgreSQL in `make bench`, so every microsecond it spends per call is
//! taken from them: one thread per connection costs a wake-up and two context
//! switches per call, a poll loop handles whatever is ready in one pass.
//! `threads = connections` gives one thread per connection.
//!
//! # CPU accounting
//!
//! With `server_pid` the server's `utime + stime` (from `/proc/PID/stat`) is
//! read when the measured phase starts and when it ends. With
//! `postgres_pid` (the postmaster) the same is done for PostgreSQL: the
//! postmaster's own and reaped children's times (`cutime + cstime`) plus
//! every live child's, so backends that exit during the run are still
//! counted.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use blitz::protocol::{self, code, ReplyId, ReplyOutcome};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Highest latency the histograms hold exactly (µs); longer ones are
/// recorded as this value.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// How long to connect (and to log in) before counting a connection error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for replies still outstanding once sending stopped, beyond
/// the calls' own deadline.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Deadline assumed for the drain when calls carry none (the server's
/// default `invocation.default_timeout_ms`).
const DEFAULT_DEADLINE: Duration = Duration::from_millis(blitz::Config::DEFAULT_TIMEOUT_MS);

/// When the run stops sending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this many calls in total (all connections together).
    Calls(u64),
    /// After this long, counted from the moment every connection is ready.
    Duration(Duration),
}

/// What each call sends as `params`.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    /// pgbench's TPC-B draw for `api.transfer`: aid in 1..=100000·scale,
    /// tid in 1..=10·scale, bid in 1..=scale, delta in -5000..=5000.
    Transfer {
        /// pgbench scale factor of the database (`pgbench -i -s`).
        scale: u32,
    },
    /// The same JSON object or array for every call.
    Fixed(Value),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Servers as `host:port`; connections are spread over them in turn.
    pub servers: Vec<String>,
    /// Client connections, all opened before the measured phase starts.
    pub connections: usize,
    /// Event-loop threads (0 = `min(connections, 4)`).
    pub threads: usize,
    /// When to stop sending.
    pub stop: Stop,
    /// The method of every call, e.g. `api.transfer`.
    pub method: String,
    /// Its params.
    pub params: Params,
    /// Open loop at this many calls per second in total; `None` = closed loop.
    pub rate: Option<f64>,
    /// Sent as `timeout_ms` with every call, and the deadline of goodput.
    pub timeout_ms: Option<u64>,
    /// Send `session.login {"user": …}` first on every connection (not timed).
    pub user: Option<String>,
    /// Send a fresh `idempotency_key` with every call.
    pub idempotency_keys: bool,
    /// The server's pid, for its CPU time per call.
    pub server_pid: Option<u32>,
    /// PostgreSQL's postmaster pid, for PostgreSQL's CPU time per call.
    pub postgres_pid: Option<u32>,
    /// Print one progress line a second on stderr.
    pub progress: bool,
    /// Speak JSON-RPC over HTTP/1.1 to `servers` (see the module doc).
    pub http: bool,
}

/// Why a run could not be made at all (a run that ran reports its errors).
#[derive(Debug)]
pub enum BenchError {
    /// Bad options.
    Usage(String),
    /// No connection could be made, or a login was refused.
    Connect(String),
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchError::Usage(m) | BenchError::Connect(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for BenchError {}

/// Latency percentiles of one class of replies, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Replies in this class.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// CPU time of a process (tree) during the measured phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// The pid measured.
    pub pid: u32,
    /// `utime + stime` spent during the measured phase, seconds.
    pub seconds: f64,
    /// Microseconds per reply (server) or per success (PostgreSQL).
    pub us_per_call: f64,
}

/// The outcome of a run (`--json` prints it as it is).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `"closed"` or `"open"`.
    pub mode: String,
    /// The method called.
    pub method: String,
    /// Connections asked for.
    pub connections: usize,
    /// Event-loop threads used.
    pub threads: usize,
    /// Open loop: the target rate, calls/s.
    pub target_rate: Option<f64>,
    /// The deadline sent with each call, ms.
    pub timeout_ms: Option<u64>,
    /// Whether each connection logged in first.
    pub user: Option<String>,
    /// From the start of the run (connects included) to the last reply, s.
    pub wall_s: f64,
    /// Time to open (and log in) every connection, s.
    pub connect_s: f64,
    /// The measured phase: all connections ready → last reply, s.
    pub elapsed_s: f64,
    /// Calls sent.
    pub sent: u64,
    /// Replies received.
    pub replies: u64,
    /// Successful replies.
    pub ok: u64,
    /// Successful replies within the deadline (all of them without one).
    pub ok_in_deadline: u64,
    /// Error replies (any code).
    pub rejected: u64,
    /// Error replies by code (as text, e.g. `"-32001"`).
    pub errors_by_code: BTreeMap<String, u64>,
    /// The first error reply of each code, as received (cut at 300 bytes).
    pub error_samples: BTreeMap<String, String>,
    /// Connections that could not be made or broke (must be 0).
    pub connection_errors: u64,
    /// What happened to the first connection that broke, if one did.
    pub first_connection_error: Option<String>,
    /// Calls sent that never got a reply (lost with a broken connection or
    /// still outstanding at the end of the drain).
    pub lost: u64,
    /// Replies per second.
    pub throughput: f64,
    /// Successes per second.
    pub ok_per_s: f64,
    /// Successes within the deadline per second.
    pub goodput: f64,
    /// Open loop: calls actually sent per second while sending.
    pub offered_rate: Option<f64>,
    /// Latency of successes, from the (intended) send time.
    pub latency_ok: Latency,
    /// Latency of error replies, from the (intended) send time.
    pub latency_rejected: Latency,
    /// Open loop: how late calls left against their schedule.
    pub send_lag: Option<Latency>,
    /// The server's CPU time per reply.
    pub server_cpu: Option<Cpu>,
    /// PostgreSQL's CPU time per success.
    pub postgres_cpu: Option<Cpu>,
    /// This process's CPU time during the run, s.
    pub client_cpu_s: f64,
}

impl Report {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let stop = match self.target_rate {
            Some(r) => format!("open loop at {r:.0} calls/s"),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            s,
            "blitz bench: {} × {} connections ({} threads), {stop}{}{}",
            self.method,
            self.connections,
            self.threads,
            self.timeout_ms
                .map_or(String::new(), |t| format!(", timeout_ms {t}")),
            self.user
                .as_ref()
                .map_or(String::new(), |u| format!(", user {u}")),
        );
        let _ = writeln!(
            s,
            "  wall {:.3} s (connect {:.3} s), measured {:.3} s",
            self.wall_s, self.connect_s, self.elapsed_s
        );
        let _ = writeln!(
            s,
            "  calls {} sent, {} replies: {} ok ({} within deadline), {} rejected; connection errors {}, lost {}",
            self.sent, self.replies, self.ok, self.ok_in_deadline, self.rejected,
            self.connection_errors, self.lost
        );
        if let Some(first) = &self.first_connection_error {
            let _ = writeln!(s, "  first connection error: {first}");
        }
        let _ = write!(
            s,
            "  throughput {:.1}/s, ok {:.1}/s, goodput {:.1}/s",
            self.throughput, self.ok_per_s, self.goodput
        );
        if let Some(r) = self.offered_rate {
            let _ = write!(s, ", offered {r:.1}/s");
        }
        s.push('\n');
        let _ = writeln!(
            s,
            "  latency ms {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "count", "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        let mut row = |name: &str, l: &Latency| {
            let _ = writeln!(
                s,
                "  {name:<10} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                l.count, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        };
        row("ok", &self.latency_ok);
        row("rejected", &self.latency_rejected);
        if let Some(lag) = &self.send_lag {
            row("send lag", lag);
        }
        if !self.errors_by_code.is_empty() {
            let codes: Vec<String> = self
                .errors_by_code
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect();
            let _ = writeln!(s, "  errors by code: {}", codes.join(", "));
            for (code, sample) in &self.error_samples {
                let _ = writeln!(s, "    first {code}: {sample}");
            }
        }
        let mut cpu = vec![format!("client {:.2} s", self.client_cpu_s)];
        if let Some(c) = &self.server_cpu {
            cpu.push(format!(
                "server (pid {}) {:.2} s = {:.1} µs/call",
                c.pid, c.seconds, c.us_per_call
            ));
        }
        if let Some(c) = &self.postgres_cpu {
            cpu.push(format!(
                "PostgreSQL (pid {}) {:.2} s = {:.1} µs/success",
                c.pid, c.seconds, c.us_per_call
            ));
        }
        let _ = writeln!(s, "  CPU: {}", cpu.join(", "));
        s
    }
}

/// Runs the benchmark `opts` describes.
pub fn run(opts: &Options) -> Result<Report, BenchError> {
    validate(opts)?;
    let addrs = resolve(&opts.servers)?;
    let threads = effective_threads(opts);
    let request = RequestTemplate::new(opts)?;
    let shared = Arc::new(Shared::new(opts));
    let started = Instant::now();
    // The threads and this one meet once every connection is ready; the
    // measured phase starts there.
    let barrier = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let indices: Vec<usize> = (t..opts.connections).step_by(threads).collect();
        let plan = ThreadPlan {
            opts: opts.clone(),
            addrs: addrs.clone(),
            indices,
            request: request.clone(),
            shared: shared.clone(),
            barrier: barrier.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || plan.run())
            .map_err(|e| BenchError::Connect(format!("cannot start a thread: {e}")))?;
        handles.push(handle);
    }
    barrier.wait();
    let t0 = *shared.t0.get_or_init(Instant::now);
    let connect_s = (t0 - started).as_secs_f64();
    let server_before = opts.server_pid.map(process_ticks);
    let postgres_before = opts.postgres_pid.map(tree_ticks);
    let client_before = own_cpu_seconds();
    let progress = opts.progress.then(|| spawn_progress(shared.clone(), t0));

    let mut results = Vec::with_capacity(threads);
    for h in handles {
        results.push(h.join().expect("a bench thread panicked"));
    }
    let server_after = opts.server_pid.map(process_ticks);
    let postgres_after = opts.postgres_pid.map(tree_ticks);
    let client_cpu_s = own_cpu_seconds() - client_before;
    shared.finished.store(true, Ordering::Release);
    if let Some(p) = progress {
        let _ = p.join();
    }

    if let Some(login) = results.iter().find_map(|r| r.login_refused.clone()) {
        return Err(BenchError::Connect(login));
    }
    if shared.ready.load(Ordering::Acquire) == 0 {
        let first = results
            .iter()
            .find_map(|r| r.first_error.clone())
            .unwrap_or_else(|| "no connection could be made".into());
        return Err(BenchError::Connect(first));
    }
    let total = merge(results);
    let end = total.last_reply.unwrap_or(t0).max(t0);
    let elapsed_s = (end - t0).as_secs_f64();
    let per_s = |n: u64| {
        if elapsed_s > 0.0 {
            n as f64 / elapsed_s
        } else {
            0.0
        }
    };
    let cpu = |pid: Option<u32>, before: Option<Option<u64>>, after: Option<Option<u64>>, n| {
        let (pid, Some(Some(b)), Some(Some(a))) = (pid?, before, after) else {
            return None;
        };
        let seconds = a.saturating_sub(b) as f64 / ticks_per_second();
        Some(Cpu {
            pid,
            seconds,
            us_per_call: if n > 0 { seconds * 1e6 / n as f64 } else { 0.0 },
        })
    };
    let replies = total.ok + total.rejected;
    Ok(Report {
        mode: if opts.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        method: opts.method.clone(),
        connections: opts.connections,
        threads,
        target_rate: opts.rate,
        timeout_ms: opts.timeout_ms,
        user: opts.user.clone(),
        wall_s: (end - started).as_secs_f64(),
        connect_s,
        elapsed_s,
        sent: total.sent,
        replies,
        ok: total.ok,
        ok_in_deadline: total.ok_in_deadline,
        rejected: total.rejected,
        errors_by_code: total
            .codes
            .iter()
            .map(|(c, n)| (c.to_string(), *n))
            .collect(),
        error_samples: total
            .samples
            .iter()
            .map(|(c, s)| (c.to_string(), s.clone()))
            .collect(),
        connection_errors: total.connection_errors,
        first_connection_error: total.first_error.clone(),
        lost: total.lost,
        throughput: per_s(replies),
        ok_per_s: per_s(total.ok),
        goodput: per_s(total.ok_in_deadline),
        offered_rate: opts.rate.and(total.last_send).map(|last| {
            let window = (last - t0).as_secs_f64();
            if window > 0.0 {
                total.sent as f64 / window
            } else {
                0.0
            }
        }),
        latency_ok: Latency::of(&total.ok_hist),
        latency_rejected: Latency::of(&total.rejected_hist),
        send_lag: opts.rate.map(|_| Latency::of(&total.lag_hist)),
        server_cpu: cpu(opts.server_pid, server_before, server_after, replies),
        postgres_cpu: cpu(opts.postgres_pid, postgres_before, postgres_after, total.ok),
        client_cpu_s,
    })
}

fn validate(opts: &Options) -> Result<(), BenchError> {
    let usage = |m: &str| Err(BenchError::Usage(m.into()));
    if opts.servers.is_empty() {
        return usage("no server to connect to");
    }
    if opts.connections == 0 {
        return usage("--connections must be at least 1");
    }
    match opts.stop {
        Stop::Calls(0) => return usage("--calls must be at least 1"),
        Stop::Duration(d) if d.is_zero() => return usage("--duration must be more than 0"),
        _ => {}
    }
    if let Some(r) = opts.rate {
        if !(r.is_finite() && r > 0.0) {
            return usage("--rate must be a positive number of calls per second");
        }
    }
    if let Params::Transfer { scale: 0 } = opts.params {
        return usage("--scale must be at least 1");
    }
    Ok(())
}

fn resolve(servers: &[String]) -> Result<Vec<SocketAddr>, BenchError> {
    servers
        .iter()
        .map(|s| {
            s.to_socket_addrs()
                .map_err(|e| BenchError::Usage(format!("server {s:?}: {e}")))?
                .next()
                .ok_or_else(|| BenchError::Usage(format!("server {s:?}: no address")))
        })
        .collect()
}

fn effective_threads(opts: &Options) -> usize {
    let t = if opts.threads == 0 { 4 } else { opts.threads };
    t.clamp(1, opts.connections)
}

/// Counters every thread updates, for the progress line and the stop rule.
struct Shared {
    /// Calls left to hand out (`Stop::Calls`), else unused.
    tickets: AtomicU64,
    counted: bool,
    ok: AtomicU64,
    rejected: AtomicU64,
    connection_errors: AtomicU64,
    ok_latency_us: AtomicU64,
    /// Connections ready (connected and logged in).
    ready: AtomicU64,
    finished: AtomicBool,
    t0: OnceLock<Instant>,
}

impl Shared {
    fn new(opts: &Options) -> Shared {
        let (tickets, counted) = match opts.stop {
            Stop::Calls(n) => (n, true),
            Stop::Duration(_) => (0, false),
        };
        Shared {
            tickets: AtomicU64::new(tickets),
            counted,
            ok: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            connection_errors: AtomicU64::new(0),
            ok_latency_us: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            t0: OnceLock::new(),
        }
    }

    /// Takes the right to send one more call (always granted in duration mode).
    fn take_ticket(&self) -> bool {
        !self.counted
            || self
                .tickets
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
    }

    fn tickets_left(&self) -> bool {
        !self.counted || self.tickets.load(Ordering::Acquire) > 0
    }
}

fn spawn_progress(shared: Arc<Shared>, t0: Instant) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut ok0, mut rej0, mut lat0) = (0u64, 0u64, 0u64);
        let mut next = t0 + Duration::from_secs(1);
        loop {
            while Instant::now() < next {
                if shared.finished.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let ok = shared.ok.load(Ordering::Relaxed);
            let rej = shared.rejected.load(Ordering::Relaxed);
            let lat = shared.ok_latency_us.load(Ordering::Relaxed);
            let mean = if ok > ok0 {
                (lat - lat0) as f64 / (ok - ok0) as f64 / 1000.0
            } else {
                0.0
            };
            eprintln!(
                "bench: {:>4.0} s  ok {:>7}/s  rejected {:>7}/s  ok mean {:>8.2} ms  total ok {}  connection errors {}",
                (next - t0).as_secs_f64(),
                ok - ok0,
                rej - rej0,
                mean,
                ok,
                shared.connection_errors.load(Ordering::Relaxed)
            );
            (ok0, rej0, lat0) = (ok, rej, lat);
            next += Duration::from_secs(1);
        }
    })
}

/// The parts of a request line that do not change, rendered once.
#[derive(Debug, Clone)]
struct RequestTemplate {
    /// `{"jsonrpc":"2.0","method":"…",` … up to the params.
    head: String,
    params: Params,
    fixed: String,
    /// `,"timeout_ms":T` or nothing.
    tail: String,
    /// With `--idempotency-keys`: this run's key prefix (keys differ between runs).
    key_prefix: Option<String>,
}

impl RequestTemplate {
    fn new(opts: &Options) -> Result<RequestTemplate, BenchError> {
        let method = serde_json::to_string(&opts.method).expect("a string serializes");
        let fixed = match &opts.params {
            Params::Fixed(v @ (Value::Object(_) | Value::Array(_))) => v.to_string(),
            Params::Fixed(_) => {
                return Err(BenchError::Usage(
                    "--params must be a JSON object or array".into(),
                ))
            }
            Params::Transfer { .. } => String::new(),
        };
        Ok(RequestTemplate {
            head: format!(r#"{{"jsonrpc":"2.0","method":{method},"params":"#),
            params: opts.params.clone(),
            fixed,
            tail: opts
                .timeout_ms
                .map_or(String::new(), |t| format!(r#","timeout_ms":{t}"#)),
            key_prefix: opts.idempotency_keys.then(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                format!("{:x}", nanos ^ u64::from(std::process::id()) << 40)
            }),
        })
    }

    /// Appends request `id` as one line to `out`.
    fn render(&self, id: u64, rng: &mut fastrand::Rng, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head.as_bytes());
        match self.params {
            Params::Transfer { scale } => {
                let s = i64::from(scale);
                let aid = rng.i64(1..=100_000 * s);
                let tid = rng.i64(1..=10 * s);
                let bid = rng.i64(1..=s);
                let delta = rng.i64(-5000..=5000);
                let _ = write!(
                    out,
                    r#"{{"aid":{aid},"tid":{tid},"bid":{bid},"delta":{delta}}}"#
                );
            }
            Params::Fixed(_) => out.extend_from_slice(self.fixed.as_bytes()),
        }
        if let Some(prefix) = &self.key_prefix {
            let _ = write!(out, r#","idempotency_key":"{prefix}-{:x}""#, rng.u64(..));
        }
        let _ = write!(out, r#","id":{id}{}}}"#, self.tail);
        out.push(b'\n');
    }
}

/// What one reply line says.
#[derive(Debug, PartialEq)]
enum Outcome {
    Ok(u64),
    Error(u64, i64),
    /// An error the server could not tie to a request (null id), e.g. -32005.
    Unaddressed(i64),
    Garbage,
}

/// Classifies one reply line with the protocol's reply parser (which
/// keeps `result` raw: the bench counts replies, it does not read them).
fn parse_reply(line: &[u8]) -> Outcome {
    let Ok(reply) = protocol::parse_reply(line) else {
        return Outcome::Garbage;
    };
    match (reply.id, reply.error_code()) {
        (ReplyId::Number(id), None) => Outcome::Ok(id),
        (ReplyId::Number(id), Some(code)) => Outcome::Error(id, code),
        (ReplyId::Null, Some(code)) => Outcome::Unaddressed(code),
        _ => Outcome::Garbage,
    }
}

/// What a thread is given.
struct ThreadPlan {
    opts: Options,
    addrs: Vec<SocketAddr>,
    /// Global indices of this thread's connections.
    indices: Vec<usize>,
    request: RequestTemplate,
    shared: Arc<Shared>,
    barrier: Arc<Barrier>,
}

/// One client connection of a thread.
struct Conn {
    stream: TcpStream,
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

/// What a thread measured.
struct ThreadResult {
    ok_hist: Histogram<u64>,
    rejected_hist: Histogram<u64>,
    lag_hist: Histogram<u64>,
    codes: BTreeMap<i64, u64>,
    samples: BTreeMap<i64, String>,
    sent: u64,
    ok: u64,
    ok_in_deadline: u64,
    rejected: u64,
    connection_errors: u64,
    lost: u64,
    last_reply: Option<Instant>,
    last_send: Option<Instant>,
    first_error: Option<String>,
    login_refused: Option<String>,
}

impl ThreadResult {
    fn new() -> ThreadResult {
        let h = || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds");
        ThreadResult {
            ok_hist: h(),
            rejected_hist: h(),
            lag_hist: h(),
            codes: BTreeMap::new(),
            samples: BTreeMap::new(),
            sent: 0,
            ok: 0,
            ok_in_deadline: 0,
            rejected: 0,
            connection_errors: 0,
            lost: 0,
            last_reply: None,
            last_send: None,
            first_error: None,
            login_refused: None,
        }
    }

    fn connection_error(&mut self, shared: &Shared, what: String) {
        self.connection_errors += 1;
        shared.connection_errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.get_or_insert(what);
    }
}

fn merge(results: Vec<ThreadResult>) -> ThreadResult {
    let mut total = ThreadResult::new();
    for r in results {
        total.ok_hist.add(&r.ok_hist).expect("same bounds");
        total
            .rejected_hist
            .add(&r.rejected_hist)
            .expect("same bounds");
        total.lag_hist.add(&r.lag_hist).expect("same bounds");
        for (c, n) in r.codes {
            *total.codes.entry(c).or_default() += n;
        }
        for (c, s) in r.samples {
            total.samples.entry(c).or_insert(s);
        }
        total.sent += r.sent;
        total.ok += r.ok;
        total.ok_in_deadline += r.ok_in_deadline;
        total.rejected += r.rejected;
        total.connection_errors += r.connection_errors;
        total.lost += r.lost;
        total.last_reply = total.last_reply.max(r.last_reply);
        total.last_send = total.last_send.max(r.last_send);
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    total
}

impl ThreadPlan {
    fn run(self) -> ThreadResult {
        let mut result = ThreadResult::new();
        let mut conns = Vec::with_capacity(self.indices.len());
        for &i in &self.indices {
            let addr = self.addrs[i % self.addrs.len()];
            match self.open(addr) {
                Ok((stream, input, bearer)) => {
                    self.shared.ready.fetch_add(1, Ordering::AcqRel);
                    conns.push(Conn {
                        stream,
                        input,
                        output: Vec::with_capacity(4096),
                        written: 0,
                        pending: VecDeque::new(),
                        next_id: 1,
                        due: Instant::now(),
                        waiting_writable: false,
                        alive: true,
                        rng: fastrand::Rng::new(),
                        bearer,
                    })
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

    /// Connects, logs in if asked, and makes the socket nonblocking;
    /// returns it with any bytes read past the login reply, and (HTTP) the
    /// session's `Authorization` header line.
    fn open(&self, addr: SocketAddr) -> Result<(TcpStream, Vec<u8>, String), Open> {
        let fail = |e: io::Error| Open::Failed(e.to_string());
        let stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(fail)?;
        stream.set_nodelay(true).map_err(fail)?;
        let (input, bearer) = match (&self.opts.user, self.opts.http) {
            (Some(user), false) => (login(&stream, user)?, String::new()),
            (Some(user), true) => {
                let key = login_http(&stream, user)?;
                (Vec::new(), format!("Authorization: Bearer {key}\r\n"))
            }
            (None, _) => (Vec::new(), String::new()),
        };
        stream.set_nonblocking(true).map_err(fail)?;
        Ok((TcpStream::from_std(stream), input, bearer))
    }

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
        let mut poller = match Poller::new(conns) {
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
                        for _ in 0..conns.len() {
                            if !conns[cursor].alive {
                                cursor = (cursor + 1) % conns.len();
                                continue;
                            }
                            let c = &mut conns[cursor];
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
                            self.flush_or_break(c, cursor, &mut poller, result);
                            cursor = (cursor + 1) % conns.len();
                        }
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
                    poller.remove(&mut c.stream);
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
        let was_waiting = c.written < c.output.len() && c.waiting_writable;
        match flush(c) {
            Ok(()) => {
                let waiting = c.written < c.output.len();
                if waiting != was_waiting {
                    c.waiting_writable = waiting;
                    if let Err(e) = poller.want_write(&mut c.stream, i, waiting) {
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

    fn read_replies(
        &self,
        c: &mut Conn,
        result: &mut ThreadResult,
        deadline: Duration,
        line_buf: &mut Vec<u8>,
    ) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match (&c.stream).read(&mut chunk) {
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
                    if n < chunk.len() {
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

    fn broken(&self, c: &mut Conn, result: &mut ThreadResult, why: String) {
        c.alive = false;
        result.lost += c.pending.len() as u64;
        c.pending.clear();
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        result.connection_error(&self.shared, why);
    }
}

/// Why a connection could not be readied.
enum Open {
    /// The login was refused: the run stops (wrong setup, not load).
    Refused(String),
    /// Connecting or the login exchange failed: a connection error.
    Failed(String),
}

/// `session.login {"user": user}` on a fresh blocking connection.
/// Returns the bytes read after the reply.
fn login(stream: &std::net::TcpStream, user: &str) -> Result<Vec<u8>, Open> {
    let fail = |e: io::Error| Open::Failed(format!("login: {e}"));
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(fail)?;
    let line = serde_json::json!({
        "jsonrpc": "2.0", "id": 0, "method": "session.login", "params": {"user": user}
    });
    let mut out = line.to_string().into_bytes();
    out.push(b'\n');
    (&*stream).write_all(&out).map_err(fail)?;
    // Nothing else is outstanding, so whatever follows the reply's newline
    // (nothing, normally) is kept for the event loop.
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    let newline = loop {
        if let Some(pos) = reply.iter().position(|&b| b == b'\n') {
            break pos;
        }
        match (&*stream).read(&mut chunk) {
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
    stream.set_read_timeout(None).map_err(fail)?;
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

/// Appends `POST /` with `body` (and the `bearer` header line) to `out`.
fn http_post(bearer: &str, body: &[u8], out: &mut Vec<u8>) {
    let _ = write!(
        out,
        "POST / HTTP/1.1\r\nHost: blitz\r\nContent-Type: application/json\r\n{bearer}Content-Length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body);
}

/// The first complete HTTP response in `input`: the bytes it takes and
/// where its body lies; `None` until it is complete.
fn http_body(input: &[u8]) -> Result<Option<(usize, std::ops::Range<usize>)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP response: {e}")),
    };
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    Ok((input.len() >= head + length).then(|| (head + length, head..head + length)))
}

/// `session.login {"user": user}` as one HTTP request on a fresh blocking
/// connection; returns the session key.
fn login_http(stream: &std::net::TcpStream, user: &str) -> Result<String, Open> {
    let fail = |e: io::Error| Open::Failed(format!("login: {e}"));
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(fail)?;
    let call = serde_json::json!({
        "jsonrpc": "2.0", "id": 0, "method": "session.login", "params": {"user": user}
    });
    let mut out = Vec::new();
    http_post("", call.to_string().as_bytes(), &mut out);
    (&*stream).write_all(&out).map_err(fail)?;
    let mut input = Vec::new();
    let mut chunk = [0u8; 4096];
    let body = loop {
        match http_body(&input).map_err(Open::Failed)? {
            Some((_, body)) => break input[body].to_vec(),
            None => match (&*stream).read(&mut chunk) {
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
    stream.set_read_timeout(None).map_err(fail)?;
    let reply: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match reply["result"]["session"].as_str() {
        Some(key) => Ok(key.to_string()),
        None => Err(Open::Refused(format!(
            "session.login as {user:?} over HTTP refused: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))),
    }
}

/// Writes as much of the pending output as the socket takes.
fn flush(c: &mut Conn) -> io::Result<()> {
    while c.written < c.output.len() {
        match (&c.stream).write(&c.output[c.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => c.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    c.output.clear();
    c.written = 0;
    Ok(())
}

/// Longest single wait, so the stop rules are looked at regularly.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// Readiness of a thread's sockets, through mio (epoll on Linux, kqueue on
/// the BSDs and macOS): the cost of a wake-up does not grow with the number
/// of connections. mio is edge-triggered: a socket is read until a short
/// read or `WouldBlock` (see `read_replies`), and writability is asked for
/// only while output is stuck. Each event is `(connection index, readable,
/// writable)`.
///
/// mio waits in whole milliseconds (rounded up), which would send an open
/// loop's calls up to 1 ms late, or, sleeping the rest, read their replies
/// up to 1 ms late. On Linux a timerfd in the same poll ends a wait at the
/// due time to the microsecond, as epoll_pwait2 did; elsewhere the wait is
/// mio's.
struct Poller {
    poll: mio::Poll,
    events: mio::Events,
    timer: Option<Timer>,
}

/// The token of the wait's timer; connections are `0..n`.
const TIMER: mio::Token = mio::Token(usize::MAX);

impl Poller {
    fn new(conns: &mut [Conn]) -> io::Result<Poller> {
        let poll = mio::Poll::new()?;
        for (i, c) in conns.iter_mut().enumerate() {
            poll.registry()
                .register(&mut c.stream, mio::Token(i), mio::Interest::READABLE)?;
        }
        let timer = Timer::new(poll.registry());
        Ok(Poller {
            poll,
            events: mio::Events::with_capacity(conns.len().max(1)),
            timer,
        })
    }

    fn want_write(&mut self, s: &mut TcpStream, i: usize, on: bool) -> io::Result<()> {
        let interest = if on {
            mio::Interest::READABLE | mio::Interest::WRITABLE
        } else {
            mio::Interest::READABLE
        };
        self.poll.registry().reregister(s, mio::Token(i), interest)
    }

    fn remove(&mut self, s: &mut TcpStream) {
        let _ = self.poll.registry().deregister(s);
    }

    /// Waits up to `timeout` for events.
    fn wait(&mut self, timeout: Duration, ready: &mut Vec<(usize, bool, bool)>) {
        ready.clear();
        let whole_ms = timeout.subsec_nanos().is_multiple_of(1_000_000);
        let armed = !whole_ms && self.timer.as_ref().is_some_and(|t| t.arm(timeout));
        let wait = if armed { None } else { Some(timeout) };
        if self.poll.poll(&mut self.events, wait).is_err() {
            return; // EINTR: the caller looks at the clock and comes back
        }
        for ev in self.events.iter().filter(|ev| ev.token() != TIMER) {
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            ready.push((ev.token().0, readable, ev.is_writable()));
        }
    }
}

/// A one-shot timer the poll can wait on (Linux: a timerfd). Arming it
/// again replaces the time left and clears an expiry not yet seen.
#[cfg(target_os = "linux")]
struct Timer(nix::sys::timerfd::TimerFd);

#[cfg(target_os = "linux")]
impl Timer {
    /// A timer registered in `registry`, or `None` where the kernel has none.
    fn new(registry: &mio::Registry) -> Option<Timer> {
        use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
        use std::os::fd::{AsFd, AsRawFd};
        let flags = TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC;
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, flags).ok()?;
        let raw = fd.as_fd().as_raw_fd();
        registry
            .register(
                &mut mio::unix::SourceFd(&raw),
                TIMER,
                mio::Interest::READABLE,
            )
            .ok()?;
        Some(Timer(fd))
    }

    /// Expires `after` from now; false if it could not be set.
    fn arm(&self, after: Duration) -> bool {
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        let at = Expiration::OneShot(after.into());
        self.0.set(at, TimerSetTimeFlags::empty()).is_ok()
    }
}

/// No timer the poll can wait on: waits are mio's whole milliseconds.
#[cfg(not(target_os = "linux"))]
struct Timer;

#[cfg(not(target_os = "linux"))]
impl Timer {
    fn new(_registry: &mio::Registry) -> Option<Timer> {
        None
    }

    fn arm(&self, _after: Duration) -> bool {
        false
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_LATENCY_US)
}

/// Clock ticks per second of `/proc/PID/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The fields of `/proc/PID/stat` after the command name: `(ppid, utime +
/// stime, cutime + cstime)` in clock ticks.
fn parse_stat(stat: &str) -> Option<(u32, u64, u64)> {
    // The command name is in parentheses and may hold spaces and ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
    let n = |i: usize| f.get(i)?.parse::<u64>().ok();
    let ppid = f.get(1)?.parse::<u32>().ok()?;
    Some((ppid, n(11)? + n(12)?, n(13)? + n(14)?))
}

fn read_stat(pid: u32) -> Option<(u32, u64, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU ticks used by process `pid` (all its threads).
fn process_ticks(pid: u32) -> Option<u64> {
    read_stat(pid).map(|(_, own, _)| own)
}

/// CPU ticks used by `pid`, its reaped children, and its live children:
/// for the postmaster, all of PostgreSQL.
fn tree_ticks(pid: u32) -> Option<u64> {
    let (_, own, reaped) = read_stat(pid)?;
    let mut total = own + reaped;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((ppid, ticks, _)) = read_stat(child) {
            if ppid == pid {
                total += ticks;
            }
        }
    }
    Some(total)
}

/// This process's user + system CPU time, seconds.
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    fn options(addr: &str) -> Options {
        Options {
            servers: vec![addr.to_string()],
            connections: 4,
            threads: 2,
            stop: Stop::Calls(200),
            method: "api.transfer".into(),
            params: Params::Transfer { scale: 10 },
            rate: None,
            timeout_ms: Some(1000),
            idempotency_keys: false,
            user: None,
            server_pid: None,
            postgres_pid: None,
            progress: false,
            http: false,
        }
    }

    #[test]
    fn http_responses_are_split_by_content_length() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 503 X\r\nContent-Length: 3\r\n\r\n[1]";
        let (used, body) = http_body(two).unwrap().unwrap();
        assert_eq!(&two[body], b"{}");
        let (_, body) = http_body(&two[used..]).unwrap().unwrap();
        assert_eq!(&two[used..][body], b"[1]");
        assert_eq!(
            http_body(&two[..30]).unwrap(),
            None,
            "a partial response waits"
        );
        assert!(http_body(b"garbage\r\n\r\n").is_err());
        let mut out = Vec::new();
        http_post("Authorization: Bearer k\r\n", b"{}", &mut out);
        assert!(out.ends_with(b"Authorization: Bearer k\r\nContent-Length: 2\r\n\r\n{}"));
    }

    #[test]
    fn transfer_requests_draw_pgbench_ranges() {
        let opts = options("127.0.0.1:1");
        let t = RequestTemplate::new(&opts).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        for id in 1..2000 {
            let mut out = Vec::new();
            t.render(id, &mut rng, &mut out);
            assert_eq!(out.pop(), Some(b'\n'));
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["jsonrpc"], "2.0");
            assert_eq!(v["id"], id);
            assert_eq!(v["method"], "api.transfer");
            assert_eq!(v["timeout_ms"], 1000);
            let p = &v["params"];
            let get = |k: &str| p[k].as_i64().unwrap();
            assert!((1..=1_000_000).contains(&get("aid")), "{p}");
            assert!((1..=100).contains(&get("tid")), "{p}");
            assert!((1..=10).contains(&get("bid")), "{p}");
            assert!((-5000..=5000).contains(&get("delta")), "{p}");
        }
    }

    #[test]
    fn fixed_params_are_sent_as_given() {
        let mut opts = options("127.0.0.1:1");
        opts.method = "sys.ping".into();
        opts.params = Params::Fixed(serde_json::json!({}));
        opts.timeout_ms = None;
        let t = RequestTemplate::new(&opts).unwrap();
        let mut out = Vec::new();
        t.render(3, &mut fastrand::Rng::with_seed(1), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"jsonrpc\":\"2.0\",\"method\":\"sys.ping\",\"params\":{},\"id\":3}\n"
        );
        opts.params = Params::Fixed(Value::from(5));
        assert!(RequestTemplate::new(&opts).is_err());
    }

    #[test]
    fn replies_are_classified() {
        assert_eq!(
            parse_reply(br#"{"jsonrpc":"2.0","id":4,"result":null}"#),
            Outcome::Ok(4)
        );
        assert_eq!(
            parse_reply(br#"{"jsonrpc":"2.0","id":5,"error":{"code":-32001,"message":"x"}}"#),
            Outcome::Error(5, -32001)
        );
        assert_eq!(
            parse_reply(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32005,"message":"x"}}"#),
            Outcome::Unaddressed(-32005)
        );
        assert_eq!(parse_reply(b"nope"), Outcome::Garbage);
        assert_eq!(parse_reply(br#"{"id":1}"#), Outcome::Garbage);
    }

    #[test]
    fn proc_stat_fields_are_found_after_the_name() {
        let stat = "1234 (post gres) S 99 1234 1234 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0";
        assert_eq!(parse_stat(stat), Some((99, 300, 10)));
        let me = std::process::id();
        assert!(process_ticks(me).is_some());
        assert!(tree_ticks(me).is_some());
    }

    /// A stand-in server: answers even ids with a result and odd ids with
    /// -32001, each after `delay`.
    fn fake_server(delay: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut out = stream.try_clone().unwrap();
                    for line in BufReader::new(stream).lines() {
                        let Ok(line) = line else { return };
                        let v: Value = serde_json::from_str(&line).unwrap();
                        std::thread::sleep(delay);
                        let id = v["id"].as_u64().unwrap();
                        let reply = if v["method"] == "session.login" {
                            serde_json::json!({"jsonrpc":"2.0","id":id,"result":{"session":"s"}})
                        } else if id.is_multiple_of(2) {
                            serde_json::json!({"jsonrpc":"2.0","id":id,"result":1})
                        } else {
                            serde_json::json!({"jsonrpc":"2.0","id":id,
                                "error":{"code":-32001,"message":"Server overloaded"}})
                        };
                        if writeln!(out, "{reply}").is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn closed_loop_counts_every_call_once() {
        let addr = fake_server(Duration::ZERO);
        let mut opts = options(&addr);
        opts.user = Some("bench".into());
        let r = run(&opts).unwrap();
        assert_eq!(r.sent, 200);
        assert_eq!(r.replies, 200);
        assert_eq!(r.ok + r.rejected, 200);
        assert_eq!(r.errors_by_code.get("-32001"), Some(&r.rejected));
        assert_eq!(r.latency_ok.count, r.ok);
        assert_eq!(r.latency_rejected.count, r.rejected);
        assert_eq!((r.connection_errors, r.lost), (0, 0));
        assert_eq!(r.mode, "closed");
        assert!(r.send_lag.is_none());
    }

    #[test]
    fn open_loop_keeps_its_schedule_and_pipelines() {
        // Replies take 20 ms; 400 calls/s on 2 connections is one call per
        // connection every 5 ms, so calls must be pipelined.
        let addr = fake_server(Duration::from_millis(20));
        let mut opts = options(&addr);
        opts.connections = 2;
        opts.rate = Some(400.0);
        opts.stop = Stop::Duration(Duration::from_millis(500));
        let r = run(&opts).unwrap();
        assert_eq!(r.mode, "open");
        assert!((150..=210).contains(&r.sent), "sent {}", r.sent);
        assert_eq!(r.replies + r.lost, r.sent);
        // The fake server answers one at a time per connection, so latency
        // measured from the schedule grows: no coordinated omission.
        assert!(r.latency_ok.max_ms > 100.0, "{:?}", r.latency_ok);
        assert!(r.send_lag.is_some());
    }

    #[test]
    fn unreachable_server_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let e = run(&options(&addr)).unwrap_err();
        assert!(matches!(e, BenchError::Connect(_)), "{e:?}");
    }
}
