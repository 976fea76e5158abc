//! What the server counts: request counters, errors by code, how fast the
//! queue drains (for `retry_after_ms` and deadline admission), and queue
//! wait / execution latency percentiles over the last minute.
//!
//! The router's threads touch only atomics here, so a storm of refusals
//! does not queue 500 threads on one lock: counters and errors by code are
//! atomics, and the pace of the workers is published to an atomic by the
//! workers, which alone take the one short lock around the latency windows.
//!
//! That pace is measured as a worker's *cycle*: the time from taking one
//! job to taking the next while the queue was never empty in between. It
//! holds everything that slows the queue down (a slow or unreachable
//! database, a CPU starved by a storm of clients, writing replies), which
//! the execution time alone misses; that judges only until a worker has
//! been saturated.

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

/// The error codes of the contract, counted without a lock.
const KNOWN_CODES: [i64; 15] = [
    protocol::code::PARSE_ERROR,
    protocol::code::INVALID_REQUEST,
    protocol::code::METHOD_NOT_FOUND,
    protocol::code::INVALID_PARAMS,
    protocol::code::INTERNAL_ERROR,
    protocol::code::OVERLOADED,
    protocol::code::DEADLINE_EXCEEDED,
    protocol::code::SHUTTING_DOWN,
    protocol::code::DB_UNAVAILABLE,
    protocol::code::TOO_MANY_CONNECTIONS,
    protocol::code::UNAUTHENTICATED,
    protocol::code::PERMISSION_DENIED,
    protocol::code::TRANSACTION_CONFLICT,
    protocol::code::MESSAGE_TOO_LARGE,
    protocol::code::DATABASE_ERROR,
];

/// Error replies by code: an atomic per contract code, a map for others.
#[derive(Debug, Default)]
struct ErrorCounts {
    known: [AtomicU64; KNOWN_CODES.len()],
    other: Mutex<BTreeMap<i64, u64>>,
}

impl ErrorCounts {
    fn add(&self, code: i64) {
        match KNOWN_CODES.iter().position(|&c| c == code) {
            Some(i) => Stats::bump(&self.known[i]),
            None => *self.other.lock().entry(code).or_insert(0) += 1,
        }
    }

    fn to_json(&self) -> serde_json::Map<String, Value> {
        let mut all = self.other.lock().clone();
        for (code, n) in KNOWN_CODES.iter().zip(&self.known) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                all.insert(*code, n);
            }
        }
        all.iter()
            .map(|(code, n)| (code.to_string(), json!(n)))
            .collect()
    }
}

/// What the workers record about each completion.
#[derive(Debug)]
struct Recent {
    queue_wait: Window,
    execution: Window,
    rate: RateMeter,
}

/// All statistics of one server instance.
#[derive(Debug)]
pub struct Stats {
    /// The counters.
    pub counters: Counters,
    errors: ErrorCounts,
    recent: Mutex<Recent>,
    /// Jobs per second one worker completes (f64 bits; 0 = unknown), and
    /// when that was last measured (µs since `started`).
    worker_rate_bits: AtomicU64,
    worker_rate_at_us: AtomicU64,
    started: Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// How long a published worker rate is trusted without a new completion.
const WORKER_RATE_FRESH: Duration = Duration::from_secs(2);

impl Stats {
    /// Fresh statistics.
    pub fn new() -> Stats {
        let now = Instant::now();
        Stats {
            counters: Counters::default(),
            errors: ErrorCounts::default(),
            recent: Mutex::new(Recent {
                queue_wait: Window::new(now),
                execution: Window::new(now),
                rate: RateMeter::new(now),
            }),
            worker_rate_bits: AtomicU64::new(0),
            worker_rate_at_us: AtomicU64::new(0),
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
        self.errors.add(code);
    }

    /// Records a request a worker finished: how long it queued and ran.
    pub fn record_completion(&self, queued: Duration, executed: Duration) {
        let now = Instant::now();
        Stats::bump(&self.counters.completed);
        let mut recent = self.recent.lock();
        recent.queue_wait.record(now, queued);
        recent.execution.record(now, executed);
        recent.rate.record_completion(now, executed);
        self.publish_worker_rate(now, &mut recent.rate);
    }

    /// Records a worker's cycle: the time from taking one job to taking
    /// the next one, which was already waiting.
    pub fn record_cycle(&self, cycle: Duration) {
        let now = Instant::now();
        let mut recent = self.recent.lock();
        recent.rate.record_cycle(now, cycle);
        self.publish_worker_rate(now, &mut recent.rate);
    }

    fn publish_worker_rate(&self, now: Instant, meter: &mut RateMeter) {
        let rate = meter.worker_rate(now).unwrap_or(0.0);
        self.worker_rate_bits
            .store(rate.to_bits(), Ordering::Relaxed);
        let at = now.duration_since(self.started).as_micros() as u64;
        self.worker_rate_at_us.store(at, Ordering::Relaxed);
    }

    /// Completions per second over the last few seconds (0 when idle).
    pub fn completion_rate(&self) -> f64 {
        self.recent.lock().rate.per_second(Instant::now())
    }

    /// Jobs per second one busy worker takes off the queue, measured over
    /// the last two seconds; `None` when too few calls ran recently to
    /// judge. Lock-free: the router asks this for every request it admits.
    pub fn worker_rate(&self) -> Option<f64> {
        let at = Duration::from_micros(self.worker_rate_at_us.load(Ordering::Relaxed));
        if self.started.elapsed().saturating_sub(at) > WORKER_RATE_FRESH {
            return None;
        }
        let rate = f64::from_bits(self.worker_rate_bits.load(Ordering::Relaxed));
        (rate > 0.0).then_some(rate)
    }

    /// Seconds since the server started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Counters, errors by code and latency percentiles as JSON.
    pub fn to_json(&self) -> Value {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut recent = self.recent.lock();
        let queue_wait = recent.queue_wait.percentiles(now);
        let execution = recent.execution.percentiles(now);
        let completion_rate = recent.rate.per_second(now);
        drop(recent);
        json!({
            "counters": {
                "accepted": get(&c.accepted),
                "completed": get(&c.completed),
                "rejected_overload": get(&c.rejected_overload),
                "deadline_exceeded": get(&c.deadline_exceeded),
                "db_unavailable": get(&c.db_unavailable),
                "retries": get(&c.retries),
                "errors_by_code": self.errors.to_json(),
            },
            "completion_rate_per_s": (completion_rate * 10.0).round() / 10.0,
            "latency_ms_last_minute": {
                "queue_wait": queue_wait,
                "execution": execution,
            },
        })
    }
}

/// Completions and saturated worker cycles in the last `RATE_SLOTS` ×
/// 250 ms: how many and how long.
#[derive(Debug)]
struct RateMeter {
    slots: [RateSlot; RATE_SLOTS],
    current: u64,
    origin: Instant,
}

#[derive(Debug, Clone, Copy, Default)]
struct RateSlot {
    completed: u64,
    busy: Duration,
    cycles: u64,
    cycling: Duration,
}

/// Samples the window must hold before [`RateMeter::worker_rate`] answers.
const MIN_RATE_SAMPLES: u64 = 4;

const RATE_SLOTS: usize = 8;
const RATE_SLOT: Duration = Duration::from_millis(250);

impl RateMeter {
    fn new(origin: Instant) -> RateMeter {
        RateMeter {
            slots: [RateSlot::default(); RATE_SLOTS],
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
            self.slots[((self.current + i) % RATE_SLOTS as u64) as usize] = RateSlot::default();
        }
        self.current = self.current.max(slot);
    }

    fn slot(&mut self, now: Instant) -> &mut RateSlot {
        self.advance(now);
        &mut self.slots[(self.current % RATE_SLOTS as u64) as usize]
    }

    fn record_completion(&mut self, now: Instant, executed: Duration) {
        let slot = self.slot(now);
        slot.completed += 1;
        slot.busy += executed;
    }

    fn record_cycle(&mut self, now: Instant, cycle: Duration) {
        let slot = self.slot(now);
        slot.cycles += 1;
        slot.cycling += cycle;
    }

    /// Jobs per second one saturated worker gets through: from its recent
    /// cycles when there are enough, else from execution times alone
    /// (the queue has just started to fill).
    fn worker_rate(&mut self, now: Instant) -> Option<f64> {
        self.advance(now);
        let sum = |count: fn(&RateSlot) -> u64, time: fn(&RateSlot) -> Duration| {
            let n: u64 = self.slots.iter().map(count).sum();
            let t: Duration = self.slots.iter().map(time).sum();
            (n >= MIN_RATE_SAMPLES).then(|| n as f64 / t.as_secs_f64().max(1e-6))
        };
        sum(|s| s.cycles, |s| s.cycling).or_else(|| sum(|s| s.completed, |s| s.busy))
    }

    fn per_second(&mut self, now: Instant) -> f64 {
        self.advance(now);
        let total: u64 = self.slots.iter().map(|s| s.completed).sum();
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
    fn the_rate_follows_recent_completions() {
        let t0 = Instant::now();
        let mut r = RateMeter::new(t0);
        for i in 0..100 {
            let at = t0 + Duration::from_millis(i * 10);
            r.record_completion(at, Duration::from_millis(5));
        }
        let rate = r.per_second(t0 + Duration::from_millis(1000));
        assert!((40.0..=120.0).contains(&rate), "{rate}");
        assert_eq!(r.per_second(t0 + Duration::from_secs(10)), 0.0);
    }

    #[test]
    fn a_saturated_workers_pace_is_its_cycle_time() {
        let t0 = Instant::now();
        let mut r = RateMeter::new(t0);
        assert_eq!(r.worker_rate(t0), None);
        // Calls run 2 ms, but the worker takes the next only every 10 ms
        // (it waits for a CPU, writes replies): 100 jobs/s, not 500.
        for i in 0..50 {
            let at = t0 + Duration::from_millis(i * 10);
            r.record_completion(at, Duration::from_millis(2));
            r.record_cycle(at, Duration::from_millis(10));
        }
        let rate = r.worker_rate(t0 + Duration::from_millis(500)).unwrap();
        assert!((99.0..=101.0).contains(&rate), "{rate}");
        // Two seconds without completions: too old to judge.
        assert_eq!(r.worker_rate(t0 + Duration::from_secs(4)), None);
    }

    #[test]
    fn without_saturated_cycles_the_execution_time_judges() {
        let t0 = Instant::now();
        let mut r = RateMeter::new(t0);
        for i in 0..10 {
            let at = t0 + Duration::from_millis(i * 50);
            r.record_completion(at, Duration::from_millis(4));
        }
        let rate = r.worker_rate(t0 + Duration::from_millis(500)).unwrap();
        assert!((249.0..=251.0).contains(&rate), "{rate}");
    }

    #[test]
    fn error_codes_are_counted_by_code() {
        let stats = Stats::new();
        stats.count_error(protocol::code::OVERLOADED);
        stats.count_error(protocol::code::OVERLOADED);
        stats.count_error(-1);
        let errors = stats.to_json()["counters"]["errors_by_code"].clone();
        assert_eq!(errors, json!({"-32001": 2, "-1": 1}));
        assert_eq!(stats.counters.rejected_overload.load(Ordering::Relaxed), 2);
    }
}
