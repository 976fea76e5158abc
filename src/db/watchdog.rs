//! Deadlines for running statements: one timer thread that sends
//! PostgreSQL a cancel request when a call's deadline passes, so a deadline
//! costs no extra `SET statement_timeout` round trip on the common path.
//!
//! [`Watchdog::arm`] returns a [`Guard`]; dropping it disarms the timer and
//! waits for a cancel already under way, so a late cancel can never reach
//! the connection's next statement. A connection whose statement was
//! cancelled is dropped from the pool by the caller (see [`Guard::disarm`]).
//!
//! A cancel request can be lost: PostgreSQL cancels whatever the backend
//! runs when the request arrives, and nothing if the statement has not
//! reached it yet (a worker descheduled under load), or the request's own
//! connection can fail. So a fired timer fires again every [`RESEND`] until
//! its guard is disarmed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use postgres::CancelToken;

/// Why a statement was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The request's deadline passed.
    Deadline,
    /// The server's drain timeout passed during shutdown.
    Shutdown,
}

/// How often a cancel is sent again while its statement still runs.
const RESEND: Duration = Duration::from_millis(250);

/// One armed timer.
struct Armed {
    token: CancelToken,
    /// Set when the cancel was sent; held locked while it is being sent.
    fired: Mutex<Option<CancelReason>>,
    /// The guard was disarmed (set under the schedule's lock): never fire again.
    done: AtomicBool,
}

#[derive(Default)]
struct State {
    timers: BTreeMap<(Instant, u64), Arc<Armed>>,
    /// When each armed timer is due next, by id.
    due: HashMap<u64, Instant>,
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
    id: u64,
    armed: Arc<Armed>,
}

impl Guard {
    /// Disarms the timer and says whether (and why) the cancel was sent.
    /// Once this returns, no cancel for this timer can be sent any more.
    pub fn disarm(self) -> Option<CancelReason> {
        self.stop_timer();
        let fired = *self.armed.fired.lock();
        fired
    }

    /// Removes the timer (under whichever due time it has now) and waits
    /// for a cancel being sent right now to finish.
    fn stop_timer(&self) {
        let mut state = self.watchdog.shared.state.lock();
        self.armed.done.store(true, Ordering::Release);
        let due = state.due.remove(&self.id);
        if let Some(at) = due {
            state.timers.remove(&(at, self.id));
        }
        drop(state);
        drop(self.armed.fired.lock());
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop_timer();
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
            done: AtomicBool::new(false),
        });
        let mut state = self.shared.state.lock();
        let id = state.next_id;
        state.next_id += 1;
        self.schedule(&mut state, at, id, armed.clone());
        Guard {
            watchdog: self.clone(),
            id,
            armed,
        }
    }

    /// Puts timer `id` on the schedule at `at`, waking the thread if it is
    /// now the first.
    fn schedule(&self, state: &mut State, at: Instant, id: u64, armed: Arc<Armed>) {
        let key = (at, id);
        let is_first = state.timers.keys().next().is_none_or(|first| key < *first);
        state.timers.insert(key, armed);
        state.due.insert(id, at);
        if is_first {
            self.shared.wake.notify_one();
        }
    }

    /// Fires every armed timer now (shutdown after the drain timeout).
    pub fn cancel_all(&self, reason: CancelReason) {
        let timers = {
            let mut state = self.shared.state.lock();
            state.due.clear();
            std::mem::take(&mut state.timers)
        };
        for ((_, id), armed) in timers {
            fire(&armed, reason);
            let mut state = self.shared.state.lock();
            if !armed.done.load(Ordering::Acquire) {
                self.schedule(&mut state, Instant::now() + RESEND, id, armed);
            }
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
            state.due.remove(&key.1);
            // Lock `fired` before releasing the schedule, so a guard dropped
            // meanwhile waits for this cancel to be sent.
            let mut fired = armed.fired.lock();
            drop(state);
            let again = fired.is_some();
            fired.get_or_insert(CancelReason::Deadline);
            if again {
                log::debug!(
                    "statement still running {RESEND:?} after its cancel; cancelling again"
                );
            }
            send_cancel(&armed.token);
            drop(fired);
            state = self.shared.state.lock();
            if !armed.done.load(Ordering::Acquire) {
                self.schedule(&mut state, Instant::now() + RESEND, key.1, armed);
            }
        }
    }
}

fn fire(armed: &Armed, reason: CancelReason) {
    let mut fired = armed.fired.lock();
    *fired = Some(reason);
    send_cancel(&armed.token);
}

fn send_cancel(token: &CancelToken) {
    if let Err(e) = token.cancel_query(super::tls::cancel_connector()) {
        log::debug!("sending a cancel request to PostgreSQL failed: {e}");
    }
}
