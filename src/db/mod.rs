//! The database side of the pipeline: the pool ([`pool`]) and this
//! instance's [`share`] of the connection budget that gates it, whether
//! the database answers ([`health`]), the one SQLSTATE mapping
//! ([`sqlstate`]) to a typed [`Failure`], a request's [`Deadline`] and the
//! acquire/run plumbing under it ([`acquire`]), the concurrency
//! [`limit`], the statement [`watchdog`], the [`catalog`] of callable functions, the
//! [`idempotency`] records of keyed calls, the [`chore`] trait of
//! background work on the housekeeping connection, and TLS to PostgreSQL
//! as `db.url`'s `sslmode` says (`tls`).
//!
//! `db` stands on `config` (and on `protocol` for the replies idempotency
//! records keep); it knows nothing of the server, the cluster or sessions:
//! the cluster sets the [`Share`] and enlists new connections through
//! [`Registration`], and the server turns a [`Failure`] into its reply.

mod acquire;
pub mod catalog;
mod chore;
mod deadline;
mod health;
pub mod idempotency;
pub mod limit;
mod pool;
pub mod replica;
mod share;
pub mod sqlstate;
mod tls;
mod watchdog;

pub use acquire::{Database, Lease};
pub use chore::Chore;
pub use deadline::Deadline;
pub use health::Health;
pub use limit::Limiter;
pub use pool::{build_pool, trim, Connector, DbConn, PooledConn, Registration, StatementKey};
pub use share::{Share, StandbyShare};
pub use sqlstate::Failure;
pub use watchdog::CancelReason;
