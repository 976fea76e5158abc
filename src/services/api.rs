//! `api.<name>`: one call of PostgreSQL function `<api_schema>.<name>` as
//! one transaction, on a worker, with its deadline enforced by the
//! watchdog and serialization failures retried.
//!
//! Also owns [`CatalogCache`]: the functions learned from pg_proc, loaded on
//! first use and reloaded (at most once a second) when a call names a
//! function it does not know.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde_json::Value;

use crate::catalog::{Catalog, PreparedCall};
use crate::db::{classify, DbConn, Failure, PooledConn};
use crate::protocol::{code, RpcError};
use crate::server::Context;
use crate::sessions::{run_in_session, EnterArgs, Session};
use crate::watchdog::CancelReason;

/// Shortest time between two catalogue reloads.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// When a request arrived and when its caller stops waiting.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Arrival at the router.
    pub arrived: Instant,
    /// The caller's deadline.
    pub deadline: Instant,
}

impl Budget {
    /// Milliseconds since arrival.
    pub fn elapsed_ms(&self) -> u64 {
        self.arrived.elapsed().as_millis() as u64
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// The catalogue of callable functions, shared by all workers.
pub struct CatalogCache {
    schema: String,
    current: RwLock<Option<Arc<Catalog>>>,
    last_load: Mutex<Option<Instant>>,
}

impl CatalogCache {
    /// An empty cache for `schema`; nothing is loaded until first use.
    pub fn new(schema: &str) -> CatalogCache {
        CatalogCache {
            schema: schema.to_string(),
            current: RwLock::new(None),
            last_load: Mutex::new(None),
        }
    }

    /// Functions currently known.
    pub fn len(&self) -> usize {
        self.current.read().as_ref().map_or(0, |c| c.len())
    }

    /// Whether no function is known (or nothing was loaded yet).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The catalogue, loaded with `conn` if it never was.
    fn get(
        &self,
        ctx: &Context,
        conn: &mut PooledConn,
        budget: &Budget,
    ) -> Result<Arc<Catalog>, RpcError> {
        if let Some(c) = self.current.read().clone() {
            return Ok(c);
        }
        // The first callers all get here; one loads, the others reuse its load.
        self.reload(ctx, conn, budget, Duration::MAX)
    }

    /// The catalogue, reloaded first unless that happened within the last second.
    pub fn refreshed(
        &self,
        ctx: &Context,
        conn: &mut PooledConn,
        budget: &Budget,
    ) -> Result<Arc<Catalog>, RpcError> {
        self.reload(ctx, conn, budget, RELOAD_INTERVAL)
    }

    /// Makes the next lookup reload (a function disappeared).
    pub fn invalidate(&self) {
        *self.last_load.lock() = None;
    }

    fn reload(
        &self,
        ctx: &Context,
        conn: &mut PooledConn,
        budget: &Budget,
        min_interval: Duration,
    ) -> Result<Arc<Catalog>, RpcError> {
        let mut last = self.last_load.lock();
        let current = self.current.read().clone();
        if let (Some(c), Some(t)) = (&current, *last) {
            if t.elapsed() < min_interval {
                return Ok(c.clone());
            }
        }
        let loaded = Catalog::load(conn.client(), &self.schema).map_err(|e| {
            let failure = classify(&e, None);
            if let Failure::ConnectionLost { .. } = failure {
                conn.mark_broken();
            }
            failure_reply(ctx, failure, budget, 1)
        })?;
        let loaded = Arc::new(loaded);
        *last = Some(Instant::now());
        *self.current.write() = Some(loaded.clone());
        Ok(loaded)
    }
}

/// Borrows a pooled connection, waiting at most the acquire timeout or the
/// time left before the deadline.
pub fn acquire(ctx: &Context, budget: &Budget) -> Result<PooledConn, RpcError> {
    let acquire_timeout = Duration::from_millis(ctx.config.db.acquire_timeout_ms);
    let give_up = Instant::now() + acquire_timeout.min(budget.remaining());
    loop {
        let remaining = budget.remaining();
        let wait = give_up.saturating_duration_since(Instant::now());
        let mut conn = ctx.pool.get_timeout(wait).map_err(|e| {
            if remaining < acquire_timeout {
                return RpcError::deadline_exceeded(budget.elapsed_ms());
            }
            ctx.health.report_down(&e.to_string());
            RpcError::db_unavailable(ctx.config.db.acquire_timeout_ms, e.to_string())
        })?;
        if !conn.predates_outage(&ctx.health) {
            ctx.sessions
                .ensure_schema(conn.client())
                .map_err(|e| failure_reply(ctx, classify(&e, None), budget, 1))?;
            return Ok(conn);
        }
        conn.mark_broken(); // opened before the outage: dropped unused, not failed on a call
    }
}

/// Calls `<api_schema>.<name>` with `params` (object, array or null) as
/// `session`'s user.
pub fn call(
    ctx: &Context,
    session: &Session,
    name: &str,
    params: &Value,
    budget: &Budget,
) -> Result<Value, RpcError> {
    let mut conn = acquire(ctx, budget)?;
    let mut catalog = ctx.catalog.get(ctx, &mut conn, budget)?;
    if catalog.prepare(name, params).is_none() {
        catalog = ctx.catalog.refreshed(ctx, &mut conn, budget)?;
    }
    let prepared = catalog
        .prepare(name, params)
        .ok_or_else(|| RpcError::method_not_found(&format!("api.{name}")))?
        .map_err(|e| RpcError::invalid_params(e.param.as_deref(), e.message))?;
    let outcome = run(ctx, &mut conn, name, &prepared, session, budget);
    if !matches!(&outcome, Err(e) if e.code == code::UNAUTHENTICATED) {
        ctx.sessions.touch(session);
    }
    outcome
}

/// Runs one prepared call of function `name` as one transaction inside
/// `session` (see [`run_in_session`]), retrying 40001/40P01.
fn run(
    ctx: &Context,
    conn: &mut PooledConn,
    name: &str,
    call: &PreparedCall,
    session: &Session,
    budget: &Budget,
) -> Result<Value, RpcError> {
    let enter = EnterArgs::new(&ctx.sessions, session, call.oid);
    let params = call.param_refs();
    let max_retries = ctx.config.invocation.max_retries as u32;
    let mut attempt = 1u32;
    let mut replanned = false;
    loop {
        if ctx.shutdown.past_drain_deadline() {
            return Err(RpcError::shutting_down(ctx.retry_after_shutdown_ms()));
        }
        let (result, fired) = guarded(ctx, conn, budget, |db| {
            run_in_session(db, &enter, &call.sql, &call.param_types, &params)
        });
        let error = match result {
            Ok(value) => {
                ctx.health.report_up();
                return Ok(value.unwrap_or(Value::Null));
            }
            Err(e) => e,
        };
        match classify(&error, fired) {
            Failure::Conflict(_)
                if attempt <= max_retries && sleep_before_retry(attempt, budget) =>
            {
                crate::stats::Stats::bump(&ctx.stats.counters.retries);
                attempt += 1;
            }
            Failure::StalePlan if !replanned => {
                conn.forget_statements();
                replanned = true;
            }
            Failure::UndefinedFunction => {
                ctx.catalog.invalidate(); // dropped since the catalogue was loaded
                return Err(RpcError::method_not_found(&format!("api.{name}")));
            }
            lost @ Failure::ConnectionLost { .. } => {
                conn.mark_broken();
                return Err(failure_reply(ctx, lost, budget, attempt));
            }
            failure => return Err(failure_reply(ctx, failure, budget, attempt)),
        }
    }
}

/// Runs `work` on `conn` with the watchdog armed for the deadline (or the
/// drain deadline); returns its result and whether a cancel was sent. A
/// connection that was sent a cancel is marked broken: a late cancel must
/// not reach its next statement.
fn guarded<T>(
    ctx: &Context,
    conn: &mut PooledConn,
    budget: &Budget,
    work: impl FnOnce(&mut DbConn) -> Result<T, postgres::Error>,
) -> (Result<T, postgres::Error>, Option<CancelReason>) {
    let guard = ctx
        .watchdog
        .arm(cancel_at(ctx, budget), conn.cancel_token());
    let result = work(conn);
    let fired = guard
        .disarm()
        .map(|reason| match ctx.shutdown.past_drain_deadline() {
            true => CancelReason::Shutdown,
            false => reason,
        });
    if fired.is_some() {
        conn.mark_broken();
    }
    (result, fired)
}

/// Runs `work` (one or a few quick statements) on `conn` under the
/// request's deadline; a failure becomes its reply through [`classify`].
pub fn with_db<T>(
    ctx: &Context,
    conn: &mut PooledConn,
    budget: &Budget,
    work: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
) -> Result<T, RpcError> {
    let (result, fired) = guarded(ctx, conn, budget, |db| work(db.client()));
    result.map_err(|e| {
        let failure = classify(&e, fired);
        if let Failure::ConnectionLost { .. } = failure {
            conn.mark_broken();
        }
        failure_reply(ctx, failure, budget, 1)
    })
}

/// When to cancel a statement: at the caller's deadline, or at the drain
/// deadline once shutdown has begun, whichever comes first.
fn cancel_at(ctx: &Context, budget: &Budget) -> Instant {
    match ctx.shutdown.drain_deadline() {
        Some(drain) => budget.deadline.min(drain),
        None => budget.deadline,
    }
}

/// The reply for a failure that is not retried here.
fn failure_reply(ctx: &Context, failure: Failure, budget: &Budget, attempts: u32) -> RpcError {
    match failure {
        Failure::Conflict(state) => RpcError::transaction_conflict(attempts, &state),
        Failure::StalePlan => {
            RpcError::internal("the function changed shape twice during one call")
        }
        Failure::ConnectionLost { detail, aborted } => {
            ctx.health.report_down(&detail);
            let error = RpcError::db_unavailable(ctx.config.db.acquire_timeout_ms, detail);
            if aborted {
                error
            } else {
                // The socket broke mid-call: the call may or may not have committed.
                error.with("retryable", false).with("outcome", "unknown")
            }
        }
        Failure::Cancelled(CancelReason::Deadline) => {
            RpcError::deadline_exceeded(budget.elapsed_ms())
        }
        Failure::Cancelled(CancelReason::Shutdown) => {
            RpcError::shutting_down(ctx.retry_after_shutdown_ms())
        }
        Failure::UndefinedFunction => {
            RpcError::internal("a catalogue query named a function that does not exist")
        }
        Failure::Reply(e) => e,
    }
}

/// Sleeps a jittered exponential backoff before retry `attempt` (1-based);
/// false when the deadline would pass first.
fn sleep_before_retry(attempt: u32, budget: &Budget) -> bool {
    let cap = Duration::from_millis(2u64 << attempt.min(6)); // 4, 8, 16 … 128 ms
    let pause = cap.mul_f64(0.5 + 0.5 * random_unit());
    if pause >= budget.remaining() {
        return false;
    }
    std::thread::sleep(pause);
    true
}

/// A cheap pseudo-random number in [0, 1) for backoff jitter (xorshift per thread).
fn random_unit() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)) | 1
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}
