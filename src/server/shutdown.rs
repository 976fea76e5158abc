//! The server's lifecycle state: running, draining (Ctrl-C/SIGTERM received:
//! no new work, queued and running work finishes), and past the drain
//! deadline (whatever is left is answered -32003).
//!
//! Every call reads this state, on every worker: it is kept in atomics,
//! never behind a lock.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;

/// `drain_after_ns` before shutdown began.
const NO_DRAIN_DEADLINE: u64 = u64::MAX;

/// Shared shutdown state.
#[derive(Debug)]
pub struct Shutdown {
    state: AtomicU8,
    /// The instant the other times are counted from.
    origin: Instant,
    /// The drain deadline in nanoseconds after `origin`.
    drain_after_ns: AtomicU64,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            state: AtomicU8::new(RUNNING),
            origin: Instant::now(),
            drain_after_ns: AtomicU64::new(NO_DRAIN_DEADLINE),
        }
    }
}

impl Shutdown {
    /// Starts draining; work still queued or running at `now + drain` is refused.
    pub fn begin(&self, drain: Duration) {
        let at = (self.origin.elapsed() + drain).as_nanos();
        let at = u64::try_from(at).unwrap_or(NO_DRAIN_DEADLINE - 1);
        self.drain_after_ns.store(at, Ordering::Release);
        self.state.store(DRAINING, Ordering::Release);
    }

    /// Whether shutdown has begun (new requests get -32003).
    pub fn is_stopping(&self) -> bool {
        self.state.load(Ordering::Acquire) != RUNNING
    }

    /// The drain deadline, once shutdown has begun.
    pub fn drain_deadline(&self) -> Option<Instant> {
        match self.drain_after_ns.load(Ordering::Acquire) {
            NO_DRAIN_DEADLINE => None,
            ns => Some(self.origin + Duration::from_nanos(ns)),
        }
    }

    /// Whether the drain deadline has passed (queued work gets -32003).
    pub fn past_drain_deadline(&self) -> bool {
        self.is_stopping() && self.drain_deadline().is_some_and(|d| Instant::now() >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_deadline_is_set_by_begin_and_passes() {
        let shutdown = Shutdown::default();
        assert!(shutdown.drain_deadline().is_none());
        assert!(!shutdown.past_drain_deadline());
        shutdown.begin(Duration::from_secs(3600));
        let at = shutdown.drain_deadline().expect("a deadline once draining");
        assert!(at > Instant::now() + Duration::from_secs(3500));
        assert!(shutdown.is_stopping() && !shutdown.past_drain_deadline());
        shutdown.begin(Duration::ZERO);
        assert!(shutdown.past_drain_deadline());
    }
}
