//! Idempotency keys: a call that carries `idempotency_key` is recorded in
//! `blitz.idempotency` as (user, key, method, params hash, outcome), so that
//! a repeat of it returns the recorded outcome instead of running again.
//!
//! The keyed call is still one statement, one round trip
//! ([`KeyedCall::statement`]): `blitz.idem_claim` takes two advisory locks
//! on (user, key) (class 6450281, "bli"), a transaction-level one and a
//! session-level one, and looks for a record (if there is one, the function
//! is not run and the recorded outcome is the reply); the call runs;
//! `blitz.idem_store` inserts the record with the result and lets the
//! session lock go. The record is committed with the call's effects or not
//! at all. A repeat that arrives meanwhile waits on the locks until the
//! first's transaction has ended, within its own deadline (the watchdog
//! cancels it there: -32002).
//!
//! Which outcomes are recorded: results, and the errors the function itself
//! raised (-32010, and -32007 permission denied), which a repeat would meet
//! again. Such an error rolls the statement back, record included;
//! PostgreSQL cannot catch it inside one statement without a savepoint per
//! call, which would cost every keyed call four more round trips. The
//! session-level lock outlives the rollback: the error is recorded by a
//! second statement ([`after_failure`], `blitz.idem_fail`, which holds the
//! transaction-level lock again until its record is committed) before the
//! key is released, and no repeat can run in between. Failures
//! that say nothing about the call (deadline, overload, shutdown, a lost
//! connection, a conflict after the retries) are not recorded: the call
//! did not happen, and a repeat runs it.
//!
//! Records expire after `invocation.idempotency_ttl_s`: a repeat after that
//! runs again, and [`Sweep`] deletes them in the background.

use std::time::Duration;

use postgres::types::{ToSql, Type};
use postgres::Client;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::chore::Chore;
use crate::protocol::RpcError;

/// One keyed call: its key, method and params hash.
#[derive(Debug, Clone)]
pub struct KeyedCall {
    key: String,
    method: String,
    params_hash: Vec<u8>,
    ttl_s: i32,
}

impl KeyedCall {
    /// The keyed call of `method` with `params`; records older than
    /// `ttl_s` count as expired.
    pub fn new(key: &str, method: &str, params: &Value, ttl_s: u64) -> KeyedCall {
        // serde_json's maps are sorted by key: equal params, equal text.
        let text = serde_json::to_vec(params).expect("a JSON value serializes");
        KeyedCall {
            key: key.to_string(),
            method: method.to_string(),
            params_hash: Sha256::digest(&text).to_vec(),
            ttl_s: ttl_s.min(i32::MAX as u64) as i32,
        }
    }

    /// The statement that claims the key, runs `call` (one row, one json
    /// column, params `$1..$n`) unless an outcome was recorded, and records
    /// its result; it returns the outcome object (see [`outcome`]). Its own
    /// params follow the call's: `$n+1..$n+4`.
    pub fn statement(&self, call: &str, n: usize) -> String {
        let (k, m, h, t) = (n + 1, n + 2, n + 3, n + 4);
        format!(
            "SELECT CASE WHEN k.prior IS NULL THEN blitz.idem_store(${k}, ${m}, ${h}, c.r) ELSE k.prior END \
             FROM (SELECT blitz.idem_claim(${k}, ${m}, ${h}, ${t}) AS prior OFFSET 0) AS k \
             LEFT JOIN LATERAL (SELECT q.r FROM ({call}) AS q(r) WHERE k.prior IS NULL OFFSET 0) AS c ON true"
        )
    }

    /// The types of the statement's own params.
    pub fn types() -> [Type; 4] {
        [Type::TEXT, Type::TEXT, Type::BYTEA, Type::INT4]
    }

    /// The statement's own params.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 4] {
        [&self.key, &self.method, &self.params_hash, &self.ttl_s]
    }
}

/// The reply an outcome object stands for: `{"result": v}`, `{"error":
/// {code, message, data}}`, or `{"reused": true, "method": m}` (-32011).
pub fn outcome(call: &KeyedCall, recorded: Option<Value>) -> Result<Value, RpcError> {
    let Some(Value::Object(mut outcome)) = recorded else {
        return Err(RpcError::internal(
            "the idempotency record of this call has no outcome",
        ));
    };
    if let Some(result) = outcome.remove("result") {
        return Ok(result);
    }
    if outcome.get("reused") == Some(&Value::Bool(true)) {
        return Err(RpcError::idempotency_key_reused(&call.key));
    }
    match outcome.remove("error") {
        Some(error) => Err(RpcError::from_json(&error)
            .unwrap_or_else(|| RpcError::internal("a recorded error cannot be read"))),
        None => Err(RpcError::internal("an idempotency record of unknown shape")),
    }
}

/// Whether a failed keyed call's error is recorded: the function's own
/// errors, which a repeat would meet again.
pub fn is_recorded(error: &RpcError) -> bool {
    use crate::protocol::code;
    matches!(error.code, code::DATABASE_ERROR | code::PERMISSION_DENIED)
}

/// After the keyed statement failed on `client`: records `error` when it is
/// one that [`is_recorded`] (returning the outcome as recorded), and lets
/// the (user, key) lock go; the user is that of session `session`.
/// `Ok(None)`: nothing was recorded.
pub fn after_failure(
    client: &mut Client,
    session: &str,
    call: &KeyedCall,
    error: Option<&RpcError>,
) -> Result<Option<Value>, postgres::Error> {
    let outcome = error
        .filter(|e| is_recorded(e))
        .map(|e| json!({"error": e.to_json()}));
    let row = client.query_one(
        "SELECT blitz.idem_fail($1, $2, $3, $4, $5)",
        &[
            &session,
            &call.key,
            &call.method,
            &call.params_hash,
            &outcome,
        ],
    )?;
    Ok(row.get(0))
}

/// The background deletion of expired records, on the housekeeping connection.
pub struct Sweep {
    ttl_s: i32,
    every: Duration,
}

impl Sweep {
    /// Deletes records older than `ttl_s`, every quarter of it (1 s to 60 s).
    pub fn new(ttl_s: u64) -> Sweep {
        let every =
            Duration::from_secs(ttl_s / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        Sweep {
            ttl_s: ttl_s.min(i32::MAX as u64) as i32,
            every,
        }
    }
}

impl Chore for Sweep {
    fn name(&self) -> &'static str {
        "the idempotency sweep"
    }

    fn every(&self) -> Duration {
        self.every
    }

    fn run(&mut self, client: &mut Client) -> Result<(), postgres::Error> {
        let deleted = client.execute(
            "DELETE FROM blitz.idempotency WHERE created < pg_catalog.now() - make_interval(secs => $1::int4)",
            &[&self.ttl_s],
        )?;
        if deleted > 0 {
            log::debug!("deleted {deleted} expired idempotency records");
        }
        Ok(())
    }

    fn finish(&mut self, _client: &mut Client) -> Result<(), postgres::Error> {
        Ok(())
    }
}
