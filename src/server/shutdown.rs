//! The server's lifecycle state: running, draining (Ctrl-C/SIGTERM received:
//! no new work, queued and running work finishes), and past the drain
//! deadline (whatever is left is answered -32003).

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;

/// Shared shutdown state.
#[derive(Debug, Default)]
pub struct Shutdown {
    state: AtomicU8,
    drain_deadline: Mutex<Option<Instant>>,
}

impl Shutdown {
    /// Starts draining; work still queued or running at `now + drain` is refused.
    pub fn begin(&self, drain: Duration) {
        *self.drain_deadline.lock() = Some(Instant::now() + drain);
        self.state.store(DRAINING, Ordering::Release);
    }

    /// Whether shutdown has begun (new requests get -32003).
    pub fn is_stopping(&self) -> bool {
        self.state.load(Ordering::Acquire) != RUNNING
    }

    /// The drain deadline, once shutdown has begun.
    pub fn drain_deadline(&self) -> Option<Instant> {
        *self.drain_deadline.lock()
    }

    /// Whether the drain deadline has passed (queued work gets -32003).
    pub fn past_drain_deadline(&self) -> bool {
        self.is_stopping() && self.drain_deadline().is_some_and(|d| Instant::now() >= d)
    }
}
