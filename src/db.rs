//! The database side: the r2d2 pool of PostgreSQL connections, each with
//! its own prepared-statement cache; the checks made against the database at
//! start; and [`classify`], the one place a PostgreSQL error (SQLSTATE) is
//! turned into what the caller does next.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Statement};
use r2d2_postgres::PostgresConnectionManager;
use serde_json::Value;

use crate::config::{redact_url, Config, ConfigError};
use crate::protocol::RpcError;
use crate::watchdog::CancelReason;

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
    health: std::sync::Arc<Health>,
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

/// Whether the database answers, logged once per outage (not per request).
#[derive(Debug, Default)]
pub struct Health {
    epoch: std::sync::atomic::AtomicU64,
    down: std::sync::atomic::AtomicBool,
    since: parking_lot::Mutex<Option<std::time::Instant>>,
}

impl Health {
    /// Records a failure to reach the database; logs when an outage starts.
    pub fn report_down(&self, detail: &str) {
        use std::sync::atomic::Ordering;
        if !self.down.swap(true, Ordering::AcqRel) {
            self.epoch.fetch_add(1, Ordering::AcqRel);
            *self.since.lock() = Some(std::time::Instant::now());
            log::warn!("database unavailable: {detail}; answering -32004 until it is back");
        }
    }

    /// Records a successful statement; logs when an outage ends.
    pub fn report_up(&self) {
        use std::sync::atomic::Ordering;
        if self.down.load(Ordering::Acquire) && self.down.swap(false, Ordering::AcqRel) {
            let lasted = self
                .since
                .lock()
                .take()
                .map(|t| t.elapsed().as_secs_f64())
                .unwrap_or(0.0);
            log::info!("database available again after {lasted:.1} s");
        }
    }

    /// Outages seen so far; connections opened before the current value
    /// was reached predate an outage.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the last attempt failed.
    pub fn is_down(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// What a failed statement means for the caller.
#[derive(Debug)]
pub enum Failure {
    /// 40001 or 40P01: run the whole transaction again.
    Conflict(String),
    /// A cached plan no longer fits the function: re-prepare and run again.
    StalePlan,
    /// The connection is gone (-32004). `aborted` is true when PostgreSQL
    /// said so (the statement was rolled back, a retry is safe); false when
    /// the socket just broke mid-call (the outcome is unknown).
    ConnectionLost {
        /// What happened.
        detail: String,
        /// Whether the statement is known not to have committed.
        aborted: bool,
    },
    /// Our watchdog cancelled the statement.
    Cancelled(CancelReason),
    /// The function no longer exists (-32601 after a catalogue reload).
    UndefinedFunction,
    /// Anything else, already as the reply to send.
    Reply(RpcError),
}

/// The one place SQLSTATEs are mapped. `cancelled` says whether our
/// watchdog sent a cancel for this statement.
pub fn classify(error: &postgres::Error, cancelled: Option<CancelReason>) -> Failure {
    let Some(db) = error.as_db_error() else {
        if error.is_closed()
            || std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
        {
            return Failure::ConnectionLost {
                detail: error.to_string(),
                aborted: false,
            };
        }
        return Failure::Reply(RpcError::internal(format!(
            "database client error: {error}"
        )));
    };
    let state = db.code().code();
    match state {
        "40001" | "40P01" => Failure::Conflict(state.to_string()),
        "0A000" if db.message().contains("cached plan") => Failure::StalePlan,
        "26000" => Failure::StalePlan,
        "42501" => Failure::Reply(RpcError::permission_denied(db.message())),
        "BZ006" => Failure::Reply(RpcError::unauthenticated(db.message())), // from blitz.enter
        "42883" => Failure::UndefinedFunction,
        "57014" => match cancelled {
            Some(reason) => Failure::Cancelled(reason),
            None => Failure::Reply(RpcError::database_error(state, db.message())),
        },
        "57P01" | "57P02" | "57P03" | "53300" => Failure::ConnectionLost {
            detail: db.message().to_string(),
            aborted: true,
        },
        s if s.starts_with("08") => Failure::ConnectionLost {
            detail: db.message().to_string(),
            aborted: true,
        },
        _ => Failure::Reply(RpcError::database_error(state, db.message())),
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
pub fn build_pool(config: &Config, health: std::sync::Arc<Health>) -> Pool {
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

/// Connects once, outside the pool, and checks that `db.pool_size` fits the
/// database's `max_connections − db.reserved_connections`.
///
/// Returns `Ok(None)` when the database does not answer (the server starts
/// anyway), `Ok(Some(max_connections))` when the pool fits.
pub fn check_capacity(config: &Config) -> Result<Option<u64>, ConfigError> {
    let mut client = match connect_config(config).connect(NoTls) {
        Ok(c) => c,
        Err(e) => {
            log::warn!(
                "database {} does not answer yet ({e}); starting anyway, calls get -32004 until it does",
                redact_url(&config.db.url)
            );
            return Ok(None);
        }
    };
    let row = client
        .query_one("SELECT current_setting('max_connections')::int8", &[])
        .map_err(|e| ConfigError(format!("cannot read max_connections: {e}")))?;
    let max_connections = row.get::<_, i64>(0) as u64;
    let usable = max_connections.saturating_sub(config.db.reserved_connections);
    // One connection beyond the pool: the session writer's (sessions.rs).
    if config.db.pool_size + 1 > usable {
        return Err(ConfigError(format!(
            "config key db.pool_size = {}: with the session writer's connection, more than the \
             database's max_connections {} minus db.reserved_connections {} = {usable}; \
             lower db.pool_size or raise max_connections",
            config.db.pool_size, max_connections, config.db.reserved_connections
        )));
    }
    Ok(Some(max_connections))
}
