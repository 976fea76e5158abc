//! blitz: an application server that stands between many JSON-RPC clients and
//! one PostgreSQL database, keeps at most `db.pool_size` transactions active,
//! queues the rest in a bounded FIFO, and refuses the overflow with a typed,
//! retryable error instead of dropping connections.
//!
//! The modules, in the order a request passes through them:
//!
//! - `protocol`: the wire format shared by server, client and load
//!   generator — JSON-RPC messages, the contract's error codes, framing.
//! - `config`: defaults + `conf/blitz.toml` + `BLITZ_*` environment + flags
//!   → one validated [`Config`].
//! - `server`: the lifecycle ([`Server`]) and the pipeline's stages: the
//!   router (connections, framing, refusals on the router thread), the one
//!   method table, admission to the bounded queue, the fixed workers.
//! - `auth`: who may call — password hashes, session keys, the login
//!   limiter, sessions kept in PostgreSQL, schema `blitz`'s migrations, and
//!   user administration ([`Admin`]).
//! - `db`: the pool, the one SQLSTATE mapping, acquiring a connection under
//!   a request's deadline, database health, the statement watchdog, and the
//!   catalogue of callable functions ([`catalog`]).
//! - `cluster`: the instances sharing one database — the registry, the one
//!   connection budget and this instance's share of it, the housekeeper.
//! - `client`: the thin client library behind the `blitz` command
//!   ([`Client`]): retries within a shared budget, failover, sessions.
//! - `logging`: one log line per burst, not per event.
//!
//! The load generator behind `blitz bench` lives in the `blitz` binary.

#![warn(missing_docs)]

mod auth;
mod cluster;
mod config;
mod db;
mod logging;
mod server;

pub mod client;
pub mod protocol;

pub use auth::admin::{Admin, AdminError};
pub use auth::generate_password;
pub use client::{CallError, Client, ClientOptions};
pub use config::{
    physical_cores, ActiveLimit, AuthMode, Config, ConfigError, ConfigInputs, PoolSizeOrigin,
    Source,
};
pub use protocol::RpcError;
pub use server::{raise_fd_limit, Server};

/// The catalogue of callable functions: what blitz learns from `pg_proc` and
/// how it binds JSON params to a function's arguments without injection.
pub mod catalog {
    pub use crate::db::catalog::{Catalog, ParamError, PreparedCall, ResultShape};
}
