//! The thin client over real TCP: the `Client` library and the `blitz`
//! binary against a scripted JSON-RPC responder defined here, which answers
//! each request line with a canned reply chosen by its method. This checks
//! the client's own behaviour (framing, ids, error classes, exit codes); the
//! real server is tested by its own suites.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use blitz::client::{Client, ErrorKind, TIMEOUT_MARGIN};
use serde_json::{json, Value};

/// A scripted JSON-RPC peer on 127.0.0.1 that counts its connections.
struct Responder {
    addr: String,
    connections: Arc<AtomicUsize>,
}

impl Responder {
    /// Starts the responder on an ephemeral port; its threads live until
    /// the test process exits.
    fn start() -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the responder");
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || serve(stream));
            }
        });
        Responder { addr, connections }
    }

    fn servers(&self) -> Vec<String> {
        vec![self.addr.clone()]
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A `host:port` on which nothing listens.
fn refused_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
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
fn serve(stream: TcpStream) {
    let mut out = stream.try_clone().unwrap();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let request: Value = serde_json::from_str(&line).expect("the client sends JSON");
        let id = request["id"].clone();
        let method = request["method"].as_str().unwrap_or_default().to_string();
        let write = |out: &mut TcpStream, text: &str| {
            out.write_all(text.as_bytes()).unwrap();
            out.flush().unwrap();
        };
        match method.as_str() {
            "echo" => write(&mut out, &(ok(&id, request.clone()) + "\n")),
            "sys.ping" => write(&mut out, &(ok(&id, json!({"pong": true})) + "\n")),
            "sys.status" => write(&mut out, &(ok(&id, json!({"workers": 4})) + "\n")),
            "sys.instances" => write(
                &mut out,
                &(ok(&id, json!([{"address": "127.0.0.1:4063"}])) + "\n"),
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
            "not_json" => write(&mut out, "this is not json\n"),
            other => write(
                &mut out,
                &(err(&id, -32601, &format!("no {other}"), None) + "\n"),
            ),
        }
    }
}

// ---- the library ----

#[test]
fn call_sends_increasing_ids_params_and_timeout_ms() {
    let r = Responder::start();
    let mut c = Client::connect(&r.servers()).unwrap();
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
    let mut c = Client::connect(&r.servers()).unwrap();
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
    let mut c = Client::connect(&r.servers()).unwrap();
    assert_eq!(c.call("wrong_id_first", json!({})).unwrap(), json!("yours"));
}

#[test]
fn reply_arriving_in_pieces_is_reassembled() {
    let r = Responder::start();
    let mut c = Client::connect(&r.servers()).unwrap();
    let got = c
        .call_with_timeout("split", json!({}), Duration::from_secs(5))
        .unwrap();
    assert_eq!(got, json!("in two pieces"));
}

#[test]
fn error_reply_with_null_id_answers_the_call() {
    let r = Responder::start();
    let mut c = Client::connect(&r.servers()).unwrap();
    let e = c.call("null_id_error", json!({})).unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::Server, Some(-32600)));
}

#[test]
fn connection_closed_after_sending_is_final_and_the_next_call_reconnects() {
    let r = Responder::start();
    let mut c = Client::connect(&r.servers()).unwrap();
    let e = c.call("close", json!({})).unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::Connection, None));
    assert!(!e.retryable());
    assert!(e.message().contains("the outcome is unknown"), "{e}");
    assert_eq!(c.server(), None);
    assert_eq!(c.call("echo", json!({})).unwrap()["id"], 2);
    assert_eq!(r.connections(), 2);
}

#[test]
fn idle_connection_closed_by_the_server_is_replaced_before_sending() {
    let r = Responder::start();
    let mut c = Client::connect(&r.servers()).unwrap();
    assert_eq!(c.call("reply_then_close", json!({})).unwrap(), json!("bye"));
    thread::sleep(Duration::from_millis(100));
    assert_eq!(c.call("echo", json!({})).unwrap()["id"], 2);
    assert_eq!(r.connections(), 2);
}

#[test]
fn reply_that_is_not_json_is_a_protocol_error() {
    let r = Responder::start();
    let mut c = Client::connect(&r.servers()).unwrap();
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
fn servers_are_tried_in_order() {
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
    let e = Client::connect(&[]).unwrap_err();
    assert!(!e.retryable());
}

#[test]
fn client_side_timeout_keeps_the_connection_and_skips_the_late_reply() {
    let r = Responder::start();
    let mut c = Client::connect(&r.servers()).unwrap();
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
    assert_eq!(e.kind(), ErrorKind::Connection);
    assert!(!e.retryable());
    assert!(e.message().starts_with("no reply from"), "{e}");
    // The late reply (id 1) arrives first on the same connection and is skipped.
    assert_eq!(c.call("echo", json!({})).unwrap()["id"], 2);
    assert_eq!(r.connections(), 1);
}

// ---- the blitz binary ----

fn blitz(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blitz"))
        .args(args)
        .env_remove("BLITZ_SERVER")
        .env_remove("RUST_LOG")
        .output()
        .expect("run blitz")
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
    assert_eq!(stdout_json(&out)[0]["address"], "127.0.0.1:4063");
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
fn cli_exit_5_for_connection_and_protocol_errors() {
    let r = Responder::start();
    let refused = refused_addr();
    let err = assert_fails(&blitz(&["--server", &refused, "ping"]), 5);
    assert!(
        err.starts_with(&format!("blitz: cannot connect to {refused}: ")),
        "{err}"
    );
    let err = assert_fails(&blitz(&["--server", &r.addr, "call", "close"]), 5);
    assert!(err.contains("the outcome is unknown"), "{err}");
    assert_fails(&blitz(&["--server", &r.addr, "call", "not_json"]), 5);
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
        5,
    );
    assert!(err.starts_with("blitz: no reply from"), "{err}");
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
