//! The database side: the r2d2 pool of PostgreSQL connections and the checks
//! made against the database at start.

use std::str::FromStr;
use std::time::Duration;

use r2d2_postgres::postgres::{self, NoTls};
use r2d2_postgres::PostgresConnectionManager;

use crate::config::{redact_url, Config, ConfigError};

/// The connection pool type used throughout blitz.
pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// A connection borrowed from the [`Pool`].
pub type PooledClient = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

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
pub fn build_pool(config: &Config) -> Pool {
    let manager = PostgresConnectionManager::new(connect_config(config), NoTls);
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
    if config.db.pool_size > usable {
        return Err(ConfigError(format!(
            "config key db.pool_size = {}: larger than the database's max_connections {} \
             minus db.reserved_connections {} = {usable}; lower db.pool_size or raise max_connections",
            config.db.pool_size, max_connections, config.db.reserved_connections
        )));
    }
    Ok(Some(max_connections))
}
