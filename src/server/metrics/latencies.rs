//! [`Latencies`]: one duration histogram kept without a lock of its own
//! (its owner's table holds it), in the one set of [`LATENCY_BUCKETS`]
//! every blitz histogram uses, merged across threads at a scrape.

use std::time::Duration;

/// Latency buckets in seconds: 100 µs to 30 s, about three per decade.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Observations of one duration, by bucket of [`LATENCY_BUCKETS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latencies {
    /// Per bucket, then above the last.
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// The sum of the observations, in seconds.
    pub sum: f64,
}

impl Latencies {
    /// Counts one observation.
    pub fn observe(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket] += 1;
        self.sum += seconds;
    }

    /// Adds `other`'s observations to these.
    pub fn add(&mut self, other: &Latencies) {
        self.buckets
            .iter_mut()
            .zip(other.buckets)
            .for_each(|(a, b)| *a += b);
        self.sum += other.sum;
    }

    /// How many were observed.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The buckets as the encoder takes them: (upper bound, count in it).
    pub fn bounded_buckets(&self) -> Vec<(f64, u64)> {
        LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets)
            .collect()
    }
}
