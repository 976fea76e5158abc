//! The concurrency-limit keys: `db.active_limit` (`"auto"` or a whole
//! number ≥ 1), what `db.pool_size = 0` resolves to beside it, and the
//! check that a fixed limit fits the pool.
//!
//! `db.active_limit` is the one key whose value may be a string or a whole
//! number; the layers store it as text ([`as_text`]) and [`ActiveLimit`]
//! parses that text, so a file's `active_limit = 8`, `--set
//! db.active_limit=8` and `BLITZ_DB_ACTIVE_LIMIT=8` all mean the same.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use toml::Value;

use super::error::ConfigError;

/// The key this file owns.
pub const KEY: &str = "db.active_limit";

/// How many calls may hold a database connection at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ActiveLimit {
    /// Tuned while serving, from the formula up or down to the knee.
    Auto,
    /// Fixed at this many (at least 1, at most `db.pool_size`).
    Fixed(u64),
}

impl ActiveLimit {
    /// `"auto"` or `"fixed"`, as `sys.status` reports the mode.
    pub fn mode(self) -> &'static str {
        match self {
            ActiveLimit::Auto => "auto",
            ActiveLimit::Fixed(_) => "fixed",
        }
    }
}

impl TryFrom<String> for ActiveLimit {
    type Error = String;

    fn try_from(text: String) -> Result<ActiveLimit, String> {
        match text.trim() {
            "auto" => Ok(ActiveLimit::Auto),
            number => match number.parse::<u64>() {
                Ok(n) if (1..=10_000).contains(&n) => Ok(ActiveLimit::Fixed(n)),
                _ => Err("allowed \"auto\" or a whole number from 1 to 10000".into()),
            },
        }
    }
}

impl Serialize for ActiveLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ActiveLimit::Auto => s.serialize_str("auto"),
            ActiveLimit::Fixed(n) => s.serialize_u64(*n),
        }
    }
}

impl fmt::Display for ActiveLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActiveLimit::Auto => f.write_str("auto"),
            ActiveLimit::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// A value set for `key`, with a whole number for `db.active_limit`
/// turned into its text (the layers type every key like its default, and
/// this key's default is the string `"auto"`).
pub fn as_text(key: &str, value: Value) -> Value {
    match value {
        Value::Integer(n) if key == KEY => Value::String(n.to_string()),
        other => other,
    }
}

/// How many times the formula `db.pool_size = 0` opens in auto mode: room
/// for the tuner to find a knee above the formula.
pub const AUTO_POOL_FACTOR: u64 = 4;

/// The pool size `db.pool_size = 0` stands for, given the formula's
/// figure: room for the tuner above it in auto mode, the fixed limit
/// itself (today's pool) in fixed mode.
pub fn automatic_pool_size(limit: ActiveLimit, formula: u64) -> u64 {
    match limit {
        ActiveLimit::Auto => formula * AUTO_POOL_FACTOR,
        ActiveLimit::Fixed(n) => n,
    }
}

/// Refuses a fixed limit above a configured pool (the limit counts pooled
/// connections held at once, so it cannot exceed how many there are).
pub fn check(limit: ActiveLimit, pool_size: u64) -> Result<(), ConfigError> {
    match limit {
        ActiveLimit::Fixed(n) if pool_size != 0 && n > pool_size => Err(ConfigError(format!(
            "config key {KEY} = {n}: allowed \"auto\" or 1 to db.pool_size ({pool_size})"
        ))),
        _ => Ok(()),
    }
}

/// The pool-size formula: `cores × 2 + effective_spindles`, at least 1.
pub fn formula(cores: u64, spindles: u64) -> u64 {
    (cores * 2 + spindles).max(1)
}

/// How an automatic `db.pool_size` was chosen, for the start line:
/// `"16 (4 × (physical cores 2 × 2 + spindles 0), room for active_limit
/// auto)"`, or `"6 (= db.active_limit)"`.
pub fn explain_automatic(pool_size: u64, limit: ActiveLimit, formula: &str) -> String {
    match limit {
        ActiveLimit::Auto => {
            format!("{pool_size} ({AUTO_POOL_FACTOR} × ({formula}), room for active_limit auto)")
        }
        ActiveLimit::Fixed(_) => format!("{pool_size} (= db.active_limit)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_or_a_whole_number_from_one() {
        assert_eq!(
            ActiveLimit::try_from("auto".to_string()),
            Ok(ActiveLimit::Auto)
        );
        assert_eq!(
            ActiveLimit::try_from("8".to_string()),
            Ok(ActiveLimit::Fixed(8))
        );
        for bad in ["0", "-1", "many", "", "10001"] {
            assert!(ActiveLimit::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_this_key_turns_numbers_into_text() {
        assert_eq!(as_text(KEY, Value::Integer(8)), Value::String("8".into()));
        assert_eq!(
            as_text("db.pool_size", Value::Integer(8)),
            Value::Integer(8)
        );
    }

    #[test]
    fn a_fixed_limit_fits_the_pool() {
        assert!(check(ActiveLimit::Fixed(4), 4).is_ok());
        assert!(
            check(ActiveLimit::Fixed(9), 0).is_ok(),
            "0: the pool follows"
        );
        let e = check(ActiveLimit::Fixed(9), 8).unwrap_err().to_string();
        assert!(
            e.contains("db.active_limit = 9") && e.contains("(8)"),
            "{e}"
        );
        assert_eq!(automatic_pool_size(ActiveLimit::Auto, 4), 16);
        assert_eq!(automatic_pool_size(ActiveLimit::Fixed(6), 4), 6);
    }
}
