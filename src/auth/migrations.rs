//! The server's own tables, in schema `blitz` (never in the api schema):
//! users, sessions, `blitz.enter` (the function that puts a session's
//! identity into a call's transaction), the instance registry
//! (`blitz.instances` and `blitz.standby_shares`, see `cluster`) and the idempotency records with
//! their functions (`blitz.idempotency`, see `db::idempotency`).
//!
//! Changes are versioned [`MIGRATIONS`], applied in order by [`migrate`] in
//! one transaction under an advisory lock, so two instances starting at once
//! apply each migration exactly once. A migration, once released, is never
//! edited: a change is a new migration.

use postgres::{Client, GenericClient};

/// Advisory lock key held while migrating ("blitz" in ASCII).
const MIGRATION_LOCK: i64 = 0x0062_6c69_747a;

/// One schema change: its version, what it does, and its SQL.
pub struct Migration {
    /// Applied in increasing order; recorded in `blitz.schema_migrations`.
    pub version: i32,
    /// One line for the log and the migrations table.
    pub description: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "users and sessions",
        sql: "
CREATE TABLE blitz.users (
    name          text PRIMARY KEY CHECK (name <> '' AND length(name) <= 63),
    password_hash text,              -- argon2id PHC string; NULL: no password (trust mode)
    created       timestamptz NOT NULL DEFAULT now(),
    disabled      boolean NOT NULL DEFAULT false
);
CREATE TABLE blitz.sessions (
    key       text PRIMARY KEY,      -- 256 random bits, base64url
    user_name text NOT NULL REFERENCES blitz.users (name) ON DELETE CASCADE,
    created   timestamptz NOT NULL DEFAULT now(),
    last_used timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_last_used ON blitz.sessions (last_used);
",
    },
    Migration {
        version: 2,
        description: "blitz.enter: a session's identity in the call's transaction",
        sql: r#"
CREATE FUNCTION blitz.enter(session_key text, idle_s int, max_life_s int,
                            set_role boolean, callee oid)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    who text;
BEGIN
    SELECT s.user_name INTO who
      FROM blitz.sessions s JOIN blitz.users u ON u.name = s.user_name
     WHERE s.key = session_key
       AND NOT u.disabled
       AND s.last_used > now() - make_interval(secs => idle_s)
       AND (max_life_s = 0 OR s.created > now() - make_interval(secs => max_life_s));
    IF who IS NULL THEN
        RAISE EXCEPTION 'the session has expired or was ended; log in again'
              USING ERRCODE = 'BZ006';
    END IF;
    PERFORM pg_catalog.set_config('blitz.user', who, true);
    PERFORM pg_catalog.set_config('blitz.session', session_key, true);
    IF set_role THEN
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = who) THEN
            RAISE EXCEPTION 'auth.set_role is on but there is no PostgreSQL role "%"', who
                  USING ERRCODE = '42501',
                        HINT = 'CREATE ROLE for the user and GRANT it to the server''s database user';
        END IF;
        PERFORM pg_catalog.set_config('role', who, true);
        -- Checked here, not only by PostgreSQL: a simple SQL function is
        -- inlined when a statement is planned, and a plan cached on this
        -- connection for another user would skip the check.
        IF NOT pg_catalog.has_function_privilege(who, callee, 'EXECUTE') THEN
            RAISE EXCEPTION 'permission denied for function %', callee::regprocedure
                  USING ERRCODE = '42501';
        END IF;
    END IF;
    RETURN true;
END
$$;
"#,
    },
    Migration {
        version: 3,
        description: "blitz.session_live: the one definition of a live session",
        sql: r#"
CREATE FUNCTION blitz.session_live(last_used timestamptz, created timestamptz,
                                   idle_s int, max_life_s int)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT last_used > now() - make_interval(secs => idle_s)
       AND (max_life_s = 0 OR created > now() - make_interval(secs => max_life_s))
$$;
CREATE OR REPLACE FUNCTION blitz.enter(session_key text, idle_s int, max_life_s int,
                                       set_role boolean, callee oid)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    who text;
BEGIN
    SELECT s.user_name INTO who
      FROM blitz.sessions s JOIN blitz.users u ON u.name = s.user_name
     WHERE s.key = session_key
       AND NOT u.disabled
       AND blitz.session_live(s.last_used, s.created, idle_s, max_life_s);
    IF who IS NULL THEN
        RAISE EXCEPTION 'the session has expired or was ended; log in again'
              USING ERRCODE = 'BZ006';
    END IF;
    PERFORM pg_catalog.set_config('blitz.user', who, true);
    PERFORM pg_catalog.set_config('blitz.session', session_key, true);
    IF set_role THEN
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = who) THEN
            RAISE EXCEPTION 'auth.set_role is on but there is no PostgreSQL role "%"', who
                  USING ERRCODE = '42501',
                        HINT = 'CREATE ROLE for the user and GRANT it to the server''s database user';
        END IF;
        PERFORM pg_catalog.set_config('role', who, true);
        -- Checked here, not only by PostgreSQL: a simple SQL function is
        -- inlined when a statement is planned, and a plan cached on this
        -- connection for another user would skip the check.
        IF NOT pg_catalog.has_function_privilege(who, callee, 'EXECUTE') THEN
            RAISE EXCEPTION 'permission denied for function %', callee::regprocedure
                  USING ERRCODE = '42501';
        END IF;
    END IF;
    RETURN true;
END
$$;
"#,
    },
    Migration {
        version: 4,
        description: "the instance registry and idempotency records",
        sql: r#"
CREATE SEQUENCE blitz.instance_keys AS integer;
CREATE TABLE blitz.instances (
    id               text PRIMARY KEY,          -- host:port-xxxx
    lock_key         integer NOT NULL UNIQUE,   -- advisory lock (class "blz", lock_key) held by all its sessions
    addresses        text NOT NULL,             -- listen addresses, comma-separated
    pool_size        integer NOT NULL,          -- configured db.pool_size
    share            integer NOT NULL,          -- pool connections it may hold now
    version          text NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    heartbeat        timestamptz NOT NULL DEFAULT now(),
    housekeeping_pid integer NOT NULL
);
CREATE TABLE blitz.idempotency (
    user_name   text NOT NULL,
    key         text NOT NULL,
    method      text NOT NULL,
    params_hash bytea NOT NULL,                 -- sha256 of the params as canonical JSON
    outcome     json NOT NULL,                  -- {"result": …} | {"error": {code, message, data}}
    created     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_name, key)
);
CREATE INDEX idempotency_created ON blitz.idempotency (created);

CREATE FUNCTION blitz.idem_lock_id(who text, k text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT pg_catalog.hashtext(who || E'\n' || k) & 2147483647 $$;

-- Claims (user, key) for this call, or returns the outcome recorded before.
-- Two locks on (user, key): a transaction-level one, released only when
-- this call's transaction ends (so a repeat never reads before the record
-- is committed), and a session-level one that outlives a rollback, held
-- until blitz.idem_store or blitz.idem_fail records the outcome.
CREATE FUNCTION blitz.idem_claim(k text, m text, h bytea, ttl_s integer) RETURNS json
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who text := current_setting('blitz.user');
    lock_id integer := blitz.idem_lock_id(who, k);
    prior blitz.idempotency;
BEGIN
    PERFORM pg_advisory_xact_lock(6450281, lock_id);
    PERFORM pg_advisory_lock(6450281, lock_id);
    SELECT * INTO prior FROM blitz.idempotency i WHERE i.user_name = who AND i.key = k;
    IF NOT FOUND THEN
        RETURN NULL;                           -- claimed: the call runs
    END IF;
    IF prior.created < now() - make_interval(secs => ttl_s) THEN
        DELETE FROM blitz.idempotency i WHERE i.user_name = who AND i.key = k;
        RETURN NULL;                           -- expired: claimed anew
    END IF;
    PERFORM pg_advisory_unlock(6450281, lock_id);
    IF prior.method <> m OR prior.params_hash <> h THEN
        RETURN json_build_object('reused', true, 'method', prior.method);
    END IF;
    RETURN prior.outcome;
END
$$;

-- Records the result of the claimed call (committed with its effects).
CREATE FUNCTION blitz.idem_store(k text, m text, h bytea, result json) RETURNS json
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who text := current_setting('blitz.user');
    recorded json := json_build_object('result', result);
BEGIN
    INSERT INTO blitz.idempotency (user_name, key, method, params_hash, outcome)
    VALUES (who, k, m, h, recorded);
    PERFORM pg_advisory_unlock(6450281, blitz.idem_lock_id(who, k));
    RETURN recorded;
END
$$;

-- After the claimed call failed (and rolled back): records the error, if
-- given, and releases the key, when this session holds it. The
-- transaction-level lock keeps a repeat waiting until the record is committed.
CREATE FUNCTION blitz.idem_fail(session_key text, k text, m text, h bytea, outcome json) RETURNS json
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who text := (SELECT s.user_name FROM blitz.sessions s WHERE s.key = session_key);
    lock_id integer := blitz.idem_lock_id(who, k);
BEGIN
    IF who IS NULL THEN                        -- ended meanwhile: the caller drops the connection
        RAISE EXCEPTION 'the session ended during the call' USING ERRCODE = 'BZ006';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid()
                      AND l.classid = 6450281 AND l.objid::int8 = lock_id AND l.objsubid = 2 AND l.granted) THEN
        RETURN NULL;                           -- failed before it claimed the key
    END IF;
    PERFORM pg_advisory_xact_lock(6450281, lock_id);
    IF outcome IS NOT NULL THEN
        INSERT INTO blitz.idempotency (user_name, key, method, params_hash, outcome)
        VALUES (who, k, m, h, outcome) ON CONFLICT DO NOTHING;
    END IF;
    PERFORM pg_advisory_unlock(6450281, lock_id);
    RETURN outcome;
END
$$;
"#,
    },
    Migration {
        version: 5,
        description: "each instance's registered share of every hot standby's connections",
        sql: "
CREATE TABLE blitz.standby_shares (
    standby   text NOT NULL,             -- host:port/dbname of its URL
    lock_key  integer NOT NULL,          -- the instance (blitz.instances.lock_key); kept after the
                                         -- instance's row until its sessions on the standby are gone
    pool_size integer NOT NULL,          -- the instance's configured db.pool_size
    share     integer NOT NULL,          -- standby pool connections it may hold now
    PRIMARY KEY (standby, lock_key)
);
",
    },
    Migration {
        version: 6,
        description: "notifications of ended sessions and changed users, for the instances' session caches",
        sql: r#"
-- Payload: the user whose sessions may have ended; empty: anyone's.
CREATE FUNCTION blitz.sessions_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('blitz_sessions', e.user_name)
       FROM (SELECT DISTINCT user_name FROM ended) AS e;
    RETURN NULL;
END
$$;
CREATE TRIGGER sessions_ended AFTER DELETE ON blitz.sessions
    REFERENCING OLD TABLE AS ended FOR EACH STATEMENT
    EXECUTE FUNCTION blitz.sessions_ended();
CREATE FUNCTION blitz.sessions_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('blitz_sessions', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER sessions_truncated AFTER TRUNCATE ON blitz.sessions
    FOR EACH STATEMENT EXECUTE FUNCTION blitz.sessions_truncated();
CREATE FUNCTION blitz.user_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('blitz_sessions', OLD.name);
    RETURN NULL;
END
$$;
CREATE TRIGGER user_changed AFTER UPDATE OR DELETE ON blitz.users
    FOR EACH ROW EXECUTE FUNCTION blitz.user_changed();
CREATE TRIGGER users_truncated AFTER TRUNCATE ON blitz.users
    FOR EACH STATEMENT EXECUTE FUNCTION blitz.sessions_truncated();
"#,
    },
];

/// Brings schema `blitz` up to the newest migration; returns the versions
/// applied now (empty when it was already current).
pub fn migrate(client: &mut Client) -> Result<Vec<i32>, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock($1)",
        &[&MIGRATION_LOCK],
    )?;
    tx.batch_execute("SET LOCAL client_min_messages = warning")?; // no "already exists" notices
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS blitz;
         CREATE TABLE IF NOT EXISTS blitz.schema_migrations (
             version     integer PRIMARY KEY,
             description text NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         );",
    )?;
    let current = current_version(&mut tx)?;
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(migration.sql)?;
        tx.execute(
            "INSERT INTO blitz.schema_migrations (version, description) VALUES ($1, $2)",
            &[&migration.version, &migration.description],
        )?;
        applied.push(migration.version);
    }
    tx.commit()?;
    Ok(applied)
}

fn current_version(client: &mut impl GenericClient) -> Result<i32, postgres::Error> {
    let row = client.query_one(
        "SELECT COALESCE(max(version), 0) FROM blitz.schema_migrations",
        &[],
    )?;
    Ok(row.get(0))
}

/// The newest version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_blitz_enter_raises_the_sqlstate_the_server_maps() {
        let newest_enter = MIGRATIONS
            .iter()
            .rev()
            .find(|m| m.sql.contains("FUNCTION blitz.enter"))
            .unwrap();
        let raise = format!("ERRCODE = '{}'", crate::db::sqlstate::DEAD_SESSION_SQLSTATE);
        assert!(newest_enter.sql.contains(&raise));
        assert!(newest_enter.sql.contains("blitz.session_live("));
    }

    #[test]
    fn versions_increase() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(latest_version(), MIGRATIONS.len() as i32);
    }
}
