//! [`Context`]: what the methods share — the configuration, the database,
//! the standbys, the catalogue, sessions, the queue (for `sys.status`), counters and the
//! lifecycle. Only the methods and the router's dispatch see it; the
//! queue, the workers and a connection are given the handles they need.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::admission::Dispatcher;
use super::failure::failure_reply;
use super::router::registry::Registry;
use super::shutdown::Shutdown;
use super::stats::Stats;
use crate::auth::sessions::Sessions;
use crate::auth::LoginLimiter;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::db::catalog::{Catalog, CatalogCache};
use crate::db::replica::Replicas;
use crate::db::{Database, DbConn, Deadline, Failure, Lease, PooledConn};
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
    /// The hot standbys (`db.replica_urls`; none: every call on the
    /// primary) and the sessions' positions.
    pub replicas: Arc<Replicas>,
    /// This instance's membership: its share of the budget, the registry.
    pub cluster: Arc<Cluster>,
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
        let reply = |failure| self.failure_reply(failure, deadline, 1);
        let mut conn = self.db.acquire(deadline).map_err(reply)?;
        self.sessions
            .ensure_schema(conn.client())
            .map_err(|e| reply(self.db.classify(&mut conn, &e, None)))?;
        Ok(conn)
    }

    /// [`Database::with_db`] under this server's drain deadline; a failure
    /// becomes its reply.
    pub fn with_db<T>(
        &self,
        conn: &mut PooledConn,
        deadline: &Deadline,
        work: impl FnOnce(&mut DbConn) -> Result<T, postgres::Error>,
    ) -> Result<T, RpcError> {
        let drain = self.shutdown.drain_deadline();
        self.db
            .with_db(conn, deadline, drain, work)
            .map_err(|failure| self.failure_reply(failure, deadline, 1))
    }

    /// The reply for a database failure of a request (after `attempts`).
    pub fn failure_reply(&self, failure: Failure, deadline: &Deadline, attempts: u32) -> RpcError {
        failure_reply(&self.db, failure, deadline, attempts)
    }

    /// [`CatalogCache::get`]: the catalogue, loaded with `conn` if it never was.
    pub fn catalog_loaded(
        &self,
        conn: &mut PooledConn,
        deadline: &Deadline,
    ) -> Result<Arc<Catalog>, RpcError> {
        let loaded = self.catalog.get(&self.db, conn);
        loaded.map_err(|failure| self.failure_reply(failure, deadline, 1))
    }

    /// [`CatalogCache::refreshed`]: the catalogue, reloaded first unless
    /// that happened within the last second.
    pub fn catalog_refreshed(
        &self,
        conn: &mut PooledConn,
        deadline: &Deadline,
    ) -> Result<Arc<Catalog>, RpcError> {
        let loaded = self.catalog.refreshed(&self.db, conn);
        loaded.map_err(|failure| self.failure_reply(failure, deadline, 1))
    }
}
