//! The counters every event-loop thread updates while a run goes on
//! ([`Shared`]): the calls left to send under `--calls`, the connections
//! ready, and the running totals behind the progress line printed to
//! stderr once a second ([`spawn_progress`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::options::{Options, Stop};

/// Counters every thread updates, for the progress line and the stop rule.
pub(super) struct Shared {
    /// Calls left to hand out (`Stop::Calls`), else unused.
    tickets: AtomicU64,
    /// Whether the run stops after a number of calls (`tickets` counts).
    counted: bool,
    /// Successful replies so far.
    pub(super) ok: AtomicU64,
    /// Error replies so far.
    pub(super) rejected: AtomicU64,
    /// Connections that could not be made or broke so far.
    pub(super) connection_errors: AtomicU64,
    /// Sum of the successes' latencies so far, µs.
    pub(super) ok_latency_us: AtomicU64,
    /// Connections ready (connected and logged in).
    pub(super) ready: AtomicU64,
    /// Set once every thread is done: the progress line stops.
    pub(super) finished: AtomicBool,
    /// The start of the measured phase, set by whoever passes the barrier first.
    pub(super) t0: OnceLock<Instant>,
}

impl Shared {
    /// The counters of a run of `opts`, all zero.
    pub(super) fn new(opts: &Options) -> Shared {
        let (tickets, counted) = match opts.stop {
            Stop::Calls(n) => (n, true),
            Stop::Duration(_) => (0, false),
        };
        Shared {
            tickets: AtomicU64::new(tickets),
            counted,
            ok: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            connection_errors: AtomicU64::new(0),
            ok_latency_us: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            t0: OnceLock::new(),
        }
    }

    /// Takes the right to send one more call (always granted in duration mode).
    pub(super) fn take_ticket(&self) -> bool {
        !self.counted
            || self
                .tickets
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
    }

    /// Whether calls are left to send (always in duration mode).
    pub(super) fn tickets_left(&self) -> bool {
        !self.counted || self.tickets.load(Ordering::Acquire) > 0
    }
}

/// Prints one progress line a second on stderr, from `t0` until
/// `shared.finished` is set.
pub(super) fn spawn_progress(shared: Arc<Shared>, t0: Instant) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut ok0, mut rej0, mut lat0) = (0u64, 0u64, 0u64);
        let mut next = t0 + Duration::from_secs(1);
        loop {
            while Instant::now() < next {
                if shared.finished.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let ok = shared.ok.load(Ordering::Relaxed);
            let rej = shared.rejected.load(Ordering::Relaxed);
            let lat = shared.ok_latency_us.load(Ordering::Relaxed);
            let mean = if ok > ok0 {
                (lat - lat0) as f64 / (ok - ok0) as f64 / 1000.0
            } else {
                0.0
            };
            eprintln!(
                "bench: {:>4.0} s  ok {:>7}/s  rejected {:>7}/s  ok mean {:>8.2} ms  total ok {}  connection errors {}",
                (next - t0).as_secs_f64(),
                ok - ok0,
                rej - rej0,
                mean,
                ok,
                shared.connection_errors.load(Ordering::Relaxed)
            );
            (ok0, rej0, lat0) = (ok, rej, lat);
            next += Duration::from_secs(1);
        }
    })
}
