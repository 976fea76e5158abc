//! The API catalogue: which PostgreSQL functions are callable as `api.<name>`,
//! and how one call becomes one parameterized SQL statement.
//!
//! This module owns everything between a function name plus JSON params and
//! the statement a worker runs: reading the functions of `db.api_schema` from
//! `pg_proc` ([`Catalog::load`]), choosing among overloads, checking the params
//! against the argument list, converting each JSON value to a typed bind
//! parameter ([`SqlParam`](value::SqlParam)), the SQL text that returns the
//! result as one JSON value ([`PreparedCall`]), and the OpenRPC description
//! of every function ([`Catalog::openrpc_methods`]).
//!
//! The SQL text is never built from user input. Identifiers in it (schema,
//! function, argument and type names) come from the catalogue and are always
//! double-quoted; values only ever travel as bind parameters. The method name
//! a client sends is only a key into the catalogue's map.
//!
//! This file holds [`Catalog`], the map from name to functions, on top of
//! the files below, one concern each; a file uses only those above it in
//! this table (`cache.rs` sits on [`Catalog`] itself):
//!
//! | file | owns |
//! | --- | --- |
//! | `quote.rs` | quoting identifiers for SQL, names and values for messages |
//! | `pg_type.rs` | what `pg_type` says about a type, and how an argument of it is sent |
//! | `sql.rs` | the statement shape around a call, a parameter's casts |
//! | `function.rs` | one function, its arguments, its result shape, its signature, its volatility and the pin to the primary |
//! | `params.rs` | how a call's params arrived; [`ParamError`] |
//! | `value.rs` | JSON value → typed bind parameter (`SqlParam`) |
//! | `schema.rs` | JSON Schemas of parameters and results |
//! | `overload.rs` | which overload a call means |
//! | `bind.rs` | params checked and bound: the [`PreparedCall`] |
//! | `openrpc.rs` | the OpenRPC method objects |
//! | `load.rs` | the `pg_proc` query and its rows made into functions |
//! | `cache.rs` | the catalogue shared by the workers, reloaded on a miss |

mod bind;
mod cache;
mod function;
mod load;
mod openrpc;
mod overload;
mod params;
mod pg_type;
mod quote;
mod schema;
mod sql;
mod value;

pub use bind::PreparedCall;
pub use cache::CatalogCache;
pub use function::{Function, ResultShape};
pub use params::ParamError;

use std::collections::BTreeMap;

use serde_json::Value;

use params::Supplied;

/// The callable functions of one schema, by name (several for overloads).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    schema: String,
    functions: BTreeMap<String, Vec<Function>>,
    count: usize,
}

// Workers share one catalogue and hand calls and their errors between
// threads: a type that stops being `Send + Sync` fails the build here.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Catalog>();
    shareable::<PreparedCall>();
    shareable::<ParamError>();
};

impl Catalog {
    /// Loads every plain function (`prokind = 'f'`) of `schema` from
    /// `pg_proc` in one query. Trigger and event-trigger functions are left
    /// out: they cannot be called directly.
    pub fn load(client: &mut postgres::Client, schema: &str) -> Result<Catalog, postgres::Error> {
        let mut catalog = Catalog {
            schema: schema.to_string(),
            ..Catalog::default()
        };
        for function in load::functions(client, schema)? {
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
            overload::choose(candidates, &supplied).and_then(|function| function.bind(&supplied))
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
            .map(|overloads| openrpc::method(overloads))
            .collect()
    }
}
