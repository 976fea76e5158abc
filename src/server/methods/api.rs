//! `api.<name>`: one call of PostgreSQL function `<api_schema>.<name>` as
//! one transaction, on a worker, with its deadline enforced by the
//! watchdog and serialization failures retried. The statement is prepared
//! once per connection and (function, argument shape), and its result
//! passes through as the JSON text PostgreSQL sent. With standbys, a call
//! that may run on one is tried there first ([`standby`]); this is the
//! primary's path, which also records a session's position after a call
//! that may have written.

use std::time::Duration;

use postgres::types::Type;
use serde_json::value::RawValue;
use serde_json::Value;

use super::method::{null, Call};
use super::standby::{self, Tried};
use crate::auth::sessions::{run_in_session, CallStatement, EnterArgs};
use crate::db::catalog::PreparedCall;
use crate::db::idempotency::{self, KeyedCall};
use crate::db::{Deadline, Failure, PooledConn};
use crate::protocol::{code, RpcError};
use crate::server::context::Context;

/// Calls `<api_schema>.<name>` with `params` (object, array or null) as
/// `session`'s user: on a standby when it may run there, else on the
/// primary.
pub fn call(call: &Call) -> Result<Box<RawValue>, RpcError> {
    let (ctx, deadline) = (call.ctx, call.deadline);
    let session = call.session_key()?;
    let name = &call.request.method["api.".len()..];
    let params = &call.request.params()?;
    let keyed = call.request.idempotency_key.is_some();
    let outcome = match standby::try_call(ctx, name, params, &session, keyed, deadline) {
        Tried::Answered(outcome) => outcome,
        Tried::OnPrimary(prepared) => on_primary(call, name, params, &session, prepared),
    };
    if !matches!(&outcome, Err(e) if e.code == code::UNAUTHENTICATED) {
        ctx.sessions.touch(&session);
    }
    outcome
}

/// The call on the primary (`prepared` already, or prepared here); with
/// standbys, a call that may have written (or the first of a session new
/// to this instance) records the session's position.
fn on_primary(
    call: &Call,
    name: &str,
    params: &Value,
    session: &str,
    prepared: Option<PreparedCall>,
) -> Result<Box<RawValue>, RpcError> {
    let (ctx, deadline) = (call.ctx, call.deadline);
    let mut conn = ctx.acquire(deadline)?;
    let prepared = match prepared {
        Some(prepared) => prepared,
        None => prepare(ctx, &mut conn, name, params, deadline)?,
    };
    let keyed = call.request.idempotency_key.as_deref().map(|key| {
        let ttl = ctx.config.invocation.idempotency_ttl_s;
        KeyedCall::new(key, &call.request.method, params, ttl)
    });
    let outcome = run(
        ctx,
        &mut conn,
        name,
        &prepared,
        session,
        keyed.as_ref(),
        deadline,
    );
    ctx.replicas.count_primary_call();
    if !ctx.replicas.is_empty() && outcome.is_ok() {
        let may_have_written = !prepared.standby_safe || keyed.is_some();
        if may_have_written || ctx.replicas.sessions.get(session).is_none() {
            standby::note_position(ctx, &mut conn, session, deadline);
        }
    }
    outcome
}

/// The call of `name` with `params`, from the catalogue (loaded with
/// `conn` if it never was, reloaded once on a miss).
fn prepare(
    ctx: &Context,
    conn: &mut PooledConn,
    name: &str,
    params: &Value,
    deadline: &Deadline,
) -> Result<PreparedCall, RpcError> {
    let catalog = ctx.catalog_loaded(conn, deadline)?;
    match catalog.prepare(name, params) {
        Some(prepared) => prepared,
        None => ctx
            .catalog_refreshed(conn, deadline)?
            .prepare(name, params)
            .ok_or_else(|| RpcError::method_not_found(&format!("api.{name}")))?,
    }
    .map_err(|e| RpcError::invalid_params(e.param.as_deref(), e.message))
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
) -> Result<Box<RawValue>, RpcError> {
    let enter = EnterArgs::new(&ctx.sessions, session, call.oid);
    let enter = checked(ctx, conn, session, enter, deadline)?;
    let mut params = call.param_refs();
    if let Some(k) = keyed {
        params.extend(k.params());
    }
    let text = || statement_text(call, keyed);
    let statement = CallStatement {
        key: call.statement_key(u8::from(keyed.is_some())),
        text: &text,
        params: &params,
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
            run_in_session(db, &enter, &statement)
        });
        let error = match result {
            Ok(raw) => {
                ctx.db.health.report_up();
                return match keyed {
                    None => Ok(raw.unwrap_or_else(null)),
                    Some(k) => idempotency::outcome(k, parse(raw)?).and_then(raw_of),
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

/// `enter` with the session's user when the cache did not know the
/// session and can be trusted: one query checks it (and caches it), so the
/// call's own statement need not. A session found dead, or a cache not
/// trusted, leaves the check to the call's statement (which raises BZ006).
fn checked(
    ctx: &Context,
    conn: &mut PooledConn,
    session: &str,
    enter: EnterArgs,
    deadline: &Deadline,
) -> Result<EnterArgs, RpcError> {
    if !enter.unchecked() || !ctx.sessions.cache().trusted() {
        return Ok(enter);
    }
    match ctx.with_db(conn, deadline, |db| ctx.sessions.verify(db, session))? {
        Some(user) => Ok(enter.checked(user)),
        None => Ok(enter),
    }
}

/// The SQL text and parameter types of `call`'s statement, keyed by
/// [`idempotency`] when `keyed` is given.
fn statement_text(call: &PreparedCall, keyed: Option<&KeyedCall>) -> (String, Vec<Type>) {
    match keyed {
        None => call.statement_text(),
        Some(k) => {
            let mut types = call.param_types.clone();
            types.extend(KeyedCall::types());
            (k.statement(&call.sql, call.params.len()), types)
        }
    }
}

/// A raw result parsed into a value (for an idempotency outcome).
fn parse(raw: Option<Box<RawValue>>) -> Result<Option<Value>, RpcError> {
    raw.map(|r| serde_json::from_str(r.get()))
        .transpose()
        .map_err(|e| RpcError::internal(format!("the database returned invalid JSON: {e}")))
}

/// A value rendered as raw JSON text.
fn raw_of(value: Value) -> Result<Box<RawValue>, RpcError> {
    serde_json::value::to_raw_value(&value)
        .map_err(|e| RpcError::internal(format!("a result cannot be rendered: {e}")))
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
