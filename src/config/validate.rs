//! Validation, one function per section: every integer key within its
//! bounds, addresses that resolve, a usable `db.url` and schema name, and
//! `auth.mode = "trust"` only on loopback. Each refusal names the key, the
//! value and what is allowed.

use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use super::error::ConfigError;
use super::redact::redact_url;
use super::sections::{
    AuthConfig, AuthMode, DbConfig, InvocationConfig, MetricsConfig, RawConfig, ServerConfig,
};

/// The addresses `server.listen` and `server.http_listen` resolved to.
pub(super) struct Listeners {
    /// `server.listen`'s addresses.
    pub(super) tcp: Vec<SocketAddr>,
    /// `server.http_listen`'s addresses (none when it is empty).
    pub(super) http: Vec<SocketAddr>,
}

/// One integer key's bounds: the key, its value, the least and the greatest
/// allowed value, and a note for the message (what 0 means, the unit).
type Bound<'a> = (&'a str, u64, u64, u64, &'a str);

/// Checks each integer key against its bounds, in order.
fn check_bounds(bounds: &[Bound]) -> Result<(), ConfigError> {
    for &(key, value, min, max, note) in bounds {
        check_range(key, value, min, max, note)?;
    }
    Ok(())
}

/// Checks every section, in file order, and resolves the listen addresses.
pub(super) fn sections(raw: &RawConfig) -> Result<Listeners, ConfigError> {
    let listeners = server(&raw.server)?;
    invocation(&raw.invocation)?;
    db(&raw.db)?;
    auth(&raw.auth, &listeners)?;
    server_tls(&raw.server, &raw.auth, &listeners)?;
    metrics(&raw.metrics)?;
    Ok(listeners)
}

/// `[server]`: its limits, and its listen addresses resolved.
fn server(server: &ServerConfig) -> Result<Listeners, ConfigError> {
    check_bounds(&[
        (
            "server.router_threads",
            server.router_threads,
            0,
            1024,
            " (0 = the number of cores)",
        ),
        ("server.max_clients", server.max_clients, 1, 1_000_000, ""),
        (
            "server.max_message_bytes",
            server.max_message_bytes,
            1024,
            1 << 30,
            " bytes",
        ),
        (
            "server.idle_timeout_s",
            server.idle_timeout_s,
            0,
            604_800,
            " (0 = never)",
        ),
        (
            "server.max_in_flight_per_connection",
            server.max_in_flight_per_connection,
            1,
            1_000_000,
            "",
        ),
        (
            "server.drain_timeout_s",
            server.drain_timeout_s,
            0,
            3600,
            "",
        ),
    ])?;
    let tcp = parse_listen("server.listen", &server.listen)?;
    let http = match server.http_listen.as_str() {
        "" => Vec::new(),
        text => parse_listen("server.http_listen", text)?,
    };
    Ok(Listeners { tcp, http })
}

/// `[invocation]`: the workers, the queue, deadlines, retries, idempotency.
fn invocation(invocation: &InvocationConfig) -> Result<(), ConfigError> {
    check_bounds(&[
        (
            "invocation.workers",
            invocation.workers,
            0,
            1024,
            " (0 = pool size)",
        ),
        (
            "invocation.queue_capacity",
            invocation.queue_capacity,
            1,
            10_000_000,
            "",
        ),
        (
            "invocation.default_timeout_ms",
            invocation.default_timeout_ms,
            1,
            86_400_000,
            "",
        ),
        ("invocation.max_retries", invocation.max_retries, 0, 100, ""),
        (
            "invocation.idempotency_ttl_s",
            invocation.idempotency_ttl_s,
            1,
            30 * 86_400,
            " seconds",
        ),
    ])
}

/// `[db]`: the heartbeat, the pool, its timeouts, the URL and the schema.
fn db(db: &DbConfig) -> Result<(), ConfigError> {
    check_bounds(&[
        (
            "db.heartbeat_interval_ms",
            db.heartbeat_interval_ms,
            50,
            60_000,
            "",
        ),
        (
            "db.heartbeat_timeout_ms",
            db.heartbeat_timeout_ms,
            2 * db.heartbeat_interval_ms,
            600_000,
            " (at least twice db.heartbeat_interval_ms, so one late heartbeat is not a death)",
        ),
        ("db.pool_size", db.pool_size, 0, 10_000, " (0 = automatic)"),
        (
            "db.effective_spindles",
            db.effective_spindles,
            0,
            10_000,
            "",
        ),
        (
            "db.acquire_timeout_ms",
            db.acquire_timeout_ms,
            1,
            3_600_000,
            "",
        ),
        ("db.connect_timeout_s", db.connect_timeout_s, 1, 3600, ""),
        (
            "db.reserved_connections",
            db.reserved_connections,
            0,
            10_000,
            "",
        ),
        (
            "db.replica_max_lag_ms",
            db.replica_max_lag_ms,
            1,
            3_600_000,
            " ms",
        ),
    ])?;
    super::limit::check(db.active_limit, db.pool_size)?;
    check_url("db.url", &db.url)?;
    replica_urls(db)?;
    check_identifier("db.api_schema", &db.api_schema)
}

/// `db.replica_urls`: each a connection URL like `db.url`, none repeated.
fn replica_urls(db: &DbConfig) -> Result<(), ConfigError> {
    for (i, url) in db.replica_urls.iter().enumerate() {
        let key = format!("db.replica_urls[{i}]");
        if url.trim().is_empty() {
            return Err(ConfigError(format!(
                "config key {key} = \"\": an empty URL; give a hot standby's URL, \
                 e.g. postgresql://user@standby:5432/dbname, or leave the entry out"
            )));
        }
        check_url(&key, url)?;
        if *url == db.url {
            return Err(ConfigError(format!(
                "config key {key} = {}: that is db.url, the primary; list its hot standbys",
                redact_url(url)
            )));
        }
        if db.replica_urls[..i].contains(url) {
            return Err(ConfigError(format!(
                "config key {key} = {}: named twice; list each standby once",
                redact_url(url)
            )));
        }
    }
    Ok(())
}

/// `[auth]`: session lifetimes, and trust only where no one else can reach.
fn auth(auth: &AuthConfig, listeners: &Listeners) -> Result<(), ConfigError> {
    check_bounds(&[
        (
            "auth.session_idle_timeout_s",
            auth.session_idle_timeout_s,
            1,
            31_536_000,
            "",
        ),
        (
            "auth.session_max_lifetime_s",
            auth.session_max_lifetime_s,
            0,
            31_536_000 * 10,
            " (0 = no limit)",
        ),
    ])?;
    if auth.mode == AuthMode::Trust {
        trust_only_on_loopback(listeners)?;
    }
    Ok(())
}

/// The TLS keys of `[server]`, checked once the auth mode is known
/// (plaintext passwords are refused off loopback).
fn server_tls(
    server: &ServerConfig,
    auth: &AuthConfig,
    listeners: &Listeners,
) -> Result<(), ConfigError> {
    let addrs: Vec<_> = (listeners.tcp.iter().map(|a| ("server.listen", *a)))
        .chain(listeners.http.iter().map(|a| ("server.http_listen", *a)))
        .collect();
    super::tls::check_server(server.tls_keys(auth.mode), &addrs).map_err(ConfigError)
}

/// `[metrics]`: its listen address, when there is one.
fn metrics(metrics: &MetricsConfig) -> Result<(), ConfigError> {
    if !metrics.listen.is_empty() {
        parse_listen("metrics.listen", &metrics.listen)?;
    }
    Ok(())
}

/// Refuses `auth.mode = "trust"` when a listen address is not loopback.
fn trust_only_on_loopback(listeners: &Listeners) -> Result<(), ConfigError> {
    let open = (listeners.tcp.iter().map(|a| ("server.listen", a)))
        .chain(listeners.http.iter().map(|a| ("server.http_listen", a)))
        .find(|(_, a)| !a.ip().is_loopback());
    match open {
        None => Ok(()),
        Some((key, open)) => Err(ConfigError(format!(
            "config key auth.mode = \"trust\" lets anyone log in as anyone without a password, \
             so it is allowed only when every listen address is loopback; {key} has {open}. \
             Use auth.mode = \"password\", or listen on 127.0.0.1 / [::1]"
        ))),
    }
}

/// Refuses a URL under config key `key` (`db.url`, a replica's) that is no
/// PostgreSQL connection string (its password hidden in the message).
fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let db_tls =
        super::tls::split_pg_tls(url).map_err(|e| ConfigError(e.replacen("db.url", key, 1)))?;
    if let Some(ca) = &db_tls.root_cert {
        super::tls::read_certificates(&format!("{key}'s sslrootcert"), ca).map_err(ConfigError)?;
    }
    postgres::Config::from_str(&db_tls.url).map_err(|e| {
        ConfigError(format!(
            "config key {key} = {}: not a PostgreSQL connection URL ({e}); \
             expected e.g. postgresql://user@host:5432/dbname",
            redact_url(url)
        ))
    })?;
    Ok(())
}

/// Checks one integer key against its allowed range.
fn check_range(key: &str, value: u64, min: u64, max: u64, note: &str) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError(format!(
            "config key {key} = {value}: allowed {min} to {max}{note}"
        )));
    }
    Ok(())
}

fn parse_listen(key: &str, text: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut addrs = Vec::new();
    for part in text.split(',').map(str::trim) {
        let resolved = part.to_socket_addrs().map_err(|e| {
            ConfigError(format!(
                "config key {key} = {text:?}: `{part}` is not a host:port address ({e}); \
                 expected e.g. 127.0.0.1:4063, comma-separated for several"
            ))
        })?;
        addrs.extend(resolved.take(1));
    }
    Ok(addrs)
}

fn check_identifier(key: &str, name: &str) -> Result<(), ConfigError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && name.len() <= 63 {
        return Ok(());
    }
    Err(ConfigError(format!(
        "config key {key} = {name:?}: expected a lower-case SQL identifier \
         ([a-z_][a-z0-9_]*, at most 63 characters)"
    )))
}
