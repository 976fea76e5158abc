//! The five sections of the configuration, every key with its meaning and
//! its built-in default ([`RawConfig`]'s `Default`: the one place in the
//! code that states them), and [`AuthMode`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// The default of `server.listen` (see `Config::DEFAULT_LISTEN`).
pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:4063";

/// The default of `invocation.default_timeout_ms` (see
/// `Config::DEFAULT_TIMEOUT_MS`).
pub(super) const DEFAULT_TIMEOUT_MS: u64 = 30_000;

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
    /// PEM certificate (chain) of the TLS listeners ("" = plaintext).
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// PEM CA whose signature a client certificate needs ("" = none asked).
    pub tls_client_ca_file: String,
    /// Longest TLS handshake before the socket is closed.
    pub tls_handshake_timeout_ms: u64,
    /// Password mode off loopback without TLS (a TLS-terminating proxy in front).
    pub allow_plaintext: bool,
}

impl ServerConfig {
    /// The `[server]` TLS keys, as `config/tls.rs` checks them.
    pub(super) fn tls_keys(&self, mode: AuthMode) -> super::tls::ServerTlsKeys<'_> {
        super::tls::ServerTlsKeys {
            cert_file: &self.tls_cert_file,
            key_file: &self.tls_key_file,
            client_ca_file: &self.tls_client_ca_file,
            handshake_timeout_ms: self.tls_handshake_timeout_ms,
            allow_plaintext: self.allow_plaintext,
            password_mode: mode == AuthMode::Password,
        }
    }
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
    pub active_limit: super::limit::ActiveLimit,
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
    /// Hot standbys of the primary (libpq URLs) that serve STABLE and
    /// IMMUTABLE `api.` calls; empty = every call on the primary.
    pub replica_urls: Vec<String>,
    /// A standby lagging more than this (ms) is skipped until it catches up.
    pub replica_max_lag_ms: u64,
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
pub(super) struct RawConfig {
    pub(super) server: ServerConfig,
    pub(super) invocation: InvocationConfig,
    pub(super) db: DbConfig,
    pub(super) auth: AuthConfig,
    pub(super) metrics: MetricsConfig,
}

/// The built-in defaults: the one place in the code that states them.
/// `conf/blitz.toml` and the README's table state them for people, and
/// `tests/config_defaults.rs` proves the three agree.
impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            server: ServerConfig {
                listen: DEFAULT_LISTEN.into(),
                http_listen: String::new(),
                router_threads: 0,
                max_clients: 10_000,
                max_message_bytes: 1 << 20,
                idle_timeout_s: 300,
                max_in_flight_per_connection: 64,
                drain_timeout_s: 30,
                tls_cert_file: String::new(),
                tls_key_file: String::new(),
                tls_client_ca_file: String::new(),
                tls_handshake_timeout_ms: 5000,
                allow_plaintext: false,
            },
            invocation: InvocationConfig {
                workers: 0,
                queue_capacity: 1000,
                default_timeout_ms: DEFAULT_TIMEOUT_MS,
                max_retries: 3,
                idempotency_ttl_s: 86_400,
            },
            db: DbConfig {
                url: "postgresql://postgres@127.0.0.1:5432/blitz".into(),
                pool_size: 0,
                active_limit: super::limit::ActiveLimit::Auto,
                effective_spindles: 0,
                acquire_timeout_ms: 1000,
                connect_timeout_s: 5,
                api_schema: "blitz_api".into(),
                reserved_connections: 3,
                heartbeat_interval_ms: 2000,
                heartbeat_timeout_ms: 6000,
                replica_urls: Vec::new(),
                replica_max_lag_ms: 1000,
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
