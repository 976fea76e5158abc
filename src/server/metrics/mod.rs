//! The instance's metrics in Prometheus form, and the HTTP listener on
//! `metrics.listen` that serves them with the health checks.
//!
//! [`Metrics`] is the one counting mechanism of the server: the counters
//! that `sys.status` reports are read from the same prometheus-client
//! counters that `GET /metrics` exposes (the official Rust client; its
//! OpenMetrics text encoder is what Prometheus scrapes, so nothing here
//! formats the exposition by hand). Every counter the router touches is
//! created at start and kept as a handle, so counting a refusal is one
//! atomic add, never a lock or a map lookup.
//!
//! - [`labels`]: the label values, and the one classification of a reply
//!   by its error code.
//! - [`gauges`]: the gauges, read from their sources at each scrape.
//! - [`calls`]: the per-method series of `api.` calls, kept per thread and
//!   merged at each scrape.
//! - [`completions`]: the latency histograms of finished requests, kept
//!   per thread and merged at each scrape.
//! - [`tls`]: the TLS handshakes by outcome, and their durations.
//! - [`targets`]: the calls per database target and the standbys' lag.
//! - [`listener`]: the HTTP listener (a mio event loop on one thread).

pub mod calls;
pub mod completions;
pub mod gauges;
pub mod labels;
pub mod latencies;
pub mod listener;
pub mod per_thread;
pub mod targets;
pub mod tls;

pub use gauges::Gauges;
pub use labels::{MethodKind, Refusal};
pub use listener::{spawn_listener, Endpoints, MetricsListener};

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::db::catalog::Catalog;
use calls::ApiCalls;
use completions::Completions;
use gauges::GaugeSet;
use labels::{reply_code_index, REPLY_CODES};
use tls::TlsHandshakes;

type Labels = [(&'static str, &'static str); 2];

/// Every metric of one server instance; see the module doc.
pub struct Metrics {
    registry: Registry,
    /// `[kind][outcome]`, created at start.
    requests: Vec<Vec<Counter>>,
    refusals: Vec<Counter>,
    admitted: Counter,
    completed: Counter,
    retries: Counter,
    sessions_created: Counter,
    gauges: GaugeSet,
    completions: Arc<Completions>,
    api_calls: Arc<ApiCalls>,
    tls: TlsHandshakes,
    /// The series per database target, handed over at each scrape.
    pub targets: Arc<targets::Targets>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// All metrics at zero, registered under the prefix `blitz_`.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("blitz");
        let requests_family = Family::<Labels, Counter>::default();
        let requests = MethodKind::ALL
            .iter()
            .map(|kind| {
                REPLY_CODES
                    .iter()
                    .map(|(outcome, _)| {
                        requests_family
                            .get_or_create_owned(&[("kind", kind.label()), ("outcome", *outcome)])
                    })
                    .collect()
            })
            .collect();
        registry.register(
            "requests",
            "Requests answered, by method kind and outcome (ok or the JSON-RPC error code)",
            requests_family,
        );
        let refusals_family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let refusals = Refusal::ALL
            .iter()
            .map(|r| refusals_family.get_or_create_owned(&[("reason", r.label())]))
            .collect();
        registry.register(
            "refusals",
            "Requests refused before a worker ran them, by reason",
            refusals_family,
        );
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let admitted = counter(&mut registry, "admitted", "Requests admitted to the queue");
        let completed = counter(
            &mut registry,
            "completed",
            "Requests a worker finished, whatever the outcome",
        );
        let retries = counter(
            &mut registry,
            "retries",
            "Transactions run again after 40001 or 40P01",
        );
        let sessions_created = counter(
            &mut registry,
            "sessions_created",
            "Sessions created by session.login",
        );
        let gauges = GaugeSet::default();
        gauges.register(&mut registry);
        let completions = Arc::new(Completions::new());
        registry.register_collector(completions.collector());
        let api_calls = Arc::new(ApiCalls::new());
        registry.register_collector(api_calls.collector());
        let tls = TlsHandshakes::register(&mut registry);
        let targets = Arc::new(targets::Targets::default());
        registry.register_collector(targets.collector());
        Metrics {
            registry,
            requests,
            refusals,
            admitted,
            completed,
            retries,
            sessions_created,
            gauges,
            completions,
            api_calls,
            tls,
            targets,
        }
    }

    /// The TLS handshake counters.
    pub fn tls(&self) -> &TlsHandshakes {
        &self.tls
    }

    /// Counts one reply to a request of `kind`: a result (`error` `None`)
    /// or an error with that code. One atomic add.
    pub fn count_reply(&self, kind: MethodKind, error: Option<i64>) {
        let k = MethodKind::ALL.iter().position(|&x| x == kind).unwrap_or(0);
        self.requests[k][reply_code_index(error)].inc();
    }

    /// Counts one refusal. One atomic add.
    pub fn count_refusal(&self, reason: Refusal) {
        let i = Refusal::ALL.iter().position(|&r| r == reason).unwrap_or(0);
        self.refusals[i].inc();
    }

    /// Counts one request admitted to the queue.
    pub fn count_admitted(&self) {
        self.admitted.inc();
    }

    /// Counts one transaction retry.
    pub fn count_retry(&self) {
        self.retries.inc();
    }

    /// Counts one session created.
    pub fn count_session_created(&self) {
        self.sessions_created.inc();
    }

    /// Records a request a worker finished: time queued, time executing,
    /// and time from arrival to the reply handed over.
    pub fn observe_completion(&self, queued: Duration, executed: Duration, end_to_end: Duration) {
        self.completed.inc();
        self.completions.observe(queued, executed, end_to_end);
    }

    /// Counts one reply to `method` in its per-method series when it is an
    /// `api.` call (`error`: its code, `None` for a result), observing
    /// `took` (arrival to reply) when given. Takes only this thread's table.
    pub fn count_api_call(&self, method: &str, error: Option<i64>, took: Option<Duration>) {
        if MethodKind::of(method) == MethodKind::Api {
            self.api_calls.record(method, error, took);
        }
    }

    /// Requests admitted to the queue so far.
    pub fn admitted(&self) -> u64 {
        self.admitted.get()
    }

    /// Requests finished on a worker so far.
    pub fn completed(&self) -> u64 {
        self.completed.get()
    }

    /// Transaction retries so far.
    pub fn retries(&self) -> u64 {
        self.retries.get()
    }

    /// Sessions created so far.
    pub fn sessions_created(&self) -> u64 {
        self.sessions_created.get()
    }

    /// Replies with error `code` so far, over every method kind.
    pub fn replies_with(&self, code: i64) -> u64 {
        let i = reply_code_index(Some(code));
        self.requests
            .iter()
            .map(|by_outcome| by_outcome[i].get())
            .sum()
    }

    /// Error replies by code (codes with none left out), over every kind.
    pub fn errors_by_code(&self) -> Vec<(String, u64)> {
        (1..REPLY_CODES.len())
            .filter_map(|i| {
                let n: u64 = self
                    .requests
                    .iter()
                    .map(|by_outcome| by_outcome[i].get())
                    .sum();
                (n > 0).then(|| (REPLY_CODES[i].0.to_string(), n))
            })
            .collect()
    }

    /// The OpenMetrics text exposition, with the gauges set to `gauges`
    /// and the per-method series labelled by the names of `catalog` (the
    /// others, and all before a catalogue is loaded, as `(unknown)`).
    pub fn render(&self, gauges: &Gauges, catalog: Option<&Catalog>) -> String {
        self.gauges.set(gauges);
        self.api_calls.prepare_scrape(&|method| {
            let name = method.strip_prefix("api.").unwrap_or(method);
            catalog.is_some_and(|c| !c.overloads(name).is_empty())
        });
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String does not fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::code;

    #[test]
    fn counters_render_under_prometheus_names_and_feed_the_status_counts() {
        let m = Metrics::new();
        m.count_reply(MethodKind::Api, None);
        m.count_reply(MethodKind::Api, Some(code::OVERLOADED));
        m.count_reply(MethodKind::Session, Some(code::OVERLOADED));
        m.count_reply(MethodKind::Other, Some(-1));
        m.count_refusal(Refusal::QueueFull);
        m.observe_completion(
            Duration::from_micros(50),
            Duration::from_millis(3),
            Duration::from_millis(4),
        );
        assert_eq!(m.replies_with(code::OVERLOADED), 2);
        assert_eq!(
            m.errors_by_code(),
            vec![("-32001".to_string(), 2), ("other".to_string(), 1)]
        );
        m.count_api_call("api.add", None, Some(Duration::from_millis(2)));
        m.count_api_call("sys.ping", None, None);
        m.tls().done(Duration::from_millis(3));
        m.tls().count(tls::HandshakeOutcome::Timeout);
        let text = m.render(
            &Gauges {
                queue_capacity: 10,
                ..Gauges::default()
            },
            None,
        );
        for line in [
            r#"blitz_requests_total{kind="api",outcome="ok"} 1"#,
            r#"blitz_requests_total{kind="session",outcome="-32001"} 1"#,
            r#"blitz_refusals_total{reason="queue_full"} 1"#,
            "blitz_queue_capacity 10",
            r#"blitz_execution_seconds_bucket{le="0.005"} 1"#,
            r#"blitz_queue_wait_seconds_bucket{le="0.0001"} 1"#,
            "blitz_request_duration_seconds_count 1",
            "blitz_completed_total 1",
            r#"blitz_api_calls_total{method="(unknown)",outcome="ok"} 1"#,
            r#"blitz_api_call_duration_seconds_bucket{le="0.0025",method="(unknown)"} 1"#,
            r#"blitz_tls_handshakes_total{outcome="ok"} 1"#,
            r#"blitz_tls_handshakes_total{outcome="failed"} 0"#,
            r#"blitz_tls_handshakes_total{outcome="timeout"} 1"#,
            r#"blitz_tls_handshake_seconds_bucket{le="0.005"} 1"#,
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
