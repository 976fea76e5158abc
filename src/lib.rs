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
//!   method table, admission to the bounded queue, the fixed workers, and
//!   the reply to each database failure.
//! - `auth`: who may call — password hashes, session keys, the login
//!   limiter, sessions kept in PostgreSQL, schema `blitz`'s migrations, and
//!   user administration ([`Admin`]).
//! - `db`: the pool and this instance's share of the connection budget
//!   that gates it, the one SQLSTATE mapping to a typed failure, acquiring a
//!   connection under a request's deadline, database health, the statement
//!   watchdog, the catalogue of callable functions ([`catalog`]),
//!   idempotency records, and the chores of the housekeeping connection.
//! - `cluster`: the instances sharing one database — the registry, the
//!   split of the one connection budget (it sets the share in `db`), the
//!   housekeeper that runs the chores.
//! - `client`: the thin client library behind the `blitz` command
//!   ([`Client`]): retries within a shared budget, failover, sessions.
//! - `logging`: one log line per burst, not per event.
//!
//! The load generator behind `blitz bench` lives in the `blitz` binary.
//!
//! The modules are layers, each using only those below it
//! (`tests/layout.rs` checks it, and that no files import each other round
//! a cycle). Bottom up: `logging`; `protocol` and `config`; `db`;
//! `cluster` and `auth`; `server`. `client` stands on `protocol` alone.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod auth;
mod cluster;
mod config;
mod db;
mod logging;
mod server;
#[cfg(test)]
#[path = "../tests/support/certs.rs"]
mod test_certs;

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
pub use server::signals::spawn_signal_thread;
pub use server::tls::{ServerTls, TlsError, TlsFiles};
pub use server::{raise_fd_limit, Server};

/// The scale-out registry as a test or an embedder drives it: an
/// instance's membership and its shares of the primary's and the standbys'
/// connection budgets, and schema `blitz`'s migrations.
pub mod scaleout {
    pub use crate::auth::migrations::migrate;
    pub use crate::cluster::{Cluster, Identity, Round, Standing, Timing};
    pub use crate::db::{Share, StandbyShare};
}

/// The catalogue of callable functions: what blitz learns from `pg_proc` and
/// how it binds JSON params to a function's arguments without injection.
pub mod catalog {
    pub use crate::db::catalog::{Catalog, ParamError, PreparedCall, ResultShape};
}
