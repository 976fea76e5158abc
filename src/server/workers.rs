//! The fixed pool of worker threads. Each takes jobs from the queue in FIFO
//! order and hands them to the function it was given (the method table's
//! `run_job`); it knows nothing of the methods. It records its own pace —
//! the time from taking one job to taking the next while the queue was never
//! empty — which admission uses to estimate the queue wait.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::admission::Job;
use super::stats::Stats;

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
    /// Workers running a job right now.
    pub busy: Arc<AtomicUsize>,
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

fn worker_loop(crew: &Crew) {
    // When the last job that ran (not one answered at once) was taken.
    let mut last_taken: Option<Instant> = None;
    loop {
        // A job already waiting closes a saturated cycle: the worker's pace.
        // Cycles of jobs answered without running (expired in the queue)
        // are left out: the jobs admitted now will run.
        let job = match crew.queue.try_recv() {
            Ok(job) => {
                if let Some(last) = last_taken {
                    crew.stats.record_cycle(last.elapsed());
                }
                job
            }
            Err(_) => {
                last_taken = None; // idle time is not the worker's pace
                match crew.queue.recv_timeout(Duration::from_millis(50)) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) if crew.may_exit.load(Ordering::Acquire) => {
                        return
                    }
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        let taken = Instant::now();
        crew.busy.fetch_add(1, Ordering::AcqRel);
        let ran = (crew.run)(job);
        crew.busy.fetch_sub(1, Ordering::AcqRel);
        last_taken = ran.then_some(taken);
    }
}
