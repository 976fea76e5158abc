//! The concurrency limit: how many calls may hold a database connection at
//! once ([`Limiter`]), fixed (`db.active_limit = N`) or tuned while serving
//! (`"auto"`) by a pure, deterministic core ([`Tuner`]).
//!
//! # The tuner
//!
//! The knee of a database is where throughput stops rising with
//! concurrency; past it, calls only wait inside PostgreSQL (connection hold
//! time grows, throughput flat or falling). The tuner finds it by
//! measuring, once per window of [`WINDOW`]:
//!
//! - **hill-climbing on throughput** (Uber Cinnamon's rule): from the
//!   formula it tries one step up; a step is kept only if throughput rose
//!   by more than a window's noise ([`NOISE_MARGIN`]), else it is undone;
//!   a step down is kept while it costs less than that. A probe's
//!   throughput and the reference it is compared with are each the mean
//!   of [`PROBE_WINDOWS`] windows, the reference measured just before the
//!   probe, so slow drift of the workload does not pass for the effect of
//!   a step. Until the first step that does not pay, a step up doubles the
//!   limit (TCP's slow start: from the formula to the knee in a few
//!   probes); afterwards a step is an eighth of the limit ([`step_of`]),
//!   doubled for each further step kept in a row in the same direction (up
//!   to 8 ×), so a knee that moved far is followed in a few probes. At the
//!   knee the limit alternates knee, knee + step, knee, knee − step with a
//!   pause of [`PAUSE_WINDOWS`] after each undone step: bounded oscillation.
//! - **the hold-time gradient** (Netflix `Gradient2Limit`, `VegasLimit`):
//!   the window's mean hold time against its long-run minimum (the
//!   baseline). When the gradient passes [`BRAKE_GRADIENT`] and throughput
//!   fell by a fifth since the window before, the tuner skips its pause
//!   and steps down at once (the database slowed down: the knee moved).
//!   The baseline decays upward by [`BASELINE_DRIFT`] per window so a
//!   stale minimum does not stay forever (Envoy's minRTT drift), and it is
//!   re-measured every [`REPROBE_WINDOWS`] at half the limit for one
//!   window (Envoy's periodic minRTT probe), so it cannot ratchet up to the
//!   loaded hold time under sustained load either. The hill-climb does not
//!   depend on the baseline, only the brake does.
//! - **guards**: nothing moves while fewer than half the permits are in use
//!   (mean permits held, from the hold times by Little's law) or too few
//!   calls finished to judge; the floor is 1; the ceiling is the smaller of
//!   `db.pool_size` and the instance's share, applied at once when it drops.
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

/// How long one measurement window lasts.
pub const WINDOW: Duration = Duration::from_millis(250);
/// Windows to wait after an undone step before the next probe.
pub const PAUSE_WINDOWS: u32 = 3;
/// Gradient (mean hold ÷ baseline) past which a throughput fall steps down at once.
pub const BRAKE_GRADIENT: f64 = 3.0;
/// What a probe's throughput must gain for a step up to be kept, and
/// may lose at most for a step down to be kept (1 %): a step up is kept
/// only if it bought throughput beyond a window's noise, a step down
/// whenever it did not cost more than that. So the limit climbs as long as
/// permits buy anything (the top of a concave curve, not where returns
/// first diminish), and on a flat stretch, where more permits only add
/// waiting, it comes down, as fast as the noise lets it: where a probe's
/// noise is much wider than this margin, steps up and down on a flat
/// stretch are kept nearly as often, and the limit wanders between the
/// knee and the ceiling (throughput as at the knee, more connections
/// held). A stretch where throughput falls is left quickly.
pub const NOISE_MARGIN: f64 = 0.01;
/// The baseline's upward decay per window (×).
pub const BASELINE_DRIFT: f64 = 1.005;
/// Windows between two re-measurements of the baseline at half the limit.
pub const REPROBE_WINDOWS: u64 = 120;
/// Calls a window must finish to be judged.
pub const MIN_COMPLETIONS: u64 = 20;
/// Windows a limit is judged over: a probe's throughput, and the
/// reference it is compared with, are each the mean of this many windows
/// (one window's noise on a loaded, fsync-bound database is about the
/// size of one step's effect).
pub const PROBE_WINDOWS: usize = 2;

/// What the calls that finished in one window measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// How long the window lasted.
    pub span: Duration,
    /// Calls that gave their connection back.
    pub completions: u64,
    /// The sum of their connection hold times.
    pub hold_total: Duration,
}

impl Sample {
    /// Calls finished per second.
    pub fn throughput(&self) -> f64 {
        self.completions as f64 / self.span.as_secs_f64().max(1e-6)
    }

    /// Mean connection hold time (`None` without completions).
    pub fn mean_hold(&self) -> Option<Duration> {
        (self.completions > 0).then(|| self.hold_total / self.completions as u32)
    }

    /// Mean permits in use over the window (Little's law: hold time per second).
    pub fn mean_in_use(&self) -> f64 {
        self.hold_total.as_secs_f64() / self.span.as_secs_f64().max(1e-6)
    }
}

/// Which way a probe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// Where the tuner is between two windows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// At a limit it kept; probes `next` after `pause` more windows.
    Settled { pause: u32, next: Direction },
    /// Tried `limit` coming from `from`, whose windows gave `reference`.
    Probing {
        from: usize,
        reference: f64,
        direction: Direction,
    },
    /// Measuring the baseline at a reduced limit; back to `restore` next.
    Reprobe { restore: usize },
}

/// The tuning algorithm: state plus one window's [`Sample`] in, the new
/// limit out. Pure and deterministic (no clock, no randomness).
#[derive(Debug, Clone)]
pub struct Tuner {
    limit: usize,
    phase: Phase,
    /// Throughput of the last judged window, for the brake.
    last_throughput: Option<f64>,
    baseline: Option<Duration>,
    last_hold: Option<Duration>,
    windows: u64,
    /// Throughputs of the last judged windows at the limit in force
    /// (newest last, at most [`PROBE_WINDOWS`]).
    recent: Vec<f64>,
    /// Still in the first climb: steps up double the limit, until the
    /// first step that does not pay (TCP's slow start).
    climbing: bool,
    /// Steps kept in a row in the same direction: each doubles the next
    /// (up to 8 × [`step_of`]), so a knee that moved far is followed in a
    /// few probes.
    streak: u32,
}

/// The step from `limit`: an eighth of it, at least 1.
pub fn step_of(limit: usize) -> usize {
    (limit / 8).max(1)
}

impl Tuner {
    /// A tuner starting at `start` (the formula).
    pub fn new(start: usize) -> Tuner {
        Tuner {
            limit: start.max(1),
            phase: Phase::Settled {
                pause: 0,
                next: Direction::Up,
            },
            last_throughput: None,
            baseline: None,
            last_hold: None,
            windows: 0,
            recent: Vec::with_capacity(PROBE_WINDOWS),
            climbing: true,
            streak: 0,
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The long-run minimum of the windows' mean hold times.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline
    }

    /// The mean hold time of the last window with completions.
    pub fn last_hold(&self) -> Option<Duration> {
        self.last_hold
    }

    /// The limit to come back to: the one a probe or a baseline
    /// re-measurement started from, or the limit when settled (the higher
    /// of the two while a probe goes down).
    pub fn settled_limit(&self) -> usize {
        match self.phase {
            Phase::Probing { from, .. } => from.max(self.limit),
            Phase::Reprobe { restore } => restore,
            Phase::Settled { .. } => self.limit,
        }
    }

    /// Takes one window's sample, with the ceiling now; returns the limit.
    pub fn step(&mut self, sample: &Sample, ceiling: usize) -> usize {
        self.windows += 1;
        self.observe_hold(sample);
        let ceiling = ceiling.max(1);
        if self.limit > ceiling {
            self.move_to(ceiling);
            self.settle(Direction::Down, 0);
        }
        if !self.judgeable(sample) {
            self.abandon_probe();
        } else {
            self.decide(sample, ceiling);
            self.last_throughput = Some(sample.throughput());
        }
        self.move_to(self.limit.clamp(1, ceiling));
        self.limit
    }

    /// Enough calls finished, with at least half the permits in use.
    fn judgeable(&self, sample: &Sample) -> bool {
        let limit = match self.phase {
            Phase::Probing { from, .. } => from.min(self.limit),
            _ => self.limit,
        };
        sample.completions >= MIN_COMPLETIONS && sample.mean_in_use() * 2.0 >= limit as f64
    }

    fn observe_hold(&mut self, sample: &Sample) {
        let Some(hold) = sample.mean_hold() else {
            return;
        };
        self.last_hold = Some(hold);
        let drifted = self.baseline.map(|b| b.mul_f64(BASELINE_DRIFT));
        self.baseline = Some(drifted.map_or(hold, |b| b.min(hold)));
    }

    /// Low traffic: a probe in progress is undone, nothing else moves.
    fn abandon_probe(&mut self) {
        match self.phase {
            Phase::Probing { from, .. } | Phase::Reprobe { restore: from } => {
                self.move_to(from);
                self.settle(Direction::Up, PAUSE_WINDOWS);
            }
            Phase::Settled { .. } => {}
        }
        self.recent.clear();
        self.last_throughput = None;
    }

    fn settle(&mut self, next: Direction, pause: u32) {
        self.phase = Phase::Settled { pause, next };
    }

    /// Records a judged window's throughput at the limit in force; the
    /// mean of the last [`PROBE_WINDOWS`] of them.
    fn remember(&mut self, throughput: f64) -> f64 {
        if self.recent.len() == PROBE_WINDOWS {
            self.recent.remove(0);
        }
        self.recent.push(throughput);
        self.recent.iter().sum::<f64>() / self.recent.len() as f64
    }

    /// Moves the limit to `to`: what was measured at the old one is forgotten.
    fn move_to(&mut self, to: usize) {
        if to != self.limit {
            self.recent.clear();
        }
        self.limit = to;
    }

    fn decide(&mut self, sample: &Sample, ceiling: usize) {
        if let Phase::Reprobe { restore } = self.phase {
            self.move_to(restore);
            return self.settle(Direction::Up, 0);
        }
        let mean = self.remember(sample.throughput());
        let judged = self.recent.len() == PROBE_WINDOWS;
        match self.phase {
            Phase::Reprobe { .. } => unreachable!("handled above"),
            Phase::Probing { .. } if !judged => {} // its second window comes next
            Phase::Probing {
                from,
                reference,
                direction,
            } => self.judge_probe(from, reference, direction, mean, ceiling),
            Phase::Settled { .. }
                if self.windows.is_multiple_of(REPROBE_WINDOWS) && self.limit > 1 =>
            {
                self.phase = Phase::Reprobe {
                    restore: self.limit,
                };
                self.move_to(self.limit.div_ceil(2));
            }
            Phase::Settled { .. } if self.braking(sample) => {
                self.climbing = false;
                self.streak = 0;
                self.probe(Direction::Down, mean, ceiling)
            }
            Phase::Settled { pause, next } if pause > 0 => self.settle(next, pause - 1),
            Phase::Settled { .. } if !judged => {} // the reference needs another window
            Phase::Settled { next, .. } => self.probe(next, mean, ceiling),
        }
    }

    /// Hold time far above its baseline and throughput down a fifth since
    /// the window before: the database slowed, step down without a pause.
    fn braking(&self, sample: &Sample) -> bool {
        let (Some(hold), Some(baseline), Some(before)) =
            (sample.mean_hold(), self.baseline, self.last_throughput)
        else {
            return false;
        };
        let gradient = hold.as_secs_f64() / baseline.as_secs_f64().max(1e-9);
        gradient > BRAKE_GRADIENT && sample.throughput() < before * 0.8
    }

    /// Tries one step in `direction` from the limit, whose window gave
    /// `reference`; turns around at the floor and the ceiling.
    fn probe(&mut self, direction: Direction, reference: f64, ceiling: usize) {
        let direction = match direction {
            Direction::Up if self.limit >= ceiling => Direction::Down,
            Direction::Down if self.limit <= 1 => Direction::Up,
            d => d,
        };
        if matches!(self.phase, Phase::Probing { direction: d, .. } if d != direction) {
            self.streak = 0; // turned at the floor or the ceiling
        }
        if direction == Direction::Down {
            self.climbing = false;
        }
        let step = match (direction, self.climbing) {
            (Direction::Up, true) => self.limit,
            _ => step_of(self.limit) << self.streak.saturating_sub(1).min(3),
        };
        let to = match direction {
            Direction::Up => (self.limit + step).min(ceiling),
            Direction::Down => self.limit.saturating_sub(step).max(1),
        };
        if to == self.limit {
            return self.settle(Direction::Up, PAUSE_WINDOWS);
        }
        self.phase = Phase::Probing {
            from: self.limit,
            reference,
            direction,
        };
        self.move_to(to);
    }

    /// Keeps the step if it paid (and goes on the same way), else undoes it
    /// and pauses before probing the other way.
    fn judge_probe(
        &mut self,
        from: usize,
        reference: f64,
        direction: Direction,
        throughput: f64,
        ceiling: usize,
    ) {
        let change = throughput / reference.max(1e-9) - 1.0;
        let kept = match direction {
            Direction::Up => change >= NOISE_MARGIN,
            Direction::Down => change >= -NOISE_MARGIN,
        };
        if kept {
            self.streak += 1;
            return self.probe(direction, throughput, ceiling);
        }
        self.streak = 0;
        self.climbing = false;
        self.move_to(from);
        let other = match direction {
            Direction::Up => Direction::Down,
            Direction::Down => Direction::Up,
        };
        self.settle(other, PAUSE_WINDOWS);
    }
}

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

    /// Connections worth keeping open for the limit: the limit it comes
    /// back to after a probe or a baseline re-measurement (so those short
    /// dips do not close connections), within the share.
    pub fn keep_target(&self) -> usize {
        let settled = self.settled.load(Ordering::Acquire);
        settled
            .max(self.current.load(Ordering::Acquire))
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

    /// `sys.status`'s `active_limit`: `{"mode", "current", "min", "max",
    /// "in_use", "hold_ms", "baseline_hold_ms"}` (the hold times of the
    /// last window and their long-run minimum; `null` before any call).
    pub fn status(&self) -> Value {
        let (min, max) = self.range();
        let (hold, baseline) = self.hold_times();
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e5).round() / 100.0);
        json!({
            "mode": self.mode(),
            "current": self.current(),
            "min": min,
            "max": max,
            "in_use": self.in_use(),
            "hold_ms": ms(hold),
            "baseline_hold_ms": ms(baseline),
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
        let limit = match self.mode {
            ActiveLimit::Auto => tuner.step(sample, self.ceiling()),
            ActiveLimit::Fixed(_) => {
                tuner.observe_hold(sample);
                tuner.limit()
            }
        };
        let us = |d: Option<Duration>| d.map_or(0, |d| d.as_micros().max(1) as u64);
        self.last_hold_us
            .store(us(tuner.last_hold()), Ordering::Relaxed);
        self.baseline_us
            .store(us(tuner.baseline()), Ordering::Relaxed);
        let settled = match self.mode {
            ActiveLimit::Auto => tuner.settled_limit(),
            ActiveLimit::Fixed(_) => limit,
        };
        self.settled.store(settled, Ordering::Release);
        drop(tuner);
        let before = self.current.swap(limit, Ordering::AcqRel);
        if limit > before {
            self.wake_all();
        }
        self.log_move(limit);
    }

    /// One line when the limit has moved more than a step from the last
    /// one logged (throttled), never one per change.
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
