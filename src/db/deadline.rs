//! [`Deadline`]: when a request arrived and when its caller stops waiting —
//! the one deadline type, carried from admission through the queue to the
//! statement the watchdog cancels.

use std::time::{Duration, Instant};

/// When a request arrived and when its caller stops waiting.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// Arrival at the router.
    pub arrived: Instant,
    /// The caller's deadline (`timeout_ms`, else `invocation.default_timeout_ms`).
    pub at: Instant,
}

impl Deadline {
    /// A request arriving now with `timeout` to live.
    pub fn starting_now(timeout: Duration) -> Deadline {
        let arrived = Instant::now();
        Deadline {
            arrived,
            at: arrived + timeout,
        }
    }

    /// Milliseconds since arrival.
    pub fn elapsed_ms(&self) -> u64 {
        self.arrived.elapsed().as_millis() as u64
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn has_passed(&self) -> bool {
        Instant::now() >= self.at
    }
}
