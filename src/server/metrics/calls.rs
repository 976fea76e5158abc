//! The per-method series of `api.` calls: `blitz_api_calls_total{method,
//! outcome}` and the latency histogram `blitz_api_call_duration_seconds{method}`.
//!
//! Each thread that records a call keeps its own table (method name →
//! counts by outcome and histogram buckets), a [`PerThread`] value behind
//! a mutex that only that thread and the scraper take: the call path
//! shares no lock across workers. A scrape merges the tables ([`ApiCalls::prepare_scrape`]), and
//! the merged view is written by the collector registered in the registry.
//!
//! The label set is bounded by the catalogue: at each scrape, names the
//! loaded catalogue does not hold (or every name, before it is loaded) are
//! folded into `method="(unknown)"` and dropped from the tables, and
//! between two scrapes a table takes at most [`MAX_NAMES`] names, counting
//! further ones as unknown at once. The two families appear with the
//! first `api.` call (a family without samples trips strict parsers).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::labels::CallOutcome;
use super::latencies::Latencies;
use super::per_thread::PerThread;

/// The `method` label of calls of a name the catalogue does not hold.
pub const UNKNOWN_METHOD: &str = "(unknown)";

/// Names one thread's table takes between two scrapes.
pub const MAX_NAMES: usize = 256;

/// One method's counts: replies by outcome, and the latencies observed.
#[derive(Debug, Clone, Default, PartialEq)]
struct Series {
    outcomes: [u64; CallOutcome::ALL.len()],
    latencies: Latencies,
}

impl Series {
    fn record(&mut self, outcome: CallOutcome, took: Option<Duration>) {
        self.outcomes[outcome.index()] += 1;
        if let Some(took) = took {
            self.latencies.observe(took);
        }
    }

    fn add(&mut self, other: &Series) {
        self.outcomes
            .iter_mut()
            .zip(other.outcomes)
            .for_each(|(a, b)| *a += b);
        self.latencies.add(&other.latencies);
    }
}

/// One thread's series, by method name.
type Table = HashMap<String, Series>;

/// The per-method series of one server instance; see the module doc.
#[derive(Debug)]
pub struct ApiCalls {
    /// Every thread's table (a thread's is added on its first call).
    tables: PerThread<Table>,
    /// The merged view the collector writes, made by `prepare_scrape`.
    view: Mutex<BTreeMap<String, Series>>,
}

impl Default for ApiCalls {
    fn default() -> Self {
        ApiCalls::new()
    }
}

impl ApiCalls {
    /// No calls yet.
    pub fn new() -> ApiCalls {
        ApiCalls {
            tables: PerThread::default(),
            view: Mutex::default(),
        }
    }

    /// Counts one reply to a call of `method` with error `error` (`None`:
    /// a result), and observes its latency `took` when given. Takes only
    /// this thread's own table.
    pub fn record(&self, method: &str, error: Option<i64>, took: Option<Duration>) {
        let outcome = CallOutcome::of(error);
        self.tables.with_own(|table| {
            if let Some(series) = table.get_mut(method) {
                return series.record(outcome, took);
            }
            let name = if table.len() < MAX_NAMES {
                method
            } else {
                UNKNOWN_METHOD
            };
            table
                .entry(name.to_string())
                .or_default()
                .record(outcome, took);
        });
    }

    /// Merges every thread's table into the view the collector writes,
    /// first folding the names `known` refuses into [`UNKNOWN_METHOD`].
    pub fn prepare_scrape(&self, known: &dyn Fn(&str) -> bool) {
        let mut merged: BTreeMap<String, Series> = BTreeMap::new();
        self.tables.for_each(|table| {
            fold_unknown(table, known);
            for (name, series) in table.iter() {
                merged.entry(name.clone()).or_default().add(series);
            }
        });
        *self.view.lock() = merged;
    }

    /// The collector that writes the view into the exposition.
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(ApiCallsCollector(self.clone()))
    }
}

/// Moves the series of every name `known` refuses into [`UNKNOWN_METHOD`].
fn fold_unknown(table: &mut Table, known: &dyn Fn(&str) -> bool) {
    let strangers: Vec<String> = table
        .keys()
        .filter(|name| *name != UNKNOWN_METHOD && !known(name))
        .cloned()
        .collect();
    for name in strangers {
        if let Some(series) = table.remove(&name) {
            table
                .entry(UNKNOWN_METHOD.to_string())
                .or_default()
                .add(&series);
        }
    }
}

/// Writes the view of an [`ApiCalls`] at each encoding of the registry.
#[derive(Debug)]
struct ApiCallsCollector(Arc<ApiCalls>);

impl Collector for ApiCallsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let view = self.0.view.lock();
        if view.is_empty() {
            // A family without samples trips strict parsers: none until a call.
            return Ok(());
        }
        let mut calls = encoder.encode_descriptor(
            "api_calls",
            "API calls answered, by method (catalogue names; others as (unknown)) and outcome",
            None,
            MetricType::Counter,
        )?;
        for (method, series) in view.iter() {
            for outcome in CallOutcome::ALL {
                let labels = [("method", method.as_str()), ("outcome", outcome.label())];
                let count = series.outcomes[outcome.index()];
                calls
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }
        // Named with their unit but without a UNIT line: strict OpenMetrics
        // parsers (openmetrics-parser) refuse a unit on a histogram.
        let mut durations = encoder.encode_descriptor(
            "api_call_duration_seconds",
            "Time from reading an API call to handing over its reply, by method",
            None,
            MetricType::Histogram,
        )?;
        for (method, series) in view.iter() {
            let labels = [("method", method.as_str())];
            durations
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    series.latencies.sum,
                    series.latencies.count(),
                    &series.latencies.bounded_buckets(),
                    None,
                )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::latencies::LATENCY_BUCKETS;
    use super::*;

    fn merged(calls: &ApiCalls, known: &dyn Fn(&str) -> bool) -> BTreeMap<String, Series> {
        calls.prepare_scrape(known);
        calls.view.lock().clone()
    }

    #[test]
    fn threads_record_apart_and_a_scrape_merges_them() {
        let calls = Arc::new(ApiCalls::new());
        let on_thread = calls.clone();
        std::thread::spawn(move || {
            on_thread.record("api.add", None, Some(Duration::from_millis(3)));
            on_thread.record("api.add", Some(-32002), Some(Duration::from_secs(60)));
        })
        .join()
        .unwrap();
        calls.record("api.add", Some(-32001), None);
        assert_eq!(calls.tables.threads(), 2);
        let view = merged(&calls, &|name| name == "api.add");
        let add = &view["api.add"];
        let count = |o: CallOutcome| add.outcomes[o.index()];
        assert_eq!(count(CallOutcome::Ok), 1);
        assert_eq!(count(CallOutcome::Timeout), 1);
        assert_eq!(count(CallOutcome::Overloaded), 1);
        assert_eq!(add.latencies.count(), 2, "a refusal has no latency");
        assert_eq!(
            add.latencies.buckets[LATENCY_BUCKETS.len()],
            1,
            "60 s is above 30 s"
        );
        assert_eq!(add.latencies.buckets[5], 1, "3 ms is in the 5 ms bucket");
    }

    #[test]
    fn names_outside_the_catalogue_fold_into_one_label() {
        let calls = ApiCalls::new();
        calls.record("api.add", None, None);
        calls.record("api.nope", Some(-32601), None);
        calls.record("api.gone", None, None);
        let view = merged(&calls, &|name| name == "api.add");
        assert_eq!(
            view.keys().collect::<Vec<_>>(),
            vec![UNKNOWN_METHOD, "api.add"]
        );
        assert_eq!(view[UNKNOWN_METHOD].outcomes.iter().sum::<u64>(), 2);
        // Folded for good: the table is back to its catalogue names.
        let view = merged(&calls, &|_| true);
        assert_eq!(view[UNKNOWN_METHOD].outcomes.iter().sum::<u64>(), 2);
    }

    #[test]
    fn a_table_takes_a_bounded_number_of_names_between_scrapes() {
        let calls = ApiCalls::new();
        for i in 0..MAX_NAMES + 10 {
            calls.record(&format!("api.f{i}"), None, None);
        }
        let view = merged(&calls, &|_| true);
        assert_eq!(view.len(), MAX_NAMES + 1);
        assert_eq!(view[UNKNOWN_METHOD].outcomes[0], 10);
    }
}
