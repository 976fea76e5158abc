//! What a `blitz bench` run is asked to do ([`Options`]: servers,
//! connections, loop, stop rule, method and params) and why a run could not
//! be made at all ([`BenchError`]).

use std::time::Duration;

use serde_json::Value;

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
    /// Event-loop threads (0 = one per CPU the process may run on, at most
    /// 4 and at most one per connection).
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
    /// Write the successes' latency per interval to this CSV file ([`series`](super::series)).
    pub series: Option<std::path::PathBuf>,
    /// Print one progress line a second on stderr.
    pub progress: bool,
    /// Speak JSON-RPC over HTTP/1.1 to `servers` (see the module doc).
    pub http: bool,
    /// Speak TLS with this client configuration (`--ca` / `--tls`).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
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

#[cfg(test)]
impl Options {
    /// A closed loop of 200 api.transfer calls on 4 connections, 2 threads,
    /// with a 1 s timeout, against `server`.
    pub(super) fn example(server: &str) -> Options {
        Options {
            servers: vec![server.to_string()],
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
            series: None,
            progress: false,
            http: false,
            tls: None,
        }
    }
}
