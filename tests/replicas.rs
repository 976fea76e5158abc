//! Read replicas against real hot standbys (`pg_basebackup -R` of the
//! test cluster, one per test): `api.` calls of STABLE and IMMUTABLE
//! functions run on the standby, VOLATILE, keyed and pinned ones on the
//! primary; a STABLE function that writes is retried on the primary; a
//! session reads its own writes; a lagging standby is skipped and comes
//! back; a stopped standby costs no call; the standby's pool stays within
//! its share.
//!
//! Which server ran a call is the call's own answer: the fixtures return
//! `pg_is_in_recovery()` (true only on a standby).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use support::{cluster, result, Cluster, Rpc, Server, TestDb};

/// The functions the tests call. The database commits synchronously (the
/// test cluster does not), so a commit reaches the standby at once.
const FIXTURES: &str = "
    CREATE SCHEMA blitz_api;
    CREATE TABLE public.notes (id serial PRIMARY KEY, body text NOT NULL);
    CREATE SEQUENCE public.counter;
    CREATE FUNCTION blitz_api.where_stable() RETURNS boolean STABLE LANGUAGE sql
        AS 'SELECT pg_is_in_recovery()';
    CREATE FUNCTION blitz_api.where_immutable() RETURNS boolean IMMUTABLE LANGUAGE plpgsql
        AS 'BEGIN RETURN pg_is_in_recovery(); END';
    CREATE FUNCTION blitz_api.where_volatile() RETURNS boolean LANGUAGE sql
        AS 'SELECT pg_is_in_recovery()';
    CREATE FUNCTION blitz_api.where_pinned() RETURNS boolean STABLE LANGUAGE sql
        AS 'SELECT pg_is_in_recovery()';
    COMMENT ON FUNCTION blitz_api.where_pinned() IS E'Reads what must be current.\n@blitz primary';
    CREATE FUNCTION blitz_api.add_note(body text) RETURNS int LANGUAGE sql
        AS 'INSERT INTO public.notes (body) VALUES (body) RETURNING id';
    CREATE FUNCTION blitz_api.seen(note int) RETURNS json STABLE LANGUAGE sql
        AS 'SELECT json_build_object(''seen'', EXISTS (SELECT 1 FROM public.notes n WHERE n.id = note),
                                     ''standby'', pg_is_in_recovery())';
    CREATE FUNCTION blitz_api.read_only_default() RETURNS text STABLE LANGUAGE sql
        AS 'SELECT current_setting(''default_transaction_read_only'')';
    CREATE FUNCTION blitz_api.next_count() RETURNS bigint STABLE LANGUAGE sql
        AS 'SELECT nextval(''public.counter'')';
";

/// A fresh database with the fixtures, a standby of the cluster, and a
/// server on both (`settings` added), once the standby serves reads.
fn setup(settings: &[(&str, &str)]) -> (TestDb, Cluster, Server) {
    let db = TestDb::new();
    db.execute(FIXTURES);
    db.execute(&format!(
        "ALTER DATABASE {} SET synchronous_commit = on",
        db.name
    ));
    let standby = cluster().standby();
    let url = standby.url(&db.name);
    let mut all = vec![("db.replica_urls", url.as_str())];
    all.extend_from_slice(settings);
    let server = Server::start(&db.url, &all);
    let mut rpc = Rpc::session(&server.addr);
    let up = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rpc.wait_for_status("the standby up", |s| replica(s)["state"] == "up")
    }));
    if let Err(e) = up {
        eprintln!("the server's log:\n{}", server.log());
        std::panic::resume_unwind(e);
    }
    (db, standby, server)
}

/// The first replica of a `sys.status`.
fn replica(status: &Value) -> &Value {
    &status["replicas"][0]
}

/// A session whose catalogue is loaded (the first call of a server runs
/// on the primary, which loads it) and whose login the standby has
/// replayed (a read waits at most 100 ms for that, then runs on the
/// primary: on a loaded machine the first may).
fn warm_session(addr: &str) -> Rpc {
    let mut rpc = Rpc::session(addr);
    result(&rpc.call("api.where_volatile", json!({})));
    support::wait_until("a read of the session on the standby", || {
        on_standby(&mut rpc, "api.where_stable")
    });
    rpc
}

/// Whether a call of `method` ran on the standby (its answer).
fn on_standby(rpc: &mut Rpc, method: &str) -> bool {
    result(&rpc.call(method, json!({})))
        .as_bool()
        .unwrap_or_else(|| panic!("{method} answers a boolean"))
}

fn status(rpc: &mut Rpc) -> Value {
    result(&rpc.call("sys.status", json!({}))).clone()
}

/// `GET /metrics` of the listener at `addr`, checked as OpenMetrics.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (_, body) = response.split_once("\r\n\r\n").expect("a head");
    openmetrics_parser::openmetrics::parse_openmetrics(body)
        .unwrap_or_else(|e| panic!("not valid OpenMetrics ({e:?}):\n{body}"));
    body.to_string()
}

/// The value of the sample line starting with `series` (name and labels).
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{body}"))
}

#[test]
fn stable_and_immutable_calls_run_on_the_standby_the_rest_on_the_primary() {
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let (db, standby, server) = setup(&[("metrics.listen", &metrics)]);
    let mut rpc = warm_session(&server.addr);
    let before = replica(&status(&mut rpc))["calls"].as_u64().unwrap();
    for _ in 0..100 {
        assert!(
            on_standby(&mut rpc, "api.where_stable"),
            "STABLE on the standby"
        );
    }
    assert!(on_standby(&mut rpc, "api.where_immutable"), "IMMUTABLE too");
    let read_only = rpc.call("api.read_only_default", json!({}));
    assert_eq!(
        result(&read_only),
        "on",
        "standby connections are read-only"
    );
    let on_the_standby = replica(&status(&mut rpc))["calls"].as_u64().unwrap() - before;
    assert_eq!(on_the_standby, 102, "every read so far on the standby");
    // From here the session writes: its reads could wait for the standby.
    assert!(
        !on_standby(&mut rpc, "api.where_volatile"),
        "VOLATILE on the primary"
    );
    assert!(
        !on_standby(&mut rpc, "api.where_pinned"),
        "pinned on the primary"
    );
    let id = rpc.send_with(
        "api.where_stable",
        json!({}),
        json!({"idempotency_key": "k-1"}),
    );
    let keyed = rpc.read_reply().unwrap();
    assert_eq!(keyed["id"], id);
    assert_eq!(result(&keyed), false, "a keyed call on the primary");
    let after = status(&mut rpc);
    let primary = after["db_calls"]["primary"].as_u64().unwrap();
    assert!(primary >= 4, "{after}");
    let name = format!("127.0.0.1:{}/{}", standby.port, db.name);
    assert_eq!(replica(&after)["name"], name.as_str());
    let body = scrape(&metrics);
    let on_standby = sample(&body, &format!("blitz_db_calls_total{{target=\"{name}\"}}"));
    assert!(on_standby >= 102.0, "{body}");
    assert!(sample(&body, "blitz_db_calls_total{target=\"primary\"}") >= 4.0);
    assert_eq!(
        sample(&body, &format!("blitz_db_replica_up{{replica=\"{name}\"}}")),
        1.0
    );
    assert!(
        body.contains("blitz_db_replica_lag_seconds{replica="),
        "{body}"
    );
}

#[test]
fn a_promoted_standby_leaves_read_routing() {
    let (_db, standby, server) = setup(&[]);
    let mut rpc = warm_session(&server.addr);
    standby.promote();
    rpc.wait_for_status("the standby seen promoted", |s| {
        replica(s)["state"] == "promoted"
    });
    for _ in 0..20 {
        let reply = rpc.call("api.where_stable", json!({}));
        assert_eq!(result(&reply), false, "on the primary");
    }
    let log = server.log();
    assert_eq!(
        log.matches("was promoted").count(),
        1,
        "logged once:\n{log}"
    );
}

#[test]
fn the_session_check_and_set_role_work_on_the_standby() {
    let db = TestDb::new();
    db.execute(FIXTURES);
    db.execute(
        "DO $$ BEGIN CREATE ROLE test; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
                GRANT USAGE ON SCHEMA blitz_api TO test;",
    );
    let standby = cluster().standby();
    let url = standby.url(&db.name);
    let server = Server::start(
        &db.url,
        &[("db.replica_urls", &url), ("auth.set_role", "true")],
    );
    let mut rpc = Rpc::session(&server.addr);
    rpc.wait_for_status("the standby up", |s| replica(s)["state"] == "up");
    let mut rpc = warm_session(&server.addr);
    let reply = rpc.call("api.where_stable", json!({}));
    assert_eq!(result(&reply), true);
    // A dead session is refused on the standby path as on the primary's.
    let mut stranger = Rpc::connect(&server.addr);
    let id = stranger.send_with(
        "api.where_stable",
        json!({}),
        json!({"session": "no-such-session"}),
    );
    let refused = stranger.read_reply().unwrap();
    assert_eq!(refused["id"], id);
    assert_eq!(support::error_code(&refused), -32006, "{refused}");
}

/// A STABLE function that writes (`nextval`) fails on the standby with
/// 25006 and is run again on the primary, whose answer is the caller's:
/// it succeeds there, as it would without standbys.
#[test]
fn a_stable_function_that_writes_is_retried_on_the_primary() {
    let (db, _standby, server) = setup(&[]);
    let mut rpc = warm_session(&server.addr);
    let before = replica(&status(&mut rpc))["calls"].as_u64().unwrap();
    for n in 1..=5 {
        assert_eq!(result(&rpc.call("api.next_count", json!({}))), n);
    }
    let last: i64 = db
        .connect()
        .query_one("SELECT last_value FROM public.counter", &[])
        .unwrap()
        .get(0);
    assert_eq!(last, 5, "each call ran once, on the primary");
    let after = replica(&status(&mut rpc))["calls"].as_u64().unwrap();
    assert_eq!(after, before, "none was answered by the standby");
}

#[test]
fn a_session_reads_its_own_writes_1000_of_1000() {
    let (_db, _standby, server) = setup(&[]);
    let mut rpc = warm_session(&server.addr);
    // The request line and its "\n" go out as two writes: without
    // TCP_NODELAY the second waits for a delayed ACK (40 ms a call).
    rpc.stream.set_nodelay(true).unwrap();
    let mut on_the_standby = 0;
    let started = std::time::Instant::now();
    for i in 0..1000 {
        let id = result(&rpc.call("api.add_note", json!({"body": format!("n{i}")}))).clone();
        let seen = result(&rpc.call("api.seen", json!({ "note": id }))).clone();
        assert_eq!(
            seen["seen"], true,
            "pair {i}: the read missed its write: {seen}"
        );
        on_the_standby += u32::from(seen["standby"] == true);
    }
    println!(
        "read-your-writes: 1000 of 1000 pairs saw their write in {:.1} s, {on_the_standby} reads on the standby",
        started.elapsed().as_secs_f64()
    );
    assert!(on_the_standby > 0, "the reads did use the standby");
}

#[test]
fn a_lagging_standby_is_skipped_until_it_catches_up() {
    let (db, standby, server) = setup(&[("db.replica_max_lag_ms", "300")]);
    let mut rpc = warm_session(&server.addr);
    let mut on_standby_db = standby.connect(&db.name);
    on_standby_db
        .batch_execute("SELECT pg_wal_replay_pause()")
        .unwrap();
    let mut primary = db.connect();
    primary
        .batch_execute("INSERT INTO public.notes (body) VALUES ('behind')")
        .unwrap();
    let lagging = rpc.wait_for_status("the standby lagging", |s| replica(s)["state"] == "lagging");
    assert!(replica(&lagging)["lag_ms"].as_u64().unwrap() > 300);
    for _ in 0..20 {
        assert!(
            !on_standby(&mut rpc, "api.where_stable"),
            "skipped while lagging"
        );
    }
    on_standby_db
        .batch_execute("SELECT pg_wal_replay_resume()")
        .unwrap();
    rpc.wait_for_status("the standby up again", |s| replica(s)["state"] == "up");
    assert!(on_standby(&mut rpc, "api.where_stable"), "back in routing");
}

#[test]
fn a_stopped_standby_costs_no_call_and_comes_back() {
    let (_db, standby, server) = setup(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, answered, addr) = (stop.clone(), answered.clone(), server.addr.clone());
            thread::spawn(move || {
                let mut rpc = Rpc::session(&addr);
                while !stop.load(Ordering::Acquire) {
                    let reply = rpc.call("api.where_stable", json!({}));
                    assert!(reply.get("error").is_none(), "a call failed: {reply}");
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut rpc = warm_session(&server.addr);
    support::wait_until("calls running", || answered.load(Ordering::Relaxed) > 50);
    standby.kill();
    rpc.wait_for_status("the standby down", |s| replica(s)["state"] == "down");
    let during = answered.load(Ordering::Relaxed);
    support::wait_until("calls answered while it is down", || {
        answered.load(Ordering::Relaxed) > during + 50
    });
    assert!(
        !on_standby(&mut rpc, "api.where_stable"),
        "on the primary meanwhile"
    );
    standby.start();
    rpc.wait_for_status("the standby up again", |s| replica(s)["state"] == "up");
    support::wait_until("a call on the standby again", || {
        on_standby(&mut rpc, "api.where_stable")
    });
    stop.store(true, Ordering::Release);
    for c in clients {
        c.join().expect("no client saw a failed call");
    }
}

#[test]
fn the_standby_pool_stays_within_its_share() {
    let (_db, _standby, server) = setup(&[("db.pool_size", "3"), ("db.active_limit", "3")]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, addr) = (stop.clone(), server.addr.clone());
            thread::spawn(move || {
                let mut rpc = warm_session(&addr);
                while !stop.load(Ordering::Acquire) {
                    result(&rpc.call("api.where_stable", json!({})));
                }
            })
        })
        .collect();
    let mut rpc = Rpc::session(&server.addr);
    let mut samples = 0;
    let mut most = 0;
    while samples < 300 {
        let s = status(&mut rpc);
        let r = replica(&s);
        let (open, share) = (
            r["pool"]["open"].as_u64().unwrap(),
            r["share"].as_u64().unwrap(),
        );
        assert!(open <= share, "the standby pool above its share: {r}");
        assert_eq!(share, 3, "the share is the pool's cap here: {r}");
        most = most.max(open);
        samples += 1;
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Release);
    for c in clients {
        c.join().unwrap();
    }
    println!("standby pool: at most {most} open of a share of 3 over {samples} samples");
}

/// A standby whose pool cannot enlist its connections (here: the URL names
/// a database without blitz's registry) stays down, logged once, and its
/// reads run on the primary: the monitor's answer alone does not bring it
/// back.
#[test]
fn a_standby_whose_pool_cannot_connect_stays_down() {
    let db = TestDb::new();
    db.execute(FIXTURES);
    let standby = cluster().standby();
    let wrong = standby.url("postgres");
    let server = Server::start(&db.url, &[("db.replica_urls", &wrong)]);
    support::wait_until("the standby logged down", || {
        server.log().contains("is down")
    });
    let mut rpc = Rpc::session(&server.addr);
    result(&rpc.call("api.where_volatile", json!({})));
    for _ in 0..20 {
        assert!(!on_standby(&mut rpc, "api.where_stable"), "on the primary");
        thread::sleep(Duration::from_millis(20));
    }
    let s = status(&mut rpc);
    assert_eq!(replica(&s)["state"], "down", "{s}");
    let log = server.log();
    assert_eq!(log.matches("is down").count(), 1, "logged once:\n{log}");
    assert!(!log.contains("is up"), "{log}");
}
