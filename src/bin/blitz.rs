//! `blitz`: the thin command-line client. It makes one call, prints the
//! result as pretty JSON on stdout, or one `blitz: …` line on stderr.
//!
//! Exit codes, one per class of outcome, so that scripts can tell them apart:
//!
//! - 0: success;
//! - 1: the result could not be written to stdout;
//! - 2: usage error (bad arguments, a bad `--server` list, bad params);
//! - 3: the server refused the call and says it may be retried
//!   (`data.retryable` is true: overloaded, shutting down, database down …);
//! - 4: the server refused the call for good (`data.retryable` false or absent);
//! - 5: connection error: no server accepted the connection, the connection
//!   broke or timed out, or the server sent something that is not a reply.
//!
//! `blitz bench` (the load generator in [`blitz::bench`]) exits 0 when the
//! run ran, whatever it measured (rejections and connection errors are in
//! its report), 2 for bad options, 5 when no connection could be made or a
//! `--user` login was refused.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};

use blitz::bench;
use blitz::client::{CallError, Client, ErrorKind};

/// The server list used when neither `--server` nor `BLITZ_SERVER` is set.
const DEFAULT_SERVER: &str = "127.0.0.1:4063";

/// The environment variable that replaces the default server list.
const SERVER_ENV: &str = "BLITZ_SERVER";

/// The exit code table, for `--help`.
const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the result could not be written to stdout
  2  usage error (bad arguments, --server list or params)
  3  refused by the server, retryable (data.retryable = true)
  4  refused by the server, final (data.retryable false or absent)
  5  connection error (cannot connect, connection broke or timed out,
     or the server's reply was not valid JSON-RPC)";

/// How `blitz call` builds params, for `blitz call --help`.
const PARAMS_HELP: &str = "\
Params:
  No PARAMS sends {}. One argument that is a JSON object or array is sent
  as it is:   blitz call api.transfer '{\"from\": 1, \"to\": 2}'
  Otherwise every argument is KEY=VALUE and they make one object. VALUE is
  taken as JSON when it parses as JSON, else as a plain string:
    aid=5 → 5    flag=true → true    tags=[1,2] → [1,2]    x=null → null
    name=hello → \"hello\"    name='\"5\"' → \"5\" (quote JSON to force a string)
  KEY:=VALUE requires VALUE to be JSON (an error otherwise).";

/// blitz thin client: makes one JSON-RPC call to a blitz server and prints
/// the result as JSON.
#[derive(Debug, Parser)]
#[command(name = "blitz", version, after_help = EXIT_CODES_HELP)]
struct Args {
    /// Server address(es), host:port[,host:port…], tried in order
    /// [env: BLITZ_SERVER] [default: 127.0.0.1:4063].
    #[arg(long, global = true, value_name = "HOST:PORT[,…]")]
    server: Option<String>,
    /// Deadline of the call in milliseconds, sent as `timeout_ms`; the client
    /// waits this long plus a 1 s margin for the reply.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

/// What to call.
#[derive(Debug, Subcommand)]
enum Command {
    /// Call METHOD with KEY=VALUE params or one JSON object/array.
    #[command(after_help = PARAMS_HELP)]
    Call {
        /// The method, e.g. api.transfer or sys.status.
        method: String,
        /// KEY=VALUE …, KEY:=JSON …, or one JSON object or array.
        #[arg(value_name = "PARAMS")]
        params: Vec<String>,
    },
    /// Check that the server answers (sys.ping, no database work).
    Ping,
    /// Show this instance's workers, queue, pool and latencies (sys.status).
    Status,
    /// List the live instances sharing the database (sys.instances).
    Instances,
    /// Load-test the server: many connections, closed or open loop.
    #[command(after_help = BENCH_HELP)]
    Bench(BenchArgs),
}

/// How `blitz bench` works, for `blitz bench --help`.
const BENCH_HELP: &str = "\
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
struct BenchArgs {
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
    /// Event-loop threads the connections are spread over (0 = min(connections, 4)).
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Log in on every connection first with session.login {"user": NAME}
    /// (once per connection, not timed).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// pid of the server, to report its CPU time per call (/proc/PID/stat).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// pid of PostgreSQL's postmaster, to report PostgreSQL's CPU per call.
    #[arg(long, value_name = "PID")]
    postgres_pid: Option<u32>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(short, long)]
    quiet: bool,
}

impl BenchArgs {
    /// The library's options, with the global `--server` and `--timeout-ms`.
    fn options(
        &self,
        servers: Vec<String>,
        timeout_ms: Option<u64>,
    ) -> Result<bench::Options, String> {
        let stop = match (self.calls, self.duration) {
            (Some(n), _) => bench::Stop::Calls(n),
            (None, Some(secs)) if secs.is_finite() && secs > 0.0 && secs < 1e9 => {
                bench::Stop::Duration(Duration::from_secs_f64(secs))
            }
            (None, Some(secs)) => return Err(format!("--duration {secs}: expected seconds > 0")),
            (None, None) => bench::Stop::Duration(Duration::from_secs(10)),
        };
        let params = match &self.params {
            Some(text) => match serde_json::from_str(text) {
                Ok(v @ (Value::Object(_) | Value::Array(_))) => bench::Params::Fixed(v),
                _ => {
                    return Err(format!(
                        "--params {text:?}: expected one JSON object or array"
                    ))
                }
            },
            None if self.method == "api.transfer" => bench::Params::Transfer { scale: self.scale },
            None => bench::Params::Fixed(Value::Object(Map::new())),
        };
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(format!("--rate {r}: expected calls per second > 0"));
            }
        }
        Ok(bench::Options {
            servers,
            connections: self.connections as usize,
            threads: self.threads,
            stop,
            method: self.method.clone(),
            params,
            rate: self.rate,
            timeout_ms,
            user: self.user.clone(),
            server_pid: self.server_pid,
            postgres_pid: self.postgres_pid,
            progress: !self.quiet,
        })
    }
}

impl Command {
    /// The method and params this command sends.
    fn request(&self) -> Result<(String, Value), String> {
        match self {
            Command::Call { method, params } => Ok((method.clone(), parse_params(params)?)),
            Command::Ping => Ok(("sys.ping".into(), Value::Object(Map::new()))),
            Command::Status => Ok(("sys.status".into(), Value::Object(Map::new()))),
            Command::Instances => Ok(("sys.instances".into(), Value::Object(Map::new()))),
            Command::Bench(_) => Err("blitz bench makes many calls, not one".into()),
        }
    }
}

/// Why a run failed, each with its exit code.
#[derive(Debug)]
enum Failure {
    /// Bad arguments: exit 2.
    Usage(String),
    /// The call failed: exit 3, 4 or 5 by class.
    Call(CallError),
    /// stdout could not be written: exit 1.
    Output(std::io::Error),
    /// `blitz bench` could not connect or log in: exit 5.
    Bench(String),
}

impl Failure {
    /// The exit code of this failure (see the module doc).
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Output(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Call(e) => call_exit_code(e),
            Failure::Bench(_) => 5,
        }
    }

    /// The one line printed to stderr after `blitz: `.
    fn message(&self) -> String {
        match self {
            Failure::Usage(m) | Failure::Bench(m) => m.clone(),
            Failure::Call(e) => e.to_string(),
            Failure::Output(e) => format!("cannot write the result to stdout: {e}"),
        }
    }
}

/// 3 for a retryable server refusal, 4 for a final one, 5 for connection
/// and protocol errors.
fn call_exit_code(error: &CallError) -> u8 {
    match error.kind() {
        ErrorKind::Server if error.retryable() => 3,
        ErrorKind::Server => 4,
        ErrorKind::Connection | ErrorKind::Protocol => 5,
    }
}

/// Splits `host:port[,host:port…]`, refusing empty entries and entries
/// without a numeric port.
fn parse_servers(list: &str) -> Result<Vec<String>, String> {
    let servers: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
    for server in &servers {
        let port = server
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        if !matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
            return Err(format!(
                "--server {list:?}: {server:?} is not host:port (e.g. 127.0.0.1:4063; several are separated by commas)"
            ));
        }
    }
    Ok(servers)
}

/// The server list: `--server`, else a non-empty `BLITZ_SERVER`, else the default.
fn server_list(flag: Option<&str>) -> Result<Vec<String>, String> {
    let from_env = std::env::var(SERVER_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty());
    match (flag, from_env) {
        (Some(list), _) => parse_servers(list),
        (None, Some(list)) => {
            parse_servers(&list).map_err(|e| e.replacen("--server", SERVER_ENV, 1))
        }
        (None, None) => parse_servers(DEFAULT_SERVER),
    }
}

/// The params of `blitz call`: `{}` for none, one JSON object or array as
/// it is, else an object built from `KEY=VALUE` / `KEY:=JSON` arguments.
fn parse_params(args: &[String]) -> Result<Value, String> {
    if let [only] = args {
        if let Ok(v @ (Value::Object(_) | Value::Array(_))) = serde_json::from_str(only) {
            return Ok(v);
        }
    }
    let mut params = Map::new();
    for arg in args {
        let (key, value) = parse_pair(arg)?;
        if params.insert(key.clone(), value).is_some() {
            return Err(format!("param {key:?} is given twice"));
        }
    }
    Ok(Value::Object(params))
}

/// One `KEY=VALUE` (JSON if it parses, else a string) or `KEY:=JSON`.
fn parse_pair(arg: &str) -> Result<(String, Value), String> {
    let Some((key, text)) = arg.split_once('=') else {
        return Err(format!(
            "param {arg:?}: expected KEY=VALUE, KEY:=JSON or one JSON object/array (see blitz call --help)"
        ));
    };
    let (key, raw) = match key.strip_suffix(':') {
        Some(key) => (key, true),
        None => (key, false),
    };
    if key.is_empty() {
        return Err(format!("param {arg:?}: the name before '=' is empty"));
    }
    let value = match serde_json::from_str::<Value>(text) {
        Ok(v) => v,
        Err(e) if raw => return Err(format!("param {key:?}: {text:?} is not JSON ({e})")),
        Err(_) => Value::String(text.to_string()),
    };
    Ok((key.to_string(), value))
}

/// Makes the call the arguments describe and prints its result.
fn run(args: &Args) -> Result<(), Failure> {
    let servers = server_list(args.server.as_deref()).map_err(Failure::Usage)?;
    let (method, params) = args.command.request().map_err(Failure::Usage)?;
    let mut client = Client::connect(&servers).map_err(Failure::Call)?;
    let result = match args.timeout_ms {
        Some(ms) => client.call_with_timeout(&method, params, Duration::from_millis(ms)),
        None => client.call(&method, params),
    }
    .map_err(Failure::Call)?;
    print_json(&result).map_err(Failure::Output)
}

/// Runs `blitz bench` and prints its report (text, or JSON with `--json`).
fn run_bench(args: &Args, bench_args: &BenchArgs) -> Result<(), Failure> {
    let servers = server_list(args.server.as_deref()).map_err(Failure::Usage)?;
    let options = bench_args
        .options(servers, args.timeout_ms)
        .map_err(Failure::Usage)?;
    let report = bench::run(&options).map_err(|e| match e {
        bench::BenchError::Usage(m) => Failure::Usage(m),
        bench::BenchError::Connect(m) => Failure::Bench(m),
    })?;
    let text = if bench_args.json {
        serde_json::to_string(&report).map_err(|e| Failure::Output(std::io::Error::other(e)))?
    } else {
        report.to_text()
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", text.trim_end())
        .and_then(|()| out.flush())
        .map_err(Failure::Output)
}

/// Writes `value` to stdout as pretty JSON and a newline.
fn print_json(value: &Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let outcome = match &args.command {
        Command::Bench(bench_args) => run_bench(&args, bench_args),
        _ => run(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("blitz: {}", failure.message());
            ExitCode::from(failure.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(args: &[&str]) -> Result<Value, String> {
        parse_params(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn no_params_is_an_empty_object() {
        assert_eq!(params(&[]).unwrap(), json!({}));
    }

    #[test]
    fn values_are_json_when_they_parse_else_strings() {
        let p = params(&[
            "aid=5",
            "flag=true",
            r#"name="x""#,
            "tags=[1,2]",
            "word=hello",
            "empty=",
            "eq=a=b",
            "zip=01234",
            "nothing=null",
        ])
        .unwrap();
        assert_eq!(
            p,
            json!({"aid": 5, "flag": true, "name": "x", "tags": [1, 2], "word": "hello",
                   "empty": "", "eq": "a=b", "zip": "01234", "nothing": null})
        );
    }

    #[test]
    fn colon_equals_requires_json() {
        assert_eq!(
            params(&["n:=7", "o:={\"a\":1}"]).unwrap(),
            json!({"n": 7, "o": {"a": 1}})
        );
        let e = params(&["n:=hello"]).unwrap_err();
        assert!(e.starts_with("param \"n\": \"hello\" is not JSON"), "{e}");
    }

    #[test]
    fn one_json_object_or_array_is_sent_as_is() {
        assert_eq!(params(&[r#"{"a": [1]}"#]).unwrap(), json!({"a": [1]}));
        assert_eq!(params(&["[1, \"x\"]"]).unwrap(), json!([1, "x"]));
    }

    #[test]
    fn bad_params_are_usage_errors() {
        assert!(params(&["noequals"])
            .unwrap_err()
            .contains("expected KEY=VALUE"));
        assert!(params(&["5"]).unwrap_err().contains("expected KEY=VALUE"));
        assert!(params(&["=5"])
            .unwrap_err()
            .contains("name before '=' is empty"));
        assert!(params(&["a=1", "a=2"]).unwrap_err().contains("given twice"));
        assert!(params(&[r#"{"a":1}"#, "b=2"]).is_err());
    }

    #[test]
    fn server_lists_need_host_and_port() {
        assert_eq!(
            parse_servers("a:1, b:2").unwrap(),
            vec!["a:1".to_string(), "b:2".to_string()]
        );
        assert_eq!(
            parse_servers("[::1]:4063").unwrap(),
            vec!["[::1]:4063".to_string()]
        );
        for bad in ["a", "a:", ":1", "a:x", "a:1,", "a:70000"] {
            assert!(parse_servers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commands_map_to_methods() {
        assert_eq!(
            Command::Ping.request().unwrap(),
            ("sys.ping".into(), json!({}))
        );
        assert_eq!(Command::Status.request().unwrap().0, "sys.status");
        assert_eq!(Command::Instances.request().unwrap().0, "sys.instances");
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
