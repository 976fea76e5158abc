//! Each hot standby's connection budget split among the instances, against
//! a real primary and a real standby made in the test (`pg_basebackup -R`).
//!
//! The registry tests drive [`blitz::scaleout::Cluster`] directly: each
//! "instance" is a `Cluster` with its own housekeeping connection on the
//! primary, a monitor connection on the standby, and a stand-in pool that
//! opens as many enlisted standby connections as its share allows (real
//! connections, counted by the standby's `pg_stat_activity`). The standby's
//! `max_connections` is given to the instances as a small figure, so the
//! budget is tight while the real server has room for the sampler. Covered:
//! the split while a second instance joins, a clean leave, and a frozen
//! instance whose standby share is handed on only after its sessions there
//! were terminated.
//!
//! The server test runs two `blitz-server` processes with
//! `db.replica_urls` against a standby started with a small
//! `max_connections`, and samples the standby's backends every 10 ms.

mod support;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use blitz::scaleout::{migrate, Cluster, Identity, Round, Share, StandbyShare, Timing};
use postgres::{Client, NoTls};
use support::{start_own_cluster, wait_until};

/// The database of these tests, on the primary (and so on the standby).
const DB: &str = "standby_budget";
/// The standby's `max_connections` as the instances are told it.
const STANDBY_MAX: u64 = 14;
/// `db.reserved_connections` of the instances.
const RESERVED: u64 = 2;
/// The standby's budget: `STANDBY_MAX − RESERVED`.
const BUDGET: i64 = (STANDBY_MAX - RESERVED) as i64;
/// The application name of every connection an instance opens to the standby.
const APP: &str = "blitz-standby-test";

const TIMING: Timing = Timing {
    interval: Duration::from_millis(300),
    dead_after: Duration::from_millis(1500),
};

/// A primary with the test database migrated, and its standby, caught up.
fn primary_and_standby() -> (support::Cluster, support::Cluster) {
    let primary = start_own_cluster();
    primary
        .connect("postgres")
        .batch_execute(&format!("CREATE DATABASE {DB}"))
        .unwrap();
    migrate(&mut primary.connect(DB)).unwrap();
    let standby = primary.standby();
    standby.wait_for_replay(&primary);
    (primary, standby)
}

/// The standby's name as the instances agree on it.
fn name(standby: &support::Cluster) -> String {
    format!("127.0.0.1:{}/{DB}", standby.port)
}

/// One instance: its membership, its standby part, its housekeeping and
/// monitor connections, and its stand-in standby pool.
struct Instance {
    cluster: Arc<Cluster>,
    standby: Arc<StandbyShare>,
    housekeeping: Client,
    monitor: Client,
    pool: Vec<Client>,
    /// The open slots the pool's manager takes (held with the connections).
    slots: Vec<Box<dyn std::fmt::Debug>>,
    standby_url: String,
}

impl Instance {
    /// Joins instance `id` (pool `pool_size`) and attaches the standby.
    fn join(
        id: &str,
        pool_size: u64,
        primary: &support::Cluster,
        standby: &support::Cluster,
    ) -> Instance {
        let me = Identity {
            id: id.into(),
            addresses: String::new(),
            pool_size,
            version: "test".into(),
        };
        let cluster = Cluster::new(me, TIMING, RESERVED);
        let part = StandbyShare::new(name(standby));
        part.set_max_connections(STANDBY_MAX);
        cluster.attach_standbys(vec![part.clone()]);
        let mut housekeeping = primary.connect(DB);
        cluster.join(&mut housekeeping).expect("join");
        let standby_url = format!("{}?application_name={APP}", standby.url(DB));
        let monitor = Client::connect(&standby_url, NoTls).unwrap();
        Instance {
            cluster,
            standby: part,
            housekeeping,
            monitor,
            pool: Vec::new(),
            slots: Vec::new(),
            standby_url,
        }
    }

    fn share(&self) -> &Arc<Share> {
        &self.standby.share
    }

    /// What the monitor does each poll, then a registry round.
    fn round(&mut self) -> Round {
        self.cluster
            .keep_standby(&self.standby.name, &mut self.monitor)
            .unwrap();
        self.cluster.round(&mut self.housekeeping).unwrap()
    }

    /// Opens standby connections up to the share (as the pool would under
    /// load), each enlisted; returns how many are open.
    fn fill(&mut self) -> usize {
        while let Some(slot) = self.share().open_slot() {
            let mut client = Client::connect(&self.standby_url, NoTls).unwrap();
            if !self.cluster.enlist(&mut client).unwrap() {
                break; // the standby has not replayed the join yet
            }
            self.pool.push(client);
            self.slots.push(Box::new(slot));
        }
        self.pool.len()
    }

    /// Closes standby connections down to the limit (as the pool's trim does).
    fn trim(&mut self) {
        while self.pool.len() > self.share().limit() {
            self.pool.pop();
            self.slots.pop();
        }
    }

    /// The standby part of `cluster.standby_status()`.
    fn status(&self) -> serde_json::Value {
        self.cluster.standby_status()[0].clone()
    }
}

/// Samples every 10 ms the connections the instances hold on the standby
/// (`pg_stat_activity`, by application name) and keeps the largest count.
struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicI64>,
    samples: Arc<AtomicI64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(standby: &support::Cluster) -> Sampler {
        let mut client = standby.connect("postgres");
        let (stop, max, samples) = Default::default();
        let (stop2, max2, samples2): (Arc<AtomicBool>, Arc<AtomicI64>, Arc<AtomicI64>) =
            (Arc::clone(&stop), Arc::clone(&max), Arc::clone(&samples));
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::Acquire) {
                let n: i64 = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                        &[&APP],
                    )
                    .unwrap()
                    .get(0);
                max2.fetch_max(n, Ordering::AcqRel);
                samples2.fetch_add(1, Ordering::AcqRel);
                thread::sleep(Duration::from_millis(10));
            }
        });
        Sampler {
            stop,
            max,
            samples,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns (largest count, samples).
    fn finish(mut self) -> (i64, i64) {
        self.stop.store(true, Ordering::Release);
        self.thread.take().unwrap().join().unwrap();
        (
            self.max.load(Ordering::Acquire),
            self.samples.load(Ordering::Acquire),
        )
    }
}

/// The registry's own account: every row's share plus one monitor
/// connection each, orphans included, within the budget.
fn registry_holds(primary: &support::Cluster, standby: &str) -> i64 {
    primary
        .connect(DB)
        .query_one(
            "SELECT COALESCE(sum(share + 1), 0)::int8 FROM blitz.standby_shares WHERE standby = $1",
            &[&standby],
        )
        .unwrap()
        .get(0)
}

/// Rounds (with fills and trims) of every instance until `done`.
fn settle(instances: &mut [Instance], done: impl Fn(&[Instance]) -> bool) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while !done(instances) {
        let shares: Vec<_> = instances.iter().map(Instance::status).collect();
        assert!(
            Instant::now() < give_up,
            "the shares did not settle: {shares:?}"
        );
        for i in instances.iter_mut() {
            i.round();
            i.trim();
            i.fill();
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_standby_s_budget_is_split_and_never_exceeded_while_an_instance_joins() {
    let (primary, standby) = primary_and_standby();
    let sampler = Sampler::start(&standby);
    let mut a = Instance::join("a", 10, &primary, &standby);
    assert_eq!(a.share().limit(), 0, "no standby share before a round");
    standby.wait_for_replay(&primary);
    a.round();
    // Alone: its whole pool fits (10 + 1 monitor in 12, one kept free).
    assert_eq!((a.share().limit(), a.fill()), (10, 10));
    let status = a.status();
    assert_eq!(status["budget"], BUDGET);
    assert_eq!(status["registered"], 10);
    assert_eq!(status["instances"], 1);

    let mut b = Instance::join("b", 10, &primary, &standby);
    standby.wait_for_replay(&primary);
    b.round();
    assert_eq!(b.share().limit(), 0, "nothing is free until a releases");
    assert!(registry_holds(&primary, &name(&standby)) <= BUDGET);
    // Fair shares of 11 (12 less the join slot) minus 2 monitors: 5 and 4.
    let mut both = [a, b];
    settle(&mut both, |i| {
        i[0].share().limit() == 5 && i[1].share().limit() == 4 && i[1].pool.len() == 4
    });
    assert!(registry_holds(&primary, &name(&standby)) <= BUDGET);
    assert_eq!(both[1].status()["instances"], 2);
    assert_eq!(both[1].status()["target"], 4);

    // a stops cleanly (its pools closed, it leaves): b grows into all of it.
    let [mut a, b] = both;
    a.pool.clear();
    a.slots.clear();
    a.cluster.leave(&mut a.housekeeping).unwrap();
    drop(a);
    let mut alone = [b];
    settle(&mut alone, |i| {
        i[0].share().limit() == 10 && i[0].pool.len() == 10
    });
    assert_eq!(alone[0].status()["instances"], 1);
    assert_eq!(
        alone[0].status()["orphans"],
        0,
        "a clean leave leaves no orphan"
    );

    let (max, samples) = sampler.finish();
    println!("standby connections of the instances: at most {max} of the budget {BUDGET}, {samples} samples");
    assert!(
        max <= BUDGET,
        "{max} connections on the standby, budget {BUDGET}"
    );
}

#[test]
fn a_frozen_instance_s_standby_share_is_handed_on_only_once_its_sessions_there_are_gone() {
    let (primary, standby) = primary_and_standby();
    let sampler = Sampler::start(&standby);
    let a = Instance::join("a", 10, &primary, &standby);
    let b = Instance::join("b", 10, &primary, &standby);
    standby.wait_for_replay(&primary);
    let mut both = [a, b];
    settle(&mut both, |i| i[0].pool.len() == 5 && i[1].pool.len() == 4);
    let [mut a, mut b] = both;

    // a freezes: no more rounds, its connections stay open. b finds it
    // dead on the primary (heartbeat too old) and removes it there; a's
    // standby row stays as an orphan, still counted.
    thread::sleep(TIMING.dead_after + TIMING.interval);
    b.cluster.round(&mut b.housekeeping).unwrap();
    let orphaned = b.status();
    assert_eq!(orphaned["orphans"], 1, "{orphaned}");
    assert_eq!(orphaned["instances"], 1);
    // Alone it could have its pool of 10, but a's 5 + 1 still count.
    assert_eq!(orphaned["target"], 10);
    assert_eq!(orphaned["registered"], 5, "only the free room: {orphaned}");
    b.fill();
    assert!(
        a.pool
            .iter_mut()
            .all(|c| c.simple_query("SELECT 1").is_ok()),
        "a's standby sessions are untouched until a monitor reaps them"
    );

    // b's monitor, once the standby has replayed a's removal, terminates
    // a's sessions there and proves them gone; the next round hands on.
    standby.wait_for_replay(&primary);
    let mut rounds = 0;
    wait_until("b's standby share grows to its pool", || {
        rounds += 1;
        b.round();
        b.fill();
        b.share().limit() == 10
    });
    assert!(
        a.pool
            .iter_mut()
            .all(|c| c.simple_query("SELECT 1").is_err()),
        "a's standby sessions were terminated"
    );
    assert!(
        a.monitor.simple_query("SELECT 1").is_err(),
        "a's monitor too"
    );
    assert_eq!(b.status()["orphans"], 0);
    assert_eq!(b.pool.len(), 10);
    let (max, samples) = sampler.finish();
    println!("standby connections: at most {max} of the budget {BUDGET} ({samples} samples, {rounds} rounds to hand on)");
    assert!(
        max <= BUDGET,
        "{max} connections on the standby, budget {BUDGET}"
    );

    // a thaws: its rounds see it was removed; it forgets every share.
    drop(a.slots.drain(..));
    a.pool.clear();
    let mut housekeeping = primary.connect(DB);
    assert_eq!(a.cluster.round(&mut housekeeping).unwrap(), Round::Removed);
}

/// Client backends in database `db` on `server`, other than the asking one.
fn backends(client: &mut Client, db: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
             AND datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .unwrap()
        .get(0)
}

/// Callers of `api.on_standby` on `addr` until `stop`; counts the calls a
/// standby answered (`1`), the primary answered (`0`), and the errors.
fn readers(
    addr: &str,
    n: usize,
    stop: &Arc<AtomicBool>,
    counts: &Arc<[AtomicI64; 3]>,
) -> Vec<thread::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (addr, stop, counts) = (addr.to_string(), stop.clone(), counts.clone());
            thread::spawn(move || {
                let mut rpc = support::Rpc::session(&addr);
                while !stop.load(Ordering::Acquire) {
                    let reply = rpc.call("api.on_standby", serde_json::json!({"ms": 5}));
                    let slot = match reply["result"].as_i64() {
                        Some(1) => 0,
                        Some(_) => 1,
                        None => 2,
                    };
                    counts[slot].fetch_add(1, Ordering::AcqRel);
                }
            })
        })
        .collect()
}

#[test]
fn two_servers_never_hold_more_than_a_standby_s_budget_while_the_second_joins_under_load() {
    const MAX: i64 = 20;
    const RESERVE: i64 = 4;
    let primary = start_own_cluster();
    // A hot standby's max_connections must be at least its primary's.
    primary.stop();
    primary.start_with(&format!("-c max_connections={MAX}"));
    primary
        .connect("postgres")
        .batch_execute(&format!("CREATE DATABASE {DB}"))
        .unwrap();
    primary
        .connect(DB)
        .batch_execute(
            "CREATE SCHEMA blitz_api;
             CREATE FUNCTION blitz_api.on_standby(ms int) RETURNS int LANGUAGE plpgsql STABLE AS $$
               BEGIN PERFORM pg_sleep(ms / 1000.0); RETURN pg_is_in_recovery()::int; END $$;",
        )
        .unwrap();
    let standby = primary.standby();
    standby.stop();
    standby.start_with(&format!("-c max_connections={MAX}"));
    standby.wait_for_replay(&primary);

    let replica = standby.url(DB);
    let reserve = RESERVE.to_string();
    let settings = [
        ("db.pool_size", "10"),
        ("db.reserved_connections", reserve.as_str()),
        ("db.heartbeat_interval_ms", "300"),
        ("db.heartbeat_timeout_ms", "1500"),
        ("db.replica_urls", replica.as_str()),
    ];
    let budget = MAX - RESERVE;
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, mut client) = (stop_sampling.clone(), standby.connect("postgres"));
        thread::spawn(move || {
            let (mut max, mut samples) = (0, 0);
            while !stop.load(Ordering::Acquire) {
                max = max.max(backends(&mut client, DB));
                samples += 1;
                thread::sleep(Duration::from_millis(10));
            }
            (max, samples)
        })
    };
    let a = support::Server::start(&primary.url(DB), &settings);
    let stop = Arc::new(AtomicBool::new(false));
    let (on_a, on_b): (Arc<[AtomicI64; 3]>, Arc<[AtomicI64; 3]>) = Default::default();
    let mut callers = readers(&a.addr, 12, &stop, &on_a);
    wait_until("calls on a answered by the standby", || {
        on_a[0].load(Ordering::Acquire) > 50
    });
    let b = support::Server::start(&primary.url(DB), &settings); // joins under load
    callers.extend(readers(&b.addr, 12, &stop, &on_b));
    wait_until("calls on b answered by the standby", || {
        on_b[0].load(Ordering::Acquire) > 200
    });
    stop.store(true, Ordering::Release);
    callers.into_iter().for_each(|c| c.join().unwrap());
    stop_sampling.store(true, Ordering::Release);
    let (max, samples) = sampler.join().unwrap();
    let figures = |c: &[AtomicI64; 3]| c.each_ref().map(|n| n.load(Ordering::Acquire));
    println!(
        "standby budget {budget}: at most {max} blitz connections on it ({samples} samples); \
         calls [standby, primary, errors]: a {:?}, b {:?}",
        figures(&on_a),
        figures(&on_b)
    );
    assert!(
        max <= budget,
        "{max} connections on the standby > budget {budget}"
    );
    assert!(max > 2, "the standby pools were used: {max}");
    drop((a, b));
}
