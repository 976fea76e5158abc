//! [`Database`]: the pool, its health and the watchdog, and the plumbing
//! every method uses to reach PostgreSQL under a request's [`Deadline`]:
//! borrow a connection through the share's gate ([`Database::acquire`]),
//! run statements with the watchdog armed ([`Database::guarded`],
//! [`Database::with_db`]), and say what a failure means
//! ([`Database::classify`]: a [`Failure`], which the server answers).
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
use super::share::{Permit, Share};
use super::sqlstate::{self, Failure};
use super::watchdog::{CancelReason, Fired, Watchdog};

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
    /// This instance's share of the connection budget.
    share: Arc<Share>,
    /// How many calls may hold a connection at once.
    limiter: Arc<Limiter>,
}

impl Database {
    /// Wraps `pool` (built with `health` and `share`).
    pub fn new(
        pool: Pool,
        health: Arc<Health>,
        acquire_timeout: Duration,
        share: Arc<Share>,
        limiter: Arc<Limiter>,
    ) -> Database {
        Database {
            pool,
            health,
            watchdog: Watchdog::start(),
            acquire_timeout,
            share,
            limiter,
        }
    }

    /// This instance's share of the connection budget.
    pub fn share(&self) -> &Arc<Share> {
        &self.share
    }

    /// `db.acquire_timeout_ms`: the longest wait for the pool, and how
    /// soon a caller may try again after the database did not answer.
    pub fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// The concurrency limit.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Borrows a pooled connection under the concurrency limit (a permit of
    /// the [`Limiter`], its hold time counted from the connection in hand)
    /// and through the share's gate, then waits at most the acquire timeout
    /// or the time left before the deadline for the pool. Waiting at either
    /// gate is waiting for this instance's capacity, like waiting in the
    /// queue: it lasts up to the deadline ([`Failure::PastDeadline`] then),
    /// never [`Failure::Unavailable`], which says the database does not
    /// answer (and is reported to [`Health`]). A connection opened before
    /// the last outage is dropped unused rather than failed on a call.
    pub fn acquire(&self, deadline: &Deadline) -> Result<Lease, Failure> {
        let Some(mut held) = self.limiter.acquire(deadline.remaining()) else {
            return Err(Failure::PastDeadline);
        };
        let Some(permit) = self.share.acquire(deadline.remaining()) else {
            return Err(Failure::PastDeadline);
        };
        let give_up = Instant::now() + self.acquire_timeout.min(deadline.remaining());
        loop {
            let remaining = deadline.remaining();
            let wait = give_up.saturating_duration_since(Instant::now());
            let mut conn = self.pool.get_timeout(wait).map_err(|e| {
                if remaining < self.acquire_timeout {
                    return Failure::PastDeadline;
                }
                self.health.report_down(&e.to_string());
                Failure::Unavailable(e.to_string())
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
            None if self.pool.state().connections as usize >= self.share.limit() => return,
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
    /// connection that was sent a cancel stays in the pool when the one
    /// request sent was spent on this work (`cancel_spent`); otherwise
    /// it is marked broken, since a late cancel must not reach its next
    /// statement.
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
        let fired = guard.disarm();
        if fired.is_some_and(|f| !cancel_spent(&result, f)) {
            conn.mark_broken();
        }
        let past_drain = drain.is_some_and(|d| Instant::now() >= d);
        let reason = fired.map(|f| match past_drain {
            true => CancelReason::Shutdown,
            false => f.reason,
        });
        (result, reason)
    }

    /// Runs `work` (one or a few quick statements) on `conn` under the
    /// request's deadline, as [`Database::guarded`]; a failure comes back
    /// classified.
    pub fn with_db<T>(
        &self,
        conn: &mut PooledConn,
        deadline: &Deadline,
        drain: Option<Instant>,
        work: impl FnOnce(&mut DbConn) -> Result<T, postgres::Error>,
    ) -> Result<T, Failure> {
        let (result, fired) = self.guarded(conn, deadline, drain, work);
        result.map_err(|e| self.classify(conn, &e, fired))
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
}

/// Whether the cancel requests the watchdog sent (`fired`) are all spent:
/// exactly one was sent and the work ended with `57014` (query cancelled),
/// so that request cancelled this work, PostgreSQL rolled the transaction
/// back, and none is left on its way to the connection's next statement.
fn cancel_spent<T>(result: &Result<T, postgres::Error>, fired: Fired) -> bool {
    let cancelled = match result {
        Err(e) => e.code() == Some(&postgres::error::SqlState::QUERY_CANCELED),
        Ok(_) => false,
    };
    fired.sends == 1 && cancelled
}
