//! The fixed pool of worker threads. Each takes jobs from the queue in FIFO
//! order and hands them to the function it was given (the method table's
//! `run_job`); it knows nothing of the methods. At most the database's
//! concurrency limit of workers hold a job at once (a [`Workforce`]
//! slot): the others sleep, without a timeout, until admission queues a
//! job for them or the queue closes. A worker that finishes a job takes
//! the next without sleeping while the queue is not empty. It records its
//! own pace — the time from taking one job to taking the next while the
//! queue was never empty — which admission uses to estimate the queue wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};

use super::admission::{Job, Workforce};
use super::stats::Stats;
use crate::db::Limiter;

/// Runs one job; true when it ran (not answered at once, e.g. expired).
pub type RunJob = dyn Fn(Job) -> bool + Send + Sync;

/// What every worker shares.
pub struct Crew {
    /// The queue.
    pub queue: Receiver<Job>,
    /// Runs a job.
    pub run: Arc<RunJob>,
    /// Where a worker's pace is recorded.
    pub stats: Arc<Stats>,
    /// Who may take a job, and the idle workers (shared with admission).
    pub workforce: Arc<Workforce>,
    /// The database's concurrency limit: how many may hold a job at once.
    pub limiter: Arc<Limiter>,
    /// Set after the drain: idle workers stop.
    pub may_exit: Arc<AtomicBool>,
}

/// Starts `n` worker threads.
pub fn spawn(crew: &Arc<Crew>, n: usize) -> Vec<JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let crew = crew.clone();
            std::thread::Builder::new()
                .name(format!("blitz-worker-{i}"))
                .spawn(move || worker_loop(&crew))
                .expect("spawn a worker thread")
        })
        .collect()
}

/// What a worker found when it looked for a job.
enum Next {
    /// A job, with a slot held for it.
    Job(Job),
    /// No job it may take now: sleep.
    Idle,
    /// The queue is closed and empty: stop.
    Exit,
}

fn worker_loop(crew: &Crew) {
    // When the last job that ran (not one answered at once) was taken.
    let mut last_taken: Option<Instant> = None;
    let mut holding = false;
    loop {
        match next_job(crew, &mut holding) {
            Next::Job(job) => {
                // A job already waiting closes a saturated cycle: the
                // worker's pace. Cycles of jobs answered without running
                // (expired in the queue) are left out.
                if let Some(last) = last_taken {
                    crew.stats.record_cycle(last.elapsed());
                }
                if !crew.queue.is_empty() {
                    crew.workforce.wake_one(); // more work than hands
                }
                let taken = Instant::now();
                let ran = (crew.run)(job);
                last_taken = ran.then_some(taken);
            }
            Next::Idle => {
                last_taken = None; // idle time is not the worker's pace
                crew.workforce.park(|| {
                    !crew.queue.is_empty() && crew.workforce.busy() < crew.workforce.slots()
                });
            }
            Next::Exit => return,
        }
    }
}

/// The next job this worker may take: it keeps its slot from one job to
/// the next, and gives it back when the queue is empty or the limit fell.
fn next_job(crew: &Crew, holding: &mut bool) -> Next {
    crew.workforce.set_limit(crew.limiter.current());
    if *holding && crew.workforce.over_limit() {
        crew.workforce.release();
        *holding = false;
    }
    if !*holding {
        *holding = crew.workforce.try_claim();
    }
    let next = if *holding {
        match crew.queue.try_recv() {
            Ok(job) => return Next::Job(job),
            Err(TryRecvError::Disconnected) => Next::Exit,
            Err(TryRecvError::Empty) => Next::Idle,
        }
    } else {
        Next::Idle
    };
    if *holding {
        crew.workforce.release();
        *holding = false;
    }
    let closed = crew.workforce.is_closed() || crew.may_exit.load(Ordering::Acquire);
    match next {
        Next::Idle if closed && crew.queue.is_empty() => Next::Exit,
        next => next,
    }
}
