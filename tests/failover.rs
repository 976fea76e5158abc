//! A failover under load: a primary of the test's own with a synchronous
//! standby, `db.url` naming both hosts with `target_session_attrs=read-write`,
//! 8 clients making keyed inserts; the primary is killed and the standby
//! promoted. Every call is acknowledged exactly once (each client retries
//! an unanswered call with the same idempotency key until it is answered),
//! the sessions made before work after, and the calls resume after the
//! promotion. The figures are printed; the only bound on time is generous.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use blitz::{Client, ClientOptions};
use serde_json::json;
use support::{result, start_own_cluster, wait_until, Rpc, Server};

const DB: &str = "failover";
const CLIENTS: usize = 8;

/// What one client did: the keys of its acknowledged calls with the time
/// of each acknowledgement, its failed attempts, and its session key.
struct Record {
    acked: Vec<(String, Instant)>,
    /// Attempts that failed: the client library's retries and this loop's.
    failed_attempts: u64,
    session_before: String,
    session_after: String,
}

/// A client inserting one row per call (the note is the call's key), each
/// call retried with its key until answered; it stops when `stop` is set,
/// after its call in flight is answered.
fn client(n: usize, addr: String, stop: Arc<AtomicBool>, acks: Arc<AtomicU64>) -> Record {
    let options = ClientOptions::default()
        .max_attempts(2)
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    let mut client = Client::connect_with(&[addr], options).expect("connect");
    client.login("test", None).expect("login");
    let session_before = client.session().unwrap().to_string();
    let mut record = Record {
        acked: Vec::new(),
        failed_attempts: 0,
        session_before,
        session_after: String::new(),
    };
    let mut i = 0;
    while !stop.load(Ordering::Acquire) {
        i += 1;
        let key = format!("c{n}-{i}");
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let timeout = Some(Duration::from_secs(10));
            match client.call_with_key("api.apply", json!({"note": key}), &key, timeout) {
                Ok(_) => {
                    record.failed_attempts += u64::from(client.last_attempts() - 1);
                    break;
                }
                Err(e) => {
                    record.failed_attempts += u64::from(client.last_attempts());
                    assert!(
                        Instant::now() < give_up,
                        "call {key} unanswered for 60 s: {e}"
                    );
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
        record.acked.push((key, Instant::now()));
        acks.fetch_add(1, Ordering::AcqRel);
    }
    record.session_after = client.session().unwrap_or_default().to_string();
    record
}

#[test]
fn a_promoted_synchronous_standby_takes_over_with_every_call_acknowledged_once() {
    let primary = start_own_cluster();
    let mut admin = primary.connect("postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE {DB}"))
        .unwrap();
    admin
        .batch_execute(&format!("ALTER DATABASE {DB} SET synchronous_commit = on"))
        .unwrap();
    primary
        .connect(DB)
        .batch_execute(
            "CREATE SCHEMA blitz_api;
             CREATE TABLE public.applied (id serial PRIMARY KEY, note text NOT NULL);
             CREATE FUNCTION blitz_api.apply(note text) RETURNS int LANGUAGE sql AS
               $$ INSERT INTO public.applied (note) VALUES (note) RETURNING id $$;",
        )
        .unwrap();
    let standby = primary.standby();
    // Made synchronous after the base backup, so that the promoted standby
    // (whose configuration files are its own) does not wait for a standby.
    admin
        .batch_execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    let mut watch = admin;
    wait_until("the standby is synchronous", || {
        watch
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
            == 1
    });
    drop(watch);
    let sync: String = primary
        .connect(DB)
        .query_one("SHOW synchronous_commit", &[])
        .unwrap()
        .get(0);
    assert_eq!(sync, "on");

    let url = format!(
        "postgresql://postgres@127.0.0.1:{},127.0.0.1:{}/{DB}?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let server = Server::start(&url, &[("db.connect_timeout_s", "2")]);
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (addr, stop, acks) = (server.addr.clone(), stop.clone(), acks.clone());
            thread::spawn(move || client(n, addr, stop, acks))
        })
        .collect();
    wait_until("300 calls before the failover", || {
        acks.load(Ordering::Acquire) >= 300
    });
    // A session made before the failover, to be joined after it.
    let earlier =
        result(&Rpc::connect(&server.addr).call("session.login", json!({"user": "test"})))
            ["session"]
            .as_str()
            .unwrap()
            .to_string();

    primary.kill();
    let killed_at = Instant::now();
    let acked_at_kill = acks.load(Ordering::Acquire);
    thread::sleep(Duration::from_millis(500));
    standby.promote();
    let promoted_at = Instant::now();
    let target = acks.load(Ordering::Acquire) + 1;
    let give_up = promoted_at + Duration::from_secs(30);
    while acks.load(Ordering::Acquire) < target {
        assert!(
            Instant::now() < give_up,
            "no call answered within 30 s of the promotion; server log:\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(5));
    }
    let resume = promoted_at.elapsed();
    let after_promotion = acks.load(Ordering::Acquire);
    wait_until("300 more calls after the promotion", || {
        acks.load(Ordering::Acquire) >= after_promotion + 300
    });
    stop.store(true, Ordering::Release);
    let records: Vec<Record> = clients.into_iter().map(|c| c.join().unwrap()).collect();

    // Every acknowledged call applied exactly once on the new primary, and
    // nothing applied that was not acknowledged.
    let acked: Vec<String> = records
        .iter()
        .flat_map(|r| r.acked.iter().map(|(k, _)| k.clone()))
        .collect();
    let mut db = standby.connect(DB);
    support::assert_applied_once(&mut db, &acked);
    let rows = acked.len();

    // Sessions kept: each client's own, and one joined afresh.
    for r in &records {
        assert_eq!(
            r.session_before, r.session_after,
            "a client's session changed"
        );
    }
    let mut joined = Rpc::connect(&server.addr);
    let reply = joined.call("session.join", json!({"session": earlier}));
    assert!(reply.get("result").is_some(), "{reply}");
    let reply = joined.call("api.apply", json!({"note": "after"}));
    assert!(reply.get("result").is_some(), "{reply}");

    let failed: u64 = records.iter().map(|r| r.failed_attempts).sum();
    let outage_acks = records
        .iter()
        .flat_map(|r| r.acked.iter())
        .filter(|(_, at)| *at > killed_at && *at < promoted_at)
        .count();
    println!(
        "failover: {} calls acknowledged, {rows} rows, none lost, none applied twice, none unacknowledged; \
         {acked_at_kill} before the kill, {outage_acks} between the kill and the promotion; \
         first call answered {:.0} ms after the promotion ({:.0} ms after the kill); \
         {failed} failed attempts retried with their keys",
        acked.len(),
        resume.as_secs_f64() * 1000.0,
        (resume + (promoted_at - killed_at)).as_secs_f64() * 1000.0
    );
    assert!(resume < Duration::from_secs(30));
}
