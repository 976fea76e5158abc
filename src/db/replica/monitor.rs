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

use super::{Observation, Replica, Replicas, State};
use crate::db::pool::trim;
use crate::db::share::StandbyShare;

/// Called after each probe with the standby's share (its
/// `max_connections` known) and the monitor's connection: where the
/// cluster keeps this instance's part of the standby's budget.
pub type OnProbe =
    Arc<dyn Fn(&StandbyShare, &mut Client) -> Result<(), postgres::Error> + Send + Sync>;

/// The one probe statement: recovery, replay and receive positions, the
/// age of the last replayed transaction (ms), paused replay,
/// `max_connections`.
const PROBE_SQL: &str = "SELECT pg_catalog.pg_is_in_recovery(), \
    COALESCE((pg_catalog.pg_last_wal_replay_lsn() - '0/0'::pg_catalog.pg_lsn)::pg_catalog.int8, 0), \
    (pg_catalog.pg_last_wal_receive_lsn() - '0/0'::pg_catalog.pg_lsn)::pg_catalog.int8, \
    (EXTRACT(EPOCH FROM pg_catalog.now() - pg_catalog.pg_last_xact_replay_timestamp()) \
     * 1000)::pg_catalog.int8, \
    CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_is_wal_replay_paused() ELSE false END, \
    pg_catalog.current_setting('max_connections')::pg_catalog.int8";

/// One probe's raw figures.
struct Probed {
    in_recovery: bool,
    replay_lsn: u64,
    /// `None` when nothing is streamed (then what was replayed is all there is).
    receive_lsn: Option<u64>,
    /// Age of the last replayed transaction; `None` before the first.
    replayed_age_ms: Option<u64>,
    paused: bool,
    max_connections: u64,
}

/// The replay lag from successive probes: 0 while the standby has
/// replayed all it received; while it has not, the age of its last
/// replayed transaction, but never more than how long the probes have
/// seen it behind without a break. The age alone would count the idle
/// time before a commit as lag in the instant that commit is received
/// but not replayed yet.
#[derive(Debug, Default)]
struct Lag {
    behind_since: Option<Instant>,
}

impl Lag {
    fn of(&mut self, p: &Probed, now: Instant) -> u64 {
        let behind = p.in_recovery && p.receive_lsn.is_some_and(|r| r > p.replay_lsn);
        if !behind {
            self.behind_since = None;
            return 0;
        }
        let since = *self.behind_since.get_or_insert(now);
        let seen_behind = now.duration_since(since).as_millis() as u64;
        p.replayed_age_ms
            .map_or(seen_behind, |age| age.min(seen_behind))
    }
}

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
        let mut lag = Lag::default();
        while !self.stop.load(Ordering::Acquire) {
            if client.is_none() && Instant::now() >= next_connect {
                client = self.connect(&mut backoff, &mut next_connect);
            }
            if let Some(c) = client.as_mut() {
                if !self.poll(c, &mut lag) {
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
    fn poll(&self, client: &mut Client, lag: &mut Lag) -> bool {
        let replica = self.replica();
        let at = Instant::now() + self.probe_timeout;
        let guard = replica.db.watchdog.arm(at, client.cancel_token());
        let probed = probe(client);
        let fired = guard.disarm();
        match probed {
            Ok(p) => {
                replica.standby.set_max_connections(p.max_connections);
                if let Err(e) = (self.on_probe)(&replica.standby, client) {
                    log::debug!(
                        "standby {}: keeping its budget failed: {e}",
                        replica.standby.name
                    );
                }
                let seen = Observation {
                    in_recovery: p.in_recovery,
                    replay_lsn: p.replay_lsn,
                    lag_ms: lag.of(&p, Instant::now()),
                    paused: p.paused,
                    max_connections: p.max_connections,
                };
                match self.pool_answers(replica, &seen) {
                    Ok(()) => replica.observe(seen, self.replicas.max_lag_ms),
                    Err(why) => replica.mark_down(&why),
                }
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

impl Monitor {
    /// Before a standby that is down (or not up yet) comes back: whether
    /// its pool gets a connection (within its share, enlisted), so that a
    /// standby whose pool cannot connect stays down instead of flapping
    /// between the monitor's answer and the calls' failures.
    fn pool_answers(&self, replica: &Replica, seen: &Observation) -> Result<(), String> {
        let returning = matches!(replica.state(), State::Down | State::Starting);
        if !returning || !seen.in_recovery {
            return Ok(());
        }
        if replica.db.share().limit() == 0 {
            return Err(format!(
                "its share is 0 connections (max_connections {})",
                seen.max_connections
            ));
        }
        match replica.db.pool.get_timeout(self.probe_timeout) {
            Ok(_conn) => Ok(()),
            Err(e) => Err(format!("its pool cannot connect: {e}")),
        }
    }
}

/// Runs [`PROBE_SQL`].
fn probe(client: &mut Client) -> Result<Probed, postgres::Error> {
    let row = client.query_one(PROBE_SQL, &[])?;
    let unsigned = |v: Option<i64>| v.map(|n| n.max(0) as u64);
    Ok(Probed {
        in_recovery: row.try_get(0)?,
        replay_lsn: row.try_get::<_, i64>(1)? as u64,
        receive_lsn: unsigned(row.try_get(2)?),
        replayed_age_ms: unsigned(row.try_get(3)?),
        paused: row.try_get(4)?,
        max_connections: row.try_get::<_, i64>(5)? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behind(age: Option<u64>) -> Probed {
        Probed {
            in_recovery: true,
            replay_lsn: 10,
            receive_lsn: Some(20),
            replayed_age_ms: age,
            paused: false,
            max_connections: 100,
        }
    }

    #[test]
    fn a_commit_after_idle_time_is_no_lag_but_staying_behind_is() {
        let mut lag = Lag::default();
        let t0 = Instant::now();
        assert_eq!(
            lag.of(&behind(Some(60_000)), t0),
            0,
            "first seen behind: no lag yet"
        );
        let later = t0 + Duration::from_millis(500);
        assert_eq!(lag.of(&behind(Some(60_000)), later), 500);
        assert_eq!(
            lag.of(&behind(Some(200)), later),
            200,
            "replay moves: its age"
        );
        assert_eq!(lag.of(&behind(None), later), 500, "nothing replayed yet");
        let caught_up = Probed {
            receive_lsn: Some(10),
            ..behind(Some(60_000))
        };
        assert_eq!(lag.of(&caught_up, later), 0);
        assert_eq!(
            lag.of(&behind(Some(60_000)), later),
            0,
            "behind again: counted anew"
        );
    }
}
