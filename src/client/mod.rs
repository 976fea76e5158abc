//! The thin client: a blocking JSON-RPC 2.0 caller speaking the wire
//! contract of ARCHITECTURE.md (one JSON text per `\n`-terminated line, the
//! `timeout_ms` extension member, the `session.*` methods), with the retry
//! discipline a fleet of clients needs in front of an overloaded server.
//!
//! - Outcomes: a [`CallError`] says whether the server refused the call
//!   ([`ErrorKind::Server`], with the JSON-RPC code and `data`), whether the
//!   call did not run because no connection carried it
//!   ([`ErrorKind::Connection`]), or whether it may have run
//!   ([`ErrorKind::OutcomeUnknown`], [`ErrorKind::Protocol`]).
//! - Retries: a refusal the server marks `data.retryable` (overloaded,
//!   shutting down, database unavailable, transaction conflict) and a
//!   connection that could not be made are tried again, after the server's
//!   `retry_after_ms` or an exponential backoff with full jitter, at most
//!   [`ClientOptions::max_attempts`] times and only while the
//!   [`RetryBudget`] allows. A call that may have run is retried only
//!   when it carries an idempotency key (the default: every
//!   [`Client::call`] gets a fresh key, kept across its retries), so the
//!   server applies it once: after "outcome unknown" (the connection broke
//!   after sending) the client moves to the next instance of its list,
//!   joins the session there and sends the same call with the same key.
//! - Failover: a client starts at a pseudo-random one of its servers, and
//!   moves to the next when one refuses connections, is draining (-32003)
//!   or full (-32005), avoiding that one for a few seconds.
//! - Sessions: after [`Client::login`] or [`Client::join`] the client
//!   remembers the session key and binds it (`session.join`) to every new
//!   connection it opens before sending the next call.
//!
//! One request is in flight at a time. Request ids are increasing integers; a
//! reply carrying another id (say, the late answer to a call that timed out on
//! this side) is skipped, so the connection stays usable after a client-side
//! timeout.

mod error;
mod retry;
mod servers;
pub mod tls;
mod wire;

use std::fmt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::protocol::code::UNAUTHENTICATED;

pub use error::{CallError, ErrorKind};
pub use retry::RetryBudget;
pub use tls::{ClientTls, Trust};
pub use wire::{CONNECT_TIMEOUT, TIMEOUT_MARGIN};

use retry::{backoff, jittered};
use servers::Servers;
use wire::{remaining_or_tick, request_line, Connection, ReplyLimit};

/// Attempts per call unless [`ClientOptions::max_attempts`] says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The longest a server is avoided after it refused or was draining.
const MAX_QUARANTINE: Duration = Duration::from_secs(30);

/// How a [`Client`] retries and spreads its calls. Built from
/// [`ClientOptions::default`] with the methods below, e.g.
/// `ClientOptions::default().max_attempts(5)`.
///
/// Cloning options shares their [`RetryBudget`], so clients made from
/// clones of one `ClientOptions` throttle their retries together.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    max_attempts: u32,
    budget: RetryBudget,
    backoff_base: Duration,
    backoff_cap: Duration,
    max_wait: Duration,
    quarantine: Duration,
    spread: bool,
    idempotency_keys: bool,
    tls: Option<ClientTls>,
}

impl Default for ClientOptions {
    /// 3 attempts, a budget of its own, backoff from 50 ms up to 2 s, waits
    /// of at most 5 s, 3 s quarantine, a random first server.
    fn default() -> ClientOptions {
        ClientOptions {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            budget: RetryBudget::default(),
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(2),
            max_wait: Duration::from_secs(5),
            quarantine: Duration::from_secs(3),
            spread: true,
            idempotency_keys: true,
            tls: None,
        }
    }
}

impl ClientOptions {
    /// Speak TLS to every server, trusting what `tls` trusts.
    pub fn tls(mut self, tls: ClientTls) -> ClientOptions {
        self.tls = Some(tls);
        self
    }

    /// Speak TLS to every server, trusting `trust`; a CA file that cannot
    /// be read is a connection error (not retryable) naming it.
    pub fn trusting(self, trust: &Trust) -> Result<ClientOptions, CallError> {
        let tls = ClientTls::new(trust).map_err(|e| CallError::connection(e.to_string(), false))?;
        Ok(self.tls(tls))
    }

    /// At most `n` attempts per call (at least 1; 1 means no retries).
    pub fn max_attempts(mut self, n: u32) -> ClientOptions {
        self.max_attempts = n.max(1);
        self
    }

    /// Draws retries from `budget`; pass clones of one budget to many
    /// clients so that they throttle together.
    pub fn retry_budget(mut self, budget: RetryBudget) -> ClientOptions {
        self.budget = budget;
        self
    }

    /// Waits up to `base × 2^(n-1)`, at most `cap`, after the n-th failure
    /// when the server names no `retry_after_ms`.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> ClientOptions {
        self.backoff_base = base;
        self.backoff_cap = cap.max(base);
        self
    }

    /// Gives up instead of retrying when the wait before the retry (the
    /// server's `retry_after_ms`) would be longer than `max`.
    pub fn max_wait(mut self, max: Duration) -> ClientOptions {
        self.max_wait = max;
        self
    }

    /// Avoids a server that refused a connection for `period` (a server's
    /// own `retry_after_ms` with -32003/-32005 takes precedence, up to 30 s).
    pub fn quarantine(mut self, period: Duration) -> ClientOptions {
        self.quarantine = period;
        self
    }

    /// Whether a client starts at a pseudo-random server of its list
    /// (`true`, the default, spreads clients over the instances) or at the
    /// first (`false`: a primary and its fallbacks, in order).
    pub fn spread(mut self, spread: bool) -> ClientOptions {
        self.spread = spread;
        self
    }

    /// Whether every [`Client::call`] carries a fresh `idempotency_key`
    /// (`true`, the default), which makes a call whose outcome is unknown
    /// safe to send again; `false` sends none, and such a call fails with
    /// [`ErrorKind::OutcomeUnknown`].
    pub fn idempotency_keys(mut self, on: bool) -> ClientOptions {
        self.idempotency_keys = on;
        self
    }
}

/// A session as `session.login` and `session.join` describe it.
///
/// `Debug` does not show the key: it is a bearer secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session key; whoever holds it acts as `user` until it expires.
    pub session: String,
    /// The user the session belongs to.
    pub user: String,
    /// When the session expires unless used, as the server wrote it.
    pub expires_at: String,
}

impl SessionInfo {
    /// Reads `{session, user, expires_at}` from the result of `method`.
    fn from_result(result: &Value, method: &str) -> Result<SessionInfo, CallError> {
        let text = |key: &str| match result.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) if key == "expires_at" && !v.is_null() => Some(v.to_string()),
            _ => None,
        };
        match (text("session"), text("user"), text("expires_at")) {
            (Some(session), Some(user), Some(expires_at)) => Ok(SessionInfo {
                session,
                user,
                expires_at,
            }),
            _ => Err(CallError::protocol(format!(
                "the result of {method} lacks a string session, user or expires_at: {}",
                redact_session(result)
            ))),
        }
    }
}

impl fmt::Debug for SessionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionInfo")
            .field("session", &"<redacted>")
            .field("user", &self.user)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// `result` as JSON text with its `session` member hidden.
fn redact_session(result: &Value) -> String {
    let mut shown = result.clone();
    if let Some(key) = shown.get_mut("session") {
        *key = "<redacted>".into();
    }
    shown.to_string()
}

/// A remembered session key; `Debug` hides it.
#[derive(Clone)]
struct SessionKey(String);

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

/// One call as the retry loop sees it.
struct Call<'a> {
    method: &'a str,
    params: &'a Value,
    /// The caller's timeout and the deadline it sets, if any.
    timeout: Option<(Duration, Instant)>,
    /// Whether the remembered session is joined on a new connection first.
    joins_session: bool,
    /// The `idempotency_key` sent with every attempt, if any.
    key: Option<String>,
    /// A session key sent with the request itself (no join).
    session: Option<&'a str>,
}

impl<'a> Call<'a> {
    fn new(method: &'a str, params: &'a Value, timeout: Option<Duration>) -> Call<'a> {
        Call {
            method,
            params,
            timeout: timeout.map(|t| (t, Instant::now() + t)),
            joins_session: true,
            key: None,
            session: None,
        }
    }

    /// The deadline of the whole call, retries included.
    fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|(_, at)| at)
    }
}

/// A blocking JSON-RPC client holding one connection to one of its servers
/// at a time, retrying and failing over as the module documentation says.
#[derive(Debug)]
pub struct Client {
    servers: Servers,
    options: ClientOptions,
    conn: Option<Connection>,
    last_id: u64,
    session: Option<SessionKey>,
    last_attempts: u32,
    keys: KeySource,
}

impl Client {
    /// [`connect_with`](Self::connect_with) the default [`ClientOptions`].
    pub fn connect<S: AsRef<str>>(servers: &[S]) -> Result<Client, CallError> {
        Client::connect_with(servers, ClientOptions::default())
    }

    /// Connects to one of `servers` (`host:port` each): a pseudo-random one
    /// first (unless [`ClientOptions::spread`] is off), then the others in
    /// order, each within [`CONNECT_TIMEOUT`].
    ///
    /// The error is a retryable [`ErrorKind::Connection`] error listing why
    /// each server failed (not retryable when no address is usable at all).
    pub fn connect_with<S: AsRef<str>>(
        servers: &[S],
        options: ClientOptions,
    ) -> Result<Client, CallError> {
        let list: Vec<String> = servers.iter().map(|s| s.as_ref().to_string()).collect();
        let first = if options.spread && !list.is_empty() {
            fastrand::usize(..list.len())
        } else {
            0
        };
        let mut client = Client {
            servers: Servers::new(list, first),
            options,
            conn: None,
            last_id: 0,
            session: None,
            last_attempts: 0,
            keys: KeySource::new(),
        };
        client.conn = Some(client.open_connection()?);
        Ok(client)
    }

    /// The server (as given to [`connect`](Self::connect)) the client is
    /// connected to; `None` after the connection was dropped.
    pub fn server(&self) -> Option<&str> {
        self.conn.as_ref().map(|c| c.server.as_str())
    }

    /// The remembered session key, joined on every new connection; `None`
    /// before a login or join, after a logout, or once the server said the
    /// session is unknown (-32006).
    pub fn session(&self) -> Option<&str> {
        self.session.as_ref().map(|k| k.0.as_str())
    }

    /// How many attempts the last call made, whatever its outcome (the
    /// count of a failed call is also in [`CallError::attempts`]).
    pub fn last_attempts(&self) -> u32 {
        self.last_attempts
    }

    /// Calls `method` with `params` (an object or an array; `Null` sends no
    /// `params`) and waits for its reply without a limit of its own: the
    /// server answers every request it read, at the latest when its
    /// `invocation.default_timeout_ms` expires.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, CallError> {
        let call = self.keyed(Call::new(method, &params, None));
        self.invoke(&call)
    }

    /// Like [`call`](Self::call), but within `timeout` for the whole call,
    /// retries included: each attempt sends the time left as its
    /// `timeout_ms`, and no retry starts after the deadline. A reply that
    /// has not come `timeout` + [`TIMEOUT_MARGIN`] after the start fails the
    /// call with an [`ErrorKind::OutcomeUnknown`] error, and the connection
    /// stays usable.
    pub fn call_with_timeout(
        &mut self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let call = self.keyed(Call::new(method, &params, Some(timeout)));
        self.invoke(&call)
    }

    /// Like [`call_with_timeout`](Self::call_with_timeout) (no timeout when
    /// `None`) with `key` as the idempotency key, e.g. one a script keeps
    /// across runs of the same call.
    pub fn call_with_key(
        &mut self,
        method: &str,
        params: Value,
        key: &str,
        timeout: Option<Duration>,
    ) -> Result<Value, CallError> {
        let call = Call {
            key: Some(key.to_string()),
            ..Call::new(method, &params, timeout)
        };
        self.invoke(&call)
    }

    /// `call` with a fresh idempotency key, unless keys are turned off.
    fn keyed<'a>(&mut self, call: Call<'a>) -> Call<'a> {
        let key = self.options.idempotency_keys.then(|| self.keys.next());
        Call { key, ..call }
    }

    /// Like [`call`](Self::call) (with `timeout`, like
    /// [`call_with_timeout`](Self::call_with_timeout)), but authenticated
    /// by `session` sent in the request itself (its `"session"` member)
    /// rather than a session joined to the connection: for one call in a
    /// session without binding it, and for clients that connect per call.
    pub fn call_in_session(
        &mut self,
        session: &str,
        method: &str,
        params: Value,
        timeout: Option<Duration>,
    ) -> Result<Value, CallError> {
        let call = self.keyed(Call {
            joins_session: false,
            session: Some(session),
            ..Call::new(method, &params, timeout)
        });
        self.invoke(&call)
    }

    /// Logs in as `user` (`session.login`; `password` `None` for a server
    /// in trust mode), binds the new session to this connection and
    /// remembers its key in place of any earlier one. A refused login is a
    /// -32006 error and leaves the remembered session as it was.
    pub fn login(&mut self, user: &str, password: Option<&str>) -> Result<SessionInfo, CallError> {
        let mut params = json!({ "user": user });
        if let Some(password) = password {
            params["password"] = password.into();
        }
        let result = self.invoke(&Call {
            joins_session: false,
            ..Call::new("session.login", &params, None)
        })?;
        self.adopt_session(&result, "session.login")
    }

    /// Binds the existing session `session` (made on any instance) to this
    /// connection (`session.join`) and remembers it in place of any earlier
    /// one. An unknown or expired key is a -32006 error, not retried.
    pub fn join(&mut self, session: &str) -> Result<SessionInfo, CallError> {
        let params = json!({ "session": session });
        let result = self.invoke(&Call {
            joins_session: false,
            ..Call::new("session.join", &params, None)
        })?;
        self.adopt_session(&result, "session.join")
    }

    /// Ends the session everywhere (`session.logout`) and forgets its key.
    /// The key is forgotten too when the server says there is no session
    /// (-32006), which is returned as the error.
    pub fn logout(&mut self) -> Result<(), CallError> {
        let outcome = self.call("session.logout", json!({}));
        match &outcome {
            Err(e) if e.code() != Some(UNAUTHENTICATED) => {}
            _ => self.forget_session(),
        }
        outcome.map(|_| ())
    }

    /// Remembers the session a login or join returned, bound to this connection.
    fn adopt_session(&mut self, result: &Value, method: &str) -> Result<SessionInfo, CallError> {
        let info = SessionInfo::from_result(result, method)?;
        self.session = Some(SessionKey(info.session.clone()));
        if let Some(conn) = &mut self.conn {
            conn.joined = true;
        }
        Ok(info)
    }

    /// Drops the remembered session key.
    fn forget_session(&mut self) {
        self.session = None;
        if let Some(conn) = &mut self.conn {
            conn.joined = false;
        }
    }

    /// Runs `call` until it succeeds, fails for good, or the retry
    /// discipline says stop.
    fn invoke(&mut self, call: &Call) -> Result<Value, CallError> {
        let mut attempts = 0;
        // A keyed call retried after "outcome unknown" that then fails
        // without running anywhere is still of unknown outcome.
        let mut unknown: Option<CallError> = None;
        loop {
            attempts += 1;
            self.last_attempts = attempts;
            let error = match self.attempt(call) {
                Ok(result) => {
                    self.options.budget.record_success();
                    return Ok(result);
                }
                Err(e) => repeatable(e.after_attempts(attempts), call),
            };
            self.after_failure(&error);
            match self.retry_wait(&error, attempts, call.deadline()) {
                Some(wait) => {
                    log::debug!("{}: {error}; retrying in {wait:?}", call.method);
                    if error.outcome_unknown() && unknown.is_none() {
                        unknown = Some(error);
                    }
                    std::thread::sleep(wait);
                }
                None => {
                    return Err(match unknown {
                        Some(first) if error.kind() == ErrorKind::Connection => {
                            first.after_attempts(attempts)
                        }
                        _ => error,
                    })
                }
            }
        }
    }

    /// One attempt: a live connection, the session joined on it if it is
    /// new, then the request and its reply.
    fn attempt(&mut self, call: &Call) -> Result<Value, CallError> {
        self.ensure_connection()?;
        if call.joins_session {
            self.rejoin_session(call)?;
        }
        self.exchange(call.method, call.params.clone(), call)
    }

    /// Sends one request on the current connection and reads its reply.
    fn exchange(&mut self, method: &str, params: Value, call: &Call) -> Result<Value, CallError> {
        self.last_id += 1;
        let id = self.last_id;
        let time_left = call.deadline().map(remaining_or_tick);
        let key = call.key.as_deref().filter(|_| method == call.method);
        // A call with its own session never re-joins, so this is its request.
        let line = request_line(id, method, params, time_left, key, call.session);
        let limit = call.timeout.map(|(timeout, at)| ReplyLimit {
            at: at + TIMEOUT_MARGIN,
            timeout,
        });
        let conn = self.conn.as_mut().expect("ensure_connection ran first");
        conn.exchange(id, &line, limit)
    }

    /// Binds the remembered session to a connection that does not have it
    /// yet. The join is idempotent, so a connection lost during it is a
    /// retryable connection error: the call itself was not sent. A -32006
    /// (the session expired or is unknown) forgets the key and is returned.
    fn rejoin_session(&mut self, call: &Call) -> Result<(), CallError> {
        let Some(SessionKey(key)) = self.session.clone() else {
            return Ok(());
        };
        let conn = self.conn.as_ref().expect("ensure_connection ran first");
        if conn.joined {
            return Ok(());
        }
        let server = conn.server.clone();
        match self.exchange("session.join", json!({ "session": key }), call) {
            Ok(_) => {
                self.conn.as_mut().expect("still connected").joined = true;
                Ok(())
            }
            Err(e) if e.code() == Some(UNAUTHENTICATED) => {
                self.session = None;
                Err(e)
            }
            Err(e) if e.kind() == ErrorKind::OutcomeUnknown => Err(CallError::connection(
                format!("connection to {server} failed while re-joining the session; the call was not sent"),
                true,
            )),
            Err(e) => Err(e),
        }
    }

    /// Keeps the connection if it is still usable, else opens a new one.
    fn ensure_connection(&mut self) -> Result<(), CallError> {
        if let Some(conn) = &self.conn {
            if conn.closed_by_peer() {
                log::debug!("{} closed the idle connection; reconnecting", conn.server);
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            self.conn = Some(self.open_connection()?);
        }
        Ok(())
    }

    /// Connects to the first server, in [`Servers::order`], that accepts,
    /// quarantining each one that does not.
    fn open_connection(&mut self) -> Result<Connection, CallError> {
        if self.servers.len() == 0 {
            let message = "no server address given; expected host:port".to_string();
            return Err(CallError::connection(message, false));
        }
        let mut failures = Vec::new();
        let mut retryable = false;
        for i in self.servers.order() {
            let server = self.servers.name(i).to_string();
            match Connection::open(i, &server, self.options.tls.as_ref()) {
                Ok(conn) => {
                    self.servers.set_current(i);
                    return Ok(conn);
                }
                Err(e) => {
                    retryable |= e.kind() != std::io::ErrorKind::InvalidInput;
                    self.servers.quarantine(i, self.options.quarantine);
                    failures.push(format!("{server}: {e}"));
                }
            }
        }
        Err(CallError::connection(connect_failure(&failures), retryable))
    }

    /// Drops a connection that is out of step, and moves away from a
    /// server that is draining or full.
    fn after_failure(&mut self, error: &CallError) {
        if error.fails_over() || (error.outcome_unknown() && error.retryable()) {
            if let Some(conn) = &self.conn {
                let period = error
                    .retry_after()
                    .unwrap_or(self.options.quarantine)
                    .min(MAX_QUARANTINE);
                log::debug!("{}: {error}; avoiding it for {period:?}", conn.server);
                self.servers.quarantine(conn.index, period);
            }
        }
        if !error.keeps_connection || error.fails_over() {
            self.conn = None;
        }
    }

    /// How long to wait before retrying after `error`, the outcome of
    /// attempt number `attempts`; `None` when the call must fail now.
    fn retry_wait(
        &mut self,
        error: &CallError,
        attempts: u32,
        deadline: Option<Instant>,
    ) -> Option<Duration> {
        if !error.retryable() {
            return None;
        }
        let budget = &self.options.budget;
        budget.record_failure();
        if attempts >= self.options.max_attempts {
            return None;
        }
        if !budget.allows_retry() {
            log::debug!("retry budget spent ({:.1} tokens left)", budget.tokens());
            return None;
        }
        let wait = self.backoff_after(error, attempts);
        let too_late = deadline.is_some_and(|d| Instant::now() + wait >= d);
        (wait <= self.options.max_wait && !too_late).then_some(wait)
    }

    /// No wait when another server can take the call; else the server's
    /// `retry_after_ms` with a little jitter; else exponential backoff.
    fn backoff_after(&mut self, error: &CallError, attempts: u32) -> Duration {
        let moves_on = error.fails_over() || error.outcome_unknown();
        if moves_on && self.servers.any_available() {
            return Duration::ZERO;
        }
        match error.retry_after() {
            Some(after) => jittered(after),
            None => {
                let (base, cap) = (self.options.backoff_base, self.options.backoff_cap);
                backoff(attempts, base, cap)
            }
        }
    }
}

/// A call whose outcome is unknown because its connection broke after
/// sending may be sent again when it carries an idempotency key: the
/// server applies it at most once. A reply that did not come within the
/// caller's timeout is not retried (the deadline has passed).
fn repeatable(error: CallError, call: &Call) -> CallError {
    let broke = error.kind() == ErrorKind::OutcomeUnknown && !error.keeps_connection;
    match (&call.key, broke) {
        (Some(_), true) => error.safe_to_repeat(),
        _ => error,
    }
}

/// Fresh idempotency keys: 64 random bits per client (fastrand, seeded per
/// process from the OS), then a counter.
#[derive(Debug)]
struct KeySource {
    prefix: u64,
    next: u64,
}

impl KeySource {
    fn new() -> KeySource {
        KeySource {
            prefix: fastrand::u64(..),
            next: 0,
        }
    }

    fn next(&mut self) -> String {
        self.next += 1;
        format!("{:016x}-{}", self.prefix, self.next)
    }
}

/// The message for a connection attempt where every server failed.
fn connect_failure(failures: &[String]) -> String {
    match failures {
        [one] => format!("cannot connect to {one}"),
        _ => format!(
            "cannot connect to any of {} servers: {}",
            failures.len(),
            failures.join("; ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_info_needs_session_user_and_expiry() {
        let info = SessionInfo::from_result(
            &json!({"session": "s3cret", "user": "ann", "expires_at": "2030-01-01T00:00:00Z"}),
            "session.login",
        )
        .unwrap();
        assert_eq!(info.user, "ann");
        assert_eq!(info.expires_at, "2030-01-01T00:00:00Z");
        assert!(!format!("{info:?}").contains("s3cret"));
        let numeric = SessionInfo::from_result(
            &json!({"session": "k", "user": "ann", "expires_at": 1700000000}),
            "session.join",
        )
        .unwrap();
        assert_eq!(numeric.expires_at, "1700000000");
        let e =
            SessionInfo::from_result(&json!({"session": "s3cret"}), "session.login").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(e.message().contains("session.login"), "{e}");
        assert!(!e.message().contains("s3cret"), "{e}");
    }

    #[test]
    fn a_remembered_key_is_not_shown_by_debug() {
        assert_eq!(
            format!("{:?}", Some(SessionKey("s3cret".into()))),
            "Some(SessionKey(<redacted>))"
        );
    }

    #[test]
    fn options_keep_sane_bounds() {
        let o = ClientOptions::default()
            .max_attempts(0)
            .backoff(Duration::from_millis(100), Duration::from_millis(10));
        assert_eq!(o.max_attempts, 1);
        assert_eq!(o.backoff_cap, Duration::from_millis(100));
        let shared = o.clone();
        shared.budget.record_failure();
        assert_eq!(o.budget.tokens(), 9.0, "clones share the budget");
    }

    #[test]
    fn connect_failures_name_every_server() {
        assert_eq!(
            connect_failure(&["a:1: refused".into()]),
            "cannot connect to a:1: refused"
        );
        assert_eq!(
            connect_failure(&["a:1: x".into(), "b:2: y".into()]),
            "cannot connect to any of 2 servers: a:1: x; b:2: y"
        );
    }
}
