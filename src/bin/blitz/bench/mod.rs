//! `blitz bench`: the options of the load generator ([`load`]) and
//! printing its report.
//!
//! The generator's files, bottom-up (each uses only files above it):
//! [`options`] (what to run), [`report`] (what it measured, as text or
//! JSON), [`cpu`] (`/proc` and getrusage accounting), [`http_client`]
//! (HTTP/1.1 framing), [`timer`] and [`poller`] (the event loop's waits),
//! [`requests`] (calls rendered, replies classified), [`connect`] (a
//! connection readied and logged in), [`progress`] (counters shared by the
//! threads), [`tally`] (what one thread measured), [`engine`] (one
//! event-loop thread), [`load`] (the run: threads, measured phase, report);
//! [`series`] (`--series`: the successes' latency per interval) under
//! [`tally`]; [`wire`] (a connection's bytes, plaintext or TLS) under [`connect`];
//! [`storm`] (`--handshakes`: new TLS connections, one call each) beside
//! [`load`].

mod connect;
mod cpu;
mod engine;
mod http_client;
mod load;
mod options;
mod poller;
mod progress;
mod report;
mod requests;
mod series;
mod storm;
mod tally;
mod timer;
mod wire;

use std::io::Write;
use std::time::Duration;

use serde_json::{Map, Value};

use blitz::client::{ClientTls, Trust};

use crate::failure::Failure;
use options::{BenchError, Options, Params, Stop};

/// How `blitz bench` works, for `blitz bench --help`.
pub const BENCH_HELP: &str = "\
Closed loop (default): each connection sends its next call when the reply
to the last one arrives. Open loop (--rate): calls leave on a fixed
schedule, pipelined on the connections, and latency counts from the
scheduled send time. --timeout-ms is sent with every call and is the
deadline of goodput. The default method, api.transfer, draws pgbench's
TPC-B values: aid 1..100000*scale, tid 1..10*scale, bid 1..scale,
delta -5000..5000. Connections are spread over the --server addresses in
turn; a refusal is counted, never retried. A progress line goes to stderr
once a second.

Example: blitz bench -c 500 --duration 10 --scale 10 --server-pid $(pidof blitz-server)";

/// The options of `blitz bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Client connections, all opened before the measured phase.
    #[arg(short = 'c', long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    connections: u64,
    /// Stop after N calls in total (default: --duration 10).
    #[arg(long, value_name = "N", conflicts_with = "duration",
          value_parser = clap::value_parser!(u64).range(1..))]
    calls: Option<u64>,
    /// Stop sending after SECS seconds (fractions allowed).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// The method to call.
    #[arg(long, value_name = "METHOD", default_value = "api.transfer")]
    method: String,
    /// Params of every call, one JSON object or array (default: the
    /// transfer draw for api.transfer, {} for other methods).
    #[arg(long, value_name = "JSON")]
    params: Option<String>,
    /// pgbench scale of the database, for the api.transfer draw.
    #[arg(long, value_name = "S", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=20_000))]
    scale: u32,
    /// Open loop at R calls per second in total (default: closed loop).
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// Event-loop threads the connections are spread over (0 = one per CPU
    /// this process may run on, at most 4 and at most one per connection).
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Log in on every connection first with session.login {"user": NAME}
    /// (once per connection, not timed).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Send a fresh idempotency_key with every call (what a keyed call costs).
    #[arg(long)]
    idempotency_keys: bool,
    /// pid of the server, to report its CPU time per call (/proc/PID/stat).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// pid of PostgreSQL's postmaster, to report PostgreSQL's CPU per call.
    #[arg(long, value_name = "PID")]
    postgres_pid: Option<u32>,
    /// Write the successes' latency per 250 ms to FILE as CSV (t_s, calls,
    /// p50_ms, p99_ms: Unix time at each interval's end, exact percentiles).
    #[arg(long, value_name = "FILE")]
    series: Option<std::path::PathBuf>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(short, long)]
    quiet: bool,
    /// Speak JSON-RPC over HTTP/1.1 (keep-alive): --server is the
    /// server.http_listen address; --user's session goes in a bearer header.
    #[arg(long)]
    http: bool,
    /// A storm of new TLS connections instead of calls (needs --ca or
    /// --tls): each of the -c connections in flight connects, handshakes,
    /// sends one sys.ping, reads the reply and closes, and is replaced at
    /// once; reports handshakes/s and, with --server-pid, the server's CPU
    /// per handshake. Full handshakes unless --resume.
    #[arg(long, conflicts_with_all = ["http", "rate", "calls", "user"])]
    handshakes: bool,
    /// With --handshakes: keep each client's sessions and resume them.
    #[arg(long, requires = "handshakes")]
    resume: bool,
}

impl BenchArgs {
    /// The library's options, with the global `--server` and `--timeout-ms`.
    fn options(&self, servers: Vec<String>, timeout_ms: Option<u64>) -> Result<Options, String> {
        let stop = match (self.calls, self.duration) {
            (Some(n), _) => Stop::Calls(n),
            (None, Some(secs)) if secs.is_finite() && secs > 0.0 && secs < 1e9 => {
                Stop::Duration(Duration::from_secs_f64(secs))
            }
            (None, Some(secs)) => return Err(format!("--duration {secs}: expected seconds > 0")),
            (None, None) => Stop::Duration(Duration::from_secs(10)),
        };
        let params = match &self.params {
            Some(text) => match serde_json::from_str(text) {
                Ok(v @ (Value::Object(_) | Value::Array(_))) => Params::Fixed(v),
                _ => {
                    return Err(format!(
                        "--params {text:?}: expected one JSON object or array"
                    ))
                }
            },
            None if self.method == "api.transfer" => Params::Transfer { scale: self.scale },
            None => Params::Fixed(Value::Object(Map::new())),
        };
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(format!("--rate {r}: expected calls per second > 0"));
            }
        }
        Ok(Options {
            servers,
            connections: self.connections as usize,
            threads: self.threads,
            stop,
            method: self.method.clone(),
            params,
            rate: self.rate,
            timeout_ms,
            user: self.user.clone(),
            idempotency_keys: self.idempotency_keys,
            server_pid: self.server_pid,
            postgres_pid: self.postgres_pid,
            series: self.series.clone(),
            progress: !self.quiet,
            http: self.http,
            tls: None,
        })
    }
}

/// Runs `blitz bench` and prints its report (text, or JSON with `--json`).
/// Over TLS with `trust` (`--ca` / `--tls`).
pub fn run_bench(
    servers: Vec<String>,
    timeout_ms: Option<u64>,
    trust: Option<Trust>,
    bench_args: &BenchArgs,
) -> Result<(), Failure> {
    if bench_args.handshakes {
        return run_storm(servers, trust, bench_args);
    }
    let mut options = bench_args
        .options(servers, timeout_ms)
        .map_err(Failure::Usage)?;
    if let Some(trust) = trust {
        let tls = ClientTls::new(&trust).map_err(|e| Failure::Usage(e.to_string()))?;
        options.tls = Some(tls.config());
    }
    let report = load::run(&options).map_err(|e| match e {
        BenchError::Usage(m) => Failure::Usage(m),
        BenchError::Connect(m) => Failure::Connect(m),
    })?;
    let text = match bench_args.json {
        true => render_json(&report)?,
        false => report.to_text(),
    };
    print_report(&text)
}

/// `blitz bench --handshakes` (see [`storm`]).
fn run_storm(
    servers: Vec<String>,
    trust: Option<Trust>,
    bench_args: &BenchArgs,
) -> Result<(), Failure> {
    let Some(trust) = trust else {
        return Err(Failure::Usage(
            "bench --handshakes: handshakes need TLS; add --ca FILE or --tls".into(),
        ));
    };
    let tls = ClientTls::new(&trust).map_err(|e| Failure::Usage(e.to_string()))?;
    let server = servers.first().cloned().unwrap_or_default();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&server)
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Failure::Usage(format!("--server {server:?}: not an address")))?;
    let host = server
        .rsplit_once(':')
        .map_or(server.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let duration = match bench_args.duration {
        None => Duration::from_secs(10),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Duration::from_secs_f64(s),
        Some(s) => {
            return Err(Failure::Usage(format!(
                "--duration {s}: expected seconds > 0"
            )))
        }
    };
    let plan = storm::Storm {
        addr,
        host,
        tls: tls.config(),
        resume: bench_args.resume,
        in_flight: bench_args.connections as usize,
        threads: if bench_args.threads == 0 {
            1
        } else {
            bench_args.threads
        },
        duration,
        server_pid: bench_args.server_pid,
    };
    let report = storm::run(&plan).map_err(Failure::Connect)?;
    if report.handshakes == 0 {
        return Err(Failure::Connect(format!(
            "bench --handshakes: no handshake completed with {server}: {}",
            report.first_failure.as_deref().unwrap_or("no answer")
        )));
    }
    let text = match bench_args.json {
        true => render_json(&report)?,
        false => report.to_text(),
    };
    print_report(&text)
}

/// A report as one line of JSON (`--json`).
fn render_json(report: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string(report)
        .map_err(|e| Failure::Local(format!("cannot render the report: {e}")))
}

fn print_report(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", text.trim_end())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Local(format!("cannot write the report to stdout: {e}")))
}
