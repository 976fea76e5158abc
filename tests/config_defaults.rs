//! The defaults are stated three times for three readers: in the code
//! (`blitz::Config::default_values()`, the one place they are defined), in
//! `conf/blitz.toml` (every key, commented, with its default) and in the
//! configuration table of the README (or of ARCHITECTURE.md, wherever the
//! table with the header `| key | default | meaning |` lives). These tests
//! prove that the three state the same keys and the same values, for every
//! key the code has: a key added to the code without the file and the
//! table, or a default changed in one place only, fails here.

use std::collections::BTreeMap;

/// `section.key` → its default, from the code.
fn code_defaults() -> BTreeMap<String, toml::Value> {
    blitz::Config::default_values()
        .into_iter()
        .map(|(key, literal)| {
            let value = toml::from_str::<toml::Table>(&format!("v = {literal}"))
                .unwrap_or_else(|e| panic!("{key}: {literal} is not a TOML value: {e}"))
                .remove("v")
                .unwrap();
            (key, value)
        })
        .collect()
}

fn repo_file(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("{}/{name}", env!("CARGO_MANIFEST_DIR"))).ok()
}

/// The keys one side has and the other lacks, for the failure message.
fn key_difference<A, B>(
    code: &BTreeMap<String, A>,
    doc: &BTreeMap<String, B>,
    doc_name: &str,
) -> Vec<String> {
    let missing = code
        .keys()
        .filter(|k| !doc.contains_key(*k))
        .map(|k| format!("{doc_name} lacks {k}"));
    let extra = doc
        .keys()
        .filter(|k| !code.contains_key(*k))
        .map(|k| format!("{doc_name} has {k}, which the code does not know"));
    missing.chain(extra).collect()
}

#[test]
fn conf_blitz_toml_states_every_key_with_the_codes_default() {
    let text = repo_file("conf/blitz.toml").expect("conf/blitz.toml");
    let table: toml::Table = text.parse().expect("conf/blitz.toml is TOML");
    let mut file = BTreeMap::new();
    for (section, keys) in table {
        let keys = keys
            .as_table()
            .unwrap_or_else(|| panic!("conf/blitz.toml: `{section}` is not a [section]"));
        for (key, value) in keys {
            file.insert(format!("{section}.{key}"), value.clone());
        }
    }
    let code = code_defaults();
    let differences = key_difference(&code, &file, "conf/blitz.toml");
    assert!(differences.is_empty(), "{differences:#?}");
    for (key, default) in &code {
        assert_eq!(
            &file[key], default,
            "conf/blitz.toml says {key} = {}, the code's default is {default}",
            file[key]
        );
    }
}

#[test]
fn every_key_in_conf_blitz_toml_has_a_comment_above_it() {
    let text = repo_file("conf/blitz.toml").expect("conf/blitz.toml");
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let is_key = !line.starts_with(['#', '[']) && line.contains(" = ");
        if is_key {
            assert!(
                i > 0 && lines[i - 1].starts_with('#'),
                "conf/blitz.toml line {}: `{line}` has no comment above it",
                i + 1
            );
        }
    }
}

/// The rows of every configuration table (`| key | default | meaning |`) in
/// the project's docs: `section.key` → the default cell as written.
fn doc_tables() -> Vec<(&'static str, BTreeMap<String, String>)> {
    let mut found = Vec::new();
    for name in ["README.md", "ARCHITECTURE.md"] {
        let Some(text) = repo_file(name) else {
            continue;
        };
        let mut rows = BTreeMap::new();
        let mut in_table = false;
        for line in text.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() >= 4 && cells[1] == "key" && cells[2] == "default" {
                in_table = true;
                continue;
            }
            if !line.starts_with('|') {
                in_table = false;
            }
            if in_table && cells.len() >= 4 && !cells[1].starts_with("---") {
                let key = cells[1].trim_matches('`').to_string();
                rows.insert(key, cells[2].to_string());
            }
        }
        if !rows.is_empty() {
            found.push((name, rows));
        }
    }
    found
}

/// How a doc table writes a default: strings in backticks (`empty` for
/// the empty string), numbers and booleans bare.
fn as_written_in_docs(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) if s.is_empty() => "empty".into(),
        toml::Value::String(s) => format!("`{s}`"),
        other => other.to_string(),
    }
}

#[test]
fn the_docs_configuration_table_states_every_key_with_the_codes_default() {
    let tables = doc_tables();
    assert!(
        !tables.is_empty(),
        "no configuration table (| key | default | meaning |) in README.md or ARCHITECTURE.md"
    );
    let code = code_defaults();
    for (doc, rows) in tables {
        let differences = key_difference(&code, &rows, doc);
        assert!(differences.is_empty(), "{differences:#?}");
        for (key, default) in &code {
            let expected = as_written_in_docs(default);
            let cell = rows[key].as_str();
            let same = cell == expected || cell.trim_matches('`') == expected.trim_matches('`');
            assert!(
                same,
                "{doc}'s table says {key} defaults to {cell}, the code's default is {expected}"
            );
        }
    }
}
