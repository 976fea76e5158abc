//! The API catalogue against a real PostgreSQL: loading functions from
//! `pg_proc`, every supported type round-tripped through typed parameters,
//! defaults, VARIADIC, overloads, every result shape, params errors, SQL
//! injection attempts, odd identifiers and the OpenRPC description.

mod support;

use blitz::catalog::{Catalog, ParamError, PreparedCall, ResultShape};
use postgres::Client;
use serde_json::{json, Value};
use support::TestDb;

/// A fresh database with schema `blitz_api` plus `sql`, a client on it (in
/// UTC, so timestamptz output is predictable) and the loaded catalogue.
fn setup(sql: &str) -> (TestDb, Client, Catalog) {
    let db = TestDb::new();
    db.execute("CREATE SCHEMA blitz_api");
    db.execute(sql);
    let mut client = db.connect();
    client.batch_execute("SET TimeZone = 'UTC'").unwrap();
    let catalog = Catalog::load(&mut client, "blitz_api").expect("load the catalogue");
    (db, client, catalog)
}

/// Prepares `name(params)`, panicking on a params error.
fn prepared(catalog: &Catalog, name: &str, params: Value) -> PreparedCall {
    match catalog.prepare(name, &params) {
        None => panic!("api.{name} not found in the catalogue"),
        Some(Err(e)) => panic!("api.{name}({params}) refused: {e:?}"),
        Some(Ok(call)) => call,
    }
}

/// Runs a prepared call the way the server does: `prepare_typed`, then
/// `query`, reading the one json column of at most one row.
fn execute(client: &mut Client, call: &PreparedCall) -> Value {
    let statement = client
        .prepare_typed(&call.sql, &call.param_types)
        .unwrap_or_else(|e| panic!("prepare {}: {e}", call.sql));
    let rows = client
        .query(&statement, &call.param_refs())
        .unwrap_or_else(|e| panic!("run {}: {e}", call.sql));
    assert!(rows.len() <= 1, "{} returned {} rows", call.sql, rows.len());
    rows.first()
        .and_then(|row| row.get::<_, Option<Value>>(0))
        .unwrap_or(Value::Null)
}

/// Prepares and runs `name(params)`.
fn call(client: &mut Client, catalog: &Catalog, name: &str, params: Value) -> Value {
    let call = prepared(catalog, name, params);
    execute(client, &call)
}

/// The params error of `name(params)`, panicking if the call is accepted.
fn refused(catalog: &Catalog, name: &str, params: Value) -> ParamError {
    match catalog.prepare(name, &params) {
        None => panic!("api.{name} not found in the catalogue"),
        Some(Ok(call)) => panic!("api.{name}({params}) accepted: {}", call.sql),
        Some(Err(e)) => e,
    }
}

/// Asserts a params error blames `param` and its message contains every
/// one of `parts`.
fn assert_refused(
    catalog: &Catalog,
    name: &str,
    params: Value,
    param: Option<&str>,
    parts: &[&str],
) {
    let e = refused(catalog, name, params.clone());
    assert_eq!(
        e.param.as_deref(),
        param,
        "param of the error for {name}({params}): {e:?}"
    );
    for part in parts {
        assert!(
            e.message.contains(part),
            "message for {name}({params}) lacks {part:?}: {}",
            e.message
        );
    }
}

/// `CREATE FUNCTION blitz_api.echo_<suffix>(v <ty>) RETURNS <ty>`.
fn echo_function(suffix: &str, ty: &str) -> String {
    format!(
        "CREATE FUNCTION blitz_api.echo_{suffix}(v {ty}) RETURNS {ty} \
         LANGUAGE sql AS $$ SELECT v $$;\n"
    )
}

const SCALARS: &[(&str, &str)] = &[
    ("bool", "boolean"),
    ("int2", "smallint"),
    ("int4", "integer"),
    ("int8", "bigint"),
    ("float4", "real"),
    ("float8", "double precision"),
    ("numeric", "numeric"),
    ("text", "text"),
    ("varchar", "character varying"),
    ("bpchar", "character"),
    ("name", "name"),
    ("citext", "public.citext"),
    ("uuid", "uuid"),
    ("date", "date"),
    ("timestamp", "timestamp"),
    ("timestamptz", "timestamptz"),
    ("json", "json"),
    ("jsonb", "jsonb"),
];

fn scalar_functions() -> String {
    let mut sql = String::from("CREATE EXTENSION citext SCHEMA public;\n");
    for (suffix, ty) in SCALARS {
        sql.push_str(&echo_function(suffix, ty));
        sql.push_str(&echo_function(
            &format!("{suffix}_array"),
            &format!("{ty}[]"),
        ));
    }
    sql
}

#[test]
fn every_supported_scalar_type_round_trips() {
    let (_db, mut client, catalog) = setup(&scalar_functions());
    let cases: &[(&str, Value, Value)] = &[
        ("bool", json!(true), json!(true)),
        ("int2", json!(-32768), json!(-32768)),
        ("int4", json!(2147483647), json!(2147483647)),
        ("int4", json!(7.0), json!(7)),
        (
            "int8",
            json!(-9007199254740993i64),
            json!(-9007199254740993i64),
        ),
        ("float4", json!(1.5), json!(1.5)),
        ("float8", json!(-0.125), json!(-0.125)),
        ("float8", json!("NaN"), json!("NaN")),
        ("float8", json!("-Infinity"), json!("-Infinity")),
        ("numeric", json!(12.5), json!(12.5)),
        ("numeric", json!("0.1"), json!(0.1)),
        ("numeric", json!("-1e3"), json!(-1000)),
        ("numeric", json!(42), json!(42)),
        (
            "text",
            json!("héllo \"wörld\"\n"),
            json!("héllo \"wörld\"\n"),
        ),
        ("varchar", json!("v"), json!("v")),
        ("bpchar", json!("abc"), json!("abc")),
        ("name", json!("pg_class"), json!("pg_class")),
        ("citext", json!("MiXeD"), json!("MiXeD")),
        (
            "uuid",
            json!("0B9E5AD2-8F1E-4C2A-9D4E-6A1F0C3B2D71"),
            json!("0b9e5ad2-8f1e-4c2a-9d4e-6a1f0c3b2d71"),
        ),
        ("date", json!("2024-02-29"), json!("2024-02-29")),
        (
            "timestamp",
            json!("2024-01-31T12:34:56.5"),
            json!("2024-01-31T12:34:56.5"),
        ),
        (
            "timestamp",
            json!("2024-01-31 08:00:00"),
            json!("2024-01-31T08:00:00"),
        ),
        (
            "timestamptz",
            json!("2024-01-31T12:00:00+02:00"),
            json!("2024-01-31T10:00:00+00:00"),
        ),
        (
            "timestamptz",
            json!("2024-01-31T12:00:00.25Z"),
            json!("2024-01-31T12:00:00.25+00:00"),
        ),
        (
            "json",
            json!({"a": [1, null, "x"], "b": {}}),
            json!({"a": [1, null, "x"], "b": {}}),
        ),
        ("json", json!("just a string"), json!("just a string")),
        (
            "jsonb",
            json!({"z": 1, "a": [true, 2.5]}),
            json!({"a": [true, 2.5], "z": 1}),
        ),
        ("jsonb", json!([1, "two"]), json!([1, "two"])),
    ];
    for (suffix, input, expected) in cases {
        let name = format!("echo_{suffix}");
        let got = call(&mut client, &catalog, &name, json!({ "v": input }));
        assert_eq!(&got, expected, "{name}({input})");
        // By position gives the same.
        let got = call(&mut client, &catalog, &name, json!([input]));
        assert_eq!(&got, expected, "{name}([{input}])");
    }
    // JSON null is SQL NULL for every type, and comes back as null.
    for (suffix, _) in SCALARS {
        let name = format!("echo_{suffix}");
        assert_eq!(
            call(&mut client, &catalog, &name, json!({"v": null})),
            Value::Null,
            "{name}"
        );
    }
}

#[test]
fn one_dimensional_arrays_of_every_supported_type_round_trip() {
    let (_db, mut client, catalog) = setup(&scalar_functions());
    let cases: &[(&str, Value, Value)] = &[
        (
            "bool",
            json!([true, null, false]),
            json!([true, null, false]),
        ),
        ("int2", json!([1, -2]), json!([1, -2])),
        ("int4", json!([1, null, 3]), json!([1, null, 3])),
        (
            "int8",
            json!([9007199254740993i64]),
            json!([9007199254740993i64]),
        ),
        ("float4", json!([0.5, null]), json!([0.5, null])),
        (
            "float8",
            json!([1.25, "Infinity"]),
            json!([1.25, "Infinity"]),
        ),
        ("numeric", json!(["1.50", 2, null]), json!([1.50, 2, null])),
        (
            "text",
            json!(["a", null, "b\"c", "{x,y}"]),
            json!(["a", null, "b\"c", "{x,y}"]),
        ),
        ("varchar", json!(["v"]), json!(["v"])),
        ("bpchar", json!(["ab", "c"]), json!(["ab", "c"])),
        ("name", json!(["n"]), json!(["n"])),
        ("citext", json!(["Ab", null]), json!(["Ab", null])),
        (
            "uuid",
            json!(["0b9e5ad2-8f1e-4c2a-9d4e-6a1f0c3b2d71"]),
            json!(["0b9e5ad2-8f1e-4c2a-9d4e-6a1f0c3b2d71"]),
        ),
        (
            "date",
            json!(["2024-01-01", null]),
            json!(["2024-01-01", null]),
        ),
        (
            "timestamp",
            json!(["2024-01-01T00:00:01"]),
            json!(["2024-01-01T00:00:01"]),
        ),
        (
            "timestamptz",
            json!(["2024-01-01T00:00:00-01:00"]),
            json!(["2024-01-01T01:00:00+00:00"]),
        ),
        (
            "json",
            json!([{"a": 1}, [1, 2], null]),
            json!([{"a": 1}, [1, 2], null]),
        ),
        ("jsonb", json!([{"a": 1}, "s"]), json!([{"a": 1}, "s"])),
        ("int4", json!([]), json!([])),
        ("text", json!([]), json!([])),
    ];
    for (suffix, input, expected) in cases {
        let name = format!("echo_{suffix}_array");
        let got = call(&mut client, &catalog, &name, json!({ "v": input }));
        assert_eq!(&got, expected, "{name}({input})");
    }
    assert_eq!(
        call(&mut client, &catalog, "echo_int4_array", json!({"v": null})),
        Value::Null
    );
}

#[test]
fn other_types_are_sent_as_text_and_cast_by_the_catalogue_type_name() {
    let (_db, mut client, catalog) = setup(
        "CREATE TYPE blitz_api.mood AS ENUM ('sad', 'ok', 'happy');
         CREATE DOMAIN blitz_api.positive AS integer CHECK (VALUE > 0);
         CREATE DOMAIN blitz_api.short_text AS text CHECK (length(VALUE) < 5);
         CREATE TYPE blitz_api.point2 AS (x integer, y integer);
         CREATE FUNCTION blitz_api.echo_inet(v inet) RETURNS inet LANGUAGE sql AS $$ SELECT v $$;
         CREATE FUNCTION blitz_api.echo_interval(v interval) RETURNS interval LANGUAGE sql AS $$ SELECT v $$;
         CREATE FUNCTION blitz_api.echo_mood(v blitz_api.mood) RETURNS blitz_api.mood LANGUAGE sql AS $$ SELECT v $$;
         CREATE FUNCTION blitz_api.echo_positive(v blitz_api.positive) RETURNS integer LANGUAGE sql AS $$ SELECT v $$;
         CREATE FUNCTION blitz_api.echo_short(v blitz_api.short_text) RETURNS text LANGUAGE sql AS $$ SELECT v $$;
         CREATE FUNCTION blitz_api.echo_point(v blitz_api.point2) RETURNS blitz_api.point2 LANGUAGE sql AS $$ SELECT v $$;
         CREATE FUNCTION blitz_api.echo_inets(v inet[]) RETURNS inet[] LANGUAGE sql AS $$ SELECT v $$;
         CREATE FUNCTION blitz_api.echo_moods(v blitz_api.mood[]) RETURNS text LANGUAGE sql AS $$ SELECT v::text $$;
         CREATE FUNCTION blitz_api.echo_money_text(v money) RETURNS text LANGUAGE sql AS $$ SELECT v::numeric::text $$;
         CREATE FUNCTION blitz_api.echo_any(v anyelement) RETURNS anyelement LANGUAGE sql AS $$ SELECT v $$;",
    );
    let cases: &[(&str, Value, Value)] = &[
        (
            "echo_inet",
            json!("192.168.0.1/24"),
            json!("192.168.0.1/24"),
        ),
        (
            "echo_interval",
            json!("1 day 02:00:00"),
            json!("1 day 02:00:00"),
        ),
        ("echo_interval", json!("PT90M"), json!("01:30:00")),
        ("echo_mood", json!("happy"), json!("happy")),
        ("echo_positive", json!(5), json!(5)),
        ("echo_short", json!("abcd"), json!("abcd")),
        ("echo_point", json!("(1,2)"), json!({"x": 1, "y": 2})),
        (
            "echo_inets",
            json!(["10.0.0.1", null, "::1"]),
            json!(["10.0.0.1", null, "::1"]),
        ),
        ("echo_moods", json!(["ok", "sad"]), json!("{ok,sad}")),
        ("echo_money_text", json!(12), json!("12.00")),
        ("echo_any", json!("poly"), json!("poly")),
        ("echo_mood", json!(null), json!(null)),
    ];
    for (name, input, expected) in cases {
        let got = call(&mut client, &catalog, name, json!({ "v": input }));
        assert_eq!(&got, expected, "{name}({input})");
    }
    let inet = prepared(&catalog, "echo_inet", json!({"v": "10.0.0.1"}));
    assert!(
        inet.sql
            .contains(r#"$1::"pg_catalog"."text"::"pg_catalog"."inet""#),
        "{}",
        inet.sql
    );
    // The domain check runs in the database: a database error, not a params error.
    let bad = prepared(&catalog, "echo_positive", json!({"v": -1}));
    let err = client
        .query(&bad.sql, &bad.param_refs())
        .expect_err("domain check");
    assert_eq!(err.code().map(|c| c.code()), Some("23514"), "{err}");
    // A value the type's input function rejects is a database error too.
    let bad = prepared(&catalog, "echo_mood", json!({"v": "furious"}));
    let err = client
        .query(&bad.sql, &bad.param_refs())
        .expect_err("bad enum label");
    assert_eq!(err.code().map(|c| c.code()), Some("22P02"), "{err}");
    // Objects and arrays have no text form for a scalar "other" type.
    assert_refused(
        &catalog,
        "echo_inet",
        json!({"v": {"addr": 1}}),
        Some("v"),
        &[r#"parameter "v""#, "(inet)", r#"got {"addr":1}"#],
    );
}

const DEFAULTS_SQL: &str = "
    CREATE FUNCTION blitz_api.greet(a integer, b integer DEFAULT 10, c text DEFAULT 'x')
        RETURNS text LANGUAGE sql AS $$ SELECT a || '-' || b || '-' || coalesce(c, 'NULL') $$;
    CREATE FUNCTION blitz_api.unnamed(integer, integer) RETURNS integer
        LANGUAGE sql AS $$ SELECT $1 * $2 $$;
    CREATE FUNCTION blitz_api.nothing() RETURNS integer LANGUAGE sql AS $$ SELECT 42 $$;";

#[test]
fn defaults_apply_to_omitted_trailing_arguments_by_name_and_by_position() {
    let (_db, mut client, catalog) = setup(DEFAULTS_SQL);
    let cases: &[(Value, &str)] = &[
        (json!({"a": 1}), "1-10-x"),
        (json!({"a": 1, "c": "y"}), "1-10-y"),
        (json!({"c": "y", "b": 2, "a": 1}), "1-2-y"),
        (json!({"a": 1, "c": null}), "1-10-NULL"),
        (json!([1]), "1-10-x"),
        (json!([1, 2]), "1-2-x"),
        (json!([1, 2, "z"]), "1-2-z"),
    ];
    for (params, expected) in cases {
        assert_eq!(
            call(&mut client, &catalog, "greet", params.clone()),
            json!(expected),
            "{params}"
        );
    }
    let only_a = prepared(&catalog, "greet", json!({"a": 1}));
    assert_eq!(
        only_a.sql,
        r#"SELECT pg_catalog.to_json("blitz_api"."greet"("a" => $1::"pg_catalog"."int4"))"#
    );
    let a_and_c = prepared(&catalog, "greet", json!({"c": "q", "a": 5}));
    assert!(a_and_c
        .sql
        .contains(r#""a" => $1::"pg_catalog"."int4", "c" => $2::"pg_catalog"."text""#));
    assert_eq!(
        a_and_c.param_types,
        vec![postgres::types::Type::INT4, postgres::types::Type::TEXT]
    );

    // Unnamed arguments: by position only.
    assert_eq!(
        call(&mut client, &catalog, "unnamed", json!([6, 7])),
        json!(42)
    );
    assert_refused(
        &catalog,
        "unnamed",
        json!({}),
        Some("$1"),
        &["no name", "JSON array"],
    );
    // No arguments: null, [], {} all work.
    for params in [json!(null), json!([]), json!({})] {
        assert_eq!(call(&mut client, &catalog, "nothing", params), json!(42));
    }
}

#[test]
fn the_same_argument_names_give_the_same_sql_so_statements_can_be_cached() {
    let (_db, mut client, catalog) = setup(DEFAULTS_SQL);
    let first = prepared(&catalog, "greet", json!({"a": 1, "b": 2}));
    let second = prepared(&catalog, "greet", json!({"b": 20, "a": 10}));
    assert_eq!(first.sql, second.sql);
    assert_eq!(first.param_types, second.param_types);
    assert_ne!(first.sql, prepared(&catalog, "greet", json!({"a": 1})).sql);
    // One prepared statement serves both calls.
    let statement = client
        .prepare_typed(&first.sql, &first.param_types)
        .unwrap();
    let run = |client: &mut Client, call: &PreparedCall| -> Value {
        client
            .query_one(&statement, &call.param_refs())
            .unwrap()
            .get(0)
    };
    assert_eq!(run(&mut client, &first), json!("1-2-x"));
    assert_eq!(run(&mut client, &second), json!("10-20-x"));
    // PreparedCall::run does prepare + query + read in one step.
    assert_eq!(second.run(&mut client).unwrap(), json!("10-20-x"));
    let mut tx = client.transaction().unwrap();
    assert_eq!(first.run(&mut tx).unwrap(), json!("1-2-x"));
    tx.commit().unwrap();
}

#[test]
fn variadic_arguments_take_a_json_array() {
    let (_db, mut client, catalog) = setup(
        "CREATE FUNCTION blitz_api.total(VARIADIC xs integer[]) RETURNS integer
             LANGUAGE sql AS $$ SELECT coalesce(sum(x), 0)::int FROM unnest(xs) x $$;
         CREATE FUNCTION blitz_api.join_with(sep text, VARIADIC parts text[]) RETURNS text
             LANGUAGE sql AS $$ SELECT array_to_string(parts, sep) $$;
         CREATE FUNCTION blitz_api.count_any(VARIADIC things anyarray) RETURNS integer
             LANGUAGE sql AS $$ SELECT cardinality(things) $$;",
    );
    assert_eq!(
        call(&mut client, &catalog, "total", json!({"xs": [1, 2, 3]})),
        json!(6)
    );
    assert_eq!(
        call(&mut client, &catalog, "total", json!([[4, 5]])),
        json!(9)
    );
    assert_eq!(
        call(&mut client, &catalog, "total", json!({"xs": []})),
        json!(0)
    );
    assert_eq!(
        call(
            &mut client,
            &catalog,
            "join_with",
            json!({"sep": "+", "parts": ["a", "b", "c"]})
        ),
        json!("a+b+c")
    );
    assert_eq!(
        call(&mut client, &catalog, "join_with", json!(["/", ["x", "y"]])),
        json!("x/y")
    );
    let sql = prepared(&catalog, "join_with", json!({"sep": "+", "parts": ["a"]})).sql;
    assert!(
        sql.contains(r#"VARIADIC "parts" => $2::"pg_catalog"."_text""#),
        "{sql}"
    );
    assert_refused(
        &catalog,
        "total",
        json!({"xs": 3}),
        Some("xs"),
        &[r#"parameter "xs": expected a JSON array (integer[]), got 3"#],
    );
    assert_refused(
        &catalog,
        "total",
        json!({"xs": [1, "two"]}),
        Some("xs"),
        &[
            r#"parameter "xs" at index 1: expected an integer between"#,
            "(integer)",
            r#"got "two""#,
        ],
    );
    let total = &catalog.overloads("total")[0];
    assert!(total.args[0].variadic);
    assert_eq!(total.args[0].type_name, "integer[]");
    assert!(catalog.overloads("count_any")[0].args[0].variadic);
    assert_eq!(
        call(
            &mut client,
            &catalog,
            "count_any",
            json!({"things": ["a", "b"]})
        ),
        json!(2)
    );
}

#[test]
fn overloads_are_chosen_by_argument_names_or_count_and_never_guessed() {
    let (_db, mut client, catalog) = setup(
        "CREATE FUNCTION blitz_api.area(r double precision) RETURNS double precision
             LANGUAGE sql AS $$ SELECT 3 * r * r $$;
         CREATE FUNCTION blitz_api.area(w double precision, h double precision) RETURNS double precision
             LANGUAGE sql AS $$ SELECT w * h $$;
         CREATE FUNCTION blitz_api.pick(a integer, b integer DEFAULT 0) RETURNS text
             LANGUAGE sql AS $$ SELECT 'int b' $$;
         CREATE FUNCTION blitz_api.pick(a integer, c text DEFAULT 'x') RETURNS text
             LANGUAGE sql AS $$ SELECT 'text c' $$;
         CREATE FUNCTION blitz_api.same(a integer) RETURNS text LANGUAGE sql AS $$ SELECT 'int' $$;
         CREATE FUNCTION blitz_api.same(a text, extra integer) RETURNS text LANGUAGE sql AS $$ SELECT 'text' $$;",
    );
    assert_eq!(catalog.overloads("area").len(), 2);
    assert_eq!(
        call(&mut client, &catalog, "area", json!({"r": 2})),
        json!(12)
    );
    assert_eq!(
        call(&mut client, &catalog, "area", json!({"w": 2, "h": 3.25})),
        json!(6.5)
    );
    assert_eq!(call(&mut client, &catalog, "area", json!([2])), json!(12));
    assert_eq!(
        call(&mut client, &catalog, "area", json!([2, 5])),
        json!(10)
    );
    assert_eq!(
        call(&mut client, &catalog, "pick", json!({"a": 1, "b": 2})),
        json!("int b")
    );
    assert_eq!(
        call(&mut client, &catalog, "pick", json!({"a": 1, "c": "y"})),
        json!("text c")
    );
    assert_eq!(
        call(&mut client, &catalog, "same", json!({"a": 1})),
        json!("int")
    );
    assert_eq!(
        call(&mut client, &catalog, "same", json!({"a": "t", "extra": 1})),
        json!("text")
    );

    // Both accept {"a"}, and one or two positional params: ambiguous, both named.
    for params in [json!({"a": 1}), json!([1]), json!([1, 2])] {
        assert_refused(
            &catalog,
            "pick",
            params,
            None,
            &[
                "ambiguous",
                "pick(a integer, b integer DEFAULT)",
                "pick(a integer, c text DEFAULT)",
            ],
        );
    }
    // None fits: the signatures are listed.
    assert_refused(
        &catalog,
        "area",
        json!({"r": 1, "h": 2}),
        None,
        &[
            "no overload of api.area accepts",
            "\"h\"",
            "area(r double precision)",
            "area(w double precision, h double precision)",
        ],
    );
    assert_refused(
        &catalog,
        "area",
        json!([1, 2, 3]),
        None,
        &["3 positional params"],
    );
    // A chosen overload still checks its types.
    assert_refused(
        &catalog,
        "same",
        json!({"a": "t"}),
        Some("a"),
        &[r#"parameter "a": expected an integer"#],
    );
}

#[test]
fn set_returning_functions_give_json_arrays() {
    let (_db, mut client, catalog) = setup(
        "CREATE TABLE public.items (id integer, label text);
         INSERT INTO public.items VALUES (1, 'one'), (2, 'two'), (3, NULL);
         CREATE TYPE blitz_api.pair AS (id integer, label text);
         CREATE FUNCTION blitz_api.numbers(n integer) RETURNS SETOF integer
             LANGUAGE sql AS $$ SELECT generate_series(1, n) $$;
         CREATE FUNCTION blitz_api.words() RETURNS SETOF text
             LANGUAGE sql AS $$ VALUES ('a'), (NULL), ('c') $$;
         CREATE FUNCTION blitz_api.all_items() RETURNS SETOF public.items
             LANGUAGE sql AS $$ SELECT * FROM public.items ORDER BY id $$;
         CREATE FUNCTION blitz_api.pairs() RETURNS SETOF blitz_api.pair
             LANGUAGE sql AS $$ SELECT 7, 'seven' $$;
         CREATE FUNCTION blitz_api.table_two(min_id integer) RETURNS TABLE(id integer, label text)
             LANGUAGE sql AS $$ SELECT id, label FROM public.items WHERE id >= min_id ORDER BY id $$;
         CREATE FUNCTION blitz_api.table_one() RETURNS TABLE(x integer)
             LANGUAGE sql AS $$ VALUES (1), (2) $$;
         CREATE FUNCTION blitz_api.table_r() RETURNS TABLE(r integer, q text)
             LANGUAGE sql AS $$ VALUES (1, 'q') $$;
         CREATE FUNCTION blitz_api.out_rows(OUT a integer, OUT b text) RETURNS SETOF record
             LANGUAGE sql AS $$ VALUES (1, 'x'), (2, 'y') $$;
         CREATE FUNCTION blitz_api.out_one(OUT x integer) RETURNS SETOF integer
             LANGUAGE sql AS $$ VALUES (5), (6) $$;
         CREATE FUNCTION blitz_api.anonymous() RETURNS SETOF record
             LANGUAGE sql AS $$ VALUES (1, 'x'::text) $$;",
    );
    let cases: &[(&str, Value, Value)] = &[
        ("numbers", json!({"n": 3}), json!([1, 2, 3])),
        ("numbers", json!({"n": 0}), json!([])),
        ("words", json!(null), json!(["a", null, "c"])),
        (
            "all_items",
            json!({}),
            json!([{"id": 1, "label": "one"}, {"id": 2, "label": "two"}, {"id": 3, "label": null}]),
        ),
        ("pairs", json!([]), json!([{"id": 7, "label": "seven"}])),
        (
            "table_two",
            json!({"min_id": 2}),
            json!([{"id": 2, "label": "two"}, {"id": 3, "label": null}]),
        ),
        ("table_two", json!({"min_id": 99}), json!([])),
        ("table_one", json!({}), json!([{"x": 1}, {"x": 2}])),
        ("table_r", json!({}), json!([{"r": 1, "q": "q"}])),
        (
            "out_rows",
            json!({}),
            json!([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]),
        ),
        ("out_one", json!({}), json!([5, 6])),
        (
            "anonymous",
            json!({}),
            json!([{"column1": 1, "column2": "x"}]),
        ),
    ];
    for (name, params, expected) in cases {
        let got = call(&mut client, &catalog, name, params.clone());
        assert_eq!(&got, expected, "{name}({params})");
        assert_eq!(
            catalog.overloads(name)[0].result,
            ResultShape::Set,
            "{name}"
        );
    }
}

#[test]
fn scalar_composite_void_and_null_results() {
    let (db, mut client, catalog) = setup(
        "CREATE TABLE public.log (msg text);
         CREATE TYPE blitz_api.pt AS (x integer, y integer);
         CREATE FUNCTION blitz_api.make_pt(x integer, y integer) RETURNS blitz_api.pt
             LANGUAGE sql AS $$ SELECT ROW(x, y)::blitz_api.pt $$;
         CREATE FUNCTION blitz_api.no_pt() RETURNS blitz_api.pt
             LANGUAGE sql AS $$ SELECT NULL::blitz_api.pt $$;
         CREATE FUNCTION blitz_api.stats(OUT n integer, OUT label text)
             LANGUAGE sql AS $$ SELECT 3, 'three' $$;
         CREATE FUNCTION blitz_api.bump(INOUT x integer, OUT doubled integer)
             LANGUAGE sql AS $$ SELECT x + 1, x * 2 $$;
         CREATE FUNCTION blitz_api.write_log(msg text) RETURNS void
             LANGUAGE sql AS $$ INSERT INTO public.log VALUES (msg) $$;
         CREATE FUNCTION blitz_api.nothing_at_all() RETURNS integer
             LANGUAGE sql AS $$ SELECT NULL::integer $$;
         CREATE FUNCTION blitz_api.doc() RETURNS jsonb
             LANGUAGE sql AS $$ SELECT '{\"k\": [1, {\"n\": null}]}'::jsonb $$;
         CREATE FUNCTION blitz_api.ints() RETURNS integer[]
             LANGUAGE sql AS $$ SELECT ARRAY[1, 2] $$;",
    );
    let shape = |name: &str| catalog.overloads(name)[0].result;
    assert_eq!(shape("make_pt"), ResultShape::Composite);
    assert_eq!(shape("stats"), ResultShape::Composite);
    assert_eq!(shape("bump"), ResultShape::Composite);
    assert_eq!(shape("write_log"), ResultShape::Void);
    assert_eq!(shape("nothing_at_all"), ResultShape::Scalar);
    assert_eq!(shape("ints"), ResultShape::Scalar);

    assert_eq!(
        call(&mut client, &catalog, "make_pt", json!({"x": 1, "y": 2})),
        json!({"x": 1, "y": 2})
    );
    assert_eq!(call(&mut client, &catalog, "no_pt", json!({})), Value::Null);
    assert_eq!(
        call(&mut client, &catalog, "stats", json!({})),
        json!({"n": 3, "label": "three"})
    );
    assert_eq!(
        call(&mut client, &catalog, "bump", json!({"x": 4})),
        json!({"x": 5, "doubled": 8})
    );
    assert_eq!(
        call(&mut client, &catalog, "nothing_at_all", json!({})),
        Value::Null
    );
    assert_eq!(
        call(&mut client, &catalog, "doc", json!({})),
        json!({"k": [1, {"n": null}]})
    );
    assert_eq!(
        call(&mut client, &catalog, "ints", json!({})),
        json!([1, 2])
    );

    // A void function runs exactly once and answers null.
    assert_eq!(
        call(&mut client, &catalog, "write_log", json!({"msg": "hi"})),
        Value::Null
    );
    assert_eq!(db.count_rows("public.log"), 1);
    assert_eq!(catalog.overloads("write_log")[0].return_type, "void");
    assert_eq!(
        catalog.overloads("bump")[0].args.len(),
        1,
        "OUT params are not inputs"
    );
}

#[test]
fn missing_unknown_and_ill_typed_params_are_refused_with_the_argument_named() {
    let (_db, _client, catalog) = setup(&format!(
        "{}
         CREATE FUNCTION blitz_api.transfer(aid integer, amount numeric, note text DEFAULT NULL)
             RETURNS void LANGUAGE sql AS $$ SELECT $$;",
        scalar_functions()
    ));
    let v = Some("v");
    // Missing, unknown, too many, too few.
    assert_refused(
        &catalog,
        "transfer",
        json!({"amount": 1}),
        Some("aid"),
        &[
            r#"missing required parameter "aid" (integer)"#,
            "transfer(aid integer, amount numeric, note text DEFAULT)",
        ],
    );
    assert_refused(
        &catalog,
        "transfer",
        json!({"aid": 1, "amount": 1, "memo": "x"}),
        Some("memo"),
        &[
            r#"unknown parameter "memo""#,
            r#"accepted parameters: "aid", "amount", "note""#,
        ],
    );
    assert_refused(
        &catalog,
        "transfer",
        json!([1, 2, "n", 4]),
        None,
        &["at most 3 params, got 4"],
    );
    assert_refused(
        &catalog,
        "transfer",
        json!([1]),
        Some("amount"),
        &[r#"missing required parameter "amount""#],
    );
    assert_refused(
        &catalog,
        "transfer",
        json!("aid=1"),
        None,
        &["params must be an object", r#"got "aid=1""#],
    );
    assert_refused(
        &catalog,
        "transfer",
        json!(7),
        None,
        &["params must be an object"],
    );
    // Ill-typed values, one per type family.
    assert_refused(
        &catalog,
        "transfer",
        json!({"aid": "abc", "amount": 1}),
        Some("aid"),
        &[
            r#"parameter "aid": expected an integer between -2147483648 and 2147483647 (integer), got "abc""#,
        ],
    );
    assert_refused(
        &catalog,
        "transfer",
        json!({"aid": 3000000000i64, "amount": 1}),
        Some("aid"),
        &["got 3000000000"],
    );
    assert_refused(
        &catalog,
        "transfer",
        json!({"aid": 1.5, "amount": 1}),
        Some("aid"),
        &["got 1.5"],
    );
    assert_refused(
        &catalog,
        "transfer",
        json!({"aid": 1, "amount": "12abc"}),
        Some("amount"),
        &[
            "expected a number or a numeric string",
            "(numeric)",
            r#"got "12abc""#,
        ],
    );
    assert_refused(
        &catalog,
        "transfer",
        json!({"aid": 1, "amount": true}),
        Some("amount"),
        &["got true"],
    );
    let cases: &[(&str, Value, &str)] = &[
        (
            "echo_int2",
            json!(40000),
            "between -32768 and 32767 (smallint), got 40000",
        ),
        (
            "echo_int8",
            json!("1"),
            "between -9223372036854775808 and 9223372036854775807 (bigint)",
        ),
        (
            "echo_int8",
            json!(18446744073709551615u64),
            "got 18446744073709551615",
        ),
        (
            "echo_bool",
            json!("yes"),
            r#"expected true or false (boolean), got "yes""#,
        ),
        (
            "echo_bool",
            json!(1),
            "expected true or false (boolean), got 1",
        ),
        ("echo_float4", json!(1e300), "within the range of real"),
        (
            "echo_float8",
            json!("1.5"),
            r#"(double precision), got "1.5""#,
        ),
        (
            "echo_text",
            json!(5),
            "expected a string without NUL characters (text), got 5",
        ),
        ("echo_text", json!("a\u{0}b"), "without NUL characters"),
        (
            "echo_varchar",
            json!(["x"]),
            r#"(character varying), got ["x"]"#,
        ),
        (
            "echo_uuid",
            json!("not-a-uuid"),
            r#"expected a UUID string"#,
        ),
        (
            "echo_date",
            json!("2024-13-01"),
            r#"expected a date string "YYYY-MM-DD" (date), got "2024-13-01""#,
        ),
        ("echo_date", json!("31/01/2024"), "(date)"),
        (
            "echo_timestamp",
            json!("2024-01-31T12:00:00Z"),
            "without offset (timestamp without time zone)",
        ),
        (
            "echo_timestamptz",
            json!("2024-01-31T12:00:00"),
            "with offset",
        ),
        (
            "echo_timestamptz",
            json!(1706702400),
            "(timestamp with time zone), got 1706702400",
        ),
        ("echo_citext", json!(false), "(citext)"),
        (
            "echo_int4_array",
            json!("{1,2}"),
            r#"expected a JSON array (integer[]), got "{1,2}""#,
        ),
        (
            "echo_int4_array",
            json!([1, [2]]),
            r#"parameter "v" at index 1: expected an integer"#,
        ),
        (
            "echo_date_array",
            json!(["2024-01-01", "soon"]),
            r#"at index 1: expected a date string "YYYY-MM-DD" (date), got "soon""#,
        ),
    ];
    for (name, value, part) in cases {
        assert_refused(
            &catalog,
            name,
            json!({ "v": value }),
            v,
            &[r#"parameter "v""#, part],
        );
    }
    // Long values are cut short in the message.
    let long = "x".repeat(500);
    let e = refused(&catalog, "echo_int4", json!({ "v": long }));
    assert!(
        e.message.len() < 250 && e.message.ends_with('…'),
        "{}",
        e.message
    );
    // An unknown function is not a params error: the caller answers -32601.
    assert!(catalog.prepare("no_such_function", &json!({})).is_none());
}

#[test]
fn sql_injection_in_values_names_and_method_is_inert() {
    let (db, mut client, catalog) = setup(
        "CREATE TABLE public.accounts (id integer);
         INSERT INTO public.accounts VALUES (1);
         CREATE FUNCTION blitz_api.echo_text(v text) RETURNS text LANGUAGE sql AS $$ SELECT v $$;
         CREATE FUNCTION blitz_api.echo_inet(v inet) RETURNS inet LANGUAGE sql AS $$ SELECT v $$;
         CREATE FUNCTION blitz_api.echo_json(v jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT v $$;",
    );
    let evil = "x'); DROP TABLE public.accounts; --";
    let quote_evil = "\"; DROP TABLE public.accounts; --";
    assert_eq!(
        call(&mut client, &catalog, "echo_text", json!({"v": evil})),
        json!(evil)
    );
    assert_eq!(
        call(&mut client, &catalog, "echo_text", json!([quote_evil])),
        json!(quote_evil)
    );
    assert_eq!(
        call(
            &mut client,
            &catalog,
            "echo_json",
            json!({"v": {evil: quote_evil}})
        ),
        json!({evil: quote_evil})
    );
    // Into a text cast: the type's input function rejects it, nothing runs.
    let call_inet = prepared(
        &catalog,
        "echo_inet",
        json!({"v": format!("1.1.1.1'::inet); {evil}")}),
    );
    assert!(!call_inet.sql.contains("DROP"), "{}", call_inet.sql);
    assert!(client
        .query(&call_inet.sql, &call_inet.param_refs())
        .is_err());
    // In the method name: only a map key, so not found.
    for name in [
        "echo_text\"(NULL); DROP TABLE public.accounts; --",
        "echo_text(NULL); DROP TABLE public.accounts; --",
        "blitz_api.echo_text",
        "ECHO_TEXT",
        "",
    ] {
        assert!(
            catalog.prepare(name, &json!({"v": "x"})).is_none(),
            "{name}"
        );
    }
    // In a param name: an unknown parameter.
    let e = refused(
        &catalog,
        "echo_text",
        json!({"v\" => NULL); DROP TABLE public.accounts; --": 1}),
    );
    assert!(e.message.contains("unknown parameter"), "{}", e.message);
    assert_eq!(
        db.count_rows("public.accounts"),
        1,
        "public.accounts is intact"
    );
}

#[test]
fn functions_and_arguments_with_odd_names_are_quoted() {
    let (_db, mut client, catalog) = setup(
        r#"CREATE TYPE blitz_api."Odd ""Type""" AS ENUM ('a b', 'C');
           CREATE FUNCTION blitz_api."Odd ""Name"" fn; --"("Arg One" integer, "x""y" text DEFAULT 'dflt',
                                                         "select" blitz_api."Odd ""Type""" DEFAULT 'C')
               RETURNS TABLE("Out Col" text, "from" integer)
               LANGUAGE sql AS $$ SELECT "x""y" || '/' || "select"::text, "Arg One" $$;"#,
    );
    let name = "Odd \"Name\" fn; --";
    assert_eq!(catalog.overloads(name).len(), 1);
    assert_eq!(
        call(
            &mut client,
            &catalog,
            name,
            json!({"Arg One": 4, "x\"y": "q", "select": "a b"})
        ),
        json!([{"Out Col": "q/a b", "from": 4}])
    );
    assert_eq!(
        call(&mut client, &catalog, name, json!([5])),
        json!([{"Out Col": "dflt/C", "from": 5}])
    );
    let sql = prepared(&catalog, name, json!({"Arg One": 1, "select": "C"})).sql;
    assert!(
        sql.contains(r#""blitz_api"."Odd ""Name"" fn; --"("Arg One" => $1::"pg_catalog"."int4", "select" => $2::"pg_catalog"."text"::"blitz_api"."Odd ""Type""")"#),
        "{sql}"
    );
    let methods = catalog.openrpc_methods();
    assert_eq!(methods[0]["name"], json!("api.Odd \"Name\" fn; --"));
    assert_eq!(
        methods[0]["params"][2]["schema"],
        json!({"type": "string", "enum": ["a b", "C"]})
    );
}

#[test]
fn openrpc_methods_describe_params_results_and_comments() {
    let (_db, _client, catalog) = setup(
        "CREATE FUNCTION blitz_api.add(a integer, b integer DEFAULT 1) RETURNS bigint
             LANGUAGE sql AS $$ SELECT a + b $$;
         COMMENT ON FUNCTION blitz_api.add(integer, integer) IS 'Adds two numbers.';
         CREATE FUNCTION blitz_api.search(q text, since timestamptz, tags text[] DEFAULT '{}', amount numeric DEFAULT 0)
             RETURNS TABLE(id uuid, score double precision, seen date)
             LANGUAGE sql AS $$ SELECT NULL::uuid, 0::float8, NULL::date WHERE false $$;
         CREATE FUNCTION blitz_api.ping() RETURNS void LANGUAGE sql AS $$ SELECT $$;
         CREATE FUNCTION blitz_api.area(r double precision) RETURNS double precision
             LANGUAGE sql AS $$ SELECT r $$;
         CREATE FUNCTION blitz_api.area(w double precision, h double precision) RETURNS double precision
             LANGUAGE sql AS $$ SELECT w * h $$;",
    );
    let methods = catalog.openrpc_methods();
    let names: Vec<&str> = methods
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api.add", "api.area", "api.ping", "api.search"]);
    assert_eq!(
        methods[0],
        json!({
            "name": "api.add",
            "summary": "blitz_api.add(a integer, b integer DEFAULT) returns bigint",
            "description": "Adds two numbers.",
            "params": [
                {"name": "a", "required": true, "x-postgres-type": "integer",
                 "schema": {"type": "integer", "minimum": -2147483648i64, "maximum": 2147483647}},
                {"name": "b", "required": false, "x-postgres-type": "integer",
                 "schema": {"type": "integer", "minimum": -2147483648i64, "maximum": 2147483647}},
            ],
            "result": {"name": "result", "schema": {
                "type": "integer", "minimum": i64::MIN, "maximum": i64::MAX}},
            "paramStructure": "either",
        })
    );
    let search = &methods[3];
    assert!(search.get("description").is_none());
    assert_eq!(
        search["params"],
        json!([
            {"name": "q", "required": true, "x-postgres-type": "text", "schema": {"type": "string"}},
            {"name": "since", "required": true, "x-postgres-type": "timestamp with time zone",
             "schema": {"type": "string", "format": "date-time"}},
            {"name": "tags", "required": false, "x-postgres-type": "text[]",
             "schema": {"type": "array", "items": {"type": "string"}}},
            {"name": "amount", "required": false, "x-postgres-type": "numeric",
             "schema": {"type": ["number", "string"]}},
        ])
    );
    assert_eq!(
        search["result"]["schema"],
        json!({"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "string", "format": "uuid"},
            "score": {"type": "number"},
            "seen": {"type": "string", "format": "date"},
        }}})
    );
    assert_eq!(methods[2]["result"]["schema"], json!({"type": "null"}));
    assert_eq!(methods[2]["params"], json!([]));
    // Overloads share one method: params merged, none required by all.
    let area = &methods[1];
    let params: Vec<(&str, bool)> = area["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["required"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(params, [("r", false), ("w", false), ("h", false)]);
    assert_eq!(area["result"]["schema"], json!({"type": "number"}));
    assert!(area["description"]
        .as_str()
        .unwrap()
        .contains("area(w double precision, h double precision)"));
}

#[test]
fn load_takes_only_plain_functions_of_the_configured_schema() {
    let (_db, mut client, catalog) = setup(
        "CREATE SCHEMA other;
         CREATE FUNCTION other.hidden() RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;
         CREATE FUNCTION public.also_hidden() RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;
         CREATE FUNCTION blitz_api.visible() RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;
         CREATE PROCEDURE blitz_api.a_procedure() LANGUAGE sql AS $$ SELECT 1 $$;
         CREATE AGGREGATE blitz_api.an_aggregate(integer) (SFUNC = int4pl, STYPE = integer);
         CREATE FUNCTION blitz_api.a_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;",
    );
    assert_eq!(catalog.schema(), "blitz_api");
    assert_eq!(catalog.len(), 1);
    assert!(!catalog.is_empty());
    let names: Vec<&str> = catalog.functions().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["visible"]);
    for hidden in [
        "hidden",
        "also_hidden",
        "a_procedure",
        "an_aggregate",
        "a_trigger",
    ] {
        assert!(catalog.prepare(hidden, &json!({})).is_none(), "{hidden}");
    }
    let f = &catalog.overloads("visible")[0];
    assert_eq!(
        (f.schema.as_str(), f.return_type.as_str()),
        ("blitz_api", "integer")
    );
    assert!(f.description.is_none());
    // Another schema name, and an empty or missing schema.
    let other = Catalog::load(&mut client, "other").unwrap();
    assert_eq!(
        other
            .functions()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        ["hidden"]
    );
    let missing = Catalog::load(&mut client, "no_such_schema").unwrap();
    assert!(missing.is_empty());
    assert_eq!(missing.len(), 0);
    assert!(missing.openrpc_methods().is_empty());
}
