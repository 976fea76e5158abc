//! [`Context`]: what the methods share — the configuration, the database,
//! the catalogue, sessions, the queue (for `sys.status`), counters and the
//! lifecycle. Only the methods and the router's dispatch see it; the
//! queue, the workers and a connection are given the handles they need.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::admission::Dispatcher;
use super::router::registry::Registry;
use super::shutdown::Shutdown;
use super::stats::Stats;
use crate::auth::sessions::Sessions;
use crate::auth::LoginLimiter;
use crate::config::Config;
use crate::db::catalog::CatalogCache;
use crate::db::{Database, Deadline, Lease, PooledConn};
use crate::protocol::RpcError;

/// Everything the methods share.
pub struct Context {
    /// The effective configuration.
    pub config: Config,
    /// This instance's name (`host:port`), reported in -32001 and `sys.status`.
    pub instance: String,
    /// Counters and latencies.
    pub stats: Arc<Stats>,
    /// Lifecycle state.
    pub shutdown: Arc<Shutdown>,
    /// The bounded queue.
    pub dispatcher: Dispatcher,
    /// The database connections, their health and the statement watchdog.
    pub db: Database,
    /// The `api.` functions known from pg_proc.
    pub catalog: CatalogCache,
    /// Open client connections.
    pub connections: Arc<Registry>,
    /// Session state: schema readiness, `last_used` batching.
    pub sessions: Arc<Sessions>,
    /// Failed logins per user and peer address.
    pub login_limiter: LoginLimiter,
    /// The `sys.ping` result, rendered once (the router answers from it).
    pub ping_result: Box<RawValue>,
}

impl Context {
    /// A pooled connection for a request, with schema `blitz` current.
    pub fn acquire(&self, deadline: &Deadline) -> Result<Lease, RpcError> {
        let mut conn = self.db.acquire(deadline)?;
        self.sessions.ensure_schema(conn.client()).map_err(|e| {
            let failure = self.db.classify(&mut conn, &e, None);
            self.db.failure_reply(failure, deadline, 1)
        })?;
        Ok(conn)
    }

    /// [`Database::with_db`] under this server's drain deadline.
    pub fn with_db<T>(
        &self,
        conn: &mut PooledConn,
        deadline: &Deadline,
        work: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, RpcError> {
        let drain = self.shutdown.drain_deadline();
        self.db.with_db(conn, deadline, drain, work)
    }
}
