//! The methods. [`route`] runs on the router thread and decides where a
//! request goes: `sys.ping` and `sys.status` are answered at once, work for
//! the database is admitted to the queue, anything else is refused.
//! [`execute`] runs on a worker and calls the service.
//!
//! - [`api`]: `api.<name>` calls of PostgreSQL functions, and the catalogue.
//! - [`sys`]: `sys.ping`, `sys.status`, `rpc.discover`.

pub mod api;
pub mod sys;

use std::time::Instant;

use serde_json::Value;

use crate::connection::Responder;
use crate::protocol::{Request, RpcError};
use crate::server::Context;

/// Sends `request` where it belongs (router thread).
pub fn route(ctx: &Context, request: Request, responder: Responder) {
    match request.method.as_str() {
        "sys.ping" => responder.reply(Ok(sys::ping(ctx))),
        "sys.status" => responder.reply(Ok(sys::status(ctx))),
        _ if ctx.shutdown.is_stopping() => {
            responder.reply(Err(RpcError::shutting_down(ctx.retry_after_shutdown_ms())))
        }
        m if is_queued(m) => ctx.dispatcher.admit(ctx, request, responder),
        m => {
            let error = RpcError::method_not_found(m);
            responder.reply(Err(error))
        }
    }
}

fn is_queued(method: &str) -> bool {
    method == "rpc.discover" || method.strip_prefix("api.").is_some_and(|n| !n.is_empty())
}

/// Runs a queued request (worker thread).
pub fn execute(
    ctx: &Context,
    request: &Request,
    arrived: Instant,
    deadline: Instant,
) -> Result<Value, RpcError> {
    let budget = api::Budget { arrived, deadline };
    match request.method.as_str() {
        "rpc.discover" => sys::discover(ctx, &budget),
        m => match m.strip_prefix("api.") {
            Some(name) => api::call(ctx, name, &request.params()?, &budget),
            None => Err(RpcError::method_not_found(m)),
        },
    }
}
