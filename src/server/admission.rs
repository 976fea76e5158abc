//! Admission: the bounded FIFO queue between the router and the workers.
//!
//! The router calls [`Dispatcher::admit`] on its own thread; a request is
//! refused at once with -32001 when the connection has too many in flight,
//! when the queue is full, when its deadline is shorter than the
//! estimated queue wait (it would only expire in the queue), or when the
//! queue is *standing* (CoDel's idea): every job that reached a worker in
//! the last [`WAIT_INTERVAL`] had waited more than [`WAIT_TARGET`], and the
//! estimated wait of this one is over the target too. A burst is absorbed
//! (the queue drained recently: a job waited less than half the target),
//! up to [`BURST_TARGETS`] targets of expected wait; a queue that stays long
//! is refused, so the calls served wait about the target rather than the
//! whole queue, and the refused caller hears it at once and may go to
//! another instance. Until the workers have a recent pace, the expected
//! wait counts one typical call per permit.
//! `invocation.queue_capacity` stays the bound on memory.
//!
//! The target of 20 ms is a few typical calls' time at the knee (0.2 to 2
//! ms each), small beside the default deadline and the 100 ms a served
//! call should stay under at any overload; where calls hold their
//! connection longer it is [`TARGET_CALLS`] of them (a closed loop of a
//! few clients per permit is never refused), and for each request at
//! least [`DEADLINE_SHARE`]'s fraction of its own deadline; the interval
//! of 100 ms is CoDel's.
//!
//! The queue's other end is the [`Workforce`]: at most the database's
//! concurrency limit of workers hold a job at once, so a job waits here,
//! in FIFO order, rather than in a worker parked at the limiter's gate
//! (one hand-off, not two); an idle worker sleeps until a job is queued
//! for it, and the one woken is the one that went idle last (its cache
//! is warm, and the others stay asleep).

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};

use super::metrics::Refusal;
use super::router::responder::Responder;
use super::stats::Stats;
use crate::db::Deadline;
use crate::logging::LogThrottle;
use crate::protocol::{Overload, OverloadReason, OverloadTemplate, Request, RpcError};

/// A request admitted to the queue, with its reply obligation and deadline.
pub struct Job {
    /// The request as read.
    pub request: Request,
    /// Where its one reply goes.
    pub responder: Responder,
    /// When it arrived and when its caller stops caring.
    pub deadline: Deadline,
}

/// The limits admission applies, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `server.max_in_flight_per_connection`.
    pub max_in_flight: usize,
    /// `invocation.default_timeout_ms`.
    pub default_timeout: Duration,
    /// `invocation.workers`: how many take jobs from the queue.
    pub workers: usize,
    /// This instance's name, reported in -32001.
    pub instance: String,
}

/// The sending side of the queue plus what admission needs to know.
pub struct Dispatcher {
    sender: RwLock<Option<Sender<Job>>>,
    capacity: usize,
    limits: Limits,
    stats: Arc<Stats>,
    workforce: Arc<Workforce>,
    refusal_log: LogThrottle,
    /// Since when every job that reached a worker had waited over the
    /// target, µs since `origin` (0: the last one waited less).
    above_since_us: AtomicU64,
    /// The target now, µs: [`WAIT_TARGET`], or [`TARGET_CALLS`] typical
    /// calls when they are longer.
    target_us: AtomicU64,
    /// A typical call's connection hold time, µs (0: none measured yet).
    typical_us: AtomicU64,
    origin: Instant,
    /// The -32001 reply, rendered once.
    overload: OverloadTemplate,
}

/// The queue wait admission aims at; see the module doc.
pub const WAIT_TARGET: Duration = Duration::from_millis(20);
/// The target is at least this many typical calls (connection hold
/// times): a queue of a few calls per permit is never refused by time.
pub const TARGET_CALLS: u32 = 4;
/// A request's own target is at least this fraction of its deadline
/// (1/50: 20 ms for a 1 s deadline, 600 ms for the default 30 s): a caller
/// that states a short deadline is refused early, one that gives the queue
/// time (a burst of logins, a batch job) is not refused a wait it accepts.
pub const DEADLINE_SHARE: u32 = 50;
/// How long every job must have waited over the target before the queue
/// counts as standing; it stops standing once a job waited less than half
/// the target (the queue drained), not merely less than the target.
pub const WAIT_INTERVAL: Duration = Duration::from_millis(100);
/// A burst is absorbed up to this many targets of expected wait; beyond,
/// requests are refused whether the queue stands or not.
pub const BURST_TARGETS: u32 = 3;

/// How often a refusal burst is logged at most.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Dispatcher {
    /// A queue of `capacity` jobs; the receiver goes to the workers.
    pub fn new(capacity: usize, limits: Limits, stats: Arc<Stats>) -> (Dispatcher, Receiver<Job>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let dispatcher = Dispatcher {
            sender: RwLock::new(Some(tx)),
            capacity,
            stats,
            workforce: Arc::new(Workforce::new(limits.workers)),
            refusal_log: LogThrottle::new(REFUSAL_LOG_INTERVAL),
            above_since_us: AtomicU64::new(0),
            target_us: AtomicU64::new(WAIT_TARGET.as_micros() as u64),
            typical_us: AtomicU64::new(0),
            origin: Instant::now(),
            overload: OverloadTemplate::new(capacity, &limits.instance),
            limits,
        };
        (dispatcher, rx)
    }

    /// Jobs waiting in the queue.
    pub fn depth(&self) -> usize {
        self.sender.read().as_ref().map_or(0, Sender::len)
    }

    /// The queue's capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Workers running a job right now.
    pub fn busy_workers(&self) -> usize {
        self.workforce.busy()
    }

    /// The workers' side of the queue: who may take a job, who sleeps.
    pub fn workforce(&self) -> Arc<Workforce> {
        self.workforce.clone()
    }

    /// How long a job admitted now would wait: the queue depth over the
    /// rate the workers got through jobs recently; `None` when too few
    /// calls ran recently to judge.
    pub fn estimated_wait(&self) -> Option<Duration> {
        self.wait_for(self.depth())
    }

    /// The `retry_after_ms` to suggest to a client refused with `depth`
    /// jobs queued: about the time the queue needs to drain halfway at its
    /// recent pace.
    pub fn retry_after_ms(&self, depth: usize) -> u64 {
        match self.wait_for(depth) {
            Some(wait) => (wait.as_millis() as u64 / 2).clamp(1, 60_000),
            None => (100 * depth / self.capacity.max(1)).max(10) as u64,
        }
    }

    /// How long a job with `depth` jobs ahead of it would wait, with every
    /// worker that may hold a job going at the pace the workers kept
    /// recently, or, when too few ran recently to tell (the first burst
    /// after a quiet spell), one typical call at a time each.
    fn wait_for(&self, depth: usize) -> Option<Duration> {
        let typical_us = self.typical_us.load(Ordering::Relaxed);
        let per_worker = self
            .stats
            .worker_rate()
            .or_else(|| (typical_us > 0).then(|| 1e6 / typical_us as f64))?;
        let rate = per_worker * self.workforce.slots() as f64;
        Some(Duration::from_secs_f64(depth as f64 / rate))
    }

    /// Records how long a job waited in the queue before a worker took it,
    /// and the typical call's connection hold time now (worker thread; a
    /// few atomic operations).
    pub fn note_queue_wait(&self, waited: Duration, typical_call: Option<Duration>) {
        let target = typical_call.map_or(WAIT_TARGET, |t| WAIT_TARGET.max(t * TARGET_CALLS));
        self.target_us
            .store(target.as_micros() as u64, Ordering::Relaxed);
        if let Some(typical) = typical_call {
            self.typical_us
                .store(typical.as_micros() as u64, Ordering::Relaxed);
        }
        if waited < target / 2 {
            self.above_since_us.store(0, Ordering::Relaxed);
        } else if waited >= target && self.above_since_us.load(Ordering::Relaxed) == 0 {
            let now = self.origin.elapsed().as_micros() as u64;
            self.above_since_us.store(now.max(1), Ordering::Relaxed);
        }
    }

    /// Every job that reached a worker for a whole interval had waited
    /// over the target. An idle server, or one whose last job waited less,
    /// has no standing queue: a burst after a quiet spell is absorbed.
    fn queue_is_standing(&self) -> bool {
        let since = self.above_since_us.load(Ordering::Relaxed);
        let now = self.origin.elapsed().as_micros() as u64;
        since != 0 && now.saturating_sub(since) > WAIT_INTERVAL.as_micros() as u64
    }

    /// Why a request with `timeout` cannot wait in the queue now, if so:
    /// its deadline is shorter than the expected wait, or the expected wait
    /// is over the target and the queue is standing, or over
    /// [`BURST_TARGETS`] targets (a burst is absorbed only so far).
    fn refused_by_time(&self, timeout: Duration) -> Option<(Refusal, &'static str)> {
        let wait = self.estimated_wait()?;
        if wait > timeout {
            return Some((Refusal::Deadline, "deadline shorter than the queue wait"));
        }
        let target = Duration::from_micros(self.target_us.load(Ordering::Relaxed))
            .max(timeout / DEADLINE_SHARE);
        let over = wait > target * BURST_TARGETS || (wait > target && self.queue_is_standing());
        over.then_some((Refusal::QueueWait, "queue wait over the target"))
    }

    /// Answers `request` with -32001 from the template.
    fn refuse(&self, reason: Refusal, request: &Request, responder: Responder) {
        self.stats.count_refusal(reason);
        self.stats
            .count_unrun_call(&request.method, crate::protocol::code::OVERLOADED);
        self.log_refusal_burst();
        let reason = match reason {
            Refusal::InFlightLimit => OverloadReason::InFlightLimit,
            Refusal::Deadline => OverloadReason::Deadline,
            Refusal::QueueWait => OverloadReason::QueueWait,
            // Draining and max_clients are not -32001 and never come here.
            Refusal::QueueFull | Refusal::Draining | Refusal::MaxClients => {
                OverloadReason::QueueFull
            }
        };
        let queue_depth = self.depth();
        let overload = Overload {
            reason,
            retry_after_ms: self.retry_after_ms(queue_depth),
            queue_depth,
        };
        responder.refuse(&self.overload, &overload);
    }

    fn log_refusal_burst(&self) {
        if self.refusal_log.ready() {
            log::warn!(
                "overloaded: refusing requests with -32001 (queue {}/{}); at most one such line per {} s",
                self.depth(),
                self.capacity,
                self.refusal_log.every_s()
            );
        }
    }

    /// Queues `request` or answers it at once with the reason it cannot be.
    pub fn admit(&self, request: Request, mut responder: Responder) {
        if !responder.count_in_flight(self.limits.max_in_flight) {
            return self.refuse(Refusal::InFlightLimit, &request, responder);
        }
        let timeout = request
            .timeout_ms
            .map_or(self.limits.default_timeout, Duration::from_millis);
        let deadline = Deadline::starting_now(timeout);
        if let Some((refusal, _)) = self.refused_by_time(timeout) {
            return self.refuse(refusal, &request, responder);
        }
        let job = Job {
            request,
            responder,
            deadline,
        };
        let sender = self.sender.read();
        let Some(tx) = sender.as_ref() else {
            self.stats.count_refusal(Refusal::Draining);
            return job.responder.reply(Err(RpcError::shutting_down()));
        };
        match tx.try_send(job) {
            Ok(()) => {
                drop(sender);
                self.stats.bump_accepted();
                self.workforce.wake_one();
            }
            Err(TrySendError::Full(job)) => {
                drop(sender);
                self.refuse(Refusal::QueueFull, &job.request, job.responder)
            }
            Err(TrySendError::Disconnected(job)) => {
                self.stats.count_refusal(Refusal::Draining);
                job.responder.reply(Err(RpcError::shutting_down()))
            }
        }
    }

    /// Stops admitting: later `admit` calls answer -32003; idle workers
    /// wake and stop once the queue is empty.
    pub fn close(&self) {
        self.sender.write().take();
        self.workforce.close();
    }
}

/// The workers as the queue sees them: how many hold a job, how many may
/// at once (the database's concurrency limit, within the worker count),
/// and the idle ones, asleep until a job is queued for them.
///
/// No wake-up is lost: a worker lists itself idle before it looks at the
/// queue a last time, and [`Dispatcher::admit`] queues a job before it
/// looks at the idle list, each with a sequentially consistent fence in
/// between, so one of the two sees the other.
pub struct Workforce {
    /// Workers holding a job (one of the slots).
    busy: AtomicUsize,
    /// How many may hold one at once: `invocation.workers`, or the
    /// concurrency limit when lower (published by the workers).
    slots: AtomicUsize,
    workers: usize,
    /// Idle workers, the one that went idle last at the end.
    idle: Mutex<Vec<Thread>>,
    idle_count: AtomicUsize,
    /// The queue was closed: idle workers stop.
    closed: AtomicBool,
}

impl Workforce {
    /// The side of `workers` workers, every one of them allowed a job.
    pub fn new(workers: usize) -> Workforce {
        let workers = workers.max(1);
        Workforce {
            busy: AtomicUsize::new(0),
            slots: AtomicUsize::new(workers),
            workers,
            idle: Mutex::new(Vec::with_capacity(workers)),
            idle_count: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Workers holding a job now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    /// How many workers may hold a job at once.
    pub fn slots(&self) -> usize {
        self.slots.load(Ordering::Relaxed)
    }

    /// Publishes the concurrency limit now (a worker reads it before each job).
    pub fn set_limit(&self, limit: usize) {
        let slots = limit.clamp(1, self.workers);
        if self.slots.load(Ordering::Relaxed) != slots {
            self.slots.store(slots, Ordering::Relaxed);
        }
    }

    /// Takes a slot if one is free.
    pub fn try_claim(&self) -> bool {
        let slots = self.slots();
        self.busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < slots).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether more workers hold a slot than the limit now allows.
    pub fn over_limit(&self) -> bool {
        self.busy() > self.slots()
    }

    /// Gives a slot back.
    pub fn release(&self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Wakes the worker that went idle last, if one is idle and a slot is
    /// free (after a job was queued).
    pub fn wake_one(&self) {
        fence(Ordering::SeqCst);
        if self.idle_count.load(Ordering::SeqCst) == 0 || self.busy() >= self.slots() {
            return;
        }
        let woken = {
            let mut idle = self.idle.lock();
            let woken = idle.pop();
            self.idle_count.store(idle.len(), Ordering::SeqCst);
            woken
        };
        if let Some(worker) = woken {
            worker.unpark();
        }
    }

    /// Marks the queue closed and wakes every idle worker.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let idle = std::mem::take(&mut *self.idle.lock());
        self.idle_count.store(0, Ordering::SeqCst);
        for worker in idle {
            worker.unpark();
        }
    }

    /// Closes without a dispatcher (tests of the workers).
    #[cfg(test)]
    pub fn close_for_test(&self) {
        self.close();
    }

    /// Sleeps the calling worker until a job is queued for it or the
    /// queue closes, unless `has_work` (checked once the worker is listed
    /// idle) says there is work already.
    pub fn park(&self, has_work: impl Fn() -> bool) {
        let me = std::thread::current();
        {
            let mut idle = self.idle.lock();
            idle.push(me.clone());
            self.idle_count.store(idle.len(), Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        if !has_work() && !self.is_closed() {
            std::thread::park();
        }
        // Still listed after a spurious wake-up or when work was found.
        let mut idle = self.idle.lock();
        if let Some(i) = idle.iter().rposition(|t| t.id() == me.id()) {
            idle.remove(i);
            self.idle_count.store(idle.len(), Ordering::SeqCst);
        }
    }
}
