//! `--series FILE`: the successes' latency over time, as the client saw
//! it. Each thread keeps one (interval, latency) pair per success
//! ([`Sample`]); at the end they are grouped by [`INTERVAL`] and written as
//! CSV, one line per interval with calls: `t_s` (Unix seconds at the
//! interval's end), `calls`, `p50_ms`, `p99_ms` (nearest rank, exact).
//! Unlike percentiles read from the server's histogram buckets, these are
//! not rounded to a bucket's bounds.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The width of one interval.
pub(super) const INTERVAL: Duration = Duration::from_millis(250);

/// One success: its interval (counted from the run's start) and latency in µs.
pub(super) type Sample = (u32, u32);

/// The sample of a success answered at `now` after `latency_us`.
pub(super) fn sample(t0: Instant, now: Instant, latency_us: u64) -> Sample {
    let interval = now.saturating_duration_since(t0).as_micros() / INTERVAL.as_micros();
    (
        u32::try_from(interval).unwrap_or(u32::MAX),
        u32::try_from(latency_us).unwrap_or(u32::MAX),
    )
}

/// One line of the file: calls, p50 and p99 in ms of one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Line {
    pub(super) interval: u32,
    pub(super) calls: usize,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
}

/// The samples grouped by interval, in order.
pub(super) fn lines(samples: &[Sample]) -> Vec<Line> {
    let mut by_interval: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &(interval, us) in samples {
        by_interval.entry(interval).or_default().push(us);
    }
    by_interval
        .into_iter()
        .map(|(interval, mut us)| {
            us.sort_unstable();
            let rank = |q: f64| us[((q * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1];
            Line {
                interval,
                calls: us.len(),
                p50_ms: rank(0.50) as f64 / 1000.0,
                p99_ms: rank(0.99) as f64 / 1000.0,
            }
        })
        .collect()
}

/// Writes the series of a run that started at `t0` to `path`.
pub(super) fn write(path: &Path, t0: Instant, samples: &[Sample]) -> io::Result<()> {
    let since_t0 = Instant::now().saturating_duration_since(t0);
    let start = SystemTime::now()
        .checked_sub(since_t0)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut out = io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "t_s,calls,p50_ms,p99_ms")?;
    for line in lines(samples) {
        let end = start + INTERVAL * (line.interval + 1);
        writeln!(
            out,
            "{:.3},{},{:.3},{:.3}",
            end.as_secs_f64(),
            line.calls,
            line.p50_ms,
            line.p99_ms
        )?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_get_exact_nearest_rank_percentiles() {
        // Interval 0: 1..=100 ms; interval 2: one call of 7 ms.
        let mut samples: Vec<Sample> = (1..=100).map(|ms| (0, ms * 1000)).collect();
        samples.push((2, 7000));
        let lines = lines(&samples);
        assert_eq!(lines.len(), 2, "an interval without calls has no line");
        assert_eq!(
            lines[0],
            Line {
                interval: 0,
                calls: 100,
                p50_ms: 50.0,
                p99_ms: 99.0
            }
        );
        assert_eq!((lines[1].interval, lines[1].p99_ms), (2, 7.0));
    }

    #[test]
    fn a_sample_counts_from_the_run_s_start() {
        let t0 = Instant::now();
        assert_eq!(sample(t0, t0 + Duration::from_millis(600), 1234), (2, 1234));
        assert_eq!(sample(t0, t0, u64::MAX), (0, u32::MAX));
    }
}
