//! The built-in methods: `sys.ping` (liveness, no database), `sys.status`
//! (this instance's sizes, share, counters and latencies), `sys.instances`
//! (the live instances sharing the database) and `rpc.discover` (an
//! OpenRPC document built from the same catalogue the calls use).

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::method::Call;
use crate::protocol::RpcError;
use crate::server::context::Context;

/// `sys.ping`: answered by the router thread. `auth` tells a client whether
/// `session.login` needs a password ("password") or not ("trust").
pub fn ping(ctx: &Context) -> &RawValue {
    &ctx.ping_result
}

/// The result of `sys.ping`, rendered once at start (it never changes).
pub fn ping_result(instance: &str, auth_mode: &str) -> Box<RawValue> {
    let text = json!({"pong": true, "instance": instance, "auth": auth_mode}).to_string();
    RawValue::from_string(text).expect("rendered JSON is JSON")
}

/// `sys.status`: a snapshot of this instance, answered on the router
/// thread (so it answers while every worker is busy and the queue full).
/// All it reads is kept current as things happen (the number of open
/// connections and their queued reply bytes, the counters, the last
/// minute's latency histograms), so it costs the same with ten
/// connections or ten thousand and holds the workers' statistics lock only
/// to copy two histograms.
pub fn status(ctx: &Context) -> Value {
    let pool = ctx.db.pool.state();
    let mut status = json!({
        "instance": ctx.instance,
        "version": env!("CARGO_PKG_VERSION"),
        "state": if ctx.shutdown.is_stopping() { "draining" } else { "running" },
        "uptime_s": ctx.stats.uptime().as_secs(),
        "workers": {"total": ctx.config.invocation.workers, "busy": ctx.dispatcher.busy_workers()},
        "queue": {"depth": ctx.dispatcher.depth(), "capacity": ctx.dispatcher.capacity()},
        "pool": {
            "size": ctx.config.db.pool_size,
            "share": ctx.db.share().limit(),
            "open": pool.connections,
            "idle": pool.idle_connections,
            "in_use": pool.connections - pool.idle_connections,
        },
        "connections": {
            "open": ctx.connections.len(),
            "max": ctx.config.server.max_clients,
            "outbox_bytes": ctx.connections.outbox_bytes(),
        },
        "active_limit": ctx.db.limiter().status(),
        "router_threads": ctx.config.server.router_threads,
        "database": {"available": !ctx.db.health.is_down()},
        "functions": ctx.catalog.len(),
        "cluster": ctx.cluster.status(),
        "replicas": replicas_status(ctx),
        "db_calls": {"primary": ctx.replicas.primary_calls()},
        "session_cache": {
            "trusted": ctx.sessions.cache().trusted(),
            "sessions": ctx.sessions.cache().len(),
        },
    });
    if let (Value::Object(out), Value::Object(stats)) = (&mut status, ctx.stats.to_json()) {
        out.extend(stats);
    }
    status
}

/// Each standby as its monitor sees it, with `budget`: its connection
/// budget as the registry splits it ([`Cluster::standby_status`]).
///
/// [`Cluster::standby_status`]: crate::cluster::Cluster::standby_status
fn replicas_status(ctx: &Context) -> Value {
    let mut replicas = ctx.replicas.status();
    let budgets = ctx.cluster.standby_status();
    let (Value::Array(list), Value::Array(budgets)) = (&mut replicas, budgets) else {
        return replicas;
    };
    for replica in list.iter_mut() {
        let name = replica.get("name").cloned();
        if let Some(budget) = budgets.iter().find(|b| b.get("name") == name.as_ref()) {
            replica["budget"] = budget.clone();
        }
    }
    replicas
}

/// `sys.instances`: the live instances in the registry, oldest first.
pub fn instances(call: &Call) -> Result<Value, RpcError> {
    let ctx = call.ctx;
    let mut conn = ctx.acquire(call.deadline)?;
    let cluster = ctx.cluster.clone();
    ctx.with_db(&mut conn, call.deadline, |conn| {
        cluster.instances(conn.client())
    })
}

/// `rpc.discover`: the OpenRPC document (catalogue refreshed at most once a second).
pub fn discover(call: &Call) -> Result<Value, RpcError> {
    let ctx = call.ctx;
    let mut conn = ctx.acquire(call.deadline)?;
    let catalog = ctx.catalog_refreshed(&mut conn, call.deadline)?;
    let mut methods = call.builtin_openrpc();
    methods.extend(catalog.openrpc_methods());
    Ok(json!({
        "openrpc": "1.2.6",
        "info": {
            "title": "blitz",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!("Functions of schema {} as api.<name>, plus the built-in methods.", ctx.config.db.api_schema),
        },
        "methods": methods,
    }))
}
