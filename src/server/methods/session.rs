//! `session.login`, `session.join` and `session.logout`, on a worker (they
//! touch the database, and argon2 is slow on purpose, so they pass the same
//! admission control as any call).
//!
//! Every way a login can fail (unknown user, wrong password, disabled user,
//! no password set) gives the same -32006 with the same message after the
//! same argon2 work, so the answer does not tell which names exist.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::method::Call;
use crate::auth;
use crate::auth::sessions::{describe, Session};
use crate::config::AuthMode;
use crate::db::Deadline;
use crate::protocol::RpcError;
use crate::server::context::Context;
use crate::server::router::connection::Connection;

/// The one message for every failed password check.
const BAD_LOGIN: &str = "login failed: unknown user or wrong password";

/// The message for a key that no longer names a live session.
pub const DEAD_SESSION: &str = "the session has expired or was ended; log in again";

/// `session.login {user, password}` (`{user}` in trust mode).
pub fn login(call: &Call) -> Result<Value, RpcError> {
    let (ctx, conn, deadline) = (call.ctx, call.conn, call.deadline);
    let params = &call.request.params()?;
    let mut fields = Fields::of(params, call.param_names())?;
    let user = fields.string("user")?.ok_or_else(|| missing("user"))?;
    let password = fields.string("password")?;
    let peer = conn.peer.ip();
    if ctx.login_limiter.is_blocked(&user, peer) {
        return Err(RpcError::unauthenticated(format!(
            "too many failed logins for this user or from this address; wait {} s",
            auth::FAILURE_WINDOW.as_secs()
        )));
    }
    let accepted = if ctx.config.auth.mode == AuthMode::Trust {
        trusted_user_may_log_in(ctx, &user, deadline)?
    } else {
        let password = password.ok_or_else(|| missing("password"))?;
        password_matches(ctx, &user, &password, deadline)?
    };
    if !accepted {
        ctx.login_limiter.record_failure(&user, peer);
        return Err(RpcError::unauthenticated(BAD_LOGIN));
    }
    let key = auth::new_session_key()
        .map_err(|e| RpcError::internal(format!("no random bytes for a session key: {e}")))?;
    let mut db = ctx.acquire(deadline)?;
    let (session, expires_at) = ctx.with_db(&mut db, deadline, |conn| {
        let client = conn.client();
        ctx.sessions.create(client, &user, key)
    })?;
    super::standby::note_position(ctx, &mut db, &session.key, deadline);
    ctx.stats.metrics.count_session_created();
    log::debug!(
        "connection {} ({}): {} logged in",
        conn.number,
        conn.peer,
        session.user
    );
    Ok(bind(conn, session, expires_at))
}

/// `session.join {session}`: binds a live session made on any instance.
pub fn join(call: &Call) -> Result<Value, RpcError> {
    let (ctx, conn, deadline) = (call.ctx, call.conn, call.deadline);
    let params = &call.request.params()?;
    let mut fields = Fields::of(params, call.param_names())?;
    let key = fields
        .string("session")?
        .ok_or_else(|| missing("session"))?;
    let mut db = ctx.acquire(deadline)?;
    let found = ctx.with_db(&mut db, deadline, |conn| {
        ctx.sessions.find(conn.client(), &key)
    })?;
    let (session, expires_at) = found.ok_or_else(|| RpcError::unauthenticated(DEAD_SESSION))?;
    ctx.sessions.touch(&session.key);
    super::standby::note_position(ctx, &mut db, &session.key, deadline);
    log::debug!(
        "connection {} ({}): {} joined a session",
        conn.number,
        conn.peer,
        session.user
    );
    Ok(bind(conn, session, expires_at))
}

/// `session.logout {}`: ends the request's session (its `session` member,
/// else the connection's) on every instance.
pub fn logout(call: &Call) -> Result<Value, RpcError> {
    let (ctx, conn, deadline) = (call.ctx, call.conn, call.deadline);
    let params = &call.request.params()?;
    Fields::of(params, call.param_names())?;
    let key = call.session_key()?;
    let mut db = ctx.acquire(deadline)?;
    let ended = ctx.with_db(&mut db, deadline, |conn| {
        ctx.sessions.end(conn.client(), &key)
    })?;
    ctx.connections.unbind_session(&key);
    conn.unbind_session(&key);
    ctx.replicas.sessions.forget(&key);
    if !ended {
        return Err(RpcError::unauthenticated(DEAD_SESSION));
    }
    log::debug!("connection {} ({}): logged out", conn.number, conn.peer);
    Ok(Value::Null)
}

/// Checks the session key a request carries (its `session` member) the
/// way `session.join` does, without binding it to the connection: for a
/// method answered without a statement of its own (`sys.status`).
pub fn verify(call: &Call, key: &str) -> Result<(), RpcError> {
    let (ctx, deadline) = (call.ctx, call.deadline);
    let mut db = ctx.acquire(deadline)?;
    let found = ctx.with_db(&mut db, deadline, |conn| {
        ctx.sessions.find(conn.client(), key)
    })?;
    let (session, _) = found.ok_or_else(|| RpcError::unauthenticated(DEAD_SESSION))?;
    ctx.sessions.touch(&session.key);
    Ok(())
}

fn bind(conn: &Connection, session: Session, expires_at: Value) -> Value {
    let reply = describe(&session, expires_at);
    conn.bind_session(Arc::new(session));
    reply
}

/// Trust mode: any enabled user name logs in; a new name becomes a user.
fn trusted_user_may_log_in(
    ctx: &Context,
    user: &str,
    deadline: &Deadline,
) -> Result<bool, RpcError> {
    let mut db = ctx.acquire(deadline)?;
    ctx.with_db(&mut db, deadline, |conn| {
        let client = conn.client();
        client.execute(
            "INSERT INTO blitz.users (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            &[&user],
        )?;
        let row = client.query_one("SELECT disabled FROM blitz.users WHERE name = $1", &[&user])?;
        Ok(!row.get::<_, bool>(0))
    })
}

/// Checks `password` against `user`'s hash. The pooled connection goes
/// back to the pool before the (slow) hash is computed.
fn password_matches(
    ctx: &Context,
    user: &str,
    password: &str,
    deadline: &Deadline,
) -> Result<bool, RpcError> {
    let stored: Option<String> = {
        let mut db = ctx.acquire(deadline)?;
        ctx.with_db(&mut db, deadline, |conn| {
            let client = conn.client();
            let row = client.query_opt(
                "SELECT password_hash FROM blitz.users WHERE name = $1 AND NOT disabled",
                &[&user],
            )?;
            Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
        })?
    };
    Ok(auth::verify_password(password, stored.as_deref()))
}

fn missing(name: &str) -> RpcError {
    RpcError::invalid_params(Some(name), format!("missing required parameter {name:?}"))
}

/// A method's params as a JSON object with a fixed set of members.
struct Fields(Map<String, Value>);

impl Fields {
    /// `params` (an object, or absent) with no member outside `allowed`.
    fn of(params: &Value, allowed: &[&str]) -> Result<Fields, RpcError> {
        let map = match params {
            Value::Null => Map::new(),
            Value::Object(map) => map.clone(),
            _ => {
                return Err(RpcError::invalid_params(
                    None,
                    format!("params must be an object with members {allowed:?}"),
                ))
            }
        };
        if let Some(extra) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(RpcError::invalid_params(
                Some(extra),
                format!("unknown parameter {extra:?}; expected {allowed:?}"),
            ));
        }
        Ok(Fields(map))
    }

    /// Member `name` as a non-empty string (`None` when absent). The value
    /// itself never appears in the error: it may be a password.
    fn string(&mut self, name: &str) -> Result<Option<String>, RpcError> {
        match self.0.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(_) => Err(RpcError::invalid_params(
                Some(name),
                format!("parameter {name:?} must be a non-empty string"),
            )),
        }
    }
}
