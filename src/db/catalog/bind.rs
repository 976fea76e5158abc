//! Binding one call: the params checked against the chosen function's
//! arguments, each converted to its bind parameter, and the statement put
//! together as a [`PreparedCall`].

use postgres::types::{Oid, ToSql, Type};
use postgres::GenericClient;
use serde_json::{Map, Value};

use super::function::{Arg, Function, Volatility};
use super::params::{ParamError, Supplied};
use super::quote::{quote_ident, quoted, show};
use super::value::{convert_scalar, SqlParam};
use crate::db::StatementKey;

/// One call ready to run: SQL text, declared parameter types and values.
///
/// Run it as `client.prepare_typed(&call.sql, &call.param_types)`, then
/// `client.query(&statement, &call.param_refs())`; the result is the single
/// `json` column of the single row (`None` → JSON `null`). [`PreparedCall::run`]
/// does exactly that. The same function called with the same set of argument
/// names always gives the same `sql` and `param_types`, so statements can be
/// cached per connection keyed by `sql`, or by (`oid`, `shape`) without
/// looking at the text.
#[derive(Debug, Clone)]
pub struct PreparedCall {
    /// The statement; identifiers from the catalogue, values only as `$n`.
    pub sql: String,
    /// The type of each `$n`, for `prepare_typed`.
    pub param_types: Vec<Type>,
    /// The value of each `$n`, already checked against its type.
    pub params: Vec<SqlParam>,
    /// The called function's `pg_proc` OID.
    pub oid: Oid,
    /// Which arguments are passed and how: for params by name, bit `i` set
    /// for each argument `i` passed; by position, `POSITIONAL` plus their
    /// number. One function's calls of one shape share one `sql`.
    pub shape: u128,
    /// Whether the function declares it writes nothing (`STABLE` or
    /// `IMMUTABLE`) and is not pinned to the primary: a hot standby may
    /// run it.
    pub standby_safe: bool,
}

/// The bit of [`PreparedCall::shape`] that says params came by position
/// (PostgreSQL functions take at most 100 arguments: bits 0–99 are theirs).
pub const POSITIONAL: u128 = 1 << 127;

impl PreparedCall {
    /// Names this call's statement in a connection's cache, wrapped as
    /// `wrapping` says (the caller's numbering: idempotency key, session,
    /// role).
    pub fn statement_key(&self, wrapping: u8) -> StatementKey {
        StatementKey {
            function: self.oid,
            shape: self.shape,
            wrapping,
        }
    }

    /// The SQL text and parameter types to prepare the call with.
    pub fn statement_text(&self) -> (String, Vec<Type>) {
        (self.sql.clone(), self.param_types.clone())
    }

    /// The params as the slice `postgres` query functions take.
    pub fn param_refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p as &(dyn ToSql + Sync))
            .collect()
    }

    /// Prepares and runs the call on `client` (a connection or transaction)
    /// and returns its JSON result (`null` for SQL NULL and for void).
    pub fn run<C: GenericClient>(&self, client: &mut C) -> Result<Value, postgres::Error> {
        let statement = client.prepare_typed(&self.sql, &self.param_types)?;
        let rows = client.query(&statement, &self.param_refs())?;
        match rows.first() {
            Some(row) => Ok(row.try_get::<_, Option<Value>>(0)?.unwrap_or(Value::Null)),
            None => Ok(Value::Null),
        }
    }
}

impl Function {
    /// Checks `supplied` against the arguments and builds the statement.
    pub(super) fn bind(&self, supplied: &Supplied) -> Result<PreparedCall, ParamError> {
        let mut call = CallBuilder::default();
        match supplied {
            Supplied::Named(map) => {
                self.check_names(map)?;
                for (i, arg) in self.args.iter().enumerate() {
                    if let Some(value) = map.get(&arg.name).filter(|_| !arg.name.is_empty()) {
                        call.push(arg, Some(&arg.name), value)?;
                        call.shape |= 1 << i;
                    } else if !arg.has_default {
                        return Err(self.missing(arg, true));
                    }
                }
            }
            Supplied::Positional(list) => {
                if list.len() > self.args.len() {
                    return Err(ParamError::new(
                        None,
                        format!(
                            "api.{} takes at most {} params, got {}: {}",
                            self.name,
                            self.args.len(),
                            list.len(),
                            self.signature()
                        ),
                    ));
                }
                for (arg, value) in self.args.iter().zip(list.iter()) {
                    call.push(arg, None, value)?;
                }
                call.shape = POSITIONAL | list.len() as u128;
                if let Some(arg) = self.args.get(list.len()).filter(|a| !a.has_default) {
                    return Err(self.missing(arg, false));
                }
            }
        }
        Ok(call.finish(self))
    }

    /// Refuses names that are not input arguments, listing the accepted ones.
    fn check_names(&self, map: &Map<String, Value>) -> Result<(), ParamError> {
        let accepted: Vec<&str> = self
            .args
            .iter()
            .filter(|a| !a.name.is_empty())
            .map(|a| a.name.as_str())
            .collect();
        match map.keys().find(|k| !accepted.contains(&k.as_str())) {
            None => Ok(()),
            Some(unknown) => {
                let list = if accepted.is_empty() {
                    "none".to_string()
                } else {
                    accepted
                        .iter()
                        .map(|n| quoted(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                Err(ParamError::new(
                    Some(unknown),
                    format!(
                        "unknown parameter {} for api.{}; accepted parameters: {list}",
                        quoted(unknown),
                        self.name
                    ),
                ))
            }
        }
    }

    fn missing(&self, arg: &Arg, named: bool) -> ParamError {
        let message = if arg.name.is_empty() && named {
            format!(
                "argument {} ({}) of api.{} has no name and no default; pass params as a JSON array (by position): {}",
                arg.label,
                arg.type_name,
                self.name,
                self.signature()
            )
        } else {
            format!(
                "missing required parameter {} ({}) of api.{}: {}",
                quoted(&arg.label),
                arg.type_name,
                self.name,
                self.signature()
            )
        };
        ParamError::new(Some(&arg.label), message)
    }
}

/// Accumulates the argument list, parameter types and values of one call.
#[derive(Default)]
struct CallBuilder {
    args: Vec<String>,
    types: Vec<Type>,
    params: Vec<SqlParam>,
    shape: u128,
}

impl CallBuilder {
    /// Adds `arg` = `value`, in named notation when `name` is given.
    fn push(&mut self, arg: &Arg, name: Option<&str>, value: &Value) -> Result<(), ParamError> {
        let param = arg.convert(value)?;
        let n = self.params.len() + 1;
        let mut text = String::new();
        if arg.variadic {
            text.push_str("VARIADIC ");
        }
        if let Some(name) = name {
            text.push_str(&quote_ident(name));
            text.push_str(" => ");
        }
        text.push_str(&arg.binding.expression(n));
        self.args.push(text);
        self.types.push(arg.binding.wire.clone());
        self.params.push(param);
        Ok(())
    }

    fn finish(self, function: &Function) -> PreparedCall {
        PreparedCall {
            sql: function
                .form
                .statement(&function.schema, &function.name, &self.args.join(", ")),
            param_types: self.types,
            params: self.params,
            oid: function.oid,
            shape: self.shape,
            standby_safe: function.volatility != Volatility::Volatile
                && !function.pinned_to_primary,
        }
    }
}

impl Arg {
    /// Converts one JSON value to this argument's bind parameter.
    fn convert(&self, value: &Value) -> Result<SqlParam, ParamError> {
        let fail = |expected: String, got: &Value, index: Option<usize>, type_name: &str| {
            let place = index.map(|i| format!(" at index {i}")).unwrap_or_default();
            ParamError::new(
                Some(&self.label),
                format!(
                    "parameter {}{place}: expected {expected} ({type_name}), got {}",
                    quoted(&self.label),
                    show(got)
                ),
            )
        };
        let kind = self.binding.kind;
        if !self.binding.array {
            return convert_scalar(kind, value)
                .map_err(|expected| fail(expected, value, None, &self.type_name));
        }
        let items = match value {
            Value::Null => return Ok(SqlParam::Null),
            Value::Array(items) => items,
            other => return Err(fail("a JSON array".into(), other, None, &self.type_name)),
        };
        let element_type = self.type_name.strip_suffix("[]").unwrap_or(&self.type_name);
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                convert_scalar(kind, item)
                    .map_err(|expected| fail(expected, item, Some(i), element_type))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(SqlParam::Array)
    }
}
