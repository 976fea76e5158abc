//! Scale-out against real servers and a real PostgreSQL with a small
//! `max_connections` (40): one connection budget shared by the instances
//! (sampled in pg_stat_activity while they run under load), the refusal of
//! an instance that does not fit, a killed instance's share coming back,
//! a frozen-then-killed instance whose clients retry by the same key (each
//! call applied once), `sys.instances` / `blitz instances`, and HAProxy in
//! front of two instances.
//!
//! The tests share the process's cluster (and its `max_connections`), so
//! they run one at a time.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::thread;
use std::time::{Duration, Instant};

use blitz::client::RetryBudget;
use blitz::{Client, ClientOptions};
use serde_json::{json, Value};
use support::{cluster, result, Rpc, Server, TestDb};

const MAX_CONNECTIONS: i64 = 40;
/// The heartbeat interval of the test instances.
const INTERVAL_MS: u64 = 300;
/// Their heartbeat timeout (5 intervals).
const TIMEOUT_MS: u64 = 1500;

/// One test at a time, on a cluster restarted with `max_connections = 40`.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    static RESTART: Once = Once::new();
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    RESTART.call_once(|| {
        let c = cluster();
        c.stop();
        c.start_with(&format!("-c max_connections={MAX_CONNECTIONS}"));
    });
    // The previous test's servers were killed: wait for their backends to go.
    let start = Instant::now();
    while blitz_backends(&mut cluster().connect("postgres"), None) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "backends of an earlier test stay"
        );
        thread::sleep(Duration::from_millis(20));
    }
    guard
}

/// A database whose `api.apply` appends a row (after `ms` milliseconds).
fn fixture_db() -> TestDb {
    let db = TestDb::new();
    db.execute(
        "CREATE SCHEMA blitz_api;
         CREATE TABLE public.applied (id serial PRIMARY KEY, note text NOT NULL);
         CREATE FUNCTION blitz_api.apply(note text, ms int DEFAULT 0) RETURNS int LANGUAGE plpgsql AS $$
           DECLARE r int;
           BEGIN IF ms > 0 THEN PERFORM pg_sleep(ms / 1000.0); END IF;
                 INSERT INTO public.applied (note) VALUES (note) RETURNING id INTO r; RETURN r; END $$;",
    );
    db
}

/// An instance with pool `pool` and the fast heartbeat, plus `extra` settings.
fn instance(db: &TestDb, pool: &str, extra: &[(&str, &str)]) -> Server {
    let interval = INTERVAL_MS.to_string();
    let timeout = TIMEOUT_MS.to_string();
    let mut settings = vec![
        ("db.pool_size", pool),
        ("db.heartbeat_interval_ms", interval.as_str()),
        ("db.heartbeat_timeout_ms", timeout.as_str()),
    ];
    settings.extend_from_slice(extra);
    Server::start(&db.url, &settings)
}

/// Connections from blitz instances in `db` (all databases when `None`).
fn blitz_backends(client: &mut postgres::Client, db: Option<&str>) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name IN ('blitz', 'blitz-housekeeping') \
             AND ($1::text IS NULL OR datname = $1)",
            &[&db],
        )
        .unwrap()
        .get(0)
}

fn status(addr: &str) -> Value {
    result(&Rpc::session(addr).call("sys.status", json!({}))).clone()
}

/// Polls `sys.status` of each of `addrs` until `ready` holds for the shares.
fn wait_shares(addrs: &[&str], ready: impl Fn(&[u64]) -> bool) -> Vec<u64> {
    let start = Instant::now();
    loop {
        let shares: Vec<u64> = addrs
            .iter()
            .map(|a| status(a)["cluster"]["registered_share"].as_u64().unwrap())
            .collect();
        if ready(&shares) {
            return shares;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "shares stay at {shares:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Samples the connections of `db`'s instances every 10 ms, and opens a
/// maintenance connection every 100 ms, until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(i64, u64, u64)>,
}

impl Sampler {
    fn start(db: &TestDb) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (name, url) = (db.name.clone(), db.url.clone());
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut client = cluster().connect(&name);
            let (mut max, mut maintenance, mut refused) = (0, 0, 0);
            let mut last_maintenance = Instant::now();
            while !flag.load(Ordering::Acquire) {
                max = max.max(blitz_backends(&mut client, Some(&name)));
                if last_maintenance.elapsed() >= Duration::from_millis(100) {
                    match postgres::Client::connect(&url, postgres::NoTls) {
                        Ok(c) => drop(c),
                        Err(e) => {
                            eprintln!("maintenance connection refused: {e}");
                            refused += 1
                        }
                    }
                    maintenance += 1;
                    last_maintenance = Instant::now();
                }
                thread::sleep(Duration::from_millis(10));
            }
            (max, maintenance, refused)
        });
        Sampler { stop, handle }
    }

    /// (most connections seen, maintenance connections tried, refused).
    fn finish(self) -> (i64, u64, u64) {
        self.stop.store(true, Ordering::Release);
        self.handle.join().unwrap()
    }
}

/// Clients calling `api.apply` in a loop until stopped; each records the
/// notes of its acknowledged calls and its failures.
struct Load {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<(Vec<String>, Vec<String>)>>,
}

impl Load {
    fn new() -> Load {
        Load {
            stop: Arc::new(AtomicBool::new(false)),
            calls: Arc::new(AtomicU64::new(0)),
            threads: Vec::new(),
        }
    }

    /// `n` clients with server list `servers`; a final error with a code in
    /// `allowed` counts as an answer, anything else as a failure.
    fn add(
        &mut self,
        n: usize,
        servers: &[&str],
        options: ClientOptions,
        ms: u32,
        allowed: &'static [i64],
    ) {
        for _ in 0..n {
            let servers: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
            let (stop, calls, options) = (self.stop.clone(), self.calls.clone(), options.clone());
            let number = self.threads.len();
            self.threads.push(thread::spawn(move || {
                let mut client = Client::connect_with(&servers, options).expect("connect");
                client.login("test", None).expect("login");
                let (mut acked, mut failed) = (Vec::new(), Vec::new());
                let mut i = 0;
                while !stop.load(Ordering::Acquire) {
                    i += 1;
                    let note = format!("c{number}-{i}");
                    match client.call("api.apply", json!({"note": note, "ms": ms})) {
                        Ok(_) => acked.push(note),
                        Err(e) if e.code().is_some_and(|c| allowed.contains(&c)) => {}
                        Err(e) => failed.push(format!("{note}: {e}")),
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                (acked, failed)
            }));
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Waits until the clients have made `n` calls in all (at most 20 s).
    fn wait_for_calls(&self, n: u64) {
        support::wait_until(&format!("{n} calls"), || self.calls() >= n);
    }

    /// Stops the clients; (acknowledged notes, failures).
    fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        let mut all = (Vec::new(), Vec::new());
        for t in self.threads {
            let (a, f) = t.join().unwrap();
            all.0.extend(a);
            all.1.extend(f);
        }
        all
    }
}

/// Every acknowledged note applied exactly once, and nothing else applied.
/// No call failed, and every acknowledged call was applied exactly once.
fn assert_none_failed_each_applied_once<F: std::fmt::Debug>(
    db: &TestDb,
    acked: &[String],
    failed: &[F],
) {
    assert!(
        failed.is_empty(),
        "{} failures, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_applied_once(db, acked);
}

fn assert_applied_once(db: &TestDb, acked: &[String]) {
    support::assert_applied_once(&mut db.connect(), acked);
}

fn wait_instances(addr: &str, n: usize) -> Vec<Value> {
    let start = Instant::now();
    let mut rpc = Rpc::session(addr);
    loop {
        let list = result(&rpc.call("sys.instances", json!({})))
            .as_array()
            .unwrap()
            .clone();
        if list.len() == n {
            return list;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{list:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn three_instances_never_hold_more_than_the_budget_under_load() {
    let _serial = serial();
    let db = fixture_db();
    let budget = MAX_CONNECTIONS - 3;
    let a = instance(&db, "20", &[]);
    let b = instance(&db, "20", &[]);
    // 37 − 2 housekeeping − 1 kept free for a joining instance's
    // housekeeping = 34 for two pools of 20: 17 and 17.
    assert_eq!(
        wait_shares(&[&a.addr, &b.addr], |s| s.iter().sum::<u64>() == 34),
        vec![17, 17]
    );
    let sampler = Sampler::start(&db);
    let mut load = Load::new();
    let answered: &[i64] = &[-32001];
    load.add(15, &[&a.addr], ClientOptions::default(), 3, answered);
    load.add(15, &[&b.addr], ClientOptions::default(), 3, answered);
    load.wait_for_calls(300);
    let c = instance(&db, "20", &[]); // joins under load
    load.add(15, &[&c.addr], ClientOptions::default(), 3, answered);
    let shares = wait_shares(&[&a.addr, &b.addr, &c.addr], |s| {
        s.iter().sum::<u64>() == 33
    });
    assert_eq!(shares, vec![11, 11, 11]);
    let at = load.calls();
    load.wait_for_calls(at + 600);
    let (acked, failed) = load.finish();
    let (max, maintenance, refused) = sampler.finish();
    eprintln!(
        "budget {budget}: at most {max} connections from the instances; {maintenance} maintenance connections, {refused} refused; {} calls acknowledged",
        acked.len()
    );
    assert!(max <= budget, "{max} connections > budget {budget}");
    assert!(
        maintenance > 5 && refused == 0,
        "{refused} of {maintenance} refused"
    );
    assert_none_failed_each_applied_once(&db, &acked, &failed);
}

#[test]
fn an_instance_that_does_not_fit_refuses_to_start_with_exit_2() {
    let _serial = serial();
    let db = fixture_db();
    // Budget 40 − 34 = 6: three instances of 1 pool + 1 housekeeping each.
    let reserved = [("db.reserved_connections", "34")];
    let servers: Vec<Server> = (0..3).map(|_| instance(&db, "20", &reserved)).collect();
    let listed = wait_instances(&servers[0].addr, 3);
    wait_shares(
        &[&servers[0].addr, &servers[1].addr, &servers[2].addr],
        |s| s == [1, 1, 1],
    );
    let mut cmd = Command::new(support::bin("blitz-server"));
    cmd.args(["--listen", &format!("127.0.0.1:{}", support::free_port())])
        .args(["--db-url", &db.url, "--pool-size", "20"])
        .args([
            "--set",
            "auth.mode=trust",
            "--set",
            "db.reserved_connections=34",
        ]);
    let (code, _, stderr) = support::run(cmd);
    assert_eq!(code, 2, "{stderr}");
    for needle in [
        "max_connections 40",
        "db.reserved_connections 34",
        "= 6 connections",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    for instance in &listed {
        let id = instance["id"].as_str().unwrap();
        assert!(stderr.contains(id), "{id}: {stderr}");
    }
    eprintln!("{}", stderr.trim());
}

#[test]
fn a_killed_instance_s_share_returns_within_two_heartbeat_intervals() {
    let _serial = serial();
    let db = fixture_db();
    let a = instance(&db, "20", &[]);
    let mut b = instance(&db, "20", &[]);
    wait_shares(&[&a.addr, &b.addr], |s| s == [17, 17]);
    // B holds some connections when it dies.
    let mut load = Load::new();
    load.add(
        6,
        &[&b.addr],
        ClientOptions::default().max_attempts(1),
        5,
        &[],
    );
    load.wait_for_calls(50);
    let sampler = Sampler::start(&db);
    let mut pg = db.connect();
    let before = blitz_backends(&mut pg, Some(&db.name));
    b.child.kill().unwrap();
    let killed = Instant::now();
    b.child.wait().unwrap();
    let mut gone = None;
    let start = Instant::now();
    let mut rpc = Rpc::session(&a.addr);
    let back = loop {
        let status = result(&rpc.call("sys.status", json!({}))).clone();
        let a_only = blitz_backends(&mut pg, Some(&db.name)) <= 21;
        if a_only && gone.is_none() {
            gone = Some(killed.elapsed());
        }
        if status["cluster"]["share"] == 20 {
            break killed.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{status}");
        thread::sleep(Duration::from_millis(5));
    };
    let _ = load.finish();
    let (max, _, refused) = sampler.finish();
    let bound = Duration::from_millis(2 * INTERVAL_MS);
    eprintln!(
        "SIGKILL: {before} backends before; the killed instance's backends gone from pg_stat_activity after {:?}; its share back with the other after {back:?} (stated bound 2 × heartbeat interval = {bound:?}); at most {max} connections",
        gone.unwrap_or(back)
    );
    assert!(max <= MAX_CONNECTIONS - 3 && refused == 0);
    // The bound, with room for a slow machine (the figure is printed above).
    assert!(back < bound + Duration::from_secs(3), "{back:?}");
}

#[test]
fn a_frozen_then_killed_instance_s_calls_are_each_applied_once() {
    let _serial = serial();
    let db = fixture_db();
    let mut a = instance(&db, "10", &[]);
    let b = instance(&db, "10", &[]);
    wait_instances(&b.addr, 2);
    let sampler = Sampler::start(&db);
    // Every client starts on A and falls back to B; every call has a key.
    let options = ClientOptions::default()
        .spread(false)
        .max_attempts(5)
        .retry_budget(RetryBudget::new(1000.0, 0.1)); // shared by the 16 clients
    let mut load = Load::new();
    load.add(16, &[&a.addr, &b.addr], options, 2, &[]);
    load.wait_for_calls(400);
    let pid = a.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let frozen_at = load.calls();
    let frozen = Instant::now();
    let list = wait_instances(&b.addr, 1); // B finds A dead and takes its share
    let removed = frozen.elapsed();
    wait_shares(&[&b.addr], |s| s == [10]);
    let share_back = frozen.elapsed();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed_at = load.calls();
    load.wait_for_calls(killed_at + 400);
    let (acked, failed) = load.finish();
    let (max, _, refused) = sampler.finish();
    let rows = db.count_rows("public.applied");
    eprintln!(
        "SIGSTOP at {frozen_at} calls; A removed after {removed:?}, its share with B after {share_back:?} (stated bound: heartbeat timeout + 1 interval = {:?}; {} left: {}); SIGKILL at {killed_at}; {} calls acknowledged, {rows} rows; at most {max} connections",
        Duration::from_millis(TIMEOUT_MS + INTERVAL_MS),
        list.len(),
        list[0]["id"],
        acked.len()
    );
    assert_none_failed_each_applied_once(&db, &acked, &failed);
    assert_eq!(rows, acked.len() as i64, "one row per acknowledged call");
    assert!(max <= MAX_CONNECTIONS - 3 && refused == 0);
}

#[test]
fn sys_instances_and_blitz_instances_list_what_runs() {
    let _serial = serial();
    let db = fixture_db();
    let a = instance(&db, "3", &[]);
    let b = instance(&db, "5", &[]);
    let list = wait_instances(&a.addr, 2);
    for (server, pool) in [(&a, 3), (&b, 5)] {
        let entry = list
            .iter()
            .find(|e| e["addresses"] == json!([server.addr]))
            .unwrap_or_else(|| panic!("{} not in {list:?}", server.addr));
        assert_eq!(entry["addresses"], json!([server.addr]), "{entry}");
        assert_eq!(entry["pool_size"], pool);
        assert_eq!(entry["share"], pool, "the budget has room for both pools");
        assert_eq!(entry["version"], env!("CARGO_PKG_VERSION"));
        assert!(entry["heartbeat_age_ms"].as_i64().unwrap() < TIMEOUT_MS as i64);
        assert!(entry["id"]
            .as_str()
            .unwrap()
            .contains(server.addr.rsplit(':').next().unwrap()));
    }
    let own = status(&a.addr);
    assert_eq!(own["pool"]["share"], 3);
    assert!(
        list.iter().any(|e| e["id"] == own["cluster"]["id"]),
        "{own}"
    );
    let home = std::env::temp_dir().join(format!("blitz-instances-{}", std::process::id()));
    let mut cmd = Command::new(support::bin("blitz"));
    cmd.env("XDG_CONFIG_HOME", &home)
        .args(["--server", &a.addr, "instances"]);
    let (code, stdout, stderr) = support::run(cmd);
    let _ = std::fs::remove_dir_all(&home);
    assert_eq!(code, 0, "{stderr}");
    eprintln!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("SHARE"),
        "{stdout}"
    );
    for entry in &list {
        assert!(stdout.contains(entry["id"].as_str().unwrap()), "{stdout}");
    }
    assert_eq!(lines.last(), Some(&"2 instances"));
}

/// The haproxy binary, or a failure that says how to get it.
fn haproxy() -> std::path::PathBuf {
    for dir in ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"] {
        let path = std::path::Path::new(dir).join("haproxy");
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "haproxy is not installed, and this test needs it: run `make test` as root (it installs it \
         with apt-get), or install it yourself (Debian/Ubuntu: apt-get install haproxy)"
    );
}

#[test]
fn clients_through_haproxy_keep_working_when_an_instance_stops() {
    let _serial = serial();
    let haproxy = haproxy();
    let db = fixture_db();
    let mut a = instance(&db, "4", &[]);
    let b = instance(&db, "4", &[]);
    let front = format!("127.0.0.1:{}", support::free_port());
    let mut config =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/haproxy.cfg")).unwrap();
    // Whole lines: an address put in must not be matched by the next
    // replacement (a port 40645 holds "127.0.0.1:4064").
    let rewrites = [
        ("bind 127.0.0.1:4060\n", format!("bind {front}\n")),
        (
            "server blitz1 127.0.0.1:4063 check",
            format!("server blitz1 {} check", a.addr),
        ),
        (
            "server blitz2 127.0.0.1:4064 check",
            format!("server blitz2 {} check", b.addr),
        ),
    ];
    for (line, rewritten) in rewrites {
        assert!(
            config.contains(line),
            "conf/haproxy.cfg no longer has the line this test rewrites: {line:?}"
        );
        config = config.replace(line, &rewritten);
    }
    let path = std::env::temp_dir().join(format!("blitz-haproxy-{}.cfg", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let mut proxy = Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start haproxy");
    let start = Instant::now();
    while Client::connect(&[&front])
        .and_then(|mut c| c.call("sys.ping", json!({})))
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "haproxy does not pass sys.ping"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // The eight clients share one retry budget (options are cloned). Until
    // HAProxy's health check marks the killed instance down, it still sends
    // reconnects there, and each failed attempt costs a token: the default
    // bucket of 10 is spent in that burst and a keyed call whose connection
    // broke would then fail instead of being sent again.
    let options = ClientOptions::default()
        .max_attempts(10)
        .retry_budget(RetryBudget::new(1000.0, 0.1));
    let mut load = Load::new();
    load.add(8, &[&front], options, 1, &[]);
    load.wait_for_calls(300);
    let before = load.calls();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let stopped = Instant::now();
    while load.calls() < before + 400 {
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "clients stopped working"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let after = stopped.elapsed();
    let (acked, failed) = load.finish();
    let _ = proxy.kill();
    let _ = proxy.wait();
    let _ = std::fs::remove_file(&path);
    eprintln!(
        "HAProxy: {before} calls before one of two instances was killed; 400 more within {after:?} after; {} acknowledged, {} failed",
        acked.len(),
        failed.len()
    );
    assert_none_failed_each_applied_once(&db, &acked, &failed);
    assert_eq!(db.count_rows("public.applied"), acked.len() as i64);
}
