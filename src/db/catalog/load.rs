//! Loading the catalogue from `pg_proc`: the one query ([`LOAD_SQL`]), its
//! rows, and each row made into a [`Function`] with its arguments, result
//! shape and result schema.

use postgres::types::{Json, Oid, Type};
use serde::Deserialize;

use super::function::{pins_to_primary, Arg, Function, ResultShape, Volatility};
use super::pg_type::{Binding, TypeInfo};
use super::schema::result_schema;
use super::sql::CallForm;

/// Every plain function (`prokind = 'f'`) of `schema`, read from `pg_proc`
/// in one query, in name then OID order. Trigger and event-trigger
/// functions are left out: they cannot be called directly.
pub(super) fn functions(
    client: &mut postgres::Client,
    schema: &str,
) -> Result<Vec<Function>, postgres::Error> {
    let rows = client.query(LOAD_SQL.as_str(), &[&schema])?;
    let mut functions = Vec::with_capacity(rows.len());
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
            volatility: row.try_get(8)?,
        };
        functions.push(Function::from_raw(raw));
    }
    Ok(functions)
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
    /// `provolatile` as text: `i`, `s` or `v`.
    volatility: String,
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

/// The one query the catalogue is loaded with: one row per function, its
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
                       WITH ORDINALITY AS a(typ, ord)), '[]'::pg_catalog.json), \
                p.provolatile::pg_catalog.text \
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

impl Function {
    /// The function a row of [`LOAD_SQL`] describes.
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
        let columns = result_columns(&raw.ret, &outputs);
        let result_schema = result_schema(&raw.ret, result, &form, &columns);
        let volatility = Volatility::from_provolatile(&raw.volatility);
        let pinned_to_primary = raw.description.as_deref().is_some_and(pins_to_primary);
        Function {
            volatility,
            pinned_to_primary,
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
}

impl Arg {
    /// Input argument number `index` (from 0) of a function.
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
}

/// What a function returns and the statement form that gives it as JSON.
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

/// The names and types of a result row's columns: the OUT (and TABLE)
/// parameters when there are any, otherwise the attributes of a composite
/// return type.
fn result_columns<'a>(ret: &'a TypeInfo, outputs: &[&'a ArgInfo]) -> Vec<(&'a str, &'a TypeInfo)> {
    if outputs.is_empty() {
        ret.columns
            .iter()
            .flatten()
            .map(|c| (c.name.as_str(), &c.ty))
            .collect()
    } else {
        outputs.iter().map(|a| (a.name.as_str(), &a.ty)).collect()
    }
}
