//! The r2d2 pool of PostgreSQL connections: each [`DbConn`] keeps its own
//! prepared-statement cache and a "broken" flag the pool honours, and knows
//! whether it was opened before the last outage.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Statement};
use r2d2_postgres::PostgresConnectionManager;
use serde_json::Value;

use super::health::Health;
use crate::config::Config;

/// The connection pool type used throughout blitz.
pub type Pool = r2d2::Pool<Manager>;

/// A connection borrowed from the [`Pool`].
pub type PooledConn = r2d2::PooledConnection<Manager>;

/// Prepared statements kept per connection before the cache is emptied.
const STATEMENT_CACHE_LIMIT: usize = 512;

/// One PostgreSQL connection with its prepared-statement cache.
pub struct DbConn {
    client: Client,
    statements: HashMap<String, Statement>,
    broken: bool,
    outage_epoch: u64,
}

impl DbConn {
    /// The underlying client, for statements outside the cache.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Runs `sql` (prepared once per connection with `types`, then reused)
    /// and returns the first column of the first row as JSON (`None` for no
    /// row or SQL NULL). With a cached statement this is one round trip.
    pub fn query_json(
        &mut self,
        sql: &str,
        types: &[Type],
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Value>, postgres::Error> {
        let statement = match self.statements.get(sql) {
            Some(s) => s.clone(),
            None => {
                let s = self.client.prepare_typed(sql, types)?;
                if self.statements.len() >= STATEMENT_CACHE_LIMIT {
                    self.statements.clear();
                }
                self.statements.insert(sql.to_string(), s.clone());
                s
            }
        };
        let rows = self.client.query(&statement, params)?;
        Ok(rows.first().and_then(|r| r.get::<_, Option<Value>>(0)))
    }

    /// Forgets every cached statement (after a function changed shape).
    pub fn forget_statements(&mut self) {
        self.statements.clear();
    }

    /// Makes the pool drop this connection instead of reusing it.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Whether this connection was opened before the last database outage
    /// began (it is then most likely dead, though it does not know yet).
    pub fn predates_outage(&self, health: &Health) -> bool {
        self.outage_epoch < health.epoch()
    }

    /// A token to cancel the statement running on this connection.
    pub fn cancel_token(&self) -> postgres::CancelToken {
        self.client.cancel_token()
    }
}

/// r2d2 manager: r2d2_postgres's connection manager plus a statement cache
/// and a "broken" flag per connection.
#[derive(Debug)]
pub struct Manager {
    inner: PostgresConnectionManager<NoTls>,
    health: Arc<Health>,
}

impl r2d2::ManageConnection for Manager {
    type Connection = DbConn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<DbConn, postgres::Error> {
        let outage_epoch = self.health.epoch();
        self.inner.connect().map(|client| DbConn {
            client,
            statements: HashMap::new(),
            broken: false,
            outage_epoch,
        })
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), postgres::Error> {
        self.inner.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        conn.broken || conn.client.is_closed()
    }
}

/// The libpq-style connection settings for `config`, with the connect
/// timeout, TCP keepalives and TCP user timeout that keep a dead or
/// unreachable database from hanging a worker.
pub fn connect_config(config: &Config) -> postgres::Config {
    let mut pg = postgres::Config::from_str(&config.db.url)
        .expect("db.url was validated when the config was loaded");
    let connect_timeout = Duration::from_secs(config.db.connect_timeout_s);
    pg.connect_timeout(connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(connect_timeout.max(Duration::from_secs(10)));
    if pg.get_application_name().is_none() {
        pg.application_name("blitz");
    }
    pg
}

/// Builds the pool of `db.pool_size` connections without waiting for the
/// database: the server starts while it is down and connects when it returns.
pub fn build_pool(config: &Config, health: Arc<Health>) -> Pool {
    let manager = Manager {
        inner: PostgresConnectionManager::new(connect_config(config), NoTls),
        health,
    };
    let size = config.db.pool_size as u32;
    r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(size))
        // r2d2's check-out test costs one round trip per call; a broken
        // connection is caught by `has_broken` and by the call's own error.
        .test_on_check_out(false)
        .connection_timeout(Duration::from_millis(config.db.acquire_timeout_ms))
        .error_handler(Box::new(PoolErrorLog))
        .build_unchecked(manager)
}

/// Logs connection failures at most once per outage rather than per attempt.
#[derive(Debug)]
struct PoolErrorLog;

impl r2d2::HandleError<postgres::Error> for PoolErrorLog {
    fn handle_error(&self, error: postgres::Error) {
        log::debug!("database connection attempt failed: {error}");
    }
}
