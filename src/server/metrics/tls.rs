//! The TLS handshakes of the listeners: `blitz_tls_handshakes_total` by
//! outcome (`ok`; `failed`: rustls refused it, e.g. a plaintext client on a
//! TLS port or a client certificate not signed by the client CA;
//! `timeout`: not done within `server.tls_handshake_timeout_ms`), and
//! `blitz_tls_handshake_seconds`, the time from accept to a handshake done,
//! kept per recording thread (the event loops) and merged at a scrape.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::latencies::Latencies;
use super::per_thread::PerThread;

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// Done: the connection speaks TLS.
    Ok,
    /// rustls refused it (its alert was sent).
    Failed,
    /// Not done within `server.tls_handshake_timeout_ms`.
    Timeout,
}

impl HandshakeOutcome {
    /// Every outcome, in label order.
    pub const ALL: [HandshakeOutcome; 3] = [
        HandshakeOutcome::Ok,
        HandshakeOutcome::Failed,
        HandshakeOutcome::Timeout,
    ];

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeOutcome::Ok => "ok",
            HandshakeOutcome::Failed => "failed",
            HandshakeOutcome::Timeout => "timeout",
        }
    }
}

/// The TLS handshake counters and their duration histogram.
#[derive(Debug)]
pub struct TlsHandshakes {
    /// By [`HandshakeOutcome::ALL`].
    outcomes: Vec<Counter>,
    durations: Arc<PerThread<Latencies>>,
}

impl TlsHandshakes {
    /// Registers the counters (at zero) and the histogram in `registry`.
    pub fn register(registry: &mut Registry) -> TlsHandshakes {
        let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let outcomes = HandshakeOutcome::ALL
            .iter()
            .map(|o| family.get_or_create_owned(&[("outcome", o.label())]))
            .collect();
        registry.register(
            "tls_handshakes",
            "TLS handshakes on the listeners, by outcome (ok, failed, timeout)",
            family,
        );
        let durations = Arc::new(PerThread::default());
        registry.register_collector(Box::new(DurationCollector(durations.clone())));
        TlsHandshakes {
            outcomes,
            durations,
        }
    }

    /// Counts one handshake that ended with `outcome`. One atomic add.
    pub fn count(&self, outcome: HandshakeOutcome) {
        let i = HandshakeOutcome::ALL
            .iter()
            .position(|&o| o == outcome)
            .unwrap_or(0);
        self.outcomes[i].inc();
    }

    /// Counts a handshake done `took` after its accept. Takes only this
    /// thread's table.
    pub fn done(&self, took: Duration) {
        self.count(HandshakeOutcome::Ok);
        self.durations.with_own(|latencies| latencies.observe(took));
    }

    /// Handshakes that ended with `outcome` so far.
    pub fn counted(&self, outcome: HandshakeOutcome) -> u64 {
        let i = HandshakeOutcome::ALL
            .iter()
            .position(|&o| o == outcome)
            .unwrap_or(0);
        self.outcomes[i].get()
    }
}

/// Writes the merged `blitz_tls_handshake_seconds` at each encoding.
#[derive(Debug)]
struct DurationCollector(Arc<PerThread<Latencies>>);

impl Collector for DurationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut merged = Latencies::default();
        self.0.for_each(|latencies| merged.add(latencies));
        // No UNIT line, as for the other histograms (strict parsers refuse it).
        let mut family = encoder.encode_descriptor(
            "tls_handshake_seconds",
            "Time from accepting a TLS connection to its handshake done",
            None,
            MetricType::Histogram,
        )?;
        family.encode_histogram::<NoLabelSet>(
            merged.sum,
            merged.count(),
            &merged.bounded_buckets(),
            None,
        )
    }
}
