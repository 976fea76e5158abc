//! The invocation pipeline end to end: real TCP clients, a real
//! `blitz-server` process and a real PostgreSQL. Overload, bad input,
//! retries, JSON-RPC compliance and shutdown.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{error_code, result, Rpc, Server, TestDb};

/// Test functions in blitz_api.
const FIXTURES: &str = r#"
CREATE SCHEMA blitz_api;
CREATE TABLE victims (id int PRIMARY KEY, name text);
INSERT INTO victims VALUES (1, 'still here');
CREATE SEQUENCE conflict_counter;
CREATE FUNCTION blitz_api.sleep_ms(ms int) RETURNS int LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_sleep(ms / 1000.0); RETURN ms; END $$;
CREATE FUNCTION blitz_api.add(a int, b int DEFAULT 0) RETURNS int LANGUAGE sql AS 'SELECT a + b';
CREATE FUNCTION blitz_api.rows(n int) RETURNS TABLE(i int, label text) LANGUAGE sql AS
  $$ SELECT g, E'line\nbreak ' || g FROM generate_series(1, n) AS g $$;
CREATE FUNCTION blitz_api.greet(name text) RETURNS text LANGUAGE sql AS $$ SELECT 'hello ' || name $$;
CREATE FUNCTION blitz_api.conflict_twice() RETURNS text LANGUAGE plpgsql AS $$
  BEGIN
    IF nextval('conflict_counter') <= 2 THEN
      RAISE EXCEPTION 'simulated serialization failure' USING ERRCODE = '40001';
    END IF;
    RETURN 'done';
  END $$;
CREATE FUNCTION blitz_api.always_conflict() RETURNS void LANGUAGE plpgsql AS $$
  BEGIN RAISE EXCEPTION 'always' USING ERRCODE = '40P01'; END $$;
CREATE FUNCTION blitz_api.fail(msg text) RETURNS void LANGUAGE plpgsql AS $$
  BEGIN RAISE EXCEPTION '%', msg USING ERRCODE = 'P0001'; END $$;
CREATE FUNCTION blitz_api.count_victims() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM victims';
CREATE FUNCTION blitz_api.backend_pid() RETURNS int LANGUAGE sql AS 'SELECT pg_backend_pid()';
CREATE FUNCTION blitz_api.hold() RETURNS int LANGUAGE plpgsql AS
  'BEGIN PERFORM pg_advisory_xact_lock(42); RETURN 1; END';
"#;

fn setup(settings: &[(&str, &str)]) -> (TestDb, Server) {
    Server::on_fresh_db(FIXTURES, settings)
}

/// 500 clients, one connection each, one call each, released together.
/// Returns every reply and the time until the last one arrived.
fn burst(addr: &str, clients: usize, hold_ms: u64, timeout_ms: u64) -> (Vec<Value>, Duration) {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let addr = addr.to_string();
            let barrier = barrier.clone();
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let mut rpc = Rpc::session(&addr);
                    barrier.wait();
                    rpc.send_with(
                        "api.sleep_ms",
                        json!({"ms": hold_ms}),
                        json!({"timeout_ms": timeout_ms}),
                    );
                    let reply = rpc.read_reply().expect("a reply, not end of file");
                    assert!(
                        rpc.poll_reply(Duration::from_millis(1)).is_none(),
                        "a second reply"
                    );
                    reply
                })
                .unwrap()
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let replies = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    (replies, start.elapsed())
}

#[test]
fn a_burst_of_500_beyond_the_queue_gets_results_and_clean_refusals() {
    // A fixed limit: jobs beyond it wait in the queue, not in a worker.
    let (_db, server) = setup(&[
        ("db.pool_size", "4"),
        ("db.active_limit", "4"),
        ("invocation.queue_capacity", "100"),
    ]);
    let (replies, took) = burst(&server.addr, 500, 200, 60_000);
    let ok = replies.iter().filter(|r| r.get("result").is_some()).count();
    let refused: Vec<_> = replies
        .iter()
        .filter(|r| r.get("error").is_some())
        .collect();
    for r in &refused {
        assert_eq!(error_code(r), -32001, "only overload refusals: {r}");
        assert!(
            r["error"]["data"]["retry_after_ms"].as_u64().unwrap() > 0,
            "{r}"
        );
        assert_eq!(r["error"]["data"]["retryable"], true);
        assert_eq!(r["error"]["data"]["queue_capacity"], 100);
    }
    assert_eq!(ok + refused.len(), 500);
    assert!(ok >= 104, "successes {ok} < queue capacity + active limit");
    // Each success held one of the 4 workers for 200 ms, and every reply
    // came within `took`: at most 4 × took / 200 ms successes, so the rest
    // of the 500 must have been refused, however fast the machine.
    let most_ok = 4 * (took.as_millis() / 200) as usize;
    assert!(
        !refused.is_empty() && refused.len() >= 500usize.saturating_sub(most_ok),
        "{} refusals, {ok} successes in {took:?} (at most {most_ok} fit)",
        refused.len()
    );
    eprintln!(
        "500-client burst, pool 4, queue 100: {ok} results, {} refusals, all answered in {took:?}",
        refused.len()
    );
}

#[test]
fn a_burst_of_500_within_the_queue_all_succeed_with_pool_size_backends() {
    let (db, server) = setup(&[("db.pool_size", "4"), ("invocation.queue_capacity", "1000")]);
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        let mut client = db.connect();
        std::thread::spawn(move || {
            let mut most = 0i64;
            while sampling.load(std::sync::atomic::Ordering::Acquire) {
                let row = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'blitz' AND state = 'active' AND datname = current_database()",
                        &[],
                    )
                    .unwrap();
                most = most.max(row.get::<_, i64>(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        })
    };
    let (replies, took) = burst(&server.addr, 500, 200, 120_000);
    sampling.store(false, std::sync::atomic::Ordering::Release);
    let most_busy = sampler.join().unwrap();
    for r in &replies {
        assert_eq!(result(r), &json!(200));
    }
    assert!(
        most_busy <= 4,
        "{most_busy} busy blitz backends seen, pool_size is 4"
    );
    assert!(most_busy >= 1, "the sampler never saw blitz at work");
    eprintln!("500-client burst, pool 4, queue 1000: 500 results in {took:?}, at most {most_busy} busy backends");
}

#[test]
fn a_result_of_many_rows_is_one_reply_line() {
    let (_db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    // json_agg puts a line break between the rows it aggregates.
    let reply = rpc.call("api.rows", json!({"n": 3}));
    assert_eq!(
        reply["result"],
        json!([
            {"i": 1, "label": "line\nbreak 1"},
            {"i": 2, "label": "line\nbreak 2"},
            {"i": 3, "label": "line\nbreak 3"},
        ])
    );
    assert_eq!(rpc.call("sys.ping", json!({}))["result"]["pong"], true);
}

#[test]
fn malformed_json_gets_a_parse_error_and_the_connection_stays() {
    let (_db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    rpc.send_line(r#"{"jsonrpc":"2.0","method":"sys.ping","id":1"#);
    let reply = rpc.read_reply().unwrap();
    assert_eq!(error_code(&reply), -32700);
    assert_eq!(reply["id"], Value::Null);
    assert_eq!(rpc.call("sys.ping", json!({}))["result"]["pong"], true);
}

#[test]
fn deeply_nested_json_is_refused_without_harm() {
    let (_db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    let depth = 100_000;
    rpc.send_line(&format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
    let reply = rpc.read_reply().unwrap();
    assert_eq!(
        error_code(&reply[0]),
        -32600,
        "a batch of one element that is no request: {reply}"
    );
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    rpc.send_line(&format!(
        r#"{{"jsonrpc":"2.0","method":"api.greet","params":{deep},"id":1}}"#
    ));
    let reply = rpc.read_reply().unwrap();
    assert_eq!(
        error_code(&reply),
        -32602,
        "nesting beyond serde_json's limit: {reply}"
    );
    let params = format!("{}1{}", "[".repeat(120), "]".repeat(120));
    rpc.send_line(&format!(
        r#"{{"jsonrpc":"2.0","method":"api.greet","params":{{"name":{params}}},"id":2}}"#
    ));
    assert_eq!(error_code(&rpc.read_reply().unwrap()), -32602);
    assert_eq!(rpc.call("sys.ping", json!({}))["result"]["pong"], true);
}

#[test]
fn json_that_is_not_a_request_is_an_invalid_request() {
    let (_db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    for line in [
        r#"42"#,
        r#"{"jsonrpc":"2.0","id":7}"#,
        r#"{"method":"sys.ping","id":8}"#,
        r#""text""#,
    ] {
        rpc.send_line(line);
        let reply = rpc.read_reply().unwrap();
        assert_eq!(error_code(&reply), -32600, "{line} → {reply}");
    }
}

#[test]
fn an_oversized_line_is_refused_and_the_connection_works_after() {
    let (_db, server) = setup(&[("server.max_message_bytes", "4096")]);
    let mut rpc = Rpc::session(&server.addr);
    let huge = format!(
        r#"{{"jsonrpc":"2.0","method":"api.greet","params":{{"name":"{}"}},"id":1}}"#,
        "x".repeat(100_000)
    );
    rpc.send_line(&huge);
    let reply = rpc.read_reply().unwrap();
    assert_eq!(error_code(&reply), -32009);
    assert_eq!(reply["error"]["data"]["max_message_bytes"], 4096);
    let reply = rpc.call("api.greet", json!({"name": "again"}));
    assert_eq!(result(&reply), "hello again");
}

#[test]
fn invalid_utf8_is_a_parse_error() {
    let (_db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    rpc.stream
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\xfe\",\"id\":1}\n")
        .unwrap();
    assert_eq!(error_code(&rpc.read_reply().unwrap()), -32700);
    assert_eq!(rpc.call("sys.ping", json!({}))["result"]["pong"], true);
}

#[test]
fn unknown_methods_and_functions_are_not_found() {
    let (_db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    assert_eq!(error_code(&rpc.call("no.such", json!({}))), -32601);
    let reply = rpc.call("api.no_such_function", json!({}));
    assert_eq!(error_code(&reply), -32601);
    assert_eq!(reply["error"]["data"]["method"], "api.no_such_function");
}

#[test]
fn a_function_created_while_running_becomes_callable() {
    let (db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    assert_eq!(result(&rpc.call("api.add", json!({"a": 1}))), 1);
    db.execute("CREATE FUNCTION blitz_api.late() RETURNS text LANGUAGE sql AS $$ SELECT 'new' $$");
    // The catalogue reloads at most once a second: -32601 until then.
    let mut reply = Value::Null;
    support::wait_until("api.late to become callable", || {
        reply = rpc.call("api.late", json!({}));
        reply["error"]["code"] != -32601
    });
    assert_eq!(result(&reply), "new");
}

#[test]
fn a_function_dropped_while_running_is_not_found() {
    let (db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    assert_eq!(
        result(&rpc.call("api.greet", json!({"name": "a"}))),
        "hello a"
    );
    db.execute("DROP FUNCTION blitz_api.greet(text)");
    let reply = rpc.call("api.greet", json!({"name": "b"}));
    assert_eq!(error_code(&reply), -32601, "{reply}");
    assert_eq!(reply["error"]["data"]["method"], "api.greet");
}

#[test]
fn missing_extra_and_ill_typed_params_name_the_param() {
    let (_db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    let cases = [
        (json!({}), "a"),
        (json!({"a": 1, "c": 2}), "c"),
        (json!({"a": "one"}), "a"),
        (json!({"a": 1.5}), "a"),
        (json!([1, 2, 3]), ""),
    ];
    for (params, param) in cases {
        let reply = rpc.call("api.add", params.clone());
        assert_eq!(error_code(&reply), -32602, "{params} → {reply}");
        if !param.is_empty() {
            assert_eq!(reply["error"]["data"]["param"], param, "{params} → {reply}");
        }
    }
    assert_eq!(result(&rpc.call("api.add", json!([2, 3]))), 5);
    assert_eq!(result(&rpc.call("api.add", json!({"a": 2, "b": 3}))), 5);
}

#[test]
fn sql_injection_attempts_do_no_harm() {
    let (db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    for method in [
        "api.greet(); DROP TABLE victims; --",
        "api.count_victims\"(); DROP TABLE victims; --",
        "api.pg_catalog.pg_sleep",
        "api.",
    ] {
        let reply = rpc.call(method, json!({"name": "x"}));
        assert_eq!(error_code(&reply), -32601, "{method} → {reply}");
    }
    let evil = "'); DROP TABLE victims; --";
    assert_eq!(
        result(&rpc.call("api.greet", json!({"name": evil}))),
        &json!(format!("hello {evil}"))
    );
    let reply = rpc.call("api.greet", json!({"name); DROP TABLE victims; --": "x"}));
    assert_eq!(error_code(&reply), -32602);
    assert_eq!(result(&rpc.call("api.count_victims", json!({}))), 1);
    assert_eq!(db.count_rows("victims"), 1);
}

#[test]
fn a_half_sent_line_is_cut_at_the_idle_timeout() {
    let (_db, server) = setup(&[("server.idle_timeout_s", "1")]);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .write_all(br#"{"jsonrpc":"2.0","method":"sys.pi"#)
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close the connection");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        start.elapsed()
    );
    // The server is still fine.
    assert_eq!(
        Rpc::session(&server.addr).call("sys.ping", json!({}))["result"]["pong"],
        true
    );
}

#[test]
fn an_idle_connection_with_work_in_flight_is_kept() {
    let (_db, server) = setup(&[("server.idle_timeout_s", "1")]);
    let mut rpc = Rpc::session(&server.addr);
    let reply = rpc.call("api.sleep_ms", json!({"ms": 2500}));
    assert_eq!(
        result(&reply),
        2500,
        "the reply came although the client was silent for 2.5 s"
    );
}

#[test]
fn a_client_that_vanishes_with_requests_queued_leaves_the_server_healthy() {
    let (_db, server) = setup(&[("db.pool_size", "2"), ("invocation.queue_capacity", "200")]);
    for _ in 0..5 {
        let mut rpc = Rpc::session(&server.addr);
        for _ in 0..20 {
            rpc.send("api.sleep_ms", json!({"ms": 20}));
        }
        drop(rpc); // gone without reading a reply
    }
    let mut rpc = Rpc::session(&server.addr);
    rpc.wait_for_status("the vanished clients' calls to be done", |s| {
        s["queue"]["depth"] == 0 && s["workers"]["busy"] == 0
    });
    assert_eq!(result(&rpc.call("api.add", json!({"a": 1, "b": 1}))), 2);
    let log = server.log();
    assert!(!log.contains("ERROR"), "error lines in the log:\n{log}");
    assert!(
        log.lines().filter(|l| l.contains("WARN")).count() <= 1,
        "a warning storm:\n{log}"
    );
}

#[test]
fn a_client_that_does_not_read_cannot_hold_the_workers() {
    let (db, server) = setup(&[("db.pool_size", "2")]);
    db.execute("CREATE FUNCTION blitz_api.big() RETURNS text LANGUAGE sql AS $$ SELECT repeat('x', 4000000) $$");
    let mut slow = Rpc::session(&server.addr);
    let mut watcher = Rpc::session(&server.addr);
    for _ in 0..4 {
        slow.send("api.big", json!({}));
    }
    watcher.wait_for_status("the workers to have taken the slow client's calls", |s| {
        s["queue"]["depth"] == 0
    });
    let start = Instant::now();
    let mut other = Rpc::session(&server.addr);
    assert_eq!(result(&other.call("api.add", json!({"a": 1}))), 1);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "waited {:?} behind a client that does not read",
        start.elapsed()
    );
    drop(slow);
}

#[test]
fn serialization_failures_are_retried_then_reported() {
    let (_db, server) = setup(&[("invocation.max_retries", "3")]);
    let mut rpc = Rpc::session(&server.addr);
    assert_eq!(result(&rpc.call("api.conflict_twice", json!({}))), "done");
    let status = rpc.call("sys.status", json!({}));
    assert!(
        result(&status)["counters"]["retries"].as_u64().unwrap() >= 2,
        "{status}"
    );
    let reply = rpc.call("api.always_conflict", json!({}));
    assert_eq!(error_code(&reply), -32008);
    assert_eq!(reply["error"]["data"]["attempts"], 4);
    assert_eq!(reply["error"]["data"]["retryable"], true);
}

#[test]
fn raised_exceptions_pass_on_sqlstate_and_message() {
    let (_db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    let reply = rpc.call("api.fail", json!({"msg": "no such image"}));
    assert_eq!(error_code(&reply), -32010);
    assert_eq!(reply["error"]["data"]["sqlstate"], "P0001");
    assert_eq!(reply["error"]["data"]["detail"], "no such image");
    assert_eq!(reply["error"]["data"]["retryable"], false);
}

#[test]
fn deadlines_bound_running_and_queued_calls() {
    let (db, server) = setup(&[("db.pool_size", "1")]);
    // Both log in first: with one worker, a login would queue behind the sleep.
    let mut running = Rpc::session(&server.addr);
    let mut queued = Rpc::session(&server.addr);
    let start = Instant::now();
    running.send_with(
        "api.sleep_ms",
        json!({"ms": 5000}),
        json!({"timeout_ms": 1000}),
    );
    db.wait_until_running("sleep_ms", 1);
    queued.send_with("api.add", json!({"a": 1}), json!({"timeout_ms": 100}));
    let reply = queued.read_reply().unwrap();
    assert_eq!(error_code(&reply), -32002, "{reply}");
    let reply = running.read_reply().unwrap();
    assert_eq!(error_code(&reply), -32002, "{reply}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    // The connection whose statement was cancelled is kept; calls go on.
    assert_eq!(result(&running.call("api.add", json!({"a": 4}))), 4);
}

#[test]
fn a_call_cancelled_at_its_deadline_leaves_its_connection_usable() {
    let (_db, server) = setup(&[("db.pool_size", "1")]);
    let mut rpc = Rpc::session(&server.addr);
    let backend = result(&rpc.call("api.backend_pid", json!({}))).clone();
    assert!(backend.is_i64(), "{backend}");
    for round in 0..3 {
        let id = rpc.send_with(
            "api.sleep_ms",
            json!({"ms": 10_000}),
            json!({"timeout_ms": 1000}),
        );
        let reply = rpc.read_reply().unwrap();
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(error_code(&reply), -32002, "round {round}: {reply}");
        // The one pooled connection is the same backend: no reconnect, and
        // the cancel did not reach the statements after it.
        assert_eq!(rpc.call("api.backend_pid", json!({}))["result"], backend);
        assert_eq!(result(&rpc.call("api.add", json!({"a": round}))), round);
    }
}

/// Holds the one worker on advisory lock 42 (taken on `locker`) with a
/// call of `api.hold` on `rpc`, then queues `queued` calls behind it.
fn hold_the_worker(locker: &mut postgres::Client, rpc: &mut Rpc, watcher: &mut Rpc, queued: u64) {
    locker.execute("SELECT pg_advisory_lock(42)", &[]).unwrap();
    rpc.send("api.hold", json!({}));
    watcher.wait_for_status("the hold to run", |s| s["workers"]["busy"] == 1);
    for _ in 0..queued {
        rpc.send("api.add", json!({"a": 1}));
    }
    watcher.wait_for_status("the calls to queue", |s| s["queue"]["depth"] == queued);
}

/// Lets the held worker go and reads the `n` replies still owed on `rpc`.
fn release_the_worker(locker: &mut postgres::Client, rpc: &mut Rpc, n: usize) -> Vec<Value> {
    locker
        .execute("SELECT pg_advisory_unlock(42)", &[])
        .unwrap();
    (0..n).map(|_| rpc.read_reply().expect("a reply")).collect()
}

#[test]
fn jobs_beyond_the_active_limit_wait_in_the_queue_not_in_a_worker() {
    // Four workers, one permit: the three calls behind the held one stay
    // queued (FIFO) instead of being taken by idle workers that would only
    // wait at the limiter's gate; once it is released they all run.
    let (db, server) = setup(&[
        ("db.pool_size", "4"),
        ("invocation.workers", "4"),
        ("db.active_limit", "1"),
    ]);
    let mut rpc = Rpc::session(&server.addr);
    let mut watcher = Rpc::session(&server.addr);
    let mut locker = db.connect();
    hold_the_worker(&mut locker, &mut rpc, &mut watcher, 3);
    let status = result(&watcher.call("sys.status", json!({}))).clone();
    assert_eq!(status["workers"]["busy"], 1, "{status}");
    assert_eq!(status["queue"]["depth"], 3, "{status}");
    let replies = release_the_worker(&mut locker, &mut rpc, 4);
    for reply in &replies {
        assert!(reply.get("result").is_some(), "{reply}");
    }
    watcher.wait_for_status("the workers to be idle", |s| {
        s["queue"]["depth"] == 0 && s["workers"]["busy"] == 0
    });
}

#[test]
fn a_deadline_shorter_than_the_estimated_queue_wait_is_refused_at_once() {
    // Admission estimates the wait as the queue depth over the workers'
    // recent pace. With one worker whose last four calls each ran at least
    // 100 ms (and two quick logins), that pace is at most 6 calls in
    // 0.4 s = 15/s, so two queued calls mean a wait of at least 133 ms:
    // far longer than a 10 ms deadline, however fast the machine.
    let (db, server) = setup(&[("db.pool_size", "1"), ("invocation.queue_capacity", "50")]);
    let mut rpc = Rpc::session(&server.addr);
    let mut watcher = Rpc::session(&server.addr);
    let mut locker = db.connect();
    let instance = result(&watcher.call("sys.status", json!({})))["instance"].clone();
    // The pace is trusted for 2 s after the last call finished: a machine
    // stalled that long between the warm-up and the request gets the
    // request admitted instead, and the round is run again.
    for round in 1.. {
        for _ in 0..4 {
            assert_eq!(result(&rpc.call("api.sleep_ms", json!({"ms": 100}))), 100);
        }
        hold_the_worker(&mut locker, &mut rpc, &mut watcher, 2);
        let before = result(&watcher.call("sys.status", json!({})))["counters"]
            ["rejected_overload"]
            .as_u64()
            .unwrap();
        let id = rpc.send_with("api.add", json!({"a": 2}), json!({"timeout_ms": 10}));
        let status = watcher.wait_for_status("the request to be refused or queued", |s| {
            s["counters"]["rejected_overload"].as_u64() > Some(before) || s["queue"]["depth"] == 3
        });
        if status["queue"]["depth"] == 3 {
            assert!(
                round < 5,
                "admitted in {round} rounds: the pace was never known"
            );
            release_the_worker(&mut locker, &mut rpc, 4);
            continue;
        }
        // Answered while the worker is still held: at once, not from the queue.
        let refused = rpc.read_reply().expect("the refusal");
        assert_eq!(refused["id"], id, "{refused}");
        assert_eq!(error_code(&refused), -32001, "{refused}");
        let data = &refused["error"]["data"];
        assert_eq!(
            data["reason"], "deadline shorter than the queue wait",
            "{refused}"
        );
        assert_eq!(data["retryable"], true, "{refused}");
        assert_eq!(data["queue_depth"], 2, "{refused}");
        assert_eq!(data["queue_capacity"], 50, "{refused}");
        assert_eq!(data["instance"], instance, "{refused}");
        // Half the estimated wait, which exceeds the 10 ms deadline.
        let retry_after = data["retry_after_ms"].as_u64().unwrap();
        assert!(retry_after >= 5, "{refused}");
        let rest = release_the_worker(&mut locker, &mut rpc, 3);
        let results: Vec<&Value> = rest.iter().map(result).collect();
        assert_eq!(results, [&json!(1), &json!(1), &json!(1)]);
        break;
    }
}

#[test]
fn one_connection_cannot_fill_the_queue() {
    let (_db, server) = setup(&[
        ("server.max_in_flight_per_connection", "2"),
        ("db.pool_size", "1"),
    ]);
    let mut rpc = Rpc::session(&server.addr);
    for _ in 0..6 {
        rpc.send("api.sleep_ms", json!({"ms": 100}));
    }
    let codes: Vec<i64> = (0..6)
        .map(|_| rpc.read_reply().unwrap())
        .map(|r| r["error"]["code"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(codes.iter().filter(|&&c| c == 0).count(), 2, "{codes:?}");
    assert_eq!(
        codes.iter().filter(|&&c| c == -32001).count(),
        4,
        "{codes:?}"
    );
}

#[test]
fn connections_beyond_max_clients_get_one_line_and_a_clean_close() {
    let (_db, server) = setup(&[("server.max_clients", "2")]);
    let mut a = Rpc::session(&server.addr);
    a.wait_for_status("the readiness probe's connection to be gone", |s| {
        s["connections"]["open"] == 1
    });
    let _b = Rpc::connect(&server.addr);
    a.wait_for_status("the second connection to count", |s| {
        s["connections"]["open"] == 2
    });
    let mut c = Rpc::connect(&server.addr);
    let reply = c.read_reply().expect("one line before the close");
    assert_eq!(error_code(&reply), -32005);
    assert_eq!(reply["error"]["data"]["max_clients"], 2);
    assert!(
        c.read_raw().is_none(),
        "then end of file (a clean FIN, not a reset)"
    );
}

#[test]
fn batches_follow_the_specification() {
    let (_db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    rpc.send_line(
        r#"[{"jsonrpc":"2.0","method":"api.add","params":{"a":1,"b":2},"id":"one"},
            {"jsonrpc":"2.0","method":"api.add","params":{"a":1}},
            {"foo":"bar"},
            {"jsonrpc":"2.0","method":"nope","id":3},
            1,
            {"jsonrpc":"2.0","method":"sys.ping","id":4}]"#
            .replace('\n', "")
            .as_str(),
    );
    let reply = rpc.read_reply().unwrap();
    let items = reply.as_array().expect("a batch reply is an array");
    assert_eq!(
        items.len(),
        5,
        "one reply per element except the notification: {reply}"
    );
    let by_id: HashMap<String, &Value> = items.iter().map(|r| (r["id"].to_string(), r)).collect();
    assert_eq!(by_id["\"one\""]["result"], 3);
    assert_eq!(by_id["3"]["error"]["code"], -32601);
    assert_eq!(by_id["4"]["result"]["pong"], true);
    let nulls = items.iter().filter(|r| r["id"].is_null()).count();
    assert_eq!(nulls, 2, "two invalid elements answered with id null");

    rpc.send_line("[]");
    let reply = rpc.read_reply().unwrap();
    assert!(
        reply.is_object(),
        "an empty batch gets one error object: {reply}"
    );
    assert_eq!(error_code(&reply), -32600);

    rpc.send_line(r#"[{"jsonrpc":"2.0","method":"api.add","params":[1]},{"jsonrpc":"2.0","method":"sys.ping"}]"#);
    rpc.send_line(r#"{"jsonrpc":"2.0","method":"sys.ping","id":"after"}"#);
    let reply = rpc.read_reply().unwrap();
    assert_eq!(
        reply["id"], "after",
        "a batch of notifications gets no reply at all"
    );
}

#[test]
fn ids_are_echoed_exactly() {
    let (_db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    for id in [
        "0",
        "-7",
        "12345678901234567890",
        "1.5",
        "\"\"",
        "\"é ✓\"",
        "\"a\\\"b\"",
        "null",
    ] {
        rpc.send_line(&format!(
            r#"{{"jsonrpc":"2.0","method":"api.add","params":[1],"id":{id}}}"#
        ));
        let raw = rpc.read_raw().unwrap();
        assert!(
            raw.contains(&format!(r#""id":{id}"#)),
            "id {id} echoed as {raw}"
        );
    }
}

#[test]
fn notifications_run_without_a_reply() {
    let (db, server) = setup(&[]);
    db.execute("CREATE TABLE marks (n int); CREATE FUNCTION blitz_api.mark() RETURNS void LANGUAGE sql AS 'INSERT INTO marks VALUES (1)'");
    let mut rpc = Rpc::session(&server.addr);
    rpc.send_line(r#"{"jsonrpc":"2.0","method":"api.mark"}"#);
    rpc.send_line(r#"{"jsonrpc":"2.0","method":"sys.ping","id":1}"#);
    assert_eq!(rpc.read_reply().unwrap()["id"], 1);
    let start = Instant::now(); // the notification runs on a worker, soon
    while db.count_rows("marks") == 0 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(db.count_rows("marks"), 1);
    assert!(
        rpc.poll_reply(Duration::from_millis(200)).is_none(),
        "no reply to a notification"
    );
}

#[test]
fn pipelined_requests_each_get_their_reply() {
    let (_db, server) = setup(&[]);
    let mut rpc = Rpc::session(&server.addr);
    let ids: Vec<u64> = (0..50)
        .map(|i| rpc.send("api.add", json!({"a": i, "b": 1})))
        .collect();
    let mut seen = HashMap::new();
    for _ in &ids {
        let r = rpc.read_reply().unwrap();
        seen.insert(r["id"].as_u64().unwrap(), result(&r).as_i64().unwrap());
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(seen[id], i as i64 + 1);
    }
}

#[test]
fn status_and_discover_describe_the_instance() {
    let (_db, server) = setup(&[("db.pool_size", "3"), ("invocation.queue_capacity", "77")]);
    let mut rpc = Rpc::session(&server.addr);
    rpc.call("api.add", json!({"a": 1}));
    let status = rpc.call("sys.status", json!({}));
    let s = result(&status);
    assert_eq!(s["queue"]["capacity"], 77);
    assert_eq!(s["pool"]["size"], 3);
    assert_eq!(s["workers"]["total"], 3);
    assert!(s["counters"]["completed"].as_u64().unwrap() >= 1);
    assert!(
        s["latency_ms_last_minute"]["execution"]["p99"].is_number(),
        "{s}"
    );
    let doc = rpc.call("rpc.discover", json!({}));
    let doc = result(&doc);
    assert!(doc["openrpc"].as_str().unwrap().starts_with("1."));
    let names: Vec<&str> = doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    for expected in [
        "sys.ping",
        "sys.status",
        "rpc.discover",
        "api.add",
        "api.sleep_ms",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[test]
fn sigterm_under_load_answers_every_request_and_exits_0() {
    let (_db, mut server) = setup(&[("db.pool_size", "2"), ("server.drain_timeout_s", "1")]);
    let all_sent = Arc::new(Barrier::new(41));
    let clients: Vec<_> = (0..40)
        .map(|_| {
            let addr = server.addr.clone();
            let all_sent = all_sent.clone();
            std::thread::spawn(move || {
                let mut rpc = Rpc::session(&addr);
                let sent: Vec<u64> = (0..5)
                    .map(|_| rpc.send("api.sleep_ms", json!({"ms": 50})))
                    .collect();
                all_sent.wait();
                let mut codes = Vec::new();
                for _ in &sent {
                    match rpc.read_reply() {
                        Some(r) => codes.push(r["error"]["code"].as_i64().unwrap_or(0)),
                        None => panic!("end of file before every reply: {codes:?}"),
                    }
                }
                codes
            })
        })
        .collect();
    all_sent.wait(); // 200 calls of 50 ms on 2 workers: 5 s of work, 1 s of drain
    let status = server.terminate();
    let mut outcomes: HashMap<i64, usize> = HashMap::new();
    for c in clients {
        for code in c.join().expect("every request got a reply") {
            *outcomes.entry(code).or_default() += 1;
        }
    }
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert_eq!(outcomes.values().sum::<usize>(), 200);
    for code in outcomes.keys() {
        assert!(
            [0, -32001, -32003].contains(code),
            "unexpected outcome {code}: {outcomes:?}"
        );
    }
    assert!(
        outcomes.get(&-32003).copied().unwrap_or(0) > 0,
        "the drain timeout refused the rest: {outcomes:?}"
    );
    eprintln!("SIGTERM under load: {outcomes:?}");
}
