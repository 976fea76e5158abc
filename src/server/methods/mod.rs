//! The methods, and [`METHODS`]: the one table that says, for each method,
//! where it runs (on the router thread, or through the queue on a worker),
//! whether it needs a session, how it is described in `rpc.discover`, and
//! which function runs it. Routing ([`route`]), execution ([`run_job`]) and
//! `rpc.discover` all read this table and nothing else.
//!
//! A method that needs a session runs in the request's own `"session"`
//! member when it has one (that request alone is authenticated: for
//! clients that open a connection per request), else in the session bound
//! to the connection. A bound session is checked when the request is read;
//! a request's own key is checked as `session.join` checks one: for
//! `api.*` by `blitz.enter` in the call's own statement (no extra round
//! trip), for `sys.status` by a lookup on a worker.
//!
//! - [`method`]: what the table and the methods share — a row
//!   ([`Method`], [`Runs`]) and what a queued method is given ([`Call`]).
//! - [`api`]: `api.<name>` calls of PostgreSQL functions.
//! - [`standby`]: those calls on a hot standby, and the session positions
//!   that give a session its own writes back there.
//! - [`session`]: `session.login`, `session.join`, `session.logout`.
//! - [`sys`]: `sys.ping`, `sys.status`, `sys.instances`, `rpc.discover`.

mod api;
mod method;
mod session;
mod standby;
mod sys;

pub use method::{Answer, Call, Method, Runs};
pub use sys::ping_result;

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use super::admission::Job;
use super::context::Context;
use super::metrics::{MethodKind, Refusal};
use super::router::responder::Responder;
use super::stats::Completion;
use crate::protocol::{code, Request, RpcError};
use method::NO_SESSION;

/// Every callable method.
pub static METHODS: &[Method] = &[
    Method {
        name: "sys.ping",
        runs: Runs::Template(sys::ping),
        needs_session: false,
        summary: "Liveness check; answered without the queue or the database.",
        params: &[],
    },
    Method {
        name: "sys.status",
        runs: Runs::OnRouter(sys::status),
        needs_session: true,
        summary: "This instance: workers, queue, pool, counters, latency percentiles.",
        params: &[],
    },
    Method {
        name: "sys.instances",
        runs: Runs::Queued(sys::instances),
        needs_session: true,
        summary: "The live instances sharing the database: id, addresses, configured pool, current share, heartbeat age, version.",
        params: &[],
    },
    Method {
        name: "rpc.discover",
        runs: Runs::Queued(sys::discover),
        needs_session: false,
        summary: "This OpenRPC document.",
        params: &[],
    },
    Method {
        name: "session.login",
        runs: Runs::Queued(session::login),
        needs_session: false,
        summary: "Checks the password (none in trust mode), creates a session and binds it to this connection.",
        params: &["user", "password"],
    },
    Method {
        name: "session.join",
        runs: Runs::Queued(session::join),
        needs_session: false,
        summary: "Binds an existing session, made on any instance, to this connection.",
        params: &["session"],
    },
    Method {
        name: "session.logout",
        runs: Runs::Queued(session::logout),
        needs_session: false,
        summary: "Ends this connection's session on every instance.",
        params: &[],
    },
    Method {
        name: "api.",
        runs: Runs::QueuedRaw(api::call),
        needs_session: true,
        summary: "",
        params: &[],
    },
];

/// The table row for `name`, if it is callable.
pub fn lookup(name: &str) -> Option<&'static Method> {
    method::find(METHODS, name)
}

/// Sends `request` where the table says (router thread). A method that
/// runs on the router but needs a session, sent with only its own
/// `session` key, goes through the queue: the key is checked on a worker.
pub fn route(ctx: &Context, request: Request, mut responder: Responder) {
    responder.set_kind(MethodKind::of(&request.method));
    let Some(method) = lookup(&request.method) else {
        let error = RpcError::method_not_found(&request.method);
        return responder.reply(Err(error));
    };
    let bound = responder.connection().session().is_some();
    if method.needs_session && !bound && request.session.is_none() {
        return responder.reply(Err(RpcError::unauthenticated(NO_SESSION)));
    }
    let checked_here = !method.needs_session || (bound && request.session.is_none());
    match method.runs {
        Runs::OnRouter(answer) if checked_here => responder.reply(Ok(answer(ctx))),
        Runs::Template(answer) if checked_here => responder.reply_raw(answer(ctx)),
        _ if ctx.shutdown.is_stopping() => {
            ctx.stats.count_refusal(Refusal::Draining);
            responder.reply(Err(RpcError::shutting_down()))
        }
        _ => ctx.dispatcher.admit(request, responder),
    }
}

/// Answers one job (worker thread): -32003 past the drain deadline, -32002
/// if its own deadline passed while queued or less time is left than a
/// typical call holds its connection (the limiter's baseline), else runs its method (then it
/// returns true). A panic is answered -32603 and logged with the request id.
pub fn run_job(ctx: &Context, job: Job) -> bool {
    let Job {
        request,
        responder,
        deadline,
    } = job;
    if ctx.shutdown.past_drain_deadline() {
        ctx.stats
            .count_unrun_call(&request.method, code::SHUTTING_DOWN);
        responder.reply(Err(RpcError::shutting_down()));
        return false;
    }
    let started = Instant::now();
    let typical_call = ctx.db.limiter().hold_times().0;
    ctx.dispatcher
        .note_queue_wait(started - deadline.arrived, typical_call);
    if deadline.has_passed() || ctx.db.limiter().too_late(deadline.remaining()) {
        ctx.stats
            .count_unrun_call(&request.method, code::DEADLINE_EXCEEDED);
        responder.reply(Err(RpcError::deadline_exceeded(deadline.elapsed_ms())));
        return false;
    }
    let call = Call {
        ctx,
        conn: responder.connection(),
        request: &request,
        deadline: &deadline,
        table: METHODS,
    };
    let outcome =
        std::panic::catch_unwind(AssertUnwindSafe(|| execute(&call))).unwrap_or_else(|_| {
            log::error!(
                "request {} ({}) panicked; answered -32603",
                responder.id_text(),
                request.method
            );
            Err(RpcError::internal(
                "the server failed while running this request; see its log",
            ))
        });
    // Recorded before the reply goes out, so that a client that has read
    // its reply finds the call counted (end to end: until the reply is handed over).
    ctx.stats.record_completion(&Completion {
        method: &request.method,
        error: outcome.as_ref().err().map(|e| e.code),
        queued: started - deadline.arrived,
        executed: started.elapsed(),
        end_to_end: deadline.arrived.elapsed(),
    });
    match outcome {
        Ok(Answer::Raw(raw)) => responder.reply_raw(&raw),
        Ok(Answer::Value(value)) => responder.reply(Ok(value)),
        Err(e) => responder.reply(Err(e)),
    }
    true
}

fn execute(call: &Call) -> Result<Answer, RpcError> {
    let Some(method) = lookup(&call.request.method) else {
        return Err(RpcError::method_not_found(&call.request.method));
    };
    if !matches!(method.runs, Runs::Queued(_) | Runs::QueuedRaw(_)) && method.needs_session {
        // A router method queued only to check the request's own session.
        if let Some(key) = &call.request.session {
            session::verify(call, key)?;
        }
    }
    match method.runs {
        Runs::Queued(run) => run(call).map(Answer::Value),
        Runs::QueuedRaw(run) => run(call).map(Answer::Raw),
        Runs::OnRouter(answer) => Ok(Answer::Value(answer(call.ctx))),
        Runs::Template(answer) => Ok(Answer::Raw(answer(call.ctx).to_owned())),
    }
}
