//! How blitz logs a storm: [`LogThrottle`] lets one line per interval
//! through (refusal bursts, accept failures, a database that stays away),
//! so a sysadmin reads one line per burst, not thousands.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets a log line through at most once per interval (refusal bursts,
/// accept failures), so a storm of events logs one line, not thousands.
/// Lock-free: it is asked on every refusal.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    /// When the last line went through, in ms since [`throttle_origin`] plus one (0: never).
    last_ms: AtomicU64,
}

fn throttle_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl LogThrottle {
    /// A throttle that opens once per `every`.
    pub const fn new(every: Duration) -> LogThrottle {
        LogThrottle {
            every,
            last_ms: AtomicU64::new(0),
        }
    }

    /// The interval, for the log line to mention.
    pub fn every_s(&self) -> u64 {
        self.every.as_secs()
    }

    /// True (and the interval restarts) when the last line is old enough.
    pub fn ready(&self) -> bool {
        let now = throttle_origin().elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.every.as_millis() as u64 {
            return false;
        }
        self.last_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_opens_once_per_interval() {
        let t = LogThrottle::new(Duration::from_millis(50));
        assert!(t.ready());
        assert!(!t.ready());
        std::thread::sleep(Duration::from_millis(60));
        assert!(t.ready());
    }
}
