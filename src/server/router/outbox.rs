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
//!   read nothing for the outbox's write timeout ([`WRITE_TIMEOUT`] in
//!   the server); then the connection is given up.
//!   An event-loop thread never waits: it stops reading from a client
//!   whose outbox is full instead.
//! - [`Outbox::flush`] takes everything queued and hands it to the socket
//!   in ONE nonblocking write, without the lock held. What the socket did
//!   not take goes back to the front of the queue. A thread that finds a
//!   write in progress leaves its bytes to that writer's caller.
//! - The result says what is left: the caller (the connection) passes any
//!   rest to its event loop, which writes again when the socket is
//!   writable.
//!
//! Every outbox adds what it holds to a [`QueuedBytes`] gauge shared by
//! all the connections of the server, so that `sys.status` reads the total
//! in one load instead of visiting every connection.

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// The server's write timeout: how long a client may leave its replies
/// unread (no byte taken by the socket while some are queued) before the
/// connection is closed. Outboxes are given it (tests give a shorter one).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How many bytes of replies may wait in a connection's outbox; a worker
/// with more to add waits for room. One reply larger than this still goes
/// in alone.
pub const OUTBOX_LIMIT: usize = 1 << 20;

/// Reply bytes queued in a set of outboxes (all those of one server),
/// kept current by each outbox as bytes are queued, written or dropped.
#[derive(Clone, Default)]
pub struct QueuedBytes(Arc<AtomicUsize>);

impl QueuedBytes {
    /// Bytes queued now, in all the outboxes that share this gauge.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Moves the gauge from one outbox's `before` to its `after`.
    fn change(&self, before: usize, after: usize) {
        if after > before {
            self.0.fetch_add(after - before, Ordering::Relaxed);
        } else if before > after {
            self.0.fetch_sub(before - after, Ordering::Relaxed);
        }
    }
}

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
    /// The client read nothing for the write timeout while the outbox was
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
    /// What this outbox has added to the shared [`QueuedBytes`] gauge.
    counted: usize,
}

impl State {
    /// Bytes queued, a write in progress included.
    fn queued(&self) -> usize {
        self.pending.len() + self.in_write
    }
}

/// The bounded queue of reply bytes of one connection.
pub struct Outbox {
    state: Mutex<State>,
    room: Condvar,
    /// How long a full outbox waits for the client to read before giving up.
    write_timeout: Duration,
    total: QueuedBytes,
}

impl Outbox {
    /// An empty outbox that gives a client up after `write_timeout`
    /// without reading, and counts what it holds in `total`.
    pub fn new(write_timeout: Duration, total: QueuedBytes) -> Outbox {
        Outbox {
            state: Mutex::default(),
            room: Condvar::new(),
            write_timeout,
            total,
        }
    }

    /// Brings the shared gauge up to date with what `state` holds.
    fn recount(&self, state: &mut State) {
        let queued = state.queued();
        self.total.change(state.counted, queued);
        state.counted = queued;
    }

    /// Appends `bytes` (whole replies). With `may_wait`, waits while the
    /// outbox is over [`OUTBOX_LIMIT`], as long as the client keeps reading.
    pub fn push(&self, bytes: &[u8], may_wait: bool) -> Pushed {
        let mut state = self.state.lock();
        loop {
            if state.closed {
                return Pushed::Closed;
            }
            let queued = state.queued();
            let full = queued > 0 && queued + bytes.len() > OUTBOX_LIMIT;
            if !full || !may_wait {
                break;
            }
            let since = state.blocked_since.unwrap_or_else(Instant::now);
            let left = (since + self.write_timeout).saturating_duration_since(Instant::now());
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
        self.recount(&mut state);
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
            Ok(n) if !state.closed => n,
            // The write failed, or the outbox was closed while it ran.
            _ => {
                state.closed = true;
                state.pending = Vec::new();
                self.recount(&mut state);
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
        self.recount(&mut state);
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
        self.state.lock().queued()
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

    /// Whether the client has left its replies unread for the write
    /// timeout (its connection is to be closed).
    pub fn is_stalled(&self, now: Instant) -> bool {
        self.blocked_for(now) >= self.write_timeout
    }

    /// Drops what is queued and refuses more (the client is gone); wakes
    /// the threads waiting for room.
    pub fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.pending = Vec::new();
        state.spare = Vec::new();
        self.recount(&mut state);
        self.room.notify_all();
    }
}

impl Drop for Outbox {
    /// Takes what is still queued off the shared gauge.
    fn drop(&mut self) {
        let state = self.state.get_mut();
        self.total.change(state.counted, 0);
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

    /// The write timeout of the tests: short, so that giving up is quick.
    const TIMEOUT: Duration = Duration::from_millis(50);

    fn outbox() -> Outbox {
        Outbox::new(TIMEOUT, QueuedBytes::default())
    }

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
        let outbox = outbox();
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
        let outbox = std::sync::Arc::new(outbox());
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
        assert!(start.elapsed() >= TIMEOUT);
        assert!(outbox.is_stalled(Instant::now()));
        assert_eq!(outbox.push(b"later\n", true), Pushed::Closed);
    }

    #[test]
    fn a_waiting_worker_goes_on_once_the_socket_takes_bytes() {
        // A long timeout: the waiter must be woken by the write, not by it.
        let outbox = std::sync::Arc::new(Outbox::new(
            Duration::from_secs(3600),
            QueuedBytes::default(),
        ));
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
        let outbox = outbox();
        outbox.push(b"x\n", false);
        assert_eq!(outbox.flush(Broken), Flushed::Failed);
        assert_eq!(outbox.push(b"y\n", true), Pushed::Closed);
    }

    #[test]
    fn the_shared_gauge_counts_what_every_outbox_holds() {
        let total = QueuedBytes::default();
        let (a, b) = (
            Outbox::new(TIMEOUT, total.clone()),
            Outbox::new(TIMEOUT, total.clone()),
        );
        a.push(b"one\n", false);
        a.push(b"two\n", false);
        b.push(b"three\n", false);
        assert_eq!(total.get(), 14);
        let mut taken = Vec::new();
        let sink = Sink {
            taken: &mut taken,
            room: 5,
        };
        assert_eq!(a.flush(sink), Flushed::Blocked);
        assert_eq!(total.get(), 9);
        a.close();
        assert_eq!(total.get(), 6);
        drop(b);
        assert_eq!(total.get(), 0);
    }
}
