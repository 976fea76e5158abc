//! The instance registry, table `blitz.instances`, and the statements that
//! keep it: join, the round (heartbeat, dead instances, rebalancing) and
//! leave, each one transaction on the housekeeping connection under one
//! advisory lock, so that instances change the budget one at a time.
//!
//! Liveness is tied to PostgreSQL sessions: every connection of an
//! instance (housekeeping and pool) holds a shared session-level advisory
//! lock on `(LOCK_CLASS, lock_key)`. An instance is dead when its heartbeat
//! is older than `db.heartbeat_timeout_ms`, or when its housekeeping
//! session no longer holds the lock and it missed a heartbeat (the process
//! died and PostgreSQL ended its sessions). Whoever notices terminates the
//! backends still holding the dead instance's lock (a frozen process keeps
//! its sessions open), and removes the row only once
//! `pg_try_advisory_xact_lock` proves that none is left: the share is
//! handed on only when PostgreSQL says its connections are gone.

use std::time::Duration;

use postgres::{Client, GenericClient, Transaction};
use serde_json::Value;

use super::budget::{self, HOUSEKEEPING};

/// The advisory-lock class (first key) of the registry's locks ("blz").
pub const LOCK_CLASS: i32 = 0x0062_6c7a;

/// The second key of the lock that serialises changes to the registry;
/// instance keys start at 1.
const REGISTRY_LOCK: i32 = 0;

/// The notification channel that wakes every instance's housekeeper when
/// an instance joins, leaves, releases connections or is removed.
pub const CHANNEL: &str = "blitz_instances";

/// The heartbeat interval and the age after which an instance is dead.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often each instance renews its heartbeat (`db.heartbeat_interval_ms`).
    pub interval: Duration,
    /// A heartbeat older than this is dead (`db.heartbeat_timeout_ms`).
    pub dead_after: Duration,
}

/// What an instance tells the registry about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Unique id: `host:port-xxxx`.
    pub id: String,
    /// Its listen addresses, comma-separated.
    pub addresses: String,
    /// Its configured `db.pool_size`.
    pub pool_size: u64,
    /// Its version.
    pub version: String,
}

/// How the budget stands after a join or a round, as this instance sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    /// `max_connections`.
    pub max_connections: u64,
    /// `max_connections − db.reserved_connections`.
    pub budget: u64,
    /// Live instances, this one included.
    pub instances: u64,
    /// This instance's fair share.
    pub target: u64,
    /// The share the registry records for this instance.
    pub registered: u64,
}

/// Why a join did not happen.
#[derive(Debug)]
pub enum JoinError {
    /// The budget has no room for one more instance; the message says who holds it.
    NoRoom(String),
    /// Another instance registered a moment ago and the others have not
    /// released its connections yet: try again shortly.
    Busy,
    /// The database failed.
    Db(postgres::Error),
    /// The database cannot be used as configured (its TLS certificate
    /// failed verification): the message says why.
    Refused(String),
}

impl From<postgres::Error> for JoinError {
    fn from(e: postgres::Error) -> JoinError {
        JoinError::Db(e)
    }
}

/// One live instance as the registry has it.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    key: i32,
    pool_size: u64,
    share: u64,
}

/// Takes the shared lock of instance `key` on this session and checks that
/// the instance is still registered (two statements: the check must see
/// the registry as it is once the lock is held). `false`: it is not.
pub fn enlist(client: &mut Client, key: i32) -> Result<bool, postgres::Error> {
    client.execute(
        "SELECT pg_catalog.pg_advisory_lock_shared($1, $2)",
        &[&LOCK_CLASS, &key],
    )?;
    let row = client.query_one(
        "SELECT EXISTS (SELECT 1 FROM blitz.instances WHERE lock_key = $1)",
        &[&key],
    )?;
    Ok(row.get(0))
}

/// Registers `me` with the share the budget has free for it now (never
/// more than its fair share); the others shrink towards their new fair
/// shares on the notification, and this instance grows into what they
/// release in later rounds. Returns the new key and the standing.
pub fn join(
    client: &mut Client,
    me: &Identity,
    reserved: u64,
    timing: Timing,
) -> Result<(i32, Standing), JoinError> {
    let mut tx = client.transaction()?;
    lock_registry(&mut tx)?;
    let max_connections = max_connections(&mut tx)?;
    let budget = max_connections.saturating_sub(reserved);
    remove_dead(&mut tx, 0, timing)?;
    let mut rows = live_rows(&mut tx)?;
    let registered: Vec<u64> = rows.iter().map(|r| r.share).collect();
    rows.push(Row {
        id: me.id.clone(),
        key: 0,
        pool_size: me.pool_size,
        share: 0,
    });
    let pools: Vec<u64> = rows.iter().map(|r| r.pool_size).collect();
    let Some(targets) = budget::fair_shares(budget, &pools) else {
        return Err(JoinError::NoRoom(no_room(
            max_connections,
            reserved,
            budget,
            &rows,
        )));
    };
    let target = *targets.last().expect("me");
    let free = budget::free(budget, &registered) - HOUSEKEEPING as i64;
    if free < 0 {
        return Err(JoinError::Busy); // rolled back: the others are still releasing
    }
    let share = target.min(free as u64);
    let key: i32 = tx
        .query_one(
            "SELECT pg_catalog.nextval('blitz.instance_keys')::int4",
            &[],
        )?
        .get(0);
    tx.execute(
        "SELECT pg_catalog.pg_advisory_lock_shared($1, $2)",
        &[&LOCK_CLASS, &key],
    )?;
    tx.execute(
        "INSERT INTO blitz.instances (id, lock_key, addresses, pool_size, share, version, housekeeping_pid) \
         VALUES ($1, $2, $3, $4, $5, $6, pg_catalog.pg_backend_pid())",
        &[&me.id, &key, &me.addresses, &(me.pool_size as i32), &(share as i32), &me.version],
    )?;
    notify(&mut tx)?;
    tx.commit()?;
    Ok((
        key,
        Standing {
            max_connections,
            budget,
            instances: rows.len() as u64,
            target,
            registered: share,
        },
    ))
}

/// The message of a refused join: the figures and who holds the budget.
fn no_room(max_connections: u64, reserved: u64, budget: u64, rows: &[Row]) -> String {
    let holders: Vec<String> = rows[..rows.len() - 1]
        .iter()
        .map(|r| {
            format!(
                "{} (pool {}, share {} + {HOUSEKEEPING})",
                r.id, r.pool_size, r.share
            )
        })
        .collect();
    format!(
        "no room in the connection budget for this instance: max_connections {max_connections} \
         minus db.reserved_connections {reserved} = {budget} connections, and {} instances would \
         each need at least 1 pool connection plus {HOUSEKEEPING} housekeeping; held by: {}. \
         Stop an instance, raise max_connections or lower db.reserved_connections",
        rows.len(),
        if holders.is_empty() {
            "nobody".to_string()
        } else {
            holders.join(", ")
        }
    )
}

/// What a round decided for this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// The registry no longer has this instance (it was taken for dead).
    Removed,
    /// The standing after the round (with `registered` possibly changed).
    Stands(Standing),
}

/// One round for instance `key` holding `open` pool connections: renews
/// its heartbeat, removes dead instances, and moves its registered share
/// towards its fair share: up into free room, or down to the target once
/// `open` is within it (then the others are notified).
pub fn round(
    client: &mut Client,
    key: i32,
    open: u64,
    reserved: u64,
    timing: Timing,
) -> Result<Round, postgres::Error> {
    let mut tx = client.transaction()?;
    lock_registry(&mut tx)?;
    let beat = tx.execute(
        "UPDATE blitz.instances SET heartbeat = pg_catalog.now(), \
         housekeeping_pid = pg_catalog.pg_backend_pid() WHERE lock_key = $1",
        &[&key],
    )?;
    if beat == 0 {
        tx.commit()?;
        return Ok(Round::Removed);
    }
    let max_connections = max_connections(&mut tx)?;
    let budget = max_connections.saturating_sub(reserved);
    let removed = remove_dead(&mut tx, key, timing)?;
    let rows = live_rows(&mut tx)?;
    let pools: Vec<u64> = rows.iter().map(|r| r.pool_size).collect();
    let registered: Vec<u64> = rows.iter().map(|r| r.share).collect();
    let me = rows
        .iter()
        .position(|r| r.key == key)
        .expect("updated above");
    // With too many instances for one each, keep what is held (never more).
    let target = budget::fair_shares(budget, &pools).map_or(rows[me].share.min(1), |t| t[me]);
    let current = rows[me].share;
    let free = budget::free(budget, &registered);
    let next = if target > current {
        current + (target - current).min(free.max(0) as u64)
    } else if open <= target {
        target
    } else {
        current
    };
    if next != current {
        tx.execute(
            "UPDATE blitz.instances SET share = $2 WHERE lock_key = $1",
            &[&key, &(next as i32)],
        )?;
    }
    if next < current || removed > 0 {
        notify(&mut tx)?;
    }
    tx.commit()?;
    Ok(Round::Stands(Standing {
        max_connections,
        budget,
        instances: rows.len() as u64,
        target,
        registered: next,
    }))
}

/// Leaves the registry in two steps: the share goes to 0 (the others may
/// grow into it at once: the pool is closed already), then the row goes
/// without a notification, so that the housekeeping connection, closed
/// right after, is gone before anyone counts on it (at their next round).
pub fn leave(client: &mut Client, key: i32) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    lock_registry(&mut tx)?;
    tx.execute(
        "UPDATE blitz.instances SET share = 0 WHERE lock_key = $1",
        &[&key],
    )?;
    notify(&mut tx)?;
    tx.commit()?;
    client.execute("DELETE FROM blitz.instances WHERE lock_key = $1", &[&key])?;
    Ok(())
}

/// The live instances as the `sys.instances` result: id, addresses,
/// configured pool, current share, heartbeat age, version, start time.
pub fn list(
    client: &mut impl GenericClient,
    dead_after: Duration,
) -> Result<Value, postgres::Error> {
    let row = client.query_one(
        "SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object( \
             'id', id, 'addresses', pg_catalog.string_to_array(addresses, ','), \
             'pool_size', pool_size, 'share', share, \
             'heartbeat_age_ms', (extract(epoch FROM pg_catalog.clock_timestamp() - heartbeat) * 1000)::int8, \
             'version', version, 'started_at', started_at) ORDER BY started_at, id), '[]'::json) \
         FROM blitz.instances WHERE heartbeat > pg_catalog.now() - make_interval(secs => $1)",
        &[&dead_after.as_secs_f64()],
    )?;
    Ok(row.get(0))
}

fn lock_registry(tx: &mut Transaction) -> Result<(), postgres::Error> {
    tx.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock($1, $2)",
        &[&LOCK_CLASS, &REGISTRY_LOCK],
    )?;
    Ok(())
}

fn notify(tx: &mut Transaction) -> Result<(), postgres::Error> {
    tx.batch_execute(&format!("NOTIFY {CHANNEL}"))
}

fn max_connections(tx: &mut Transaction) -> Result<u64, postgres::Error> {
    let row = tx.query_one("SELECT current_setting('max_connections')::int8", &[])?;
    Ok(row.get::<_, i64>(0) as u64)
}

fn live_rows(tx: &mut Transaction) -> Result<Vec<Row>, postgres::Error> {
    let rows = tx.query(
        "SELECT id, lock_key, pool_size, share FROM blitz.instances ORDER BY started_at, id",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| Row {
            id: r.get(0),
            key: r.get(1),
            pool_size: r.get::<_, i32>(2) as u64,
            share: r.get::<_, i32>(3) as u64,
        })
        .collect())
}

/// Removes the instances other than `me` that are dead (see the module
/// doc); returns how many were removed.
fn remove_dead(tx: &mut Transaction, me: i32, timing: Timing) -> Result<u64, postgres::Error> {
    let suspects = tx.query(
        "SELECT id, lock_key, share, heartbeat < pg_catalog.now() - make_interval(secs => $3) AS stale \
         FROM blitz.instances i WHERE lock_key <> $2 \
           AND (heartbeat < pg_catalog.now() - make_interval(secs => $3) \
                OR (heartbeat < pg_catalog.now() - make_interval(secs => $4) \
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l \
                         WHERE l.locktype = 'advisory' AND l.pid = i.housekeeping_pid \
                           AND l.classid::int8 = $1 AND l.objid::int8 = i.lock_key \
                           AND l.objsubid = 2 AND l.granted)))",
        &[
            &(LOCK_CLASS as i64),
            &me,
            &timing.dead_after.as_secs_f64(),
            &timing.interval.as_secs_f64(),
        ],
    )?;
    let mut removed = 0;
    for suspect in suspects {
        let (id, key, share, stale): (String, i32, i32, bool) = (
            suspect.get(0),
            suspect.get(1),
            suspect.get(2),
            suspect.get(3),
        );
        // Sessions of a frozen process stay open: end them (200 ms each at most).
        tx.query(
            "SELECT pg_catalog.pg_terminate_backend(l.pid, 200) FROM pg_catalog.pg_locks l \
             WHERE l.locktype = 'advisory' AND l.classid::int8 = $1 AND l.objid::int8 = $2 \
               AND l.objsubid = 2 AND l.pid <> pg_catalog.pg_backend_pid()",
            &[&(LOCK_CLASS as i64), &(key as i64)],
        )?;
        let gone: bool = tx
            .query_one(
                "SELECT pg_catalog.pg_try_advisory_xact_lock($1, $2)",
                &[&LOCK_CLASS, &key],
            )?
            .get(0);
        if gone {
            tx.execute("DELETE FROM blitz.instances WHERE lock_key = $1", &[&key])?;
            let why = if stale {
                "its heartbeat stopped"
            } else {
                "its database sessions ended"
            };
            log::warn!("instance {id} is dead ({why}); its share of {share} connections goes back to the others");
            removed += 1;
        }
    }
    Ok(removed)
}
