//! A one-shot timer an event loop's poll can wait on, so that a wait ends
//! at a due time to the microsecond (Linux: a timerfd, through nix); where
//! there is none, waits are mio's whole milliseconds.

use std::time::Duration;

/// A one-shot timer the poll can wait on (Linux: a timerfd). Arming it
/// again replaces the time left and clears an expiry not yet seen.
#[cfg(target_os = "linux")]
pub(super) struct Timer(nix::sys::timerfd::TimerFd);

#[cfg(target_os = "linux")]
impl Timer {
    /// A timer registered in `registry` as `token`, or `None` where the
    /// kernel has none.
    pub(super) fn new(registry: &mio::Registry, token: mio::Token) -> Option<Timer> {
        use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
        use std::os::fd::{AsFd, AsRawFd};
        let flags = TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC;
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, flags).ok()?;
        let raw = fd.as_fd().as_raw_fd();
        registry
            .register(
                &mut mio::unix::SourceFd(&raw),
                token,
                mio::Interest::READABLE,
            )
            .ok()?;
        Some(Timer(fd))
    }

    /// Expires `after` from now; false if it could not be set.
    pub(super) fn arm(&self, after: Duration) -> bool {
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        let at = Expiration::OneShot(after.into());
        self.0.set(at, TimerSetTimeFlags::empty()).is_ok()
    }
}

/// No timer the poll can wait on: waits are mio's whole milliseconds.
#[cfg(not(target_os = "linux"))]
pub(super) struct Timer;

#[cfg(not(target_os = "linux"))]
impl Timer {
    /// None: the poll waits in whole milliseconds.
    pub(super) fn new(_registry: &mio::Registry, _token: mio::Token) -> Option<Timer> {
        None
    }

    /// Never set.
    pub(super) fn arm(&self, _after: Duration) -> bool {
        false
    }
}
