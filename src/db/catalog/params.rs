//! The params of one call as they arrived ([`Supplied`]: by name or by
//! position) and the error when they do not fit ([`ParamError`]).

use std::error::Error as StdError;
use std::fmt;

use serde_json::{Map, Value};

use super::quote::{quoted, show};

/// Params a function cannot take: JSON-RPC error -32602 (Invalid params),
/// with `param` in the error's `data` when one argument is to blame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// The argument at fault (`$n` for an unnamed one), if there is one.
    pub param: Option<String>,
    /// What is wrong and what would be accepted, for the caller to read.
    pub message: String,
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for ParamError {}

impl ParamError {
    /// An error blaming `param` (when there is one argument to blame).
    pub(super) fn new(param: Option<&str>, message: String) -> ParamError {
        ParamError {
            param: param.map(str::to_string),
            message,
        }
    }
}

/// How one call's params arrived.
pub(super) enum Supplied<'a> {
    /// A JSON object: by name.
    Named(&'a Map<String, Value>),
    /// A JSON array (or no params at all): by position.
    Positional(&'a [Value]),
}

impl<'a> Supplied<'a> {
    /// How `params` arrived; neither an object, an array nor `null` is refused.
    pub(super) fn from_json(params: &'a Value) -> Result<Supplied<'a>, ParamError> {
        match params {
            Value::Object(map) => Ok(Supplied::Named(map)),
            Value::Array(list) => Ok(Supplied::Positional(list)),
            Value::Null => Ok(Supplied::Positional(&[])),
            other => Err(ParamError::new(
                None,
                format!(
                    "params must be an object (arguments by name) or an array (by position), got {}",
                    show(other)
                ),
            )),
        }
    }

    /// `named params "a", "b"` or `2 positional params`, for messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Supplied::Named(map) if map.is_empty() => "no params".into(),
            Supplied::Named(map) => format!(
                "named params {}",
                map.keys().map(|k| quoted(k)).collect::<Vec<_>>().join(", ")
            ),
            Supplied::Positional(list) => format!("{} positional params", list.len()),
        }
    }
}
