//! [`CatalogCache`]: the catalogue shared by all workers, loaded on first
//! use and reloaded (at most once a second) when a call names a function it
//! does not know.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::Catalog;
use crate::db::{Database, Failure, PooledConn};

/// Shortest time between two catalogue reloads.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The catalogue of callable functions, shared by all workers.
pub struct CatalogCache {
    schema: String,
    current: RwLock<Option<Arc<Catalog>>>,
    last_load: Mutex<Option<Instant>>,
}

impl CatalogCache {
    /// An empty cache for `schema`; nothing is loaded until first use.
    pub fn new(schema: &str) -> CatalogCache {
        CatalogCache {
            schema: schema.to_string(),
            current: RwLock::new(None),
            last_load: Mutex::new(None),
        }
    }

    /// Functions currently known.
    pub fn len(&self) -> usize {
        self.current.read().as_ref().map_or(0, |c| c.len())
    }

    /// The catalogue as last loaded; `None` before the first load.
    pub fn current(&self) -> Option<Arc<Catalog>> {
        self.current.read().clone()
    }

    /// Whether no function is known (or nothing was loaded yet).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The catalogue, loaded with `conn` if it never was.
    pub fn get(&self, db: &Database, conn: &mut PooledConn) -> Result<Arc<Catalog>, Failure> {
        if let Some(c) = self.current.read().clone() {
            return Ok(c);
        }
        // The first callers all get here; one loads, the others reuse its load.
        self.reload(db, conn, Duration::MAX)
    }

    /// The catalogue, reloaded first unless that happened within the last second.
    pub fn refreshed(&self, db: &Database, conn: &mut PooledConn) -> Result<Arc<Catalog>, Failure> {
        self.reload(db, conn, RELOAD_INTERVAL)
    }

    /// Makes the next lookup reload (a function disappeared).
    pub fn invalidate(&self) {
        *self.last_load.lock() = None;
    }

    fn reload(
        &self,
        db: &Database,
        conn: &mut PooledConn,
        min_interval: Duration,
    ) -> Result<Arc<Catalog>, Failure> {
        let mut last = self.last_load.lock();
        let current = self.current.read().clone();
        if let (Some(c), Some(t)) = (&current, *last) {
            if t.elapsed() < min_interval {
                return Ok(c.clone());
            }
        }
        let loaded =
            Catalog::load(conn.client(), &self.schema).map_err(|e| db.classify(conn, &e, None))?;
        let loaded = Arc::new(loaded);
        *last = Some(Instant::now());
        *self.current.write() = Some(loaded.clone());
        Ok(loaded)
    }
}
