//! The instance's metrics in Prometheus form, and the HTTP listener on
//! `metrics.listen` that serves them with the health checks.
//!
//! [`Metrics`] is the one counting mechanism of the server: the counters
//! that `sys.status` reports are read from the same prometheus-client
//! counters that `GET /metrics` exposes (the official Rust client; its
//! OpenMetrics text encoder is what Prometheus scrapes, so nothing here
//! formats the exposition by hand). Every counter the router touches is
//! created at start and kept as a handle, so counting a refusal is one
//! atomic add, never a lock or a map lookup. Gauges are read from their
//! sources at scrape time ([`Gauges`]); histograms are observed by the
//! workers.
//!
//! The listener ([`spawn_listener`]) is one housekeeping thread: it blocks
//! in `poll(2)` on its socket, answers one short request per connection
//! (`Connection: close`, a 2 s read deadline, parsed by
//! [`crate::protocol::http`]), and calls a tick about once a second, which
//! the server uses to probe the database so that `/health/ready` follows
//! an outage even when no call is running.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::protocol::code;
use crate::protocol::http::{Event, RequestReader, Response};

/// The content type of the OpenMetrics text format, which prometheus-client writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds: 100 µs to 30 s, about three per decade.
const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// What a request asked for, as the `kind` label of `blitz_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// `api.<name>`.
    Api,
    /// `session.*`.
    Session,
    /// `sys.*`.
    Sys,
    /// `rpc.*` (`rpc.discover`).
    Rpc,
    /// Anything else, and texts that were no request at all.
    Other,
}

impl MethodKind {
    const ALL: [MethodKind; 5] = [
        MethodKind::Api,
        MethodKind::Session,
        MethodKind::Sys,
        MethodKind::Rpc,
        MethodKind::Other,
    ];

    /// The kind of `method`.
    pub fn of(method: &str) -> MethodKind {
        match method.split_once('.').map(|(prefix, _)| prefix) {
            Some("api") => MethodKind::Api,
            Some("session") => MethodKind::Session,
            Some("sys") => MethodKind::Sys,
            Some("rpc") => MethodKind::Rpc,
            _ => MethodKind::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            MethodKind::Api => "api",
            MethodKind::Session => "session",
            MethodKind::Sys => "sys",
            MethodKind::Rpc => "rpc",
            MethodKind::Other => "other",
        }
    }
}

/// The outcomes counted: a result, each error code of the contract, any other code.
const OUTCOMES: [(&str, Option<i64>); 17] = [
    ("ok", None),
    ("-32700", Some(code::PARSE_ERROR)),
    ("-32600", Some(code::INVALID_REQUEST)),
    ("-32601", Some(code::METHOD_NOT_FOUND)),
    ("-32602", Some(code::INVALID_PARAMS)),
    ("-32603", Some(code::INTERNAL_ERROR)),
    ("-32001", Some(code::OVERLOADED)),
    ("-32002", Some(code::DEADLINE_EXCEEDED)),
    ("-32003", Some(code::SHUTTING_DOWN)),
    ("-32004", Some(code::DB_UNAVAILABLE)),
    ("-32005", Some(code::TOO_MANY_CONNECTIONS)),
    ("-32006", Some(code::UNAUTHENTICATED)),
    ("-32007", Some(code::PERMISSION_DENIED)),
    ("-32008", Some(code::TRANSACTION_CONFLICT)),
    ("-32009", Some(code::MESSAGE_TOO_LARGE)),
    ("-32010", Some(code::DATABASE_ERROR)),
    ("other", None),
];

/// The index in [`OUTCOMES`] of a reply with error `code` (`None`: a result).
fn outcome_index(error: Option<i64>) -> usize {
    match error {
        None => 0,
        Some(c) => OUTCOMES
            .iter()
            .position(|(_, known)| *known == Some(c))
            .unwrap_or(OUTCOMES.len() - 1),
    }
}

/// Why a request was refused before it reached a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// -32001: the queue was full.
    QueueFull,
    /// -32001: the connection had `max_in_flight_per_connection` requests in flight.
    InFlightLimit,
    /// -32001: the deadline was shorter than the expected queue wait.
    Deadline,
    /// -32001: the queue was standing and the expected wait over the target.
    QueueWait,
    /// -32003: the server is draining.
    Draining,
    /// -32005: `max_clients` connections were open.
    MaxClients,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Refusal::QueueFull,
        Refusal::InFlightLimit,
        Refusal::Deadline,
        Refusal::QueueWait,
        Refusal::Draining,
        Refusal::MaxClients,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue_full",
            Refusal::InFlightLimit => "in_flight_limit",
            Refusal::Deadline => "deadline_shorter_than_queue_wait",
            Refusal::QueueWait => "queue_wait_over_target",
            Refusal::Draining => "draining",
            Refusal::MaxClients => "max_clients",
        }
    }
}

/// Gauge values read from their sources when `/metrics` is scraped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Jobs waiting in the queue.
    pub queue_depth: u64,
    /// The queue's capacity.
    pub queue_capacity: u64,
    /// Worker threads.
    pub workers: u64,
    /// Workers running a job.
    pub workers_busy: u64,
    /// The configured `db.pool_size`.
    pub pool_size: u64,
    /// Connections of the pool this instance may hold now (its share of
    /// the cluster's connection budget).
    pub pool_share: u64,
    /// Pooled connections open and idle.
    pub pool_idle: u64,
    /// Pooled connections lent to a worker.
    pub pool_in_use: u64,
    /// Client connections open.
    pub connections_open: u64,
    /// 1 while the database answers, else 0.
    pub database_up: u64,
    /// 1 while the server drains for shutdown, else 0.
    pub draining: u64,
}

/// The gauges, registered once and set at each scrape.
#[derive(Default)]
struct GaugeSet {
    queue_depth: Gauge,
    queue_capacity: Gauge,
    workers: Gauge,
    workers_busy: Gauge,
    pool_size: Gauge,
    pool_share: Gauge,
    pool_idle: Gauge,
    pool_in_use: Gauge,
    connections_open: Gauge,
    database_up: Gauge,
    draining: Gauge,
}

impl GaugeSet {
    fn register(&self, r: &mut Registry) {
        let g = |r: &mut Registry, name: &str, help: &str, gauge: &Gauge| {
            r.register(name, help, gauge.clone())
        };
        g(
            r,
            "queue_depth",
            "Requests waiting in the queue",
            &self.queue_depth,
        );
        g(
            r,
            "queue_capacity",
            "Capacity of the queue (invocation.queue_capacity)",
            &self.queue_capacity,
        );
        g(r, "workers", "Worker threads", &self.workers);
        g(
            r,
            "workers_busy",
            "Workers running a request",
            &self.workers_busy,
        );
        g(
            r,
            "pool_size",
            "Configured database pool size (db.pool_size)",
            &self.pool_size,
        );
        g(
            r,
            "pool_share",
            "Pooled connections this instance may hold now (its share of the connection budget)",
            &self.pool_share,
        );
        g(
            r,
            "pool_connections_idle",
            "Pooled database connections open and idle",
            &self.pool_idle,
        );
        g(
            r,
            "pool_connections_in_use",
            "Pooled database connections lent to a worker",
            &self.pool_in_use,
        );
        g(
            r,
            "connections_open",
            "Client connections open",
            &self.connections_open,
        );
        g(
            r,
            "database_up",
            "1 while the database answers, else 0",
            &self.database_up,
        );
        g(
            r,
            "draining",
            "1 while the server drains for shutdown, else 0",
            &self.draining,
        );
    }

    fn set(&self, v: &Gauges) {
        let set = |g: &Gauge, n: u64| g.set(i64::try_from(n).unwrap_or(i64::MAX));
        set(&self.queue_depth, v.queue_depth);
        set(&self.queue_capacity, v.queue_capacity);
        set(&self.workers, v.workers);
        set(&self.workers_busy, v.workers_busy);
        set(&self.pool_size, v.pool_size);
        set(&self.pool_share, v.pool_share);
        set(&self.pool_idle, v.pool_idle);
        set(&self.pool_in_use, v.pool_in_use);
        set(&self.connections_open, v.connections_open);
        set(&self.database_up, v.database_up);
        set(&self.draining, v.draining);
    }
}

type Labels = [(&'static str, &'static str); 2];

/// Every metric of one server instance; see the module doc.
pub struct Metrics {
    registry: Registry,
    /// `[kind][outcome]`, created at start.
    requests: Vec<Vec<Counter>>,
    refusals: Vec<Counter>,
    admitted: Counter,
    completed: Counter,
    retries: Counter,
    sessions_created: Counter,
    gauges: GaugeSet,
    queue_wait: Histogram,
    execution: Histogram,
    end_to_end: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// All metrics at zero, registered under the prefix `blitz_`.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("blitz");
        let requests_family = Family::<Labels, Counter>::default();
        let requests = MethodKind::ALL
            .iter()
            .map(|kind| {
                OUTCOMES
                    .iter()
                    .map(|(outcome, _)| {
                        requests_family
                            .get_or_create_owned(&[("kind", kind.label()), ("outcome", *outcome)])
                    })
                    .collect()
            })
            .collect();
        registry.register(
            "requests",
            "Requests answered, by method kind and outcome (ok or the JSON-RPC error code)",
            requests_family,
        );
        let refusals_family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let refusals = Refusal::ALL
            .iter()
            .map(|r| refusals_family.get_or_create_owned(&[("reason", r.label())]))
            .collect();
        registry.register(
            "refusals",
            "Requests refused before a worker ran them, by reason",
            refusals_family,
        );
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let admitted = counter(&mut registry, "admitted", "Requests admitted to the queue");
        let completed = counter(
            &mut registry,
            "completed",
            "Requests a worker finished, whatever the outcome",
        );
        let retries = counter(
            &mut registry,
            "retries",
            "Transactions run again after 40001 or 40P01",
        );
        let sessions_created = counter(
            &mut registry,
            "sessions_created",
            "Sessions created by session.login",
        );
        let gauges = GaugeSet::default();
        gauges.register(&mut registry);
        // Named with their unit but without a UNIT line: strict OpenMetrics
        // parsers (openmetrics-parser) refuse a unit on a histogram.
        let histogram = |r: &mut Registry, name: &str, help: &str| {
            let h = Histogram::new(LATENCY_BUCKETS);
            r.register(name, help, h.clone());
            h
        };
        let queue_wait = histogram(
            &mut registry,
            "queue_wait_seconds",
            "Time requests waited in the queue before a worker took them",
        );
        let execution = histogram(
            &mut registry,
            "execution_seconds",
            "Time a worker spent on a request",
        );
        let end_to_end = histogram(
            &mut registry,
            "request_duration_seconds",
            "Time from reading a queued request to handing over its reply",
        );
        Metrics {
            registry,
            requests,
            refusals,
            admitted,
            completed,
            retries,
            sessions_created,
            gauges,
            queue_wait,
            execution,
            end_to_end,
        }
    }

    /// Counts one reply to a request of `kind`: a result (`error` `None`)
    /// or an error with that code. One atomic add.
    pub fn count_reply(&self, kind: MethodKind, error: Option<i64>) {
        let k = MethodKind::ALL.iter().position(|&x| x == kind).unwrap_or(0);
        self.requests[k][outcome_index(error)].inc();
    }

    /// Counts one refusal. One atomic add.
    pub fn count_refusal(&self, reason: Refusal) {
        let i = Refusal::ALL.iter().position(|&r| r == reason).unwrap_or(0);
        self.refusals[i].inc();
    }

    /// Counts one request admitted to the queue.
    pub fn count_admitted(&self) {
        self.admitted.inc();
    }

    /// Counts one transaction retry.
    pub fn count_retry(&self) {
        self.retries.inc();
    }

    /// Counts one session created.
    pub fn count_session_created(&self) {
        self.sessions_created.inc();
    }

    /// Records a request a worker finished: time queued, time executing,
    /// and time from arrival to the reply handed over.
    pub fn observe_completion(&self, queued: Duration, executed: Duration, end_to_end: Duration) {
        self.completed.inc();
        self.queue_wait.observe(queued.as_secs_f64());
        self.execution.observe(executed.as_secs_f64());
        self.end_to_end.observe(end_to_end.as_secs_f64());
    }

    /// Requests admitted to the queue so far.
    pub fn admitted(&self) -> u64 {
        self.admitted.get()
    }

    /// Requests finished on a worker so far.
    pub fn completed(&self) -> u64 {
        self.completed.get()
    }

    /// Transaction retries so far.
    pub fn retries(&self) -> u64 {
        self.retries.get()
    }

    /// Sessions created so far.
    pub fn sessions_created(&self) -> u64 {
        self.sessions_created.get()
    }

    /// Replies with error `code` so far, over every method kind.
    pub fn replies_with(&self, code: i64) -> u64 {
        let i = outcome_index(Some(code));
        self.requests
            .iter()
            .map(|by_outcome| by_outcome[i].get())
            .sum()
    }

    /// Error replies by code (codes with none left out), over every kind.
    pub fn errors_by_code(&self) -> Vec<(String, u64)> {
        (1..OUTCOMES.len())
            .filter_map(|i| {
                let n: u64 = self
                    .requests
                    .iter()
                    .map(|by_outcome| by_outcome[i].get())
                    .sum();
                (n > 0).then(|| (OUTCOMES[i].0.to_string(), n))
            })
            .collect()
    }

    /// The OpenMetrics text exposition, with the gauges set to `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        self.gauges.set(gauges);
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String does not fail");
        text
    }
}

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

/// How long one client may take to send its request.
const READ_DEADLINE: Duration = Duration::from_secs(2);

/// The running listener; [`MetricsListener::stop`] ends it.
pub struct MetricsListener {
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: JoinHandle<()>,
}

impl MetricsListener {
    /// The bound address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)); // wakes poll()
        let _ = self.thread.join();
    }
}

/// Serves `endpoints` on `listener` from a thread of its own.
pub fn spawn_listener(
    listener: TcpListener,
    mut endpoints: Endpoints,
) -> std::io::Result<MetricsListener> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::Builder::new()
        .name("blitz-metrics".into())
        .spawn(move || {
            let mut next_tick = Instant::now();
            while !stopped.load(Ordering::Acquire) {
                if Instant::now() >= next_tick {
                    (endpoints.tick)();
                    next_tick = Instant::now() + TICK;
                }
                if wait_readable(
                    &listener,
                    next_tick.saturating_duration_since(Instant::now()),
                ) {
                    while let Ok((stream, _)) = listener.accept() {
                        if stopped.load(Ordering::Acquire) {
                            break;
                        }
                        serve(stream, &endpoints);
                    }
                }
            }
        })?;
    Ok(MetricsListener { stop, addr, thread })
}

/// Blocks in `poll(2)` until `listener` has a connection or `timeout` passes.
fn wait_readable(listener: &TcpListener, timeout: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut fd, 1, ms) > 0 }
}

/// Answers one request on `stream`, then closes it.
fn serve(mut stream: TcpStream, endpoints: &Endpoints) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(READ_DEADLINE));
    let response = match read_request(&mut stream) {
        Some(Event::Request(request)) => route(&request.method, request.path(), endpoints),
        Some(Event::Reject(r)) => Response::new(
            r.status,
            "text/plain; charset=utf-8",
            format!("{}\n", r.detail),
        ),
        Some(Event::Continue) | None => return,
    };
    let _ = stream.write_all(&response.keep_alive(false).to_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Reads one request within [`READ_DEADLINE`]; `None` if none came whole.
fn read_request(stream: &mut TcpStream) -> Option<Event> {
    let deadline = Instant::now() + READ_DEADLINE;
    let mut reader = RequestReader::new(64 * 1024);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        loop {
            let (used, event) = reader.next(&buf);
            buf.drain(..used);
            match event {
                Some(Event::Continue) => {
                    let _ = stream.write_all(crate::protocol::http::CONTINUE);
                }
                Some(event) => return Some(event),
                None => break,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_under_prometheus_names_and_feed_the_status_counts() {
        let m = Metrics::new();
        m.count_reply(MethodKind::Api, None);
        m.count_reply(MethodKind::Api, Some(code::OVERLOADED));
        m.count_reply(MethodKind::Session, Some(code::OVERLOADED));
        m.count_reply(MethodKind::Other, Some(-1));
        m.count_refusal(Refusal::QueueFull);
        m.observe_completion(
            Duration::from_micros(50),
            Duration::from_millis(3),
            Duration::from_millis(4),
        );
        assert_eq!(m.replies_with(code::OVERLOADED), 2);
        assert_eq!(
            m.errors_by_code(),
            vec![("-32001".to_string(), 2), ("other".to_string(), 1)]
        );
        let text = m.render(&Gauges {
            queue_capacity: 10,
            ..Gauges::default()
        });
        for line in [
            r#"blitz_requests_total{kind="api",outcome="ok"} 1"#,
            r#"blitz_requests_total{kind="session",outcome="-32001"} 1"#,
            r#"blitz_refusals_total{reason="queue_full"} 1"#,
            "blitz_queue_capacity 10",
            r#"blitz_execution_seconds_bucket{le="0.005"} 1"#,
            r#"blitz_queue_wait_seconds_bucket{le="0.0001"} 1"#,
            "blitz_request_duration_seconds_count 1",
            "blitz_completed_total 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn method_kinds_come_from_the_prefix() {
        assert_eq!(MethodKind::of("api.transfer"), MethodKind::Api);
        assert_eq!(MethodKind::of("session.login"), MethodKind::Session);
        assert_eq!(MethodKind::of("sys.ping"), MethodKind::Sys);
        assert_eq!(MethodKind::of("rpc.discover"), MethodKind::Rpc);
        assert_eq!(MethodKind::of("nope"), MethodKind::Other);
    }
}
