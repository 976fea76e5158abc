//! Admission: the bounded FIFO queue between the router and the workers.
//!
//! The router calls [`Dispatcher::admit`] on its own thread; a request is
//! refused at once with -32001 when the connection has too many in flight,
//! when the queue is full, or when its deadline is shorter than the
//! estimated queue wait (it would only expire in the queue).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// The -32001 reply, rendered once.
    overload: OverloadTemplate,
}

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

    /// Answers `request` with -32001 from the template.
    fn refuse(&self, reason: Refusal, request: &Request, responder: Responder) {
        self.stats.count_refusal(reason);
        self.stats
            .count_unrun_call(&request.method, crate::protocol::code::OVERLOADED);
        self.log_refusal_burst();
        let reason = match reason {
            Refusal::InFlightLimit => OverloadReason::InFlightLimit,
            Refusal::Deadline => OverloadReason::Deadline,
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
        if self.estimated_wait().is_some_and(|wait| wait > timeout) {
            return self.refuse(Refusal::Deadline, &request, responder);
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
