//! The database side of the pipeline: the pool ([`pool`]), whether the
//! database answers ([`health`]), the one SQLSTATE mapping ([`sqlstate`]),
//! a request's [`Deadline`] and the acquire/run plumbing under it
//! ([`acquire`]), the statement [`watchdog`], and the [`catalog`] of
//! callable functions.

mod acquire;
pub mod catalog;
mod deadline;
mod health;
mod pool;
pub mod sqlstate;
mod watchdog;

pub use acquire::Database;
pub use deadline::Deadline;
pub use health::Health;
pub use pool::{build_pool, connect_config, DbConn, PooledConn};
pub use sqlstate::Failure;
pub use watchdog::CancelReason;

use postgres::NoTls;

use crate::config::{redact_url, Config, ConfigError};

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
    // One connection beyond the pool: the session writer's (auth/sessions.rs).
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
