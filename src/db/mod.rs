//! The database side of the pipeline: the pool ([`pool`]), whether the
//! database answers ([`health`]), the one SQLSTATE mapping ([`sqlstate`]),
//! a request's [`Deadline`] and the acquire/run plumbing under it
//! ([`acquire`]), the statement [`watchdog`], the [`catalog`] of
//! callable functions, the [`idempotency`] records of keyed calls, and
//! TLS to PostgreSQL as `db.url`'s `sslmode` says (`tls`).

mod acquire;
pub mod catalog;
mod deadline;
mod health;
pub mod idempotency;
mod pool;
pub mod sqlstate;
mod tls;
mod watchdog;

pub use acquire::{Database, Lease};
pub use deadline::Deadline;
pub use health::Health;
pub use pool::{build_pool, trim, Connector, DbConn, PooledConn};
pub use sqlstate::Failure;
pub use watchdog::CancelReason;
