//! The API catalogue: which PostgreSQL functions are callable as `api.<name>`,
//! and how one call becomes one parameterized SQL statement.
//!
//! This module owns everything between a function name plus JSON params and
//! the statement a worker runs: reading the functions of `db.api_schema` from
//! `pg_proc` ([`Catalog::load`]), choosing among overloads, checking the params
//! against the argument list, converting each JSON value to a typed bind
//! parameter ([`SqlParam`]), the SQL text that returns the result as one JSON
//! value ([`PreparedCall`]), and the OpenRPC description of every function
//! ([`Catalog::openrpc_methods`]).
//!
//! The SQL text is never built from user input. Identifiers in it (schema,
//! function, argument and type names) come from the catalogue and are always
//! double-quoted; values only ever travel as bind parameters. The method name
//! a client sends is only a key into the catalogue's map.
//!
//! Every statement returns one column of type `json`:
//!
//! | result | SQL shape |
//! | --- | --- |
//! | void | `SELECT NULL::json FROM f(…) AS r` |
//! | scalar, composite | `SELECT to_json(f(…))` |
//! | `SETOF` scalar | `SELECT COALESCE(json_agg(r.v), '[]') FROM f(…) AS r(v)` |
//! | `SETOF` composite, `RETURNS TABLE` | `SELECT COALESCE(json_agg(q.*), '[]') FROM (SELECT * FROM f(…) AS r) AS q` |
//! | `SETOF record` without OUT params | `SELECT COALESCE(json_agg(q.r), '[]') FROM (SELECT f(…) AS r) AS q` |
//!
//! The rows form goes through a sub-select because a function returning a
//! base type (as `RETURNS TABLE(x int)` does) has no whole-row value of its
//! own: `json_agg(r)` would give `[1, 2]`. With the column named by an alias
//! list (`AS r("x")`) and aggregated from the sub-select, it gives
//! `[{"x": 1}, {"x": 2}]`. A single OUT parameter, as in PostgreSQL itself,
//! makes a scalar result; `RETURNS TABLE` and two or more OUT parameters
//! make objects.
//!
//! JSON values and PostgreSQL types (JSON `null` is SQL NULL for every type):
//!
//! | argument type | JSON value | sent as |
//! | --- | --- | --- |
//! | `bool` | `true`/`false` | `bool` |
//! | `int2`, `int4`, `int8` | an integer in range | the same type |
//! | `float4`, `float8` | a number, or `"NaN"`, `"Infinity"`, `"-Infinity"` | the same type |
//! | `numeric` | a number, or a numeric string (exact) | `text`, cast |
//! | `text`, `varchar`, `bpchar`, `name` | a string | the same type |
//! | `citext` | a string | `text`, cast |
//! | `uuid` | a UUID string | `uuid` |
//! | `date` | `"YYYY-MM-DD"` | `date` |
//! | `timestamp` | ISO 8601 without offset, `T` or space | `timestamp` |
//! | `timestamptz` | RFC 3339 with offset | `timestamptz` |
//! | `json`, `jsonb` | any JSON value, as is | the same type |
//! | a domain over one of these | as its base type | the base type, cast |
//! | one-dimensional arrays of these | a JSON array, `null` elements allowed | the array type |
//! | any other type (`inet`, `interval`, `bytea`, enums, composites, ranges…) and arrays of them | the type's text form as a string (numbers and booleans are rendered as text) | `text` / `text[]`, cast |
//! | pseudo-types (`anyelement`, `anyarray`) | as "any other type" | `text` / `text[]`, no cast |
//!
//! Every parameter is written with explicit casts (`$1::"pg_catalog"."int4"`,
//! `$2::"pg_catalog"."text"::"pg_catalog"."inet"`). The type names there are
//! the catalogue's schema and type name, quoted: unlike `format_type` output
//! they do not depend on `search_path`, and `"pg_catalog"."bpchar"` keeps
//! its length where `character` would mean `char(1)`. The casts also make
//! the SQL text differ between overloads that share argument names, so a
//! per-connection cache of prepared statements keyed by the SQL text never
//! mixes two signatures up, and PostgreSQL's own overload resolution has
//! exactly one candidate left.

mod cache;

pub use cache::CatalogCache;

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use postgres::types::private::BytesMut;
use postgres::types::{to_sql_checked, IsNull, Json, Kind, Oid, ToSql, Type};
use postgres::GenericClient;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The callable functions of one schema, by name (several for overloads).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    schema: String,
    functions: BTreeMap<String, Vec<Function>>,
    count: usize,
}

/// One callable function as the catalogue describes it.
#[derive(Debug, Clone)]
pub struct Function {
    /// The schema it lives in (the configured `db.api_schema`).
    pub schema: String,
    /// Its name: the part after `api.` in the JSON-RPC method.
    pub name: String,
    /// Its input arguments (modes IN, INOUT, VARIADIC) in declaration order.
    pub args: Vec<Arg>,
    /// What the call returns.
    pub result: ResultShape,
    /// `format_type` of the declared return type (`integer`, `record`, `void`…).
    pub return_type: String,
    /// The `COMMENT ON FUNCTION` text, if any.
    pub description: Option<String>,
    /// The function's `pg_proc` OID.
    pub oid: Oid,
    form: CallForm,
    result_schema: Value,
}

/// One input argument of a [`Function`].
#[derive(Debug, Clone)]
pub struct Arg {
    /// Its name; empty for an unnamed argument (callable by position only).
    pub name: String,
    /// The OID of its declared type.
    pub type_oid: Oid,
    /// `format_type` of its declared type (`integer`, `text[]`, `inet`…).
    pub type_name: String,
    /// Whether it has a default, so a call may leave it out.
    pub has_default: bool,
    /// Whether it is the VARIADIC argument (it then takes a JSON array).
    pub variadic: bool,
    label: String,
    binding: Binding,
}

/// What a function returns, and so what JSON a call produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultShape {
    /// `RETURNS void`: the result is JSON `null`.
    Void,
    /// One value of a base, domain, enum or array type: the value as JSON.
    Scalar,
    /// One row (a composite type, or `record` with OUT params): a JSON object.
    Composite,
    /// `SETOF x` or `RETURNS TABLE`: a JSON array (of values, or of objects).
    Set,
}

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
    fn new(param: Option<&str>, message: String) -> ParamError {
        ParamError {
            param: param.map(str::to_string),
            message,
        }
    }
}

/// One call ready to run: SQL text, declared parameter types and values.
///
/// Run it as `client.prepare_typed(&call.sql, &call.param_types)`, then
/// `client.query(&statement, &call.param_refs())`; the result is the single
/// `json` column of the single row (`None` → JSON `null`). [`PreparedCall::run`]
/// does exactly that. The same function called with the same set of argument
/// names always gives the same `sql` and `param_types`, so statements can be
/// cached per connection keyed by `sql`.
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
}

impl PreparedCall {
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

/// A bind parameter value, already converted from JSON and checked against
/// the argument's type. Numeric and "other" types travel as `Text` and are
/// cast in the SQL text.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    /// SQL NULL (from JSON `null`).
    Null,
    /// `bool`.
    Bool(bool),
    /// `int2`.
    Int2(i16),
    /// `int4`.
    Int4(i32),
    /// `int8`.
    Int8(i64),
    /// `float4`.
    Float4(f32),
    /// `float8`.
    Float8(f64),
    /// `text`, `varchar`, `bpchar`, `name`, and the text form of numeric,
    /// citext and every type without a binary mapping here.
    Text(String),
    /// `uuid`.
    Uuid(uuid::Uuid),
    /// `date`.
    Date(NaiveDate),
    /// `timestamp` (without time zone).
    Timestamp(NaiveDateTime),
    /// `timestamptz`.
    TimestampTz(DateTime<Utc>),
    /// `json` or `jsonb`.
    Json(Value),
    /// A one-dimensional array of any of the above (elements may be `Null`).
    Array(Vec<SqlParam>),
}

impl ToSql for SqlParam {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            SqlParam::Null => Ok(IsNull::Yes),
            SqlParam::Bool(v) => v.to_sql(ty, out),
            SqlParam::Int2(v) => v.to_sql(ty, out),
            SqlParam::Int4(v) => v.to_sql(ty, out),
            SqlParam::Int8(v) => v.to_sql(ty, out),
            SqlParam::Float4(v) => v.to_sql(ty, out),
            SqlParam::Float8(v) => v.to_sql(ty, out),
            SqlParam::Text(v) => v.to_sql(ty, out),
            SqlParam::Uuid(v) => v.to_sql(ty, out),
            SqlParam::Date(v) => v.to_sql(ty, out),
            SqlParam::Timestamp(v) => v.to_sql(ty, out),
            SqlParam::TimestampTz(v) => v.to_sql(ty, out),
            SqlParam::Json(v) => v.to_sql(ty, out),
            SqlParam::Array(v) => match ty.kind() {
                // The Vec impl panics on a non-array type; refuse instead.
                Kind::Array(_) => v.to_sql(ty, out),
                _ => Err(format!("an array value cannot be sent as type {}", ty.name()).into()),
            },
        }
    }

    /// Always true: the value was checked against the argument's type when
    /// it was converted from JSON, and the declared type comes from there too.
    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// How one call's params arrived.
enum Supplied<'a> {
    /// A JSON object: by name.
    Named(&'a Map<String, Value>),
    /// A JSON array (or no params at all): by position.
    Positional(&'a [Value]),
}

impl<'a> Supplied<'a> {
    fn from_json(params: &'a Value) -> Result<Supplied<'a>, ParamError> {
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

    fn describe(&self) -> String {
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

impl Catalog {
    /// Loads every plain function (`prokind = 'f'`) of `schema` from
    /// `pg_proc` in one query. Trigger and event-trigger functions are left
    /// out: they cannot be called directly.
    pub fn load(client: &mut postgres::Client, schema: &str) -> Result<Catalog, postgres::Error> {
        let rows = client.query(LOAD_SQL.as_str(), &[&schema])?;
        let mut catalog = Catalog {
            schema: schema.to_string(),
            ..Catalog::default()
        };
        for row in rows {
            let raw = RawFunction {
                schema: row.try_get(0)?,
                name: row.try_get(1)?,
                oid: row.try_get(2)?,
                retset: row.try_get(3)?,
                ndefaults: row.try_get::<_, i16>(4)?,
                description: row.try_get(5)?,
                ret: row.try_get::<_, Json<TypeInfo>>(6)?.0,
                args: row.try_get::<_, Json<Vec<ArgInfo>>>(7)?.0,
            };
            let function = Function::from_raw(raw);
            catalog
                .functions
                .entry(function.name.clone())
                .or_default()
                .push(function);
            catalog.count += 1;
        }
        Ok(catalog)
    }

    /// The schema the functions were loaded from.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Whether the schema has no callable function.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The number of functions, each overload counted.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Every function, by name, overloads in `pg_proc` OID order.
    pub fn functions(&self) -> impl Iterator<Item = &Function> {
        self.functions.values().flatten()
    }

    /// The functions called `name` (several when overloaded; empty if none).
    pub fn overloads(&self, name: &str) -> &[Function] {
        self.functions.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Turns a call of function `name` (the method without its `api.`
    /// prefix) into a [`PreparedCall`].
    ///
    /// `None` when no function has that name (the caller answers -32601).
    /// `params` is a JSON object (arguments by name; omitted arguments with a
    /// default take it), an array (by position), or `null` (no arguments).
    /// JSON `null` as a value is SQL NULL, never "use the default".
    pub fn prepare(&self, name: &str, params: &Value) -> Option<Result<PreparedCall, ParamError>> {
        let candidates = self.functions.get(name)?;
        Some(Supplied::from_json(params).and_then(|supplied| {
            choose(candidates, &supplied).and_then(|function| function.bind(&supplied))
        }))
    }

    /// OpenRPC 1.x method objects (<https://spec.open-rpc.org>), one per
    /// function name: `api.<name>`, its params with JSON Schemas derived from
    /// the PostgreSQL types, `required` for arguments without a default, the
    /// result schema, and the function's comment as description. Overloads
    /// share one method (OpenRPC method names are unique): their params are
    /// merged and their results combined with `oneOf`.
    pub fn openrpc_methods(&self) -> Vec<Value> {
        self.functions
            .values()
            .map(|overloads| match overloads.as_slice() {
                [only] => only.openrpc_method(),
                several => merged_method(several),
            })
            .collect()
    }
}

/// Picks the one overload that accepts `supplied`; never guesses.
fn choose<'f>(candidates: &'f [Function], supplied: &Supplied) -> Result<&'f Function, ParamError> {
    if let [only] = candidates {
        // A single function gets the precise "missing"/"unknown" errors.
        return Ok(only);
    }
    let fits: Vec<&Function> = candidates.iter().filter(|f| f.accepts(supplied)).collect();
    let signatures = |list: &[&Function]| {
        list.iter()
            .map(|f| f.signature())
            .collect::<Vec<_>>()
            .join("; ")
    };
    match fits.as_slice() {
        [one] => Ok(one),
        [] => {
            let all: Vec<&Function> = candidates.iter().collect();
            Err(ParamError::new(
                None,
                format!(
                    "no overload of api.{} accepts {}; its signatures are: {}",
                    candidates[0].name,
                    supplied.describe(),
                    signatures(&all)
                ),
            ))
        }
        several => Err(ParamError::new(
            None,
            format!(
                "ambiguous call of api.{}: {} fit {} overloads: {}; pass params that only one of them accepts",
                candidates[0].name,
                supplied.describe(),
                several.len(),
                signatures(several)
            ),
        )),
    }
}

impl Function {
    fn from_raw(raw: RawFunction) -> Function {
        let inputs: Vec<&ArgInfo> = raw.args.iter().filter(|a| a.is_input()).collect();
        let outputs: Vec<&ArgInfo> = raw.args.iter().filter(|a| a.is_output()).collect();
        let first_default = inputs.len().saturating_sub(raw.ndefaults.max(0) as usize);
        let args = inputs
            .iter()
            .enumerate()
            .map(|(i, a)| Arg::from_raw(a, i, i >= first_default))
            .collect();
        let (result, form) = result_form(&raw, &outputs);
        let result_schema = result_schema(&raw.ret, result, &form, &outputs);
        Function {
            schema: raw.schema,
            name: raw.name,
            args,
            result,
            return_type: raw.ret.format.clone(),
            description: raw.description,
            oid: raw.oid,
            form,
            result_schema,
        }
    }

    /// `name(a integer, b text DEFAULT, VARIADIC xs integer[])`, for messages.
    pub fn signature(&self) -> String {
        let args: Vec<String> = self.args.iter().map(Arg::describe).collect();
        format!("{}({})", self.name, args.join(", "))
    }

    /// The number of arguments a call must supply.
    fn required(&self) -> usize {
        self.args.iter().filter(|a| !a.has_default).count()
    }

    /// Whether `supplied` names or counts fit this signature (types aside).
    fn accepts(&self, supplied: &Supplied) -> bool {
        match supplied {
            Supplied::Named(map) => {
                map.keys()
                    .all(|k| self.args.iter().any(|a| !a.name.is_empty() && &a.name == k))
                    && self
                        .args
                        .iter()
                        .all(|a| a.has_default || (!a.name.is_empty() && map.contains_key(&a.name)))
            }
            Supplied::Positional(list) => {
                self.required() <= list.len() && list.len() <= self.args.len()
            }
        }
    }

    /// Checks `supplied` against the arguments and builds the statement.
    fn bind(&self, supplied: &Supplied) -> Result<PreparedCall, ParamError> {
        let mut call = CallBuilder::default();
        match supplied {
            Supplied::Named(map) => {
                self.check_names(map)?;
                for arg in &self.args {
                    if let Some(value) = map.get(&arg.name).filter(|_| !arg.name.is_empty()) {
                        call.push(arg, Some(&arg.name), value)?;
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

    /// The statement around a call with argument list `args`.
    fn statement(&self, args: &str) -> String {
        let call = format!(
            "{}.{}({args})",
            quote_ident(&self.schema),
            quote_ident(&self.name)
        );
        const EMPTY: &str = "'[]'::pg_catalog.json";
        match &self.form {
            CallForm::Void => format!("SELECT NULL::pg_catalog.json FROM {call} AS r"),
            CallForm::Value => format!("SELECT pg_catalog.to_json({call})"),
            CallForm::ScalarRows => {
                format!("SELECT COALESCE(pg_catalog.json_agg(r.v), {EMPTY}) FROM {call} AS r(v)")
            }
            CallForm::Rows { column } => {
                let alias = column
                    .as_deref()
                    .map(|c| format!("({})", quote_ident(c)))
                    .unwrap_or_default();
                format!(
                    "SELECT COALESCE(pg_catalog.json_agg(q.*), {EMPTY}) \
                     FROM (SELECT * FROM {call} AS r{alias}) AS q"
                )
            }
            CallForm::AnonymousRows => format!(
                "SELECT COALESCE(pg_catalog.json_agg(q.r), {EMPTY}) FROM (SELECT {call} AS r) AS q"
            ),
        }
    }

    /// This function's OpenRPC method object.
    fn openrpc_method(&self) -> Value {
        let mut method = json!({
            "name": format!("api.{}", self.name),
            "summary": format!("{}.{} returns {}", self.schema, self.signature(), self.return_type),
            "params": self.args.iter().map(Arg::content_descriptor).collect::<Vec<_>>(),
            "result": {"name": "result", "schema": self.result_schema},
            "paramStructure": self.param_structure(),
        });
        if let Some(description) = &self.description {
            method["description"] = json!(description);
        }
        method
    }

    fn param_structure(&self) -> &'static str {
        if self.args.iter().any(|a| a.name.is_empty()) {
            "by-position"
        } else {
            "either"
        }
    }
}

/// Accumulates the argument list, parameter types and values of one call.
#[derive(Default)]
struct CallBuilder {
    args: Vec<String>,
    types: Vec<Type>,
    params: Vec<SqlParam>,
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
            sql: function.statement(&self.args.join(", ")),
            param_types: self.types,
            params: self.params,
            oid: function.oid,
        }
    }
}

impl Arg {
    fn from_raw(raw: &ArgInfo, index: usize, has_default: bool) -> Arg {
        let variadic = raw.mode == "v";
        Arg {
            label: if raw.name.is_empty() {
                format!("${}", index + 1)
            } else {
                raw.name.clone()
            },
            name: raw.name.clone(),
            type_oid: raw.ty.oid,
            type_name: raw.ty.format.clone(),
            has_default,
            variadic,
            binding: Binding::for_type(&raw.ty, variadic),
        }
    }

    /// The parameter type the value is sent as (`text` for numeric and the
    /// types sent in their text form).
    pub fn wire_type(&self) -> &Type {
        &self.binding.wire
    }

    /// `a integer`, `VARIADIC xs integer[]`, `b text DEFAULT`.
    fn describe(&self) -> String {
        let mut text = String::new();
        if self.variadic {
            text.push_str("VARIADIC ");
        }
        if !self.name.is_empty() {
            text.push_str(&self.name);
            text.push(' ');
        }
        text.push_str(&self.type_name);
        if self.has_default {
            text.push_str(" DEFAULT");
        }
        text
    }

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

    /// The OpenRPC content descriptor of this argument.
    fn content_descriptor(&self) -> Value {
        let mut schema = self.binding.schema();
        if let (Some(labels), Value::Object(map)) = (&self.binding.labels, &mut schema) {
            let target = if self.binding.array {
                map.get_mut("items").and_then(Value::as_object_mut)
            } else {
                Some(map)
            };
            if let Some(target) = target {
                target.insert("enum".into(), json!(labels));
            }
        }
        let mut type_text = self.type_name.clone();
        if self.variadic {
            type_text.insert_str(0, "VARIADIC ");
        }
        json!({
            "name": self.label,
            "required": !self.has_default,
            "schema": schema,
            "x-postgres-type": type_text,
        })
    }
}

/// The JSON-side family of a type: which JSON values are accepted and how
/// they are converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Text,
    Uuid,
    Date,
    Timestamp,
    TimestampTz,
    Json,
    /// Any other type: its text form, cast in SQL.
    Other,
}

/// How an argument's values are sent.
#[derive(Debug, Clone)]
struct Binding {
    kind: ValueKind,
    /// A one-dimensional array of `kind` (the JSON value is an array).
    array: bool,
    /// The declared parameter type.
    wire: Type,
    /// The argument's own type as quoted SQL, cast to after the wire type;
    /// `None` for pseudo-types (`anyelement`…), which cannot be cast to.
    target: Option<String>,
    /// The labels of an enum type, for the OpenRPC schema.
    labels: Option<Vec<String>>,
}

impl Binding {
    fn for_type(ty: &TypeInfo, variadic: bool) -> Binding {
        let target = Some(qualified(&ty.schema, &ty.typname));
        let labels = ty.labels.clone();
        if ty.typtype == "p" {
            // Polymorphic and pseudo-types: send text and let PostgreSQL
            // resolve `anyelement` to text; VARIADIC "any" needs an array.
            let array = variadic || ty.typname.contains("array");
            return Binding {
                kind: ValueKind::Other,
                array,
                wire: if array { Type::TEXT_ARRAY } else { Type::TEXT },
                target: None,
                labels,
            };
        }
        if ty.typname == "citext" && ty.typtype == "b" {
            return Binding {
                kind: ValueKind::Text,
                array: false,
                wire: Type::TEXT,
                target,
                labels,
            };
        }
        if let Some((kind, array, wire)) = builtin(ty.base_oid) {
            return Binding {
                kind,
                array,
                wire,
                target,
                labels,
            };
        }
        let array = ty.base_array == Some(true);
        Binding {
            kind: ValueKind::Other,
            array,
            wire: if array { Type::TEXT_ARRAY } else { Type::TEXT },
            target,
            labels,
        }
    }

    /// `$n` with its casts: `$1::"pg_catalog"."int4"`,
    /// `$2::"pg_catalog"."text"::"pg_catalog"."inet"`.
    fn expression(&self, n: usize) -> String {
        let wire = qualified("pg_catalog", self.wire.name());
        match &self.target {
            Some(target) if *target == wire => format!("${n}::{wire}"),
            Some(target) => format!("${n}::{wire}::{target}"),
            None => format!("${n}::{wire}"),
        }
    }

    /// The JSON Schema of the values this binding accepts.
    fn schema(&self) -> Value {
        let item = kind_schema(self.kind, true);
        if self.array {
            json!({"type": "array", "items": item})
        } else {
            item
        }
    }
}

/// The kind, array-ness and wire type of a built-in type OID with a binary
/// mapping here; `None` for every other type.
fn builtin(oid: Oid) -> Option<(ValueKind, bool, Type)> {
    let ty = Type::from_oid(oid)?;
    let (element, array) = match ty.kind() {
        // int2vector and oidvector have array kind too but are not arrays
        // in the sense used here; their names do not start with `_`.
        Kind::Array(element) if ty.name().starts_with('_') => (element.clone(), true),
        Kind::Array(_) => return None,
        _ => (ty.clone(), false),
    };
    let kind = match element {
        Type::BOOL => ValueKind::Bool,
        Type::INT2 => ValueKind::Int2,
        Type::INT4 => ValueKind::Int4,
        Type::INT8 => ValueKind::Int8,
        Type::FLOAT4 => ValueKind::Float4,
        Type::FLOAT8 => ValueKind::Float8,
        Type::NUMERIC => ValueKind::Numeric,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => ValueKind::Text,
        Type::UUID => ValueKind::Uuid,
        Type::DATE => ValueKind::Date,
        Type::TIMESTAMP => ValueKind::Timestamp,
        Type::TIMESTAMPTZ => ValueKind::TimestampTz,
        Type::JSON | Type::JSONB => ValueKind::Json,
        _ => return None,
    };
    // numeric has no ToSql without another crate: it travels as text.
    let wire = match (kind, array) {
        (ValueKind::Numeric, false) => Type::TEXT,
        (ValueKind::Numeric, true) => Type::TEXT_ARRAY,
        _ => ty,
    };
    Some((kind, array, wire))
}

/// Converts one JSON value of a scalar `kind`; `Err` says what was expected.
fn convert_scalar(kind: ValueKind, value: &Value) -> Result<SqlParam, String> {
    use ValueKind as K;
    let converted = match (kind, value) {
        (_, Value::Null) => Some(SqlParam::Null),
        (K::Json, v) => Some(SqlParam::Json(v.clone())),
        (K::Bool, Value::Bool(b)) => Some(SqlParam::Bool(*b)),
        (K::Int2, v) => {
            integer(v, i16::MIN.into(), i16::MAX.into()).map(|i| SqlParam::Int2(i as i16))
        }
        (K::Int4, v) => {
            integer(v, i32::MIN.into(), i32::MAX.into()).map(|i| SqlParam::Int4(i as i32))
        }
        (K::Int8, v) => integer(v, i64::MIN, i64::MAX).map(SqlParam::Int8),
        (K::Float4, v) => float(v)
            .filter(|f| !f.is_finite() || f.abs() <= f32::MAX as f64)
            .map(|f| SqlParam::Float4(f as f32)),
        (K::Float8, v) => float(v).map(SqlParam::Float8),
        (K::Numeric, Value::Number(n)) => Some(SqlParam::Text(n.to_string())),
        (K::Numeric, Value::String(s)) if is_numeric_literal(s) => Some(SqlParam::Text(s.clone())),
        (K::Text, Value::String(s)) if !s.contains('\0') => Some(SqlParam::Text(s.clone())),
        (K::Uuid, Value::String(s)) => uuid::Uuid::parse_str(s).ok().map(SqlParam::Uuid),
        (K::Date, Value::String(s)) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .map(SqlParam::Date),
        (K::Timestamp, Value::String(s)) => parse_timestamp(s).map(SqlParam::Timestamp),
        (K::TimestampTz, Value::String(s)) => parse_timestamptz(s).map(SqlParam::TimestampTz),
        (K::Other, Value::String(s)) if !s.contains('\0') => Some(SqlParam::Text(s.clone())),
        (K::Other, Value::Number(n)) => Some(SqlParam::Text(n.to_string())),
        (K::Other, Value::Bool(b)) => Some(SqlParam::Text(b.to_string())),
        _ => None,
    };
    converted.ok_or_else(|| expected(kind))
}

/// What a value of `kind` must look like, for error messages.
fn expected(kind: ValueKind) -> String {
    use ValueKind as K;
    match kind {
        K::Bool => "true or false".into(),
        K::Int2 => format!("an integer between {} and {}", i16::MIN, i16::MAX),
        K::Int4 => format!("an integer between {} and {}", i32::MIN, i32::MAX),
        K::Int8 => format!("an integer between {} and {}", i64::MIN, i64::MAX),
        K::Float4 => {
            "a number within the range of real, or \"NaN\"/\"Infinity\"/\"-Infinity\"".into()
        }
        K::Float8 => "a number, or \"NaN\"/\"Infinity\"/\"-Infinity\"".into(),
        K::Numeric => "a number or a numeric string such as \"12.50\"".into(),
        K::Text => "a string without NUL characters".into(),
        K::Uuid => "a UUID string such as \"0b9e5ad2-8f1e-4c2a-9d4e-6a1f0c3b2d71\"".into(),
        K::Date => "a date string \"YYYY-MM-DD\"".into(),
        K::Timestamp => "a timestamp string \"YYYY-MM-DDTHH:MM:SS[.ffffff]\" without offset".into(),
        K::TimestampTz => {
            "an RFC 3339 timestamp with offset such as \"2024-01-31T12:00:00Z\"".into()
        }
        K::Json => "any JSON value".into(),
        K::Other => "a string in the type's text format (a number or boolean also works)".into(),
    }
}

/// A JSON integer (or a float with no fraction) within `min..=max`.
fn integer(value: &Value, min: i64, max: i64) -> Option<i64> {
    let n = value.as_number()?;
    let i = match n.as_i64() {
        Some(i) => i,
        None => {
            let f = n.as_f64()?;
            // 2^63 is exactly representable; anything at or beyond it is out of range.
            if f.fract() != 0.0 || f < i64::MIN as f64 || f >= 9_223_372_036_854_775_808.0 {
                return None;
            }
            f as i64
        }
    };
    (min..=max).contains(&i).then_some(i)
}

/// A JSON number, or one of the strings PostgreSQL uses for the non-finite
/// floats (which is what `to_json` gives back for them).
fn float(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "nan" => Some(f64::NAN),
            "infinity" | "+infinity" => Some(f64::INFINITY),
            "-infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// ISO 8601 date and time without offset, `T` or space between them,
/// seconds and fraction optional.
fn parse_timestamp(s: &str) -> Option<NaiveDateTime> {
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(s, format).ok())
}

/// RFC 3339 with offset (`T` or space), plus the hour-only offset of
/// PostgreSQL's own text output (`2024-01-31 12:00:00+00`).
fn parse_timestamptz(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .or_else(|| {
            ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"]
                .iter()
                .find_map(|format| DateTime::parse_from_str(s, format).ok())
        })
        .map(|t| t.with_timezone(&Utc))
}

/// Whether `s` is a decimal number PostgreSQL's numeric input accepts
/// (`-12.5`, `.5`, `1e-3`, `NaN`, `Infinity`), so a bad one is a params
/// error here rather than a database error later.
fn is_numeric_literal(s: &str) -> bool {
    let t = s.trim();
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    if t.eq_ignore_ascii_case("nan")
        || unsigned.eq_ignore_ascii_case("infinity")
        || unsigned.eq_ignore_ascii_case("inf")
    {
        return true;
    }
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mantissa_ok =
        digits(whole) && digits(fraction) && !(whole.is_empty() && fraction.is_empty());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

/// The JSON Schema of one value of `kind`; `input` for what a call accepts,
/// otherwise for what `to_json` gives back.
fn kind_schema(kind: ValueKind, input: bool) -> Value {
    use ValueKind as K;
    let int = |min: i64, max: i64| json!({"type": "integer", "minimum": min, "maximum": max});
    match kind {
        K::Bool => json!({"type": "boolean"}),
        K::Int2 => int(i16::MIN.into(), i16::MAX.into()),
        K::Int4 => int(i32::MIN.into(), i32::MAX.into()),
        K::Int8 => int(i64::MIN, i64::MAX),
        K::Float4 | K::Float8 => json!({"type": "number"}),
        K::Numeric if input => json!({"type": ["number", "string"]}),
        K::Numeric => json!({"type": "number"}),
        K::Text => json!({"type": "string"}),
        K::Uuid => json!({"type": "string", "format": "uuid"}),
        K::Date => json!({"type": "string", "format": "date"}),
        K::Timestamp => json!({
            "type": "string",
            "pattern": r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$"
        }),
        K::TimestampTz => json!({"type": "string", "format": "date-time"}),
        K::Json => json!({}),
        K::Other if input => json!({"type": "string"}),
        // What to_json makes of an arbitrary type is not known here.
        K::Other => json!({}),
    }
}

/// How the statement is shaped around the call, by result.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CallForm {
    /// Runs the function once and returns NULL.
    Void,
    /// `to_json` of the one value (scalar or composite).
    Value,
    /// `json_agg` of the values of a `SETOF` base type.
    ScalarRows,
    /// `json_agg` of whole rows; `column` names the one column of a
    /// `RETURNS TABLE` over a base type, which has no row value otherwise.
    Rows { column: Option<String> },
    /// `json_agg` of a `SETOF record` called in the select list (a
    /// function returning bare `record` needs a column list in FROM).
    AnonymousRows,
}

fn result_form(raw: &RawFunction, outputs: &[&ArgInfo]) -> (ResultShape, CallForm) {
    let ret = &raw.ret;
    let record = ret.oid == Type::RECORD.oid();
    let composite = record || ret.base_typtype == "c";
    if ret.oid == Type::VOID.oid() {
        return (ResultShape::Void, CallForm::Void);
    }
    if !raw.retset {
        let shape = if composite {
            ResultShape::Composite
        } else {
            ResultShape::Scalar
        };
        return (shape, CallForm::Value);
    }
    let table = outputs.iter().any(|a| a.mode == "t");
    let form = if record && outputs.is_empty() {
        CallForm::AnonymousRows
    } else if composite {
        CallForm::Rows { column: None }
    } else if table {
        CallForm::Rows {
            column: outputs.first().map(|a| a.name.clone()),
        }
    } else {
        CallForm::ScalarRows
    };
    (ResultShape::Set, form)
}

/// The JSON Schema of a call's result.
fn result_schema(
    ret: &TypeInfo,
    shape: ResultShape,
    form: &CallForm,
    outputs: &[&ArgInfo],
) -> Value {
    let columns: Vec<(&str, &TypeInfo)> = if outputs.is_empty() {
        ret.columns
            .iter()
            .flatten()
            .map(|c| (c.name.as_str(), &c.ty))
            .collect()
    } else {
        outputs.iter().map(|a| (a.name.as_str(), &a.ty)).collect()
    };
    let object = || {
        let properties: Map<String, Value> = columns
            .iter()
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, ty)| (name.to_string(), output_schema(ty)))
            .collect();
        if properties.is_empty() {
            json!({"type": "object"})
        } else {
            json!({"type": "object", "properties": properties})
        }
    };
    match (shape, form) {
        (ResultShape::Void, _) => json!({"type": "null"}),
        (ResultShape::Composite, _) => object(),
        (ResultShape::Scalar, _) => output_schema(ret),
        (_, CallForm::ScalarRows) => json!({"type": "array", "items": output_schema(ret)}),
        _ => json!({"type": "array", "items": object()}),
    }
}

/// The JSON Schema of what `to_json` makes of a value of type `ty`.
fn output_schema(ty: &TypeInfo) -> Value {
    if ty.base_typtype == "c" {
        return json!({"type": "object"});
    }
    let (kind, array) = match builtin(ty.base_oid) {
        Some((kind, array, _)) => (kind, array),
        None => (ValueKind::Other, ty.base_array == Some(true)),
    };
    let mut item = kind_schema(kind, false);
    if let Some(labels) = &ty.labels {
        item = json!({"type": "string", "enum": labels});
    }
    if array {
        json!({"type": "array", "items": item})
    } else {
        item
    }
}

/// One OpenRPC method for several overloads of one name.
fn merged_method(overloads: &[Function]) -> Value {
    let first = &overloads[0];
    let mut params: Vec<Value> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for arg in overloads.iter().flat_map(|f| &f.args) {
        if arg.name.is_empty() || seen.contains(&arg.name.as_str()) {
            continue;
        }
        seen.push(&arg.name);
        let same_name: Vec<&Arg> = overloads
            .iter()
            .flat_map(|f| f.args.iter().filter(|a| a.name == arg.name))
            .collect();
        let required = overloads
            .iter()
            .all(|f| f.args.iter().any(|a| a.name == arg.name && !a.has_default));
        let mut schemas: Vec<Value> = Vec::new();
        for a in &same_name {
            let s = a.content_descriptor()["schema"].clone();
            if !schemas.contains(&s) {
                schemas.push(s);
            }
        }
        let mut types: Vec<&str> = Vec::new();
        for a in &same_name {
            if !types.contains(&a.type_name.as_str()) {
                types.push(&a.type_name);
            }
        }
        params.push(json!({
            "name": arg.name,
            "required": required,
            "schema": one_of(schemas),
            "x-postgres-type": types.join(" | "),
        }));
    }
    let mut results: Vec<Value> = Vec::new();
    for f in overloads {
        if !results.contains(&f.result_schema) {
            results.push(f.result_schema.clone());
        }
    }
    let signatures: Vec<String> = overloads.iter().map(Function::signature).collect();
    let mut description: Vec<String> = Vec::new();
    for text in overloads.iter().filter_map(|f| f.description.as_ref()) {
        if !description.contains(text) {
            description.push(text.clone());
        }
    }
    description.push(format!(
        "Overloaded; the params must fit exactly one of: {}",
        signatures.join("; ")
    ));
    json!({
        "name": format!("api.{}", first.name),
        "summary": format!("{} overloads of {}.{}", overloads.len(), first.schema, first.name),
        "description": description.join("\n\n"),
        "params": params,
        "result": {"name": "result", "schema": one_of(results)},
        "paramStructure": "either",
    })
}

fn one_of(mut schemas: Vec<Value>) -> Value {
    if schemas.len() == 1 {
        schemas.remove(0)
    } else {
        json!({ "oneOf": schemas })
    }
}

/// `"name"` with embedded double quotes doubled: a safe SQL identifier for
/// any name the catalogue holds.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// A name in double quotes for messages.
fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// A JSON value for a message, cut short when long.
fn show(value: &Value) -> String {
    const LIMIT: usize = 60;
    let text = value.to_string();
    if text.chars().count() <= LIMIT {
        text
    } else {
        let cut: String = text.chars().take(LIMIT).collect();
        format!("{cut}…")
    }
}

/// One row of [`LOAD_SQL`].
struct RawFunction {
    schema: String,
    name: String,
    oid: Oid,
    retset: bool,
    ndefaults: i16,
    description: Option<String>,
    ret: TypeInfo,
    args: Vec<ArgInfo>,
}

/// One entry of `proallargtypes` (or `proargtypes`), as [`LOAD_SQL`] builds it.
#[derive(Debug, Deserialize)]
struct ArgInfo {
    name: String,
    /// `i`, `o`, `b` (INOUT), `v` (VARIADIC) or `t` (TABLE column).
    mode: String,
    #[serde(rename = "type")]
    ty: TypeInfo,
}

impl ArgInfo {
    fn is_input(&self) -> bool {
        matches!(self.mode.as_str(), "i" | "b" | "v")
    }

    fn is_output(&self) -> bool {
        matches!(self.mode.as_str(), "o" | "b" | "t")
    }
}

/// What the catalogue says about one type.
#[derive(Debug, Deserialize)]
struct TypeInfo {
    oid: Oid,
    /// `format_type(oid, NULL)`.
    format: String,
    schema: String,
    typname: String,
    typtype: String,
    /// The type under a domain (the type itself otherwise).
    base_oid: Oid,
    base_typtype: String,
    /// Whether the base type is a true array type.
    base_array: Option<bool>,
    /// Enum labels in order, for an enum (or a domain over one).
    labels: Option<Vec<String>>,
    /// The attributes of a composite type (only for return types).
    #[serde(default)]
    columns: Option<Vec<ColumnInfo>>,
}

/// One attribute of a composite return type.
#[derive(Debug, Deserialize)]
struct ColumnInfo {
    name: String,
    #[serde(rename = "type")]
    ty: TypeInfo,
}

/// A scalar sub-select giving the [`TypeInfo`] JSON of the type `oid_expr`.
/// At `depth` 0 it includes the attributes of a composite type, each with
/// its own type info from a nested sub-select (depth 1, with other aliases).
fn type_info_sql(oid_expr: &str, depth: u8) -> String {
    let (t, tn, b, e) = (
        format!("t{depth}"),
        format!("tn{depth}"),
        format!("b{depth}"),
        format!("e{depth}"),
    );
    let columns = if depth == 0 {
        format!(
            ", 'columns', (SELECT pg_catalog.json_agg(pg_catalog.json_build_object(\
                 'name', at.attname, 'type', {}) ORDER BY at.attnum) \
               FROM pg_catalog.pg_attribute at \
               WHERE at.attrelid = {b}.typrelid AND at.attnum > 0 AND NOT at.attisdropped)",
            type_info_sql("at.atttypid", depth + 1)
        )
    } else {
        String::new()
    };
    format!(
        "(SELECT pg_catalog.json_build_object(\
            'oid', {t}.oid::pg_catalog.int8, \
            'format', pg_catalog.format_type({t}.oid, NULL), \
            'schema', {tn}.nspname, \
            'typname', {t}.typname, \
            'typtype', {t}.typtype, \
            'base_oid', {b}.oid::pg_catalog.int8, \
            'base_typtype', {b}.typtype, \
            'base_array', ({b}.typcategory = 'A' AND {e}.typarray = {b}.oid), \
            'labels', (SELECT pg_catalog.json_agg(en.enumlabel ORDER BY en.enumsortorder) \
                       FROM pg_catalog.pg_enum en WHERE en.enumtypid = {b}.oid)\
            {columns}) \
          FROM pg_catalog.pg_type {t} \
          JOIN pg_catalog.pg_namespace {tn} ON {tn}.oid = {t}.typnamespace \
          JOIN pg_catalog.pg_type {b} ON {b}.oid = \
               CASE WHEN {t}.typtype = 'd' THEN {t}.typbasetype ELSE {t}.oid END \
          LEFT JOIN pg_catalog.pg_type {e} ON {e}.oid = {b}.typelem \
          WHERE {t}.oid = {oid_expr})"
    )
}

/// The one query [`Catalog::load`] runs: one row per function, its
/// arguments (all modes, in order) and return type as JSON.
static LOAD_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT n.nspname, p.proname, p.oid, p.proretset, p.pronargdefaults, \
                pg_catalog.obj_description(p.oid, 'pg_proc'), \
                {ret}, \
                COALESCE((SELECT pg_catalog.json_agg(pg_catalog.json_build_object(\
                    'name', COALESCE(p.proargnames[a.ord], ''), \
                    'mode', COALESCE(p.proargmodes[a.ord]::text, 'i'), \
                    'type', {arg}) ORDER BY a.ord) \
                  FROM pg_catalog.unnest(COALESCE(p.proallargtypes, p.proargtypes::pg_catalog.oid[])) \
                       WITH ORDINALITY AS a(typ, ord)), '[]'::pg_catalog.json) \
         FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = $1 AND p.prokind = 'f' \
           AND p.prorettype NOT IN ('pg_catalog.trigger'::pg_catalog.regtype, \
                                    'pg_catalog.event_trigger'::pg_catalog.regtype) \
         ORDER BY p.proname, p.oid",
        ret = type_info_sql("p.prorettype", 0),
        arg = type_info_sql("a.typ", 1),
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_and_calls_can_be_shared_across_worker_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Catalog>();
        shareable::<PreparedCall>();
        shareable::<ParamError>();
    }

    #[test]
    fn quoting_doubles_embedded_quotes() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(quote_ident("a\"b; DROP"), "\"a\"\"b; DROP\"");
    }

    #[test]
    fn numeric_literals() {
        for ok in [
            "0",
            "-12.50",
            ".5",
            "1.",
            "1e10",
            "2.5E-3",
            " 7 ",
            "NaN",
            "-Infinity",
        ] {
            assert!(is_numeric_literal(ok), "{ok}");
        }
        for bad in ["", ".", "abc", "1..2", "1e", "--1", "1,5", "0x10", "1 2"] {
            assert!(!is_numeric_literal(bad), "{bad}");
        }
    }

    #[test]
    fn timestamps_with_and_without_fraction() {
        for ok in [
            "2024-01-31T12:00:00",
            "2024-01-31 12:00:00.123456",
            "2024-01-31T12:00",
        ] {
            assert!(parse_timestamp(ok).is_some(), "{ok}");
        }
        assert!(parse_timestamp("2024-01-31T12:00:00Z").is_none());
        assert!(parse_timestamp("2024-01-31").is_none());
    }

    #[test]
    fn timestamptz_needs_an_offset() {
        let noon = "2024-01-31T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
        for ok in [
            "2024-01-31T12:00:00Z",
            "2024-01-31 14:00:00+02:00",
            "2024-01-31 12:00:00+00",
            "2024-01-31T13:00:00.000+01",
        ] {
            assert_eq!(parse_timestamptz(ok), Some(noon), "{ok}");
        }
        assert!(parse_timestamptz("2024-01-31T12:00:00").is_none());
        assert!(parse_timestamptz("2024-01-31").is_none());
    }

    #[test]
    fn integers_in_range_only() {
        assert_eq!(integer(&json!(5), 0, 10), Some(5));
        assert_eq!(integer(&json!(5.0), 0, 10), Some(5));
        assert_eq!(integer(&json!(5.5), 0, 10), None);
        assert_eq!(integer(&json!(11), 0, 10), None);
        assert_eq!(integer(&json!(u64::MAX), i64::MIN, i64::MAX), None);
        assert_eq!(integer(&json!("5"), 0, 10), None);
    }
}
