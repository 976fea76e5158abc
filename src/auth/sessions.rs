//! Sessions, kept in PostgreSQL (`blitz.sessions`) so that any instance
//! serves any session, as OMERO's `joinSession` does.
//!
//! - [`Session`]: the identity bound to a connection (never logs its key).
//! - [`Sessions`]: the per-instance part: whether schema `blitz` is current,
//!   the queries that create, find and end sessions, and the batched
//!   `last_used` writes ([`Sessions::touch`]), flushed off the request path
//!   by the housekeeper's [`SessionWriter`] chore on its own connection.
//! - [`run_in_session`]: runs an api call's statement so that
//!   the session check (with `auth.set_role`, `blitz.enter`) checks
//!   the session and sets `blitz.user`, `blitz.session` (and the role) in
//!   the call's own transaction, in the same round trip; for a session the
//!   [`cache`](super::cache) knows live, the statement only sets them.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postgres::types::{Oid, ToSql, Type};
use postgres::{Client, GenericClient};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::cache::{Remaining, SessionCache};
use super::migrations;
use crate::config::{AuthConfig, AuthMode};
use crate::db::{Chore, DbConn, StatementKey};
use crate::logging::LogThrottle;

/// The identity bound to a connection by `session.login` or `session.join`.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    /// The session key: the client's credential.
    pub key: String,
    /// The user it belongs to.
    pub user: String,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("key", &"***")
            .finish()
    }
}

/// How a session looks on the wire: `{session, user, expires_at}`.
pub fn describe(session: &Session, expires_at: Value) -> Value {
    json!({"session": session.key, "user": session.user, "expires_at": expires_at})
}

/// The SQL expression for when a session expires, from its `created` and
/// `last_used` columns; `$2` idle seconds, `$3` max lifetime (0 = none).
const EXPIRES_AT: &str = "pg_catalog.to_json(LEAST(s.last_used + make_interval(secs => $2::int4), \
     CASE WHEN $3::int4 = 0 THEN 'infinity'::timestamptz ELSE s.created + make_interval(secs => $3::int4) END))";

/// Whether session `s` is live: the call of `blitz.session_live` (schema
/// migration 3), the one definition of the rule, which `blitz.enter` uses
/// too; `$2` idle seconds, `$3` max lifetime (0 = none).
const LIVE: &str = "blitz.session_live(s.last_used, s.created, $2::int4, $3::int4)";

/// The per-instance session state; see the module doc.
pub struct Sessions {
    auth: AuthConfig,
    schema_ready: AtomicBool,
    schema_lock: Mutex<()>,
    schema_warnings: LogThrottle,
    touches: Mutex<Touches>,
    cache: Arc<SessionCache>,
}

/// Sessions used since the last flush, and when each was last written.
#[derive(Default)]
struct Touches {
    pending: HashSet<String>,
    written: HashMap<String, Instant>,
}

impl Sessions {
    /// Session state for `auth`; nothing is checked until first use.
    pub fn new(auth: &AuthConfig) -> Sessions {
        if auth.mode == AuthMode::Password {
            crate::auth::prepare_dummy_hash();
        }
        Sessions {
            auth: auth.clone(),
            schema_ready: AtomicBool::new(false),
            schema_lock: Mutex::new(()),
            schema_warnings: LogThrottle::new(Duration::from_secs(30)),
            touches: Mutex::default(),
            cache: Arc::new(SessionCache::new(Duration::from_secs(
                auth.session_idle_timeout_s,
            ))),
        }
    }

    /// The sessions this instance knows live (kept by the housekeeper's
    /// [`SessionListener`](super::cache::SessionListener)).
    pub fn cache(&self) -> &Arc<SessionCache> {
        &self.cache
    }

    /// Applies pending migrations once per process (cheap afterwards).
    pub fn ensure_schema(&self, client: &mut Client) -> Result<(), postgres::Error> {
        if self.schema_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one_at_a_time = self.schema_lock.lock();
        if self.schema_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        match migrations::migrate(client) {
            Ok(applied) => {
                log_migrations(&applied);
                self.schema_ready.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                if self.schema_warnings.ready() {
                    log::error!("cannot bring schema blitz up to date: {e}; calls needing sessions fail until it can (does the database user have CREATE on the database?)");
                }
                Err(e)
            }
        }
    }

    /// Creates session `key` (from [`crate::auth::new_session_key`]) for
    /// `user`; returns it and its `expires_at`.
    pub fn create(
        &self,
        client: &mut impl GenericClient,
        user: &str,
        key: String,
    ) -> Result<(Session, Value), postgres::Error> {
        let sql = format!(
            "INSERT INTO blitz.sessions AS s (key, user_name) VALUES ($1, $4) RETURNING {EXPIRES_AT}"
        );
        let (idle, max) = self.limits();
        let check = self.cache.check();
        let row = client.query_one(&sql, &[&key, &idle, &max, &user])?;
        let session = Session {
            key,
            user: user.to_string(),
        };
        self.touches
            .lock()
            .written
            .insert(session.key.clone(), Instant::now());
        let remaining = Remaining {
            idle: Duration::from_secs(self.auth.session_idle_timeout_s),
            life: (self.auth.session_max_lifetime_s > 0)
                .then(|| Duration::from_secs(self.auth.session_max_lifetime_s)),
        };
        self.cache
            .insert(&session.key, &session.user, remaining, check);
        Ok((session, row.get(0)))
    }

    /// Checks session `key` in the database: its user when it is live
    /// (then cached, if the cache is trusted), `None` when it is not. The
    /// statement is prepared once per connection: one round trip.
    pub fn verify(&self, db: &mut DbConn, key: &str) -> Result<Option<Arc<str>>, postgres::Error> {
        static VERIFY: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT s.user_name, \
                        EXTRACT(epoch FROM s.last_used + make_interval(secs => $2::int4) - now())::float8, \
                        CASE WHEN $3::int4 = 0 THEN NULL ELSE \
                        EXTRACT(epoch FROM s.created + make_interval(secs => $3::int4) - now())::float8 END \
                   FROM blitz.sessions s JOIN blitz.users u ON u.name = s.user_name \
                  WHERE s.key = $1 AND NOT u.disabled AND {LIVE}"
            )
        });
        let check = self.cache.check();
        let (idle, max) = self.limits();
        let types = [Type::TEXT, Type::INT4, Type::INT4];
        let Some(row) = db.query_opt(&VERIFY, &types, &[&key, &idle, &max])? else {
            return Ok(None);
        };
        let user: String = row.get(0);
        let seconds = |s: f64| Duration::from_secs_f64(s.max(0.0));
        let remaining = Remaining {
            idle: seconds(row.get(1)),
            life: row.get::<_, Option<f64>>(2).map(seconds),
        };
        self.cache.insert(key, &user, remaining, check);
        Ok(Some(Arc::from(user)))
    }

    /// The live session with `key`, and its `expires_at`; `None` when it
    /// does not exist, has expired, or its user is disabled.
    pub fn find(
        &self,
        client: &mut impl GenericClient,
        key: &str,
    ) -> Result<Option<(Session, Value)>, postgres::Error> {
        let sql = format!(
            "SELECT s.user_name, {EXPIRES_AT} FROM blitz.sessions s \
             JOIN blitz.users u ON u.name = s.user_name \
             WHERE s.key = $1 AND NOT u.disabled AND {LIVE}"
        );
        let (idle, max) = self.limits();
        let row = client.query_opt(&sql, &[&key, &idle, &max])?;
        Ok(row.map(|row| {
            let session = Session {
                key: key.to_string(),
                user: row.get(0),
            };
            (session, row.get(1))
        }))
    }

    /// Ends the session with `key` for every instance; false when it had
    /// ended already (by a logout elsewhere, or expiry).
    pub fn end(&self, client: &mut impl GenericClient, key: &str) -> Result<bool, postgres::Error> {
        let sql = format!("DELETE FROM blitz.sessions AS s WHERE key = $1 AND {LIVE}");
        let (idle, max) = self.limits();
        let ended = client.execute(&sql, &[&key, &idle, &max])? > 0;
        self.cache.forget(key);
        let mut touches = self.touches.lock();
        touches.pending.remove(key);
        touches.written.remove(key);
        Ok(ended)
    }

    /// Notes that `session` was used. Its `last_used` is written by the
    /// background flush, at most once per [`Sessions::touch_interval`].
    pub fn touch(&self, key: &str) {
        let every = self.touch_interval();
        let mut touches = self.touches.lock();
        let due = touches
            .written
            .get(key)
            .is_none_or(|t| t.elapsed() >= every);
        if due && !touches.pending.contains(key) {
            touches.pending.insert(key.to_string());
        }
    }

    /// How often one session's `last_used` may be written: a quarter of
    /// the idle timeout, between 100 ms and 5 s.
    pub fn touch_interval(&self) -> Duration {
        let quarter = Duration::from_secs(self.auth.session_idle_timeout_s) / 4;
        quarter.clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// `(idle timeout, max lifetime)` in seconds, as SQL int4.
    fn limits(&self) -> (i32, i32) {
        let clamp = |s: u64| s.min(i32::MAX as u64) as i32;
        (
            clamp(self.auth.session_idle_timeout_s),
            clamp(self.auth.session_max_lifetime_s),
        )
    }

    /// Writes the pending `last_used` times in one statement.
    fn flush(&self, client: &mut Client) -> Result<(), postgres::Error> {
        let keys: Vec<String> = std::mem::take(&mut self.touches.lock().pending)
            .into_iter()
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let sent = Instant::now();
        let result = client.execute(
            "UPDATE blitz.sessions SET last_used = now() WHERE key = ANY($1)",
            &[&keys],
        );
        if result.is_ok() {
            self.cache.written(&keys, sent);
        }
        let mut touches = self.touches.lock();
        match result {
            Ok(_) => {
                let now = Instant::now();
                for key in keys {
                    touches.written.insert(key, now);
                }
                let keep = Duration::from_secs(self.auth.session_idle_timeout_s);
                touches.written.retain(|_, t| t.elapsed() < keep);
                Ok(())
            }
            Err(e) => {
                touches.pending.extend(keys); // try again next round
                Err(e)
            }
        }
    }

    /// Deletes sessions past their idle timeout or lifetime.
    fn purge_expired(&self, client: &mut Client) -> Result<u64, postgres::Error> {
        let (idle, max) = self.limits();
        client.execute(
            "DELETE FROM blitz.sessions AS s \
             WHERE NOT blitz.session_live(s.last_used, s.created, $1::int4, $2::int4)",
            &[&idle, &max],
        )
    }
}

fn log_migrations(applied: &[i32]) {
    if applied.is_empty() {
        log::debug!(
            "schema blitz is current (version {})",
            migrations::latest_version()
        );
    } else {
        log::info!(
            "schema blitz migrated to version {} (applied {applied:?})",
            migrations::latest_version()
        );
    }
}

/// The session chores of the housekeeper (on its connection, one beyond
/// the pool): flushes the pending `last_used` writes every
/// [`Sessions::touch_interval`] and deletes expired sessions once a minute;
/// the last flush runs at a clean stop.
pub struct SessionWriter {
    sessions: Arc<Sessions>,
    last_purge: Option<Instant>,
}

/// How often expired sessions are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(60);

impl SessionWriter {
    /// The chores for `sessions`.
    pub fn new(sessions: Arc<Sessions>) -> SessionWriter {
        SessionWriter {
            sessions,
            last_purge: None,
        }
    }
}

impl Chore for SessionWriter {
    fn name(&self) -> &'static str {
        "recording session activity"
    }

    fn every(&self) -> Duration {
        self.sessions.touch_interval()
    }

    fn run(&mut self, client: &mut Client) -> Result<(), postgres::Error> {
        self.sessions.ensure_schema(client)?;
        self.sessions.flush(client)?;
        if self.last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY) {
            let purged = self.sessions.purge_expired(client)?;
            if purged > 0 {
                log::debug!("deleted {purged} expired sessions");
            }
            self.last_purge = Some(Instant::now());
        }
        Ok(())
    }
}

/// `blitz.enter`'s arguments for one call, and the session's user when
/// the cache knows the session live (then no check runs in the database).
pub struct EnterArgs {
    key: String,
    idle_s: i32,
    max_life_s: i32,
    set_role: bool,
    callee: Oid,
    user: Option<Arc<str>>,
}

/// `blitz.enter` as a statement of its own (the `auth.set_role` path).
const ENTER: &str = "SELECT blitz.enter($1, $2, $3, $4, $5)::text::json";

/// The types of the session check's params.
const ENTER_CALL_TYPES: [Type; 3] = [Type::TEXT, Type::INT4, Type::INT4];

impl EnterArgs {
    /// The arguments that admit the session `key` to a call of function
    /// `callee`; with the session's user when the cache knows it live.
    pub fn new(sessions: &Sessions, key: &str, callee: Oid) -> EnterArgs {
        let (idle_s, max_life_s) = sessions.limits();
        let set_role = sessions.auth.set_role;
        EnterArgs {
            key: key.to_string(),
            idle_s,
            max_life_s,
            set_role,
            callee,
            user: if set_role {
                None
            } else {
                sessions.cache.user(key)
            },
        }
    }

    /// Whether the session still has to be checked (the cache did not know it).
    pub fn unchecked(&self) -> bool {
        self.user.is_none() && !self.set_role
    }

    /// The session's user, as [`Sessions::verify`] found it.
    pub fn checked(self, user: Arc<str>) -> EnterArgs {
        EnterArgs {
            user: Some(user),
            ..self
        }
    }

    fn types() -> [Type; 5] {
        [Type::TEXT, Type::INT4, Type::INT4, Type::BOOL, Type::OID]
    }

    /// The session check's params: key, idle seconds, max lifetime.
    fn call_params(&self) -> [&(dyn ToSql + Sync); 3] {
        [&self.key, &self.idle_s, &self.max_life_s]
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 5] {
        [
            &self.key,
            &self.idle_s,
            &self.max_life_s,
            &self.set_role,
            &self.callee,
        ]
    }
}

/// An api call's statement as [`run_in_session`] takes it.
pub struct CallStatement<'a> {
    /// Names the statement in the connection's cache; [`run_in_session`]
    /// adds its own wrapping bits ([`IN_SESSION`], [`AS_ROLE`]).
    pub key: StatementKey,
    /// Builds the SQL text (one row, one `json` column, params `$1..$n`)
    /// and the params' types: called only when the connection has not
    /// prepared the statement yet.
    pub text: &'a dyn Fn() -> (String, Vec<Type>),
    /// The values of `$1..$n`.
    pub params: &'a [&'a (dyn ToSql + Sync)],
}

/// The session check inside a call's statement, with the session key,
/// idle seconds and max lifetime in `$k`, `$k+1`, `$k+2`: one index probe
/// of `blitz.sessions` and of `blitz.users` (the rule of a live session is
/// `blitz.session_live`'s, inlined) that sets `blitz.user` and
/// `blitz.session`. It is planned with the statement and cached with it:
/// no PL/pgSQL runs on a live session. When the session is dead the
/// subquery has no row and `blitz.enter` (which finds it dead too) raises
/// BZ006.
fn session_check(k: usize) -> String {
    let (key, idle, life) = (k, k + 1, k + 2);
    format!(
        "COALESCE((SELECT pg_catalog.set_config('blitz.user', s.user_name, true) IS NOT NULL \
                      AND pg_catalog.set_config('blitz.session', s.key, true) IS NOT NULL \
                     FROM blitz.sessions s JOIN blitz.users u ON u.name = s.user_name \
                    WHERE s.key = ${key}::text AND NOT u.disabled \
                      AND blitz.session_live(s.last_used, s.created, ${idle}::int4, ${life}::int4)), \
                  blitz.enter(${key}::text, ${idle}::int4, ${life}::int4, false, 0))"
    )
}

/// The wrapping bit of a call wrapped with the session's identity only
/// (the cache knew the session live).
pub const AS_USER: u8 = 1 << 5;
/// The wrapping bit of a call wrapped with the session check, in one statement.
pub const IN_SESSION: u8 = 1 << 6;
/// The wrapping bit of a call run on its own after `blitz.enter` set the role.
pub const AS_ROLE: u8 = 1 << 7;

/// Runs an api call's statement inside the session that `enter`
/// describes, and returns its result as JSON text; the session check sets
/// `blitz.user`, `blitz.session` and, with `auth.set_role`, the role, and
/// raises BZ006 (→ -32006) for a dead session.
///
/// Without `set_role` this is one statement, one round trip
/// ([`run_after`]): for a session the cache knows live, the two settings
/// are set first; otherwise the session check (`session_check`) runs
/// first.
///
/// With `set_role` the call must also be *planned* under the user's role
/// (row-level security and privileges are applied when a statement is
/// planned, and PostgreSQL inlines simple SQL functions into the calling
/// statement), so it runs as BEGIN; `blitz.enter`; the call; COMMIT: four
/// round trips.
pub fn run_in_session(
    db: &mut DbConn,
    enter: &EnterArgs,
    call: &CallStatement,
) -> Result<Option<Box<RawValue>>, postgres::Error> {
    if enter.set_role {
        return run_as_role(db, enter, call);
    }
    let n = call.params.len();
    match &enter.user {
        Some(user) => {
            let (user, key): (&str, &str) = (user, &enter.key);
            let first = || {
                format!(
                    "pg_catalog.set_config('blitz.user', ${}::text, true) IS NOT NULL \
                     AND pg_catalog.set_config('blitz.session', ${}::text, true) IS NOT NULL",
                    n + 1,
                    n + 2
                )
            };
            let extra: [&(dyn ToSql + Sync); 2] = [&user, &key];
            run_after(db, call, &first, &[Type::TEXT, Type::TEXT], &extra, AS_USER)
        }
        None => {
            let first = || session_check(n + 1);
            run_after(
                db,
                call,
                &first,
                &ENTER_CALL_TYPES,
                &enter.call_params(),
                IN_SESSION,
            )
        }
    }
}

/// Runs `call` wrapped so that the boolean SQL expression `first` builds
/// (which sets `blitz.user` and `blitz.session`) is evaluated before it, in
/// one statement: the call is a LATERAL subquery that refers to `first`'s
/// result, so PostgreSQL must evaluate it first, and `OFFSET 0` keeps the
/// planner from flattening either side. `first` reads `extra` (of
/// `extra_types`) as the params after the call's; `wrapping` names this
/// wrapping in the connection's statement cache. The SQL text is built
/// only when the connection has not prepared the statement yet.
fn run_after(
    db: &mut DbConn,
    call: &CallStatement,
    first: &dyn Fn() -> String,
    extra_types: &[Type],
    extra: &[&(dyn ToSql + Sync)],
    wrapping: u8,
) -> Result<Option<Box<RawValue>>, postgres::Error> {
    let wrapped = || {
        let (sql, mut types) = (call.text)();
        types.extend_from_slice(extra_types);
        let first = first();
        let sql = format!(
            "SELECT c.* FROM (SELECT {first} AS ok OFFSET 0) AS e \
             CROSS JOIN LATERAL (SELECT * FROM ({sql}) AS c WHERE e.ok OFFSET 0) AS c"
        );
        (sql, types)
    };
    let mut params = call.params.to_vec();
    params.extend_from_slice(extra);
    let key = StatementKey {
        wrapping: call.key.wrapping | wrapping,
        ..call.key
    };
    db.query_raw_json(key, wrapped, &params)
}

fn run_as_role(
    db: &mut DbConn,
    enter: &EnterArgs,
    call: &CallStatement,
) -> Result<Option<Box<RawValue>>, postgres::Error> {
    let key = StatementKey {
        wrapping: call.key.wrapping | AS_ROLE,
        ..call.key
    };
    db.client().batch_execute("BEGIN")?;
    let outcome = db
        .query_json(ENTER, &EnterArgs::types(), &enter.params())
        .and_then(|_| db.query_raw_json(key, call.text, call.params));
    match outcome {
        Ok(value) => db.client().batch_execute("COMMIT").map(|()| value),
        Err(e) => {
            let _ = db.client().batch_execute("ROLLBACK");
            Err(e)
        }
    }
}
