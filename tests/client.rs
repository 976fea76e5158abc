//! The thin client over real TCP.
//!
//! The first part runs the `Client` library and the `blitz` binary against
//! a scripted JSON-RPC responder defined here, which answers each request
//! line with a canned reply chosen by its method and logs what each
//! connection received. It checks the client's own mechanics: framing, ids,
//! error classes, exit codes, and the order of `session.join` and the call
//! on a new connection.
//!
//! The second part runs the retry discipline and failover against real
//! `blitz-server` processes and PostgreSQL (tests/support), and the session
//! tests that wait for `session.*` on the server (ignored until then).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use blitz::client::{Client, ClientOptions, ErrorKind, RetryBudget, TIMEOUT_MARGIN};
use serde_json::{json, Value};
use support::certs::temp_dir;
use support::{Rpc, Server, TestDb};

/// What one responder connection received: (connection number, method, params).
type Received = Arc<Mutex<Vec<(usize, String, Value)>>>;

/// A scripted JSON-RPC peer on 127.0.0.1 that counts its connections.
struct Responder {
    addr: String,
    connections: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    received: Received,
}

/// The responder's state shared by its connections.
#[derive(Clone, Default)]
struct Script {
    received: Received,
    draining: Arc<AtomicBool>,
}

impl Responder {
    /// Starts the responder on an ephemeral port; its threads live until
    /// the test process exits.
    fn start() -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the responder");
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let closed = Arc::new(AtomicUsize::new(0));
        let closing = closed.clone();
        let script = Script::default();
        let received = script.received.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let number = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let script = script.clone();
                let closing = closing.clone();
                thread::spawn(move || {
                    serve(stream, number, &script); // the stream is closed when it returns
                    closing.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Responder {
            addr,
            connections,
            closed,
            received,
        }
    }

    fn servers(&self) -> Vec<String> {
        vec![self.addr.clone()]
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections the responder has closed.
    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    /// The (connection number, method) of every request so far.
    fn methods(&self) -> Vec<(usize, String)> {
        let received = self.received.lock().unwrap();
        received.iter().map(|(n, m, _)| (*n, m.clone())).collect()
    }

    /// The params of every `method` request so far.
    fn params_of(&self, method: &str) -> Vec<Value> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter(|(_, m, _)| m == method)
            .map(|(_, _, p)| p.clone())
            .collect()
    }
}

/// A `host:port` on which nothing listens.
/// An address where a connection is refused: a socket bound but never
/// listening, kept open for the test process's life, so the port cannot be
/// handed to another test's listener meanwhile (a port bound and released
/// could be, and then the connection would be accepted).
fn refused_addr() -> String {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    std::mem::forget(socket);
    addr.to_string()
}

fn ok(id: &Value, result: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

fn err(id: &Value, code: i64, message: &str, data: Option<Value>) -> String {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error}).to_string()
}

/// Answers one connection, request line by request line.
fn serve(stream: TcpStream, number: usize, script: &Script) {
    let mut out = stream.try_clone().unwrap();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let request: Value = serde_json::from_str(&line).expect("the client sends JSON");
        let id = request["id"].clone();
        let method = request["method"].as_str().unwrap_or_default().to_string();
        let params = request["params"].clone();
        script
            .received
            .lock()
            .unwrap()
            .push((number, method.clone(), params.clone()));
        let write = |out: &mut TcpStream, text: &str| {
            out.write_all(text.as_bytes()).unwrap();
            out.flush().unwrap();
        };
        if let Some(reply) = session_reply(&id, &method, &params) {
            write(&mut out, &(reply + "\n"));
            continue;
        }
        if script.draining.load(Ordering::SeqCst) {
            let data = json!({"retryable": true, "retry_after_ms": 1000});
            let reply = err(&id, -32003, "Server shutting down", Some(data));
            write(&mut out, &(reply + "\n"));
            continue;
        }
        match method.as_str() {
            "echo" => write(&mut out, &(ok(&id, request.clone()) + "\n")),
            "sys.ping" => write(&mut out, &(ok(&id, json!({"pong": true})) + "\n")),
            "sys.status" => write(&mut out, &(ok(&id, json!({"workers": 4})) + "\n")),
            "sys.instances" => write(
                &mut out,
                &(ok(
                    &id,
                    json!([{"id": "h:4063-ab12", "addresses": ["127.0.0.1:4063"], "pool_size": 4, "share": 4, "heartbeat_age_ms": 7, "version": "0.1.0", "started_at": "2026-01-01T00:00:00Z"}]),
                ) + "\n"),
            ),
            "overloaded" => write(
                &mut out,
                &(err(
                    &id,
                    -32001,
                    "Server overloaded",
                    Some(json!({"retryable": true, "retry_after_ms": 120,
                                "queue_depth": 1000, "queue_capacity": 1000, "instance": "t"})),
                ) + "\n"),
            ),
            "bad_params" => write(
                &mut out,
                &(err(
                    &id,
                    -32602,
                    "Invalid params: parameter \"aid\": expected an integer",
                    Some(json!({"retryable": false, "param": "aid"})),
                ) + "\n"),
            ),
            "no_data" => write(
                &mut out,
                &(err(&id, -32601, "Method not found", None) + "\n"),
            ),
            "wrong_id_first" => {
                let stale = ok(&json!(9999), json!("not yours"));
                write(&mut out, &format!("{stale}\n{}\n", ok(&id, json!("yours"))));
            }
            "split" => {
                let reply = ok(&id, json!("in two pieces")) + "\n";
                let (a, b) = reply.split_at(reply.len() / 2);
                write(&mut out, a);
                thread::sleep(Duration::from_millis(100));
                write(&mut out, b);
            }
            "null_id_error" => write(
                &mut out,
                &(err(
                    &Value::Null,
                    -32600,
                    "Invalid Request",
                    Some(json!({"retryable": false})),
                ) + "\n"),
            ),
            "slow" => {
                let ms = request["params"]["ms"].as_u64().unwrap();
                thread::sleep(Duration::from_millis(ms));
                write(&mut out, &(ok(&id, json!("late")) + "\n"));
            }
            "reply_then_close" => {
                write(&mut out, &(ok(&id, json!("bye")) + "\n"));
                return;
            }
            "close" => return,
            "start_draining" => {
                script.draining.store(true, Ordering::SeqCst);
                write(&mut out, &(ok(&id, json!(true)) + "\n"));
            }
            "not_json" => write(&mut out, "this is not json\n"),
            other => write(
                &mut out,
                &(err(&id, -32601, &format!("no {other}"), None) + "\n"),
            ),
        }
    }
}

/// The scripted `session.*` replies: a login as USER gets session
/// `key-USER`; joining a key that contains `gone` is -32006.
fn session_reply(id: &Value, method: &str, params: &Value) -> Option<String> {
    let unauthenticated = || {
        let data = json!({"retryable": false});
        err(id, -32006, "Unauthenticated", Some(data))
    };
    let info = |key: &str, user: &str| {
        ok(
            id,
            json!({"session": key, "user": user, "expires_at": "2030-01-01T00:00:00Z"}),
        )
    };
    match method {
        "session.login" => {
            let user = params["user"].as_str().unwrap_or_default();
            Some(info(&format!("key-{user}"), user))
        }
        "session.join" => {
            let key = params["session"].as_str().unwrap_or_default();
            Some(match key.strip_prefix("key-") {
                _ if key.contains("gone") => unauthenticated(),
                Some(user) => info(key, user),
                None => info(key, "someone"),
            })
        }
        "session.logout" => Some(ok(id, json!(true))),
        _ => None,
    }
}

// ---- the library ----

#[test]
fn call_sends_increasing_ids_params_and_timeout_ms() {
    let r = Responder::start();
    let mut c = unkeyed(&r.servers());
    assert_eq!(c.server(), Some(r.addr.as_str()));
    let first = c.call("echo", json!({"aid": 5})).unwrap();
    assert_eq!(
        first,
        json!({"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"aid": 5}})
    );
    let second = c
        .call_with_timeout("echo", json!([1, 2]), Duration::from_millis(2500))
        .unwrap();
    assert_eq!(second["id"], 2);
    assert_eq!(second["params"], json!([1, 2]));
    assert_eq!(second["timeout_ms"], 2500);
    let third = c.call("echo", Value::Null).unwrap();
    assert_eq!(third["id"], 3);
    assert!(third.get("params").is_none());
    assert_eq!(r.connections(), 1);
}

#[test]
fn error_reply_carries_code_message_data_and_retry_advice() {
    let r = Responder::start();
    let no_retries = ClientOptions::default()
        .max_attempts(1)
        .idempotency_keys(false);
    let mut c = Client::connect_with(&r.servers(), no_retries).unwrap();
    let e = c.call("overloaded", json!({})).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Server);
    assert_eq!(e.code(), Some(-32001));
    assert_eq!(e.message(), "Server overloaded");
    assert_eq!(e.data().unwrap()["queue_depth"], 1000);
    assert!(e.retryable());
    assert_eq!(e.retry_after(), Some(Duration::from_millis(120)));
    assert_eq!(e.attempts(), 1);
    assert_eq!(
        e.to_string(),
        "error -32001 Server overloaded (retry after 120 ms)"
    );

    let e = c.call("bad_params", json!({"aid": "x"})).unwrap_err();
    assert!(!e.retryable());
    assert_eq!(
        e.to_string(),
        "error -32602 Invalid params: parameter \"aid\": expected an integer (param aid)"
    );

    let e = c.call("no_data", json!({})).unwrap_err();
    assert_eq!(
        (e.code(), e.data().is_none(), e.retryable()),
        (Some(-32601), true, false)
    );
    // Error replies leave the connection in step.
    assert_eq!(c.call("echo", json!({})).unwrap()["id"], 4);
    assert_eq!(r.connections(), 1);
}

#[test]
fn reply_with_another_id_is_skipped() {
    let r = Responder::start();
    let mut c = unkeyed(&r.servers());
    assert_eq!(c.call("wrong_id_first", json!({})).unwrap(), json!("yours"));
}

#[test]
fn reply_arriving_in_pieces_is_reassembled() {
    let r = Responder::start();
    let mut c = unkeyed(&r.servers());
    let got = c
        .call_with_timeout("split", json!({}), Duration::from_secs(5))
        .unwrap();
    assert_eq!(got, json!("in two pieces"));
}

#[test]
fn error_reply_with_null_id_answers_the_call() {
    let r = Responder::start();
    let mut c = unkeyed(&r.servers());
    let e = c.call("null_id_error", json!({})).unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::Server, Some(-32600)));
}

#[test]
fn connection_closed_after_sending_is_final_and_the_next_call_reconnects() {
    let r = Responder::start();
    let mut c = unkeyed(&r.servers());
    let e = c.call("close", json!({})).unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::OutcomeUnknown, None));
    assert!(!e.retryable() && e.outcome_unknown());
    assert_eq!(e.attempts(), 1, "never retried");
    assert!(e.message().contains("may or may not have run"), "{e}");
    assert_eq!(c.server(), None);
    assert_eq!(c.call("echo", json!({})).unwrap()["id"], 2);
    assert_eq!(r.connections(), 2);
}

#[test]
fn idle_connection_closed_by_the_server_is_replaced_before_sending() {
    let r = Responder::start();
    let mut c = unkeyed(&r.servers());
    assert_eq!(c.call("reply_then_close", json!({})).unwrap(), json!("bye"));
    support::wait_until("the responder to close the connection", || r.closed() == 1);
    assert_eq!(c.call("echo", json!({})).unwrap()["id"], 2);
    assert_eq!(r.connections(), 2);
}

#[test]
fn reply_that_is_not_json_is_a_protocol_error() {
    let r = Responder::start();
    let mut c = unkeyed(&r.servers());
    let e = c.call("not_json", json!({})).unwrap_err();
    assert_eq!(
        (e.kind(), e.code(), e.retryable()),
        (ErrorKind::Protocol, None, false)
    );
    assert!(e.message().contains("this is not json"), "{e}");
    assert!(c.call("echo", json!({})).is_ok());
    assert_eq!(r.connections(), 2);
}

#[test]
fn refused_connection_is_retryable() {
    let addr = refused_addr();
    let e = Client::connect(std::slice::from_ref(&addr)).unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::Connection, None));
    assert!(e.retryable());
    assert!(
        e.to_string()
            .starts_with(&format!("cannot connect to {addr}: ")),
        "{e}"
    );
}

#[test]
fn a_refused_server_is_skipped_at_connect() {
    let r = Responder::start();
    let servers = vec![refused_addr(), r.addr.clone()];
    let c = Client::connect(&servers).unwrap();
    assert_eq!(c.server(), Some(r.addr.as_str()));
    let e = Client::connect(&[refused_addr(), refused_addr()]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot connect to any of 2 servers: "),
        "{e}"
    );
    let e = Client::connect::<&str>(&[]).unwrap_err();
    assert!(!e.retryable());
}

#[test]
fn client_side_timeout_keeps_the_connection_and_skips_the_late_reply() {
    let r = Responder::start();
    let mut c = unkeyed(&r.servers());
    let started = Instant::now();
    let e = c
        .call_with_timeout("slow", json!({"ms": 2500}), Duration::from_millis(100))
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) + TIMEOUT_MARGIN,
        "{waited:?}"
    );
    assert!(waited < Duration::from_millis(2400), "{waited:?}");
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown);
    assert!(!e.retryable());
    assert!(e.message().starts_with("no reply from"), "{e}");
    // The late reply (id 1) arrives first on the same connection and is skipped.
    assert_eq!(c.call("echo", json!({})).unwrap()["id"], 2);
    assert_eq!(r.connections(), 1);
}

// ---- sessions: session.join before the call on every new connection ----

/// `(connection, method)` pairs, for comparing with [`Responder::methods`].
/// A client of `servers` that sends no idempotency keys: the scripted
/// tests check the exact requests, and what a call without a key does
/// when its outcome is unknown.
fn unkeyed(servers: &[String]) -> Client {
    Client::connect_with(servers, ClientOptions::default().idempotency_keys(false)).unwrap()
}

fn seq(pairs: &[(usize, &str)]) -> Vec<(usize, String)> {
    pairs.iter().map(|(n, m)| (*n, m.to_string())).collect()
}

#[test]
fn a_new_connection_joins_the_remembered_session_before_the_call() {
    let r = Responder::start();
    let mut c = unkeyed(&r.servers());
    let info = c.login("ann", None).unwrap();
    assert_eq!(info.user, "ann");
    assert_eq!(c.session(), Some("key-ann"));
    assert_eq!(r.params_of("session.login"), vec![json!({"user": "ann"})]);
    c.call("echo", json!({})).unwrap();
    c.call("close", json!({})).unwrap_err();
    c.call("echo", json!({})).unwrap();
    c.call("echo", json!({})).unwrap();
    assert_eq!(
        r.methods(),
        seq(&[
            (1, "session.login"),
            (1, "echo"),
            (1, "close"),
            (2, "session.join"),
            (2, "echo"),
            (2, "echo"),
        ])
    );
    assert_eq!(
        r.params_of("session.join"),
        vec![json!({"session": "key-ann"})]
    );
}

#[test]
fn login_sends_the_password_and_join_replaces_the_session() {
    let r = Responder::start();
    let mut c = unkeyed(&r.servers());
    c.login("bob", Some("pw")).unwrap();
    assert_eq!(
        r.params_of("session.login"),
        vec![json!({"user": "bob", "password": "pw"})]
    );
    let info = c.join("key-carl").unwrap();
    assert_eq!(
        (info.user.as_str(), c.session()),
        ("carl", Some("key-carl"))
    );
    c.call("close", json!({})).unwrap_err();
    c.call("echo", json!({})).unwrap();
    assert_eq!(
        r.params_of("session.join"),
        vec![
            json!({"session": "key-carl"}),
            json!({"session": "key-carl"})
        ]
    );
}

#[test]
fn a_session_gone_at_rejoin_is_returned_as_is_and_forgotten() {
    let r = Responder::start();
    let mut c = unkeyed(&r.servers());
    c.login("gone", None).unwrap();
    c.call("close", json!({})).unwrap_err();
    let e = c.call("echo", json!({})).unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::Server, Some(-32006)));
    assert_eq!((e.retryable(), e.attempts()), (false, 1));
    assert_eq!(c.session(), None);
    c.call("echo", json!({})).unwrap();
    assert_eq!(
        r.methods(),
        seq(&[
            (1, "session.login"),
            (1, "close"),
            (2, "session.join"),
            (2, "echo"),
        ]),
        "the call after a refused join is not sent; the next one goes without a session"
    );
}

#[test]
fn a_failover_joins_the_session_on_the_other_instance_first() {
    let (a, b) = (Responder::start(), Responder::start());
    let in_order = ClientOptions::default().spread(false);
    let mut c = Client::connect_with(&[&a.addr, &b.addr], in_order).unwrap();
    assert_eq!(c.server(), Some(a.addr.as_str()));
    c.login("ann", None).unwrap();
    c.call("start_draining", json!({})).unwrap();
    c.call("echo", json!({"n": 1})).unwrap();
    assert_eq!(c.server(), Some(b.addr.as_str()));
    assert_eq!(c.last_attempts(), 2, "-32003 on a, then b");
    assert_eq!(b.methods(), seq(&[(1, "session.join"), (1, "echo")]));
    assert_eq!(
        b.params_of("session.join"),
        vec![json!({"session": "key-ann"})]
    );
}

#[test]
fn logout_forgets_the_session() {
    let r = Responder::start();
    let mut c = unkeyed(&r.servers());
    c.login("ann", None).unwrap();
    c.logout().unwrap();
    assert_eq!(c.session(), None);
    c.call("close", json!({})).unwrap_err();
    c.call("echo", json!({})).unwrap();
    assert_eq!(r.params_of("session.join"), Vec::<Value>::new());
}

// ---- the blitz binary ----

/// Runs `blitz` with no stored sessions (an empty config dir).
fn blitz(args: &[&str]) -> Output {
    blitz_with_config(&temp_dir("no-config"), args)
}

/// Runs `blitz` with `$XDG_CONFIG_HOME` = `config`.
fn blitz_with_config(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blitz"))
        .args(args)
        .env_remove("BLITZ_SERVER")
        .env_remove("RUST_LOG")
        .env("XDG_CONFIG_HOME", config)
        .output()
        .expect("run blitz")
}

/// The session file `blitz login` keeps for the single server `addr`.
fn session_file(config: &std::path::Path, addr: &str) -> std::path::PathBuf {
    config
        .join("blitz/sessions")
        .join(addr.replace([':', ','], "_"))
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Checks the exit code and that stderr is exactly one `blitz: ` line.
fn assert_fails(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "stderr: {}", stderr(out));
    assert!(out.stdout.is_empty());
    let err = stderr(out);
    assert!(err.starts_with("blitz: ") && err.ends_with('\n'), "{err:?}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    err
}

#[test]
fn cli_prints_results_as_pretty_json() {
    let r = Responder::start();
    let out = blitz(&["--server", &r.addr, "ping"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "{\n  \"pong\": true\n}\n"
    );
    assert!(out.stderr.is_empty());

    let out = blitz(&["--server", &r.addr, "status"]);
    assert_eq!(stdout_json(&out), json!({"workers": 4}));
    let out = blitz(&["instances", "--server", &r.addr]);
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("HEARTBEAT"),
        "{table}"
    );
    for cell in ["h:4063-ab12", "127.0.0.1:4063", "7 ms ago", "0.1.0"] {
        assert!(lines[1].contains(cell), "{cell}: {table}");
    }
    assert_eq!(lines[2], "1 instances");
}

#[test]
fn cli_call_builds_params_from_pairs_or_json() {
    let r = Responder::start();
    let out = blitz(&[
        "--server",
        &r.addr,
        "call",
        "echo",
        "aid=5",
        "name=hello",
        "tags=[1,2]",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sent = stdout_json(&out);
    assert_eq!(sent["method"], "echo");
    assert_eq!(
        sent["params"],
        json!({"aid": 5, "name": "hello", "tags": [1, 2]})
    );
    assert!(sent.get("timeout_ms").is_none());

    let out = blitz(&[
        "--server",
        &r.addr,
        "--timeout-ms",
        "5000",
        "call",
        "echo",
        r#"{"a":[1]}"#,
    ]);
    let sent = stdout_json(&out);
    assert_eq!(sent["params"], json!({"a": [1]}));
    assert_eq!(sent["timeout_ms"], 5000);

    let out = blitz(&["--server", &r.addr, "call", "echo"]);
    assert_eq!(stdout_json(&out)["params"], json!({}));
}

#[test]
fn cli_reads_the_server_list_from_the_environment() {
    let r = Responder::start();
    let out = Command::new(env!("CARGO_BIN_EXE_blitz"))
        .arg("ping")
        .env("BLITZ_SERVER", format!("{},{}", refused_addr(), r.addr))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn cli_exit_3_for_a_retryable_refusal() {
    let r = Responder::start();
    let err = assert_fails(&blitz(&["--server", &r.addr, "call", "overloaded"]), 3);
    assert_eq!(
        err,
        "blitz: error -32001 Server overloaded (retry after 120 ms, 3 attempts)\n"
    );
    let once = [
        "--server",
        &r.addr,
        "--max-attempts",
        "1",
        "call",
        "overloaded",
    ];
    let err = assert_fails(&blitz(&once), 3);
    assert_eq!(
        err,
        "blitz: error -32001 Server overloaded (retry after 120 ms)\n"
    );
}

#[test]
fn cli_exit_4_for_a_final_refusal() {
    let r = Responder::start();
    let err = assert_fails(
        &blitz(&["--server", &r.addr, "call", "bad_params", "aid=x"]),
        4,
    );
    assert_eq!(
        err,
        "blitz: error -32602 Invalid params: parameter \"aid\": expected an integer (param aid)\n"
    );
    assert_fails(&blitz(&["--server", &r.addr, "call", "no_data"]), 4);
}

#[test]
fn cli_exit_5_when_no_server_can_be_reached() {
    let refused = refused_addr();
    let err = assert_fails(&blitz(&["--server", &refused, "ping"]), 5);
    assert!(
        err.starts_with(&format!("blitz: cannot connect to {refused}: ")),
        "{err}"
    );
}

#[test]
fn cli_exit_6_when_the_outcome_is_unknown() {
    let r = Responder::start();
    let err = assert_fails(&blitz(&["--server", &r.addr, "call", "close"]), 6);
    assert!(err.contains("may or may not have run"), "{err}");
    assert_fails(&blitz(&["--server", &r.addr, "call", "not_json"]), 6);
    let err = assert_fails(
        &blitz(&[
            "--server",
            &r.addr,
            "--timeout-ms",
            "50",
            "call",
            "slow",
            "ms=2500",
        ]),
        6,
    );
    assert!(err.starts_with("blitz: no reply from"), "{err}");
}

#[test]
fn cli_joins_the_stored_session_before_calls_but_not_pings() {
    let r = Responder::start();
    let config = temp_dir("stored");
    let file = session_file(&config, &r.addr);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "key-ann\n").unwrap();
    for command in [&["call", "echo"][..], &["ping"], &["status"]] {
        let args = [&["--server", r.addr.as_str()][..], command].concat();
        let out = blitz_with_config(&config, &args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(
        r.methods(),
        seq(&[
            (1, "session.join"),
            (1, "echo"),
            (2, "sys.ping"),
            (3, "session.join"),
            (3, "sys.status"),
        ])
    );
    assert_eq!(
        r.params_of("session.join")[0],
        json!({"session": "key-ann"})
    );
    std::fs::write(&file, "key-gone\n").unwrap();
    let err = assert_fails(
        &blitz_with_config(&config, &["--server", &r.addr, "status"]),
        4,
    );
    assert_eq!(
        err,
        "blitz: session expired or unknown; run `blitz login`\n"
    );
}

#[test]
fn cli_exit_2_for_usage_errors() {
    let r = Responder::start();
    for args in [
        vec!["--bogus", "ping"],
        vec!["--server", &r.addr],
        vec!["--server", &r.addr, "--timeout-ms", "0", "ping"],
        vec!["--server", &r.addr, "--timeout-ms", "soon", "ping"],
    ] {
        let out = blitz(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let err = assert_fails(
        &blitz(&["--server", &r.addr, "call", "echo", "noequals"]),
        2,
    );
    assert!(err.contains("expected KEY=VALUE"), "{err}");
    let err = assert_fails(&blitz(&["--server", "nohost", "ping"]), 2);
    assert!(err.contains("is not host:port"), "{err}");
    assert_fails(&blitz(&["--server", &r.addr, "call", "echo", "n:=bare"]), 2);
    assert_eq!(r.connections(), 0, "usage errors never connect");
}

#[test]
fn cli_help_documents_exit_codes_and_params() {
    let out = blitz(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "Exit codes:",
        "3  refused by the server, retryable",
        "6  outcome unknown",
        "--max-attempts",
        "BLITZ_SERVER",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    let help = String::from_utf8(blitz(&["call", "--help"]).stdout).unwrap();
    assert!(
        help.contains("KEY:=VALUE requires VALUE to be JSON"),
        "{help}"
    );
}

// ---- retries and failover against real servers ----

/// A database with `blitz_api.add(a, b)` and `blitz_api.sleep_ms(ms)`.
fn fixture_db() -> TestDb {
    let db = TestDb::new();
    db.execute(
        "CREATE SCHEMA blitz_api;
         CREATE FUNCTION blitz_api.add(a int, b int DEFAULT 0) RETURNS int LANGUAGE sql AS 'SELECT a + b';
         CREATE FUNCTION blitz_api.sleep_ms(ms int) RETURNS int LANGUAGE plpgsql
           AS $$ BEGIN PERFORM pg_sleep(ms / 1000.0); RETURN ms; END $$;",
    );
    db
}

/// Fills a server with `pool_size` = `queue_capacity` = 1: one
/// `sleep_ms(ms)` running and one queued, on the returned connection.
fn fill(db: &TestDb, addr: &str, ms: u64) -> Rpc {
    let mut watcher = Rpc::session(addr); // logged in before the queue is full
    let mut busy = Rpc::session(addr);
    busy.send("api.sleep_ms", json!({ "ms": ms }));
    db.wait_until_running("sleep_ms", 1);
    busy.send("api.sleep_ms", json!({ "ms": ms }));
    watcher.wait_for_status("the call queued", |s| s["queue"]["depth"] == 1);
    busy
}

/// `c` logged in as `test` (the test servers run in trust mode).
fn logged_in(mut c: Client) -> Client {
    c.login("test", None).expect("trust-mode login");
    c
}

/// A server that can run one call and queue one.
fn tiny_server(db: &TestDb) -> Server {
    Server::start(
        &db.url,
        &[("db.pool_size", "1"), ("invocation.queue_capacity", "1")],
    )
}

#[test]
fn an_overloaded_call_is_retried_until_the_queue_has_room() {
    let db = fixture_db();
    let server = tiny_server(&db);
    let patient = ClientOptions::default()
        .max_attempts(100)
        .retry_budget(RetryBudget::new(1000.0, 0.1));
    let mut c = logged_in(Client::connect_with(&[&server.addr], patient).unwrap());
    let _busy = fill(&db, &server.addr, 800);
    let started = Instant::now();
    assert_eq!(c.call("api.add", json!({"a": 2, "b": 3})).unwrap(), 5);
    assert!(
        c.last_attempts() >= 2,
        "refused at least once: {}",
        c.last_attempts()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn attempts_are_counted_and_the_budget_stops_retries() {
    let db = fixture_db();
    let server = tiny_server(&db);
    let mut c = logged_in(Client::connect(&[&server.addr]).unwrap());
    let e = c.call("api.add", json!({"a": "x"})).unwrap_err();
    assert_eq!(
        (e.code(), e.attempts()),
        (Some(-32602), 1),
        "final: not retried"
    );
    let generous = RetryBudget::new(1000.0, 0.1);
    let three = ClientOptions::default().retry_budget(generous);
    let mut c = logged_in(Client::connect_with(&[&server.addr], three).unwrap());
    let shared = RetryBudget::default();
    let options = ClientOptions::default()
        .max_attempts(10)
        .retry_budget(shared.clone());
    let mut first = logged_in(Client::connect_with(&[&server.addr], options.clone()).unwrap());
    let mut second = logged_in(Client::connect_with(&[&server.addr], options).unwrap());
    let _busy = fill(&db, &server.addr, 6000);

    let e = c.call("api.add", json!({"a": 1})).unwrap_err();
    assert_eq!((e.code(), e.attempts()), (Some(-32001), 3), "{e}");
    assert!(e.retryable() && e.retry_after().is_some());
    assert_eq!(c.last_attempts(), 3);
    assert!(e.to_string().contains("3 attempts"), "{e}");

    // Two clients share the default budget of 10 tokens: five failures
    // leave 5 (not above half), so the first call stops after 5 attempts
    // and the second makes no retry at all.
    let e = first.call("api.add", json!({"a": 1})).unwrap_err();
    assert_eq!((e.code(), e.attempts()), (Some(-32001), 5), "{e}");
    let e = second.call("api.add", json!({"a": 1})).unwrap_err();
    assert_eq!((e.code(), e.attempts()), (Some(-32001), 1), "{e}");
    assert_eq!(shared.tokens(), 4.0);
}

#[test]
fn a_server_killed_mid_call_leaves_the_outcome_unknown() {
    let db = fixture_db();
    let mut server = Server::start(&db.url, &[]);
    // Without idempotency keys: a call that may have run is not sent again.
    let unkeyed = ClientOptions::default().idempotency_keys(false);
    let mut c = logged_in(Client::connect_with(&[&server.addr], unkeyed).unwrap());
    let caller = thread::spawn(move || {
        let lost = c.call("api.sleep_ms", json!({"ms": 5000})).unwrap_err();
        (c, lost)
    });
    db.wait_until_running("sleep_ms", 1);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let (mut c, lost) = caller.join().unwrap();
    assert_eq!(lost.kind(), ErrorKind::OutcomeUnknown, "{lost}");
    assert_eq!((lost.retryable(), lost.attempts()), (false, 1));
    for needle in [
        "after the request was sent",
        "may or may not have run",
        "idempotency key",
    ] {
        assert!(lost.message().contains(needle), "{needle}: {lost}");
    }
    // Nothing listens any more: the next call did not run, and was retried.
    let next = c.call("api.add", json!({"a": 1})).unwrap_err();
    assert_eq!(next.kind(), ErrorKind::Connection, "{next}");
    assert_eq!((next.retryable(), next.attempts()), (true, 3));
}

#[test]
fn clients_spread_over_instances_and_avoid_a_stopped_one() {
    let db = fixture_db();
    let a = Server::start(&db.url, &[]);
    let mut b = Server::start(&db.url, &[]);
    let servers = [&a.addr, &b.addr];
    let on_a = (0..16)
        .filter(|_| Client::connect(&servers).unwrap().server() == Some(a.addr.as_str()))
        .count();
    assert!(0 < on_a && on_a < 16, "{on_a} of 16 clients started on a");

    b.child.kill().unwrap();
    b.child.wait().unwrap();
    for _ in 0..8 {
        let mut c = logged_in(Client::connect(&servers).unwrap());
        assert_eq!(c.call("api.add", json!({"a": 1, "b": 1})).unwrap(), 2);
        assert_eq!(c.server(), Some(a.addr.as_str()));
    }
}

#[test]
fn a_draining_server_sends_the_call_to_the_other_instance() {
    let db = fixture_db();
    let a = Server::start(&db.url, &[("server.drain_timeout_s", "10")]);
    let b = Server::start(&db.url, &[]);
    let in_order = ClientOptions::default().spread(false);
    let mut c = logged_in(Client::connect_with(&[&a.addr, &b.addr], in_order).unwrap());
    assert_eq!(c.call("api.add", json!({"a": 1})).unwrap(), 1);
    assert_eq!(c.server(), Some(a.addr.as_str()));

    let mut holder = Rpc::session(&a.addr);
    holder.send("api.sleep_ms", json!({"ms": 3000}));
    let mut watcher = Rpc::session(&a.addr);
    db.wait_until_running("sleep_ms", 1);
    let sigterm = Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sigterm.success());
    watcher.wait_for_status("a to drain", |s| s["state"] == "draining");

    assert_eq!(c.call("api.add", json!({"a": 2})).unwrap(), 2);
    assert_eq!(c.server(), Some(b.addr.as_str()));
    assert_eq!(c.last_attempts(), 2, "-32003 from a, then b");
}

#[test]
fn a_full_server_sends_the_client_to_the_other_instance() {
    let db = fixture_db();
    let a = Server::start(&db.url, &[("server.max_clients", "1")]);
    let b = Server::start(&db.url, &[]);
    let mut holder = Rpc::connect(&a.addr);
    support::result(&holder.call("sys.ping", json!({})));
    for _ in 0..3 {
        let in_order = ClientOptions::default().spread(false);
        let mut c = Client::connect_with(&[&a.addr, &b.addr], in_order).unwrap();
        c.login("test", None).unwrap();
        assert_eq!(c.server(), Some(b.addr.as_str()));
        assert_eq!(c.last_attempts(), 2, "-32005 from a, then b");
        assert_eq!(c.call("api.add", json!({"a": 3})).unwrap(), 3);
    }
    let only_a = ClientOptions::default().max_attempts(2);
    let mut c = Client::connect_with(&[&a.addr], only_a).unwrap();
    let e = c.call("api.add", json!({"a": 3})).unwrap_err();
    assert_eq!((e.code(), e.attempts()), (Some(-32005), 2), "{e}");
}

// ---- sessions against real servers ----
//
// These wait for `session.*` on the server (ARCHITECTURE.md: login, join,
// logout, -32006). Enable them by removing the `ignore` once it lands.

/// A server in `auth.mode = "trust"` (login by name, no password).
fn trust_server(db: &TestDb) -> Server {
    Server::start(&db.url, &[("auth.mode", "trust")])
}

#[test]
fn login_in_trust_mode_gives_a_session_any_instance_accepts() {
    let db = fixture_db();
    let (a, b) = (trust_server(&db), trust_server(&db));
    let mut on_a = Client::connect(&[&a.addr]).unwrap();
    let info = on_a.login("ann", None).unwrap();
    assert_eq!(info.user, "ann");
    assert!(!info.session.is_empty() && !info.expires_at.is_empty());
    assert_eq!(on_a.session(), Some(info.session.as_str()));
    let mut on_b = Client::connect(&[&b.addr]).unwrap();
    let joined = on_b.join(&info.session).unwrap();
    assert_eq!(joined.user, "ann");
    assert_eq!(joined.session, info.session);
    assert_eq!(on_b.call("api.add", json!({"a": 1})).unwrap(), 1);
}

#[test]
fn a_failover_rejoins_the_session_on_the_other_instance() {
    let db = fixture_db();
    let (mut a, b) = (trust_server(&db), trust_server(&db));
    let in_order = ClientOptions::default().spread(false);
    let mut c = Client::connect_with(&[&a.addr, &b.addr], in_order).unwrap();
    c.login("ann", None).unwrap();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert_eq!(c.call("api.add", json!({"a": 4})).unwrap(), 4);
    assert_eq!(c.server(), Some(b.addr.as_str()));
    // Only a connection with the session bound can end it.
    c.logout().unwrap();
    assert_eq!(c.session(), None);
}

#[test]
fn logout_ends_the_session_everywhere() {
    let db = fixture_db();
    let (a, b) = (trust_server(&db), trust_server(&db));
    let mut on_a = Client::connect(&[&a.addr]).unwrap();
    let key = on_a.login("ann", None).unwrap().session;
    let mut on_b = Client::connect(&[&b.addr]).unwrap();
    on_b.join(&key).unwrap();
    on_a.logout().unwrap();
    assert_eq!(on_a.session(), None);
    let e = Client::connect(&[&b.addr]).unwrap().join(&key).unwrap_err();
    assert_eq!(
        (e.code(), e.retryable(), e.attempts()),
        (Some(-32006), false, 1)
    );
    let e = on_b.logout().unwrap_err();
    assert_eq!(e.code(), Some(-32006), "{e}");
    assert_eq!(on_b.session(), None);
}

#[test]
fn an_unknown_session_key_is_unauthenticated_and_not_retried() {
    let db = fixture_db();
    let server = trust_server(&db);
    let mut c = Client::connect(&[&server.addr]).unwrap();
    let e = c.join("no-such-session").unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::Server, Some(-32006)));
    assert_eq!((e.retryable(), e.attempts()), (false, 1));
    assert_eq!(c.session(), None);
}

#[test]
fn a_wrong_password_is_refused_in_password_mode() {
    let db = fixture_db();
    let server = Server::start(&db.url, &[("auth.mode", "password")]);
    let mut c = Client::connect(&[&server.addr]).unwrap();
    let e = c.login("nobody", Some("wrong")).unwrap_err();
    assert_eq!(
        (e.code(), e.retryable(), e.attempts()),
        (Some(-32006), false, 1)
    );
    assert_eq!(c.session(), None);
}

/// The permission bits of `path`.
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn cli_login_keeps_a_private_session_that_calls_join_and_logout_removes() {
    let db = fixture_db();
    let server = trust_server(&db);
    let config = temp_dir("login");
    let addr = server.addr.as_str();
    let login = ["--server", addr, "login", "-u", "ann", "--no-password"];
    let out = blitz_with_config(&config, &login);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8(out.stdout.clone()).unwrap();
    let expected = format!("logged in as ann on {addr}, session expires at ");
    assert!(said.starts_with(&expected), "{said}");
    let file = session_file(&config, addr);
    let key = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(!key.is_empty());
    assert!(
        !said.contains(&key) && !stderr(&out).contains(&key),
        "the key is secret"
    );
    assert_eq!(mode_of(&file), 0o600);
    assert_eq!(mode_of(file.parent().unwrap()), 0o700);

    let out = blitz_with_config(&config, &["--server", addr, "call", "api.add", "a=1"]);
    assert_eq!(stdout_json(&out), json!(1), "{}", stderr(&out));
    let out = blitz_with_config(&config, &["--server", addr, "logout"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("logged out of {addr}\n")
    );
    assert!(!file.exists());
    let out = blitz_with_config(&config, &["--server", addr, "logout"]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("not logged in on {addr}\n")
    );
}

#[test]
fn cli_with_an_expired_session_says_to_log_in_and_logout_still_removes_it() {
    let db = fixture_db();
    let server = trust_server(&db);
    let config = temp_dir("expired");
    let file = session_file(&config, &server.addr);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "no-such-session\n").unwrap();
    let err = assert_fails(
        &blitz_with_config(&config, &["--server", &server.addr, "status"]),
        4,
    );
    assert_eq!(
        err,
        "blitz: session expired or unknown; run `blitz login`\n"
    );
    let out = blitz_with_config(&config, &["--server", &server.addr, "logout"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("already ended"));
    assert!(!file.exists());
}

#[test]
fn cli_login_reads_the_password_from_stdin_in_password_mode() {
    use std::process::Stdio;
    let db = fixture_db();
    let mut add = Command::new(env!("CARGO_BIN_EXE_blitz-server"))
        .args(["--db-url", &db.url, "user", "add", "ann"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    assert!(add.wait().unwrap().success(), "blitz-server user add ann");
    let server = Server::start(&db.url, &[("auth.mode", "password")]);
    let config = temp_dir("password");
    let login = |password: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_blitz"))
            .args([
                "--server",
                &server.addr,
                "login",
                "-u",
                "ann",
                "--password-stdin",
            ])
            .env("XDG_CONFIG_HOME", config.as_os_str())
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let line = format!("{password}\n");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let err = assert_fails(&login("wrong"), 4);
    assert!(
        err.contains("-32006") && err.contains("login refused"),
        "{err}"
    );
    assert!(!session_file(&config, &server.addr).exists());
    let out = login("s3cret");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(session_file(&config, &server.addr).exists());
}
