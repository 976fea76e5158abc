//! The methods. [`route`] runs on the router thread and decides where a
//! request goes: `sys.ping` and `sys.status` are answered at once, work for
//! the database is admitted to the queue, anything else is refused.
//! [`execute`] runs on a worker and calls the service.
//!
//! Who may call what is decided here too: `api.*` and `sys.status` need a
//! session bound to the connection (checked when the request is read, and
//! for `api.*` again in the call's own transaction by `blitz.enter`);
//! `sys.ping`, `rpc.discover` and `session.*` do not.
//!
//! - [`api`]: `api.<name>` calls of PostgreSQL functions, and the catalogue.
//! - [`session`]: `session.login`, `session.join`, `session.logout`.
//! - [`sys`]: `sys.ping`, `sys.status`, `rpc.discover`.

pub mod api;
pub mod session;
pub mod sys;

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::connection::{Connection, Responder};
use crate::protocol::{Request, RpcError};
use crate::server::Context;

/// Sends `request` where it belongs (router thread).
pub fn route(ctx: &Context, request: Request, responder: Responder) {
    match request.method.as_str() {
        "sys.ping" => responder.reply(Ok(sys::ping(ctx))),
        "sys.status" => match responder.connection().session() {
            Some(_) => responder.reply(Ok(sys::status(ctx))),
            None => responder.reply(Err(RpcError::unauthenticated(session::NO_SESSION))),
        },
        _ if ctx.shutdown.is_stopping() => {
            responder.reply(Err(RpcError::shutting_down(ctx.retry_after_shutdown_ms())))
        }
        m if m.starts_with("api.") && responder.connection().session().is_none() => {
            responder.reply(Err(RpcError::unauthenticated(session::NO_SESSION)))
        }
        m if is_queued(m) => ctx.dispatcher.admit(ctx, request, responder),
        m => {
            let error = RpcError::method_not_found(m);
            responder.reply(Err(error))
        }
    }
}

fn is_queued(method: &str) -> bool {
    matches!(
        method,
        "rpc.discover" | "session.login" | "session.join" | "session.logout"
    ) || method.strip_prefix("api.").is_some_and(|n| !n.is_empty())
}

/// Runs a queued request from `conn` (worker thread).
pub fn execute(
    ctx: &Context,
    conn: &Arc<Connection>,
    request: &Request,
    arrived: Instant,
    deadline: Instant,
) -> Result<Value, RpcError> {
    let budget = api::Budget { arrived, deadline };
    match request.method.as_str() {
        "rpc.discover" => sys::discover(ctx, &budget),
        "session.login" => session::login(ctx, conn, &request.params()?, &budget),
        "session.join" => session::join(ctx, conn, &request.params()?, &budget),
        "session.logout" => session::logout(ctx, conn, &request.params()?, &budget),
        m => match m.strip_prefix("api.") {
            Some(name) => {
                let session = conn
                    .session()
                    .ok_or_else(|| RpcError::unauthenticated(session::NO_SESSION))?;
                api::call(ctx, &session, name, &request.params()?, &budget)
            }
            None => Err(RpcError::method_not_found(m)),
        },
    }
}
