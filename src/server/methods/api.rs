//! `api.<name>`: one call of PostgreSQL function `<api_schema>.<name>` as
//! one transaction, on a worker, with its deadline enforced by the
//! watchdog and serialization failures retried.

use std::time::Duration;

use serde_json::Value;

use super::Call;
use crate::auth::sessions::{run_in_session, EnterArgs, Session};
use crate::db::catalog::PreparedCall;
use crate::db::{Deadline, Failure, PooledConn};
use crate::protocol::{code, RpcError};
use crate::server::context::Context;
use crate::server::stats::Stats;

/// Calls `<api_schema>.<name>` with `params` (object, array or null) as
/// `session`'s user.
pub fn call(call: &Call) -> Result<Value, RpcError> {
    let (ctx, deadline) = (call.ctx, call.deadline);
    let session = call
        .conn
        .session()
        .ok_or_else(|| RpcError::unauthenticated(super::session::NO_SESSION))?;
    let name = &call.request.method["api.".len()..];
    let params = &call.request.params()?;
    let mut conn = ctx.acquire(deadline)?;
    let mut catalog = ctx.catalog.get(&ctx.db, &mut conn, deadline)?;
    if catalog.prepare(name, params).is_none() {
        catalog = ctx.catalog.refreshed(&ctx.db, &mut conn, deadline)?;
    }
    let prepared = catalog
        .prepare(name, params)
        .ok_or_else(|| RpcError::method_not_found(&format!("api.{name}")))?
        .map_err(|e| RpcError::invalid_params(e.param.as_deref(), e.message))?;
    let outcome = run(ctx, &mut conn, name, &prepared, &session, deadline);
    if !matches!(&outcome, Err(e) if e.code == code::UNAUTHENTICATED) {
        ctx.sessions.touch(&session);
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
    deadline: &Deadline,
) -> Result<Value, RpcError> {
    let enter = EnterArgs::new(&ctx.sessions, session, call.oid);
    let params = call.param_refs();
    let max_retries = ctx.config.invocation.max_retries as u32;
    let mut attempt = 1u32;
    let mut replanned = false;
    loop {
        if ctx.shutdown.past_drain_deadline() {
            return Err(RpcError::shutting_down());
        }
        let drain = ctx.shutdown.drain_deadline();
        let (result, fired) = ctx.db.guarded(conn, deadline, drain, |db| {
            run_in_session(db, &enter, &call.sql, &call.param_types, &params)
        });
        let error = match result {
            Ok(value) => {
                ctx.db.health.report_up();
                return Ok(value.unwrap_or(Value::Null));
            }
            Err(e) => e,
        };
        match ctx.db.classify(conn, &error, fired) {
            Failure::Conflict(_)
                if attempt <= max_retries && sleep_before_retry(attempt, deadline) =>
            {
                Stats::bump(&ctx.stats.counters.retries);
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
            failure => return Err(ctx.db.failure_reply(failure, deadline, attempt)),
        }
    }
}

/// Sleeps a jittered exponential backoff before retry `attempt` (1-based);
/// false when the deadline would pass first.
fn sleep_before_retry(attempt: u32, deadline: &Deadline) -> bool {
    let cap = Duration::from_millis(2u64 << attempt.min(6)); // 4, 8, 16 … 128 ms
    let pause = cap.mul_f64(0.5 + 0.5 * fastrand::f64());
    if pause >= deadline.remaining() {
        return false;
    }
    std::thread::sleep(pause);
    true
}
