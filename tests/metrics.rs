//! The metrics/health listener (`metrics.listen`) of a real server: the
//! `/metrics` exposition parsed by a strict OpenMetrics parser we did not
//! write (openmetrics-parser), its counters, gauges and histograms moving
//! with the calls; `/health/ready` following a database outage both ways.
//!
//! One test stops this process's PostgreSQL cluster, so the tests of this
//! binary take turns (`ONE_AT_A_TIME`).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use serde_json::json;
use support::{cluster, error_code, free_port, result, Rpc, Server, TestDb};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// One HTTP/1.1 request; returns the status, the head and the body.
fn http(addr: &str, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("a response, then the connection closed");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_string(), body.to_string())
}

fn get(addr: &str, path: &str) -> (u16, String, String) {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
}

fn scrape(addr: &str) -> Exposition {
    let (status, head, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text"),
        "{head}"
    );
    openmetrics_parser::openmetrics::parse_openmetrics(&body)
        .unwrap_or_else(|e| panic!("not valid OpenMetrics ({e:?}):\n{body}"))
}

fn family<'a>(
    exp: &'a Exposition,
    name: &str,
    kind: OpenMetricsType,
) -> &'a openmetrics_parser::MetricFamily<OpenMetricsType, OpenMetricsValue> {
    let f = exp
        .families
        .get(name)
        .unwrap_or_else(|| panic!("no family {name}"));
    assert_eq!(f.family_type, kind, "type of {name}");
    f
}

/// The sample of family `f` whose labels include `labels`.
fn with_labels<'f>(
    f: &'f openmetrics_parser::MetricFamily<OpenMetricsType, OpenMetricsValue>,
    labels: &[(&str, &str)],
) -> Option<&'f openmetrics_parser::Sample<OpenMetricsValue>> {
    f.iter_samples().find(|s| {
        let set = s.get_labelset().unwrap();
        labels
            .iter()
            .all(|(k, v)| set.get_label_value(k) == Some(*v))
    })
}

/// The value of counter `name` with exactly `labels` (0 when absent).
fn counter(exp: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    let f = family(exp, name, OpenMetricsType::Counter);
    with_labels(f, labels).map_or(0.0, |s| match &s.value {
        OpenMetricsValue::Counter(c) => c.value.as_f64(),
        other => panic!("{name}: not a counter value: {other:?}"),
    })
}

fn gauge(exp: &Exposition, name: &str) -> f64 {
    let f = family(exp, name, OpenMetricsType::Gauge);
    match &f.iter_samples().next().expect("one sample").value {
        OpenMetricsValue::Gauge(g) => g.as_f64(),
        other => panic!("{name}: not a gauge value: {other:?}"),
    }
}

/// The count of histogram `name` and its bucket bounds.
fn histogram(exp: &Exposition, name: &str) -> (u64, Vec<f64>) {
    let f = family(exp, name, OpenMetricsType::Histogram);
    match &f.iter_samples().next().expect("one sample").value {
        OpenMetricsValue::Histogram(h) => (
            h.count.expect("a count"),
            h.buckets.iter().map(|b| b.upper_bound).collect(),
        ),
        other => panic!("{name}: not a histogram: {other:?}"),
    }
}

/// The count of histogram `name`'s series with exactly `labels` (0 when absent).
fn histogram_count(exp: &Exposition, name: &str, labels: &[(&str, &str)]) -> u64 {
    let f = family(exp, name, OpenMetricsType::Histogram);
    with_labels(f, labels).map_or(0, |s| match &s.value {
        OpenMetricsValue::Histogram(h) => h.count.expect("a count"),
        other => panic!("{name}: not a histogram: {other:?}"),
    })
}

/// The values of label `label` over the samples of family `name`.
fn label_values(exp: &Exposition, name: &str, label: &str) -> Vec<String> {
    let f = exp
        .families
        .get(name)
        .unwrap_or_else(|| panic!("no family {name}"));
    let mut values: Vec<String> = f
        .iter_samples()
        .filter_map(|s| {
            s.get_labelset()
                .ok()?
                .get_label_value(label)
                .map(String::from)
        })
        .collect();
    values.dedup();
    values
}

fn start(db: &TestDb, extra: &[(&str, &str)]) -> (Server, String) {
    db.execute(
        "CREATE SCHEMA blitz_api; \
         CREATE FUNCTION blitz_api.add(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b'; \
         CREATE FUNCTION blitz_api.hold() RETURNS int LANGUAGE plpgsql \
           AS 'BEGIN PERFORM pg_advisory_xact_lock(42); RETURN 1; END'",
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut settings = vec![("metrics.listen", metrics.as_str())];
    settings.extend_from_slice(extra);
    let server = Server::start(&db.url, &settings);
    let line = format!("metrics and health on http://{metrics}/metrics");
    let start = Instant::now();
    while !server.log().contains(&line) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the start line names the metrics address:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, metrics)
}

#[test]
fn metrics_move_with_the_calls() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let db = TestDb::new();
    let (server, metrics) = start(
        &db,
        &[
            ("db.pool_size", "2"),
            ("invocation.workers", "1"),
            ("invocation.queue_capacity", "1"),
        ],
    );
    let before = scrape(&metrics);
    let ok_api = [("kind", "api"), ("outcome", "ok")];
    assert_eq!(counter(&before, "blitz_requests", &ok_api), 0.0);
    assert_eq!(gauge(&before, "blitz_queue_capacity"), 1.0);
    assert_eq!(gauge(&before, "blitz_workers"), 1.0);
    assert_eq!(gauge(&before, "blitz_pool_size"), 2.0);
    assert_eq!(gauge(&before, "blitz_pool_share"), 2.0);
    let (executed_before, buckets) = histogram(&before, "blitz_execution_seconds");
    assert_eq!(buckets.first(), Some(&0.0001), "{buckets:?}");
    assert!(buckets.contains(&30.0), "{buckets:?}");

    let mut rpc = Rpc::session(&server.addr);
    for i in 0..5 {
        assert_eq!(result(&rpc.call("api.add", json!({"a": i, "b": 1}))), i + 1);
    }
    let mut stranger = Rpc::connect(&server.addr);
    assert_eq!(error_code(&stranger.call("api.add", json!([1, 2]))), -32006);
    assert_eq!(error_code(&rpc.call("nope", json!({}))), -32601);
    // One call holds the worker (until the lock is released), one waits in
    // the queue of one, the third is refused.
    let mut locker = db.connect();
    locker.execute("SELECT pg_advisory_lock(42)", &[]).unwrap();
    let mut watcher = Rpc::session(&server.addr);
    rpc.send("api.hold", json!({}));
    watcher.wait_for_status("the call to run", |s| s["workers"]["busy"] == 1);
    rpc.send("api.hold", json!({}));
    rpc.send("api.hold", json!({}));
    let refused = rpc.read_reply().expect("the refusal, at once");
    assert_eq!(error_code(&refused), -32001, "{refused}");
    locker
        .execute("SELECT pg_advisory_unlock(42)", &[])
        .unwrap();
    let codes: Vec<i64> = (0..2)
        .map(|_| {
            let reply = rpc.read_reply().expect("a reply");
            reply["error"]["code"].as_i64().unwrap_or(0)
        })
        .collect();
    assert_eq!(codes, vec![0, 0]);

    let after = scrape(&metrics);
    assert_eq!(counter(&after, "blitz_requests", &ok_api), 7.0);
    let unauthenticated = [("kind", "api"), ("outcome", "-32006")];
    assert_eq!(counter(&after, "blitz_requests", &unauthenticated), 1.0);
    let unknown = [("kind", "other"), ("outcome", "-32601")];
    assert_eq!(counter(&after, "blitz_requests", &unknown), 1.0);
    let overloaded = [("kind", "api"), ("outcome", "-32001")];
    assert_eq!(counter(&after, "blitz_requests", &overloaded), 1.0);
    let queue_full = [("reason", "queue_full")];
    assert_eq!(counter(&after, "blitz_refusals", &queue_full), 1.0);
    let hold = |outcome| [("method", "api.hold"), ("outcome", outcome)];
    assert_eq!(counter(&after, "blitz_api_calls", &hold("overloaded")), 1.0);
    assert_eq!(counter(&after, "blitz_api_calls", &hold("ok")), 2.0);
    let add_ok = [("method", "api.add"), ("outcome", "ok")];
    assert_eq!(counter(&after, "blitz_api_calls", &add_ok), 5.0);
    assert_eq!(counter(&after, "blitz_sessions_created", &[]), 2.0);
    let (executed, _) = histogram(&after, "blitz_execution_seconds");
    assert_eq!(executed - executed_before, 9, "2 logins, 5 adds, 2 holds");
    let (waited, _) = histogram(&after, "blitz_queue_wait_seconds");
    let (end_to_end, _) = histogram(&after, "blitz_request_duration_seconds");
    assert_eq!((waited, end_to_end), (executed, executed));
    assert_eq!(counter(&after, "blitz_completed", &[]), executed as f64);
    assert!(gauge(&after, "blitz_connections_open") >= 2.0);
    assert_eq!(gauge(&after, "blitz_database_up"), 1.0);

    // sys.status reads the same counters.
    let status = rpc.call("sys.status", json!({}));
    let counters = &result(&status)["counters"];
    assert_eq!(counters["completed"], executed);
    assert_eq!(counters["rejected_overload"], 1);
    assert_eq!(counters["errors_by_code"]["-32006"], 1);
    assert_eq!(counters["sessions_created"], 2);
}

#[test]
fn api_calls_are_counted_by_method_and_outcome() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let db = TestDb::new();
    let (server, metrics) = start(&db, &[("invocation.workers", "2")]);
    let mut rpc = Rpc::session(&server.addr);
    for i in 0..3 {
        assert_eq!(result(&rpc.call("api.add", json!([i, 1]))), i + 1);
    }
    assert_eq!(error_code(&rpc.call("api.add", json!({"a": "x"}))), -32602);
    for name in ["api.nope", "api.nothing_here"] {
        assert_eq!(error_code(&rpc.call(name, json!({}))), -32601);
    }
    // api.hold waits for a lock this test holds: its deadline passes.
    let mut locker = db.connect();
    locker.execute("SELECT pg_advisory_lock(42)", &[]).unwrap();
    let id = rpc.send_with("api.hold", json!({}), json!({"timeout_ms": 200}));
    let reply = rpc.read_reply().expect("the deadline's reply");
    assert_eq!(
        (reply["id"].as_u64(), error_code(&reply)),
        (Some(id), -32002)
    );
    locker
        .execute("SELECT pg_advisory_unlock(42)", &[])
        .unwrap();

    let exp = scrape(&metrics);
    let calls = |method: &str, outcome: &str| {
        counter(
            &exp,
            "blitz_api_calls",
            &[("method", method), ("outcome", outcome)],
        )
    };
    assert_eq!(calls("api.add", "ok"), 3.0);
    assert_eq!(calls("api.add", "error"), 1.0);
    assert_eq!(calls("api.add", "timeout"), 0.0);
    assert_eq!(calls("api.hold", "timeout"), 1.0);
    assert_eq!(calls("(unknown)", "error"), 2.0);
    let mut methods = label_values(&exp, "blitz_api_calls", "method");
    methods.sort();
    assert_eq!(methods, ["(unknown)", "api.add", "api.hold"]);
    let duration = "blitz_api_call_duration_seconds";
    assert_eq!(histogram_count(&exp, duration, &[("method", "api.add")]), 4);
    assert_eq!(
        histogram_count(&exp, duration, &[("method", "api.hold")]),
        1
    );
    assert_eq!(
        histogram_count(&exp, duration, &[("method", "(unknown)")]),
        2
    );
    // Only api. calls have per-method series; sys.status is counted by kind.
    rpc.call("sys.status", json!({}));
    let exp = scrape(&metrics);
    let mut methods = label_values(&exp, "blitz_api_calls", "method");
    methods.sort();
    assert_eq!(methods, ["(unknown)", "api.add", "api.hold"]);
}

#[test]
fn the_listener_serves_liveness_and_refuses_what_it_does_not_serve() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let db = TestDb::new();
    let (_server, metrics) = start(&db, &[]);
    let (status, _, body) = get(&metrics, "/health/live");
    assert_eq!((status, body.trim()), (200, r#"{"live":true}"#));
    assert_eq!(get(&metrics, "/nowhere").0, 404);
    let (status, head, _) = http(
        &metrics,
        "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET"), "{head}");
    assert_eq!(http(&metrics, "GARBAGE\r\n\r\n").0, 400);
    // Still serving after the bad requests.
    assert_eq!(get(&metrics, "/health/ready").0, 200);
}

/// Polls `/health/ready` until its status is `want` (or panics after `within`).
fn wait_ready_status(addr: &str, want: u16, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let (status, _, body) = get(addr, "/health/ready");
        if status == want {
            return body;
        }
        assert!(
            start.elapsed() < within,
            "/health/ready stayed {status} ({body}) for {within:?}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readiness_follows_a_database_outage_both_ways() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let db = TestDb::new();
    let (server, metrics) = start(&db, &[("db.pool_size", "2")]);
    wait_ready_status(&metrics, 200, Duration::from_secs(10));
    let stopped = Instant::now();
    cluster().stop();
    let body = wait_ready_status(&metrics, 503, Duration::from_secs(10));
    let down_after = stopped.elapsed();
    let reason: serde_json::Value = serde_json::from_str(&body).expect("one line of JSON");
    assert_eq!(reason["ready"], false);
    assert!(
        reason["reason"].as_str().unwrap().contains("database"),
        "{reason}"
    );
    assert_eq!(body.lines().count(), 1, "{body:?}");
    assert_eq!(get(&metrics, "/health/live").0, 200, "alive all along");
    assert_eq!(gauge(&scrape(&metrics), "blitz_database_up"), 0.0);
    let started = Instant::now();
    cluster().start();
    wait_ready_status(&metrics, 200, Duration::from_secs(15));
    let up_after = started.elapsed();
    let mut rpc = Rpc::session(&server.addr);
    assert_eq!(result(&rpc.call("api.add", json!([2, 2]))), 4);
    eprintln!("readiness: 503 {down_after:?} after the stop, 200 {up_after:?} after the start");
}
