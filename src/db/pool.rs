//! The r2d2 pool of PostgreSQL connections: each [`DbConn`] keeps its own
//! prepared-statement caches and a "broken" flag the pool honours, and knows
//! whether it was opened before the last outage.
//!
//! The pool obeys this instance's [`Share`] of the connection budget: it
//! opens connections only on demand, never more than the share (the
//! manager takes an open slot before connecting), each new connection
//! enlists in the instance's [`Registration`] (its shared advisory lock,
//! kept by `cluster`) before it is used, and a connection given back while
//! more are open than the share allows is closed.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use postgres::types::{Json, ToSql, Type};
use postgres::{Client, Row, Statement};
use r2d2_postgres::PostgresConnectionManager;
use serde_json::value::RawValue;
use serde_json::Value;

use super::health::Health;
use super::share::{OpenSlot, Share};
use super::tls::{self, PgTlsConnector};
use crate::config::Config;

/// The connection pool type used throughout blitz.
pub type Pool = r2d2::Pool<Manager>;

/// A connection borrowed from the [`Pool`].
pub type PooledConn = r2d2::PooledConnection<Manager>;

/// Prepared statements kept per connection before the cache is emptied.
const STATEMENT_CACHE_LIMIT: usize = 512;

/// Names one statement of an api call without its text: the function, the
/// shape of the call (which arguments, how passed: the catalogue's
/// `PreparedCall::shape`) and how it is wrapped (`wrapping`: session,
/// idempotency key, role; the caller's own numbering). The same key always
/// stands for the same SQL text on every connection of a process, so a
/// statement found under it is reused without building or hashing the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatementKey {
    /// The called function's `pg_proc` OID.
    pub function: u32,
    /// Which arguments the call passes, and how.
    pub shape: u128,
    /// How the call's statement is wrapped.
    pub wrapping: u8,
}

/// One PostgreSQL connection with its prepared-statement caches.
pub struct DbConn {
    client: Client,
    /// Statements by their SQL text.
    statements: HashMap<String, Statement>,
    /// Statements of api calls, by [`StatementKey`].
    calls: HashMap<StatementKey, Statement>,
    broken: bool,
    outage_epoch: u64,
    /// Counts this connection against the share until it is closed.
    _slot: OpenSlot,
}

/// The statement cached under `key` in `cache`, or the one `prepare`
/// makes (with the key to keep it under), kept; the cache is emptied when
/// it holds [`STATEMENT_CACHE_LIMIT`] statements.
fn cached<K, Q>(
    cache: &mut HashMap<K, Statement>,
    key: &Q,
    prepare: impl FnOnce(&Q) -> Result<(K, Statement), postgres::Error>,
) -> Result<Statement, postgres::Error>
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(s) = cache.get(key) {
        return Ok(s.clone());
    }
    let (owned, statement) = prepare(key)?;
    if cache.len() >= STATEMENT_CACHE_LIMIT {
        cache.clear();
    }
    cache.insert(owned, statement.clone());
    Ok(statement)
}

impl DbConn {
    /// The underlying client, for statements outside the cache.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Runs `sql` (prepared once per connection with `types`, then reused)
    /// and returns its first row, if any. With a cached statement this is
    /// one round trip.
    pub fn query_opt(
        &mut self,
        sql: &str,
        types: &[Type],
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let client = &mut self.client;
        let statement = cached(&mut self.statements, sql, |sql| {
            Ok((sql.to_string(), client.prepare_typed(sql, types)?))
        })?;
        Ok(self.client.query(&statement, params)?.into_iter().next())
    }

    /// [`DbConn::query_opt`], returning the first column of the first row
    /// as JSON (`None` for no row or SQL NULL).
    pub fn query_json(
        &mut self,
        sql: &str,
        types: &[Type],
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Value>, postgres::Error> {
        let row = self.query_opt(sql, types, params)?;
        Ok(row.and_then(|r| r.get::<_, Option<Value>>(0)))
    }

    /// Runs the api call statement named `key` (prepared once per
    /// connection from the SQL text and parameter types `statement` gives,
    /// then reused) and returns the first column of the first row as JSON
    /// text, checked but not parsed into a value (`None` for no row or SQL
    /// NULL). With a cached statement this is one round trip.
    pub fn query_raw_json(
        &mut self,
        key: StatementKey,
        statement: impl FnOnce() -> (String, Vec<Type>),
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Box<RawValue>>, postgres::Error> {
        let client = &mut self.client;
        let statement = cached(&mut self.calls, &key, |&key| {
            let (sql, types) = statement();
            Ok((key, client.prepare_typed(&sql, &types)?))
        })?;
        let rows = self.client.query(&statement, params)?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let text: Option<Json<Box<RawValue>>> = row.try_get(0)?;
        Ok(text.map(|Json(raw)| raw))
    }

    /// Forgets every cached statement (after a function changed shape).
    pub fn forget_statements(&mut self) {
        self.statements.clear();
        self.calls.clear();
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

/// This instance's registration in the connection budget, as the pool
/// needs it: every new connection enlists before it is used.
pub trait Registration: Send + Sync + std::fmt::Debug {
    /// Takes this instance's lock on `client`, a new connection, and checks
    /// that the instance is still registered; `false` when it is not.
    fn enlist(&self, client: &mut Client) -> Result<bool, postgres::Error>;
}

/// r2d2 manager: r2d2_postgres's connection manager plus a statement
/// cache, a "broken" flag per connection, and the share's cap.
pub struct Manager {
    inner: PostgresConnectionManager<PgTlsConnector>,
    health: Arc<Health>,
    share: Arc<Share>,
    registration: Arc<dyn Registration>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

/// Why the pool could not open a connection.
#[derive(Debug)]
pub enum ConnectError {
    /// PostgreSQL refused or did not answer.
    Db(postgres::Error),
    /// The share of the connection budget is used up, or this instance is
    /// not (or no longer) registered.
    Budget(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Db(e) => write!(f, "{e}"),
            ConnectError::Budget(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ConnectError {}

impl r2d2::ManageConnection for Manager {
    type Connection = DbConn;
    type Error = ConnectError;

    fn connect(&self) -> Result<DbConn, ConnectError> {
        let share = &self.share;
        let slot = share.open_slot().ok_or_else(|| {
            ConnectError::Budget(format!(
                "this instance's share of the connection budget ({} connections) is in use",
                share.limit()
            ))
        })?;
        let outage_epoch = self.health.epoch();
        let mut client = self.inner.connect().map_err(ConnectError::Db)?;
        if !self
            .registration
            .enlist(&mut client)
            .map_err(ConnectError::Db)?
        {
            return Err(ConnectError::Budget(
                "this instance is not registered in the connection budget (yet)".into(),
            ));
        }
        Ok(DbConn {
            client,
            statements: HashMap::new(),
            calls: HashMap::new(),
            broken: false,
            outage_epoch,
            _slot: slot,
        })
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), ConnectError> {
        self.inner
            .is_valid(&mut conn.client)
            .map_err(ConnectError::Db)
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        conn.broken || conn.client.is_closed() || self.share.over_limit()
    }
}

/// The libpq-style connection settings of `url` (`db.url` or a replica's,
/// validated with the config), with `config`'s connect timeout, TCP
/// keepalives and TCP user timeout that keep a dead or unreachable
/// database from hanging a worker.
fn connect_config(config: &Config, db_tls: &crate::config::PgTls) -> postgres::Config {
    let mut pg = postgres::Config::from_str(&db_tls.url)
        .expect("database URLs were validated when the config was loaded");
    pg.ssl_mode(tls::ssl_mode(db_tls.mode));
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

/// How to open one connection to PostgreSQL: the settings of `db.url` (or
/// a replica's URL) and the TLS its `sslmode` asks for.
#[derive(Clone)]
pub struct Connector {
    /// The connection settings: the URL's, with timeouts and keepalives.
    pub settings: postgres::Config,
    tls: PgTlsConnector,
    db_tls: crate::config::PgTls,
}

impl Connector {
    /// The connector of `config`'s database (`db.url`).
    pub fn new(config: &Config) -> Connector {
        Connector::for_url(config, &config.db.url)
    }

    /// The connector of the database at `url` (a validated URL of
    /// `config`: `db.url` or one of `db.replica_urls`).
    pub fn for_url(config: &Config, url: &str) -> Connector {
        let db_tls = tls::pg_tls(url);
        Connector {
            settings: connect_config(config, &db_tls),
            tls: tls::connector(&db_tls),
            db_tls,
        }
    }

    /// Makes every transaction of these connections read-only
    /// (`default_transaction_read_only`, sent at connect with the URL's
    /// own `options`): what a hot standby's connections are, so that a
    /// standby promoted behind blitz's back takes no write from them.
    pub fn read_only(mut self) -> Connector {
        let options = match self.settings.get_options() {
            Some(own) => format!("{own} -c default_transaction_read_only=on"),
            None => "-c default_transaction_read_only=on".to_string(),
        };
        self.settings.options(&options);
        self
    }

    /// Opens a connection.
    pub fn connect(&self) -> Result<Client, postgres::Error> {
        self.settings.connect(self.tls.clone())
    }

    /// When `e` is a failed verification of the server's certificate, a
    /// message saying so.
    pub fn verification_failure(&self, e: &postgres::Error) -> Option<String> {
        tls::verification_failure(e, &self.db_tls)
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("settings", &self.settings)
            .field("db_tls", &self.db_tls)
            .finish_non_exhaustive()
    }
}

/// Builds the pool of at most `db.pool_size` connections opened by
/// `connector` (the primary's, or a standby's) without waiting for the
/// database: connections are opened on demand, within `share`, each
/// enlisted in `registration`, so the server starts while the database is
/// down.
pub fn build_pool(
    config: &Config,
    connector: Connector,
    health: Arc<Health>,
    share: Arc<Share>,
    registration: Arc<dyn Registration>,
) -> Pool {
    let manager = Manager {
        inner: PostgresConnectionManager::new(connector.settings, connector.tls),
        health,
        share,
        registration,
    };
    r2d2::Pool::builder()
        .max_size(config.db.pool_size as u32)
        // Opened on demand only: r2d2 must not reopen what the share closed.
        .min_idle(Some(0))
        // r2d2's check-out test costs one round trip per call; a broken
        // connection is caught by `has_broken` and by the call's own error.
        .test_on_check_out(false)
        .connection_timeout(Duration::from_millis(config.db.acquire_timeout_ms))
        .error_handler(Box::new(PoolErrorLog))
        .build_unchecked(manager)
}

/// Closes idle connections while more are open than the share keeps
/// ([`Share::keep_target`]: the share, or the concurrency limit when lower).
pub fn trim(pool: &Pool, share: &Share) {
    while share.open() > share.keep_target() {
        match pool.try_get() {
            Some(mut conn) => conn.mark_broken(), // dropped here: closed, not kept
            None => return,
        }
    }
}

/// Logs connection failures at most once per outage rather than per attempt.
#[derive(Debug)]
struct PoolErrorLog;

impl r2d2::HandleError<ConnectError> for PoolErrorLog {
    fn handle_error(&self, error: ConnectError) {
        log::debug!("database connection attempt failed: {error}");
    }
}
