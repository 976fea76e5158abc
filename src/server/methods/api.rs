//! `api.<name>`: one call of PostgreSQL function `<api_schema>.<name>` as
//! one transaction, on a worker, with its deadline enforced by the
//! watchdog and serialization failures retried.

use std::time::Duration;

use serde_json::Value;

use super::method::Call;
use crate::auth::sessions::{run_in_session, EnterArgs};
use crate::db::catalog::PreparedCall;
use crate::db::idempotency::{self, KeyedCall};
use crate::db::{Deadline, Failure, PooledConn};
use crate::protocol::{code, RpcError};
use crate::server::context::Context;

/// Calls `<api_schema>.<name>` with `params` (object, array or null) as
/// `session`'s user.
pub fn call(call: &Call) -> Result<Value, RpcError> {
    let (ctx, deadline) = (call.ctx, call.deadline);
    let session = call.session_key()?;
    let name = &call.request.method["api.".len()..];
    let params = &call.request.params()?;
    let mut conn = ctx.acquire(deadline)?;
    let mut catalog = ctx.catalog_loaded(&mut conn, deadline)?;
    if catalog.prepare(name, params).is_none() {
        catalog = ctx.catalog_refreshed(&mut conn, deadline)?;
    }
    let prepared = catalog
        .prepare(name, params)
        .ok_or_else(|| RpcError::method_not_found(&format!("api.{name}")))?
        .map_err(|e| RpcError::invalid_params(e.param.as_deref(), e.message))?;
    let keyed = call.request.idempotency_key.as_deref().map(|key| {
        let ttl = ctx.config.invocation.idempotency_ttl_s;
        KeyedCall::new(key, &call.request.method, params, ttl)
    });
    let outcome = run(
        ctx,
        &mut conn,
        name,
        &prepared,
        &session,
        keyed.as_ref(),
        deadline,
    );
    if !matches!(&outcome, Err(e) if e.code == code::UNAUTHENTICATED) {
        ctx.sessions.touch(&session);
    }
    outcome
}

/// Runs one prepared call of function `name` as one transaction inside
/// the session `session` (a key, checked by `blitz.enter` in the same
/// statement; see [`run_in_session`]), retrying 40001/40P01. With an
/// idempotency key, the statement is the keyed one of [`idempotency`]
/// (still one round trip); after it failed, a second statement records the
/// error or releases the key.
fn run(
    ctx: &Context,
    conn: &mut PooledConn,
    name: &str,
    call: &PreparedCall,
    session: &str,
    keyed: Option<&KeyedCall>,
    deadline: &Deadline,
) -> Result<Value, RpcError> {
    let enter = EnterArgs::new(&ctx.sessions, session, call.oid);
    let mut params = call.param_refs();
    let mut types = call.param_types.clone();
    let sql = match keyed {
        None => std::borrow::Cow::Borrowed(call.sql.as_str()),
        Some(k) => {
            let sql = k.statement(&call.sql, params.len());
            params.extend(k.params());
            types.extend(KeyedCall::types());
            std::borrow::Cow::Owned(sql)
        }
    };
    let max_retries = ctx.config.invocation.max_retries as u32;
    let mut attempt = 1u32;
    let mut replanned = false;
    loop {
        if ctx.shutdown.past_drain_deadline() {
            return Err(RpcError::shutting_down());
        }
        let drain = ctx.shutdown.drain_deadline();
        let (result, fired) = ctx.db.guarded(conn, deadline, drain, |db| {
            run_in_session(db, &enter, &sql, &types, &params)
        });
        let error = match result {
            Ok(value) => {
                ctx.db.health.report_up();
                return match keyed {
                    None => Ok(value.unwrap_or(Value::Null)),
                    Some(k) => idempotency::outcome(k, value),
                };
            }
            Err(e) => e,
        };
        let reply = match ctx.db.classify(conn, &error, fired) {
            Failure::Conflict(_)
                if attempt <= max_retries && sleep_before_retry(attempt, deadline) =>
            {
                ctx.stats.metrics.count_retry();
                attempt += 1;
                None
            }
            Failure::StalePlan if !replanned => {
                conn.forget_statements();
                replanned = true;
                None
            }
            Failure::UndefinedFunction => {
                ctx.catalog.invalidate(); // dropped since the catalogue was loaded
                Some(RpcError::method_not_found(&format!("api.{name}")))
            }
            failure => Some(ctx.failure_reply(failure, deadline, attempt)),
        };
        if let Some(k) = keyed {
            settle_key(conn, session, k, reply.as_ref());
        }
        if let Some(reply) = reply {
            return Err(match keyed {
                Some(_) => safe_to_repeat(reply),
                None => reply,
            });
        }
    }
}

/// After a keyed statement failed: records `reply` if it is an outcome to
/// keep, and releases the key. A connection that cannot do that is dropped,
/// which ends its session and so releases the key all the same.
fn settle_key(conn: &mut PooledConn, session: &str, k: &KeyedCall, reply: Option<&RpcError>) {
    if conn.client().is_closed() {
        return; // the session is gone, and with it the lock
    }
    if let Err(e) = idempotency::after_failure(conn.client(), session, k, reply) {
        log::warn!(
            "cannot settle idempotency key after a failed call ({e}); dropping the connection"
        );
        conn.mark_broken();
    }
}

/// A keyed call whose outcome is unknown (the database connection broke
/// mid-call) may be sent again with the same key: the repeat finds the
/// recorded outcome if the first committed, and runs otherwise.
fn safe_to_repeat(reply: RpcError) -> RpcError {
    if reply.data.get("outcome") == Some(&Value::String("unknown".into())) {
        reply.with("retryable", true)
    } else {
        reply
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
