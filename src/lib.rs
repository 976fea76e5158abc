//! blitz: an application server that stands between many JSON-RPC clients and
//! one PostgreSQL database, keeps exactly `db.pool_size` transactions active,
//! queues the rest in a bounded FIFO, and refuses the overflow with a typed,
//! retryable error instead of dropping connections.
//!
//! The modules, one per noun of the design (see ARCHITECTURE.md in the README):
//!
//! - [`config`]: defaults + `conf/blitz.toml` + `BLITZ_*` env + flags → a
//!   validated [`config::Config`].
//! - [`db`]: the r2d2 pool of PostgreSQL connections, the startup checks
//!   against the database, and the one place SQLSTATEs become JSON-RPC errors.

pub mod config;
pub mod db;
