//! `conf/grafana-dashboard.json` against a real server: the dashboard is a
//! Grafana JSON model on the `${DS_PROMETHEUS}` data source variable, and
//! every metric name in every panel's PromQL (and in the template
//! variables' queries) names a family that a running server's `/metrics`
//! exposes, with the suffix Prometheus gives its type (`_total` for a
//! counter; `_bucket`, `_sum`, `_count` for a histogram; none for a gauge).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use serde_json::{json, Value};
use support::{free_port, result, wait_until, Rpc, Server, TestDb};

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

fn dashboard() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/grafana-dashboard.json");
    let text = std::fs::read_to_string(path).expect("conf/grafana-dashboard.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every PromQL expression: the panels' targets and the template queries.
fn expressions(dashboard: &Value) -> Vec<String> {
    let targets = panels(dashboard)
        .into_iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str());
    let variables = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .filter_map(|v| v["query"]["query"].as_str().or(v["query"].as_str()));
    targets
        .chain(variables.map(label_values_metric))
        .map(String::from)
        .collect()
}

/// The series selector of a template query `label_values(selector, label)`
/// (its second argument is a label, not a metric); other queries as they are.
fn label_values_metric(query: &str) -> &str {
    query
        .strip_prefix("label_values(")
        .and_then(|args| args.split_once(',').map(|(selector, _)| selector))
        .unwrap_or(query)
}

/// PromQL words that are not metric names.
const KEYWORDS: [&str; 11] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
];

/// `expr` without string literals, label matchers (`{…}`), range
/// selectors (`[…]`) and the label lists of `by (…)`, `without (…)`,
/// `on (…)` and `ignoring (…)`.
fn strip_labels(expr: &str) -> String {
    let mut out = String::new();
    let (mut in_string, mut nesting) = (false, 0usize);
    for c in expr.chars() {
        match c {
            _ if in_string => in_string = c != '"',
            '"' => in_string = true,
            '{' | '[' => nesting += 1,
            '}' | ']' => nesting = nesting.saturating_sub(1),
            _ if nesting > 0 => {}
            _ => out.push(c),
        }
    }
    for grouping in ["by", "without", "on", "ignoring"] {
        out = drop_label_lists(&out, grouping);
    }
    out
}

/// `text` with each word `grouping` and the parenthesised list after it removed.
fn drop_label_lists(text: &str, grouping: &str) -> String {
    let words: Vec<(usize, &str)> = identifiers(text);
    let mut out = String::new();
    let mut from = 0;
    for (at, word) in words {
        if word != grouping || at < from {
            continue;
        }
        let after = at + word.len();
        let rest = &text[after..];
        if let Some(open) = rest.find('(').filter(|&i| rest[..i].trim().is_empty()) {
            if let Some(close) = rest[open..].find(')') {
                out.push_str(&text[from..at]); // `sum by (l) (x)` becomes `sum (x)`
                from = after + open + close + 1;
            }
        }
    }
    out.push_str(&text[from..]);
    out
}

/// The identifiers of `text` (`[A-Za-z_:][A-Za-z0-9_:]*`) with their offsets.
fn identifiers(text: &str) -> Vec<(usize, &str)> {
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c.is_ascii_digit() || c == '.' || c == '$' {
            // a number (0.99, 1e3) or a variable: skip the whole token
            while chars.peek().is_some_and(|&(_, c)| is_part(c) || c == '.') {
                chars.next();
            }
        } else if is_start(c) {
            let mut end = at + c.len_utf8();
            while let Some(&(i, c)) = chars.peek().filter(|&&(_, c)| is_part(c)) {
                end = i + c.len_utf8();
                chars.next();
            }
            out.push((at, &text[at..end]));
        }
    }
    out
}

/// The metric names in one PromQL expression: identifiers that are no
/// function (followed by `(`), keyword or label.
fn metric_names(expr: &str) -> Vec<String> {
    let text = strip_labels(expr);
    identifiers(&text)
        .into_iter()
        .filter(|(at, word)| {
            let next = text[at + word.len()..].trim_start();
            !next.starts_with('(') && !KEYWORDS.contains(word)
        })
        .map(|(_, word)| word.to_string())
        .collect()
}

/// Whether a series `name` is one Prometheus stores for a family of the
/// exposition: a gauge by its name, a counter with `_total`, a histogram
/// with `_bucket`, `_sum` or `_count`.
fn exposed(exp: &Exposition, name: &str) -> bool {
    let family_type = |family: &str| exp.families.get(family).map(|f| f.family_type);
    let with_suffix = |suffix: &str, want: OpenMetricsType| {
        name.strip_suffix(suffix)
            .is_some_and(|family| family_type(family) == Some(want))
    };
    family_type(name) == Some(OpenMetricsType::Gauge)
        || with_suffix("_total", OpenMetricsType::Counter)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| with_suffix(s, OpenMetricsType::Histogram))
}

fn scrape(addr: &str) -> Exposition {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    openmetrics_parser::openmetrics::parse_openmetrics(body)
        .unwrap_or_else(|e| panic!("not valid OpenMetrics ({e:?}):\n{body}"))
}

#[test]
fn the_extractor_finds_metric_names_and_only_those() {
    let expr = r#"histogram_quantile(0.99, sum by (method, le) (rate(a_bucket{instance=~"$instance", le!="x"}[$__rate_interval])))"#;
    assert_eq!(metric_names(expr), ["a_bucket"]);
    let expr =
        "sum without (kind) (rate(b_total[5m])) / on (instance) group_left c + 2 * d offset 1h";
    assert_eq!(metric_names(expr), ["b_total", "c", "d"]);
    let query = label_values_metric("label_values(blitz_database_up, instance)");
    assert_eq!(metric_names(query), ["blitz_database_up"]);
}

#[test]
fn the_dashboard_reads_the_prometheus_data_source_variable() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let source = variables
        .iter()
        .find(|v| v["name"] == "DS_PROMETHEUS")
        .expect("a DS_PROMETHEUS variable");
    assert_eq!(
        (&source["type"], &source["query"]),
        (&json!("datasource"), &json!("prometheus"))
    );
    let panels = panels(&dashboard);
    assert!(panels.len() >= 5, "{} panels", panels.len());
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = &panel["title"];
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            assert!(
                target["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{title}"
            );
        }
    }
}

#[test]
fn every_metric_the_dashboard_queries_is_exposed_by_a_running_server() {
    let db = TestDb::new();
    db.execute(
        "CREATE SCHEMA blitz_api; \
         CREATE FUNCTION blitz_api.add(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b'",
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = Server::start(&db.url, &[("metrics.listen", metrics.as_str())]);
    wait_until("the metrics listener", || {
        TcpStream::connect(&metrics).is_ok()
    });
    // The per-method families appear with the first api. call.
    let mut rpc = Rpc::session(&server.addr);
    assert_eq!(result(&rpc.call("api.add", json!([1, 2]))), 3);
    let exp = scrape(&metrics);

    let dashboard = dashboard();
    let mut names: Vec<String> = expressions(&dashboard)
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    names.sort();
    names.dedup();
    let missing: Vec<&String> = names.iter().filter(|n| !exposed(&exp, n)).collect();
    assert!(missing.is_empty(), "not exposed by /metrics: {missing:?}");
    for operator_first in [
        "blitz_api_calls_total",
        "blitz_api_call_duration_seconds_bucket",
        "blitz_queue_depth",
        "blitz_pool_connections_in_use",
        "blitz_refusals_total",
    ] {
        assert!(
            names.iter().any(|n| n == operator_first),
            "{operator_first} not queried: {names:?}"
        );
    }
}
