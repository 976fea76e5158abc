//! What the server counts: request counters, errors by code, the recent
//! completion rate (for `retry_after_ms` and deadline admission), and queue
//! wait / execution latency percentiles over the last minute.
//!
//! Everything here is cheap enough to update on every request: counters are
//! atomics, and the latency window is a per-second log-scale histogram under
//! one short lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::protocol;

/// Monotonic counters reported by `sys.status`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests admitted to the queue.
    pub accepted: AtomicU64,
    /// Requests that finished on a worker (any outcome).
    pub completed: AtomicU64,
    /// Requests refused with -32001.
    pub rejected_overload: AtomicU64,
    /// Requests answered -32002.
    pub deadline_exceeded: AtomicU64,
    /// Requests answered -32004.
    pub db_unavailable: AtomicU64,
    /// Transaction retries after 40001/40P01.
    pub retries: AtomicU64,
}

/// All statistics of one server instance.
#[derive(Debug)]
pub struct Stats {
    /// The counters.
    pub counters: Counters,
    errors_by_code: Mutex<BTreeMap<i64, u64>>,
    queue_wait: Mutex<Window>,
    execution: Mutex<Window>,
    rate: Mutex<RateMeter>,
    started: Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    /// Fresh statistics.
    pub fn new() -> Stats {
        let now = Instant::now();
        Stats {
            counters: Counters::default(),
            errors_by_code: Mutex::new(BTreeMap::new()),
            queue_wait: Mutex::new(Window::new(now)),
            execution: Mutex::new(Window::new(now)),
            rate: Mutex::new(RateMeter::new(now)),
            started: now,
        }
    }

    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request admitted to the queue.
    pub fn bump_accepted(&self) {
        Stats::bump(&self.counters.accepted);
    }

    /// Counts one error reply with `code` (and the counter it belongs to).
    pub fn count_error(&self, code: i64) {
        let counter = match code {
            protocol::code::OVERLOADED => Some(&self.counters.rejected_overload),
            protocol::code::DEADLINE_EXCEEDED => Some(&self.counters.deadline_exceeded),
            protocol::code::DB_UNAVAILABLE => Some(&self.counters.db_unavailable),
            _ => None,
        };
        if let Some(c) = counter {
            Stats::bump(c);
        }
        *self.errors_by_code.lock().entry(code).or_insert(0) += 1;
    }

    /// Records a request a worker finished: how long it queued and ran.
    pub fn record_completion(&self, queued: Duration, executed: Duration) {
        let now = Instant::now();
        Stats::bump(&self.counters.completed);
        self.queue_wait.lock().record(now, queued);
        self.execution.lock().record(now, executed);
        self.rate.lock().record(now, executed);
    }

    /// Completions per second over the last few seconds (0 when idle).
    pub fn completion_rate(&self) -> f64 {
        self.rate.lock().per_second(Instant::now())
    }

    /// Calls per second `workers` workers can complete, judged from how
    /// long recent calls ran (not from how many arrived, which says nothing
    /// about capacity after an idle spell); `None` until a few calls ran.
    pub fn capacity_per_second(&self, workers: usize) -> Option<f64> {
        self.rate.lock().capacity(Instant::now(), workers)
    }

    /// Seconds since the server started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Counters, errors by code and latency percentiles as JSON.
    pub fn to_json(&self) -> Value {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let errors: serde_json::Map<String, Value> = self
            .errors_by_code
            .lock()
            .iter()
            .map(|(code, n)| (code.to_string(), json!(n)))
            .collect();
        let now = Instant::now();
        json!({
            "counters": {
                "accepted": get(&c.accepted),
                "completed": get(&c.completed),
                "rejected_overload": get(&c.rejected_overload),
                "deadline_exceeded": get(&c.deadline_exceeded),
                "db_unavailable": get(&c.db_unavailable),
                "retries": get(&c.retries),
                "errors_by_code": errors,
            },
            "completion_rate_per_s": (self.completion_rate() * 10.0).round() / 10.0,
            "latency_ms_last_minute": {
                "queue_wait": self.queue_wait.lock().percentiles(now),
                "execution": self.execution.lock().percentiles(now),
            },
        })
    }
}

/// Lets a log line through at most once per interval (refusal bursts,
/// accept failures), so a storm of events logs one line, not thousands.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl LogThrottle {
    /// A throttle that opens once per `every`.
    pub const fn new(every: Duration) -> LogThrottle {
        LogThrottle {
            every,
            last: Mutex::new(None),
        }
    }

    /// The interval, for the log line to mention.
    pub fn every_s(&self) -> u64 {
        self.every.as_secs()
    }

    /// True (and the interval restarts) when the last line is old enough.
    pub fn ready(&self) -> bool {
        let mut last = self.last.lock();
        if last.is_some_and(|t| t.elapsed() < self.every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// Completions in the last `SLOTS` × 250 ms, for a smoothed rate.
#[derive(Debug)]
struct RateMeter {
    slots: [u64; RATE_SLOTS],
    busy: [Duration; RATE_SLOTS],
    current: u64,
    origin: Instant,
}

/// Completions needed in the window before [`RateMeter::capacity`] answers.
const MIN_CAPACITY_SAMPLES: u64 = 4;

const RATE_SLOTS: usize = 8;
const RATE_SLOT: Duration = Duration::from_millis(250);

impl RateMeter {
    fn new(origin: Instant) -> RateMeter {
        RateMeter {
            slots: [0; RATE_SLOTS],
            busy: [Duration::ZERO; RATE_SLOTS],
            current: 0,
            origin,
        }
    }

    fn slot_of(&self, now: Instant) -> u64 {
        (now.duration_since(self.origin).as_millis() / RATE_SLOT.as_millis()) as u64
    }

    fn advance(&mut self, now: Instant) {
        let slot = self.slot_of(now);
        let steps = slot.saturating_sub(self.current).min(RATE_SLOTS as u64);
        for i in 1..=steps {
            let index = ((self.current + i) % RATE_SLOTS as u64) as usize;
            self.slots[index] = 0;
            self.busy[index] = Duration::ZERO;
        }
        self.current = slot;
    }

    fn record(&mut self, now: Instant, executed: Duration) {
        self.advance(now);
        let index = (self.current % RATE_SLOTS as u64) as usize;
        self.slots[index] += 1;
        self.busy[index] += executed;
    }

    /// `workers` × completions per second of execution time in the window.
    fn capacity(&mut self, now: Instant, workers: usize) -> Option<f64> {
        self.advance(now);
        let count: u64 = self.slots.iter().sum();
        let busy: Duration = self.busy.iter().sum();
        let busy = busy.as_secs_f64().max(1e-6);
        (count >= MIN_CAPACITY_SAMPLES).then(|| workers as f64 * count as f64 / busy)
    }

    fn per_second(&mut self, now: Instant) -> f64 {
        self.advance(now);
        let total: u64 = self.slots.iter().sum();
        let span = RATE_SLOT.as_secs_f64() * (RATE_SLOTS as f64 - 0.5);
        total as f64 / span
    }
}

/// A one-minute sliding window of latency histograms, one per second.
#[derive(Debug)]
struct Window {
    seconds: Vec<(u64, Histogram)>,
    origin: Instant,
}

const WINDOW_SECONDS: u64 = 60;

impl Window {
    fn new(origin: Instant) -> Window {
        Window {
            seconds: Vec::new(),
            origin,
        }
    }

    fn record(&mut self, now: Instant, value: Duration) {
        let second = now.duration_since(self.origin).as_secs();
        self.seconds.retain(|(s, _)| s + WINDOW_SECONDS > second);
        match self.seconds.last_mut() {
            Some((s, h)) if *s == second => h.record(value),
            _ => {
                let mut h = Histogram::default();
                h.record(value);
                self.seconds.push((second, h));
            }
        }
    }

    fn percentiles(&self, now: Instant) -> Value {
        let second = now.duration_since(self.origin).as_secs();
        let mut merged = Histogram::default();
        for (_, h) in self
            .seconds
            .iter()
            .filter(|(s, _)| s + WINDOW_SECONDS > second)
        {
            merged.merge(h);
        }
        json!({
            "count": merged.count,
            "p50": merged.quantile_ms(0.50),
            "p99": merged.quantile_ms(0.99),
        })
    }
}

/// Log-scale buckets of microseconds, 8 per power of two (≤ 9 % error).
#[derive(Debug, Clone)]
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
}

const SUB_BUCKETS: u32 = 8;
const BUCKETS: usize = 40 * SUB_BUCKETS as usize;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; BUCKETS],
            count: 0,
        }
    }
}

impl Histogram {
    fn bucket_of(micros: u64) -> usize {
        if micros < SUB_BUCKETS as u64 {
            return micros as usize;
        }
        let exp = 63 - micros.leading_zeros();
        let shift = exp - SUB_BUCKETS.trailing_zeros();
        let sub = (micros >> shift) as u32 - SUB_BUCKETS;
        (((exp - 2) * SUB_BUCKETS + sub) as usize).min(BUCKETS - 1)
    }

    /// The upper bound of bucket `i`, in microseconds.
    fn upper_bound(i: usize) -> u64 {
        if i < SUB_BUCKETS as usize {
            return i as u64;
        }
        let exp = i as u32 / SUB_BUCKETS + 2;
        let sub = i as u64 % SUB_BUCKETS as u64 + SUB_BUCKETS as u64;
        ((sub + 1) << (exp - SUB_BUCKETS.trailing_zeros())) - 1
    }

    fn record(&mut self, value: Duration) {
        self.buckets[Histogram::bucket_of(value.as_micros() as u64)] += 1;
        self.count += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
    }

    fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some((Histogram::upper_bound(i) as f64 / 10.0).round() / 100.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        for micros in [
            0, 1, 7, 8, 9, 15, 16, 100, 1000, 12_345, 1_000_000, 60_000_000,
        ] {
            let b = Histogram::bucket_of(micros);
            assert!(Histogram::upper_bound(b) >= micros, "{micros}");
            assert!(
                Histogram::upper_bound(b) as f64 <= micros as f64 * 1.13 + 1.0,
                "{micros}"
            );
        }
    }

    #[test]
    fn quantiles_come_from_the_recorded_values() {
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((50.0..=55.0).contains(&p50), "{p50}");
        assert!((99.0..=108.0).contains(&p99), "{p99}");
    }

    #[test]
    fn a_throttle_opens_once_per_interval() {
        let t = LogThrottle::new(Duration::from_millis(50));
        assert!(t.ready());
        assert!(!t.ready());
        std::thread::sleep(Duration::from_millis(60));
        assert!(t.ready());
    }

    #[test]
    fn the_rate_follows_recent_completions() {
        let t0 = Instant::now();
        let mut r = RateMeter::new(t0);
        for i in 0..100 {
            r.record(t0 + Duration::from_millis(i * 10), Duration::from_millis(5));
        }
        let rate = r.per_second(t0 + Duration::from_millis(1000));
        assert!((40.0..=120.0).contains(&rate), "{rate}");
        assert_eq!(r.per_second(t0 + Duration::from_secs(10)), 0.0);
    }

    #[test]
    fn capacity_follows_execution_time_not_arrivals() {
        let t0 = Instant::now();
        let mut r = RateMeter::new(t0);
        assert_eq!(r.capacity(t0, 4), None);
        // Five 10 ms calls over a mostly idle second: 4 workers can do 400/s.
        for i in 0..5 {
            r.record(
                t0 + Duration::from_millis(i * 200),
                Duration::from_millis(10),
            );
        }
        let capacity = r.capacity(t0 + Duration::from_millis(1000), 4).unwrap();
        assert!((399.0..=401.0).contains(&capacity), "{capacity}");
    }
}
