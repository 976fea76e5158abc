//! Deadlines for running statements: one timer thread that sends
//! PostgreSQL a cancel request when a call's deadline passes, so a deadline
//! costs no extra `SET statement_timeout` round trip on the common path.
//!
//! [`Watchdog::arm`] returns a [`Guard`]; dropping it disarms the timer and
//! waits for a cancel already under way to be sent. [`Guard::disarm`] says
//! how many cancel requests were sent ([`Fired`]): the caller keeps the
//! connection when exactly one was and the statement ended with `57014`
//! (that one request was spent on it), and drops it otherwise, since a
//! request still on its way could reach the connection's next statement.
//!
//! A cancel request can be lost: PostgreSQL cancels whatever the backend
//! runs when the request arrives, and nothing if the statement has not
//! reached it yet (a worker descheduled under load), or the request's own
//! connection can fail. So a fired timer fires again after [`RESEND`],
//! then after twice that, and so on, [`MAX_SENDS`] requests in all (each
//! opens a TCP connection to PostgreSQL).

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

/// How long after the first cancel request a second is sent while its
/// statement still runs; each further wait doubles.
const RESEND: Duration = Duration::from_millis(250);

/// The most cancel requests sent for one statement.
pub const MAX_SENDS: u32 = 4;

/// What a timer did: why it fired, and how many cancel requests it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fired {
    /// Why the statement was cancelled.
    pub reason: CancelReason,
    /// Cancel requests sent (1 to [`MAX_SENDS`]).
    pub sends: u32,
}

/// One armed timer.
struct Armed {
    token: CancelToken,
    /// Set when a cancel was sent; held locked while it is being sent.
    fired: Mutex<Option<Fired>>,
    /// The guard was disarmed (set under the schedule's lock): never fire again.
    done: AtomicBool,
}

/// What the timer thread is doing, so that arming a timer wakes it only
/// when it would otherwise sleep past the new one.
#[derive(Default, Clone, Copy)]
enum Sleep {
    /// Running, or about to look at the schedule again: no wake needed.
    #[default]
    Awake,
    /// Asleep until this instant (the first timer when it went to sleep;
    /// that timer may have been disarmed since).
    Until(Instant),
    /// Asleep with no timer armed.
    Forever,
}

#[derive(Default)]
struct State {
    timers: BTreeMap<(Instant, u64), Arc<Armed>>,
    sleep: Sleep,
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
    /// Disarms the timer and says whether (why, how often) a cancel was
    /// sent. Once this returns, no cancel for this timer can be sent any more.
    pub fn disarm(self) -> Option<Fired> {
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

    /// Puts timer `id` on the schedule at `at`, waking the thread only if
    /// it sleeps past `at`. A call's timer is usually later than the one
    /// the thread sleeps until (deadlines are mostly the same length), so
    /// arming costs no system call; a disarmed timer the thread sleeps
    /// until wakes it once for nothing.
    fn schedule(&self, state: &mut State, at: Instant, id: u64, armed: Arc<Armed>) {
        state.timers.insert((at, id), armed);
        state.due.insert(id, at);
        let wake = match state.sleep {
            Sleep::Awake => false,
            Sleep::Until(until) => at < until,
            Sleep::Forever => true,
        };
        if wake {
            state.sleep = Sleep::Awake;
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
            let resend = fire(&armed, reason);
            self.reschedule(id, armed, resend);
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
                state.sleep = Sleep::Forever;
                self.shared.wake.wait(&mut state);
                state.sleep = Sleep::Awake;
                continue;
            };
            if key.0 > Instant::now() {
                state.sleep = Sleep::Until(key.0);
                self.shared.wake.wait_until(&mut state, key.0);
                state.sleep = Sleep::Awake;
                continue;
            }
            let armed = state.timers.remove(&key).expect("first timer exists");
            state.due.remove(&key.1);
            // Lock `fired` before releasing the schedule, so a guard dropped
            // meanwhile waits for this cancel to be sent.
            let fired = armed.fired.lock();
            drop(state);
            let reason = fired.map_or(CancelReason::Deadline, |f| f.reason);
            let resend = send(&armed, fired, reason);
            self.reschedule(key.1, armed, resend);
            state = self.shared.state.lock();
        }
    }

    /// Puts timer `id` back on the schedule to fire again after `resend`,
    /// unless it was disarmed meanwhile or has sent its last request.
    fn reschedule(&self, id: u64, armed: Arc<Armed>, resend: Option<Duration>) {
        let mut state = self.shared.state.lock();
        if let Some(wait) = resend.filter(|_| !armed.done.load(Ordering::Acquire)) {
            self.schedule(&mut state, Instant::now() + wait, id, armed);
        }
    }
}

/// Sends `armed`'s cancel now for `reason`; the wait before the next one
/// (`None`: that was the last).
fn fire(armed: &Armed, reason: CancelReason) -> Option<Duration> {
    send(armed, armed.fired.lock(), reason)
}

/// Sends one cancel request with `fired` (`armed`'s record) held locked,
/// records it, and returns the wait before the next one.
fn send(
    armed: &Armed,
    mut fired: parking_lot::MutexGuard<'_, Option<Fired>>,
    reason: CancelReason,
) -> Option<Duration> {
    let sends = fired.map_or(0, |f| f.sends);
    if sends >= MAX_SENDS {
        return None;
    }
    if sends > 0 {
        log::debug!("statement still running after {sends} cancel requests; cancelling again");
    }
    send_cancel(&armed.token);
    let sends = sends + 1;
    *fired = Some(Fired { reason, sends });
    if sends == MAX_SENDS {
        log::warn!("a statement still runs after {MAX_SENDS} cancel requests; sending no more");
        return None;
    }
    Some(RESEND * 2u32.pow(sends - 1))
}

fn send_cancel(token: &CancelToken) {
    if let Err(e) = token.cancel_query(super::tls::cancel_connector()) {
        log::debug!("sending a cancel request to PostgreSQL failed: {e}");
    }
}
