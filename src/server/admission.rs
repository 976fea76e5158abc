//! Admission: the bounded FIFO queue between the router and the workers.
//!
//! The router calls [`Dispatcher::admit`] on its own thread; a request is
//! refused at once with -32001 when the connection has too many in flight,
//! when the queue is full, when its deadline is shorter than the
//! estimated queue wait (it would only expire in the queue), or when the
//! queue is *standing* (CoDel's idea): every job that reached a worker in
//! the last [`WAIT_INTERVAL`] had waited more than [`WAIT_TARGET`], and the
//! estimated wait of this one is over the target too. A burst is absorbed
//! (the queue drained recently); a queue that stays long is refused, so the
//! calls served wait about the target rather than the whole queue, and the
//! refused caller hears it at once and may go to another instance.
//! `invocation.queue_capacity` stays the bound on memory.
//!
//! The target of 20 ms is a few typical calls' time at the knee (0.2 to 2
//! ms each), small beside the default deadline and the 100 ms a served
//! call should stay under at any overload; where calls hold their
//! connection longer it is [`TARGET_CALLS`] of them (a closed loop of a
//! few clients per permit is never refused), and for each request at
//! least [`DEADLINE_SHARE`]'s fraction of its own deadline; the interval
//! of 100 ms is CoDel's.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::RwLock;

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
    busy_workers: Arc<AtomicUsize>,
    refusal_log: LogThrottle,
    /// Since when every job that reached a worker had waited over the
    /// target, µs since `origin` (0: the last one waited less).
    above_since_us: AtomicU64,
    /// The target now, µs: [`WAIT_TARGET`], or [`TARGET_CALLS`] typical
    /// calls when they are longer.
    target_us: AtomicU64,
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
/// (1/20: 50 ms for a 1 s deadline, 1.5 s for the default 30 s): a caller
/// that states a short deadline is refused early, one that gives the queue
/// time (a burst of logins, a batch job) is not refused a wait it accepts.
pub const DEADLINE_SHARE: u32 = 20;
/// How long every job must have waited over the target before the queue
/// counts as standing.
pub const WAIT_INTERVAL: Duration = Duration::from_millis(100);

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
            busy_workers: Arc::default(),
            refusal_log: LogThrottle::new(REFUSAL_LOG_INTERVAL),
            above_since_us: AtomicU64::new(0),
            target_us: AtomicU64::new(WAIT_TARGET.as_micros() as u64),
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
        self.busy_workers.load(Ordering::Acquire)
    }

    /// The counter the workers keep of themselves while busy.
    pub fn busy_counter(&self) -> Arc<AtomicUsize> {
        self.busy_workers.clone()
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
    /// worker going at the pace the workers kept recently.
    fn wait_for(&self, depth: usize) -> Option<Duration> {
        let rate = self.stats.worker_rate()? * self.limits.workers as f64;
        Some(Duration::from_secs_f64(depth as f64 / rate))
    }

    /// Records how long a job waited in the queue before a worker took it,
    /// and the typical call's connection hold time now (worker thread; a
    /// few atomic operations).
    pub fn note_queue_wait(&self, waited: Duration, typical_call: Option<Duration>) {
        let target = typical_call.map_or(WAIT_TARGET, |t| WAIT_TARGET.max(t * TARGET_CALLS));
        self.target_us
            .store(target.as_micros() as u64, Ordering::Relaxed);
        if waited < target {
            self.above_since_us.store(0, Ordering::Relaxed);
        } else if self.above_since_us.load(Ordering::Relaxed) == 0 {
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
    /// its deadline is shorter than the expected wait, or the queue is
    /// standing and the expected wait is over the target.
    fn refused_by_time(&self, timeout: Duration) -> Option<(Refusal, &'static str)> {
        let wait = self.estimated_wait()?;
        if wait > timeout {
            return Some((Refusal::Deadline, "deadline shorter than the queue wait"));
        }
        let target = Duration::from_micros(self.target_us.load(Ordering::Relaxed))
            .max(timeout / DEADLINE_SHARE);
        (wait > target && self.queue_is_standing())
            .then_some((Refusal::QueueWait, "queue wait over the target"))
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
            Ok(()) => self.stats.bump_accepted(),
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

    /// Stops admitting: later `admit` calls answer -32003.
    pub fn close(&self) {
        self.sender.write().take();
    }
}
