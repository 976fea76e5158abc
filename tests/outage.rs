//! PostgreSQL stopped in the middle of a load and started again: calls
//! during the outage get -32004 or -32002 within their deadline, and calls
//! succeed again after the restart without restarting blitz. This test
//! stops its process's cluster, so it lives in a test binary of its own.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{cluster, wait_until, Rpc, Server, TestDb};

const TIMEOUT_MS: u64 = 1500;

#[test]
fn a_database_restart_under_load_is_survived() {
    let db = TestDb::new();
    db.execute(
        "CREATE SCHEMA blitz_api; CREATE FUNCTION blitz_api.add(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b'",
    );
    let server = Server::start(
        &db.url,
        &[("db.pool_size", "4"), ("db.acquire_timeout_ms", "500")],
    );
    let running = Arc::new(AtomicBool::new(true));
    let outcomes = Arc::new(Mutex::new(Vec::<(Instant, i64, Duration)>::new()));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (addr, running, outcomes) =
                (server.addr.clone(), running.clone(), outcomes.clone());
            std::thread::spawn(move || {
                let mut rpc = Rpc::session(&addr);
                while running.load(Ordering::Acquire) {
                    let sent = Instant::now();
                    rpc.send_with(
                        "api.add",
                        json!({"a": 1, "b": 2}),
                        json!({"timeout_ms": TIMEOUT_MS}),
                    );
                    let reply = rpc.read_reply().expect("a reply for every call");
                    let code = reply["error"]["code"].as_i64().unwrap_or(0);
                    if code == 0 {
                        assert_eq!(reply["result"], 3);
                    }
                    outcomes.lock().unwrap().push((sent, code, sent.elapsed()));
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    // Each phase lasts until what it is for has happened.
    let count = |since: Instant, code: i64| {
        let outcomes = outcomes.lock().unwrap();
        outcomes
            .iter()
            .filter(|(sent, c, _)| *sent >= since && *c == code)
            .count()
    };
    let began = Instant::now();
    wait_until("calls to succeed before the outage", || {
        count(began, 0) >= 20
    });
    let stopped_at = Instant::now();
    cluster().stop();
    wait_until("a call to see the outage (-32004)", || {
        count(stopped_at, -32004) >= 3
    });
    cluster().start();
    let restarted_at = Instant::now();
    // Up to one call per pooled connection finds it broken after the
    // restart; then every call succeeds.
    wait_until("20 calls in a row to succeed after the restart", || {
        let outcomes = outcomes.lock().unwrap();
        let after: Vec<i64> = outcomes
            .iter()
            .filter(|(sent, _, _)| *sent > restarted_at)
            .map(|(_, code, _)| *code)
            .collect();
        after.len() >= 20 && after[after.len() - 20..].iter().all(|c| *c == 0)
    });
    let recovered_at = Instant::now();
    wait_until("more calls after the recovery", || {
        count(recovered_at, 0) >= 20
    });
    running.store(false, Ordering::Release);
    for c in clients {
        c.join().expect("client thread");
    }

    let outcomes = outcomes.lock().unwrap();
    let mut during = std::collections::HashMap::<i64, usize>::new();
    for (sent, code, took) in outcomes.iter() {
        assert!(
            *took <= Duration::from_millis(TIMEOUT_MS + 700),
            "a call waited {took:?}, past its {TIMEOUT_MS} ms deadline (code {code})"
        );
        assert!(
            [0, -32004, -32002].contains(code),
            "unexpected outcome {code}"
        );
        if *sent > stopped_at && *sent < restarted_at {
            *during.entry(*code).or_default() += 1;
        }
    }
    assert!(
        during.get(&-32004).copied().unwrap_or(0) > 0,
        "the outage was seen: {during:?}"
    );
    let late: Vec<i64> = outcomes
        .iter()
        .filter(|(sent, _, _)| *sent > recovered_at)
        .map(|(_, code, _)| *code)
        .collect();
    assert!(
        !late.is_empty() && late.iter().all(|c| *c == 0),
        "calls succeed once recovered: {late:?}"
    );
    let failed_after_restart = outcomes
        .iter()
        .filter(|(sent, code, _)| *sent > restarted_at && *code != 0)
        .count();
    let log = server.log();
    let outage_lines = log
        .lines()
        .filter(|l| l.contains("database unavailable"))
        .count();
    assert!(
        (1..=2).contains(&outage_lines),
        "one log line per outage, saw {outage_lines}:\n{log}"
    );
    assert!(log.contains("database available again"), "{log}");
    eprintln!(
        "outage: {} calls in all; during the outage ({:?}): {during:?}; {failed_after_restart} failed after the restart, recovered after {:?}; {} successful calls after that",
        outcomes.len(),
        restarted_at - stopped_at,
        recovered_at - restarted_at,
        late.len()
    );
}
