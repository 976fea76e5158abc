//! PostgreSQL types as the catalogue sees them: what `pg_type` says about
//! one type ([`TypeInfo`], as the load query returns it), the JSON-side
//! family of its values ([`ValueKind`]), and how an argument of that type is
//! sent ([`Binding`]: the wire type and the cast to the argument's own type).
//! The mapping itself is the table in `value.rs`.

use postgres::types::{Kind, Oid, Type};
use serde::Deserialize;

use super::quote::qualified;

/// What the catalogue says about one type, as the load query's
/// `type_info_sql` (in `load.rs`) builds it.
#[derive(Debug, Deserialize)]
pub(super) struct TypeInfo {
    pub(super) oid: Oid,
    /// `format_type(oid, NULL)`.
    pub(super) format: String,
    pub(super) schema: String,
    pub(super) typname: String,
    pub(super) typtype: String,
    /// The type under a domain (the type itself otherwise).
    pub(super) base_oid: Oid,
    pub(super) base_typtype: String,
    /// Whether the base type is a true array type.
    pub(super) base_array: Option<bool>,
    /// Enum labels in order, for an enum (or a domain over one).
    pub(super) labels: Option<Vec<String>>,
    /// The attributes of a composite type (only for return types).
    #[serde(default)]
    pub(super) columns: Option<Vec<ColumnInfo>>,
}

/// One attribute of a composite return type.
#[derive(Debug, Deserialize)]
pub(super) struct ColumnInfo {
    pub(super) name: String,
    #[serde(rename = "type")]
    pub(super) ty: TypeInfo,
}

/// The JSON-side family of a type: which JSON values are accepted and how
/// they are converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ValueKind {
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
pub(super) struct Binding {
    pub(super) kind: ValueKind,
    /// A one-dimensional array of `kind` (the JSON value is an array).
    pub(super) array: bool,
    /// The declared parameter type.
    pub(super) wire: Type,
    /// The argument's own type as quoted SQL, cast to after the wire type;
    /// `None` for pseudo-types (`anyelement`…), which cannot be cast to.
    pub(super) target: Option<String>,
    /// The labels of an enum type, for the OpenRPC schema.
    pub(super) labels: Option<Vec<String>>,
}

impl Binding {
    pub(super) fn for_type(ty: &TypeInfo, variadic: bool) -> Binding {
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
}

/// The kind, array-ness and wire type of a built-in type OID with a binary
/// mapping here; `None` for every other type.
pub(super) fn builtin(oid: Oid) -> Option<(ValueKind, bool, Type)> {
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
