//! The instance registry, tables `blitz.instances` (one row per live
//! instance, with its share of the primary's connections) and
//! `blitz.standby_shares` (its share of each standby's), and the statements
//! that keep it: join, the round (heartbeat, dead instances, a step of
//! every share) and leave, each one transaction on the housekeeping
//! connection under one advisory lock, so that instances change the
//! budgets one at a time.
//!
//! Liveness is tied to PostgreSQL sessions: every connection of an
//! instance (housekeeping and pool, on the primary and on the standbys)
//! holds a shared session-level advisory lock on `(LOCK_CLASS, lock_key)`.
//! An instance is dead when its heartbeat is older than
//! `db.heartbeat_timeout_ms`, or when its housekeeping session no longer
//! holds the lock and it missed a heartbeat (the process died and
//! PostgreSQL ended its sessions). Whoever notices terminates the backends
//! still holding the dead instance's lock on the primary (a frozen process
//! keeps its sessions open), and removes the row only once
//! `pg_try_advisory_xact_lock` proves that none is left: the share is
//! handed on only when PostgreSQL says its connections are gone. Its
//! standby rows stay as orphans until the same proof is made on each
//! standby ([`reap`], on a standby monitor's connection), since the
//! primary cannot see the standbys' sessions.

use std::time::Duration;

use postgres::{Client, GenericClient, Transaction};
use serde_json::Value;

use super::budget::{self, Entry, HOUSEKEEPING};

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
    /// Keys of instances gone from the registry whose registered share of
    /// this standby stays until their sessions on it are proven gone
    /// ([`reap`]); always empty on the primary.
    pub orphans: Vec<i32>,
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
    /// Whether the instance is in `blitz.instances` (always, on the primary).
    live: bool,
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
    let rows = Ledger::Primary.rows(&mut tx)?;
    let held: Vec<u64> = rows.iter().map(|r| r.share).collect();
    let mut pools: Vec<u64> = rows.iter().map(|r| r.pool_size).collect();
    pools.push(me.pool_size);
    let (target, share) = match budget::enter(budget, &pools, &held) {
        Entry::Room { target, share } => (target, share),
        Entry::NoRoom => {
            let message = no_room(max_connections, reserved, budget, &rows);
            return Err(JoinError::NoRoom(message));
        }
        Entry::Busy => return Err(JoinError::Busy), // rolled back: the others are still releasing
    };
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
            instances: rows.len() as u64 + 1,
            target,
            registered: share,
            orphans: Vec::new(),
        },
    ))
}

/// The message of a refused join: the figures and who holds the budget.
fn no_room(max_connections: u64, reserved: u64, budget: u64, rows: &[Row]) -> String {
    let holders: Vec<String> = rows
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
        rows.len() + 1,
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
    /// The standing in every budget after the round: the primary's first,
    /// then each standby's in the order of [`Report::standbys`].
    Stands(Vec<Standing>),
}

/// What an instance brings to a round.
#[derive(Debug, Clone)]
pub struct Report {
    /// Its registry key.
    pub key: i32,
    /// Its primary pool connections open now.
    pub open: u64,
    /// Its standbys.
    pub standbys: Vec<StandbyReport>,
}

/// One standby as a round sees it.
#[derive(Debug, Clone)]
pub struct StandbyReport {
    /// The standby's name (`host:port/dbname`).
    pub name: String,
    /// Its `max_connections`, once read; until then this instance holds no share of it.
    pub max_connections: Option<u64>,
    /// This instance's standby pool connections open now.
    pub open: u64,
    /// Orphans (see [`Standing::orphans`]) whose sessions on this standby
    /// were proven gone ([`reap`]) since the last round: their rows go.
    pub reaped: Vec<i32>,
}

/// Where an instance's registered shares of one budget are kept: the
/// primary's in `blitz.instances`, a standby's in `blitz.standby_shares`.
/// Every budget moves by the same steps ([`settle`]).
#[derive(Debug, Clone, Copy)]
enum Ledger<'a> {
    Primary,
    Standby(&'a str),
}

impl Ledger<'_> {
    /// The registered shares: live instances first, in the order every
    /// instance uses (start time, id), then a standby's orphans.
    fn rows(self, tx: &mut Transaction) -> Result<Vec<Row>, postgres::Error> {
        let rows = match self {
            Ledger::Primary => tx.query(
                "SELECT id, lock_key, pool_size, share, true FROM blitz.instances \
                 ORDER BY started_at, id",
                &[],
            )?,
            Ledger::Standby(name) => tx.query(
                "SELECT COALESCE(i.id, ''), s.lock_key, s.pool_size, s.share, i.id IS NOT NULL \
                 FROM blitz.standby_shares s LEFT JOIN blitz.instances i USING (lock_key) \
                 WHERE s.standby = $1 ORDER BY i.id IS NULL, i.started_at, i.id, s.lock_key",
                &[&name],
            )?,
        };
        Ok(rows
            .iter()
            .map(|r| Row {
                id: r.get(0),
                key: r.get(1),
                pool_size: r.get::<_, i32>(2) as u64,
                share: r.get::<_, i32>(3) as u64,
                live: r.get(4),
            })
            .collect())
    }

    fn set_share(self, tx: &mut Transaction, key: i32, share: u64) -> Result<(), postgres::Error> {
        let share = share as i32;
        match self {
            Ledger::Primary => tx.execute(
                "UPDATE blitz.instances SET share = $2 WHERE lock_key = $1",
                &[&key, &share],
            )?,
            Ledger::Standby(name) => tx.execute(
                "INSERT INTO blitz.standby_shares AS s (standby, lock_key, pool_size, share) \
                 SELECT $3, $1, i.pool_size, $2 FROM blitz.instances i WHERE i.lock_key = $1 \
                 ON CONFLICT (standby, lock_key) DO UPDATE SET share = EXCLUDED.share",
                &[&key, &share, &name],
            )?,
        };
        Ok(())
    }
}

/// One round for the instance of `report`: renews its heartbeat, removes
/// dead instances, and moves its registered share of every budget (the
/// primary's, then each standby's) one step towards its fair share.
pub fn round(
    client: &mut Client,
    report: &Report,
    reserved: u64,
    timing: Timing,
) -> Result<Round, postgres::Error> {
    let key = report.key;
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
    let mut changed = remove_dead(&mut tx, key, timing)? > 0;
    let (primary, released) = settle(
        &mut tx,
        Ledger::Primary,
        key,
        max_connections,
        reserved,
        report.open,
    )?;
    changed |= released;
    let mut standings = vec![primary];
    for standby in &report.standbys {
        let ledger = Ledger::Standby(&standby.name);
        changed |= remove_reaped(&mut tx, &standby.name, &standby.reaped)?;
        let Some(max_connections) = standby.max_connections else {
            standings.push(Standing::default());
            continue;
        };
        let (standing, released) = settle(
            &mut tx,
            ledger,
            key,
            max_connections,
            reserved,
            standby.open,
        )?;
        changed |= released;
        standings.push(standing);
    }
    if changed {
        notify(&mut tx)?;
    }
    tx.commit()?;
    Ok(Round::Stands(standings))
}

/// Moves instance `key`'s registered share of `ledger`'s budget
/// (`max_connections − reserved`) one step ([`budget::step`]), or enters
/// it ([`budget::enter`]) when it has no share there yet (a standby).
/// Returns the standing and whether the others should look again (room
/// given back).
fn settle(
    tx: &mut Transaction,
    ledger: Ledger,
    key: i32,
    max_connections: u64,
    reserved: u64,
    open: u64,
) -> Result<(Standing, bool), postgres::Error> {
    let budget = max_connections.saturating_sub(reserved);
    let rows = ledger.rows(tx)?;
    let mut pools: Vec<u64> = rows
        .iter()
        .filter(|r| r.live)
        .map(|r| r.pool_size)
        .collect();
    let held: Vec<u64> = rows.iter().map(|r| r.share).collect();
    let orphans = rows.iter().filter(|r| !r.live).map(|r| r.key).collect();
    let mut standing = Standing {
        max_connections,
        budget,
        instances: pools.len() as u64,
        orphans,
        ..Standing::default()
    };
    let released = match rows.iter().position(|r| r.key == key) {
        Some(me) => {
            let (target, next) = budget::step(budget, &pools, me, &held, open);
            if next != rows[me].share {
                ledger.set_share(tx, key, next)?;
            }
            (standing.target, standing.registered) = (target, next);
            next < rows[me].share
        }
        None => {
            let pool_size = tx
                .query_one(
                    "SELECT pool_size FROM blitz.instances WHERE lock_key = $1",
                    &[&key],
                )?
                .get::<_, i32>(0) as u64;
            pools.push(pool_size);
            standing.instances += 1;
            if let Entry::Room { target, share } = budget::enter(budget, &pools, &held) {
                ledger.set_share(tx, key, share)?;
                (standing.target, standing.registered) = (target, share);
            }
            false
        }
    };
    Ok((standing, released))
}

/// Deletes the rows of `reaped` orphans of standby `name`; whether any went.
fn remove_reaped(
    tx: &mut Transaction,
    name: &str,
    reaped: &[i32],
) -> Result<bool, postgres::Error> {
    if reaped.is_empty() {
        return Ok(false);
    }
    let gone = tx.execute(
        "DELETE FROM blitz.standby_shares s WHERE s.standby = $1 AND s.lock_key = ANY($2) \
         AND NOT EXISTS (SELECT 1 FROM blitz.instances i WHERE i.lock_key = s.lock_key)",
        &[&name, &reaped],
    )?;
    if gone > 0 {
        log::info!("standby {name}: the shares of {gone} instances gone from the registry go back to the others (their sessions there are gone)");
    }
    Ok(gone > 0)
}

/// Leaves the registry in two steps: the shares go to 0 (the others may
/// grow into them at once: the pools are closed already), then the rows go
/// without a notification, so that the housekeeping and standby monitor
/// connections, closed right after, are gone before anyone counts on them
/// (at their next round).
pub fn leave(client: &mut Client, key: i32) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    lock_registry(&mut tx)?;
    tx.execute(
        "UPDATE blitz.instances SET share = 0 WHERE lock_key = $1",
        &[&key],
    )?;
    tx.execute(
        "UPDATE blitz.standby_shares SET share = 0 WHERE lock_key = $1",
        &[&key],
    )?;
    notify(&mut tx)?;
    tx.commit()?;
    client.batch_execute(&format!(
        "DELETE FROM blitz.standby_shares WHERE lock_key = {key}; \
         DELETE FROM blitz.instances WHERE lock_key = {key}"
    ))?;
    Ok(())
}

/// Takes instance `key`'s shared lock on `client`, a connection to a
/// standby that is not a pool connection (the standby monitor's), unless
/// it holds it already: one statement, cheap to repeat on every poll.
pub fn enlist_once(client: &mut Client, key: i32) -> Result<(), postgres::Error> {
    client.execute(
        "SELECT pg_catalog.pg_advisory_lock_shared($1, $2) WHERE NOT EXISTS ( \
             SELECT 1 FROM pg_catalog.pg_locks l WHERE l.locktype = 'advisory' \
               AND l.pid = pg_catalog.pg_backend_pid() AND l.classid::int8 = $3 \
               AND l.objid::int8 = $4 AND l.objsubid = 2 AND l.granted)",
        &[&LOCK_CLASS, &key, &(LOCK_CLASS as i64), &(key as i64)],
    )?;
    Ok(())
}

/// On a standby, for instance `key` that is gone from the registry: once
/// the standby has replayed its removal (so that no new session of it can
/// enlist there), ends its sessions holding its lock and says whether
/// none is left (`pg_try_advisory_xact_lock` got the lock exclusively).
pub fn reap(client: &mut Client, key: i32) -> Result<bool, postgres::Error> {
    let replayed: bool = client
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM blitz.instances WHERE lock_key = $1)",
            &[&key],
        )?
        .get(0);
    if !replayed {
        return Ok(false);
    }
    terminate_holders(client, key)?;
    try_lock(client, key)
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
        // Sessions of a frozen process stay open: end them.
        terminate_holders(tx, key)?;
        if try_lock(tx, key)? {
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

/// Ends the sessions (other than this one) holding instance `key`'s lock,
/// waiting 200 ms each at most.
fn terminate_holders(client: &mut impl GenericClient, key: i32) -> Result<(), postgres::Error> {
    client.query(
        "SELECT pg_catalog.pg_terminate_backend(l.pid, 200) FROM pg_catalog.pg_locks l \
         WHERE l.locktype = 'advisory' AND l.classid::int8 = $1 AND l.objid::int8 = $2 \
           AND l.objsubid = 2 AND l.pid <> pg_catalog.pg_backend_pid()",
        &[&(LOCK_CLASS as i64), &(key as i64)],
    )?;
    Ok(())
}

/// Whether instance `key`'s lock is free: no session holds it (taken
/// exclusively until the end of the current transaction).
fn try_lock(client: &mut impl GenericClient, key: i32) -> Result<bool, postgres::Error> {
    let row = client.query_one(
        "SELECT pg_catalog.pg_try_advisory_xact_lock($1, $2)",
        &[&LOCK_CLASS, &key],
    )?;
    Ok(row.get(0))
}
