//! [`Database`]: the pool, its health and the watchdog, and the plumbing
//! every method uses to reach PostgreSQL under a request's [`Deadline`]:
//! borrow a connection ([`Database::acquire`]), run statements with the
//! watchdog armed ([`Database::guarded`], [`Database::with_db`]), and turn
//! a failure into its reply ([`Database::failure_reply`]).
//!
//! "A lost connection is dropped from the pool" lives here, in
//! [`Database::classify`], and nowhere else.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::deadline::Deadline;
use super::health::Health;
use super::limit::{LimitPermit, Limiter};
use super::pool::{DbConn, Pool, PooledConn};
use super::sqlstate::{self, Failure};
use super::watchdog::{CancelReason, Watchdog};
use crate::cluster::{Cluster, Permit};
use crate::protocol::RpcError;

/// A pooled connection borrowed under the concurrency limit and through
/// the share's gate: while it lives, it is one of the at most `limit`
/// (and `share`) connections this instance's workers hold. Given back
/// (then the gates open, and its hold time is recorded) when dropped.
pub struct Lease {
    conn: PooledConn,
    _permit: Permit,
    _held: LimitPermit,
}

impl Deref for Lease {
    type Target = PooledConn;
    fn deref(&self) -> &PooledConn {
        &self.conn
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut PooledConn {
        &mut self.conn
    }
}

/// How long [`Database::probe`] waits for a connection and for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// The database connections and what watches over them.
pub struct Database {
    /// The connections.
    pub pool: Pool,
    /// Up or down, logged once per outage.
    pub health: Arc<Health>,
    /// Cancels statements at their deadline.
    pub watchdog: Watchdog,
    /// `db.acquire_timeout_ms`.
    acquire_timeout: Duration,
    /// This instance's place in the connection budget.
    cluster: Arc<Cluster>,
    /// How many calls may hold a connection at once.
    limiter: Arc<Limiter>,
}

impl Database {
    /// Wraps `pool` (built with `health`).
    pub fn new(
        pool: Pool,
        health: Arc<Health>,
        acquire_timeout: Duration,
        cluster: Arc<Cluster>,
        limiter: Arc<Limiter>,
    ) -> Database {
        Database {
            pool,
            health,
            watchdog: Watchdog::start(),
            acquire_timeout,
            cluster,
            limiter,
        }
    }

    /// This instance's place in the connection budget.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The concurrency limit.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// The `retry_after_ms` of a -32004: the acquire timeout.
    fn retry_after_ms(&self) -> u64 {
        self.acquire_timeout.as_millis() as u64
    }

    /// Borrows a pooled connection under the concurrency limit (a permit of
    /// the [`Limiter`], its hold time counted from the connection in hand)
    /// and through the share's gate, then waits at most the acquire timeout
    /// or the time left before the deadline for the pool. Waiting at either
    /// gate is waiting for this instance's capacity,
    /// like waiting in the queue: it lasts up to the deadline (-32002
    /// then), never -32004, which says the database is unavailable. A
    /// connection opened before the last outage is dropped unused rather
    /// than failed on a call.
    pub fn acquire(&self, deadline: &Deadline) -> Result<Lease, RpcError> {
        self.limiter.set_share(self.cluster.share().limit());
        let Some(mut held) = self.limiter.acquire(deadline.remaining()) else {
            return Err(RpcError::deadline_exceeded(deadline.elapsed_ms()));
        };
        let Some(permit) = self.cluster.share().acquire(deadline.remaining()) else {
            return Err(RpcError::deadline_exceeded(deadline.elapsed_ms()));
        };
        let give_up = Instant::now() + self.acquire_timeout.min(deadline.remaining());
        loop {
            let remaining = deadline.remaining();
            let wait = give_up.saturating_duration_since(Instant::now());
            let mut conn = self.pool.get_timeout(wait).map_err(|e| {
                if remaining < self.acquire_timeout {
                    return RpcError::deadline_exceeded(deadline.elapsed_ms());
                }
                self.health.report_down(&e.to_string());
                RpcError::db_unavailable(self.retry_after_ms(), e.to_string())
            })?;
            if !conn.predates_outage(&self.health) {
                held.start_hold();
                return Ok(Lease {
                    conn,
                    _permit: permit,
                    _held: held,
                });
            }
            conn.mark_broken();
        }
    }

    /// Checks that the database answers (`SELECT 1` on an idle pooled
    /// connection, within [`PROBE_TIMEOUT`]) and reports it to
    /// [`Health`], so that health follows an outage when no call runs.
    /// With every connection lent to a worker it does nothing: the
    /// workers' own outcomes report the health then.
    pub fn probe(&self) {
        let conn = match self.pool.try_get() {
            Some(conn) => Some(conn),
            // At the share's cap: the pool is busy, and a probe must not wait.
            None if self.pool.state().connections as usize >= self.cluster.share().limit() => {
                return
            }
            None => self.pool.get_timeout(PROBE_TIMEOUT).ok(),
        };
        let Some(mut conn) = conn else {
            return self
                .health
                .report_down("no connection to the database could be opened");
        };
        if conn.predates_outage(&self.health) {
            return conn.mark_broken(); // the next probe takes a fresh one
        }
        let deadline = Deadline::starting_now(PROBE_TIMEOUT);
        let (result, _) = self.guarded(&mut conn, &deadline, None, |db| {
            db.client().simple_query("SELECT 1")
        });
        match result {
            Ok(_) => self.health.report_up(),
            Err(e) => {
                conn.mark_broken();
                self.health.report_down(&e.to_string());
            }
        }
    }

    /// Runs `work` on `conn` with the watchdog armed for the deadline, or
    /// for `drain` (the drain deadline once shutdown began) if that comes
    /// first; returns its result and whether a cancel was sent. A
    /// connection that was sent a cancel is marked broken: a late cancel
    /// must not reach its next statement.
    pub fn guarded<T>(
        &self,
        conn: &mut PooledConn,
        deadline: &Deadline,
        drain: Option<Instant>,
        work: impl FnOnce(&mut DbConn) -> Result<T, postgres::Error>,
    ) -> (Result<T, postgres::Error>, Option<CancelReason>) {
        let cancel_at = drain.map_or(deadline.at, |d| deadline.at.min(d));
        let guard = self.watchdog.arm(cancel_at, conn.cancel_token());
        let result = work(conn);
        let past_drain = drain.is_some_and(|d| Instant::now() >= d);
        let fired = guard.disarm().map(|reason| match past_drain {
            true => CancelReason::Shutdown,
            false => reason,
        });
        if fired.is_some() {
            conn.mark_broken();
        }
        (result, fired)
    }

    /// Runs `work` (one or a few quick statements) on `conn` under the
    /// request's deadline; a failure becomes its reply.
    pub fn with_db<T>(
        &self,
        conn: &mut PooledConn,
        deadline: &Deadline,
        drain: Option<Instant>,
        work: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, RpcError> {
        let (result, fired) = self.guarded(conn, deadline, drain, |db| work(db.client()));
        result.map_err(|e| {
            let failure = self.classify(conn, &e, fired);
            self.failure_reply(failure, deadline, 1)
        })
    }

    /// [`sqlstate::classify`], and a connection found lost is marked broken
    /// so the pool drops it: the one place that rule lives.
    pub fn classify(
        &self,
        conn: &mut DbConn,
        error: &postgres::Error,
        fired: Option<CancelReason>,
    ) -> Failure {
        let failure = sqlstate::classify(error, fired);
        if let Failure::ConnectionLost { .. } = failure {
            conn.mark_broken();
        }
        failure
    }

    /// The reply for a failure that is not retried (after `attempts`).
    pub fn failure_reply(&self, failure: Failure, deadline: &Deadline, attempts: u32) -> RpcError {
        match failure {
            Failure::Conflict(state) => RpcError::transaction_conflict(attempts, &state),
            Failure::StalePlan => {
                RpcError::internal("the function changed shape twice during one call")
            }
            Failure::ConnectionLost { detail, aborted } => {
                self.health.report_down(&detail);
                let error = RpcError::db_unavailable(self.retry_after_ms(), detail);
                if aborted {
                    error
                } else {
                    // The socket broke mid-call: the call may or may not have committed.
                    error.with("retryable", false).with("outcome", "unknown")
                }
            }
            Failure::Cancelled(CancelReason::Deadline) => {
                RpcError::deadline_exceeded(deadline.elapsed_ms())
            }
            Failure::Cancelled(CancelReason::Shutdown) => RpcError::shutting_down(),
            Failure::UndefinedFunction => {
                RpcError::internal("a catalogue query named a function that does not exist")
            }
            Failure::Reply(e) => e,
        }
    }
}
