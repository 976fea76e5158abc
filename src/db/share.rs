//! [`Share`]: this instance's part of the connection budget as the pool and
//! the workers see it (the `cluster` module sets it from the registry),
//! enforced locally at two points:
//!
//! - a counting gate: at most `limit` callers hold a pooled connection at
//!   once ([`Share::acquire`]); the other workers wait at the gate, so the
//!   worker count stays fixed while the share moves;
//! - a cap on open connections: the pool's connection manager takes an
//!   [`OpenSlot`] before it connects and gives it back when the connection
//!   is closed, and no slot is given beyond `limit`, so the pool never has
//!   more connections open than the share, whatever r2d2 does in its own
//!   threads. A connection returned while more are open than the limit
//!   allows is closed instead of kept idle ([`Share::over_limit`]);
//! - the concurrency limit's ceiling: the share hands each new limit to
//!   the [`Limiter`] attached to it ([`Share::attach_limiter`]) in the
//!   same step, so the limit in force never exceeds the share, and the
//!   idle connections [`Share::keep_target`] asks to close are those
//!   above the smaller of the two.
//!
//! The limit only rises after the registry recorded the larger share, and
//! the registry only records a smaller share after the open connections
//! have come down to it, so the registry's figure is always at least what
//! this instance holds (the invariant is the `cluster` module's).

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::limit::Limiter;

/// The local allowance; see the module doc.
#[derive(Debug, Default)]
pub struct Share {
    gate: Mutex<Gate>,
    freed: Condvar,
    open: AtomicUsize,
    limit: AtomicUsize,
    /// The registry key whose shared advisory lock every connection of this
    /// instance holds; 0 while not registered.
    key: AtomicI32,
    /// The concurrency limit the share caps, once attached.
    limiter: OnceLock<Arc<Limiter>>,
}

/// A hot standby's part of the connection budget as the cluster keeps it:
/// which standby, this instance's [`Share`] of its connections (the
/// standby's pool obeys it as the primary's pool obeys its own), and the
/// standby's `max_connections` once a connection has read it.
#[derive(Debug)]
pub struct StandbyShare {
    /// The standby's name: its URL's `host:port/dbname`, how instances
    /// agree which standby a registry row means.
    pub name: String,
    /// This instance's share of the standby's connections.
    pub share: Arc<Share>,
    /// The standby's `max_connections`; 0 while not known.
    max_connections: AtomicU64,
}

impl StandbyShare {
    /// The part of standby `name`: a share of 0 until the cluster sets it.
    pub fn new(name: String) -> Arc<StandbyShare> {
        Arc::new(StandbyShare {
            name,
            share: Share::new(),
            max_connections: AtomicU64::new(0),
        })
    }

    /// The standby's `max_connections`, once known.
    pub fn max_connections(&self) -> Option<u64> {
        match self.max_connections.load(Ordering::Acquire) {
            0 => None,
            n => Some(n),
        }
    }

    /// Records the standby's `max_connections` (read on a connection to it).
    pub fn set_max_connections(&self, n: u64) {
        self.max_connections.store(n, Ordering::Release);
    }
}

#[derive(Debug, Default)]
struct Gate {
    held: usize,
}

impl Share {
    /// A share of 0 (nothing may connect until the registry grants one).
    pub fn new() -> Arc<Share> {
        Arc::new(Share::default())
    }

    /// Pool connections this instance may hold now.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Sets the limit, and the attached limiter's ceiling with it; waiters
    /// are woken when it rises.
    pub fn set_limit(&self, limit: usize) {
        let _gate = self.gate.lock();
        let before = self.limit.swap(limit, Ordering::AcqRel);
        if let Some(limiter) = self.limiter.get() {
            limiter.set_share(limit);
        }
        if limit > before {
            self.freed.notify_all();
        }
    }

    /// Makes this share the ceiling of `limiter` from now on (the first
    /// limiter attached stays).
    pub fn attach_limiter(&self, limiter: Arc<Limiter>) {
        let _gate = self.gate.lock();
        let limiter = self.limiter.get_or_init(|| limiter);
        limiter.set_share(self.limit());
    }

    /// How many pool connections are worth keeping open: the share, or
    /// the attached limiter's [`Limiter::keep_target`] when lower (calls
    /// never hold more connections than the limit lets through).
    pub fn keep_target(&self) -> usize {
        let share = self.limit();
        self.limiter
            .get()
            .map_or(share, |limiter| limiter.keep_target().min(share))
    }

    /// Callers holding a connection through the gate now.
    pub fn held(&self) -> usize {
        self.gate.lock().held
    }

    /// Pool connections open now (or being opened).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Whether more connections are open than the limit allows: a
    /// connection given back now should be closed.
    pub fn over_limit(&self) -> bool {
        self.open() > self.limit()
    }

    /// The registry key of this instance (0: not registered).
    pub fn key(&self) -> i32 {
        self.key.load(Ordering::Acquire)
    }

    /// Records the registry key (0 when the registration was lost).
    pub fn set_key(&self, key: i32) {
        self.key.store(key, Ordering::Release);
    }

    /// Waits until fewer than `limit` callers hold a connection, at most
    /// `timeout`; `None` when the time ran out.
    pub fn acquire(self: &Arc<Self>, timeout: Duration) -> Option<Permit> {
        let give_up = Instant::now() + timeout;
        let mut gate = self.gate.lock();
        while gate.held >= self.limit() {
            if self.freed.wait_until(&mut gate, give_up).timed_out() && gate.held >= self.limit() {
                return None;
            }
        }
        gate.held += 1;
        Some(Permit {
            share: self.clone(),
        })
    }

    /// A slot for one more open connection, unless that would pass the limit.
    pub fn open_slot(self: &Arc<Self>) -> Option<OpenSlot> {
        let limit = self.limit();
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()
            .map(|_| OpenSlot {
                share: self.clone(),
            })
    }

    fn release(&self) {
        let mut gate = self.gate.lock();
        gate.held -= 1;
        self.freed.notify_one();
    }
}

/// The right to hold one pooled connection; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    share: Arc<Share>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.share.release();
    }
}

/// One open (or opening) pool connection, counted against the limit until dropped.
#[derive(Debug)]
pub struct OpenSlot {
    share: Arc<Share>,
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.share.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_admits_up_to_the_limit() {
        let share = Share::new();
        assert!(
            share.acquire(Duration::from_millis(1)).is_none(),
            "0 at start"
        );
        share.set_limit(2);
        let a = share.acquire(Duration::ZERO).unwrap();
        let _b = share.acquire(Duration::ZERO).unwrap();
        assert!(share.acquire(Duration::from_millis(5)).is_none());
        drop(a);
        assert!(share.acquire(Duration::ZERO).is_some());
        assert_eq!(share.held(), 1);
    }

    #[test]
    fn a_waiter_gets_in_when_the_limit_rises() {
        let share = Share::new();
        let waiter = {
            let share = share.clone();
            std::thread::spawn(move || share.acquire(Duration::from_secs(10)).is_some())
        };
        std::thread::sleep(Duration::from_millis(20));
        share.set_limit(1);
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn open_slots_stop_at_the_limit_and_come_back() {
        let share = Share::new();
        share.set_limit(1);
        let slot = share.open_slot().unwrap();
        assert!(share.open_slot().is_none());
        share.set_limit(0);
        assert!(share.over_limit());
        drop(slot);
        assert_eq!(share.open(), 0);
        assert!(!share.over_limit());
    }

    #[test]
    fn the_share_caps_the_attached_limit_as_it_is_set() {
        let share = Share::new();
        share.set_limit(3);
        let limiter = Limiter::new(crate::config::ActiveLimit::Auto, 8, 16);
        share.attach_limiter(limiter.clone());
        assert_eq!((limiter.current(), limiter.ceiling()), (3, 3));
        assert_eq!(share.keep_target(), 3);
        share.set_limit(12);
        assert_eq!((limiter.current(), limiter.ceiling()), (8, 12));
        assert_eq!(
            share.keep_target(),
            10,
            "idle above the limit and one probe step: not kept"
        );
        share.set_limit(0);
        assert_eq!((limiter.current(), share.keep_target()), (0, 0));
    }
}
