//! The tuner against a simulated database with a knee, and the limiter's
//! permits.

use super::tuner::*;
use super::*;

/// A database whose throughput rises linearly up to `knee` concurrent
/// calls (each holds its connection `base`), then falls 4 % per call past
/// it down to 30 %; hold time grows past the knee (Little's law).
#[derive(Debug, Clone, Copy)]
struct SimulatedDb {
    knee: usize,
    base: Duration,
    /// Calls the clients keep in flight (closed loop); `usize::MAX`: saturated.
    demand: usize,
    /// A deterministic noise on throughput (an LCG's state).
    noise: u64,
    /// The noise's full width (0.04: ±2 %).
    noise_width: f64,
    /// Throughput ∝ concurrency^exponent below the knee (1: linear).
    exponent: f64,
    /// The fall per call past the knee (0.04: 4 %), after the plateau.
    fall: f64,
    /// Calls past the knee over which throughput stays flat (rising 3 %
    /// in all) before it falls.
    plateau: usize,
    /// A measured curve instead: (calls in flight, calls/s), interpolated
    /// in log2 of the calls.
    table: Option<&'static [(f64, f64)]>,
    /// Other load on PostgreSQL's CPU, in busy backends: `n` calls get
    /// `n / (n + hogs)` of a CPU that also runs `slow` × as fast.
    hogs: f64,
    slow: f64,
}

/// `make bench`'s sweep of fixed limits on the 2-core development machine
/// (500 clients, TPC-B, fsync on): 4: 5,067, 8: 5,983, 16: 6,498, 32:
/// 5,842 calls/s; a flat top where a step of an eighth moves throughput by
/// 1–2 %, well inside one window's noise. Ends extrapolated.
const BENCH_SWEEP: &[(f64, f64)] = &[
    (1.0, 2_600.0),
    (2.0, 3_800.0),
    (4.0, 5_067.0),
    (8.0, 5_983.0),
    (16.0, 6_498.0),
    (32.0, 5_842.0),
    (64.0, 4_700.0),
];

impl SimulatedDb {
    fn new(knee: usize) -> SimulatedDb {
        SimulatedDb {
            knee,
            base: Duration::from_millis(2),
            demand: usize::MAX,
            noise: 12345,
            noise_width: 0.04,
            exponent: 1.0,
            fall: 0.04,
            plateau: 0,
            table: None,
            hogs: 0.0,
            slow: 1.0,
        }
    }

    /// The bench sweep's curve ([`BENCH_SWEEP`]), ±8 % noise per window.
    fn bench_sweep() -> SimulatedDb {
        SimulatedDb {
            table: Some(BENCH_SWEEP),
            ..SimulatedDb::measured(16)
        }
    }

    /// The curve measured on the 2-core development machine (one-call
    /// TPC-B, fsync on): +25–35 % per doubling up to the knee, −2.5 % per
    /// call past it, and ±8 % noise per window.
    fn measured(knee: usize) -> SimulatedDb {
        SimulatedDb {
            noise_width: 0.16,
            exponent: 0.35,
            fall: 0.025,
            ..SimulatedDb::new(knee)
        }
    }

    /// Throughput at `n` calls in flight, without noise.
    fn curve(&self, n: f64) -> f64 {
        if let Some(table) = self.table {
            return interpolate(table, n);
        }
        let knee = self.knee as f64;
        let plateau = self.plateau as f64;
        let peak = knee / self.base.as_secs_f64();
        if n <= knee {
            peak * (n / knee).powf(self.exponent)
        } else if n <= knee + plateau {
            peak * (1.0 + 0.03 * (n - knee) / plateau)
        } else {
            let top = peak * if plateau > 0.0 { 1.03 } else { 1.0 };
            top * (1.0 - self.fall * (n - knee - plateau)).max(0.3)
        }
    }

    fn jitter(&mut self) -> f64 {
        self.noise = self.noise.wrapping_mul(6364136223846793005).wrapping_add(1);
        let unit = (self.noise >> 33) as f64 / (1u64 << 31) as f64; // 0..1
        1.0 + (unit - 0.5) * self.noise_width
    }

    /// One window at `limit`.
    fn window(&mut self, limit: usize) -> Sample {
        let n = limit.min(self.demand).max(1) as f64;
        let share = n / (n + self.hogs) * self.slow;
        let throughput = self.curve(n) * share * self.jitter();
        let completions = (throughput * WINDOW.as_secs_f64()) as u64;
        let hold = n / throughput;
        Sample {
            span: WINDOW,
            completions,
            hold_total: Duration::from_secs_f64(hold * completions as f64),
        }
    }
}

/// `table`'s value at `n`, linear in log2(n) between its points.
fn interpolate(table: &[(f64, f64)], n: f64) -> f64 {
    let x = n.max(table[0].0).min(table[table.len() - 1].0).log2();
    let pair = table.windows(2).find(|w| x <= w[1].0.log2()).unwrap();
    let (x0, y0, x1, y1) = (pair[0].0.log2(), pair[0].1, pair[1].0.log2(), pair[1].1);
    y0 + (y1 - y0) * (x - x0) / (x1 - x0)
}

/// What a run of windows did: after each, the limit in force (a probe's
/// window included) and the settled limit.
struct Trace {
    in_force: Vec<usize>,
    settled: Vec<usize>,
}

impl Trace {
    /// The mean throughput the limits in force gave, without noise,
    /// against the best fixed limit's (`best` calls in flight).
    fn ratio(&self, db: &SimulatedDb, from: usize, best: usize) -> f64 {
        let tail = &self.in_force[from..];
        let served: f64 = tail.iter().map(|&l| db.curve(l as f64)).sum();
        served / (db.curve(best as f64) * tail.len() as f64)
    }

    /// The first window from which the settled limit stays within one
    /// step of its final value.
    fn settled_from(&self) -> usize {
        let last = *self.settled.last().unwrap();
        let near = |l: &usize| l.abs_diff(last) <= step_of(last);
        self.settled.len() - self.settled.iter().rev().take_while(|l| near(l)).count()
    }
}

/// Runs `windows` windows.
fn run(tuner: &mut Tuner, db: &mut SimulatedDb, windows: usize, ceiling: usize) -> Trace {
    let mut trace = Trace {
        in_force: Vec::with_capacity(windows),
        settled: Vec::with_capacity(windows),
    };
    for _ in 0..windows {
        let sample = db.window(tuner.limit());
        trace.in_force.push(tuner.step(&sample, ceiling));
        trace.settled.push(tuner.settled_limit());
    }
    trace
}

/// Asserts the settled limit within `low..=high` over the second half of
/// the run.
fn assert_settled(trace: &Trace, low: usize, high: usize) {
    let settled = &trace.settled;
    let tail = &settled[settled.len() / 2..];
    assert!(
        tail.iter().all(|l| (low..=high).contains(l)),
        "settled in {low}..={high}: {settled:?}"
    );
}

#[test]
fn it_settles_at_the_knee_from_the_formula_and_stays_there() {
    let mut tuner = Tuner::new(4);
    let mut db = SimulatedDb::new(8);
    let trace = run(&mut tuner, &mut db, 400, 64);
    let reached = trace.settled.iter().position(|&l| l == 8).unwrap();
    assert!(
        reached <= 20,
        "at the knee after {reached} windows: {:?}",
        trace.settled
    );
    assert_settled(&trace, 7, 9);
    let at_knee = trace.settled[200..].iter().filter(|&&l| l == 8).count();
    assert!(at_knee >= 190, "at the knee: {at_knee} of 200");
    let probing = trace.in_force[200..].iter().filter(|&&l| l != 8).count();
    assert!(probing <= 30, "probes take few windows: {probing} of 200");
}

#[test]
fn on_the_measured_curve_it_keeps_nearly_the_best_fixed_throughput() {
    let curves = [(8, 0), (20, 0), (5, 0), (12, 0), (8, 16), (8, 8)];
    let runs = curves
        .into_iter()
        .flat_map(|c| (1..=3).map(move |seed| (c, seed)));
    for ((knee, plateau), seed) in runs {
        let mut tuner = Tuner::new(4);
        let mut db = SimulatedDb {
            noise: seed,
            plateau,
            ..SimulatedDb::measured(knee)
        };
        let trace = run(&mut tuner, &mut db, 240, 64);
        let reached = trace.settled.iter().position(|&l| l + 1 >= knee).unwrap();
        // Within 30 s: a step that buys 6 % against ±8 % noise per window
        // takes more than one probe's rounds.
        assert!(
            reached <= 120,
            "near the knee within 30 s: {reached} windows, {:?}",
            trace.settled
        );
        let ratio = trace.ratio(&db, 0, knee + plateau);
        eprintln!("knee {knee} plateau {plateau} seed {seed}: {ratio:.3} reached {reached}");
        assert!(
            ratio >= 0.95,
            "knee {knee}, seed {seed}: {ratio:.3} of the best fixed limit, {:?}",
            trace.in_force
        );
    }
}

#[test]
fn on_the_bench_sweeps_flat_top_it_settles_near_the_best_within_30_s() {
    for seed in 1..=10 {
        let mut tuner = Tuner::new(4);
        let mut db = SimulatedDb {
            noise: seed,
            ..SimulatedDb::bench_sweep()
        };
        let trace = run(&mut tuner, &mut db, 480, 64);
        let settled_s = trace.settled_from() as f64 * WINDOW.as_secs_f64();
        let ratio = trace.ratio(&db, 120, 16);
        eprintln!("bench sweep seed {seed}: {ratio:.3}, settled after {settled_s} s");
        assert!(settled_s <= 30.0, "seed {seed}: {:?}", trace.settled);
        assert!(
            ratio >= 0.97,
            "seed {seed}: {ratio:.3} of fixed 16, {:?}",
            trace.in_force
        );
    }
}

#[test]
fn it_follows_the_knee_up_and_down() {
    let mut tuner = Tuner::new(4);
    let mut db = SimulatedDb::new(8);
    run(&mut tuner, &mut db, 100, 64);
    db.knee = 20;
    let trace = run(&mut tuner, &mut db, 200, 64);
    assert_settled(&trace, 17, 23);
    db.knee = 6;
    let trace = run(&mut tuner, &mut db, 200, 64);
    let down = trace.settled.iter().position(|&l| l <= 7).unwrap();
    assert!(
        down <= 20,
        "within 5 s (20 windows): {down}, {:?}",
        trace.settled
    );
    assert_settled(&trace, 5, 7);
}

#[test]
fn other_load_on_the_database_brakes_once_and_the_probes_hold_the_limit() {
    let mut tuner = Tuner::new(4);
    let mut db = SimulatedDb::new(8);
    run(&mut tuner, &mut db, 100, 64);
    assert_eq!(tuner.settled_limit(), 8);
    // Two CPU hogs on PostgreSQL: every call is 4 × slower, throughput
    // jumps by ±30 % from one window to the next, and fewer permits only
    // get a smaller share of the CPU.
    (db.hogs, db.slow, db.noise_width) = (2.0, 0.25, 0.6);
    let during = run(&mut tuner, &mut db, 120, 64).settled;
    let low = *during.iter().min().unwrap();
    assert!(low >= 6, "one step down at most: {during:?}");
    assert!(during[..8].contains(&6), "the brake: {during:?}");
    (db.hogs, db.slow, db.noise_width) = (0.0, 1.0, 0.04);
    let after = run(&mut tuner, &mut db, 60, 64).settled;
    assert!(
        after[40..].iter().all(|&l| (7..=9).contains(&l)),
        "back at the knee: {after:?}"
    );
}

#[test]
fn it_does_not_move_at_low_traffic() {
    let mut tuner = Tuner::new(4);
    let mut db = SimulatedDb::new(8);
    run(&mut tuner, &mut db, 100, 64);
    db.demand = 3; // fewer than half the permits in use
    let limits = run(&mut tuner, &mut db, 400, 64).in_force;
    assert!(limits.iter().all(|&l| l <= 9), "no growth: {limits:?}");
    assert!(
        limits.iter().all(|&l| l == limits[0]),
        "frozen once a running probe is undone: {limits:?}"
    );
    // No calls at all: nothing to judge, nothing moves.
    let idle = Sample {
        span: WINDOW,
        ..Sample::default()
    };
    let frozen = tuner.limit();
    for _ in 0..50 {
        assert_eq!(tuner.step(&idle, 64), frozen);
    }
    // The clients come back: back at the knee soon.
    db.demand = usize::MAX;
    let settled = run(&mut tuner, &mut db, 40, 64).settled;
    assert!(
        settled[20..].iter().all(|&l| (7..=9).contains(&l)),
        "{settled:?}"
    );
}

#[test]
fn a_falling_ceiling_is_a_hard_cap_at_once() {
    let mut tuner = Tuner::new(4);
    let mut db = SimulatedDb::new(12);
    run(&mut tuner, &mut db, 100, 64);
    assert!(tuner.settled_limit() >= 10);
    let trace = run(&mut tuner, &mut db, 100, 3);
    assert!(
        trace.in_force.iter().all(|&l| l <= 3),
        "{:?}",
        trace.in_force
    );
    assert!(trace.settled.iter().all(|&l| l <= 3), "{:?}", trace.settled);
    assert!(
        trace.settled[50..].iter().all(|&l| l >= 2),
        "{:?}",
        trace.settled
    );
    let trace = run(&mut tuner, &mut db, 200, 64);
    assert_settled(&trace, 11, 13);
    assert_eq!(Tuner::new(4).step(&db.window(4), 0), 1, "floor 1");
}

#[test]
fn the_baseline_is_remeasured_under_sustained_load() {
    let mut tuner = Tuner::new(4);
    let mut db = SimulatedDb::new(8);
    run(&mut tuner, &mut db, 50, 64);
    let measured = tuner.baseline().unwrap();
    assert!(measured <= Duration::from_micros(2100), "{measured:?}");
    // The database gets twice as slow for good: the baseline follows
    // within a few re-probes instead of keeping the old minimum.
    db.base = Duration::from_millis(4);
    run(&mut tuner, &mut db, 3 * REPROBE_WINDOWS as usize, 64);
    let now = tuner.baseline().unwrap();
    assert!(now >= Duration::from_micros(3500), "{now:?}");
    assert!(now <= Duration::from_micros(4500), "{now:?}");
}

#[test]
fn permits_stop_at_the_limit_and_the_share() {
    let limiter = Limiter::new(ActiveLimit::Fixed(2), 2, 4);
    let a = limiter.acquire(Duration::ZERO).unwrap();
    let _b = limiter.acquire(Duration::ZERO).unwrap();
    assert!(limiter.acquire(Duration::from_millis(5)).is_none());
    drop(a);
    assert_eq!(limiter.in_use(), 1);
    assert!(limiter.acquire(Duration::ZERO).is_some());
    limiter.set_share(1);
    assert_eq!(limiter.current(), 1, "the share caps the limit in force");
    assert_eq!(limiter.range(), (1, 1));
    limiter.set_share(0);
    let waiter = {
        let limiter = limiter.clone();
        std::thread::spawn(move || limiter.acquire(Duration::from_secs(30)).is_some())
    };
    drop(_b);
    assert!(
        waiter.join().unwrap(),
        "a share of 0 is the share gate's to wait on"
    );
}

#[test]
fn a_waiter_gets_the_permit_given_back() {
    let limiter = Limiter::new(ActiveLimit::Auto, 1, 4);
    let held = limiter.acquire(Duration::ZERO).unwrap();
    let waiter = {
        let limiter = limiter.clone();
        std::thread::spawn(move || limiter.acquire(Duration::from_secs(30)).is_some())
    };
    while limiter.waiters.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    drop(held);
    assert!(waiter.join().unwrap());
    assert_eq!(limiter.mode(), "auto");
    assert_eq!(limiter.range(), (1, 4));
}

#[test]
fn the_settled_limit_is_where_probes_and_re_probes_come_back_to() {
    let mut tuner = Tuner::new(8);
    let mut db = SimulatedDb::new(8);
    run(&mut tuner, &mut db, 20, 64);
    let (mut dips, mut probes) = (0, 0);
    for _ in 0..2 * REPROBE_WINDOWS {
        let before = tuner.settled_limit();
        let after = tuner.step(&db.window(tuner.limit()), 64);
        if after != tuner.settled_limit() {
            probes += 1;
            assert_eq!(tuner.settled_limit(), before, "a probe keeps its center");
        }
        if after * 2 <= before {
            dips += 1;
        }
    }
    assert!(dips >= 1, "a baseline re-probe ran");
    assert!(probes >= 2, "probes ran");
}

#[test]
fn under_heavy_noise_it_keeps_most_of_the_best_fixed_throughput() {
    // An overloaded machine: the load generator and the refusals compete
    // with PostgreSQL for the CPU, and one window's throughput moves by
    // ±25 % while one step's effect is a few per cent.
    let mut worst: f64 = 1.0;
    for knee in [4, 8, 12] {
        for seed in 1..=5 {
            let mut tuner = Tuner::new(4);
            let mut db = SimulatedDb {
                noise: seed,
                noise_width: 0.5,
                ..SimulatedDb::measured(knee)
            };
            let ratio = run(&mut tuner, &mut db, 480, 16).ratio(&db, 120, knee);
            eprintln!("noisy knee {knee} seed {seed}: {ratio:.3}");
            worst = worst.min(ratio);
        }
    }
    assert!(worst >= 0.9, "worst {worst:.3}");
}

#[test]
fn a_probe_to_a_new_height_gets_a_warm_up_window_first() {
    let mut tuner = Tuner::new(4);
    let mut db = SimulatedDb::new(16);
    let limits: Vec<usize> = (0..4)
        .map(|_| {
            let sample = db.window(tuner.limit());
            tuner.step(&sample, 64)
        })
        .collect();
    // Probe to 8, its warm-up window, its counted window, back to 4.
    assert_eq!(limits, [8, 8, 4, 8], "{limits:?}");
}

/// A window where every call held its connection `hold` at `throughput`
/// calls/s.
fn window_of(throughput: f64, hold: Duration) -> Sample {
    let completions = (throughput * WINDOW.as_secs_f64()) as u64;
    Sample {
        span: WINDOW,
        completions,
        hold_total: hold * completions as u32,
    }
}

#[test]
fn the_brake_needs_two_slow_windows_in_a_row_not_across_a_quiet_one() {
    let idle = Sample {
        span: WINDOW,
        ..Sample::default()
    };
    let (normal, slow) = (
        window_of(4_000.0, Duration::from_millis(2)),
        window_of(2_000.0, Duration::from_millis(10)),
    );
    let braked = |windows: &[Sample]| {
        let mut tuner = Tuner::new(8);
        run(&mut tuner, &mut SimulatedDb::new(8), 100, 64);
        let before = tuner.settled_limit();
        for sample in [idle, normal].iter().chain(windows) {
            tuner.step(sample, 64);
        }
        tuner.settled_limit() < before
    };
    assert!(braked(&[slow, slow]), "two slow windows in a row brake");
    assert!(!braked(&[slow]), "one does not");
    assert!(
        !braked(&[slow, idle, slow]),
        "a quiet window between them breaks the row"
    );
}

#[test]
fn a_probe_turned_at_the_ceiling_takes_one_step_not_the_streaks_double() {
    // The knee is far above the ceiling: the first climb keeps 4 → 8 → 16
    // (two steps up in a row), then the probe up turns at the ceiling.
    let mut tuner = Tuner::new(4);
    let mut db = SimulatedDb::new(64);
    let trace = run(&mut tuner, &mut db, 40, 16);
    let at_ceiling = trace.settled.iter().position(|&l| l == 16).unwrap();
    let first_below = trace.in_force[at_ceiling..]
        .iter()
        .find(|&&l| l < 16)
        .copied();
    assert_eq!(first_below, Some(16 - step_of(16)), "{:?}", trace.in_force);
}
