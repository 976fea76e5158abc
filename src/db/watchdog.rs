//! Deadlines for running statements: one timer thread that sends
//! PostgreSQL a cancel request when a call's deadline passes, so a deadline
//! costs no extra `SET statement_timeout` round trip on the common path.
//!
//! [`Watchdog::arm`] returns a [`Guard`]; dropping it disarms the timer and
//! waits for a cancel already under way, so a late cancel can never reach
//! the connection's next statement. A connection whose statement was
//! cancelled is dropped from the pool by the caller (see [`Guard::disarm`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use postgres::{CancelToken, NoTls};

/// Why a statement was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The request's deadline passed.
    Deadline,
    /// The server's drain timeout passed during shutdown.
    Shutdown,
}

/// One armed timer.
struct Armed {
    token: CancelToken,
    /// Set when the cancel was sent; held locked while it is being sent.
    fired: Mutex<Option<CancelReason>>,
}

#[derive(Default)]
struct State {
    timers: BTreeMap<(Instant, u64), Arc<Armed>>,
    next_id: u64,
    stopped: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// The timer thread and its schedule. Cloning shares the same thread.
#[derive(Clone)]
pub struct Watchdog {
    shared: Arc<Shared>,
}

/// Disarms its timer when dropped.
pub struct Guard {
    watchdog: Watchdog,
    key: (Instant, u64),
    armed: Arc<Armed>,
}

impl Guard {
    /// Disarms the timer and says whether (and why) the cancel was sent.
    /// Once this returns, no cancel for this timer can be sent any more.
    pub fn disarm(self) -> Option<CancelReason> {
        self.watchdog.shared.state.lock().timers.remove(&self.key);
        let fired = *self.armed.fired.lock();
        fired
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.watchdog.shared.state.lock().timers.remove(&self.key);
        // Wait for a cancel being sent right now to finish.
        drop(self.armed.fired.lock());
    }
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog::start()
    }
}

impl Watchdog {
    /// Starts the timer thread.
    pub fn start() -> Watchdog {
        let watchdog = Watchdog {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
            }),
        };
        let runner = watchdog.clone();
        std::thread::Builder::new()
            .name("blitz-watchdog".into())
            .stack_size(256 * 1024)
            .spawn(move || runner.run())
            .expect("spawn the watchdog thread");
        watchdog
    }

    /// Cancels the statement behind `token` at `at`, unless the guard is dropped first.
    pub fn arm(&self, at: Instant, token: CancelToken) -> Guard {
        let armed = Arc::new(Armed {
            token,
            fired: Mutex::new(None),
        });
        let mut state = self.shared.state.lock();
        let key = (at, state.next_id);
        state.next_id += 1;
        let is_first = state.timers.keys().next().is_none_or(|first| key < *first);
        state.timers.insert(key, armed.clone());
        drop(state);
        if is_first {
            self.shared.wake.notify_one();
        }
        Guard {
            watchdog: self.clone(),
            key,
            armed,
        }
    }

    /// Fires every armed timer now (shutdown after the drain timeout).
    pub fn cancel_all(&self, reason: CancelReason) {
        let timers = std::mem::take(&mut self.shared.state.lock().timers);
        for armed in timers.into_values() {
            fire(&armed, reason);
        }
    }

    /// Stops the timer thread.
    pub fn stop(&self) {
        self.shared.state.lock().stopped = true;
        self.shared.wake.notify_one();
    }

    fn run(&self) {
        let mut state = self.shared.state.lock();
        while !state.stopped {
            let Some((&key, _)) = state.timers.iter().next() else {
                self.shared.wake.wait(&mut state);
                continue;
            };
            if key.0 > Instant::now() {
                self.shared.wake.wait_until(&mut state, key.0);
                continue;
            }
            let armed = state.timers.remove(&key).expect("first timer exists");
            // Lock `fired` before releasing the schedule, so a guard dropped
            // meanwhile waits for this cancel to be sent.
            let mut fired = armed.fired.lock();
            drop(state);
            *fired = Some(CancelReason::Deadline);
            send_cancel(&armed.token);
            drop(fired);
            state = self.shared.state.lock();
        }
    }
}

fn fire(armed: &Armed, reason: CancelReason) {
    let mut fired = armed.fired.lock();
    *fired = Some(reason);
    send_cancel(&armed.token);
}

fn send_cancel(token: &CancelToken) {
    if let Err(e) = token.cancel_query(NoTls) {
        log::debug!("sending a cancel request to PostgreSQL failed: {e}");
    }
}
