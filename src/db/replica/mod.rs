//! Hot standbys that serve reads: each [`Replica`] with its own pool,
//! health, concurrency limit and share of the standby's connections
//! ([`StandbyShare`], which the cluster sets), the state its monitor
//! polls ([`monitor`]), and [`Replicas`]: the set, the one routing
//! decision ([`Replicas::route`]) and the per-session WAL positions that
//! give a session its own writes back ([`LsnMap`]).
//!
//! A call goes to a standby only when the caller says it may (the
//! function writes nothing, the call carries no idempotency key), the
//! session's position is known (a session first seen by this instance
//! reads on the primary once), and a standby is `up`; among those, the
//! one that has replayed the session's position and has the fewest calls
//! in hand. What a failure on a standby does next is [`fallback`]'s.
//!
//! This module knows nothing of sessions beyond their keys, nor of the
//! server: the server asks for a route and records positions.

mod fallback;
mod lsn;
pub mod monitor;

pub use fallback::{after_failure, Fallback};
pub use lsn::{read_lsn, Lsn, LsnMap, INSERT_LSN_SQL, REPLAY_LSN_SQL};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::acquire::Database;
use super::health::Health;
use super::limit::Limiter;
use super::pool::{build_pool, Connector, DbConn, Registration};
use super::share::StandbyShare;
use crate::config::Config;

/// What the monitor last found a standby to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not probed yet (shown as `down`).
    Starting = 0,
    /// In recovery and within `db.replica_max_lag_ms`: serves reads.
    Up = 1,
    /// In recovery but lagging more than `db.replica_max_lag_ms`: skipped.
    Lagging = 2,
    /// Not answering: skipped until it answers again.
    Down = 3,
    /// No longer in recovery (promoted): out of read routing.
    Promoted = 4,
}

impl State {
    fn from_u8(n: u8) -> State {
        match n {
            1 => State::Up,
            2 => State::Lagging,
            3 => State::Down,
            4 => State::Promoted,
            _ => State::Starting,
        }
    }

    /// The name `sys.status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Lagging => "lagging",
            State::Starting | State::Down => "down",
            State::Promoted => "promoted",
        }
    }
}

/// One hot standby.
pub struct Replica {
    /// Its pool, health, watchdog, limit and share's gate.
    pub db: Database,
    /// Its share of the standby's connections, as the cluster sets it,
    /// and its name (the URL's `host:port/dbname`).
    pub standby: Arc<StandbyShare>,
    /// How the monitor connects (outside the pool).
    monitor_connector: Connector,
    state: AtomicU8,
    lag_ms: AtomicU64,
    replay_lsn: AtomicU64,
    paused: AtomicBool,
    calls: AtomicU64,
}

/// A standby's state as one probe found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Lsn,
    /// How far replay is behind, in ms (0 when it has replayed all it received).
    pub lag_ms: u64,
    /// `pg_is_wal_replay_paused()`.
    pub paused: bool,
    /// `max_connections`.
    pub max_connections: u64,
}

impl Replica {
    /// The standby at `url` (one of `config`'s `db.replica_urls`), its pool
    /// enlisting each connection in `registration`; nothing connects yet.
    fn new(config: &Config, url: &str, registration: Arc<dyn Registration>) -> Replica {
        let connector = Connector::for_url(config, url).read_only();
        let name = standby_name(&connector.settings);
        let standby = StandbyShare::new(name);
        let health = Arc::new(Health::silent());
        let share = standby.share.clone();
        let pool = build_pool(
            config,
            connector.clone(),
            health.clone(),
            share.clone(),
            registration,
        );
        let limiter = Limiter::new(
            config.db.active_limit,
            config.active_limit_start() as usize,
            config.db.pool_size as usize,
        );
        share.attach_limiter(limiter.clone());
        let acquire_timeout = Duration::from_millis(config.db.acquire_timeout_ms);
        let mut monitor_connector = connector;
        monitor_connector
            .settings
            .application_name("blitz-replica-monitor");
        Replica {
            db: Database::new(pool, health, acquire_timeout, share, limiter),
            standby,
            monitor_connector,
            state: AtomicU8::new(State::Starting as u8),
            lag_ms: AtomicU64::new(0),
            replay_lsn: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            calls: AtomicU64::new(0),
        }
    }

    /// The state the monitor (or a failed call) last found.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The replay position last seen.
    pub fn replay_lsn(&self) -> Lsn {
        self.replay_lsn.load(Ordering::Acquire)
    }

    /// Counts one call answered by this standby.
    pub fn count_call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls answered by this standby so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The replay lag last seen, in ms.
    pub fn lag_ms(&self) -> u64 {
        self.lag_ms.load(Ordering::Acquire)
    }

    /// Applies what a probe found (`max_lag_ms`: `db.replica_max_lag_ms`).
    pub fn observe(&self, seen: Observation, max_lag_ms: u64) {
        self.replay_lsn.fetch_max(seen.replay_lsn, Ordering::AcqRel);
        self.lag_ms.store(seen.lag_ms, Ordering::Release);
        self.paused.store(seen.paused, Ordering::Release);
        let (state, why) = match () {
            _ if !seen.in_recovery => (State::Promoted, "it is no longer in recovery".to_string()),
            _ if seen.lag_ms > max_lag_ms => (
                State::Lagging,
                format!(
                    "replay is {} ms behind (db.replica_max_lag_ms = {max_lag_ms})",
                    seen.lag_ms
                ),
            ),
            _ => (State::Up, format!("replay lag {} ms", seen.lag_ms)),
        };
        self.db.health.report_up();
        self.enter(state, &why);
    }

    /// Takes the standby out of routing at once (it did not answer);
    /// its monitor brings it back when it answers again.
    pub fn mark_down(&self, why: &str) {
        self.db.health.report_down(why);
        self.enter(State::Down, why);
    }

    /// Moves to `state`, logging the change (one line per change, not per poll).
    fn enter(&self, state: State, why: &str) {
        let before = State::from_u8(self.state.swap(state as u8, Ordering::AcqRel));
        if before == state {
            return;
        }
        let name = &self.standby.name;
        match state {
            State::Up => log::info!("standby {name} is up ({why}): serving reads"),
            State::Lagging => log::warn!(
                "standby {name} is lagging: {why}; its reads go elsewhere until it catches up"
            ),
            State::Down => {
                log::warn!("standby {name} is down: {why}; its reads go elsewhere until it answers")
            }
            State::Promoted => {
                log::warn!("standby {name} was promoted ({why}): no more reads are routed to it")
            }
            State::Starting => {}
        }
    }

    /// Waits, on `conn` (one of this standby's), until the standby has
    /// replayed `lsn`, at most `bound`; whether it has.
    pub fn wait_for(
        &self,
        conn: &mut DbConn,
        lsn: Lsn,
        bound: Duration,
    ) -> Result<bool, postgres::Error> {
        let give_up = Instant::now() + bound;
        loop {
            let replayed = read_lsn(conn, REPLAY_LSN_SQL)?;
            self.replay_lsn.fetch_max(replayed, Ordering::AcqRel);
            if replayed >= lsn {
                return Ok(true);
            }
            if Instant::now() >= give_up {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The `sys.status` entry.
    pub fn status(&self) -> Value {
        let pool = self.db.pool.state();
        json!({
            "name": self.standby.name,
            "state": self.state().as_str(),
            "lag_ms": self.lag_ms(),
            "replay_paused": self.paused.load(Ordering::Acquire),
            "replay_lsn": format_lsn(self.replay_lsn()),
            "max_connections": self.standby.max_connections(),
            "pool": {
                "size": self.db.pool.max_size(),
                "open": pool.connections,
                "idle": pool.idle_connections,
                "in_use": pool.connections - pool.idle_connections,
            },
            "share": self.db.share().limit(),
            "active_limit": self.db.limiter().status(),
            "calls": self.calls(),
        })
    }
}

/// `X/Y` as PostgreSQL writes a `pg_lsn`.
pub fn format_lsn(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// `host:port/dbname` of a standby's settings: how instances agree which
/// standby is meant.
fn standby_name(settings: &postgres::Config) -> String {
    let host = match settings.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = settings.get_ports().first().copied().unwrap_or(5432);
    let db = settings
        .get_dbname()
        .or(settings.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

/// Where a call runs.
pub enum Route {
    /// On the primary.
    Primary,
    /// On `replica`, once it has replayed `must_see` (`caught_up`: its
    /// last known position already passes it).
    Standby {
        /// The standby.
        replica: Arc<Replica>,
        /// The position the call must see.
        must_see: Lsn,
        /// Whether the standby is known to have replayed it.
        caught_up: bool,
    },
}

/// What routing needs to know of a call.
#[derive(Debug, Clone, Copy)]
pub struct Read {
    /// The function writes nothing and is not pinned to the primary.
    pub standby_safe: bool,
    /// The call carries an idempotency key (its record is written).
    pub keyed: bool,
    /// The position the session must see; `None`: the session is not
    /// known to this instance (it may have written through another).
    pub must_see: Option<Lsn>,
}

/// The standbys of `db.replica_urls` and the sessions' positions.
pub struct Replicas {
    list: Vec<Arc<Replica>>,
    /// Per session key, the position its next read must see.
    pub sessions: LsnMap,
    primary_calls: AtomicU64,
    /// How often the monitors poll.
    pub poll_interval: Duration,
    /// `db.replica_max_lag_ms`.
    pub max_lag_ms: u64,
}

impl Replicas {
    /// The standbys of `config` (none when `db.replica_urls` is empty),
    /// each pool enlisting its connections in `registration`.
    pub fn new(config: &Config, registration: Arc<dyn Registration>) -> Replicas {
        let list = (config.db.replica_urls.iter())
            .map(|url| Arc::new(Replica::new(config, url, registration.clone())))
            .collect();
        Replicas {
            list,
            sessions: LsnMap::default(),
            primary_calls: AtomicU64::new(0),
            poll_interval: Duration::from_millis(config.db.heartbeat_interval_ms.min(100)),
            max_lag_ms: config.db.replica_max_lag_ms,
        }
    }

    /// Whether no standby is configured (every call on the primary).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The standbys.
    pub fn list(&self) -> &[Arc<Replica>] {
        &self.list
    }

    /// Their shares, for the cluster to set.
    pub fn standby_shares(&self) -> Vec<Arc<StandbyShare>> {
        self.list.iter().map(|r| r.standby.clone()).collect()
    }

    /// Counts one `api.` call answered by the primary.
    pub fn count_primary_call(&self) {
        self.primary_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// `api.` calls answered by the primary so far.
    pub fn primary_calls(&self) -> u64 {
        self.primary_calls.load(Ordering::Relaxed)
    }

    /// The one routing decision: a standby that is up (preferring one
    /// that has replayed the session's position, then the fewest calls in
    /// hand) when the call may run on one, else the primary.
    pub fn route(&self, read: Read) -> Route {
        let Some(must_see) = read.must_see else {
            return Route::Primary;
        };
        if !read.standby_safe || read.keyed {
            return Route::Primary;
        }
        let best = (self.list.iter())
            .filter(|r| r.state() == State::Up && r.db.share().limit() > 0)
            .min_by_key(|r| (r.replay_lsn() < must_see, r.db.limiter().in_use()));
        match best {
            Some(replica) => Route::Standby {
                replica: replica.clone(),
                must_see,
                caught_up: replica.replay_lsn() >= must_see,
            },
            None => Route::Primary,
        }
    }

    /// The `sys.status` member.
    pub fn status(&self) -> Value {
        Value::Array(self.list.iter().map(|r| r.status()).collect())
    }
}
