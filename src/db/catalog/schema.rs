//! JSON Schemas of PostgreSQL values: what a parameter accepts and what a
//! call's result gives back, for the OpenRPC description.

use serde_json::{json, Map, Value};

use super::function::ResultShape;
use super::pg_type::{builtin, Binding, TypeInfo, ValueKind};
use super::sql::CallForm;

/// The JSON Schema of one value of `kind`; `input` for what a call accepts,
/// otherwise for what `to_json` gives back.
pub(super) fn kind_schema(kind: ValueKind, input: bool) -> Value {
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

/// The JSON Schema of a call's result; `columns` are the names and types
/// of a row's columns (for composite and row-set results).
pub(super) fn result_schema(
    ret: &TypeInfo,
    shape: ResultShape,
    form: &CallForm,
    columns: &[(&str, &TypeInfo)],
) -> Value {
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

impl Binding {
    /// The JSON Schema of the values this binding accepts.
    pub(super) fn schema(&self) -> Value {
        let item = kind_schema(self.kind, true);
        if self.array {
            json!({"type": "array", "items": item})
        } else {
            item
        }
    }
}
