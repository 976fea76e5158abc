//! Clients that do not keep a connection: a request's own `"session"`
//! member authenticates that request alone, on a fresh TCP connection per
//! call, and `blitz call --session KEY` sends it.

mod support;

use std::process::Command;

use serde_json::{json, Value};
use support::{bin, error_code, result, run, Rpc, Server, TestDb};

fn add_function(db: &TestDb) {
    db.execute(
        "CREATE SCHEMA blitz_api; \
         CREATE FUNCTION blitz_api.add(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b'; \
         CREATE FUNCTION blitz_api.whoami() RETURNS text LANGUAGE sql AS $$SELECT current_setting('blitz.user')$$",
    );
}

/// One call on a connection of its own, with `extra` members.
fn call_once(addr: &str, method: &str, params: Value, extra: Value) -> Value {
    let mut rpc = Rpc::connect(addr);
    rpc.send_with(method, params, extra);
    rpc.read_reply().expect("a reply")
}

#[test]
fn a_session_member_authenticates_one_request_on_a_fresh_connection() {
    let db = TestDb::new();
    add_function(&db);
    let server = Server::start(&db.url, &[]);
    let key = {
        let mut rpc = Rpc::connect(&server.addr);
        rpc.login(json!({"user": "carol"}))["session"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let own = json!({ "session": key });
    for i in 0..3 {
        let reply = call_once(&server.addr, "api.add", json!([i, 1]), own.clone());
        assert_eq!(result(&reply), i + 1);
    }
    let who = call_once(&server.addr, "api.whoami", json!({}), own.clone());
    assert_eq!(result(&who), "carol");
    let status = call_once(&server.addr, "sys.status", json!({}), own.clone());
    assert!(result(&status)["counters"].is_object(), "{status}");

    // The key authenticates its request only: nothing is bound.
    let mut rpc = Rpc::connect(&server.addr);
    rpc.send_with("api.add", json!([1, 1]), own.clone());
    assert_eq!(result(&rpc.read_reply().unwrap()), 2);
    assert_eq!(error_code(&rpc.call("api.add", json!([1, 1]))), -32006);

    // A dead key is refused as session.join refuses it.
    let bogus = json!({"session": "not-a-session"});
    for method in ["api.add", "sys.status"] {
        let reply = call_once(&server.addr, method, json!([1, 1]), bogus.clone());
        assert_eq!(error_code(&reply), -32006, "{method}: {reply}");
    }
    let reply = call_once(
        &server.addr,
        "api.add",
        json!([1, 1]),
        json!({"session": 5}),
    );
    assert_eq!(error_code(&reply), -32600, "{reply}");

    // The CLI sends it with --session.
    let mut cli = Command::new(bin("blitz"));
    cli.args(["--server", &server.addr, "call", "--session", &key])
        .args(["api.add", "a=2", "b=3"])
        .env(
            "XDG_CONFIG_HOME",
            std::env::temp_dir().join("blitz-http-test-none"),
        );
    let (code, stdout, stderr) = run(cli);
    assert_eq!((code, stdout.trim()), (0, "5"), "{stderr}");

    // session.logout with the member ends that session everywhere.
    let out = call_once(&server.addr, "session.logout", json!({}), own.clone());
    assert_eq!(result(&out), &Value::Null);
    let after = call_once(&server.addr, "api.add", json!([1, 1]), own);
    assert_eq!(error_code(&after), -32006);
}

#[test]
fn a_bound_session_still_works_and_a_request_session_takes_precedence() {
    let db = TestDb::new();
    add_function(&db);
    let server = Server::start(&db.url, &[]);
    let dave = {
        let mut rpc = Rpc::connect(&server.addr);
        rpc.login(json!({"user": "dave"}))["session"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut erin = Rpc::session(&server.addr); // bound as user "test"
    assert_eq!(result(&erin.call("api.whoami", json!({}))), "test");
    erin.send_with("api.whoami", json!({}), json!({ "session": dave }));
    assert_eq!(result(&erin.read_reply().unwrap()), "dave");
    assert_eq!(result(&erin.call("api.whoami", json!({}))), "test");
}

// ---------------------------------------------------------------------------
// JSON-RPC over HTTP/1.1 (`server.http_listen`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::free_port;

/// One HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive HTTP/1.1 connection; responses parsed by httparse.
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    fn connect(addr: &str) -> Http {
        let stream = TcpStream::connect(addr).expect("connect to the HTTP listener");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Http {
            stream,
            buf: Vec::new(),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// `POST /` with `body` and extra header lines.
    fn post(&mut self, body: &str, headers: &[&str]) -> Reply {
        let mut req = format!(
            "POST / HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.send_raw(req.as_bytes());
        self.read().expect("a response")
    }

    /// The next response; `None` at end of stream.
    fn read(&mut self) -> Option<Reply> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) =
                response.parse(&self.buf).expect("a valid response")
            {
                let status = response.code.unwrap();
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                if status == 100 {
                    self.buf.drain(..n);
                    return Some(Reply {
                        status,
                        headers,
                        body: Vec::new(),
                    });
                }
                if self.buf.len() >= n + len {
                    let body = self.buf[n..n + len].to_vec();
                    self.buf.drain(..n + len);
                    return Some(Reply {
                        status,
                        headers,
                        body,
                    });
                }
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) => panic!("reading a response failed: {e}"),
            }
        }
    }

    /// Whether the server closed the connection (after its last response).
    fn closed(&mut self) -> bool {
        self.read().is_none()
    }
}

fn rpc(method: &str, params: Value, id: Option<u64>) -> Value {
    let mut r = json!({"jsonrpc": "2.0", "method": method, "params": params});
    if let Some(id) = id {
        r["id"] = id.into();
    }
    r
}

fn http_server(db: &TestDb, extra: &[(&str, &str)]) -> (Server, String) {
    let http = format!("127.0.0.1:{}", free_port());
    let mut settings = vec![("server.http_listen", http.as_str())];
    settings.extend_from_slice(extra);
    let server = Server::start(&db.url, &settings);
    (server, http)
}

fn login(http: &mut Http, user: &str) -> String {
    let reply = http.post(
        &rpc("session.login", json!({"user": user}), Some(1)).to_string(),
        &[],
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["result"]["session"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn json_rpc_over_http_login_bearer_calls_batches_and_notifications() {
    let db = TestDb::new();
    add_function(&db);
    let (_server, addr) = http_server(&db, &[]);
    let mut http = Http::connect(&addr);
    let key = login(&mut http, "hank");
    let bearer = format!("Authorization: Bearer {key}");

    let reply = http.post(
        &rpc("api.add", json!([2, 3]), Some(2)).to_string(),
        &[&bearer],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    assert_eq!(
        reply.json(),
        json!({"jsonrpc": "2.0", "id": 2, "result": 5})
    );
    let who = http.post(
        &rpc("api.whoami", json!({}), Some(3)).to_string(),
        &[&bearer],
    );
    assert_eq!(who.json()["result"], "hank");

    // Without the bearer key, on the same (persistent) connection: 401.
    let reply = http.post(&rpc("api.add", json!([2, 3]), Some(4)).to_string(), &[]);
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["code"], -32006);

    let batch = json!([
        rpc("api.add", json!([1, 1]), Some(10)),
        rpc("api.add", json!([2, 2]), Some(11)),
        rpc("api.add", json!([3, 3]), None),
        rpc("nope", json!({}), Some(12)),
    ]);
    let reply = http.post(&batch.to_string(), &[&bearer]);
    assert_eq!(reply.status, 200, "a batch is 200 whatever its elements");
    let mut results: Vec<(u64, Value)> = reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                r.get("result")
                    .cloned()
                    .unwrap_or(r["error"]["code"].clone()),
            )
        })
        .collect();
    results.sort_by_key(|(id, _)| *id);
    assert_eq!(
        results,
        vec![(10, json!(2)), (11, json!(4)), (12, json!(-32601))]
    );

    let only_notification = http.post(&rpc("api.add", json!([1, 1]), None).to_string(), &[&bearer]);
    assert_eq!(only_notification.status, 204);
    assert!(only_notification.body.is_empty());
    let notifications = json!([
        rpc("api.add", json!([1, 1]), None),
        rpc("sys.ping", json!({}), None)
    ]);
    assert_eq!(
        http.post(&notifications.to_string(), &[&bearer]).status,
        204
    );

    let not_json = http.post("{nope", &[]);
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.json()["error"]["code"], -32700);
    let invalid = http.post(r#"{"jsonrpc":"1.0","method":"x","id":1}"#, &[]);
    assert_eq!(invalid.status, 400);
    assert_eq!(invalid.json()["error"]["code"], -32600);
    let unknown = http.post(&rpc("nope", json!({}), Some(5)).to_string(), &[]);
    assert_eq!(unknown.status, 200);
    assert_eq!(unknown.json()["error"]["code"], -32601);

    // HTTP/1.1 without Connection: close keeps the connection: every
    // response above came on the one connection, and it still serves.
    let ping = http.post(
        &rpc("sys.ping", json!({}), Some(6)).to_string(),
        &["Connection: close"],
    );
    assert_eq!(ping.json()["result"]["pong"], true);
    assert_eq!(ping.header("Connection"), Some("close"));
    assert!(http.closed(), "closed after a Connection: close request");
}

#[test]
fn an_overloaded_server_answers_503_with_retry_after_over_http() {
    let db = TestDb::new();
    add_function(&db);
    // A call that runs until the test releases its advisory lock.
    db.execute(
        "CREATE FUNCTION blitz_api.hold() RETURNS int LANGUAGE plpgsql \
         AS 'BEGIN PERFORM pg_advisory_xact_lock(42); RETURN 1; END'",
    );
    let mut locker = db.connect();
    locker.execute("SELECT pg_advisory_lock(42)", &[]).unwrap();
    let (server, addr) = http_server(
        &db,
        &[("db.pool_size", "1"), ("invocation.queue_capacity", "1")],
    );
    let mut http = Http::connect(&addr);
    let key = login(&mut http, "ivy");
    let bearer = format!("Authorization: Bearer {key}");
    // One call holds the worker, one waits: the queue of one is full.
    let mut watcher = Rpc::session(&server.addr);
    let mut tcp = Rpc::connect(&server.addr);
    let own = json!({ "session": key });
    tcp.send_with("api.hold", json!({}), own.clone());
    // Running means waiting for the lock in PostgreSQL: a worker counted
    // busy may still be finishing the login, with the call in the queue.
    support::wait_until("the call to wait for the lock", || {
        let waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND objid = 42 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
        locker.query_one(waiting, &[]).unwrap().get::<_, i64>(0) == 1
    });
    watcher.wait_for_status("the call to run", |s| s["workers"]["busy"] == 1);
    tcp.send_with("api.hold", json!({}), own);
    let start = Instant::now();
    while result(&watcher.call("sys.status", json!({})))["queue"]["depth"] != 1 {
        let early = tcp.poll_reply(Duration::from_millis(10));
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the queue never filled (a reply came: {early:?})"
        );
    }
    let refused = http.post(&rpc("api.hold", json!({}), Some(9)).to_string(), &[&bearer]);
    assert_eq!(refused.status, 503, "{}", refused.text());
    let error = &refused.json()["error"];
    assert_eq!(error["code"], -32001, "{error}");
    let retry_after_ms = error["data"]["retry_after_ms"].as_u64().unwrap();
    let retry_after: u64 = refused
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert_eq!(retry_after, retry_after_ms.div_ceil(1000).max(1));
    locker
        .execute("SELECT pg_advisory_unlock(42)", &[])
        .unwrap();
    for _ in 0..2 {
        let reply = tcp.read_reply().expect("the TCP calls are answered too");
        assert_eq!(result(&reply), 1);
    }
}

/// A fresh connection that sends `bytes` and reads one response.
fn raw_exchange(addr: &str, bytes: &[u8]) -> (Reply, Http) {
    let mut http = Http::connect(addr);
    http.send_raw(bytes);
    let reply = http
        .read()
        .unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(bytes)));
    (reply, http)
}

#[test]
fn malformed_http_gets_a_clear_status_and_the_server_goes_on() {
    let db = TestDb::new();
    add_function(&db);
    let (_server, addr) = http_server(&db, &[("server.max_message_bytes", "2048")]);
    let ping = rpc("sys.ping", json!({}), Some(1)).to_string();

    // Closing cases: the stream cannot be trusted after them.
    let closing: [(&[u8], u16); 5] = [
        (b"THIS IS NOT HTTP\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nBad Header Line\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\n\r\n", 411),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            411,
        ),
    ];
    for (bytes, status) in closing {
        let (reply, mut conn) = raw_exchange(&addr, bytes);
        assert_eq!(
            reply.status,
            status,
            "{:?}: {}",
            String::from_utf8_lossy(bytes),
            reply.text()
        );
        assert_eq!(reply.json()["error"]["code"], -32600, "{}", reply.text());
        assert!(conn.closed(), "closed after {status}");
    }

    // A Content-Length shorter than the body: the body read is not JSON.
    let short = format!("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n{ping}");
    let (reply, _) = raw_exchange(&addr, short.as_bytes());
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], -32700);

    // Longer than the body, then end of stream: answered, not left hanging.
    let mut conn = Http::connect(&addr);
    conn.send_raw(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"");
    conn.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let reply = conn.read().expect("a response to a cut body");
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(conn.closed());

    // Non-closing cases: the same connection serves the next request.
    let mut conn = Http::connect(&addr);
    conn.send_raw(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let reply = conn.read().unwrap();
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("Allow"), Some("POST"));
    conn.send_raw(
        format!(
            "POST /elsewhere HTTP/1.1\r\nContent-Length: {}\r\n\r\n{ping}",
            ping.len()
        )
        .as_bytes(),
    );
    assert_eq!(conn.read().unwrap().status, 404);
    let big = format!("[{}]", vec![ping.as_str(); 100].join(","));
    let reply = conn.post(&big, &[]);
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"]["code"], -32009);
    assert_eq!(reply.json()["error"]["data"]["max_message_bytes"], 2048);
    let reply = conn.post(&ping, &["Expect: 100-continue"]);
    let reply = if reply.status == 100 {
        conn.read().unwrap()
    } else {
        reply
    };
    assert_eq!(reply.status, 200);
    assert_eq!(conn.post(&ping, &[]).json()["result"]["pong"], true);

    // And the server serves new connections.
    assert_eq!(Http::connect(&addr).post(&ping, &[]).status, 200);
}

#[test]
fn an_idle_http_connection_is_closed_after_the_idle_timeout() {
    let db = TestDb::new();
    add_function(&db);
    let (_server, addr) = http_server(&db, &[("server.idle_timeout_s", "1")]);
    let mut conn = Http::connect(&addr);
    let ping = rpc("sys.ping", json!({}), Some(1)).to_string();
    assert_eq!(conn.post(&ping, &[]).status, 200);
    let start = Instant::now();
    assert!(conn.closed(), "the server closes the idle connection");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn past_max_clients_an_http_client_gets_503_and_a_close() {
    let db = TestDb::new();
    add_function(&db);
    let (server, addr) = http_server(&db, &[("server.max_clients", "2")]);
    let ping = rpc("sys.ping", json!({}), Some(1)).to_string();
    // Two connections (one of each transport) fill max_clients.
    let mut tcp = Rpc::connect(&server.addr);
    assert_eq!(result(&tcp.call("sys.ping", json!({})))["pong"], true);
    let mut held = Http::connect(&addr);
    assert_eq!(held.post(&ping, &[]).status, 200);
    let mut third = Http::connect(&addr);
    let refused = third.read().expect("a response before the close");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], -32005);
    assert_eq!(refused.header("Connection"), Some("close"));
    assert!(refused.header("Retry-After").is_some());
    assert!(third.closed());
    // The held connection still serves.
    assert_eq!(held.post(&ping, &[]).status, 200);
}
