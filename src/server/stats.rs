//! What the server counts: request counters, errors by code, how fast the
//! queue drains (for `retry_after_ms` and deadline admission), and queue
//! wait / execution latency percentiles over the last minute (HdrHistogram).
//!
//! The counters are those of [`Metrics`] (the `/metrics` exposition):
//! `sys.status` reads them, so there is one counting mechanism. The
//! router's threads touch only atomics here, so a storm of refusals does
//! not make them wait for each other or for the workers: each counter is
//! one atomic, and each worker publishes its pace to atomics of its own.
//! What a worker records (latency windows, pace) goes to a slot of its
//! own thread, behind a lock only it and a reader of the statistics take;
//! the per-method series and the histograms of `/metrics` are kept per
//! thread too (see [`super::metrics::calls`] and
//! [`super::metrics::completions`]), so recording a call takes no lock
//! another worker takes. Readers merge the slots.
//!
//! That pace is measured as a worker's *cycle*: the time from taking one
//! job to taking the next while the queue was never empty in between. It
//! holds everything that slows the queue down (a slow or unreachable
//! database, a CPU starved by a storm of clients, writing replies), which
//! the execution time alone misses; that judges only until a worker has
//! been saturated.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::metrics::{MethodKind, Metrics, Refusal};
use crate::protocol::code;

/// A request a worker ran, as [`Stats::record_completion`] records it.
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    /// The method called.
    pub method: &'a str,
    /// The reply's error code; `None` for a result.
    pub error: Option<i64>,
    /// From arrival until a worker took it.
    pub queued: Duration,
    /// From then until its outcome was known.
    pub executed: Duration,
    /// From arrival until its reply was handed over.
    pub end_to_end: Duration,
}

/// What one worker records about its completions and cycles.
#[derive(Debug)]
struct Recent {
    queue_wait: Window,
    execution: Window,
    rate: RateMeter,
}

/// One recording thread's part of the statistics.
#[derive(Debug)]
struct Slot {
    recent: Mutex<Recent>,
    /// Jobs per second this worker completes (f64 bits; 0 = unknown), and
    /// when that was last measured (µs since `started`).
    rate_bits: AtomicU64,
    rate_at_us: AtomicU64,
}

/// Recording threads that get a slot of their own; more share the last.
const SLOTS: usize = 256;

/// Distinguishes the [`Stats`] of one process (tests make several).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's slot in each [`Stats`] it recorded into.
    static OWN_SLOTS: RefCell<Vec<(u64, Arc<Slot>)>> = const { RefCell::new(Vec::new()) };
}

/// All statistics of one server instance.
pub struct Stats {
    /// The counters, gauges and histograms, also exposed on `/metrics`:
    /// the counters of `sys.status` are read from them.
    pub metrics: Metrics,
    id: u64,
    /// The recording threads' slots, set once each, in the order taken.
    slots: Box<[OnceLock<Arc<Slot>>]>,
    /// Slots taken so far (may pass [`SLOTS`]: the extra share the last).
    taken: AtomicUsize,
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
        Stats {
            metrics: Metrics::new(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
            taken: AtomicUsize::new(0),
            started: Instant::now(),
        }
    }

    /// The calling thread's slot, taken on its first record.
    fn own_slot(&self) -> Arc<Slot> {
        OWN_SLOTS.with(|own| {
            let mut own = own.borrow_mut();
            if let Some((_, slot)) = own.iter().find(|(id, _)| *id == self.id) {
                return slot.clone();
            }
            let i = self.taken.fetch_add(1, Ordering::AcqRel).min(SLOTS - 1);
            let slot = self.slots[i].get_or_init(|| Arc::new(Slot::new(self.started)));
            own.push((self.id, slot.clone()));
            slot.clone()
        })
    }

    /// The slots taken so far.
    fn taken_slots(&self) -> impl Iterator<Item = &Slot> {
        let taken = self.taken.load(Ordering::Acquire).min(SLOTS);
        self.slots[..taken]
            .iter()
            .filter_map(|slot| slot.get().map(|s| &**s))
    }

    /// Counts one request admitted to the queue.
    pub fn bump_accepted(&self) {
        self.metrics.count_admitted();
    }

    /// Counts one reply to a request of `kind` (`error`: its code, `None`
    /// for a result). Lock-free: one atomic add.
    pub fn count_reply(&self, kind: MethodKind, error: Option<i64>) {
        self.metrics.count_reply(kind, error);
    }

    /// Counts one reply to `method` that no worker ran (refused before the
    /// queue, or expired in it) in the per-method series, if an `api.` call.
    /// Takes only this thread's own table.
    pub fn count_unrun_call(&self, method: &str, error: i64) {
        self.metrics.count_api_call(method, Some(error), None);
    }

    /// Counts one refusal before the queue. Lock-free: one atomic add.
    pub fn count_refusal(&self, reason: Refusal) {
        self.metrics.count_refusal(reason);
    }

    /// Records a request a worker finished: how long it queued, how long
    /// it ran, how long from arrival until its reply was handed over, and
    /// (for an `api.` call) its outcome in the per-method series.
    pub fn record_completion(&self, done: &Completion) {
        let Completion {
            queued, executed, ..
        } = *done;
        self.metrics
            .observe_completion(queued, executed, done.end_to_end);
        self.metrics
            .count_api_call(done.method, done.error, Some(done.end_to_end));
        let now = Instant::now();
        let slot = self.own_slot();
        let mut recent = slot.recent.lock();
        recent.queue_wait.record(now, queued);
        recent.execution.record(now, executed);
        recent.rate.record_completion(now, executed);
        self.publish_worker_rate(now, &slot, &mut recent.rate);
    }

    /// Records a worker's cycle: the time from taking one job to taking
    /// the next one, which was already waiting.
    pub fn record_cycle(&self, cycle: Duration) {
        let now = Instant::now();
        let slot = self.own_slot();
        let mut recent = slot.recent.lock();
        recent.rate.record_cycle(now, cycle);
        self.publish_worker_rate(now, &slot, &mut recent.rate);
    }

    fn publish_worker_rate(&self, now: Instant, slot: &Slot, meter: &mut RateMeter) {
        let rate = meter.worker_rate(now).unwrap_or(0.0);
        slot.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
        let at = now.duration_since(self.started).as_micros() as u64;
        slot.rate_at_us.store(at, Ordering::Relaxed);
    }

    /// Completions per second over the last few seconds (0 when idle).
    pub fn completion_rate(&self) -> f64 {
        let now = Instant::now();
        self.taken_slots()
            .map(|slot| slot.recent.lock().rate.per_second(now))
            .sum()
    }

    /// Jobs per second one busy worker takes off the queue, measured over
    /// the last two seconds (the mean over the workers that measured one);
    /// `None` when too few calls ran recently to judge. Lock-free: the
    /// router asks this for every request it admits.
    pub fn worker_rate(&self) -> Option<f64> {
        let now = self.started.elapsed();
        let (mut sum, mut workers) = (0.0, 0);
        for slot in self.taken_slots() {
            let at = Duration::from_micros(slot.rate_at_us.load(Ordering::Relaxed));
            let rate = f64::from_bits(slot.rate_bits.load(Ordering::Relaxed));
            if now.saturating_sub(at) <= WORKER_RATE_FRESH && rate > 0.0 {
                sum += rate;
                workers += 1;
            }
        }
        (workers > 0).then(|| sum / workers as f64)
    }

    /// Seconds since the server started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Counters, errors by code and latency percentiles as JSON. Each
    /// worker's lock is held only to add its two minute histograms.
    pub fn to_json(&self) -> Value {
        let m = &self.metrics;
        let now = Instant::now();
        let (mut queue_wait, mut execution) = (new_histogram(), new_histogram());
        let mut completion_rate = 0.0;
        for slot in self.taken_slots() {
            let mut recent = slot.recent.lock();
            let _ = queue_wait.add(recent.queue_wait.last_minute(now));
            let _ = execution.add(recent.execution.last_minute(now));
            completion_rate += recent.rate.per_second(now);
        }
        let (queue_wait, execution) = (percentiles(&queue_wait), percentiles(&execution));
        let errors: serde_json::Map<String, Value> = m
            .errors_by_code()
            .into_iter()
            .map(|(code, n)| (code, json!(n)))
            .collect();
        json!({
            "counters": {
                "accepted": m.admitted(),
                "completed": m.completed(),
                "rejected_overload": m.replies_with(code::OVERLOADED),
                "deadline_exceeded": m.replies_with(code::DEADLINE_EXCEEDED),
                "db_unavailable": m.replies_with(code::DB_UNAVAILABLE),
                "retries": m.retries(),
                "sessions_created": m.sessions_created(),
                "errors_by_code": errors,
            },
            "completion_rate_per_s": (completion_rate * 10.0).round() / 10.0,
            "latency_ms_last_minute": {
                "queue_wait": queue_wait,
                "execution": execution,
            },
        })
    }
}

impl Slot {
    fn new(origin: Instant) -> Slot {
        Slot {
            recent: Mutex::new(Recent {
                queue_wait: Window::new(origin),
                execution: Window::new(origin),
                rate: RateMeter::new(origin),
            }),
            rate_bits: AtomicU64::new(0),
            rate_at_us: AtomicU64::new(0),
        }
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

/// A one-minute sliding window of latency histograms, one per second,
/// and their sum, kept as seconds are recorded and expire (reading the
/// last minute is one copy, not a merge of sixty histograms).
#[derive(Debug)]
struct Window {
    seconds: Vec<(u64, Histogram)>,
    /// The sum of `seconds`.
    minute: Histogram,
    origin: Instant,
}

const WINDOW_SECONDS: u64 = 60;

/// Microseconds, 1 µs to 100 s, 2 significant digits (≤ 1 % error; about
/// 10 KiB per histogram, so the 60 of a window stay small).
type Histogram = hdrhistogram::Histogram<u32>;

fn new_histogram() -> Histogram {
    Histogram::new_with_bounds(1, 100_000_000, 2).expect("valid HdrHistogram bounds")
}

impl Window {
    fn new(origin: Instant) -> Window {
        Window {
            seconds: Vec::new(),
            minute: new_histogram(),
            origin,
        }
    }

    /// Drops the seconds older than a minute from the window and its sum.
    fn expire(&mut self, now: Instant) {
        let second = now.duration_since(self.origin).as_secs();
        let live = self
            .seconds
            .partition_point(|(s, _)| s + WINDOW_SECONDS <= second);
        let mut exact = true;
        for (_, h) in self.seconds.drain(..live) {
            exact &= self.minute.subtract(&h).is_ok();
        }
        if !exact {
            // A count saturated: sum the seconds left afresh.
            self.minute = new_histogram();
            for (_, h) in &self.seconds {
                let _ = self.minute.add(h);
            }
        }
    }

    fn record(&mut self, now: Instant, value: Duration) {
        let second = now.duration_since(self.origin).as_secs();
        self.expire(now);
        let micros = (value.as_micros() as u64).max(1);
        self.minute.saturating_record(micros);
        match self.seconds.last_mut() {
            Some((s, h)) if *s == second => h.saturating_record(micros),
            _ => {
                let mut h = new_histogram();
                h.saturating_record(micros);
                self.seconds.push((second, h));
            }
        }
    }

    /// The values recorded in the last minute.
    fn last_minute(&mut self, now: Instant) -> &Histogram {
        self.expire(now);
        &self.minute
    }
}

/// Count, median and 99th percentile (ms) of a histogram, as JSON.
fn percentiles(h: &Histogram) -> Value {
    let quantile_ms =
        |q: f64| (!h.is_empty()).then(|| (h.value_at_quantile(q) as f64 / 10.0).round() / 100.0);
    json!({
        "count": h.len(),
        "p50": quantile_ms(0.50),
        "p99": quantile_ms(0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_values() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        for ms in 1..=100 {
            w.record(t0, Duration::from_millis(ms));
        }
        let p = percentiles(w.last_minute(t0));
        assert_eq!(p["count"], 100);
        let (p50, p99) = (p["p50"].as_f64().unwrap(), p["p99"].as_f64().unwrap());
        assert!((50.0..=50.5).contains(&p50), "{p50}");
        assert!((99.0..=100.0).contains(&p99), "{p99}");
        let later = percentiles(w.last_minute(t0 + Duration::from_secs(WINDOW_SECONDS + 1)));
        assert_eq!(later, json!({"count": 0, "p50": null, "p99": null}));
    }

    #[test]
    fn the_minute_holds_what_the_last_sixty_seconds_recorded() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        for s in 0..90 {
            let at = t0 + Duration::from_secs(s);
            w.record(at, Duration::from_millis(1 + s));
            w.record(at, Duration::from_millis(1 + s));
        }
        let at = t0 + Duration::from_secs(89);
        let minute = w.last_minute(at);
        assert_eq!(minute.len(), 120, "seconds 30 to 89, two values each");
        assert!(minute.equivalent(minute.min(), 31_000), "{}", minute.min());
        let p50 = percentiles(minute)["p50"].as_f64().unwrap();
        assert!((60.0..=61.0).contains(&p50), "{p50}");
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
    fn each_worker_records_in_its_own_slot_and_readers_merge_them() {
        let stats = Arc::new(Stats::new());
        let completion = |ms| Completion {
            method: "api.add",
            error: None,
            queued: Duration::from_millis(1),
            executed: Duration::from_millis(ms),
            end_to_end: Duration::from_millis(ms + 1),
        };
        let worker = |ms: u64| {
            let stats = stats.clone();
            std::thread::spawn(move || {
                for _ in 0..MIN_RATE_SAMPLES {
                    stats.record_completion(&completion(ms));
                }
            })
        };
        // One worker at 10 ms a call (100/s), one at 20 ms (50/s).
        worker(10).join().unwrap();
        worker(20).join().unwrap();
        assert_eq!(stats.taken_slots().count(), 2);
        let rate = stats.worker_rate().expect("both measured a pace");
        assert!((74.0..=76.0).contains(&rate), "{rate}");
        let latency = stats.to_json()["latency_ms_last_minute"].clone();
        assert_eq!(latency["execution"]["count"], 2 * MIN_RATE_SAMPLES);
        assert_eq!(latency["queue_wait"]["count"], 2 * MIN_RATE_SAMPLES);
    }

    #[test]
    fn error_codes_are_counted_by_code() {
        let stats = Stats::new();
        stats.count_reply(MethodKind::Api, Some(code::OVERLOADED));
        stats.count_reply(MethodKind::Session, Some(code::OVERLOADED));
        stats.count_reply(MethodKind::Api, None);
        let counters = stats.to_json()["counters"].clone();
        assert_eq!(counters["errors_by_code"], json!({"-32001": 2}));
        assert_eq!(counters["rejected_overload"], 2);
    }
}
