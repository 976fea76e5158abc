//! The SQL text of one call: the statement shaped around the function
//! ([`CallForm`]) and each parameter with its casts.
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
//! Every parameter is written with explicit casts (`$1::"pg_catalog"."int4"`,
//! `$2::"pg_catalog"."text"::"pg_catalog"."inet"`). The type names there are
//! the catalogue's schema and type name, quoted: unlike `format_type` output
//! they do not depend on `search_path`, and `"pg_catalog"."bpchar"` keeps
//! its length where `character` would mean `char(1)`. The casts also make
//! the SQL text differ between overloads that share argument names, so a
//! per-connection cache of prepared statements keyed by the SQL text never
//! mixes two signatures up, and PostgreSQL's own overload resolution has
//! exactly one candidate left.

use super::pg_type::Binding;
use super::quote::{qualified, quote_ident};

/// How the statement is shaped around the call, by result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CallForm {
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

impl CallForm {
    /// The statement around a call of `schema`.`name` with argument list `args`.
    pub(super) fn statement(&self, schema: &str, name: &str, args: &str) -> String {
        let call = format!("{}.{}({args})", quote_ident(schema), quote_ident(name));
        const EMPTY: &str = "'[]'::pg_catalog.json";
        match self {
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
}

impl Binding {
    /// `$n` with its casts: `$1::"pg_catalog"."int4"`,
    /// `$2::"pg_catalog"."text"::"pg_catalog"."inet"`.
    pub(super) fn expression(&self, n: usize) -> String {
        let wire = qualified("pg_catalog", self.wire.name());
        match &self.target {
            Some(target) if *target == wire => format!("${n}::{wire}"),
            Some(target) => format!("${n}::{wire}::{target}"),
            None => format!("${n}::{wire}"),
        }
    }
}
