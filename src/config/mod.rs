//! Configuration: built-in defaults, then `conf/blitz.toml` (or `--config
//! FILE`), then `BLITZ_<SECTION>_<KEY>` environment variables, then
//! command-line flags, merged into one validated [`Config`].
//!
//! This module owns every config key name, default and bound. A bad value is
//! refused by [`Config::load`] with a [`ConfigError`] naming the key, the
//! value and what is allowed; the server turns that into exit code 2.
//!
//! This file holds [`Config`] and its loading; a file uses only those above
//! it in this table:
//!
//! | file | owns |
//! | --- | --- |
//! | `sections.rs` | the five sections, their keys and built-in defaults, [`AuthMode`] |
//! | `error.rs` | [`ConfigError`] |
//! | `redact.rs` | the password of a `db.url` hidden for display |
//! | `cpu.rs` | the physical core count ([`physical_cores`]) |
//! | `layers.rs` | defaults, file, environment and flags merged, each value's [`Source`] |
//! | `validate.rs` | validation, one function per section |
//! | `resolve.rs` | the values 0 stands for, and [`PoolSizeOrigin`] |

mod cpu;
mod error;
mod layers;
mod limit;
mod redact;
mod resolve;
mod sections;
mod tls;
mod validate;

pub use cpu::physical_cores;
pub use error::ConfigError;
pub use layers::Source;
pub use limit::ActiveLimit;
pub use resolve::PoolSizeOrigin;
pub use sections::{AuthConfig, AuthMode, DbConfig, InvocationConfig, MetricsConfig, ServerConfig};
pub use tls::{read_certificates, read_private_key, split_pg_tls, PgSslMode, PgTls};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Value;

use layers::Layers;
use redact::redact_url;
use sections::RawConfig;

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
    pub const DEFAULT_LISTEN: &'static str = sections::DEFAULT_LISTEN;

    /// The default of `invocation.default_timeout_ms`: the deadline of a
    /// call that sends none (`blitz bench` waits that long for its last
    /// replies when its calls carry no deadline).
    pub const DEFAULT_TIMEOUT_MS: u64 = sections::DEFAULT_TIMEOUT_MS;

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
        let raw = layers.typed()?;
        Config::from_raw(raw, layers.sources)
    }

    /// Validates `raw` section by section, then fills in the values 0
    /// stands for.
    fn from_raw(
        mut raw: RawConfig,
        sources: BTreeMap<String, Source>,
    ) -> Result<Config, ConfigError> {
        let listeners = validate::sections(&raw)?;
        let pool_size_origin = resolve::derived_values(&mut raw);
        let RawConfig {
            server,
            invocation,
            db,
            auth,
            metrics,
        } = raw;
        Ok(Config {
            server,
            invocation,
            db,
            auth,
            metrics,
            pool_size_origin,
            listen_addrs: listeners.tcp,
            http_listen_addrs: listeners.http,
            sources,
        })
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
        for url in &mut raw.db.replica_urls {
            *url = redact_url(url);
        }
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
                    note.push_str(match self.db.replica_urls.len() {
                        0 => ", = pool size",
                        _ => ", = pool size × (1 + replicas)",
                    });
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

impl Config {
    /// Where the concurrency limit starts: the formula (`cores × 2 +
    /// effective_spindles`) within the pool, or the fixed limit.
    pub fn active_limit_start(&self) -> u64 {
        match self.db.active_limit {
            ActiveLimit::Fixed(n) => n,
            ActiveLimit::Auto => {
                let cores = physical_cores().unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
                });
                limit::formula(cores, self.db.effective_spindles).min(self.db.pool_size)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
