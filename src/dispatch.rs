//! Admission and dispatch: the bounded FIFO queue between the router and
//! the workers, the fixed pool of worker threads, and deadlines.
//!
//! The router calls [`Dispatcher::admit`] on its own thread; a request is
//! refused at once with -32001 when the connection has too many in flight,
//! when the queue is full, or when its deadline is shorter than the
//! estimated queue wait (it would only expire in the queue). Workers take
//! jobs in FIFO order; one whose deadline passed while queued is answered
//! -32002 without touching the database.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::RwLock;

use crate::connection::Responder;
use crate::protocol::{Request, RpcError};
use crate::server::Context;
use crate::services;
use crate::stats::LogThrottle;

/// A request admitted to the queue, with its reply obligation and deadline.
pub struct Job {
    /// The request as read.
    pub request: Request,
    /// Where its one reply goes.
    pub responder: Responder,
    /// When the router read it.
    pub arrived: Instant,
    /// When the caller stops caring (`timeout_ms`, else the default).
    pub deadline: Instant,
}

impl Job {
    /// Milliseconds since arrival.
    pub fn queued_ms(&self) -> u64 {
        self.arrived.elapsed().as_millis() as u64
    }
}

/// The sending side of the queue plus what admission needs to know.
pub struct Dispatcher {
    sender: RwLock<Option<Sender<Job>>>,
    capacity: usize,
    busy_workers: AtomicUsize,
    refusal_log: LogThrottle,
}

/// How often a refusal burst is logged at most.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Dispatcher {
    /// A queue of `capacity` jobs; the receiver goes to the workers.
    pub fn new(capacity: usize) -> (Dispatcher, Receiver<Job>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let dispatcher = Dispatcher {
            sender: RwLock::new(Some(tx)),
            capacity,
            busy_workers: AtomicUsize::new(0),
            refusal_log: LogThrottle::new(REFUSAL_LOG_INTERVAL),
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

    /// How long a job admitted now would wait: the queue depth over the
    /// rate the workers got through jobs recently; `None` when too few
    /// calls ran recently to judge.
    pub fn estimated_wait(&self, ctx: &Context) -> Option<Duration> {
        wait_for(self.depth(), ctx)
    }

    /// The `retry_after_ms` to suggest to a refused client: about the time
    /// the queue needs to drain halfway at its recent pace.
    pub fn retry_after_ms(&self, ctx: &Context) -> u64 {
        let depth = self.depth();
        match wait_for(depth, ctx) {
            Some(wait) => (wait.as_millis() as u64 / 2).clamp(1, 60_000),
            None => (100 * depth / self.capacity.max(1)).max(10) as u64,
        }
    }

    fn overloaded(&self, ctx: &Context) -> RpcError {
        self.log_refusal_burst();
        RpcError::overloaded(
            self.retry_after_ms(ctx),
            self.depth(),
            self.capacity,
            &ctx.instance,
        )
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
    pub fn admit(&self, ctx: &Context, request: Request, mut responder: Responder) {
        let limit = ctx.config.server.max_in_flight_per_connection as usize;
        if !responder.count_in_flight(limit) {
            return responder.reply(Err(self
                .overloaded(ctx)
                .with("reason", "in-flight limit of this connection")));
        }
        let arrived = Instant::now();
        let timeout = request
            .timeout_ms
            .map_or(ctx.config.default_timeout(), Duration::from_millis);
        if self.estimated_wait(ctx).is_some_and(|wait| wait > timeout) {
            return responder.reply(Err(self
                .overloaded(ctx)
                .with("reason", "deadline shorter than the queue wait")));
        }
        let job = Job {
            request,
            responder,
            arrived,
            deadline: arrived + timeout,
        };
        let sender = self.sender.read();
        let Some(tx) = sender.as_ref() else {
            return job
                .responder
                .reply(Err(RpcError::shutting_down(ctx.retry_after_shutdown_ms())));
        };
        match tx.try_send(job) {
            Ok(()) => ctx.stats.bump_accepted(),
            Err(TrySendError::Full(job)) => {
                drop(sender);
                job.responder
                    .reply(Err(self.overloaded(ctx).with("reason", "queue full")))
            }
            Err(TrySendError::Disconnected(job)) => job
                .responder
                .reply(Err(RpcError::shutting_down(ctx.retry_after_shutdown_ms()))),
        }
    }

    /// Stops admitting: later `admit` calls answer -32003.
    pub fn close(&self) {
        self.sender.write().take();
    }
}

/// How long a job with `depth` jobs ahead of it would wait, with every
/// worker going at the pace the workers kept recently.
fn wait_for(depth: usize, ctx: &Context) -> Option<Duration> {
    let rate = ctx.stats.worker_rate()? * ctx.config.invocation.workers as f64;
    Some(Duration::from_secs_f64(depth as f64 / rate))
}

/// Starts `n` worker threads taking jobs from `queue`.
pub fn spawn_workers(ctx: &Arc<Context>, queue: &Receiver<Job>, n: usize) -> Vec<JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let ctx = ctx.clone();
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("blitz-worker-{i}"))
                .spawn(move || worker_loop(&ctx, &queue))
                .expect("spawn a worker thread")
        })
        .collect()
}

fn worker_loop(ctx: &Context, queue: &Receiver<Job>) {
    // When the last job that ran (not one answered at once) was taken.
    let mut last_taken: Option<Instant> = None;
    loop {
        // A job already waiting closes a saturated cycle: the worker's pace.
        // Cycles of jobs answered without running (expired in the queue)
        // are left out: the jobs admitted now will run.
        let job = match queue.try_recv() {
            Ok(job) => {
                if let Some(last) = last_taken {
                    ctx.stats.record_cycle(last.elapsed());
                }
                job
            }
            Err(_) => {
                last_taken = None; // idle time is not the worker's pace
                match queue.recv_timeout(Duration::from_millis(50)) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) if ctx.workers_may_exit() => return,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        let taken = Instant::now();
        ctx.dispatcher.busy_workers.fetch_add(1, Ordering::AcqRel);
        let ran = run_job(ctx, job);
        ctx.dispatcher.busy_workers.fetch_sub(1, Ordering::AcqRel);
        last_taken = ran.then_some(taken);
    }
}

/// Answers one job: refused if the drain deadline passed, -32002 if its own
/// deadline passed while queued, else executed (then it returns true).
pub fn run_job(ctx: &Context, job: Job) -> bool {
    if ctx.shutdown.past_drain_deadline() {
        job.responder
            .reply(Err(RpcError::shutting_down(ctx.retry_after_shutdown_ms())));
        return false;
    }
    let started = Instant::now();
    if started >= job.deadline {
        let queued_ms = job.queued_ms();
        job.responder
            .reply(Err(RpcError::deadline_exceeded(queued_ms)));
        return false;
    }
    let Job {
        request,
        responder,
        arrived,
        deadline,
    } = job;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        services::execute(ctx, responder.connection(), &request, arrived, deadline)
    }))
    .unwrap_or_else(|_| {
        log::error!(
            "request {} ({}) panicked; answered -32603",
            responder.id_text(),
            request.method
        );
        Err(RpcError::internal(
            "the server failed while running this request; see its log",
        ))
    });
    ctx.stats
        .record_completion(started - arrived, started.elapsed());
    responder.reply(outcome);
    true
}
