//! The concurrency limit: how many calls may hold a database connection at
//! once ([`Limiter`]), fixed (`db.active_limit = N`) or tuned while serving
//! (`"auto"`) by a pure, deterministic core ([`Tuner`]).
//!
//! The tuner ([`Tuner`], in [`tuner`]) keeps PostgreSQL at its
//! knee, where throughput stops rising with concurrency: it moves its
//! limit only when interleaved probe windows show, beyond the noise it
//! measures, that a step buys throughput; its module doc has the rules.
//!
//! # The call path
//!
//! Taking a permit is one compare-and-swap on the count in use; only a
//! worker that finds the limit reached waits (on a condition variable).
//! Giving it back adds the hold time to the window's atomics; the thread
//! that gives back the first permit after a window's end runs the step
//! (the tuner's lock is taken only then, and skipped if busy).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde_json::{json, Value};

use crate::config::ActiveLimit;
use crate::logging::LogThrottle;

pub mod tuner;

pub use tuner::{step_of, Sample, Tuner, WINDOW};

/// The window being filled by the calls giving their permits back.
#[derive(Debug, Default)]
struct OpenWindow {
    /// Its start, µs since the limiter's origin.
    started_us: AtomicU64,
    completions: AtomicU64,
    hold_us: AtomicU64,
}

/// The concurrency limit on the call path; see the module doc.
#[derive(Debug)]
pub struct Limiter {
    mode: ActiveLimit,
    /// The limit the tuner set (or the fixed one).
    current: AtomicUsize,
    /// `db.pool_size`.
    pool_cap: usize,
    /// The instance's share of the connection budget.
    share: AtomicUsize,
    in_use: AtomicUsize,
    waiters: AtomicUsize,
    gate: Mutex<()>,
    freed: Condvar,
    window: OpenWindow,
    tuner: Mutex<Tuner>,
    /// Published after each window: mean hold and baseline, µs (0: unknown).
    last_hold_us: AtomicU64,
    baseline_us: AtomicU64,
    /// The tuner's measured noise per window, parts per million (0: none yet).
    noise_ppm: AtomicU64,
    /// The tuner's [`Tuner::settled_limit`], published after each window.
    settled: AtomicUsize,
    /// The limit last logged, for one line per move of more than a step.
    logged: AtomicUsize,
    move_log: LogThrottle,
    origin: Instant,
}

/// How often a move of the limit is logged at most.
const MOVE_LOG_INTERVAL: Duration = Duration::from_secs(5);

impl Limiter {
    /// A limiter in `mode`, starting at `start`, within `pool_cap`.
    pub fn new(mode: ActiveLimit, start: usize, pool_cap: usize) -> Arc<Limiter> {
        let start = start.clamp(1, pool_cap.max(1));
        Arc::new(Limiter {
            mode,
            current: AtomicUsize::new(start),
            pool_cap: pool_cap.max(1),
            share: AtomicUsize::new(usize::MAX),
            in_use: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            gate: Mutex::new(()),
            freed: Condvar::new(),
            window: OpenWindow::default(),
            tuner: Mutex::new(Tuner::new(start)),
            last_hold_us: AtomicU64::new(0),
            baseline_us: AtomicU64::new(0),
            noise_ppm: AtomicU64::new(0),
            settled: AtomicUsize::new(start),
            logged: AtomicUsize::new(start),
            move_log: LogThrottle::new(MOVE_LOG_INTERVAL),
            origin: Instant::now(),
        })
    }

    /// `"auto"` or `"fixed"`.
    pub fn mode(&self) -> &'static str {
        self.mode.mode()
    }

    /// The limit in force: the tuned (or fixed) one within the share.
    pub fn current(&self) -> usize {
        self.current
            .load(Ordering::Acquire)
            .min(self.share.load(Ordering::Acquire))
    }

    /// The limit the tuner keeps and comes back to after its probes and
    /// baseline re-measurements (the fixed limit when fixed), within the share.
    pub fn settled(&self) -> usize {
        self.settled
            .load(Ordering::Acquire)
            .min(self.share.load(Ordering::Acquire))
    }

    /// The range the limit moves in: 1 to the ceiling (pool and share);
    /// a fixed limit's range is itself, within the share.
    pub fn range(&self) -> (usize, usize) {
        match self.mode {
            ActiveLimit::Fixed(_) => (self.current(), self.current()),
            ActiveLimit::Auto => (1, self.ceiling()),
        }
    }

    /// The smaller of `db.pool_size` and the share.
    pub fn ceiling(&self) -> usize {
        self.pool_cap.min(self.share.load(Ordering::Acquire))
    }

    /// Connections worth keeping open for the limit: the settled limit
    /// (so probes and baseline re-measurements close none) and, in auto
    /// mode, one step above it, the room of the next probe up (a probe
    /// that had to open its connections would be judged by their
    /// connect and first statements), or the limit in force when higher;
    /// within the pool and the share.
    pub fn keep_target(&self) -> usize {
        let settled = self.settled.load(Ordering::Acquire);
        let room = match self.mode {
            ActiveLimit::Auto => (settled + step_of(settled)).min(self.pool_cap),
            ActiveLimit::Fixed(_) => settled,
        };
        room.max(self.current.load(Ordering::Acquire))
            .min(self.share.load(Ordering::Acquire))
    }

    /// Permits held now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// The mean connection hold time of the last window, and its long-run
    /// minimum (the tuner's baseline).
    pub fn hold_times(&self) -> (Option<Duration>, Option<Duration>) {
        let read = |a: &AtomicU64| match a.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        };
        (read(&self.last_hold_us), read(&self.baseline_us))
    }

    /// One window's relative throughput noise as the tuner measured it
    /// (0.05: 5 %); `None` in fixed mode and before it has measured any.
    pub fn noise(&self) -> Option<f64> {
        match self.noise_ppm.load(Ordering::Relaxed) {
            0 => None,
            ppm => Some(ppm as f64 / 1e6),
        }
    }

    /// `sys.status`'s `active_limit`: `{"mode", "current", "settled",
    /// "min", "max", "in_use", "hold_ms", "baseline_hold_ms", "noise_pct"}`
    /// (the hold times of the last window and their long-run minimum, the
    /// tuner's measured noise per window; `null` before any call, and the
    /// noise in fixed mode).
    pub fn status(&self) -> Value {
        let (min, max) = self.range();
        let (hold, baseline) = self.hold_times();
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e5).round() / 100.0);
        json!({
            "mode": self.mode(),
            "current": self.current(),
            "settled": self.settled(),
            "min": min,
            "max": max,
            "in_use": self.in_use(),
            "hold_ms": ms(hold),
            "baseline_hold_ms": ms(baseline),
            "noise_pct": self.noise().map(|n| (n * 1000.0).round() / 10.0),
        })
    }

    /// Whether a call with `remaining` time left would likely not finish:
    /// less time than the baseline hold time (a typical call's least).
    pub fn too_late(&self, remaining: Duration) -> bool {
        let baseline = self.baseline_us.load(Ordering::Relaxed);
        baseline > 0 && remaining < Duration::from_micros(baseline)
    }

    /// Records the instance's share of the connection budget: the tuner's
    /// ceiling at its next step, and the cap of [`Limiter::current`] at
    /// once. The [`Share`](super::Share) calls it each time it is set;
    /// its gate enforces the share on every borrow.
    pub fn set_share(&self, share: usize) {
        self.share.store(share, Ordering::Release);
    }

    /// Waits until fewer than the limit hold a permit, at most `timeout`;
    /// `None` when the time ran out.
    pub fn acquire(self: &Arc<Self>, timeout: Duration) -> Option<LimitPermit> {
        if !self.try_take() {
            self.wait_for_permit(Instant::now() + timeout)?;
        }
        Some(LimitPermit {
            limiter: self.clone(),
            since: Instant::now(),
        })
    }

    /// Takes a permit under the tuned (or fixed) limit. The share is not
    /// checked here: the share's own gate, right after this one, enforces
    /// it and is woken when it rises; this gate only learns the share at
    /// the next acquire, and a waiter here must not wait on a share that
    /// has since risen.
    fn try_take(&self) -> bool {
        let limit = self.current.load(Ordering::Acquire);
        self.in_use
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn wait_for_permit(&self, give_up: Instant) -> Option<()> {
        let mut gate = self.gate.lock();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let taken = loop {
            if self.try_take() {
                break true;
            }
            if self.freed.wait_until(&mut gate, give_up).timed_out() {
                break self.try_take();
            }
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        taken.then_some(())
    }

    fn wake_all(&self) {
        let _gate = self.gate.lock();
        self.freed.notify_all();
    }

    fn release(&self, held: Duration) {
        self.in_use.fetch_sub(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _gate = self.gate.lock();
            self.freed.notify_one();
        }
        self.window.completions.fetch_add(1, Ordering::Relaxed);
        let us = held.as_micros().max(1) as u64;
        self.window.hold_us.fetch_add(us, Ordering::Relaxed);
        self.close_window_if_due();
    }

    /// The thread that finds the window over claims it and runs the step.
    fn close_window_if_due(&self) {
        let now_us = self.origin.elapsed().as_micros() as u64;
        let started = self.window.started_us.load(Ordering::Acquire);
        let span_us = now_us.saturating_sub(started);
        if span_us < WINDOW.as_micros() as u64 {
            return;
        }
        let claimed = self.window.started_us.compare_exchange(
            started,
            now_us,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if claimed.is_err() {
            return; // another thread closes this window
        }
        let sample = Sample {
            span: Duration::from_micros(span_us),
            completions: self.window.completions.swap(0, Ordering::AcqRel),
            hold_total: Duration::from_micros(self.window.hold_us.swap(0, Ordering::AcqRel)),
        };
        self.run_step(&sample);
    }

    fn run_step(&self, sample: &Sample) {
        let Some(mut tuner) = self.tuner.try_lock() else {
            return;
        };
        let (limit, settled, noise) = match self.mode {
            ActiveLimit::Auto => {
                let limit = tuner.step(sample, self.ceiling());
                (limit, tuner.settled_limit(), tuner.measured_noise())
            }
            ActiveLimit::Fixed(_) => {
                tuner.observe_hold(sample);
                (tuner.limit(), tuner.limit(), None)
            }
        };
        let us = |d: Option<Duration>| d.map_or(0, |d| d.as_micros().max(1) as u64);
        self.last_hold_us
            .store(us(tuner.last_hold()), Ordering::Relaxed);
        self.baseline_us
            .store(us(tuner.baseline()), Ordering::Relaxed);
        drop(tuner);
        let ppm = noise.map_or(0, |n| ((n * 1e6).round() as u64).max(1));
        self.noise_ppm.store(ppm, Ordering::Relaxed);
        self.settled.store(settled, Ordering::Release);
        let before = self.current.swap(limit, Ordering::AcqRel);
        if limit > before {
            self.wake_all();
        }
        self.log_move(settled);
    }

    /// One line when the settled limit has moved more than a step from
    /// the last one logged (throttled), never one per change nor per probe.
    fn log_move(&self, limit: usize) {
        let logged = self.logged.load(Ordering::Relaxed);
        if limit.abs_diff(logged) <= step_of(logged) || !self.move_log.ready() {
            return;
        }
        self.logged.store(limit, Ordering::Relaxed);
        let (hold, baseline) = self.hold_times();
        log::info!(
            "db.active_limit auto: {logged} -> {limit} (ceiling {}, mean hold {:?}, baseline {:?})",
            self.ceiling(),
            hold.unwrap_or_default(),
            baseline.unwrap_or_default()
        );
    }
}

/// The right to hold one database connection under the limit; given back,
/// with its hold time recorded, when dropped.
#[derive(Debug)]
pub struct LimitPermit {
    limiter: Arc<Limiter>,
    since: Instant,
}

impl LimitPermit {
    /// Starts the hold time now (once the connection is in hand: the wait
    /// for the pool is not the database's service time).
    pub fn start_hold(&mut self) {
        self.since = Instant::now();
    }
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        self.limiter.release(self.since.elapsed());
    }
}

#[cfg(test)]
mod tests;
