//! Configuration: built-in defaults, then `conf/blitz.toml` (or `--config
//! FILE`), then `BLITZ_<SECTION>_<KEY>` environment variables, then
//! command-line flags, merged into one validated [`Config`].
//!
//! This module owns every config key name, default and bound. A bad value is
//! refused by [`Config::load`] with a [`ConfigError`] naming the key, the
//! value and what is allowed; the server turns that into exit code 2.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

mod limit;
pub use limit::ActiveLimit;

/// `[server]`: the listening side.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address(es) to listen on, `host:port`, comma-separated for several.
    pub listen: String,
    /// Address(es) for JSON-RPC over HTTP/1.1 (`POST /`); empty disables it.
    pub http_listen: String,
    /// Event-loop threads of the router; 0 = the number of cores (resolved, never 0).
    pub router_threads: u64,
    /// Connections beyond this get one -32005 line and are closed.
    pub max_clients: u64,
    /// Longest accepted request line in bytes; longer lines get -32009.
    pub max_message_bytes: u64,
    /// Seconds a connection with nothing in flight may stay silent (0 = never closed).
    pub idle_timeout_s: u64,
    /// Requests one connection may have queued or running at once.
    pub max_in_flight_per_connection: u64,
    /// Seconds queued and running work gets to finish at shutdown.
    pub drain_timeout_s: u64,
}

/// `[invocation]`: the queue and the workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvocationConfig {
    /// Worker threads; 0 means one per pooled database connection.
    pub workers: u64,
    /// Bounded FIFO queue length; beyond it requests get -32001 at once.
    pub queue_capacity: u64,
    /// Deadline of a request that does not send `timeout_ms`.
    pub default_timeout_ms: u64,
    /// Retries of a transaction that failed with 40001 or 40P01.
    pub max_retries: u64,
    /// Seconds an idempotency record is kept; a repeat after that runs again.
    pub idempotency_ttl_s: u64,
}

/// `[db]`: the PostgreSQL side.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    /// libpq-style URL or key=value connection string.
    pub url: String,
    /// Pooled connections (the cap); 0 = automatic: 4 × (`physical cores
    /// × 2 + effective_spindles`) with `active_limit = "auto"`, else the
    /// fixed limit.
    pub pool_size: u64,
    /// Calls holding a connection at once: tuned (`"auto"`) or fixed.
    pub active_limit: ActiveLimit,
    /// Effective spindle count for the pool-size formula (0 when cached).
    pub effective_spindles: u64,
    /// Longest wait for a pooled connection before -32004.
    pub acquire_timeout_ms: u64,
    /// Longest wait for a new TCP/TLS connection to PostgreSQL.
    pub connect_timeout_s: u64,
    /// Schema whose functions are callable as `api.<name>`.
    pub api_schema: String,
    /// Connections of `max_connections` left for maintenance and monitoring.
    pub reserved_connections: u64,
    /// How often each instance renews its heartbeat in the instance registry.
    pub heartbeat_interval_ms: u64,
    /// An instance whose heartbeat is older than this is dead and removed.
    pub heartbeat_timeout_ms: u64,
}

/// `auth.mode`: how a user proves who they are. Written `"password"` or
/// `"trust"` in the configuration, on the wire (`sys.ping`'s `auth`) and in
/// the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum AuthMode {
    /// A password checked against the argon2id hash in `blitz.users`.
    Password,
    /// The name alone (a new name becomes a user); loopback listen
    /// addresses only.
    Trust,
}

impl AuthMode {
    /// The name of the mode, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Password => "password",
            AuthMode::Trust => "trust",
        }
    }
}

impl TryFrom<String> for AuthMode {
    type Error = String;

    fn try_from(text: String) -> Result<AuthMode, String> {
        match text.as_str() {
            "password" => Ok(AuthMode::Password),
            "trust" => Ok(AuthMode::Trust),
            _ => Err("allowed \"password\" or \"trust\"".into()),
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[auth]`: sessions and how users prove who they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Password or trust (loopback only).
    pub mode: AuthMode,
    /// Seconds of inactivity after which a session expires.
    pub session_idle_timeout_s: u64,
    /// Longest life of a session in seconds (0 = no limit).
    pub session_max_lifetime_s: u64,
    /// Run calls under `SET LOCAL ROLE <user>`.
    pub set_role: bool,
}

/// `[metrics]`: the HTTP side door for monitoring.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` of the HTTP metrics/health listener; empty disables it.
    pub listen: String,
}

/// The file/env/flag layers as they deserialize, before derived values.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: ServerConfig,
    invocation: InvocationConfig,
    db: DbConfig,
    auth: AuthConfig,
    metrics: MetricsConfig,
}

/// The built-in defaults: the one place in the code that states them.
/// `conf/blitz.toml` and the README's table state them for people, and
/// `tests/config_defaults.rs` proves the three agree.
impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            server: ServerConfig {
                listen: Config::DEFAULT_LISTEN.into(),
                http_listen: String::new(),
                router_threads: 0,
                max_clients: 10_000,
                max_message_bytes: 1 << 20,
                idle_timeout_s: 300,
                max_in_flight_per_connection: 64,
                drain_timeout_s: 30,
            },
            invocation: InvocationConfig {
                workers: 0,
                queue_capacity: 1000,
                default_timeout_ms: Config::DEFAULT_TIMEOUT_MS,
                max_retries: 3,
                idempotency_ttl_s: 86_400,
            },
            db: DbConfig {
                url: "postgresql://postgres@127.0.0.1:5432/blitz".into(),
                pool_size: 0,
                active_limit: ActiveLimit::Auto,
                effective_spindles: 0,
                acquire_timeout_ms: 1000,
                connect_timeout_s: 5,
                api_schema: "blitz_api".into(),
                reserved_connections: 3,
                heartbeat_interval_ms: 2000,
                heartbeat_timeout_ms: 6000,
            },
            auth: AuthConfig {
                mode: AuthMode::Password,
                session_idle_timeout_s: 600,
                session_max_lifetime_s: 0,
                set_role: false,
            },
            metrics: MetricsConfig {
                listen: String::new(),
            },
        }
    }
}

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The config file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag.
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(name) => write!(f, "env {name}"),
            Source::Flag => write!(f, "flag"),
        }
    }
}

/// How the effective pool size was chosen, for the start line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolSizeOrigin {
    /// `db.pool_size` was set to a non-zero value.
    Configured,
    /// `cores × 2 + effective_spindles`.
    Formula {
        /// Cores counted (physical unless `physical` is false).
        cores: u64,
        /// Whether `cores` are physical cores (false: logical fallback).
        physical: bool,
        /// `db.effective_spindles`.
        spindles: u64,
    },
}

/// The effective, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`, with `router_threads` resolved (never 0).
    pub server: ServerConfig,
    /// `[invocation]`, with `workers` resolved (never 0).
    pub invocation: InvocationConfig,
    /// `[db]`, with `pool_size` resolved (never 0).
    pub db: DbConfig,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// How `db.pool_size` was chosen.
    pub pool_size_origin: PoolSizeOrigin,
    /// The listen addresses `server.listen` resolved to.
    pub listen_addrs: Vec<SocketAddr>,
    /// The addresses `server.http_listen` resolved to (none when empty).
    pub http_listen_addrs: Vec<SocketAddr>,
    sources: BTreeMap<String, Source>,
}

/// A configuration value that cannot be used, with the key, the value and
/// what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// What the configuration is loaded from, apart from the defaults.
#[derive(Debug, Clone, Default)]
pub struct ConfigInputs {
    /// The config file, if any.
    pub file: Option<PathBuf>,
    /// Environment variables (normally `std::env::vars()`); only `BLITZ_*` are read.
    pub env: Vec<(String, String)>,
    /// Flag overrides as `("section.key", "value")`, applied last.
    pub flags: Vec<(String, String)>,
}

impl ConfigInputs {
    /// The inputs of a real process: `file`, the process environment and `flags`.
    pub fn from_process(file: Option<PathBuf>, flags: Vec<(String, String)>) -> Self {
        ConfigInputs {
            file,
            env: std::env::vars().collect(),
            flags,
        }
    }
}

impl Config {
    /// The default of `server.listen`; also where the `blitz` client looks
    /// for a server when it is given none.
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:4063";

    /// The default of `invocation.default_timeout_ms`: the deadline of a
    /// call that sends none (`blitz bench` waits that long for its last
    /// replies when its calls carry no deadline).
    pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

    /// Every config key with its built-in default, as `("section.key",
    /// value in TOML syntax)`, e.g. `("server.listen", "\"127.0.0.1:4063\"")`,
    /// `("db.pool_size", "0")`: what `conf/blitz.toml` and the README's
    /// table must state.
    pub fn default_values() -> Vec<(String, String)> {
        let defaults = Layers::defaults().defaults;
        let mut out = Vec::new();
        for (section, keys) in &defaults {
            for (key, value) in keys.as_table().into_iter().flatten() {
                out.push((format!("{section}.{key}"), value.to_string()));
            }
        }
        out
    }

    /// Merges defaults, file, environment and flags, then validates.
    pub fn load(inputs: &ConfigInputs) -> Result<Config, ConfigError> {
        let mut layers = Layers::defaults();
        if let Some(path) = &inputs.file {
            layers.apply_file(path)?;
        }
        layers.apply_env(&inputs.env)?;
        for (key, value) in &inputs.flags {
            layers.apply_text(key, value, Source::Flag)?;
        }
        let raw: RawConfig = Value::Table(layers.merged.clone())
            .try_into()
            .map_err(|e| typed_error(&e, &layers))?;
        validate(raw, layers.sources)
    }

    /// Defaults only (plus `flags`), ignoring the environment: for tests and tools.
    pub fn with_flags(flags: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(&ConfigInputs {
            file: None,
            env: Vec::new(),
            flags: flags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    /// Where `section.key` came from.
    pub fn source(&self, key: &str) -> Source {
        self.sources.get(key).cloned().unwrap_or(Source::Default)
    }

    /// Deadline of a request without `timeout_ms`.
    pub fn default_timeout(&self) -> Duration {
        Duration::from_millis(self.invocation.default_timeout_ms)
    }

    /// The effective configuration as TOML, each value annotated with its
    /// source, and any password in `db.url` replaced by `***`.
    pub fn to_annotated_toml(&self) -> String {
        let mut raw = RawConfig {
            server: self.server.clone(),
            invocation: self.invocation.clone(),
            db: self.db.clone(),
            auth: self.auth.clone(),
            metrics: self.metrics.clone(),
        };
        raw.db.url = redact_url(&raw.db.url);
        let table = match Value::try_from(&raw) {
            Ok(Value::Table(t)) => t,
            _ => return String::new(),
        };
        let mut out = String::new();
        for (section, keys) in &table {
            out.push_str(&format!("[{section}]\n"));
            for (key, value) in keys.as_table().into_iter().flatten() {
                let full = format!("{section}.{key}");
                let mut note = self.source(&full).to_string();
                if full == "db.pool_size" {
                    note.push_str(&format!(", {}", self.pool_size_explained()));
                }
                if full == "invocation.workers" && self.source(&full) == Source::Default {
                    note.push_str(", = pool size");
                }
                if full == "server.router_threads" && self.source(&full) == Source::Default {
                    note.push_str(", = cores");
                }
                out.push_str(&format!("{key} = {value}  # {note}\n"));
            }
            out.push('\n');
        }
        out
    }

    /// `"4 (physical cores 2 × 2 + spindles 0)"` or `"4 (configured)"`.
    pub fn pool_size_explained(&self) -> String {
        match &self.pool_size_origin {
            PoolSizeOrigin::Configured => format!("{} (configured)", self.db.pool_size),
            PoolSizeOrigin::Formula {
                cores,
                physical,
                spindles,
            } => {
                let kind = if *physical { "physical" } else { "logical" };
                let formula = format!("{kind} cores {cores} × 2 + spindles {spindles}");
                limit::explain_automatic(self.db.pool_size, self.db.active_limit, &formula)
            }
        }
    }
}

/// `postgresql://user:secret@host/db` → `postgresql://user:***@host/db`;
/// `password=secret` in a key=value string → `password=***`.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                return format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &rest[..colon],
                    &rest[at..]
                );
            }
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|part| match part.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The merged TOML table and the source of every value in it.
struct Layers {
    defaults: Table,
    merged: Table,
    sources: BTreeMap<String, Source>,
}

impl Layers {
    fn defaults() -> Layers {
        let defaults = match Value::try_from(RawConfig::default()) {
            Ok(Value::Table(t)) => t,
            other => unreachable!("defaults serialize to a table: {other:?}"),
        };
        Layers {
            merged: defaults.clone(),
            defaults,
            sources: BTreeMap::new(),
        }
    }

    fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        let table: Table = text
            .parse()
            .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
        for (section, keys) in table {
            let Some(keys) = keys.as_table() else {
                return Err(ConfigError(format!(
                    "config file {}: `{section}` must be a [section] table; allowed sections: {}",
                    path.display(),
                    self.section_names()
                )));
            };
            for (key, value) in keys {
                self.set(
                    &format!("{section}.{key}"),
                    value.clone(),
                    Source::File(path.to_path_buf()),
                )?;
            }
        }
        Ok(())
    }

    fn apply_env(&mut self, env: &[(String, String)]) -> Result<(), ConfigError> {
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("BLITZ_") else {
                continue;
            };
            let lower = rest.to_ascii_lowercase();
            let Some(section) = self
                .defaults
                .keys()
                .find(|s| lower.starts_with(&format!("{s}_")))
                .cloned()
            else {
                continue; // BLITZ_* variables outside the config sections are not ours
            };
            let key = format!("{section}.{}", &lower[section.len() + 1..]);
            self.apply_text(&key, value, Source::Env(name.clone()))?;
        }
        Ok(())
    }

    /// Sets `key` from text (env or flag), typed like its default.
    fn apply_text(&mut self, key: &str, text: &str, source: Source) -> Result<(), ConfigError> {
        let default = self.default_of(key, &source)?;
        let value = match default {
            Value::String(_) => Value::String(text.to_string()),
            Value::Integer(_) => text
                .trim()
                .parse::<i64>()
                .map(Value::Integer)
                .map_err(|_| type_error(key, text, "a whole number", &source))?,
            Value::Boolean(_) => match text.trim() {
                "true" | "1" | "yes" | "on" => Value::Boolean(true),
                "false" | "0" | "no" | "off" => Value::Boolean(false),
                _ => return Err(type_error(key, text, "true or false", &source)),
            },
            _ => Value::String(text.to_string()),
        };
        self.set(key, value, source)
    }

    fn set(&mut self, key: &str, value: Value, source: Source) -> Result<(), ConfigError> {
        let value = limit::as_text(key, value);
        let default = self.default_of(key, &source)?;
        if default.type_str() != value.type_str() {
            let expected = match default {
                Value::Integer(_) => "a whole number",
                Value::Boolean(_) => "true or false",
                _ => "a string",
            };
            return Err(type_error(key, &value.to_string(), expected, &source));
        }
        if let Value::Integer(n) = value {
            if n < 0 {
                return Err(ConfigError(format!(
                    "config key {key} = {n} ({source}): must not be negative"
                )));
            }
        }
        let (section, name) = key.split_once('.').unwrap_or((key, ""));
        if let Some(Value::Table(t)) = self.merged.get_mut(section) {
            t.insert(name.to_string(), value);
        }
        self.sources.insert(key.to_string(), source);
        Ok(())
    }

    fn default_of(&self, key: &str, source: &Source) -> Result<Value, ConfigError> {
        let (section, name) = key.split_once('.').unwrap_or((key, ""));
        let Some(keys) = self.defaults.get(section).and_then(Value::as_table) else {
            return Err(ConfigError(format!(
                "unknown config section `{section}` in `{key}` ({source}); allowed sections: {}",
                self.section_names()
            )));
        };
        keys.get(name).cloned().ok_or_else(|| {
            let allowed: Vec<_> = keys.keys().map(|k| format!("{section}.{k}")).collect();
            ConfigError(format!(
                "unknown config key `{key}` ({source}); allowed in [{section}]: {}",
                allowed.join(", ")
            ))
        })
    }

    fn section_names(&self) -> String {
        self.defaults.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// A value of the right TOML type that its key's Rust type refuses (an
/// `auth.mode` that is no mode), with the key, the value, its source and
/// what is allowed.
fn typed_error(e: &toml::de::Error, layers: &Layers) -> ConfigError {
    let text = e.to_string();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("in `")?.strip_suffix('`'));
    let Some(key) = key else {
        return ConfigError(format!("configuration: {e}"));
    };
    let value = key
        .split_once('.')
        .and_then(|(section, name)| layers.merged.get(section)?.get(name))
        .map_or_else(String::new, Value::to_string);
    let source = layers.sources.get(key).cloned().unwrap_or(Source::Default);
    ConfigError(format!(
        "config key {key} = {value} ({source}): {}",
        e.message()
    ))
}

fn type_error(key: &str, value: &str, expected: &str, source: &Source) -> ConfigError {
    ConfigError(format!(
        "config key {key} = {value} ({source}): expected {expected}"
    ))
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

fn validate(raw: RawConfig, sources: BTreeMap<String, Source>) -> Result<Config, ConfigError> {
    let RawConfig {
        server,
        invocation,
        mut db,
        auth,
        metrics,
    } = raw;
    check_range(
        "server.router_threads",
        server.router_threads,
        0,
        1024,
        " (0 = the number of cores)",
    )?;
    check_range("server.max_clients", server.max_clients, 1, 1_000_000, "")?;
    check_range(
        "server.max_message_bytes",
        server.max_message_bytes,
        1024,
        1 << 30,
        " bytes",
    )?;
    check_range(
        "server.idle_timeout_s",
        server.idle_timeout_s,
        0,
        604_800,
        " (0 = never)",
    )?;
    check_range(
        "server.max_in_flight_per_connection",
        server.max_in_flight_per_connection,
        1,
        1_000_000,
        "",
    )?;
    check_range(
        "server.drain_timeout_s",
        server.drain_timeout_s,
        0,
        3600,
        "",
    )?;
    check_range(
        "invocation.workers",
        invocation.workers,
        0,
        1024,
        " (0 = pool size)",
    )?;
    check_range(
        "invocation.queue_capacity",
        invocation.queue_capacity,
        1,
        10_000_000,
        "",
    )?;
    check_range(
        "invocation.default_timeout_ms",
        invocation.default_timeout_ms,
        1,
        86_400_000,
        "",
    )?;
    check_range("invocation.max_retries", invocation.max_retries, 0, 100, "")?;
    check_range(
        "invocation.idempotency_ttl_s",
        invocation.idempotency_ttl_s,
        1,
        30 * 86_400,
        " seconds",
    )?;
    check_range(
        "db.heartbeat_interval_ms",
        db.heartbeat_interval_ms,
        50,
        60_000,
        "",
    )?;
    check_range(
        "db.heartbeat_timeout_ms",
        db.heartbeat_timeout_ms,
        2 * db.heartbeat_interval_ms,
        600_000,
        " (at least twice db.heartbeat_interval_ms, so one late heartbeat is not a death)",
    )?;
    check_range("db.pool_size", db.pool_size, 0, 10_000, " (0 = automatic)")?;
    limit::check(db.active_limit, db.pool_size)?;
    check_range(
        "db.effective_spindles",
        db.effective_spindles,
        0,
        10_000,
        "",
    )?;
    check_range(
        "db.acquire_timeout_ms",
        db.acquire_timeout_ms,
        1,
        3_600_000,
        "",
    )?;
    check_range("db.connect_timeout_s", db.connect_timeout_s, 1, 3600, "")?;
    check_range(
        "db.reserved_connections",
        db.reserved_connections,
        0,
        10_000,
        "",
    )?;
    check_range(
        "auth.session_idle_timeout_s",
        auth.session_idle_timeout_s,
        1,
        31_536_000,
        "",
    )?;
    check_range(
        "auth.session_max_lifetime_s",
        auth.session_max_lifetime_s,
        0,
        31_536_000 * 10,
        " (0 = no limit)",
    )?;
    let listen_addrs = parse_listen("server.listen", &server.listen)?;
    let http_listen_addrs = match server.http_listen.as_str() {
        "" => Vec::new(),
        text => parse_listen("server.http_listen", text)?,
    };
    if !metrics.listen.is_empty() {
        parse_listen("metrics.listen", &metrics.listen)?;
    }
    postgres::Config::from_str(&db.url).map_err(|e| {
        ConfigError(format!(
            "config key db.url = {}: not a PostgreSQL connection URL ({e}); \
             expected e.g. postgresql://user@host:5432/dbname",
            redact_url(&db.url)
        ))
    })?;
    check_identifier("db.api_schema", &db.api_schema)?;
    if auth.mode == AuthMode::Trust {
        let open = (listen_addrs.iter().map(|a| ("server.listen", a)))
            .chain(http_listen_addrs.iter().map(|a| ("server.http_listen", a)))
            .find(|(_, a)| !a.ip().is_loopback());
        if let Some((key, open)) = open {
            return Err(ConfigError(format!(
                "config key auth.mode = \"trust\" lets anyone log in as anyone without a password, \
                 so it is allowed only when every listen address is loopback; {key} has {open}. \
                 Use auth.mode = \"password\", or listen on 127.0.0.1 / [::1]"
            )));
        }
    }
    let pool_size_origin = resolve_pool_size(&mut db);
    let mut server = server;
    if server.router_threads == 0 {
        server.router_threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    }
    let mut invocation = invocation;
    if invocation.workers == 0 {
        invocation.workers = db.pool_size;
    }
    Ok(Config {
        server,
        invocation,
        db,
        auth,
        metrics,
        pool_size_origin,
        listen_addrs,
        http_listen_addrs,
        sources,
    })
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

fn resolve_pool_size(db: &mut DbConfig) -> PoolSizeOrigin {
    if db.pool_size != 0 {
        return PoolSizeOrigin::Configured;
    }
    let (cores, physical) = match physical_cores() {
        Some(n) => (n, true),
        None => {
            let logical = std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1);
            log::warn!(
                "cannot read the physical core count from /sys or /proc; \
                 sizing the pool from {logical} logical cores (set db.pool_size to choose)"
            );
            (logical, false)
        }
    };
    db.pool_size = limit::automatic_pool_size(
        db.active_limit,
        limit::formula(cores, db.effective_spindles),
    );
    PoolSizeOrigin::Formula {
        cores,
        physical,
        spindles: db.effective_spindles,
    }
}

/// Physical cores (not hyperthreads) available to this process, counted as
/// distinct (package, core) pairs among the CPUs it may run on.
pub fn physical_cores() -> Option<u64> {
    let n = count_physical_cores(Path::new("/sys/devices/system/cpu"))?;
    let allowed = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(n);
    Some(n.min(allowed))
}

/// Distinct (package, core) pairs among the online CPUs of the sysfs CPU
/// directory `cpus` (`/sys/devices/system/cpu`); `None` when its topology
/// cannot be read.
fn count_physical_cores(cpus: &Path) -> Option<u64> {
    let online = std::fs::read_to_string(cpus.join("online")).ok()?;
    let mut cores = std::collections::BTreeSet::new();
    for cpu in parse_cpu_list(online.trim())? {
        let dir = cpus.join(format!("cpu{cpu}/topology"));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let package = read("physical_package_id")?;
        let core = read("core_id")?;
        cores.insert((package.trim().to_string(), core.trim().to_string()));
    }
    let n = cores.len() as u64;
    (n > 0).then_some(n)
}

/// `"0-3,8,10-11"` → `[0, 1, 2, 3, 8, 10, 11]`.
fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<u32>().ok()?..=b.parse::<u32>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,8"), Some(vec![0, 1, 2, 3, 8]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn auth_mode_is_an_enum_written_as_its_name() {
        let trust = Config::with_flags(&[("auth.mode", "trust")]).unwrap();
        assert_eq!(trust.auth.mode, AuthMode::Trust);
        assert_eq!(serde_json::json!(trust.auth.mode), "trust");
        assert!(trust
            .to_annotated_toml()
            .contains("mode = \"trust\"  # flag"));
        let e = Config::with_flags(&[("auth.mode", "ldap")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config key auth.mode = \"ldap\" (flag): allowed \"password\" or \"trust\""
        );
    }

    /// A sysfs CPU directory: `online`, and per CPU its (package, core).
    fn cpu_fixture(name: &str, online: &str, cpus: &[(u32, u32, u32)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("blitz-cpus-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("online"), online).unwrap();
        for &(cpu, package, core) in cpus {
            let dir = root.join(format!("cpu{cpu}/topology"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("physical_package_id"), format!("{package}\n")).unwrap();
            std::fs::write(dir.join("core_id"), format!("{core}\n")).unwrap();
        }
        root
    }

    #[test]
    fn physical_cores_count_cores_not_hyperthreads() {
        // Two packages of two cores, two hyperthreads each: 8 CPUs, 4 cores.
        let smt: Vec<_> = (0..8).map(|cpu| (cpu, cpu / 4, (cpu / 2) % 2)).collect();
        let root = cpu_fixture("smt", "0-7\n", &smt);
        assert_eq!(count_physical_cores(&root), Some(4));
        // CPUs 4-7 offline: only package 0's two cores count.
        std::fs::write(root.join("online"), "0-3\n").unwrap();
        assert_eq!(count_physical_cores(&root), Some(2));
        // A CPU listed online without a topology: the count cannot be trusted.
        std::fs::write(root.join("online"), "0-8\n").unwrap();
        assert_eq!(count_physical_cores(&root), None);
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(count_physical_cores(&root), None, "no sysfs at all");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgresql://bob:s3cret@db:5432/x"),
            "postgresql://bob:***@db:5432/x"
        );
        assert_eq!(redact_url("postgresql://bob@db/x"), "postgresql://bob@db/x");
        assert_eq!(
            redact_url("host=db password=s3cret user=bob"),
            "host=db password=*** user=bob"
        );
    }
}
