//! Readiness of one event-loop thread's sockets ([`Poller`], through mio),
//! with the [`Timer`] in the same poll for waits shorter than mio's
//! millisecond.

use std::io;
use std::time::Duration;

use mio::net::TcpStream;

use super::timer::Timer;

/// Readiness of a thread's sockets, through mio (epoll on Linux, kqueue on
/// the BSDs and macOS): the cost of a wake-up does not grow with the number
/// of connections. mio is edge-triggered: a socket is read until a short
/// read or `WouldBlock` (see `read_replies`), and writability is asked for
/// only while output is stuck. Each event is `(connection index, readable,
/// writable)`.
///
/// mio waits in whole milliseconds (rounded up), which would send an open
/// loop's calls up to 1 ms late, or, sleeping the rest, read their replies
/// up to 1 ms late. On Linux a timerfd in the same poll ends a wait at the
/// due time to the microsecond, as epoll_pwait2 did; elsewhere the wait is
/// mio's.
pub(super) struct Poller {
    poll: mio::Poll,
    events: mio::Events,
    timer: Option<Timer>,
}

/// The token of the wait's timer; connections are `0..n`.
const TIMER: mio::Token = mio::Token(usize::MAX);

impl Poller {
    /// A poller with `streams` registered for reading, the i-th as
    /// connection `i`.
    pub(super) fn new<'a>(
        streams: impl ExactSizeIterator<Item = &'a mut TcpStream>,
    ) -> io::Result<Poller> {
        let poll = mio::Poll::new()?;
        let events = mio::Events::with_capacity(streams.len().max(1));
        for (i, stream) in streams.enumerate() {
            poll.registry()
                .register(stream, mio::Token(i), mio::Interest::READABLE)?;
        }
        let timer = Timer::new(poll.registry(), TIMER);
        Ok(Poller {
            poll,
            events,
            timer,
        })
    }

    /// Asks for writability of connection `i` too (`on`), or no longer.
    pub(super) fn want_write(&mut self, s: &mut TcpStream, i: usize, on: bool) -> io::Result<()> {
        let interest = if on {
            mio::Interest::READABLE | mio::Interest::WRITABLE
        } else {
            mio::Interest::READABLE
        };
        self.poll.registry().reregister(s, mio::Token(i), interest)
    }

    /// Stops polling `s`.
    pub(super) fn remove(&mut self, s: &mut TcpStream) {
        let _ = self.poll.registry().deregister(s);
    }

    /// Waits up to `timeout` for events.
    pub(super) fn wait(&mut self, timeout: Duration, ready: &mut Vec<(usize, bool, bool)>) {
        ready.clear();
        let whole_ms = timeout.subsec_nanos().is_multiple_of(1_000_000);
        let armed = !whole_ms && self.timer.as_ref().is_some_and(|t| t.arm(timeout));
        let wait = if armed { None } else { Some(timeout) };
        if self.poll.poll(&mut self.events, wait).is_err() {
            return; // EINTR: the caller looks at the clock and comes back
        }
        for ev in self.events.iter().filter(|ev| ev.token() != TIMER) {
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            ready.push((ev.token().0, readable, ev.is_writable()));
        }
    }
}
