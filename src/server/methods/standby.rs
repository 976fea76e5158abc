//! `api.` calls on a hot standby: the route asked of
//! [`Replicas::route`](crate::db::replica::Replicas::route), the wait for
//! the session's own writes (read-your-writes), one run of the call in the
//! session, and what a failure there does next
//! ([`after_failure`]: answered, or given back to the primary path, which
//! runs the call once more on the primary). Also the other half of
//! read-your-writes: after a call that may have written on the primary,
//! the WAL insert position is recorded for the session ([`note_position`]).

use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::auth::sessions::{run_in_session, CallStatement, EnterArgs};
use crate::db::catalog::PreparedCall;
use crate::db::replica::{after_failure, read_lsn, Fallback, Read, Replica, Route, INSERT_LSN_SQL};
use crate::db::{Deadline, Failure, Lease, PooledConn};
use crate::protocol::RpcError;
use crate::server::context::Context;

/// What [`try_call`] did.
pub enum Tried {
    /// The standby answered (or the deadline passed at its gates).
    Answered(Result<Box<RawValue>, RpcError>),
    /// Run it on the primary (not standby-safe, keyed, a session new to
    /// this instance, no standby up and caught up in time, or a failure
    /// the standby caused), with the call as prepared here, if it was.
    OnPrimary(Option<PreparedCall>),
}

/// Runs `api.<name>` on a standby when it may run there.
pub fn try_call(
    ctx: &Context,
    name: &str,
    params: &Value,
    session: &str,
    keyed: bool,
    deadline: &Deadline,
) -> Tried {
    if ctx.replicas.is_empty() {
        return Tried::OnPrimary(None);
    }
    // Only with the catalogue at hand: loading it is the primary path's.
    let prepared = ctx.catalog.current().and_then(|c| c.prepare(name, params));
    match prepared {
        Some(Ok(prepared)) => on_a_standby(ctx, prepared, session, keyed, deadline),
        _ => Tried::OnPrimary(None), // the primary's path reloads or answers
    }
}

/// [`try_call`] once the call is prepared.
fn on_a_standby(
    ctx: &Context,
    prepared: PreparedCall,
    session: &str,
    keyed: bool,
    deadline: &Deadline,
) -> Tried {
    let read = Read {
        standby_safe: prepared.standby_safe,
        keyed,
        must_see: ctx.replicas.sessions.get(session),
    };
    let Route::Standby {
        replica,
        must_see,
        caught_up,
    } = ctx.replicas.route(read)
    else {
        return Tried::OnPrimary(Some(prepared));
    };
    let mut lease = match lease(&replica, deadline) {
        Ok(Some(lease)) => lease,
        Ok(None) => return Tried::OnPrimary(Some(prepared)),
        Err(failure) => return Tried::Answered(Err(ctx.failure_reply(failure, deadline, 1))),
    };
    if !caught_up && !wait_for(&replica, &mut lease, must_see, deadline) {
        return Tried::OnPrimary(Some(prepared));
    }
    match run_once(ctx, &replica, &mut lease, &prepared, session, deadline) {
        Some(outcome) => {
            replica.count_call();
            Tried::Answered(outcome)
        }
        None => Tried::OnPrimary(Some(prepared)),
    }
}

/// A connection of `replica`; `None` (the standby marked down) when it
/// does not answer, `Err` when the deadline passed at its gates.
fn lease(replica: &Replica, deadline: &Deadline) -> Result<Option<Lease>, Failure> {
    match replica.db.acquire(deadline) {
        Ok(lease) => Ok(Some(lease)),
        Err(Failure::PastDeadline) => Err(Failure::PastDeadline),
        Err(failure) => {
            replica.mark_down(&format!("no connection from its pool ({failure:?})"));
            Ok(None)
        }
    }
}

/// How long a read waits for a standby to replay the session's writes
/// before it goes to the primary.
const CATCH_UP_WAIT: Duration = Duration::from_millis(100);

/// Waits (on the standby's connection) until `replica` has replayed
/// `lsn`, at most [`CATCH_UP_WAIT`] or the time left; whether it has.
fn wait_for(replica: &Replica, lease: &mut Lease, lsn: u64, deadline: &Deadline) -> bool {
    let bound = CATCH_UP_WAIT.min(deadline.remaining() / 2);
    match replica.wait_for(lease, lsn, bound) {
        Ok(done) => done,
        Err(e) => {
            lease.mark_broken();
            replica.mark_down(&e.to_string());
            false
        }
    }
}

/// One run of `call` in `session` on `replica`; `None` when the failure
/// sends the call to the primary.
fn run_once(
    ctx: &Context,
    replica: &Replica,
    conn: &mut PooledConn,
    call: &PreparedCall,
    session: &str,
    deadline: &Deadline,
) -> Option<Result<Box<RawValue>, RpcError>> {
    let enter = EnterArgs::new(&ctx.sessions, session, call.oid);
    let params = call.param_refs();
    let text = || call.statement_text();
    let statement = CallStatement {
        key: call.statement_key(0),
        text: &text,
        params: &params,
    };
    let drain = ctx.shutdown.drain_deadline();
    let (result, fired) = replica.db.guarded(conn, deadline, drain, |db| {
        run_in_session(db, &enter, &statement)
    });
    let error = match result {
        Ok(raw) => return Some(Ok(raw.unwrap_or_else(super::method::null))),
        Err(e) => e,
    };
    let failure = replica.db.classify(conn, &error, fired);
    if let Failure::StalePlan = failure {
        conn.forget_statements();
    }
    match after_failure(&error, &failure) {
        Fallback::Answer => Some(Err(ctx.failure_reply(failure, deadline, 1))),
        Fallback::Primary => None,
        Fallback::PrimaryAndMarkDown => {
            replica.mark_down(&error.to_string());
            None
        }
    }
}

/// After a call of `session` on the primary that may have written (or
/// the first of a session new to this instance): records the primary's
/// WAL insert position for the session, on the same connection (one
/// round trip, only with standbys configured), so that its next read
/// runs on a standby only once that standby has replayed it (under the
/// call's deadline). A failure
/// forgets the session's position: its next read runs on the primary.
pub fn note_position(ctx: &Context, conn: &mut PooledConn, session: &str, deadline: &Deadline) {
    if ctx.replicas.is_empty() {
        return;
    }
    let drain = ctx.shutdown.drain_deadline();
    let (read, _) = ctx
        .db
        .guarded(conn, deadline, drain, |db| read_lsn(db, INSERT_LSN_SQL));
    match read {
        Ok(lsn) => ctx.replicas.sessions.raise(session, lsn),
        Err(e) => {
            log::debug!(
                "cannot read the WAL insert position ({e}); the session reads on the primary"
            );
            ctx.replicas.sessions.forget(session);
        }
    }
}
