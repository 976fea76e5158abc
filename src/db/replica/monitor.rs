//! The monitor of one standby: a thread (one per standby, started with the
//! server) that polls it on a connection of its own, outside the pool,
//! every [`Replicas::poll_interval`]: recovery, replay position, lag,
//! paused replay, `max_connections`. A probe that fails or does not
//! answer within a heartbeat marks the standby down and drops the
//! connection; it reconnects with a backoff, and the standby comes back
//! by itself once it answers. Each round it also closes the idle pool
//! connections above the standby's share (as the housekeeper does for
//! the primary's), and the first monitor drops the session positions of
//! sessions gone idle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::Client;

use super::{Observation, Replica, Replicas};
use crate::db::pool::trim;
use crate::db::share::StandbyShare;

/// Called after each probe with the standby's share (its
/// `max_connections` known): where the share's limit is set.
pub type OnProbe = Arc<dyn Fn(&StandbyShare) + Send + Sync>;

/// The one probe statement.
const PROBE_SQL: &str = "SELECT pg_catalog.pg_is_in_recovery(), \
    COALESCE((pg_catalog.pg_last_wal_replay_lsn() - '0/0'::pg_catalog.pg_lsn)::pg_catalog.int8, 0), \
    CASE WHEN NOT pg_catalog.pg_is_in_recovery() \
           OR pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() THEN 0 \
         ELSE COALESCE((EXTRACT(EPOCH FROM pg_catalog.now() - pg_catalog.pg_last_xact_replay_timestamp()) \
                        * 1000)::pg_catalog.int8, 0) END, \
    CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_is_wal_replay_paused() ELSE false END, \
    pg_catalog.current_setting('max_connections')::pg_catalog.int8";

/// Longest pause between two connection attempts to a standby that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How often the session positions are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// What a monitor needs.
pub struct Monitor {
    /// The standbys (the monitor watches one of them).
    pub replicas: Arc<Replicas>,
    /// Which one.
    pub index: usize,
    /// How long a probe may take before the standby counts as down.
    pub probe_timeout: Duration,
    /// Sessions idle this long are dropped from the positions.
    pub session_idle: Duration,
    /// Called after each probe.
    pub on_probe: OnProbe,
    /// Set when the server stops.
    pub stop: Arc<AtomicBool>,
}

impl Monitor {
    /// Starts the thread.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        let name = format!("blitz-replica-{}", self.index);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || self.run())
    }

    fn replica(&self) -> &Arc<Replica> {
        &self.replicas.list()[self.index]
    }

    fn run(self) {
        let mut client: Option<Client> = None;
        let mut backoff = self.replicas.poll_interval;
        let mut next_connect = Instant::now();
        let mut next_prune = Instant::now() + PRUNE_EVERY;
        while !self.stop.load(Ordering::Acquire) {
            if client.is_none() && Instant::now() >= next_connect {
                client = self.connect(&mut backoff, &mut next_connect);
            }
            if let Some(c) = client.as_mut() {
                if !self.poll(c) {
                    client = None;
                    next_connect = Instant::now() + backoff;
                }
            }
            if self.index == 0 && Instant::now() >= next_prune {
                self.replicas.sessions.prune(self.session_idle);
                next_prune = Instant::now() + PRUNE_EVERY;
            }
            std::thread::sleep(self.replicas.poll_interval);
        }
    }

    /// A monitor connection, or `None` (the standby marked down and the
    /// next attempt put off, the pause doubled up to [`MAX_BACKOFF`]).
    fn connect(&self, backoff: &mut Duration, next: &mut Instant) -> Option<Client> {
        match self.replica().monitor_connector.connect() {
            Ok(client) => {
                *backoff = self.replicas.poll_interval;
                Some(client)
            }
            Err(e) => {
                self.replica().mark_down(&format!("cannot connect: {e}"));
                *next = Instant::now() + *backoff;
                *backoff = (*backoff * 2).min(MAX_BACKOFF);
                None
            }
        }
    }

    /// One probe; false when the connection is to be dropped.
    fn poll(&self, client: &mut Client) -> bool {
        let replica = self.replica();
        let at = Instant::now() + self.probe_timeout;
        let guard = replica.db.watchdog.arm(at, client.cancel_token());
        let probed = probe(client);
        let fired = guard.disarm();
        match probed {
            Ok(seen) => {
                replica.observe(seen, self.replicas.max_lag_ms);
                (self.on_probe)(&replica.standby);
                trim(&replica.db.pool, replica.db.share());
                true
            }
            Err(e) => {
                let why = match fired {
                    Some(_) => format!("no answer within {} ms", self.probe_timeout.as_millis()),
                    None => e.to_string(),
                };
                replica.mark_down(&why);
                false
            }
        }
    }
}

/// Runs [`PROBE_SQL`].
fn probe(client: &mut Client) -> Result<Observation, postgres::Error> {
    let row = client.query_one(PROBE_SQL, &[])?;
    Ok(Observation {
        in_recovery: row.try_get(0)?,
        replay_lsn: row.try_get::<_, i64>(1)? as u64,
        lag_ms: row.try_get::<_, i64>(2)?.max(0) as u64,
        paused: row.try_get(3)?,
        max_connections: row.try_get::<_, i64>(4)? as u64,
    })
}
