//! What one event-loop thread measured ([`ThreadResult`]: counts by
//! outcome and error code, latency histograms, connection errors), and the
//! merge of every thread's into the run's total.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::progress::Shared;

/// Highest latency the histograms hold exactly (µs); longer ones are
/// recorded as this value.
pub(super) const MAX_LATENCY_US: u64 = 3_600_000_000;

/// What a thread measured.
pub(super) struct ThreadResult {
    pub(super) ok_hist: Histogram<u64>,
    pub(super) rejected_hist: Histogram<u64>,
    pub(super) lag_hist: Histogram<u64>,
    /// With `--series`: every success's interval and latency.
    pub(super) series: Vec<super::series::Sample>,
    pub(super) codes: BTreeMap<i64, u64>,
    pub(super) samples: BTreeMap<i64, String>,
    pub(super) sent: u64,
    pub(super) ok: u64,
    pub(super) ok_in_deadline: u64,
    pub(super) rejected: u64,
    pub(super) connection_errors: u64,
    pub(super) lost: u64,
    pub(super) last_reply: Option<Instant>,
    pub(super) last_send: Option<Instant>,
    pub(super) first_error: Option<String>,
    pub(super) login_refused: Option<String>,
}

impl ThreadResult {
    /// Nothing measured yet.
    pub(super) fn new() -> ThreadResult {
        let h = || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds");
        ThreadResult {
            ok_hist: h(),
            rejected_hist: h(),
            lag_hist: h(),
            series: Vec::new(),
            codes: BTreeMap::new(),
            samples: BTreeMap::new(),
            sent: 0,
            ok: 0,
            ok_in_deadline: 0,
            rejected: 0,
            connection_errors: 0,
            lost: 0,
            last_reply: None,
            last_send: None,
            first_error: None,
            login_refused: None,
        }
    }

    /// Counts a connection that could not be made or broke, and why.
    pub(super) fn connection_error(&mut self, shared: &Shared, what: String) {
        self.connection_errors += 1;
        shared.connection_errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.get_or_insert(what);
    }
}

/// The sum of every thread's measurements.
pub(super) fn merge(results: Vec<ThreadResult>) -> ThreadResult {
    let mut total = ThreadResult::new();
    for r in results {
        total.ok_hist.add(&r.ok_hist).expect("same bounds");
        total
            .rejected_hist
            .add(&r.rejected_hist)
            .expect("same bounds");
        total.lag_hist.add(&r.lag_hist).expect("same bounds");
        total.series.extend_from_slice(&r.series);
        for (c, n) in r.codes {
            *total.codes.entry(c).or_default() += n;
        }
        for (c, s) in r.samples {
            total.samples.entry(c).or_insert(s);
        }
        total.sent += r.sent;
        total.ok += r.ok;
        total.ok_in_deadline += r.ok_in_deadline;
        total.rejected += r.rejected;
        total.connection_errors += r.connection_errors;
        total.lost += r.lost;
        total.last_reply = total.last_reply.max(r.last_reply);
        total.last_send = total.last_send.max(r.last_send);
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    total
}

/// `d` in whole microseconds, within the histograms' bounds.
pub(super) fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_LATENCY_US)
}
