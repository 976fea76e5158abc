//! One callable function as the catalogue describes it ([`Function`]), its
//! input arguments ([`Arg`]) and the shape of its result ([`ResultShape`]),
//! with the signature text that messages and the OpenRPC summary show.

use postgres::types::{Oid, Type};
use serde_json::Value;

use super::pg_type::Binding;
use super::sql::CallForm;

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
    /// How the statement is shaped around the call.
    pub(super) form: CallForm,
    /// The JSON Schema of the result, for the OpenRPC description.
    pub(super) result_schema: Value,
    /// `pg_proc.provolatile`.
    pub volatility: Volatility,
    /// Whether its comment pins it to the primary ([`PIN_MARKER`]).
    pub pinned_to_primary: bool,
}

/// The line of a `COMMENT ON FUNCTION` that keeps a STABLE or IMMUTABLE
/// function's calls on the primary (for one that must see the latest
/// commit of any session): a line of the comment that is exactly this,
/// blanks around it ignored.
pub const PIN_MARKER: &str = "@blitz primary";

/// Whether a function's comment carries [`PIN_MARKER`] on a line of its own.
pub(super) fn pins_to_primary(comment: &str) -> bool {
    comment.lines().any(|line| line.trim() == PIN_MARKER)
}

/// What a function declares about its effects (`pg_proc.provolatile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Volatility {
    /// `IMMUTABLE`: the same result for the same arguments, forever.
    Immutable,
    /// `STABLE`: reads the database, writes nothing.
    Stable,
    /// `VOLATILE` (the default): may write.
    Volatile,
}

impl Volatility {
    /// The volatility `provolatile` (`i`, `s`, `v`) names; anything else
    /// counts as volatile, the safe side.
    pub(super) fn from_provolatile(code: &str) -> Volatility {
        match code {
            "i" => Volatility::Immutable,
            "s" => Volatility::Stable,
            _ => Volatility::Volatile,
        }
    }
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
    /// Its name, or `$n` (its position) when it has none: how messages name it.
    pub(super) label: String,
    /// How its values are sent.
    pub(super) binding: Binding,
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

impl Function {
    /// `name(a integer, b text DEFAULT, VARIADIC xs integer[])`, for messages.
    pub fn signature(&self) -> String {
        let args: Vec<String> = self.args.iter().map(Arg::describe).collect();
        format!("{}({})", self.name, args.join(", "))
    }
}

impl Arg {
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
}
