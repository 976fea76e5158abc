//! The tuner against a simulated database with a knee, and the limiter's
//! permits.

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
}

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
        let throughput = self.curve(n) * self.jitter();
        let completions = (throughput * WINDOW.as_secs_f64()) as u64;
        let hold = n / throughput;
        Sample {
            span: WINDOW,
            completions,
            hold_total: Duration::from_secs_f64(hold * completions as f64),
        }
    }
}

/// Runs `windows` windows; returns the limit after each.
fn run(tuner: &mut Tuner, db: &mut SimulatedDb, windows: usize, ceiling: usize) -> Vec<usize> {
    (0..windows)
        .map(|_| {
            let sample = db.window(tuner.limit());
            tuner.step(&sample, ceiling)
        })
        .collect()
}

/// Asserts the second half of `limits` within `low..=high`, apart from
/// the one-window baseline re-probes (at half the limit, one per
/// [`REPROBE_WINDOWS`]).
fn assert_settled(limits: &[usize], low: usize, high: usize) {
    let tail = &limits[limits.len() / 2..];
    let outside: Vec<_> = tail
        .iter()
        .enumerate()
        .filter(|(_, l)| !(low..=high).contains(*l))
        .collect();
    let reprobes = tail.len() / REPROBE_WINDOWS as usize + 1;
    assert!(
        outside.len() <= reprobes && outside.iter().all(|(_, &l)| l >= low / 2),
        "settled in {low}..={high} but for {reprobes} re-probes: {outside:?} in {limits:?}"
    );
}

#[test]
fn it_settles_at_the_knee_from_the_formula_and_stays_within_a_step() {
    let mut tuner = Tuner::new(4);
    let mut db = SimulatedDb::new(8);
    let limits = run(&mut tuner, &mut db, 400, 64);
    let reached = limits.iter().position(|&l| l == 8).unwrap();
    assert!(
        reached <= 20,
        "at the knee after {reached} windows: {limits:?}"
    );
    assert_settled(&limits, 7, 9);
    let at_knee = limits[200..].iter().filter(|&&l| l == 8).count();
    assert!(at_knee >= 120, "mostly at the knee: {at_knee} of 200");
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
        let limits = run(&mut tuner, &mut db, 240, 64);
        let reached = limits.iter().position(|&l| l + 1 >= knee).unwrap();
        assert!(
            reached <= 16,
            "near the knee within 4 s: {reached} windows, {limits:?}"
        );
        let served: f64 = limits.iter().map(|&l| db.curve(l as f64)).sum();
        let best = db.curve((knee + plateau) as f64) * limits.len() as f64;
        let ratio = served / best;
        eprintln!("knee {knee} plateau {plateau} seed {seed}: {ratio:.3} reached {reached}");
        assert!(
            ratio >= 0.95,
            "knee {knee}, seed {seed}: {ratio:.3} of the best fixed limit, {limits:?}"
        );
    }
}

#[test]
fn it_follows_the_knee_up_and_down() {
    let mut tuner = Tuner::new(4);
    let mut db = SimulatedDb::new(8);
    run(&mut tuner, &mut db, 100, 64);
    db.knee = 20;
    let limits = run(&mut tuner, &mut db, 200, 64);
    assert_settled(&limits, 17, 23);
    db.knee = 6;
    let limits = run(&mut tuner, &mut db, 200, 64);
    let down = limits.iter().position(|&l| l <= 7).unwrap();
    assert!(down <= 20, "within 5 s (20 windows): {down}, {limits:?}");
    assert_settled(&limits, 5, 7);
}

#[test]
fn it_does_not_move_at_low_traffic() {
    let mut tuner = Tuner::new(4);
    let mut db = SimulatedDb::new(8);
    run(&mut tuner, &mut db, 100, 64);
    db.demand = 3; // fewer than half the permits in use
    let limits = run(&mut tuner, &mut db, 400, 64);
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
    let limits = run(&mut tuner, &mut db, 40, 64);
    assert!(
        limits[20..].iter().all(|&l| (7..=9).contains(&l)),
        "{limits:?}"
    );
}

#[test]
fn a_falling_ceiling_is_a_hard_cap_at_once() {
    let mut tuner = Tuner::new(4);
    let mut db = SimulatedDb::new(12);
    run(&mut tuner, &mut db, 100, 64);
    assert!(tuner.limit() >= 10);
    let limits = run(&mut tuner, &mut db, 100, 3);
    assert!(limits.iter().all(|&l| l <= 3), "{limits:?}");
    assert!(limits[50..].iter().all(|&l| l >= 2), "{limits:?}");
    let limits = run(&mut tuner, &mut db, 200, 64);
    assert_settled(&limits, 11, 13);
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
fn the_settled_limit_ignores_the_baseline_re_probe_and_downward_probes() {
    let mut tuner = Tuner::new(8);
    let mut db = SimulatedDb::new(8);
    run(&mut tuner, &mut db, 20, 64); // past the first climb, whose undone doubling halves the limit
    let mut dips = 0;
    for _ in 0..2 * REPROBE_WINDOWS {
        let before = tuner.limit();
        let after = tuner.step(&db.window(before), 64);
        assert!(tuner.settled_limit() >= after, "never below the limit");
        if after * 2 <= before {
            dips += 1;
            assert_eq!(tuner.settled_limit(), before, "the re-probe's restore");
        }
    }
    assert!(dips >= 1, "a baseline re-probe ran");
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
            let limits = run(&mut tuner, &mut db, 480, 16);
            let tail = &limits[120..];
            let served: f64 = tail.iter().map(|&l| db.curve(l as f64)).sum();
            let best = db.curve(knee as f64) * tail.len() as f64;
            let ratio = served / best;
            eprintln!("noisy knee {knee} seed {seed}: {ratio:.3}");
            worst = worst.min(ratio);
        }
    }
    assert!(worst >= 0.9, "worst {worst:.3}");
}
