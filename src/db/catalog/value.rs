//! JSON values to typed bind parameters: [`SqlParam`] and the conversion of
//! one JSON value for a [`ValueKind`], which refuses what the type would not
//! take, so a bad value is a params error rather than a database error.
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

use std::error::Error as StdError;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use postgres::types::private::BytesMut;
use postgres::types::{to_sql_checked, IsNull, Kind, ToSql, Type};
use serde_json::Value;

use super::pg_type::ValueKind;

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

/// Converts one JSON value of a scalar `kind`; `Err` says what was expected.
pub(super) fn convert_scalar(kind: ValueKind, value: &Value) -> Result<SqlParam, String> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
