//! The fixed pool of worker threads. Each takes jobs from the queue in FIFO
//! order and hands them to the function it was given (the method table's
//! `run_job`); it knows nothing of the methods. At most the database's
//! concurrency limit of workers hold a job at once (a [`Workforce`]
//! slot): the others sleep, without a timeout, until admission queues a
//! job for them or the queue closes. A worker that finishes a job takes
//! the next without sleeping while the queue is not empty. It records its
//! own pace — the time from taking one job to taking the next while the
//! queue was never empty — which admission uses to estimate the queue wait.
//!
//! Workers run at a lower CPU priority than the router threads (a nice
//! value [`WORKER_NICE`] above the process's). On a core shared with
//! PostgreSQL, sixteen workers woken by every database reply would
//! otherwise crowd the two routers off the CPU under overload: requests
//! then wait unread in the kernel's socket buffers, where admission cannot
//! see them, and a refusal that costs microseconds arrives seconds late.
//! A worker needs the CPU only between two database round trips; a router
//! needs it to read, refuse and reply for every client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};

use super::admission::{Job, Workforce};
use super::stats::Stats;
use crate::db::Limiter;

/// Runs one job; true when it ran (not answered at once, e.g. expired).
pub type RunJob<J = Job> = dyn Fn(J) -> bool + Send + Sync;

/// What every worker shares (jobs of type `J`: the server's [`Job`]s).
pub struct Crew<J = Job> {
    /// The queue.
    pub queue: Receiver<J>,
    /// Runs a job.
    pub run: Arc<RunJob<J>>,
    /// Where a worker's pace is recorded.
    pub stats: Arc<Stats>,
    /// Who may take a job, and the idle workers (shared with admission).
    pub workforce: Arc<Workforce>,
    /// The database's concurrency limit: how many may hold a job at once.
    pub limiter: Arc<Limiter>,
    /// Set after the drain: idle workers stop.
    pub may_exit: Arc<AtomicBool>,
}

/// How much nicer than the process a worker thread runs: at +10 a
/// runnable worker gets about a tenth of a router's share of the CPU when
/// both want it, and all of it when the routers are idle.
pub const WORKER_NICE: i32 = 10;

/// Starts `n` worker threads.
pub fn spawn<J: Send + 'static>(crew: &Arc<Crew<J>>, n: usize) -> Vec<JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let crew = crew.clone();
            std::thread::Builder::new()
                .name(format!("blitz-worker-{i}"))
                .spawn(move || {
                    lower_priority(i == 0);
                    worker_loop(&crew)
                })
                .expect("spawn a worker thread")
        })
        .collect()
}

/// Raises the calling thread's nice value by [`WORKER_NICE`] (on Linux
/// the nice value belongs to each thread, so the routers keep theirs).
/// Lowering one's own priority needs no privilege; should it fail, the
/// worker runs at the process's priority and the first says so once.
fn lower_priority(report: bool) {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::nice(WORKER_NICE) {
        if report {
            log::warn!(
                "workers run at the routers' CPU priority (setting nice +{WORKER_NICE} failed: {e}); \
                 under overload on a shared core refusals may be slow"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = report; // the nice value is per process there: leave it
}

/// What a worker found when it looked for a job.
enum Next<J> {
    /// A job, with a slot held for it.
    Job(J),
    /// No job it may take now: sleep.
    Idle,
    /// The queue is closed and empty: stop.
    Exit,
}

fn worker_loop<J>(crew: &Crew<J>) {
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
fn next_job<J>(crew: &Crew<J>, holding: &mut bool) -> Next<J> {
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
    // Once the queue is closed a worker without a slot stops: those with
    // one finish what is queued (what is left after them is answered by
    // the drain).
    let closed = crew.workforce.is_closed() || crew.may_exit.load(Ordering::Acquire);
    match next {
        Next::Idle if closed => Next::Exit,
        next => next,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;
    use crate::config::ActiveLimit;

    /// Workers taking numbers from a queue of `capacity` under a fixed limit.
    fn crew(
        workers: usize,
        limit: usize,
        capacity: usize,
        done: &Arc<AtomicUsize>,
        most: &Arc<AtomicUsize>,
    ) -> (crossbeam_channel::Sender<u64>, Arc<Crew<u64>>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let (done, most) = (done.clone(), most.clone());
        let running = Arc::new(AtomicUsize::new(0));
        let crew = Arc::new(Crew {
            queue: rx,
            run: Arc::new(move |n: u64| {
                most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                if n.is_multiple_of(64) {
                    std::thread::sleep(Duration::from_micros(200));
                }
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                true
            }),
            stats: Arc::new(Stats::new()),
            workforce: Arc::new(Workforce::new(workers)),
            limiter: Limiter::new(ActiveLimit::Fixed(limit as u64), limit, workers),
            may_exit: Arc::default(),
        });
        (tx, crew)
    }

    #[test]
    fn no_queued_job_is_left_while_workers_sleep() {
        // Producers queue and wake as admission does, in bursts with pauses
        // so that workers go idle and are woken again many times.
        let (done, most) = (Arc::default(), Arc::default());
        let (tx, crew) = crew(8, 3, 64, &done, &most);
        let workers = spawn(&crew, 8);
        let producers: Vec<_> = (0..2)
            .map(|p| {
                let (tx, workforce) = (tx.clone(), crew.workforce.clone());
                std::thread::spawn(move || {
                    for i in 0..5_000u64 {
                        let mut job = i * 2 + p;
                        while let Err(e) = tx.try_send(job) {
                            job = e.into_inner();
                            std::thread::yield_now();
                        }
                        workforce.wake_one();
                        if i.is_multiple_of(100) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        // Every job is taken without any further wake-up (a lost one would
        // leave jobs queued behind sleeping workers for good).
        let give_up = Instant::now() + Duration::from_secs(120);
        while done.load(Ordering::SeqCst) < 10_000 {
            assert!(
                Instant::now() < give_up,
                "{} jobs left in the queue",
                crew.queue.len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            most.load(Ordering::SeqCst) <= 3,
            "more jobs at once than the limit"
        );
        drop(tx);
        crew.workforce.close_for_test();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(crew.workforce.busy(), 0);
    }
}
