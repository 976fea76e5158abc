//! blitz: an application server that stands between many JSON-RPC clients and
//! one PostgreSQL database, keeps exactly `db.pool_size` transactions active,
//! queues the rest in a bounded FIFO, and refuses the overflow with a typed,
//! retryable error instead of dropping connections.
//!
//! A request's path through the modules, one per noun of the design:
//!
//! - [`config`]: defaults + `conf/blitz.toml` + `BLITZ_*` env + flags → a
//!   validated [`config::Config`].
//! - [`server`]: the shared [`server::Context`] and the lifecycle: bind,
//!   serve, drain on Ctrl-C/SIGTERM, close.
//! - [`router`]: the accept loop and one small-stack reader thread per
//!   connection; connection limits, line size limit, idle timeout.
//! - [`protocol`]: JSON-RPC 2.0 parsing and rendering, line framing, and the
//!   contract's error codes.
//! - [`connection`]: a connection's write side and the [`connection::Responder`]
//!   that guarantees every request read exactly one reply.
//! - [`services`]: which method goes where (`sys.*` on the router thread,
//!   `api.*`, `session.*` and `rpc.discover` through the queue), who may
//!   call it, and the methods themselves.
//! - [`sessions`]: sessions kept in PostgreSQL so any instance serves any
//!   session; the caller's identity inside each call's transaction.
//! - [`auth`]: argon2id password hashes, session keys, the failed-login limiter.
//! - [`schema`]: the server's own tables in schema `blitz`, as versioned
//!   migrations applied at start.
//! - [`admin`]: `blitz-server user add|passwd|disable|list`.
//! - [`dispatch`]: admission control, the bounded FIFO queue, the worker
//!   threads, and deadlines.
//! - [`catalog`]: the functions of the api schema learned from pg_proc, and
//!   the typed, injection-free binding of JSON params to them.
//! - [`db`]: the r2d2 pool with a statement cache per connection, startup
//!   checks, outage logging, and [`db::classify`], the one SQLSTATE mapping.
//! - [`watchdog`]: cancels a running statement at its deadline.
//! - [`stats`]: counters, completion rate and latency percentiles.
//! - [`shutdown`]: the running → draining → stopped state.
//! - [`client`]: the thin client library behind the `blitz` command:
//!   retries within a shared budget, failover between instances, sessions.

//! - [`bench`](mod@bench): the load generator behind `blitz bench` (closed and open
//!   loop, HdrHistogram latencies, goodput, server CPU per call).

pub mod admin;
pub mod auth;
pub mod bench;
pub mod catalog;
pub mod client;
pub mod config;
pub mod connection;
pub mod db;
pub mod dispatch;
pub mod protocol;
pub mod router;
pub mod schema;
pub mod server;
pub mod services;
pub mod sessions;
pub mod shutdown;
pub mod stats;
pub mod watchdog;
