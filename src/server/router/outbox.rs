//! A connection's outbox: the replies waiting to be written to its
//! nonblocking socket, bounded, written by whichever thread gets there
//! first, one write at a time.
//!
//! Rules, so that no thread waits for another to get a CPU and no thread
//! writes for one connection longer than one batch:
//!
//! - [`Outbox::push`] appends under a short lock (a copy, never a system
//!   call). A thread that finds more than [`OUTBOX_LIMIT`] bytes queued
//!   waits for room, but only a worker, and at most until the client has
//!   read nothing for [`WRITE_TIMEOUT`]; then the connection is given up.
//!   An event-loop thread never waits: it stops reading from a client
//!   whose outbox is full instead.
//! - [`Outbox::flush`] takes everything queued and hands it to the socket
//!   in ONE nonblocking write, without the lock held. What the socket did
//!   not take goes back to the front of the queue. A thread that finds a
//!   write in progress leaves its bytes to that writer's caller.
//! - The result says what is left: the caller (the connection) passes any
//!   rest to its event loop, which writes again when the socket is
//!   writable.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long a client may leave its replies unread (no byte taken by the
/// socket while some are queued) before the connection is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How many bytes of replies may wait in a connection's outbox; a worker
/// with more to add waits for room. One reply larger than this still goes
/// in alone.
pub const OUTBOX_LIMIT: usize = 1 << 20;

/// A spare buffer above this capacity is freed rather than kept for reuse.
const SPARE_CAPACITY: usize = 64 * 1024;

/// What a [`Outbox::flush`] left behind.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Nothing is queued.
    Done,
    /// The socket is full; the rest waits until it is writable.
    Blocked,
    /// Bytes were added while this write ran; they wait for another one.
    More,
    /// Another thread is writing; its caller takes care of what is left.
    Busy,
    /// The write failed or the outbox was closed: the client is gone.
    Failed,
}

/// What [`Outbox::push`] did with the bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// The outbox is closed (the client is gone); the bytes were dropped.
    Closed,
    /// The client read nothing for [`WRITE_TIMEOUT`] while the outbox was
    /// full: the outbox is now closed and the caller must close the socket.
    GaveUp,
}

#[derive(Default)]
struct State {
    /// Reply bytes not yet handed to a writer, in order.
    pending: Vec<u8>,
    /// An empty buffer kept for the next batch (saves an allocation).
    spare: Vec<u8>,
    /// A thread is writing (without the lock held).
    writing: bool,
    /// Bytes taken by the write in progress (they count against the limit).
    in_write: usize,
    /// Since when the socket has taken nothing while bytes were queued.
    blocked_since: Option<Instant>,
    /// Threads waiting for room.
    waiters: usize,
    /// No more bytes are accepted (the client is gone).
    closed: bool,
}

/// The bounded queue of reply bytes of one connection.
#[derive(Default)]
pub struct Outbox {
    state: Mutex<State>,
    room: Condvar,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Appends `bytes` (whole replies). With `may_wait`, waits while the
    /// outbox is over [`OUTBOX_LIMIT`], as long as the client keeps reading.
    pub fn push(&self, bytes: &[u8], may_wait: bool) -> Pushed {
        let mut state = self.state.lock();
        loop {
            if state.closed {
                return Pushed::Closed;
            }
            let queued = state.pending.len() + state.in_write;
            let full = queued > 0 && queued + bytes.len() > OUTBOX_LIMIT;
            if !full || !may_wait {
                break;
            }
            let since = state.blocked_since.unwrap_or_else(Instant::now);
            let left = (since + WRITE_TIMEOUT).saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.closed = true;
                self.room.notify_all();
                return Pushed::GaveUp;
            }
            state.waiters += 1;
            self.room.wait_for(&mut state, left);
            state.waiters -= 1;
        }
        state.pending.extend_from_slice(bytes);
        Pushed::Queued
    }

    /// Hands everything queued to `out` in one write (see the module doc).
    pub fn flush(&self, out: impl Write) -> Flushed {
        let mut batch = {
            let mut state = self.state.lock();
            if state.closed {
                return Flushed::Failed;
            }
            if state.writing {
                return Flushed::Busy;
            }
            if state.pending.is_empty() {
                return Flushed::Done;
            }
            state.writing = true;
            state.in_write = state.pending.len();
            let spare = std::mem::take(&mut state.spare);
            std::mem::replace(&mut state.pending, spare)
        };
        let written = write_once(out, &batch);
        let mut state = self.state.lock();
        state.writing = false;
        state.in_write = 0;
        let n = match written {
            Ok(n) => n,
            Err(_) => {
                state.closed = true;
                state.pending = Vec::new();
                self.room.notify_all();
                return Flushed::Failed;
            }
        };
        let whole = n == batch.len();
        if whole {
            batch.clear();
            if batch.capacity() <= SPARE_CAPACITY {
                state.spare = batch;
            }
        } else {
            batch.drain(..n);
            batch.extend_from_slice(&state.pending);
            let emptied = std::mem::replace(&mut state.pending, batch);
            if emptied.capacity() <= SPARE_CAPACITY && state.spare.capacity() == 0 {
                state.spare = emptied;
                state.spare.clear();
            }
        }
        state.blocked_since = match (whole, n > 0) {
            (true, _) => None,
            (false, true) => Some(Instant::now()),
            (false, false) => state.blocked_since.or_else(|| Some(Instant::now())),
        };
        if n > 0 && state.waiters > 0 {
            self.room.notify_all();
        }
        match (whole, state.pending.is_empty()) {
            (_, true) => Flushed::Done,
            (true, false) => Flushed::More,
            (false, false) => Flushed::Blocked,
        }
    }

    /// Bytes queued, a write in progress included.
    pub fn queued(&self) -> usize {
        let state = self.state.lock();
        state.pending.len() + state.in_write
    }

    /// Whether more than [`OUTBOX_LIMIT`] bytes are queued: the event loop
    /// reads no more requests from this client until they are written.
    pub fn is_full(&self) -> bool {
        self.queued() >= OUTBOX_LIMIT
    }

    /// Whether nothing is queued and no write is in progress.
    pub fn is_empty(&self) -> bool {
        let state = self.state.lock();
        state.pending.is_empty() && !state.writing
    }

    /// How long the socket has taken nothing while replies were queued.
    pub fn blocked_for(&self, now: Instant) -> Duration {
        self.state
            .lock()
            .blocked_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// Drops what is queued and refuses more (the client is gone); wakes
    /// the threads waiting for room.
    pub fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.pending = Vec::new();
        state.spare = Vec::new();
        self.room.notify_all();
    }
}

/// One write, retried only when interrupted; a full socket counts as 0.
fn write_once(mut out: impl Write, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match out.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `room` bytes in all, then would block.
    struct Sink<'a> {
        taken: &'a mut Vec<u8>,
        room: usize,
    }

    impl Write for Sink<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room - self.taken.len());
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_socket_keeps_the_rest_in_order_and_counts_the_stall() {
        let outbox = Outbox::new();
        assert_eq!(outbox.push(b"one\n", false), Pushed::Queued);
        assert_eq!(outbox.push(b"two\n", false), Pushed::Queued);
        let mut taken = Vec::new();
        let sink = Sink {
            taken: &mut taken,
            room: 6,
        };
        assert_eq!(outbox.flush(sink), Flushed::Blocked);
        assert_eq!(taken, b"one\ntw");
        assert_eq!(outbox.push(b"three\n", false), Pushed::Queued);
        assert!(
            outbox.blocked_for(Instant::now() + Duration::from_secs(1)) >= Duration::from_secs(1)
        );
        let sink = Sink {
            taken: &mut taken,
            room: 100,
        };
        assert_eq!(outbox.flush(sink), Flushed::Done);
        assert_eq!(taken, b"one\ntwo\nthree\n");
        assert_eq!(outbox.blocked_for(Instant::now()), Duration::ZERO);
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_worker_waits_for_room_only_while_the_client_reads() {
        let outbox = std::sync::Arc::new(Outbox::new());
        let big = vec![b'x'; OUTBOX_LIMIT];
        assert_eq!(outbox.push(&big, true), Pushed::Queued);
        // An event-loop push never waits, even when full.
        assert_eq!(outbox.push(b"refusal\n", false), Pushed::Queued);
        assert!(outbox.is_full());
        let mut taken = Vec::new();
        let sink = Sink {
            taken: &mut taken,
            room: 10,
        };
        assert_eq!(outbox.flush(sink), Flushed::Blocked); // blocked from now on
        let start = Instant::now();
        assert_eq!(outbox.push(b"reply\n", true), Pushed::GaveUp);
        assert!(start.elapsed() >= WRITE_TIMEOUT - Duration::from_millis(50));
        assert_eq!(outbox.push(b"later\n", true), Pushed::Closed);
    }

    #[test]
    fn a_waiting_worker_goes_on_once_the_socket_takes_bytes() {
        let outbox = std::sync::Arc::new(Outbox::new());
        outbox.push(&vec![b'x'; OUTBOX_LIMIT], true);
        let waiter = {
            let outbox = outbox.clone();
            std::thread::spawn(move || outbox.push(b"reply\n", true))
        };
        while outbox.state.lock().waiters == 0 {
            std::thread::yield_now();
        }
        let mut taken = Vec::new();
        let sink = Sink {
            taken: &mut taken,
            room: usize::MAX,
        };
        assert_eq!(outbox.flush(sink), Flushed::Done);
        assert_eq!(waiter.join().unwrap(), Pushed::Queued);
        assert_eq!(outbox.queued(), 6);
    }

    #[test]
    fn a_failed_write_closes_the_outbox() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let outbox = Outbox::new();
        outbox.push(b"x\n", false);
        assert_eq!(outbox.flush(Broken), Flushed::Failed);
        assert_eq!(outbox.push(b"y\n", true), Pushed::Closed);
    }
}
