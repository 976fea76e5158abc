//! The tuning algorithm of `db.active_limit = "auto"`: one window's
//! [`Sample`] in, the new limit out. Pure and deterministic (no clock, no
//! randomness), so it is tested against simulated databases.
//!
//! It keeps a limit (the *settled* limit) and moves it only on evidence:
//!
//! - **Probes by interleaved windows.** A probe alternates windows at
//!   the settled limit A and at one step away B (A B A B …; a B above any
//!   limit in force before gets one more window first, not counted, while
//!   the pool opens its connections), and measures
//!   each B window's throughput against the mean of the A windows on
//!   either side (so a slow drift of the workload cancels out). The
//!   gains are averaged until their mean is more than [`EVIDENCE`]
//!   standard errors from zero, up to [`MAX_ROUNDS`] B windows: a step
//!   is kept only if it bought throughput beyond the noise (Uber
//!   Cinnamon's rule), undone if it cost some or if the evidence stays
//!   inconclusive (a flat stretch: the limit stays where it is).
//! - **The noise is measured, not assumed**: the spread of throughput
//!   between two windows at the settled limit (consecutive, or around one
//!   probe window), as a moving mean, so a quiet machine judges a probe in
//!   one or two rounds and a noisy one takes longer instead of wandering.
//!   An inconclusive probe's gains count at half weight in the next probe
//!   the same way from the same settled limit.
//! - **Steps.** Until the first step up that does not pay, a step up
//!   doubles the limit (TCP's slow start: from the formula to the knee in
//!   a few probes); then a step is a quarter of the limit ([`step_of`],
//!   at least 1), doubled once a second step in a row is kept the same
//!   way (so at most half the limit). A step's effect must be large
//!   against one window's noise to be seen at all, which an eighth of the
//!   limit on a flat top is not.
//! - **Pauses.** After a probe that moved nothing the tuner waits
//!   [`PAUSE_MIN`] windows, doubled after each further one up to
//!   [`PAUSE_MAX`] (8 s); a kept step resets it. Directions alternate.
//!   At the knee, the probes cost about their B windows' loss over
//!   the pause: well under 1 %.
//! - **The brake** (Netflix `Gradient2Limit`, `VegasLimit`): when two
//!   windows in a row at the settled limit have a mean hold time over
//!   [`BRAKE_GRADIENT`] × its long-run minimum (the baseline) and a
//!   throughput a fifth below the last window at that limit before them
//!   (or three times the measured noise, when that is wider),
//!   the settled limit steps down a step at once (the database slowed
//!   down: the knee moved), once per [`BRAKE_COOLDOWN`] and not before
//!   the noise has been measured; the probes take it from there, the
//!   first one back up.
//! - **The baseline** decays upward by [`BASELINE_DRIFT`] per window (a
//!   stale minimum does not stay forever, Envoy's minRTT drift) and is
//!   re-measured every [`REPROBE_WINDOWS`] at half the limit for one
//!   window (Envoy's periodic minRTT probe), so it cannot ratchet up to
//!   the loaded hold time under sustained load. Only the brake and the
//!   workers' "too late" check read it.
//! - **Guards**: nothing moves while fewer than half the permits are in
//!   use (mean permits held, by Little's law) or too few calls finished
//!   to judge (a probe in progress is undone); the floor is 1; the
//!   ceiling is applied at once when it drops.

use std::time::Duration;

/// How long one measurement window lasts.
pub const WINDOW: Duration = Duration::from_millis(250);
/// Standard errors a probe's mean gain must be from zero to decide.
pub const EVIDENCE: f64 = 2.0;
/// The most B windows one probe takes before it calls a stretch flat.
pub const MAX_ROUNDS: u32 = 8;
/// Windows to wait after a probe that moved nothing (the first time).
pub const PAUSE_MIN: u32 = 4;
/// The longest pause between probes, in windows.
pub const PAUSE_MAX: u32 = 32;
/// One window's relative throughput noise assumed before any is measured.
pub const NOISE_PRIOR: f64 = 0.05;
/// The least relative noise per window the tuner assumes (a probe's gain
/// must pass `EVIDENCE` × this, shrunk by its rounds, even on a quiet
/// machine).
pub const NOISE_FLOOR: f64 = 0.01;
/// The weight of a new pair of windows in the noise's moving mean.
const NOISE_WEIGHT: f64 = 1.0 / 8.0;
/// Pairs of windows the noise is measured from before the brake may act
/// (until then the noise is the prior, and the brake cannot tell a fall
/// from noise).
const BRAKE_AFTER_PAIRS: u32 = 8;
/// Gradient (mean hold ÷ baseline) past which a throughput fall steps down at once.
pub const BRAKE_GRADIENT: f64 = 3.0;
/// Windows after a brake before the next one (8 s): one step down at
/// once, then the probes judge whether fewer permits help (where other
/// load takes PostgreSQL's CPU, fewer connections only get a smaller
/// share of it).
pub const BRAKE_COOLDOWN: u64 = 32;
/// The baseline's upward decay per window (×).
pub const BASELINE_DRIFT: f64 = 1.005;
/// Windows between two re-measurements of the baseline at half the limit.
pub const REPROBE_WINDOWS: u64 = 120;
/// Calls a window must finish to be judged.
pub const MIN_COMPLETIONS: u64 = 20;

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

impl Direction {
    fn other(self) -> Direction {
        match self {
            Direction::Up => Direction::Down,
            Direction::Down => Direction::Up,
        }
    }
}

/// A probe in progress: windows alternate between `center` and `to`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Probe {
    center: usize,
    to: usize,
    direction: Direction,
    /// Throughput of the last window at `center` (the left neighbour of
    /// the next window at `to`).
    before: f64,
    /// The last window at `to`, waiting for its right neighbour.
    pending: Option<f64>,
    /// Sum and count of the gains measured so far (earlier probes' at
    /// half weight included).
    gain_sum: f64,
    rounds: f64,
    /// Rounds this probe measured itself.
    fresh: u32,
    /// Its first window at `to` is a warm-up, not counted: `to` is above
    /// any limit in force before, so the pool opens connections in it.
    warmup: bool,
}

/// What the last inconclusive probe each way from one settled limit
/// found: where it went, its gains' sum and count (a later probe to the
/// same limit counts them at half weight).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Evidence {
    center: usize,
    up: (usize, f64, f64),
    down: (usize, f64, f64),
}

impl Evidence {
    fn slot(&mut self, direction: Direction) -> &mut (usize, f64, f64) {
        match direction {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        }
    }

    /// The gains' sum and count kept for a probe from `center` to `to`
    /// (none when the settled limit moved since: all is forgotten).
    fn kept_for(&mut self, center: usize, direction: Direction, to: usize) -> (f64, f64) {
        if self.center != center {
            *self = Evidence {
                center,
                ..Evidence::default()
            };
        }
        match *self.slot(direction) {
            (kept, sum, rounds) if kept == to => (sum, rounds),
            _ => (0.0, 0.0),
        }
    }
}

/// Where the tuner is between two windows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// At the settled limit; probes `next` after `pause` more windows.
    Settled { pause: u32, next: Direction },
    /// Alternating windows at the settled limit and one step away.
    Probing(Probe),
    /// Measuring the baseline at a reduced limit; back to `restore` next.
    Reprobe { restore: usize },
}

/// What a probe's evidence says so far.
enum Verdict {
    Keep,
    Undo,
    Undecided,
}

/// The tuning algorithm; see the module doc.
#[derive(Debug, Clone)]
pub struct Tuner {
    limit: usize,
    phase: Phase,
    /// Throughput of the last judged window if it ran at the settled
    /// limit while settled (a noise pair's first half, a probe's
    /// reference, the brake's comparison).
    last_settled: Option<f64>,
    /// The moving mean of the squared relative difference of two
    /// consecutive windows at the settled limit (2 × one window's variance).
    noise_pairs: f64,
    /// How many pairs it has seen.
    noise_seen: u32,
    baseline: Option<Duration>,
    last_hold: Option<Duration>,
    windows: u64,
    /// Still in the first climb: steps up double the limit.
    climbing: bool,
    /// Steps kept in a row in the same direction: each doubles the next.
    streak: u32,
    /// Probes in a row that moved nothing: each doubles the next pause.
    idle_probes: u32,
    /// The window of the last baseline re-measurement.
    last_reprobe: u64,
    /// The window of the last brake (`None`: none yet).
    last_brake: Option<u64>,
    /// The throughput before a first slow window (the brake's reference
    /// while it waits for the second).
    dip: Option<f64>,
    /// Inconclusive probes' gains from the settled limit.
    evidence: Evidence,
    /// The highest limit in force so far.
    highest: usize,
}

/// The step from `limit` once the first climb is over: a quarter of it, at least 1.
pub fn step_of(limit: usize) -> usize {
    (limit / 4).max(1)
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
            last_settled: None,
            noise_pairs: 2.0 * NOISE_PRIOR * NOISE_PRIOR,
            noise_seen: 0,
            baseline: None,
            last_hold: None,
            windows: 0,
            climbing: true,
            streak: 0,
            idle_probes: 0,
            last_reprobe: 0,
            last_brake: None,
            dip: None,
            evidence: Evidence::default(),
            highest: start.max(1),
        }
    }

    /// The limit in force now (a probe's window included).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The limit the tuner keeps: the one a probe or a baseline
    /// re-measurement started from and comes back to, or the limit.
    pub fn settled_limit(&self) -> usize {
        match self.phase {
            Phase::Probing(probe) => probe.center,
            Phase::Reprobe { restore } => restore,
            Phase::Settled { .. } => self.limit,
        }
    }

    /// One window's relative throughput noise, as measured so far.
    pub fn noise(&self) -> f64 {
        (self.noise_pairs / 2.0).sqrt().max(NOISE_FLOOR)
    }

    /// [`Tuner::noise`] once any pair of windows measured it (else the
    /// prior is all there is: `None`).
    pub fn measured_noise(&self) -> Option<f64> {
        (self.noise_seen > 0).then(|| self.noise())
    }

    /// The long-run minimum of the windows' mean hold times.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline
    }

    /// The mean hold time of the last window with completions.
    pub fn last_hold(&self) -> Option<Duration> {
        self.last_hold
    }

    /// Takes one window's sample, with the ceiling now; returns the limit.
    pub fn step(&mut self, sample: &Sample, ceiling: usize) -> usize {
        self.windows += 1;
        self.observe_hold(sample);
        let ceiling = ceiling.max(1);
        if self.settled_limit() > ceiling || self.limit > ceiling {
            let to = self.settled_limit().min(ceiling);
            self.settle_at(to, Direction::Down, 0);
        }
        if !self.judgeable(sample) {
            self.abandon_probe();
        } else {
            self.decide(sample, ceiling);
        }
        self.limit = self.limit.clamp(1, ceiling);
        self.limit
    }

    /// Enough calls finished, with at least half the permits in use.
    fn judgeable(&self, sample: &Sample) -> bool {
        let limit = self.limit.min(self.settled_limit());
        sample.completions >= MIN_COMPLETIONS && sample.mean_in_use() * 2.0 >= limit as f64
    }

    /// Takes the window's mean hold time into the baseline (also in
    /// fixed mode, where nothing else runs).
    pub(super) fn observe_hold(&mut self, sample: &Sample) {
        let Some(hold) = sample.mean_hold() else {
            return;
        };
        self.last_hold = Some(hold);
        let drifted = self.baseline.map(|b| b.mul_f64(BASELINE_DRIFT));
        self.baseline = Some(drifted.map_or(hold, |b| b.min(hold)));
    }

    /// Low traffic: a probe in progress is undone, nothing else moves;
    /// the windows before it are no longer the ones before the next (no
    /// reference, no slow window waiting for a second).
    fn abandon_probe(&mut self) {
        if !matches!(self.phase, Phase::Settled { .. }) {
            self.settle_at(self.settled_limit(), Direction::Up, PAUSE_MIN);
        }
        self.last_settled = None;
        self.dip = None;
    }

    /// Settles at `limit`; the next probe goes `next` after `pause` windows.
    fn settle_at(&mut self, limit: usize, next: Direction, pause: u32) {
        if limit != self.limit {
            self.last_settled = None;
        }
        self.limit = limit;
        self.phase = Phase::Settled { pause, next };
    }

    fn decide(&mut self, sample: &Sample, ceiling: usize) {
        let phase = self.phase;
        match phase {
            Phase::Reprobe { restore } => self.settle_at(restore, Direction::Up, 0),
            _ if self.braking(sample) => self.brake(),
            Phase::Probing(probe) => self.continue_probe(probe, sample.throughput(), ceiling),
            Phase::Settled { pause, next } => self.settled_window(sample, pause, next, ceiling),
        }
    }

    /// A window at the settled limit: the noise, then the baseline's
    /// re-measurement, the pause, or a probe.
    fn settled_window(&mut self, sample: &Sample, pause: u32, next: Direction, ceiling: usize) {
        let throughput = sample.throughput();
        if let Some(before) = self.last_settled {
            self.observe_noise(before, throughput);
        }
        self.last_settled = Some(throughput);
        if self.windows - self.last_reprobe >= REPROBE_WINDOWS && self.limit > 1 {
            self.last_reprobe = self.windows;
            self.phase = Phase::Reprobe {
                restore: self.limit,
            };
            self.limit = self.limit.div_ceil(2);
            self.last_settled = None;
        } else if pause > 0 {
            self.phase = Phase::Settled {
                pause: pause - 1,
                next,
            };
        } else {
            self.start_probe(next, throughput, ceiling);
        }
    }

    /// Two windows at the settled limit, consecutive or around one probe
    /// window: their relative difference into the noise's moving mean,
    /// clipped at twice its spread so far (a step of the workload is not
    /// noise; a noisier machine still raises it by a sixth per window).
    fn observe_noise(&mut self, before: f64, now: f64) {
        let change = (now - before) / ((now + before) / 2.0).max(1e-9);
        let squared = (change * change).min(4.0 * self.noise_pairs);
        self.noise_pairs += (squared - self.noise_pairs) * NOISE_WEIGHT;
        self.noise_seen = self.noise_seen.saturating_add(1);
    }

    /// The database slowed down: the settled limit steps down one step at
    /// once, a probe in progress is dropped; the next probe goes back up
    /// (a brake on a flat stretch that bought nothing is undone).
    fn brake(&mut self) {
        let from = self.settled_limit();
        self.last_brake = Some(self.windows);
        self.climbing = false;
        self.streak = self.streak.min(1);
        self.idle_probes = 0;
        self.settle_at(from - step_of(from).min(from - 1), Direction::Up, 0);
    }

    /// Whether the database slowed down: a second window in a row at the
    /// settled limit (a probe's own windows are skipped: their drop is
    /// the probe's) whose hold time is far above its baseline and whose
    /// throughput is [`Tuner::brake_ratio`] of the last window at that
    /// limit before the first of them, or less. One noisy window is not
    /// enough.
    fn braking(&mut self, sample: &Sample) -> bool {
        let before = match self.phase {
            Phase::Settled { .. } => self.last_settled,
            Phase::Probing(probe) if probe.pending.is_some() => Some(probe.before),
            Phase::Probing(_) | Phase::Reprobe { .. } => return false,
        };
        let cooling = self.noise_seen < BRAKE_AFTER_PAIRS
            || self
                .last_brake
                .is_some_and(|at| self.windows - at < BRAKE_COOLDOWN);
        let slow = match (sample.mean_hold(), self.baseline, self.dip.or(before)) {
            (Some(hold), Some(baseline), Some(reference)) if !cooling => {
                let gradient = hold.as_secs_f64() / baseline.as_secs_f64().max(1e-9);
                gradient > BRAKE_GRADIENT && sample.throughput() < reference * self.brake_ratio()
            }
            _ => false,
        };
        if !slow {
            self.dip = None;
            return false;
        }
        if self.dip.is_none() {
            self.dip = before;
            return false;
        }
        self.dip = None;
        true
    }

    /// How far below its reference a slow window's throughput must be: a
    /// fifth below, or three times the noise when that is wider (on a
    /// machine whose windows jump by 15 %, a fall of a fifth is noise).
    fn brake_ratio(&self) -> f64 {
        (1.0 - (3.0 * self.noise()).max(0.2)).max(0.1)
    }

    /// The step a probe from the limit takes in `direction`.
    fn step_size(&self, direction: Direction) -> usize {
        match (direction, self.climbing) {
            (Direction::Up, true) => self.limit,
            _ => step_of(self.limit) << self.streak.saturating_sub(1).min(1),
        }
    }

    /// Tries one step in `direction` from the settled limit, whose last
    /// window gave `reference`; turns around at the floor and the ceiling
    /// (a turn ends the streak: the steps kept the other way do not double
    /// this one).
    fn start_probe(&mut self, direction: Direction, reference: f64, ceiling: usize) {
        let turned = match direction {
            Direction::Up if self.limit >= ceiling => Direction::Down,
            Direction::Down if self.limit <= 1 => Direction::Up,
            d => d,
        };
        if turned != direction {
            self.streak = 0;
        }
        let direction = turned;
        if direction == Direction::Down {
            self.climbing = false;
        }
        let step = self.step_size(direction);
        let to = match direction {
            Direction::Up => (self.limit + step).min(ceiling),
            Direction::Down => self.limit.saturating_sub(step).max(1),
        };
        if to == self.limit {
            return self.settle_at(self.limit, Direction::Up, PAUSE_MAX);
        }
        let (gain_sum, rounds) = self.evidence.kept_for(self.limit, direction, to);
        self.phase = Phase::Probing(Probe {
            center: self.limit,
            to,
            direction,
            before: reference,
            pending: None,
            gain_sum: gain_sum / 2.0,
            rounds: rounds / 2.0,
            fresh: 0,
            warmup: to > self.highest,
        });
        self.highest = self.highest.max(to);
        self.limit = to;
    }

    /// A window of a probe: at `to`, it waits for its right neighbour; at
    /// the center, it completes a round, and the evidence is weighed.
    fn continue_probe(&mut self, mut probe: Probe, throughput: f64, ceiling: usize) {
        if std::mem::take(&mut probe.warmup) {
            self.phase = Phase::Probing(probe);
            return; // one more window at `to`, this one counted
        }
        let Some(at_to) = probe.pending.take() else {
            probe.pending = Some(throughput);
            self.phase = Phase::Probing(probe);
            self.limit = probe.center;
            return;
        };
        self.observe_noise(probe.before, throughput);
        let reference = (probe.before + throughput) / 2.0;
        probe.gain_sum += at_to / reference.max(1e-9) - 1.0;
        probe.rounds += 1.0;
        probe.fresh += 1;
        probe.before = throughput;
        match self.verdict(&probe) {
            Verdict::Keep => self.keep(probe, ceiling),
            Verdict::Undo => self.undo(probe),
            Verdict::Undecided => {
                self.phase = Phase::Probing(probe);
                self.limit = probe.to;
            }
        }
    }

    /// The mean gain against its standard error (two rounds share a
    /// center window: about `noise × √(2 / rounds)`).
    fn verdict(&self, probe: &Probe) -> Verdict {
        let mean = probe.gain_sum / probe.rounds;
        let error = self.noise() * (2.0 / probe.rounds).sqrt();
        if mean > EVIDENCE * error {
            Verdict::Keep
        } else if mean < -EVIDENCE * error || probe.fresh >= MAX_ROUNDS {
            Verdict::Undo
        } else {
            Verdict::Undecided
        }
    }

    /// The step paid: it becomes the settled limit, and the next probe
    /// goes the same way after one window there (the new reference).
    fn keep(&mut self, probe: Probe, ceiling: usize) {
        self.streak += 1;
        self.idle_probes = 0;
        self.settle_at(probe.to.min(ceiling), probe.direction, 1);
    }

    /// The step did not pay: back to the center. A probe left
    /// inconclusive with a mean gain above zero is resumed, the same step,
    /// after the shortest pause, its evidence kept; an undone doubling of
    /// the first climb is followed at once by an ordinary step up (the
    /// knee may lie between); otherwise the other way next, after a pause
    /// that grows while probes move nothing.
    fn undo(&mut self, probe: Probe) {
        self.streak = 0;
        *self.evidence.slot(probe.direction) = (probe.to, probe.gain_sum, probe.rounds);
        if probe.fresh >= MAX_ROUNDS && probe.gain_sum > 0.0 {
            self.settle_at(probe.center, probe.direction, PAUSE_MIN);
        } else if probe.direction == Direction::Up && self.climbing {
            self.climbing = false;
            self.settle_at(probe.center, Direction::Up, 0);
        } else {
            let pause = (PAUSE_MIN << self.idle_probes.min(3)).min(PAUSE_MAX);
            self.idle_probes += 1;
            self.settle_at(probe.center, probe.direction.other(), pause);
        }
        self.last_settled = Some(probe.before);
    }
}
