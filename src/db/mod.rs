//! The database side of the pipeline: the pool ([`pool`]), whether the
//! database answers ([`health`]), the one SQLSTATE mapping ([`sqlstate`]),
//! a request's [`Deadline`] and the acquire/run plumbing under it
//! ([`acquire`]), the concurrency [`limit`], the statement [`watchdog`], the [`catalog`] of
//! callable functions, and the [`idempotency`] records of keyed calls.

mod acquire;
pub mod catalog;
mod deadline;
mod health;
pub mod idempotency;
pub mod limit;
mod pool;
pub mod sqlstate;
mod watchdog;

pub use acquire::{Database, Lease};
pub use deadline::Deadline;
pub use health::Health;
pub use limit::Limiter;
pub use pool::{build_pool, connect_config, trim, DbConn, PooledConn};
pub use sqlstate::Failure;
pub use watchdog::CancelReason;
