//! Black-box contract tests: the wire protocol, error codes, HTTP status
//! mapping, metrics and health endpoints, scale-out behaviour and config key
//! names exactly as `ARCHITECTURE.md` states them, checked against a real
//! `blitz-server` process and a real PostgreSQL.
//!
//! Written from the contract alone, not from the implementation: the tests
//! speak raw TCP and raw HTTP/1.1 (bytes in, bytes out), use no client code
//! of the crate, and set every key by its contract name (`--set
//! section.key=value`). Each test starts its own server on free ports
//! against a fresh database and waits for conditions, never for a fixed
//! time.
//!
//! `BLITZ_CONTRACT_SERVER=/path/to/blitz-server cargo test --test contract`
//! runs the suite against another build of the server (e.g. a branch's)
//! instead of this package's binary.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{bin, cluster, free_port, Server, TestDb};

/// How long a test waits for a reply or a condition before it fails.
const WAIT: Duration = Duration::from_secs(10);

/// The API every test database gets, in the default `db.api_schema`.
const FIXTURES: &str = r#"
CREATE SCHEMA blitz_api;
CREATE TABLE public.calls (id bigserial PRIMARY KEY, tag text NOT NULL);
CREATE SEQUENCE public.fail_runs;
CREATE SEQUENCE public.conflict_runs;
CREATE FUNCTION blitz_api.add(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b';
CREATE FUNCTION blitz_api.echo(s text) RETURNS text LANGUAGE sql AS 'SELECT s';
CREATE FUNCTION blitz_api.nap(ms int) RETURNS int LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_sleep(nap.ms / 1000.0); RETURN nap.ms; END $$;
CREATE FUNCTION blitz_api.gated(tag text) RETURNS text LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_advisory_xact_lock_shared(1); RETURN gated.tag; END $$;
CREATE FUNCTION blitz_api.bump(tag text, gated boolean DEFAULT false) RETURNS bigint LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO public.calls (tag) VALUES (bump.tag);
    IF bump.gated THEN
      PERFORM pg_advisory_xact_lock_shared(1);
    END IF;
    RETURN (SELECT count(*) FROM public.calls);
  END $$;
CREATE FUNCTION blitz_api.fail(message text) RETURNS int LANGUAGE plpgsql AS $$
  BEGIN
    PERFORM nextval('public.fail_runs');
    RAISE EXCEPTION 'fail: %', fail.message USING ERRCODE = 'P0001';
  END $$;
CREATE FUNCTION blitz_api.deny() RETURNS int LANGUAGE plpgsql AS $$
  BEGIN RAISE EXCEPTION 'deny: not for you' USING ERRCODE = '42501'; END $$;
CREATE FUNCTION blitz_api.conflict() RETURNS int LANGUAGE plpgsql AS $$
  BEGIN
    PERFORM nextval('public.conflict_runs');
    RAISE EXCEPTION 'conflict: always' USING ERRCODE = '40001';
  END $$;
"#;

// ---------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------

/// A running `blitz-server` and the addresses it serves.
struct Blitz {
    server: Server,
    /// `server.listen`.
    tcp: String,
    /// `server.http_listen`, when the test asked for it.
    http: Option<String>,
    /// `metrics.listen`, when the test asked for it.
    metrics: Option<String>,
}

/// Which listeners a test wants besides TCP.
#[derive(Clone, Copy, Default)]
struct Listeners {
    http: bool,
    metrics: bool,
}

/// A fresh database with [`FIXTURES`] loaded.
fn fixture_db() -> TestDb {
    let db = TestDb::new();
    db.execute(FIXTURES);
    db
}

/// The server binary under test: `BLITZ_CONTRACT_SERVER` or this package's.
fn server_bin() -> std::path::PathBuf {
    std::env::var_os("BLITZ_CONTRACT_SERVER")
        .map(Into::into)
        .unwrap_or_else(|| bin("blitz-server"))
}

fn loopback() -> String {
    format!("127.0.0.1:{}", free_port())
}

impl Blitz {
    /// TCP only, trust mode unless `settings` set `auth.mode`.
    fn start(db: &TestDb, settings: &[(&str, &str)]) -> Blitz {
        Blitz::launch(db, settings, Listeners::default())
    }

    /// TCP and `server.http_listen`.
    fn start_http(db: &TestDb, settings: &[(&str, &str)]) -> Blitz {
        let with = Listeners {
            http: true,
            ..Listeners::default()
        };
        Blitz::launch(db, settings, with)
    }

    /// Starts the server and waits until every listener accepts; fails at
    /// once (with the server's log) if the process exits instead.
    fn launch(db: &TestDb, settings: &[(&str, &str)], with: Listeners) -> Blitz {
        let tcp = loopback();
        let http = with.http.then(loopback);
        let metrics = with.metrics.then(loopback);
        let mut sets = vec![format!("server.listen={tcp}"), format!("db.url={}", db.url)];
        if let Some(addr) = &http {
            sets.push(format!("server.http_listen={addr}"));
        }
        if let Some(addr) = &metrics {
            sets.push(format!("metrics.listen={addr}"));
        }
        if !settings.iter().any(|(k, _)| *k == "auth.mode") {
            sets.push("auth.mode=trust".into());
        }
        sets.extend(settings.iter().map(|(k, v)| format!("{k}={v}")));
        let mut cmd = Command::new(server_bin());
        for s in &sets {
            cmd.arg("--set").arg(s);
        }
        let mut blitz = Blitz {
            server: Server::spawn(cmd, tcp.clone()),
            tcp,
            http,
            metrics,
        };
        let addrs: Vec<String> = [Some(blitz.tcp.clone()), blitz.http.clone()]
            .into_iter()
            .chain([blitz.metrics.clone()])
            .flatten()
            .collect();
        for addr in addrs {
            blitz.wait_listening(&addr, &sets);
        }
        blitz
    }

    fn wait_listening(&mut self, addr: &str, sets: &[String]) {
        let start = Instant::now();
        loop {
            if TcpStream::connect(addr).is_ok() {
                return;
            }
            if let Some(status) = self.server.child.try_wait().unwrap() {
                // Let the stderr collector catch the last lines.
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "blitz-server exited ({status}) before listening on {addr}; settings {sets:?}; log:\n{}",
                    self.server.log()
                );
            }
            assert!(
                start.elapsed() < WAIT * 2,
                "blitz-server did not listen on {addr} within {:?}; log:\n{}",
                WAIT * 2,
                self.server.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn http_addr(&self) -> &str {
        self.http.as_deref().expect("started with http")
    }

    fn metrics_addr(&self) -> &str {
        self.metrics.as_deref().expect("started with metrics")
    }

    /// A TCP connection logged in (trust mode) as `user`, and its session key.
    fn session(&self, user: &str) -> (Conn, String) {
        let mut conn = Conn::open(&self.tcp);
        let key = login(&mut conn, user);
        (conn, key)
    }
}

// ---------------------------------------------------------------------------
// Raw sockets
// ---------------------------------------------------------------------------

/// Why a read stopped without the bytes asked for.
#[derive(Debug, PartialEq)]
enum Stop {
    /// The peer closed its side cleanly (read returned 0).
    Eof,
    /// Nothing (more) arrived before the deadline.
    Timeout,
    /// The connection was reset or failed.
    Broken(ErrorKind),
}

/// A TCP stream with a read buffer and deadline-bounded reads.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn deadline() -> Instant {
    Instant::now() + WAIT
}

impl Wire {
    fn connect(addr: &str) -> Wire {
        let stream =
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr} failed: {e}"));
        stream.set_nodelay(true).unwrap();
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to blitz-server");
    }

    /// One read into the buffer.
    fn fill(&mut self, until: Instant) -> Result<(), Stop> {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Stop::Timeout);
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(Stop::Eof),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(Stop::Broken(e.kind())),
        }
    }

    /// The bytes up to and including `delim`.
    fn until(&mut self, delim: &[u8], until: Instant) -> Result<Vec<u8>, Stop> {
        loop {
            if let Some(pos) = find(&self.buf, delim) {
                return Ok(self.buf.drain(..pos + delim.len()).collect());
            }
            self.fill(until)?;
        }
    }

    /// Exactly `n` bytes.
    fn exactly(&mut self, n: usize, until: Instant) -> Result<Vec<u8>, Stop> {
        while self.buf.len() < n {
            self.fill(until)?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Everything until the peer closes.
    fn until_eof(&mut self, until: Instant) -> Vec<u8> {
        loop {
            match self.fill(until) {
                Ok(()) => {}
                Err(Stop::Eof) => return std::mem::take(&mut self.buf),
                Err(stop) => panic!("reading a body to end of file: {stop:?}"),
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A raw JSON-RPC connection over TCP: write any bytes, read `\n`-terminated
/// reply texts.
struct Conn {
    wire: Wire,
    sentinels: u32,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        Conn {
            wire: Wire::connect(addr),
            sentinels: 0,
        }
    }

    fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.wire.send(bytes.as_ref());
    }

    /// The next reply text, raw (without its `\n`).
    fn next_line(&mut self) -> Result<String, Stop> {
        let line = self.wire.until(b"\n", deadline())?;
        let text = String::from_utf8(line).expect("a reply is UTF-8");
        Ok(text.trim_end_matches('\n').to_string())
    }

    fn raw_reply(&mut self) -> String {
        match self.next_line() {
            Ok(line) => line,
            Err(Stop::Timeout) => panic!("no reply within {WAIT:?}"),
            Err(stop) => panic!("the connection ended before a reply: {stop:?}"),
        }
    }

    /// The next reply, parsed; each reply must be exactly one JSON text.
    fn reply(&mut self) -> Value {
        let line = self.raw_reply();
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a reply line is not one JSON text ({e}): {line:?}"));
        if let Some(object) = value.as_object() {
            assert_eq!(object.get("jsonrpc"), Some(&json!("2.0")), "{line}");
        }
        value
    }

    fn replies(&mut self, n: usize) -> Vec<Value> {
        (0..n).map(|_| self.reply()).collect()
    }

    /// Sends one request text (newline-terminated) and returns its reply,
    /// checking the id.
    fn call(&mut self, id: Value, method: &str, params: Value) -> Value {
        self.call_with(id, method, params, json!({}))
    }

    fn call_with(&mut self, id: Value, method: &str, params: Value, extra: Value) -> Value {
        self.send(line(&req_with(id.clone(), method, params, extra)));
        let reply = self.reply();
        assert_eq!(reply["id"], id, "a reply to another request: {reply}");
        reply
    }

    /// Proves nothing else is pending: a fresh ping's reply is the next one.
    fn assert_quiet(&mut self) {
        self.sentinels += 1;
        let id = format!("sentinel-{}", self.sentinels);
        self.send(line(&req(json!(id), "sys.ping", json!({}))));
        let reply = self.reply();
        assert_eq!(
            reply["id"], id,
            "an extra reply arrived before the sentinel ping's: {reply}"
        );
        ok(&reply);
    }

    /// Waits for the server to close the connection cleanly.
    fn assert_closed(&mut self) {
        match self.wire.fill(deadline()) {
            Err(Stop::Eof) => {}
            Ok(()) => panic!(
                "expected a clean close, got more bytes: {:?}",
                String::from_utf8_lossy(&self.wire.buf)
            ),
            Err(stop) => panic!("expected a clean close (end of file), got {stop:?}"),
        }
    }
}

/// A JSON-RPC request text.
fn req(id: Value, method: &str, params: Value) -> String {
    req_with(id, method, params, json!({}))
}

/// A request text with extension members (`timeout_ms`, `session`, …).
fn req_with(id: Value, method: &str, params: Value, extra: Value) -> String {
    let mut r = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    if let (Some(r), Some(e)) = (r.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    r.to_string()
}

/// A notification text (no id).
fn notification(method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string()
}

fn line(text: &str) -> String {
    format!("{text}\n")
}

/// `session.login` in trust mode; returns the session key.
fn login(conn: &mut Conn, user: &str) -> String {
    let reply = conn.call(json!("login"), "session.login", json!({"user": user}));
    let session = ok(&reply)["session"]
        .as_str()
        .unwrap_or_else(|| panic!("session.login returned no session key: {reply}"));
    session.to_string()
}

// ---------------------------------------------------------------------------
// Assertions on replies
// ---------------------------------------------------------------------------

/// The `result` of a reply, which must not be an error.
fn ok(reply: &Value) -> &Value {
    assert!(
        reply.get("error").is_none(),
        "expected a result, got {reply}"
    );
    assert!(reply.get("result").is_some(), "no result member: {reply}");
    &reply["result"]
}

/// The message the contract's error table gives `code`.
fn message_of(code: i64) -> &'static str {
    match code {
        -32700 => "Parse error",
        -32600 => "Invalid Request",
        -32601 => "Method not found",
        -32602 => "Invalid params",
        -32603 => "Internal error",
        -32001 => "Server overloaded",
        -32002 => "Deadline exceeded",
        -32003 => "Server shutting down",
        -32004 => "Database unavailable",
        -32005 => "Too many connections",
        -32006 => "Unauthenticated",
        -32007 => "Permission denied",
        -32008 => "Transaction conflict",
        -32009 => "Message too large",
        -32010 => "Database error",
        -32011 => "Idempotency key reused",
        other => panic!("{other} is not in the contract"),
    }
}

/// Checks an error reply against the error table (code, message, `data` an
/// object with a boolean `retryable`, `members` present) and returns `data`.
fn error<'a>(reply: &'a Value, code: i64, members: &[&str]) -> &'a Value {
    assert!(reply.get("result").is_none(), "expected an error: {reply}");
    assert!(
        reply.get("id").is_some(),
        "an error reply has an id: {reply}"
    );
    let err = &reply["error"];
    assert_eq!(err["code"], code, "wrong error code: {reply}");
    assert_eq!(err["message"], message_of(code), "{reply}");
    let data = &err["data"];
    assert!(data.is_object(), "error.data must be an object: {reply}");
    assert!(
        data["retryable"].is_boolean(),
        "data.retryable must be a bool: {reply}"
    );
    for member in members {
        assert!(
            data.get(*member).is_some_and(|v| !v.is_null()),
            "data.{member} is missing: {reply}"
        );
    }
    data
}

/// An error a retry cannot fix: `data.retryable` is false.
fn fatal<'a>(reply: &'a Value, code: i64, members: &[&str]) -> &'a Value {
    let data = error(reply, code, members);
    assert_eq!(data["retryable"], false, "{reply}");
    data
}

/// Replies keyed by their id's JSON text.
fn by_id(replies: &[Value]) -> std::collections::BTreeMap<String, Value> {
    let map: std::collections::BTreeMap<String, Value> = replies
        .iter()
        .map(|r| (r["id"].to_string(), r.clone()))
        .collect();
    assert_eq!(
        map.len(),
        replies.len(),
        "two replies share an id: {replies:?}"
    );
    map
}

/// Polls `cond` until it holds or [`WAIT`] (×`factor`) passes.
fn wait_until(what: &str, factor: u32, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < WAIT * factor,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An advisory lock the test holds so that `api.gated` (and `api.bump`
/// with `gated: true`) block inside the database until the test opens it:
/// "a call is running" without any timed sleep.
struct Gate {
    holder: postgres::Client,
}

impl Gate {
    /// Takes the lock on `db` (advisory locks are per database).
    fn close(db: &TestDb) -> Gate {
        let mut holder = db.connect();
        holder.batch_execute("SELECT pg_advisory_lock(1)").unwrap();
        Gate { holder }
    }

    /// Releases the lock: every call waiting at the gate goes on.
    fn open(mut self) {
        self.holder
            .batch_execute("SELECT pg_advisory_unlock(1)")
            .unwrap();
    }
}

/// Backends of `db` waiting at the [`Gate`] right now: on its lock, key 1
/// (not on the advisory locks blitz itself takes, e.g. for the budget's
/// registry).
fn at_gate(db: &TestDb) -> i64 {
    let mut c = cluster().connect("postgres");
    c.query_one(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE d.datname = $1 AND l.locktype = 'advisory' AND NOT l.granted \
         AND l.classid = 0 AND l.objid = 1 AND l.objsubid = 1",
        &[&db.name],
    )
    .unwrap()
    .get(0)
}

fn sequence_runs(db: &TestDb, seq: &str) -> i64 {
    let row = db
        .connect()
        .query_one(&format!("SELECT last_value, is_called FROM {seq}"), &[])
        .unwrap();
    if row.get::<_, bool>(1) {
        row.get(0)
    } else {
        0
    }
}

// ---------------------------------------------------------------------------
// TCP framing
// ---------------------------------------------------------------------------

#[test]
fn a_text_without_a_newline_is_answered_at_its_closing_brace() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut conn = Conn::open(&blitz.tcp);
    conn.send(req(json!(1), "sys.ping", json!({})));
    let reply = conn.reply();
    assert_eq!(reply["id"], 1);
    ok(&reply);
}

#[test]
fn back_to_back_texts_without_newlines_each_get_one_reply() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut conn = Conn::open(&blitz.tcp);
    let texts: String = (1..=3)
        .map(|i| req(json!(i), "sys.ping", json!({})))
        .collect();
    conn.send(&texts);
    let replies = by_id(&conn.replies(3));
    for i in 1..=3 {
        ok(&replies[&i.to_string()]);
    }
    conn.assert_quiet();
}

#[test]
fn whitespace_between_texts_is_ignored() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut conn = Conn::open(&blitz.tcp);
    let ping = |i: i64| req(json!(i), "sys.ping", json!({}));
    conn.send(format!(
        " \r\n\t{}\n\n  \t \r\n{} \t{}\r\n\n",
        ping(1),
        ping(2),
        ping(3)
    ));
    let replies = by_id(&conn.replies(3));
    for i in 1..=3 {
        ok(&replies[&i.to_string()]);
    }
    conn.assert_quiet();
}

#[test]
fn a_text_lies_on_one_line_and_a_newline_ends_an_unfinished_one() {
    // A newline inside an unfinished text ends it (one -32700), so a cut-off
    // text cannot swallow the requests on the following lines; each later
    // line of a pretty-printed text is then a stray line (-32700 each).
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut conn = Conn::open(&blitz.tcp);
    let text = "{\n  \"jsonrpc\": \"2.0\",\n  \"id\": 7,\n  \"method\": \"sys.ping\"\n}\n";
    conn.send(text);
    for _ in 0..text.lines().count() {
        let reply = conn.reply();
        error(&reply, -32700, &["detail"]);
        assert_eq!(reply["id"], Value::Null, "{reply}");
    }
    conn.send(line(&req(json!(8), "sys.ping", json!({}))));
    assert_eq!(conn.reply()["id"], 8);
    conn.assert_quiet();
}

#[test]
fn braces_and_quotes_inside_strings_do_not_end_a_text() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut conn, _) = blitz.session("test");
    let tricky = "}{][\"} \\\" { \\ \n]";
    let texts = format!(
        "{}{}",
        req(json!(1), "api.echo", json!({"s": tricky})),
        req(json!(2), "api.echo", json!({"s": "{"}))
    );
    conn.send(texts);
    let replies = by_id(&conn.replies(2));
    assert_eq!(ok(&replies["1"]), tricky);
    assert_eq!(ok(&replies["2"]), "{");
    conn.assert_quiet();
}

#[test]
fn a_garbage_line_is_one_parse_error_and_the_connection_keeps_working() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut conn = Conn::open(&blitz.tcp);
    conn.send("this is not json, not even close\n");
    let reply = conn.reply();
    fatal(&reply, -32700, &["detail"]);
    assert_eq!(reply["id"], Value::Null, "{reply}");
    conn.assert_quiet();
    ok(&conn.call(json!(2), "sys.ping", json!({})));
}

#[test]
fn garbage_after_a_text_up_to_the_newline_is_one_parse_error() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut conn = Conn::open(&blitz.tcp);
    conn.send(format!(
        "{} trailing junk, more junk\n{}\n",
        req(json!(1), "sys.ping", json!({})),
        req(json!(2), "sys.ping", json!({}))
    ));
    let replies = conn.replies(3);
    let errors: Vec<&Value> = replies
        .iter()
        .filter(|r| r.get("error").is_some())
        .collect();
    assert_eq!(errors.len(), 1, "exactly one parse error: {replies:?}");
    fatal(errors[0], -32700, &["detail"]);
    let results = by_id(&replies);
    ok(&results["1"]);
    ok(&results["2"]);
    conn.assert_quiet();
}

#[test]
fn an_oversized_text_gets_32009_and_the_connection_stays_open() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[("server.max_message_bytes", "1024")]);
    let (mut conn, _) = blitz.session("test");
    let big = req(json!(1), "api.echo", json!({"s": "x".repeat(4096)}));
    conn.send(line(&big));
    let reply = conn.reply();
    let data = fatal(&reply, -32009, &["max_message_bytes"]);
    assert_eq!(data["max_message_bytes"], 1024, "{reply}");
    conn.assert_quiet();
    let small = conn.call(json!(2), "api.echo", json!({"s": "still here"}));
    assert_eq!(ok(&small), "still here");
}

#[test]
fn an_oversized_text_followed_directly_by_another_is_skipped_alone() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[("server.max_message_bytes", "1024")]);
    let (mut conn, _) = blitz.session("test");
    conn.send(format!(
        "{}{}",
        req(json!(1), "api.echo", json!({"s": "}{".repeat(2048)})),
        req(json!(2), "api.echo", json!({"s": "next"}))
    ));
    let replies = conn.replies(2);
    let (refused, served): (Vec<&Value>, Vec<&Value>) =
        replies.iter().partition(|r| r.get("error").is_some());
    assert_eq!(refused.len(), 1, "{replies:?}");
    fatal(refused[0], -32009, &["max_message_bytes"]);
    assert_eq!(served[0]["id"], 2, "{replies:?}");
    assert_eq!(ok(served[0]), "next");
    conn.assert_quiet();
}

#[test]
fn invalid_utf8_is_a_parse_error_and_the_connection_keeps_working() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut conn = Conn::open(&blitz.tcp);
    let mut bad = br#"{"jsonrpc":"2.0","id":1,"method":"sys.ping","params":{"s":""#.to_vec();
    bad.extend_from_slice(b"\xff\xfe\xc3(");
    bad.extend_from_slice(b"\"}}\n");
    conn.send(&bad);
    fatal(&conn.reply(), -32700, &["detail"]);
    conn.assert_quiet();
    conn.send(b"\xc0\xaf\xff\n");
    fatal(&conn.reply(), -32700, &["detail"]);
    conn.assert_quiet();
}

#[test]
fn a_batch_gets_one_array_reply_without_the_notifications() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut conn, _) = blitz.session("test");
    let batch = format!(
        "[{},{},{},{}]\n",
        req(json!(1), "sys.ping", json!({})),
        notification("sys.ping", json!({})),
        req(json!("two"), "api.add", json!({"a": 1, "b": 2})),
        req(json!(3), "no.such_method", json!({}))
    );
    conn.send(batch);
    let reply = conn.reply();
    let items = reply
        .as_array()
        .unwrap_or_else(|| panic!("a batch gets an array: {reply}"));
    assert_eq!(
        items.len(),
        3,
        "one reply per request, none for the notification: {reply}"
    );
    let items = by_id(items);
    ok(&items["1"]);
    assert_eq!(ok(&items["\"two\""]), 3);
    let data = fatal(&items["3"], -32601, &["method"]);
    assert_eq!(data["method"], "no.such_method");
    conn.assert_quiet();
}

#[test]
fn an_empty_batch_is_one_invalid_request() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut conn = Conn::open(&blitz.tcp);
    conn.send("[]\n");
    let reply = conn.reply();
    assert!(reply.is_object(), "one error object, not an array: {reply}");
    fatal(&reply, -32600, &["detail"]);
    assert_eq!(reply["id"], Value::Null);
    conn.assert_quiet();
}

#[test]
fn a_batch_of_notifications_gets_no_reply() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut conn = Conn::open(&blitz.tcp);
    conn.send(format!(
        "[{},{}]\n",
        notification("sys.ping", json!({})),
        notification("sys.ping", json!({}))
    ));
    conn.assert_quiet();
}

#[test]
fn notifications_get_no_reply_even_when_they_fail() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut conn = Conn::open(&blitz.tcp);
    conn.send(line(&notification("sys.ping", json!({}))));
    conn.send(line(&notification("no.such_method", json!({}))));
    // No session on this connection: the call would fail with -32006.
    conn.send(line(&notification("api.add", json!({"a": 1, "b": 2}))));
    conn.assert_quiet();
}

#[test]
fn ids_are_echoed_byte_for_byte() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut conn = Conn::open(&blitz.tcp);
    let ids = [
        "123456789012345678901234567890",
        "-0.250",
        "1E+2",
        r#""caf\u00e9 \"q\" \/""#,
        r#""plain""#,
    ];
    for id in ids {
        conn.send(format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"sys.ping\",\"params\":{{}}}}\n"
        ));
        let raw = conn.raw_reply();
        assert!(
            raw.contains(&format!("\"id\":{id}")) || raw.contains(&format!("\"id\": {id}")),
            "id {id} not echoed byte for byte: {raw}"
        );
    }
}

#[test]
fn pipelined_requests_each_get_exactly_one_reply() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut conn, _) = blitz.session("test");
    let mut texts = String::new();
    for i in 0..60 {
        texts += &line(&match i % 3 {
            0 => req(json!(i), "sys.ping", json!({})),
            1 => req(json!(i), "api.add", json!({"a": i, "b": 1})),
            _ => req(json!(i), "no.such_method", json!({})),
        });
    }
    conn.send(texts);
    let replies = by_id(&conn.replies(60));
    for i in 0..60 {
        let reply = &replies[&i.to_string()];
        match i % 3 {
            0 => assert!(ok(reply).is_object(), "{reply}"),
            1 => assert_eq!(ok(reply), &json!(i + 1)),
            _ => {
                fatal(reply, -32601, &["method"]);
            }
        }
    }
    conn.assert_quiet();
}

// ---------------------------------------------------------------------------
// Error codes
// ---------------------------------------------------------------------------

#[test]
fn invalid_request_objects_get_32600() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut conn = Conn::open(&blitz.tcp);
    let cases = [
        (1, r#"{"jsonrpc":"2.0","id":1}"#),
        (2, r#"{"jsonrpc":"1.0","id":2,"method":"sys.ping"}"#),
        (3, r#"{"jsonrpc":"2.0","id":3,"method":42}"#),
        (4, r#"{"id":4,"method":"sys.ping"}"#),
    ];
    for (id, text) in cases {
        conn.send(line(text));
        let reply = conn.reply();
        fatal(&reply, -32600, &["detail"]);
        assert!(
            reply["id"] == id || reply["id"].is_null(),
            "the id is echoed or null: {reply}"
        );
    }
    conn.send("[1,2]\n");
    let reply = conn.reply();
    let items = reply.as_array().expect("a batch reply is an array");
    assert_eq!(items.len(), 2, "{reply}");
    for item in items {
        fatal(item, -32600, &["detail"]);
    }
    conn.assert_quiet();
}

#[test]
fn unknown_methods_and_functions_get_32601_naming_the_method() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut conn, _) = blitz.session("test");
    for method in ["no.such_method", "api.no_such_function"] {
        let reply = conn.call(json!(method), method, json!({}));
        let data = fatal(&reply, -32601, &["method"]);
        assert_eq!(data["method"], method, "{reply}");
    }
}

#[test]
fn bad_params_get_32602_naming_the_param() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut conn, _) = blitz.session("test");
    let cases = [
        (json!({"a": 1}), "b"),
        (json!({"a": "x", "b": 1}), "a"),
        (json!({"a": 1, "b": 2, "c": 3}), "c"),
    ];
    for (params, param) in cases {
        let reply = conn.call(json!(param), "api.add", params);
        let data = fatal(&reply, -32602, &["param", "detail"]);
        assert_eq!(data["param"], param, "{reply}");
    }
}

#[test]
fn calls_without_a_session_get_32006() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut conn = Conn::open(&blitz.tcp);
    let reply = conn.call(json!(1), "api.add", json!({"a": 1, "b": 2}));
    error(&reply, -32006, &["detail"]);
    ok(&conn.call(json!(2), "sys.ping", json!({})));
}

/// With one worker and `queue_capacity = 1`: a call running (held at the
/// gate), one queued, and the third request refused. Returns the refusal.
fn fill_queue(conn: &mut Conn, db: &TestDb) -> Value {
    conn.send(line(&req(
        json!("running"),
        "api.gated",
        json!({"tag": "running"}),
    )));
    wait_until("the first call to run", 1, || at_gate(db) == 1);
    conn.send(format!(
        "{}\n{}\n",
        req(json!("queued"), "api.gated", json!({"tag": "queued"})),
        req(json!("refused"), "api.gated", json!({"tag": "refused"}))
    ));
    let refusal = conn.reply();
    assert_eq!(
        refusal["id"], "refused",
        "the refusal comes at once, before the running call ends: {refusal}"
    );
    refusal
}

/// Opens the gate and reads the replies of [`fill_queue`]'s running and
/// queued calls.
fn drain_queue(conn: &mut Conn, gate: Gate) {
    gate.open();
    let replies = by_id(&conn.replies(2));
    assert_eq!(ok(&replies["\"running\""]), "running");
    assert_eq!(ok(&replies["\"queued\""]), "queued");
    conn.assert_quiet();
}

const ONE_SLOT: [(&str, &str); 3] = [
    ("db.pool_size", "1"),
    ("invocation.workers", "1"),
    ("invocation.queue_capacity", "1"),
];

#[test]
fn a_full_queue_refuses_with_32001_and_every_request_is_answered() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &ONE_SLOT);
    let (mut conn, _) = blitz.session("test");
    let gate = Gate::close(&db);
    let refusal = fill_queue(&mut conn, &db);
    let data = error(
        &refusal,
        -32001,
        &[
            "retry_after_ms",
            "queue_depth",
            "queue_capacity",
            "instance",
            "reason",
        ],
    );
    assert_eq!(data["retryable"], true, "{refusal}");
    assert_eq!(data["queue_capacity"], 1, "{refusal}");
    assert!(data["retry_after_ms"].is_u64(), "{refusal}");
    drain_queue(&mut conn, gate);
}

#[test]
fn the_per_connection_in_flight_limit_refuses_with_32001() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[("server.max_in_flight_per_connection", "1")]);
    let (mut conn, _) = blitz.session("test");
    let gate = Gate::close(&db);
    conn.send(line(&req(json!(1), "api.gated", json!({"tag": "one"}))));
    wait_until("the first call to run", 1, || at_gate(&db) == 1);
    conn.send(line(&req(json!(2), "api.gated", json!({"tag": "two"}))));
    let refusal = conn.reply();
    assert_eq!(refusal["id"], 2, "{refusal}");
    let data = error(&refusal, -32001, &["retry_after_ms", "reason"]);
    assert_eq!(data["retryable"], true);
    gate.open();
    assert_eq!(ok(&conn.reply()), "one");
    conn.assert_quiet();
}

#[test]
fn a_call_running_past_its_timeout_ms_gets_32002() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut conn, _) = blitz.session("test");
    let gate = Gate::close(&db);
    // Blocks at the gate until the server cancels it at its deadline.
    let reply = conn.call_with(
        json!(1),
        "api.gated",
        json!({"tag": "late"}),
        json!({"timeout_ms": 300}),
    );
    let data = error(&reply, -32002, &["queued_ms"]);
    assert!(data["queued_ms"].is_number(), "{reply}");
    wait_until("the cancelled call to leave the database", 1, || {
        at_gate(&db) == 0
    });
    gate.open();
    assert_eq!(
        ok(&conn.call(json!(2), "api.add", json!({"a": 1, "b": 2}))),
        3
    );
}

/// A connection the server admitted (a ping answered), retrying while the
/// one slot of `max_clients = 1` is still held by an earlier probe.
fn admitted(addr: &str) -> Conn {
    let start = Instant::now();
    loop {
        let mut conn = Conn::open(addr);
        conn.send(line(&req(json!("hello"), "sys.ping", json!({}))));
        if let Ok(text) = conn.next_line() {
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply.get("result").is_some() {
                return conn;
            }
            error(&reply, -32005, &["max_clients"]);
        }
        assert!(
            start.elapsed() < WAIT,
            "no connection admitted within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn max_clients_refuses_with_one_32005_then_closes_cleanly() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[("server.max_clients", "1")]);
    let mut first = admitted(&blitz.tcp);
    let mut second = Conn::open(&blitz.tcp);
    let reply = second.reply();
    let data = error(&reply, -32005, &["max_clients"]);
    assert_eq!(data["max_clients"], 1, "{reply}");
    second.assert_closed();
    ok(&first.call(json!(2), "sys.ping", json!({})));
    drop(first);
    // The slot is free again once the first client has gone.
    admitted(&blitz.tcp);
}

#[test]
fn a_function_that_raises_gets_32010_with_its_sqlstate() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut conn, _) = blitz.session("test");
    let reply = conn.call(json!(1), "api.fail", json!({"message": "boom"}));
    let data = error(&reply, -32010, &["sqlstate", "detail"]);
    assert_eq!(data["sqlstate"], "P0001", "{reply}");
    assert!(
        data["detail"].as_str().unwrap_or("").contains("fail: boom"),
        "the function's message is passed on: {reply}"
    );
}

#[test]
fn sqlstate_42501_is_32007_permission_denied() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut conn, _) = blitz.session("test");
    let reply = conn.call(json!(1), "api.deny", json!({}));
    let data = error(&reply, -32007, &["sqlstate", "detail"]);
    assert_eq!(data["sqlstate"], "42501", "{reply}");
}

#[test]
fn a_conflict_still_failing_after_the_retries_is_32008() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[("invocation.max_retries", "2")]);
    let (mut conn, _) = blitz.session("test");
    let reply = conn.call(json!(1), "api.conflict", json!({}));
    let data = error(&reply, -32008, &["attempts", "sqlstate"]);
    assert_eq!(data["sqlstate"], "40001", "{reply}");
    let runs = sequence_runs(&db, "public.conflict_runs");
    assert_eq!(runs, 3, "one run and max_retries = 2 retries");
    assert_eq!(data["attempts"], runs, "attempts counts the runs: {reply}");
}

#[test]
fn a_lost_database_gives_32004_and_the_server_recovers() {
    let db = fixture_db();
    let blitz = Blitz::start(
        &db,
        &[("db.pool_size", "1"), ("db.acquire_timeout_ms", "300")],
    );
    let (mut conn, _) = blitz.session("test");
    assert_eq!(
        ok(&conn.call(json!(0), "api.add", json!({"a": 1, "b": 2}))),
        3
    );
    let mut admin = cluster().connect("postgres");
    let cut = format!(
        "ALTER DATABASE {0} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}'",
        db.name
    );
    admin.batch_execute(&cut).unwrap();
    let reply = conn.call(json!(1), "api.add", json!({"a": 1, "b": 2}));
    error(&reply, -32004, &["retry_after_ms", "detail"]);
    // sys.ping does no database work: it still answers.
    ok(&conn.call(json!("ping"), "sys.ping", json!({})));
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            db.name
        ))
        .unwrap();
    let mut id = 1;
    wait_until("calls to succeed again", 3, || {
        id += 1;
        let reply = conn.call(json!(id), "api.add", json!({"a": 1, "b": 2}));
        if reply.get("error").is_some() {
            error(&reply, -32004, &["retry_after_ms"]);
            return false;
        }
        ok(&reply) == 3
    });
}

#[test]
fn draining_answers_new_requests_32003_and_finishes_running_ones() {
    let db = fixture_db();
    let mut blitz = Blitz::start(&db, &[("server.drain_timeout_s", "30")]);
    let (mut conn, _) = blitz.session("test");
    let gate = Gate::close(&db);
    conn.send(line(&req(
        json!("running"),
        "api.gated",
        json!({"tag": "done"}),
    )));
    wait_until("the call to run", 1, || at_gate(&db) == 1);
    let pid = blitz.server.child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
    // The held call keeps the drain open; new calls are refused from the
    // moment it begins (a call read before it may still be served).
    let mut id = 0;
    let refusal = loop {
        id += 1;
        let reply = conn.call(json!(id), "api.add", json!({"a": 1, "b": 2}));
        if reply.get("error").is_some() {
            break reply;
        }
        assert!(id < 1000, "no -32003 while draining");
    };
    let data = error(&refusal, -32003, &["retry_after_ms"]);
    assert_eq!(data["retryable"], true, "{refusal}");
    gate.open();
    let reply = conn.reply();
    assert_eq!(reply["id"], "running", "{reply}");
    assert_eq!(ok(&reply), "done");
    let mut status = None;
    wait_until("the drained server to exit", 1, || {
        status = blitz.server.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "{status:?}");
}

#[test]
fn rpc_discover_describes_every_callable_method() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut conn, _) = blitz.session("test");
    let reply = conn.call(json!(1), "rpc.discover", json!({}));
    let doc = ok(&reply);
    assert!(
        doc["openrpc"].as_str().is_some_and(|v| v.starts_with("1.")),
        "an OpenRPC 1.x document: {doc}"
    );
    let names: Vec<&str> = doc["methods"]
        .as_array()
        .expect("methods is an array")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    let expected = [
        "session.login",
        "session.join",
        "session.logout",
        "sys.ping",
        "sys.status",
        "sys.instances",
        "rpc.discover",
        "api.add",
        "api.echo",
        "api.gated",
        "api.fail",
    ];
    for method in expected {
        assert!(names.contains(&method), "{method} missing from {names:?}");
    }
}

// ---------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------

#[test]
fn trust_mode_login_returns_session_user_and_expiry() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut conn = Conn::open(&blitz.tcp);
    let reply = conn.call(json!(1), "session.login", json!({"user": "alice"}));
    let result = ok(&reply);
    assert!(
        result["session"].as_str().is_some_and(|s| !s.is_empty()),
        "{reply}"
    );
    assert_eq!(result["user"], "alice", "{reply}");
    assert!(!result["expires_at"].is_null(), "{reply}");
    assert_eq!(
        ok(&conn.call(json!(2), "api.add", json!({"a": 2, "b": 2}))),
        4
    );
}

#[test]
fn the_session_member_authenticates_one_request_on_a_fresh_connection() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (_, key) = blitz.session("test");
    let mut fresh = Conn::open(&blitz.tcp);
    let reply = fresh.call_with(
        json!(1),
        "api.add",
        json!({"a": 1, "b": 2}),
        json!({"session": key}),
    );
    assert_eq!(ok(&reply), 3);
    // Only that one request: the connection itself has no session.
    let reply = fresh.call(json!(2), "api.add", json!({"a": 1, "b": 2}));
    error(&reply, -32006, &["detail"]);
    // A connection per request works too.
    for id in 3..6 {
        let mut conn = Conn::open(&blitz.tcp);
        let reply = conn.call_with(
            json!(id),
            "api.add",
            json!({"a": id, "b": 0}),
            json!({"session": key}),
        );
        assert_eq!(ok(&reply), id);
    }
}

#[test]
fn an_unknown_or_ended_session_member_gets_32006() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let mut fresh = Conn::open(&blitz.tcp);
    let reply = fresh.call_with(
        json!(1),
        "api.add",
        json!({"a": 1, "b": 2}),
        json!({"session": "no-such-session-key"}),
    );
    error(&reply, -32006, &["detail"]);
    let (mut owner, key) = blitz.session("test");
    ok(&owner.call(json!(2), "session.logout", json!({})));
    let reply = fresh.call_with(
        json!(3),
        "api.add",
        json!({"a": 1, "b": 2}),
        json!({"session": key}),
    );
    error(&reply, -32006, &["detail"]);
}

// ---------------------------------------------------------------------------
// HTTP/1.1
// ---------------------------------------------------------------------------

/// An HTTP response as read off the wire.
#[derive(Debug)]
struct Response {
    status: u16,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1.1 client connection.
struct Http {
    wire: Wire,
}

impl Http {
    fn open(addr: &str) -> Http {
        Http {
            wire: Wire::connect(addr),
        }
    }

    /// `POST /` with a JSON body and extra headers; reads the response.
    fn post(&mut self, body: &[u8], headers: &[(&str, &str)]) -> Response {
        let mut head = format!(
            "POST / HTTP/1.1\r\nHost: blitz\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head += &format!("{name}: {value}\r\n");
        }
        head += "\r\n";
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.wire.send(&bytes);
        self.response()
    }

    fn get(&mut self, path: &str) -> Response {
        let head = format!("GET {path} HTTP/1.1\r\nHost: blitz\r\n\r\n");
        self.wire.send(head.as_bytes());
        self.response()
    }

    fn response(&mut self) -> Response {
        let until = deadline();
        let head = self
            .wire
            .until(b"\r\n\r\n", until)
            .unwrap_or_else(|stop| panic!("no HTTP response head: {stop:?}"));
        let head = String::from_utf8(head).expect("an HTTP head is ASCII");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(
            status_line.starts_with("HTTP/1.1 "),
            "not an HTTP/1.1 status line: {status_line:?}"
        );
        let status: u16 = status_line[9..12].parse().expect("a status code");
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (name, value) = l.split_once(':').expect("a header line has a colon");
                (name.trim().to_ascii_lowercase(), value.trim().to_string())
            })
            .collect();
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        response.body = self.body(&response, until);
        response
    }

    fn body(&mut self, head: &Response, until: Instant) -> Vec<u8> {
        if head.status == 204 || head.status == 304 || head.status < 200 {
            return Vec::new();
        }
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            return self.chunked(until);
        }
        match head.header("content-length") {
            Some(n) => {
                let n: usize = n.parse().expect("a numeric Content-Length");
                self.wire.exactly(n, until).expect("the whole body")
            }
            None => self.wire.until_eof(until),
        }
    }

    fn chunked(&mut self, until: Instant) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let size_line = self.wire.until(b"\r\n", until).expect("a chunk size");
            let size = String::from_utf8_lossy(&size_line);
            let size = size.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16).expect("a hex chunk size");
            if size == 0 {
                // Trailers end with an empty line.
                while self.wire.until(b"\r\n", until).expect("trailer").len() > 2 {}
                return body;
            }
            body.extend(self.wire.exactly(size, until).expect("a chunk"));
            self.wire.exactly(2, until).expect("a chunk's CRLF");
        }
    }
}

/// One request on a fresh HTTP connection.
fn post_once(addr: &str, body: &str, headers: &[(&str, &str)]) -> Response {
    Http::open(addr).post(body.as_bytes(), headers)
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[test]
fn http_post_returns_200_with_the_json_rpc_reply() {
    let db = fixture_db();
    let blitz = Blitz::start_http(&db, &[]);
    let response = post_once(
        blitz.http_addr(),
        &req(json!(7), "sys.ping", json!({})),
        &[],
    );
    assert_eq!(response.status, 200, "{response:?}");
    let reply = response.json();
    assert_eq!(reply["id"], 7, "{reply}");
    ok(&reply);
    let batch = format!(
        "[{},{},{}]",
        req(json!(1), "sys.ping", json!({})),
        notification("sys.ping", json!({})),
        req(json!(2), "sys.ping", json!({}))
    );
    let response = post_once(blitz.http_addr(), &batch, &[]);
    assert_eq!(response.status, 200, "{response:?}");
    let reply = response.json();
    let items = reply.as_array().expect("a batch gets an array");
    assert_eq!(items.len(), 2, "{reply}");
    by_id(items).values().for_each(|r| {
        ok(r);
    });
}

#[test]
fn http_notifications_only_get_204() {
    let db = fixture_db();
    let blitz = Blitz::start_http(&db, &[]);
    let note = notification("sys.ping", json!({}));
    let response = post_once(blitz.http_addr(), &note, &[]);
    assert_eq!(response.status, 204, "{response:?}");
    assert!(response.body.is_empty(), "{response:?}");
    let response = post_once(blitz.http_addr(), &format!("[{note},{note}]"), &[]);
    assert_eq!(response.status, 204, "{response:?}");
}

#[test]
fn http_parse_errors_and_invalid_requests_get_400() {
    let db = fixture_db();
    let blitz = Blitz::start_http(&db, &[]);
    let cases = [
        ("{\"jsonrpc\": \"2.0\", \"id\": 1, oops", -32700),
        (r#"{"jsonrpc":"2.0","id":1}"#, -32600),
        ("[]", -32600),
    ];
    for (body, code) in cases {
        let response = post_once(blitz.http_addr(), body, &[]);
        assert_eq!(response.status, 400, "{body}: {response:?}");
        fatal(&response.json(), code, &["detail"]);
    }
}

#[test]
fn http_auth_maps_32006_to_401_bearer_authenticates_and_32007_is_403() {
    let db = fixture_db();
    let blitz = Blitz::start_http(&db, &[]);
    let addr = blitz.http_addr();
    let add = req(json!(1), "api.add", json!({"a": 1, "b": 2}));
    let response = post_once(addr, &add, &[]);
    assert_eq!(response.status, 401, "{response:?}");
    error(&response.json(), -32006, &["detail"]);

    let login = post_once(
        addr,
        &req(json!(2), "session.login", json!({"user": "test"})),
        &[],
    );
    assert_eq!(login.status, 200, "{login:?}");
    let key = ok(&login.json())["session"].as_str().unwrap().to_string();
    let auth = bearer(&key);
    let response = post_once(addr, &add, &[("Authorization", &auth)]);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(ok(&response.json()), 3);

    let with_member = req_with(
        json!(3),
        "api.add",
        json!({"a": 2, "b": 2}),
        json!({"session": key}),
    );
    let response = post_once(addr, &with_member, &[]);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(ok(&response.json()), 4);

    let deny = req(json!(4), "api.deny", json!({}));
    let response = post_once(addr, &deny, &[("Authorization", &auth)]);
    assert_eq!(response.status, 403, "{response:?}");
    error(&response.json(), -32007, &["sqlstate"]);

    // Errors the mapping does not list are 200.
    let unknown = req(json!(5), "api.no_such_function", json!({}));
    let response = post_once(addr, &unknown, &[("Authorization", &auth)]);
    assert_eq!(response.status, 200, "{response:?}");
    fatal(&response.json(), -32601, &["method"]);
}

#[test]
fn http_oversized_body_is_413() {
    let db = fixture_db();
    let blitz = Blitz::start_http(&db, &[("server.max_message_bytes", "1024")]);
    let body = req(json!(1), "sys.ping", json!({"pad": "x".repeat(4096)}));
    let response = post_once(blitz.http_addr(), &body, &[]);
    assert_eq!(response.status, 413, "{response:?}");
    let reply = response.json();
    let data = fatal(&reply, -32009, &["max_message_bytes"]);
    assert_eq!(data["max_message_bytes"], 1024, "{reply}");
}

#[test]
fn http_overload_is_503_with_retry_after_in_whole_seconds() {
    let db = fixture_db();
    let blitz = Blitz::start_http(&db, &ONE_SLOT);
    let (mut conn, key) = blitz.session("test");
    let gate = Gate::close(&db);
    fill_queue(&mut conn, &db);
    let auth = bearer(&key);
    let call = req(json!("http"), "api.gated", json!({"tag": "http"}));
    let response = post_once(blitz.http_addr(), &call, &[("Authorization", &auth)]);
    assert_eq!(response.status, 503, "{response:?}");
    let reply = response.json();
    assert_eq!(reply["id"], "http", "{reply}");
    let data = error(&reply, -32001, &["retry_after_ms"]);
    let retry_ms = data["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms is an integer");
    let retry_after: u64 = response
        .header("retry-after")
        .unwrap_or_else(|| panic!("503 without Retry-After: {response:?}"))
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(retry_after >= 1, "{response:?}");
    assert_eq!(retry_after, retry_ms.div_ceil(1000).max(1), "{response:?}");
    drain_queue(&mut conn, gate);
}

#[test]
fn http_get_is_405() {
    let db = fixture_db();
    let blitz = Blitz::start_http(&db, &[]);
    let response = Http::open(blitz.http_addr()).get("/");
    assert_eq!(response.status, 405, "{response:?}");
}

#[test]
fn http_keep_alive_serves_two_requests_on_one_connection() {
    let db = fixture_db();
    let blitz = Blitz::start_http(&db, &[]);
    let mut http = Http::open(blitz.http_addr());
    for id in 1..=2 {
        let response = http.post(req(json!(id), "sys.ping", json!({})).as_bytes(), &[]);
        assert_eq!(response.status, 200, "{response:?}");
        assert_ne!(response.header("connection"), Some("close"), "{response:?}");
        assert_eq!(response.json()["id"], id);
    }
}

// ---------------------------------------------------------------------------
// Metrics and health
// ---------------------------------------------------------------------------

fn start_metrics(db: &TestDb) -> Blitz {
    let with = Listeners {
        metrics: true,
        ..Listeners::default()
    };
    Blitz::launch(db, &[], with)
}

/// Checks one Prometheus text-format sample line: `name[{labels}] value [ts]`.
fn assert_sample(line: &str) {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    assert!(name_end > 0, "a sample starts with a metric name: {line:?}");
    let rest = &line[name_end..];
    let rest = match rest.strip_prefix('{') {
        Some(labels) => &labels[labels.rfind('}').expect("labels end with }") + 1..],
        None => rest,
    };
    let value = rest.split_whitespace().next().unwrap_or("");
    assert!(
        value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
        "a sample has a numeric value: {line:?}"
    );
}

#[test]
fn metrics_serves_prometheus_text_with_blitz_families() {
    let db = fixture_db();
    let blitz = start_metrics(&db);
    let (mut conn, _) = blitz.session("test");
    assert_eq!(
        ok(&conn.call(json!(1), "api.add", json!({"a": 1, "b": 2}))),
        3
    );
    let response = Http::open(blitz.metrics_addr()).get("/metrics");
    assert_eq!(response.status, 200, "{response:?}");
    let content_type = response.header("content-type").unwrap_or("");
    // The Prometheus text format, or OpenMetrics text (what Prometheus
    // itself asks for first, and what prometheus-client writes).
    assert!(
        content_type.starts_with("text/plain")
            || content_type.starts_with("application/openmetrics-text"),
        "{content_type:?}"
    );
    let text = response.text();
    assert!(
        text.lines().any(|l| l.starts_with("# TYPE blitz_")),
        "no blitz_ family:\n{text}"
    );
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(samples.iter().any(|l| l.starts_with("blitz_")), "{text}");
    samples.iter().for_each(|l| assert_sample(l));
}

#[test]
fn health_live_and_ready_answer_200() {
    let db = fixture_db();
    let blitz = start_metrics(&db);
    let live = Http::open(blitz.metrics_addr()).get("/health/live");
    assert_eq!(live.status, 200, "{live:?}");
    wait_until("/health/ready to answer 200", 1, || {
        Http::open(blitz.metrics_addr()).get("/health/ready").status == 200
    });
}

// ---------------------------------------------------------------------------
// Scale-out: registry, sessions across instances, the connection budget
// ---------------------------------------------------------------------------

/// The instance entries of a `sys.instances` result (an array, or the one
/// array member of an object).
fn instances(conn: &mut Conn) -> Vec<Value> {
    let reply = conn.call(json!("instances"), "sys.instances", json!({}));
    let result = ok(&reply);
    if let Some(list) = result.as_array() {
        return list.clone();
    }
    let arrays: Vec<&Value> = result
        .as_object()
        .map(|o| o.values().filter(|v| v.is_array()).collect())
        .unwrap_or_default();
    assert_eq!(arrays.len(), 1, "sys.instances lists instances: {reply}");
    arrays[0].as_array().unwrap().clone()
}

/// The entries that mention `addr` (its listen address).
fn listing(entries: &[Value], addr: &str) -> usize {
    entries
        .iter()
        .filter(|e| e.to_string().contains(addr))
        .count()
}

#[test]
fn sys_instances_lists_this_instance() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut conn, _) = blitz.session("test");
    let entries = instances(&mut conn);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(listing(&entries, &blitz.tcp), 1, "{entries:?}");
}

#[test]
fn two_instances_list_each_other_and_a_clean_stop_deregisters() {
    let db = fixture_db();
    let a = Blitz::start(&db, &[]);
    let mut b = Blitz::start(&db, &[]);
    let (mut conn, _) = a.session("test");
    wait_until("both instances listed", 1, || {
        let entries = instances(&mut conn);
        listing(&entries, &a.tcp) == 1 && listing(&entries, &b.tcp) == 1
    });
    let status = b.server.terminate();
    assert!(status.success(), "a clean stop exits 0: {status}");
    wait_until("the stopped instance to leave the registry", 1, || {
        let entries = instances(&mut conn);
        listing(&entries, &b.tcp) == 0 && listing(&entries, &a.tcp) == 1
    });
}

#[test]
fn a_session_made_on_one_instance_serves_a_request_on_another() {
    let db = fixture_db();
    let a = Blitz::start(&db, &[]);
    let b = Blitz::start(&db, &[]);
    let (_, key) = a.session("test");
    let mut other = Conn::open(&b.tcp);
    let reply = other.call_with(
        json!(1),
        "api.add",
        json!({"a": 20, "b": 22}),
        json!({"session": key}),
    );
    assert_eq!(ok(&reply), 42);
}

fn max_connections() -> i64 {
    let mut c = cluster().connect("postgres");
    let value: String = c.query_one("SHOW max_connections", &[]).unwrap().get(0);
    value.parse().unwrap()
}

/// Client backends connected to `db` (the blitz instances' connections).
fn backends(db: &TestDb) -> i64 {
    let mut c = cluster().connect("postgres");
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
        &[&db.name],
    )
    .unwrap()
    .get(0)
}

#[test]
fn instances_together_never_exceed_the_connection_budget() {
    const BUDGET: i64 = 12;
    let db = fixture_db();
    let reserved = (max_connections() - BUDGET).to_string();
    let a = Blitz::start(
        &db,
        &[
            ("db.pool_size", "4"),
            ("db.reserved_connections", &reserved),
            ("db.acquire_timeout_ms", "10000"),
        ],
    );
    let b = Blitz::start(
        &db,
        &[
            ("db.pool_size", "8"),
            ("db.reserved_connections", &reserved),
            ("db.acquire_timeout_ms", "10000"),
        ],
    );
    let (mut to_a, _) = a.session("test");
    let (mut to_b, _) = b.session("test");
    let load = std::thread::spawn(move || {
        let naps = |n: usize| -> String {
            (0..n)
                .map(|i| line(&req(json!(i), "api.nap", json!({"ms": 300}))))
                .collect()
        };
        to_a.send(naps(8));
        to_b.send(naps(16));
        let mut replies = to_a.replies(8);
        replies.extend(to_b.replies(16));
        replies
    });
    let mut most = 0;
    while !load.is_finished() {
        most = most.max(backends(&db));
        std::thread::sleep(Duration::from_millis(10));
    }
    for reply in load.join().expect("the load thread") {
        assert_eq!(ok(&reply), 300);
    }
    assert!(
        most <= BUDGET,
        "{most} connections to the database; the budget is {BUDGET}"
    );
}

#[test]
fn no_share_of_the_budget_means_exit_2_naming_the_keys() {
    let db = fixture_db();
    let reserved = max_connections().to_string();
    let mut cmd = Command::new(server_bin());
    for set in [
        format!("server.listen={}", loopback()),
        format!("db.url={}", db.url),
        "auth.mode=trust".into(),
        "db.pool_size=1".into(),
        format!("db.reserved_connections={reserved}"),
    ] {
        cmd.arg("--set").arg(set);
    }
    let mut server = Server::spawn(cmd, String::new());
    let mut status = None;
    wait_until("blitz-server to refuse to start", 3, || {
        status = server.child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(2), "log:\n{}", server.log());
    wait_until("the refusal in the log", 1, || {
        let log = server.log();
        log.contains("max_connections") && log.contains("db.reserved_connections")
    });
}

// ---------------------------------------------------------------------------
// Configuration key names
// ---------------------------------------------------------------------------

#[test]
fn every_contract_config_key_is_accepted_by_its_name() {
    let db = fixture_db();
    let keys = [
        ("server.router_threads", "2"),
        ("server.max_clients", "50"),
        ("server.max_message_bytes", "65536"),
        ("server.idle_timeout_s", "60"),
        ("server.max_in_flight_per_connection", "8"),
        ("server.drain_timeout_s", "5"),
        ("invocation.workers", "3"),
        ("invocation.queue_capacity", "100"),
        ("invocation.default_timeout_ms", "10000"),
        ("invocation.max_retries", "2"),
        ("invocation.idempotency_ttl_s", "3600"),
        ("db.pool_size", "3"),
        ("db.effective_spindles", "1"),
        ("db.acquire_timeout_ms", "2000"),
        ("db.connect_timeout_s", "3"),
        ("db.api_schema", "blitz_api"),
        ("db.reserved_connections", "3"),
        ("auth.mode", "trust"),
        ("auth.session_idle_timeout_s", "300"),
        ("auth.session_max_lifetime_s", "3600"),
        ("auth.set_role", "false"),
    ];
    let with = Listeners {
        http: true,
        metrics: true,
    };
    let blitz = Blitz::launch(&db, &keys, with);
    let (mut conn, _) = blitz.session("test");
    assert_eq!(
        ok(&conn.call(json!(1), "api.add", json!({"a": 1, "b": 2}))),
        3
    );
    let response = post_once(
        blitz.http_addr(),
        &req(json!(2), "sys.ping", json!({})),
        &[],
    );
    assert_eq!(response.status, 200, "{response:?}");
    let live = Http::open(blitz.metrics_addr()).get("/health/live");
    assert_eq!(live.status, 200, "{live:?}");
}

#[test]
fn a_bad_value_is_refused_at_start_naming_the_key_and_the_value() {
    let db = fixture_db();
    let mut cmd = Command::new(server_bin());
    for set in [
        format!("server.listen={}", loopback()),
        format!("db.url={}", db.url),
        "auth.mode=trust".into(),
        "invocation.queue_capacity=plenty".into(),
    ] {
        cmd.arg("--set").arg(set);
    }
    let mut server = Server::spawn(cmd, String::new());
    let mut status = None;
    wait_until("blitz-server to refuse the value", 1, || {
        status = server.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(!status.unwrap().success(), "log:\n{}", server.log());
    wait_until("a message naming the key and the value", 1, || {
        let log = server.log();
        log.contains("invocation.queue_capacity") && log.contains("plenty")
    });
}

#[test]
fn keys_set_by_environment_and_config_file_take_effect() {
    let db = fixture_db();
    let file = std::env::temp_dir().join(format!(
        "blitz-contract-{}-{}.toml",
        std::process::id(),
        db.name
    ));
    std::fs::write(&file, "[server]\nmax_clients = 1\n").unwrap();
    let tcp = loopback();
    let mut cmd = Command::new(server_bin());
    cmd.arg("--config").arg(&file);
    for set in [
        format!("server.listen={tcp}"),
        format!("db.url={}", db.url),
        "auth.mode=trust".into(),
    ] {
        cmd.arg("--set").arg(set);
    }
    cmd.env("BLITZ_SERVER_MAX_MESSAGE_BYTES", "1024");
    let mut blitz = Blitz {
        server: Server::spawn(cmd, tcp.clone()),
        tcp: tcp.clone(),
        http: None,
        metrics: None,
    };
    blitz.wait_listening(&tcp, &[]);
    let mut conn = admitted(&tcp);
    conn.send(line(&req(
        json!(1),
        "sys.ping",
        json!({"pad": "x".repeat(4096)}),
    )));
    let reply = conn.reply();
    let data = fatal(&reply, -32009, &["max_message_bytes"]);
    assert_eq!(
        data["max_message_bytes"], 1024,
        "from the environment: {reply}"
    );
    let mut second = Conn::open(&tcp);
    let reply = second.reply();
    let data = error(&reply, -32005, &["max_clients"]);
    assert_eq!(data["max_clients"], 1, "from the config file: {reply}");
    let _ = std::fs::remove_file(&file);
}

// ---------------------------------------------------------------------------
// Idempotency keys
// ---------------------------------------------------------------------------

fn keyed(id: Value, method: &str, params: Value, key: &str) -> String {
    req_with(id, method, params, json!({"idempotency_key": key}))
}

#[test]
fn a_repeated_idempotency_key_returns_the_first_outcome_and_runs_once() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut conn, _) = blitz.session("test");
    let call = |conn: &mut Conn, id: i64| {
        conn.send(line(&keyed(
            json!(id),
            "api.bump",
            json!({"tag": "a"}),
            "key-1",
        )));
        let reply = conn.reply();
        assert_eq!(reply["id"], id);
        ok(&reply).clone()
    };
    assert_eq!(call(&mut conn, 1), 1);
    assert_eq!(call(&mut conn, 2), 1, "the recorded outcome, not a new run");
    // The record is in the database: another connection of the same user.
    let (mut other, _) = blitz.session("test");
    assert_eq!(call(&mut other, 3), 1);
    assert_eq!(db.count_rows("public.calls"), 1, "the function ran once");
    // Without a key the call runs again.
    let reply = conn.call(json!(4), "api.bump", json!({"tag": "a"}));
    assert_eq!(ok(&reply), 2);
}

#[test]
fn an_idempotency_key_reused_with_other_params_or_method_gets_32011() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut conn, _) = blitz.session("test");
    conn.send(line(&keyed(
        json!(1),
        "api.bump",
        json!({"tag": "a"}),
        "key-2",
    )));
    assert_eq!(ok(&conn.reply()), 1);
    for (id, method, params) in [
        (2, "api.bump", json!({"tag": "b"})),
        (3, "api.echo", json!({"s": "a"})),
    ] {
        conn.send(line(&keyed(json!(id), method, params, "key-2")));
        let reply = conn.reply();
        assert_eq!(reply["id"], id);
        let data = fatal(&reply, -32011, &["idempotency_key"]);
        assert_eq!(data["idempotency_key"], "key-2", "{reply}");
    }
    assert_eq!(db.count_rows("public.calls"), 1);
}

#[test]
fn a_repeat_while_the_first_runs_waits_for_its_outcome() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut first, _) = blitz.session("test");
    let (mut second, _) = blitz.session("test");
    let gate = Gate::close(&db);
    let text = line(&keyed(
        json!(1),
        "api.bump",
        json!({"tag": "slow", "gated": true}),
        "key-3",
    ));
    first.send(&text);
    wait_until("the first call to run", 1, || at_gate(&db) == 1);
    second.send(&text);
    // The router has read the repeat once it answers a ping sent after it;
    // the first call is still held at the gate then.
    second.send(line(&req(json!("after"), "sys.ping", json!({}))));
    let early = second.reply();
    assert_eq!(
        early["id"], "after",
        "the repeat was answered while the first call was still running: {early}"
    );
    gate.open();
    let one = first.reply();
    let two = second.reply();
    assert_eq!(ok(&one), 1, "{one}");
    assert_eq!(
        ok(&two),
        1,
        "the repeat got the first call's outcome: {two}"
    );
    assert_eq!(db.count_rows("public.calls"), 1, "the function ran once");
    second.assert_quiet();
}

#[test]
fn a_function_error_is_recorded_and_returned_to_a_repeat_without_running() {
    // The recorded outcome is the result or the error: the
    // function raised once, and the repeat gets the same -32010.
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut conn, _) = blitz.session("test");
    for id in 1..=2 {
        conn.send(line(&keyed(
            json!(id),
            "api.fail",
            json!({"message": "m"}),
            "key-4",
        )));
        error(&conn.reply(), -32010, &["sqlstate"]);
    }
    assert_eq!(sequence_runs(&db, "public.fail_runs"), 1);
}

#[test]
fn the_same_key_from_another_user_is_another_call() {
    let db = fixture_db();
    let blitz = Blitz::start(&db, &[]);
    let (mut alice, _) = blitz.session("alice");
    let (mut bob, _) = blitz.session("bob");
    let text = line(&keyed(json!(1), "api.bump", json!({"tag": "a"}), "key-5"));
    alice.send(&text);
    assert_eq!(ok(&alice.reply()), 1);
    bob.send(&text);
    assert_eq!(ok(&bob.reply()), 2, "bob's call ran on its own");
    assert_eq!(db.count_rows("public.calls"), 2);
}
