//! `blitz`: the thin command-line client. It makes one call, prints the
//! result as pretty JSON on stdout, or one `blitz: …` line on stderr.
//! `blitz login` keeps a session for the server list (see [`store`]) that
//! `call`, `status` and `instances` then join; `blitz logout` ends it.
//!
//! Exit codes, one per class of outcome, so that scripts can tell them apart
//! (the table is [`EXIT_CODES_HELP`]):
//!
//! - 0: success;
//! - 1: a local file could not be written or read (the result on stdout,
//!   the session file);
//! - 2: usage error (bad arguments, a bad `--server` list, bad params);
//! - 3: the server refused the call and says it may be retried
//!   (`data.retryable` is true: overloaded, shutting down, database down …),
//!   still so after the client's own retries;
//! - 4: the server refused the call for good (`data.retryable` false or
//!   absent), including a failed login and an expired stored session;
//! - 5: connection error: no server accepted the connection, or it broke
//!   before the request was sent; the call did not run;
//! - 6: outcome unknown: the connection broke or timed out after the
//!   request was sent, or the reply was not JSON-RPC; the call may have run.
//!
//! `blitz bench` (the load generator, [`bench`](mod@bench)) exits 0 when
//! the run ran, whatever it measured (rejections and connection errors are
//! in its report), 2 for bad options, 5 when no connection could be made or
//! a `--user` login was refused.

#![forbid(unsafe_code)]

mod bench;
mod failure;
mod prompt;
mod store;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use serde_json::{Map, Value};

use blitz::client::{CallError, Client, ClientOptions, Trust, DEFAULT_MAX_ATTEMPTS};
use blitz::protocol::code::UNAUTHENTICATED;
use failure::Failure;

/// The server list used when neither `--server` nor `BLITZ_SERVER` is set.
const DEFAULT_SERVER: &str = blitz::Config::DEFAULT_LISTEN;

/// The environment variable that replaces the default server list.
const SERVER_ENV: &str = "BLITZ_SERVER";

/// The exit code table, for `--help`.
const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  a local file could not be written or read (stdout, the session file)
  2  usage error (bad arguments, --server list or params)
  3  refused by the server, retryable (data.retryable = true), after the
     client's own retries (--max-attempts)
  4  refused by the server, final (data.retryable false or absent), also a
     failed login or an expired stored session
  5  connection error: no server could be reached, the call did not run
  6  outcome unknown: the connection broke or timed out after the request
     was sent, or the reply was not valid JSON-RPC; the call may have run

Sessions: `blitz login` stores the session key for the --server list in
$XDG_CONFIG_HOME/blitz/sessions/ (else ~/.config/blitz/sessions/, mode 0600);
call, status and instances join it; `blitz logout` ends it and removes it.";

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
    /// Server address(es), host:port[,host:port…]; a client starts at a
    /// random one and moves on when one is down, draining or full
    /// [env: BLITZ_SERVER] [default: 127.0.0.1:4063].
    #[arg(long, global = true, value_name = "HOST:PORT[,…]")]
    server: Option<String>,
    /// Deadline of the call in milliseconds, retries included, sent as
    /// `timeout_ms`; the client waits this long plus a 1 s margin.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    /// Attempts per call: retryable refusals and unreachable servers are
    /// tried again (after the server's retry_after_ms or a backoff) until
    /// this many attempts were made [default: 3].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: Option<u32>,
    /// Speak TLS and trust the CA certificate(s) in this PEM file; the
    /// host in --server is checked against the server's certificate.
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// Speak TLS and trust the operating system's root certificates.
    #[arg(long, global = true)]
    tls: bool,
    #[command(subcommand)]
    command: Command,
}

/// What to do.
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
        /// Authenticate this call alone with session KEY, sent in the
        /// request (its "session" member) instead of the stored session.
        /// (A key may begin with `-`: base64url.)
        #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
        session: Option<String>,
        /// Send the call with idempotency key KEY (1 to 256 bytes): the
        /// same call repeated with the same KEY returns the first outcome
        /// without running again; KEY with other params is -32011. Without
        /// it the call gets a fresh key of its own (safe retries).
        #[arg(long, value_name = "KEY", conflicts_with = "session",
              value_parser = parse_idempotency_key)]
        idempotency_key: Option<String>,
    },
    /// Check that the server answers (sys.ping, no database work).
    Ping,
    /// Show this instance's workers, queue, pool and latencies (sys.status).
    Status,
    /// List the live instances sharing the database (sys.instances), as a table.
    Instances,
    /// Load-test the server: many connections, closed or open loop.
    #[command(after_help = bench::BENCH_HELP)]
    Bench(bench::BenchArgs),
    /// Log in and keep the session for this --server list.
    Login(LoginArgs),
    /// End the session of this --server list and forget it.
    Logout,
}

/// `blitz login` flags.
#[derive(Debug, ClapArgs)]
struct LoginArgs {
    /// The user name [default: $USER].
    #[arg(short, long, value_name = "NAME")]
    user: Option<String>,
    /// Read the password from the first line of stdin instead of asking
    /// on the terminal.
    #[arg(long, conflicts_with = "no_password")]
    password_stdin: bool,
    /// Send no password (a server with auth.mode = "trust"; without a flag
    /// the password is asked only when the server is not in trust mode).
    #[arg(long)]
    no_password: bool,
}

impl Command {
    /// The method and params this command sends.
    fn request(&self) -> Result<(String, Value), String> {
        let empty = || Value::Object(Map::new());
        match self {
            Command::Call { method, params, .. } => Ok((method.clone(), parse_params(params)?)),
            Command::Ping => Ok(("sys.ping".into(), empty())),
            Command::Status => Ok(("sys.status".into(), empty())),
            Command::Instances => Ok(("sys.instances".into(), empty())),
            Command::Login(_) | Command::Logout | Command::Bench(_) => {
                Err("login, logout and bench make no single call".into())
            }
        }
    }

    /// Whether the stored session is joined before the call (`ping` needs none).
    fn uses_session(&self) -> bool {
        matches!(
            self,
            Command::Call { .. } | Command::Status | Command::Instances
        )
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

/// The longest idempotency key the server takes, in bytes.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// `--idempotency-key KEY`: 1 to 256 bytes, as the server requires.
fn parse_idempotency_key(key: &str) -> Result<String, String> {
    if (1..=MAX_IDEMPOTENCY_KEY_BYTES).contains(&key.len()) {
        Ok(key.to_string())
    } else {
        Err(format!(
            "a key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes, not {}",
            key.len()
        ))
    }
}

impl Args {
    /// Whom to trust over TLS: `--ca FILE`, else the system roots with `--tls`.
    fn trust(&self) -> Option<Trust> {
        match (&self.ca, self.tls) {
            (Some(ca), _) => Some(Trust::Ca(ca.clone())),
            (None, true) => Some(Trust::SystemRoots),
            (None, false) => None,
        }
    }
}

/// Runs the command the arguments describe.
fn run(args: &Args) -> Result<(), Failure> {
    let servers = server_list(args.server.as_deref()).map_err(Failure::Usage)?;
    match &args.command {
        Command::Login(login) => run_login(args, &servers, login),
        Command::Logout => run_logout(args, &servers),
        Command::Bench(bench_args) => {
            bench::run_bench(servers, args.timeout_ms, args.trust(), bench_args)
        }
        command => run_call(args, &servers, command),
    }
}

/// A client for `servers` with the `--max-attempts` of `args`.
fn connect(args: &Args, servers: &[String]) -> Result<Client, CallError> {
    let attempts = args.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    let mut options = ClientOptions::default().max_attempts(attempts);
    if let Some(trust) = args.trust() {
        options = options.trusting(&trust)?;
    }
    Client::connect_with(servers, options)
}

/// Makes one call, in the stored session if the command uses it, and
/// prints its result.
fn run_call(args: &Args, servers: &[String], command: &Command) -> Result<(), Failure> {
    let (method, params) = command.request().map_err(Failure::Usage)?;
    let mut client = connect(args, servers)?;
    let (own_session, own_key) = match command {
        Command::Call {
            session,
            idempotency_key,
            ..
        } => (session.as_deref(), idempotency_key.as_deref()),
        _ => (None, None),
    };
    if command.uses_session() && own_session.is_none() {
        join_stored(&mut client, servers)?;
    }
    let timeout = args.timeout_ms.map(Duration::from_millis);
    let result = match (own_session, own_key, timeout) {
        (Some(session), _, _) => client.call_in_session(session, &method, params, timeout),
        (None, Some(key), _) => client.call_with_key(&method, params, key, timeout),
        (None, None, Some(t)) => client.call_with_timeout(&method, params, t),
        (None, None, None) => client.call(&method, params),
    }
    .map_err(|error| Failure::Call {
        hint: (error.code() == Some(UNAUTHENTICATED))
            .then(|| "this needs a session: run `blitz login -u NAME` first".to_string()),
        error,
    })?;
    if let (Command::Instances, Value::Array(instances)) = (command, &result) {
        return say(&instances_table(instances));
    }
    let text = serde_json::to_string_pretty(&result).expect("a JSON value serializes");
    if let (Command::Status, Some(limit)) = (command, result.get("active_limit")) {
        eprintln!("{}", limit_line(limit));
    }
    say(&text)
}

/// `blitz status`'s line on stderr (stdout stays the JSON): the
/// concurrency limit, its range and the hold times the tuner reads (from
/// `sys.status`'s `active_limit`).
fn limit_line(limit: &Value) -> String {
    let ms = |v: &Value| v.as_f64().map_or("-".into(), |ms| format!("{ms} ms"));
    format!(
        "active limit {} (settled {}, {}, {}..{}, {} in use; mean hold {}, baseline {}, noise {})",
        limit["current"],
        limit["settled"],
        limit["mode"].as_str().unwrap_or("?"),
        limit["min"],
        limit["max"],
        limit["in_use"],
        ms(&limit["hold_ms"]),
        ms(&limit["baseline_hold_ms"]),
        limit["noise_pct"]
            .as_f64()
            .map_or("-".into(), |pct| format!("{pct} %"))
    )
}

/// `blitz instances`: the `sys.instances` result as a table, one instance a line.
fn instances_table(instances: &[Value]) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let header = [
        "ID",
        "ADDRESSES",
        "POOL",
        "SHARE",
        "HEARTBEAT",
        "VERSION",
        "STARTED",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    for i in instances {
        rows.push(vec![
            text(&i["id"]),
            text(&i["addresses"]),
            text(&i["pool_size"]),
            text(&i["share"]),
            format!("{} ms ago", text(&i["heartbeat_age_ms"])),
            text(&i["version"]),
            text(&i["started_at"]),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect();
    format!("{}\n{} instances", lines.join("\n"), instances.len())
}

/// Joins the session `blitz login` stored for `servers`. Without one, a
/// server in trust mode gets a login as `$USER` for this call alone, so a
/// newcomer on `make run` can call the API at once.
fn join_stored(client: &mut Client, servers: &[String]) -> Result<(), Failure> {
    let stored = match store::session_path(&servers.join(",")) {
        Ok(path) => load_key(&path)?,
        Err(_) => None,
    };
    let Some(key) = stored else {
        return log_in_if_trusted(client);
    };
    match client.join(&key) {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(UNAUTHENTICATED) => Err(Failure::SessionExpired),
        Err(e) => Err(e.into()),
    }
}

fn log_in_if_trusted(client: &mut Client) -> Result<(), Failure> {
    if !server_trusts(client) {
        return Ok(()); // the call will say -32006 and the hint says `blitz login`
    }
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "blitz".into());
    client.login(&user, None).map(|_| ()).map_err(Failure::from)
}

/// The session key stored at `path`, if any.
fn load_key(path: &Path) -> Result<Option<String>, Failure> {
    store::load(path).map_err(|e| {
        Failure::Local(format!(
            "cannot read the session file {}: {e}",
            path.display()
        ))
    })
}

/// `blitz login`: logs in, stores the key, says who and until when.
fn run_login(args: &Args, servers: &[String], login: &LoginArgs) -> Result<(), Failure> {
    let user = login_user(login)?;
    let list = servers.join(",");
    let path = store::session_path(&list).map_err(Failure::Local)?;
    let mut client = connect(args, servers)?;
    let password = login_password(login, &user, &list, || server_trusts(&mut client))?;
    let info = client
        .login(&user, password.as_deref())
        .map_err(|error| Failure::Call {
            hint: (error.code() == Some(UNAUTHENTICATED))
                .then(|| "login refused: check the user name and password".to_string()),
            error,
        })?;
    store::save(&path, &info.session).map_err(|e| {
        Failure::Local(format!(
            "logged in, but cannot store the session in {}: {e}",
            path.display()
        ))
    })?;
    say(&format!(
        "logged in as {} on {list}, session expires at {}",
        info.user, info.expires_at
    ))
}

/// Whether the server logs in by name alone (`sys.ping` says `auth: "trust"`),
/// so there is no password to ask for.
fn server_trusts(client: &mut Client) -> bool {
    client
        .call("sys.ping", Value::Object(Map::new()))
        .is_ok_and(|pong| pong["auth"] == "trust")
}

/// The user to log in as: `-u NAME`, else `$USER`.
fn login_user(login: &LoginArgs) -> Result<String, Failure> {
    login
        .user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Failure::Usage("no user name: pass -u NAME or set $USER".into()))
}

/// The password: none with `--no-password`, one line of stdin with
/// `--password-stdin`, none when the server `trusts` (trust mode), else
/// asked on the terminal without echo.
fn login_password(
    login: &LoginArgs,
    user: &str,
    list: &str,
    trusts: impl FnOnce() -> bool,
) -> Result<Option<String>, Failure> {
    if login.no_password {
        return Ok(None);
    }
    if login.password_stdin {
        return prompt::read_line_from(&mut std::io::stdin().lock())
            .map(Some)
            .map_err(|e| Failure::Usage(format!("--password-stdin: {e}")));
    }
    if trusts() {
        return Ok(None);
    }
    prompt::read_password(&format!("Password for {user} on {list}: "))
        .map(Some)
        .map_err(|e| {
            Failure::Usage(format!(
                "cannot ask for the password on the terminal ({e}); use --password-stdin or --no-password"
            ))
        })
}

/// `blitz logout`: ends the stored session on the server and removes its
/// file, also when the server says the session had already ended.
fn run_logout(args: &Args, servers: &[String]) -> Result<(), Failure> {
    let list = servers.join(",");
    let path = store::session_path(&list).map_err(Failure::Local)?;
    let Some(key) = load_key(&path)? else {
        return say(&format!("not logged in on {list}"));
    };
    let note = end_session(args, servers, &key).map_err(|error| Failure::Call {
        error,
        hint: Some(format!(
            "the session file was kept: run `blitz logout` again, or delete {}",
            path.display()
        )),
    })?;
    store::remove(&path).map_err(|e| {
        Failure::Local(format!(
            "logged out, but cannot remove the session file {}: {e}",
            path.display()
        ))
    })?;
    say(&format!("logged out of {list}{note}"))
}

/// Joins session `key` and logs it out; `Ok` with a note when the server
/// says it had already ended (-32006).
fn end_session(args: &Args, servers: &[String], key: &str) -> Result<&'static str, CallError> {
    let ended = connect(args, servers).and_then(|mut client| {
        client.join(key)?;
        client.logout()
    });
    match ended {
        Ok(()) => Ok(""),
        Err(e) if e.code() == Some(UNAUTHENTICATED) => Ok(" (the session had already ended)"),
        Err(e) => Err(e),
    }
}

/// Writes `text` and a newline to stdout.
fn say(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Local(format!("cannot write to stdout: {e}")))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    match run(&args) {
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
    fn a_session_key_may_begin_with_a_hyphen() {
        let args = Args::try_parse_from(["blitz", "call", "--session", "-pQ_x", "api.add", "a=1"])
            .expect("parses");
        let Command::Call {
            session, method, ..
        } = args.command
        else {
            panic!("not a call");
        };
        assert_eq!(
            (session.as_deref(), method.as_str()),
            (Some("-pQ_x"), "api.add")
        );
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
    fn status_line_shows_the_limit_and_its_hold_times() {
        let limit = json!({"mode": "auto", "current": 5, "settled": 4, "min": 1, "max": 16,
            "in_use": 3, "hold_ms": 2.5, "baseline_hold_ms": null, "noise_pct": 4.2});
        assert_eq!(
            limit_line(&limit),
            "active limit 5 (settled 4, auto, 1..16, 3 in use; mean hold 2.5 ms, baseline -, noise 4.2 %)"
        );
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
    fn idempotency_keys_are_1_to_256_bytes() {
        assert_eq!(parse_idempotency_key("k-1").unwrap(), "k-1");
        assert!(parse_idempotency_key(&"é".repeat(128)).is_ok(), "256 bytes");
        for bad in [String::new(), "x".repeat(257), "é".repeat(129)] {
            let e = parse_idempotency_key(&bad).unwrap_err();
            let len = bad.len();
            assert_eq!(e, format!("a key must be 1 to 256 bytes, not {len}"));
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
