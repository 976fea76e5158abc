//! The layers of the configuration: the built-in defaults, then the file,
//! then `BLITZ_*` environment variables, then flags, merged into one TOML
//! table with the [`Source`] of every value; values of the wrong type or
//! under unknown keys are refused here.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::error::ConfigError;
use super::sections::RawConfig;

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

/// The merged TOML table and the source of every value in it.
pub(super) struct Layers {
    /// The built-in defaults, by section.
    pub(super) defaults: Table,
    /// Every layer applied so far, by section.
    pub(super) merged: Table,
    /// Where each value not from the defaults came from, by `section.key`.
    pub(super) sources: BTreeMap<String, Source>,
}

impl Layers {
    /// The built-in defaults alone.
    pub(super) fn defaults() -> Layers {
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

    /// Applies the config file at `path`.
    pub(super) fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
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

    /// Applies the `BLITZ_<SECTION>_<KEY>` variables of `env`.
    pub(super) fn apply_env(&mut self, env: &[(String, String)]) -> Result<(), ConfigError> {
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
    pub(super) fn apply_text(
        &mut self,
        key: &str,
        text: &str,
        source: Source,
    ) -> Result<(), ConfigError> {
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
            Value::Array(_) => Value::Array(split_list(text).map(Value::String).collect()),
            _ => Value::String(text.to_string()),
        };
        self.set(key, value, source)
    }

    fn set(&mut self, key: &str, value: Value, source: Source) -> Result<(), ConfigError> {
        let value = super::limit::as_text(key, value);
        let default = self.default_of(key, &source)?;
        if default.type_str() != value.type_str() {
            let expected = match default {
                Value::Integer(_) => "a whole number",
                Value::Array(_) => "a list of strings",
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

    /// The merged table as the typed sections, before validation.
    pub(super) fn typed(&self) -> Result<RawConfig, ConfigError> {
        Value::Table(self.merged.clone())
            .try_into()
            .map_err(|e| typed_error(&e, self))
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

/// A list key's value as text (environment, flag): its entries separated
/// by commas, blanks around them dropped, nothing for an empty text. A
/// comma inside a multi-host URL (`postgresql://a,b/db`) does not split it:
/// an entry starts only where a URL (`postgres://`, `postgresql://`) or a
/// `key=value` string starts.
fn split_list(text: &str) -> impl Iterator<Item = String> {
    let mut entries: Vec<String> = Vec::new();
    for part in text.split(',') {
        let starts_entry = {
            let p = part.trim_start();
            p.starts_with("postgres://")
                || p.starts_with("postgresql://")
                || p.split_once('=')
                    .is_some_and(|(k, _)| !k.contains([':', '/', '@']))
        };
        match entries.last_mut() {
            Some(last) if !starts_entry => {
                last.push(',');
                last.push_str(part);
            }
            _ => entries.push(part.to_string()),
        }
    }
    entries
        .into_iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
}

fn type_error(key: &str, value: &str, expected: &str, source: &Source) -> ConfigError {
    ConfigError(format!(
        "config key {key} = {value} ({source}): expected {expected}"
    ))
}
