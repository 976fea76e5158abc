//! WAL positions and the one per-key record of them: [`Lsn`], a position
//! as bytes since `0/0`, and [`LsnMap`], for each key (a session) the
//! position its next read must see, with the time it was last used so
//! that entries of sessions gone idle can be dropped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A WAL position: bytes since `0/0` (`pg_lsn - '0/0'`).
pub type Lsn = u64;

/// The SQL giving the primary's WAL insert position as a JSON number
/// ([`Lsn`]; JSON for the connection's statement cache,
/// `DbConn::query_json`: one round trip). Not `pg_current_wal_lsn()`:
/// with `synchronous_commit = off` a commit returns before its record is
/// written, and only the insert position is past it then.
pub const INSERT_LSN_SQL: &str =
    "SELECT pg_catalog.to_json((pg_catalog.pg_current_wal_insert_lsn() \
     - '0/0'::pg_catalog.pg_lsn)::pg_catalog.int8)";

/// The SQL giving a standby's replay position as a JSON number ([`Lsn`];
/// 0 before anything was replayed).
pub const REPLAY_LSN_SQL: &str =
    "SELECT pg_catalog.to_json(COALESCE((pg_catalog.pg_last_wal_replay_lsn() \
     - '0/0'::pg_catalog.pg_lsn)::pg_catalog.int8, 0))";

/// Runs `sql` (one of the constants above) on `conn` with its cached
/// statement and reads the position.
pub fn read_lsn(conn: &mut crate::db::DbConn, sql: &str) -> Result<Lsn, postgres::Error> {
    let value = conn.query_json(sql, &[], &[])?;
    Ok(value.and_then(|v| v.as_u64()).unwrap_or(0))
}

/// Per key, the WAL position a reader must have replayed.
#[derive(Debug, Default)]
pub struct LsnMap {
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    lsn: Lsn,
    used: Instant,
}

impl LsnMap {
    /// The position `key` must see; `None` for a key never recorded (or
    /// forgotten).
    pub fn get(&self, key: &str) -> Option<Lsn> {
        let mut entries = self.entries.lock();
        let entry = entries.get_mut(key)?;
        entry.used = Instant::now();
        Some(entry.lsn)
    }

    /// Raises `key`'s position to `lsn` (never lowers it).
    pub fn raise(&self, key: &str, lsn: Lsn) {
        let mut entries = self.entries.lock();
        let used = Instant::now();
        entries
            .entry(key.to_string())
            .and_modify(|e| {
                *e = Entry {
                    lsn: e.lsn.max(lsn),
                    used,
                }
            })
            .or_insert(Entry { lsn, used });
    }

    /// Forgets `key` (its session ended).
    pub fn forget(&self, key: &str) {
        self.entries.lock().remove(key);
    }

    /// Drops the entries not used for `idle` (their sessions expired).
    pub fn prune(&self, idle: Duration) {
        self.entries.lock().retain(|_, e| e.used.elapsed() < idle);
    }

    /// Keys recorded now.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_only_rises_and_ends_with_its_session() {
        let map = LsnMap::default();
        assert_eq!(map.get("s"), None);
        map.raise("s", 10);
        map.raise("s", 5);
        assert_eq!(map.get("s"), Some(10));
        map.forget("s");
        assert_eq!(map.get("s"), None);
        map.raise("t", 1);
        map.prune(Duration::ZERO);
        assert_eq!(map.len(), 0);
    }
}
