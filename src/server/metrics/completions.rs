//! The latency histograms of the requests the workers finish:
//! `blitz_queue_wait_seconds`, `blitz_execution_seconds` and
//! `blitz_request_duration_seconds`.
//!
//! Each thread that records a completion keeps its own three histograms
//! behind a mutex only it and the scraper take (a prometheus-client
//! histogram locks inside, so one shared by every worker would be a lock
//! they all take per call); the collector registered in the registry merges
//! them when the exposition is written.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::latencies::Latencies;
use super::per_thread::PerThread;

type Table = [Latencies; 3];

/// The families, in the order of a [`Table`]: name and help.
const FAMILIES: [(&str, &str); 3] = [
    (
        "queue_wait_seconds",
        "Time requests waited in the queue before a worker took them",
    ),
    ("execution_seconds", "Time a worker spent on a request"),
    (
        "request_duration_seconds",
        "Time from reading a queued request to handing over its reply",
    ),
];

/// The completion histograms of one server instance; see the module doc.
#[derive(Debug)]
pub struct Completions {
    /// Every thread's table (a thread's is added on its first completion).
    tables: PerThread<Table>,
}

impl Default for Completions {
    fn default() -> Self {
        Completions::new()
    }
}

impl Completions {
    /// No completions yet.
    pub fn new() -> Completions {
        Completions {
            tables: PerThread::default(),
        }
    }

    /// Observes one completion: time queued, executing, end to end.
    /// Takes only this thread's own table.
    pub fn observe(&self, queued: Duration, executed: Duration, end_to_end: Duration) {
        self.tables.with_own(|table| {
            for (latencies, took) in table.iter_mut().zip([queued, executed, end_to_end]) {
                latencies.observe(took);
            }
        });
    }

    /// Every thread's tables added up.
    fn merged(&self) -> Table {
        let mut merged = Table::default();
        self.tables.for_each(|table| {
            for (sum, latencies) in merged.iter_mut().zip(table.iter()) {
                sum.add(latencies);
            }
        });
        merged
    }

    /// The collector that writes the merged histograms into the exposition.
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(CompletionsCollector(self.clone()))
    }
}

/// Writes the histograms of a [`Completions`] at each encoding.
#[derive(Debug)]
struct CompletionsCollector(Arc<Completions>);

impl Collector for CompletionsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let merged = self.0.merged();
        for ((name, help), latencies) in FAMILIES.iter().zip(merged.iter()) {
            // Named with their unit but without a UNIT line: strict
            // OpenMetrics parsers (openmetrics-parser) refuse a unit on a
            // histogram.
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            let count = latencies.count();
            family.encode_histogram::<NoLabelSet>(
                latencies.sum,
                count,
                &latencies.bounded_buckets(),
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

    #[test]
    fn threads_observe_apart_and_the_merge_adds_them_up() {
        let completions = Arc::new(Completions::new());
        let on_thread = completions.clone();
        let ms = Duration::from_millis;
        std::thread::spawn(move || on_thread.observe(ms(1), ms(3), ms(60_000)))
            .join()
            .unwrap();
        completions.observe(ms(1), ms(4), ms(5));
        assert_eq!(completions.tables.threads(), 2);
        let [queue_wait, execution, end_to_end] = completions.merged();
        assert_eq!(queue_wait.buckets[3], 2, "1 ms is in the 1 ms bucket");
        assert_eq!(execution.buckets[5], 2, "3 and 4 ms are in the 5 ms bucket");
        assert_eq!(end_to_end.buckets[LATENCY_BUCKETS.len()], 1, "above 30 s");
        assert!((end_to_end.sum - 60.005).abs() < 1e-9);
    }
}
