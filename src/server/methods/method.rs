//! What a method is, shared by the method table and every method: a row of
//! the table ([`Method`], with where it runs, [`Runs`]), what a queued
//! method is given ([`Call`]), and a row as an OpenRPC method object.
//! The table itself ([`METHODS`](super::METHODS)) names the methods'
//! functions, so it lives above them, in `mod.rs`.

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::db::Deadline;
use crate::protocol::{Request, RpcError};
use crate::server::context::Context;
use crate::server::router::connection::Connection;

/// The message for a call that needs a session and has none (neither its
/// own `session` member nor a session bound to the connection).
pub const NO_SESSION: &str = "no session: send the session key in the request's \"session\" member \
     (over HTTP: Authorization: Bearer <key>), or call session.login or session.join on this connection first";

/// Where a method runs, and the function that runs it.
#[derive(Clone, Copy)]
pub enum Runs {
    /// Answered on the router thread, without the queue or the database.
    OnRouter(fn(&Context) -> Value),
    /// Answered on the router thread from a result rendered once at start.
    Template(fn(&Context) -> &RawValue),
    /// Admitted to the queue and run on a worker.
    Queued(fn(&Call) -> Result<Value, RpcError>),
    /// Admitted to the queue and run on a worker; the result is JSON text
    /// passed into the reply as it is.
    QueuedRaw(fn(&Call) -> Result<Box<RawValue>, RpcError>),
}

/// What a method run on a worker answers.
pub enum Answer {
    /// A result value, rendered into the reply.
    Value(Value),
    /// A result already JSON text, copied into the reply.
    Raw(Box<RawValue>),
}

/// One row of the method table.
pub struct Method {
    /// The method name; a name ending in `.` is a prefix (`api.`).
    pub name: &'static str,
    /// Where it runs.
    pub runs: Runs,
    /// Whether a session is needed: one bound to the connection, or the
    /// request's own key (its `"session"` member, or an HTTP Bearer key).
    pub needs_session: bool,
    /// The OpenRPC summary (prefix rows are described by their catalogue).
    pub summary: &'static str,
    /// The OpenRPC params (names of object members).
    pub params: &'static [&'static str],
}

/// The row of `table` for `name`, if it is callable.
pub fn find(table: &'static [Method], name: &str) -> Option<&'static Method> {
    table.iter().find(|m| match m.name.strip_suffix('.') {
        Some(_) => name.len() > m.name.len() && name.starts_with(m.name),
        None => m.name == name,
    })
}

/// What a queued method is given.
pub struct Call<'a> {
    /// The shared state.
    pub ctx: &'a Context,
    /// The connection the request came from.
    pub conn: &'a Arc<Connection>,
    /// The request.
    pub request: &'a Request,
    /// Its deadline.
    pub deadline: &'a Deadline,
    /// The method table the request was routed by (`rpc.discover` lists it).
    pub table: &'static [Method],
}

impl Call<'_> {
    /// The members the table lists for this method's params.
    pub fn param_names(&self) -> &'static [&'static str] {
        find(self.table, &self.request.method).map_or(&[], |m| m.params)
    }

    /// The key of the session this request runs in: its own `session`
    /// member, else the session bound to the connection; -32006 without either.
    pub fn session_key(&self) -> Result<String, RpcError> {
        match (&self.request.session, self.conn.session()) {
            (Some(key), _) => Ok(key.clone()),
            (None, Some(bound)) => Ok(bound.key.clone()),
            (None, None) => Err(RpcError::unauthenticated(NO_SESSION)),
        }
    }

    /// The built-in methods of the table (every row but the prefixes), as
    /// OpenRPC method objects.
    pub fn builtin_openrpc(&self) -> Vec<Value> {
        self.table
            .iter()
            .filter(|m| !m.name.ends_with('.'))
            .map(openrpc_method)
            .collect()
    }
}

/// One row as an OpenRPC method object.
fn openrpc_method(m: &Method) -> Value {
    let params: Vec<Value> = m
        .params
        .iter()
        .map(|p| json!({"name": p, "schema": {"type": "string"}}))
        .collect();
    json!({
        "name": m.name,
        "summary": m.summary,
        "paramStructure": "by-name",
        "params": params,
        "result": {"name": "result", "schema": {}},
    })
}

/// JSON `null` as raw JSON text (a call's SQL NULL or void result).
pub fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}
