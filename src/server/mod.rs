//! The server: the lifecycle of [`Server`] (bind, start the workers and
//! the router, then on a stop signal drain within `server.drain_timeout_s`
//! and close), and the pipeline's stages as modules:
//!
//! - [`router`]: reads requests from client connections, answers what it can
//!   itself, and hands the rest to the method table;
//! - [`methods`]: the one method table and the methods;
//! - [`admission`]: the bounded FIFO queue and who may enter it;
//! - [`workers`]: the fixed pool of threads that run queued jobs;
//! - [`context`]: what the methods share;
//! - [`stats`], [`shutdown`]: counters and the lifecycle state.

pub mod admission;
pub mod context;
pub mod methods;
pub mod router;
pub mod shutdown;
pub mod stats;
pub mod workers;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::sessions::{self, Sessions};
use crate::auth::LoginLimiter;
use crate::config::Config;
use crate::db::catalog::CatalogCache;
use crate::db::{self, CancelReason, Database, Health};
use crate::protocol::framing::Wire;
use crate::protocol::RpcError;
use admission::{Dispatcher, Job, Limits};
use context::Context;
use router::{Router, RouterThreads};
use stats::Stats;
use workers::Crew;

/// Binds `addr` with the largest accept backlog the kernel allows (it caps
/// it at `net.core.somaxconn`). std's fixed backlog of 128 overflows when
/// hundreds of clients connect at once, also clients beyond `max_clients`
/// that are to get their -32005 line, and an overflowing accept queue can
/// answer a client's first request with a reset.
fn bind_listener(addr: &SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&(*addr).into())?;
    socket.listen(65_535)?;
    Ok(socket.into())
}

/// A bound, not yet running server.
pub struct Server {
    ctx: Arc<Context>,
    listeners: Vec<TcpListener>,
    queue: Receiver<Job>,
    /// Set after the drain: idle workers and the session writer stop.
    housekeeping_stop: Arc<AtomicBool>,
}

impl Server {
    /// Binds the listen addresses and builds the pool (without waiting for
    /// the database).
    pub fn bind(config: Config) -> io::Result<Server> {
        let listeners = config
            .listen_addrs
            .iter()
            .map(bind_listener)
            .collect::<io::Result<Vec<_>>>()?;
        let port = listeners[0].local_addr()?.port();
        let instance = format!("{}:{port}", hostname());
        let stats = Arc::new(Stats::new());
        let limits = Limits {
            max_in_flight: config.server.max_in_flight_per_connection as usize,
            default_timeout: config.default_timeout(),
            workers: config.invocation.workers as usize,
            instance: instance.clone(),
        };
        let capacity = config.invocation.queue_capacity as usize;
        let (dispatcher, queue) = Dispatcher::new(capacity, limits, stats.clone());
        let health = Arc::new(Health::default());
        let acquire_timeout = Duration::from_millis(config.db.acquire_timeout_ms);
        let db = Database::new(
            db::build_pool(&config, health.clone()),
            health,
            acquire_timeout,
        );
        let ping_result = methods::ping_result(&instance, &config.auth.mode.to_string());
        let ctx = Arc::new(Context {
            ping_result,
            instance,
            db,
            catalog: CatalogCache::new(&config.db.api_schema),
            sessions: Arc::new(Sessions::new(&config.auth)),
            config,
            stats,
            shutdown: Arc::default(),
            dispatcher,
            connections: Arc::default(),
            login_limiter: LoginLimiter::default(),
        });
        Ok(Server {
            ctx,
            listeners,
            queue,
            housekeeping_stop: Arc::default(),
        })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The shared context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Serves until `stop` receives (or disconnects), then drains and closes.
    pub fn run(self, stop: &Receiver<()>) {
        let ctx = &self.ctx;
        let workers = self.spawn_workers();
        let session_writer = sessions::spawn_session_writer(
            ctx.sessions.clone(),
            db::connect_config(&ctx.config),
            self.housekeeping_stop.clone(),
        );
        let addrs = self.local_addrs();
        let router = Arc::new(self.router());
        let listeners = self
            .listeners
            .into_iter()
            .map(|l| (l, Wire::Stream))
            .collect();
        let threads = ctx.config.server.router_threads as usize;
        let router = match router::start(router, listeners, threads) {
            Ok(router) => router,
            Err(e) => {
                log::error!("cannot start the router threads: {e}");
                return;
            }
        };
        log::info!(
            "blitz-server {} started: pool_size={}, workers={}, router_threads={}, queue_capacity={}, listening on {}",
            env!("CARGO_PKG_VERSION"),
            ctx.config.pool_size_explained(),
            ctx.config.invocation.workers,
            threads,
            ctx.config.invocation.queue_capacity,
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = stop.recv();
        let stages = Stages {
            queue: &self.queue,
            workers,
            router,
            housekeeping_stop: &self.housekeeping_stop,
        };
        drain_and_close(ctx, stages);
        let _ = session_writer.join();
    }

    /// The workers, each given the method table's `run_job`.
    fn spawn_workers(&self) -> Vec<JoinHandle<()>> {
        let ctx = self.ctx.clone();
        let crew = Arc::new(Crew {
            queue: self.queue.clone(),
            run: Arc::new(move |job| methods::run_job(&ctx, job)),
            stats: self.ctx.stats.clone(),
            busy: self.ctx.dispatcher.busy_counter(),
            may_exit: self.housekeeping_stop.clone(),
        });
        workers::spawn(&crew, self.ctx.config.invocation.workers as usize)
    }

    /// The router, given the method table's `route`.
    fn router(&self) -> Router {
        let ctx = self.ctx.clone();
        Router {
            config: self.ctx.config.server.clone(),
            connections: self.ctx.connections.clone(),
            stats: self.ctx.stats.clone(),
            shutdown: self.ctx.shutdown.clone(),
            dispatch: Box::new(move |request, responder| methods::route(&ctx, request, responder)),
        }
    }
}

/// The running stages `drain_and_close` stops.
struct Stages<'a> {
    queue: &'a Receiver<Job>,
    workers: Vec<JoinHandle<()>>,
    router: RouterThreads,
    housekeeping_stop: &'a AtomicBool,
}

/// The shutdown sequence: refuse new work, let queued and running work
/// finish until the drain deadline, answer what is left -32003, close.
fn drain_and_close(ctx: &Arc<Context>, mut stages: Stages) {
    let drain = Duration::from_secs(ctx.config.server.drain_timeout_s);
    log::info!(
        "shutting down: draining {} queued and {} running requests (at most {} s)",
        ctx.dispatcher.depth(),
        ctx.dispatcher.busy_workers(),
        drain.as_secs()
    );
    ctx.shutdown.begin(drain);
    stages.router.stop_accepting();
    let deadline = Instant::now() + drain;
    while (ctx.dispatcher.depth() > 0 || ctx.dispatcher.busy_workers() > 0)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    if ctx.dispatcher.busy_workers() > 0 {
        log::warn!("drain timeout reached: cancelling running statements");
        ctx.db.watchdog.cancel_all(CancelReason::Shutdown);
    }
    ctx.dispatcher.close();
    stages.housekeeping_stop.store(true, Ordering::Release);
    join_workers(
        stages.workers,
        Instant::now().max(deadline) + WORKER_JOIN_GRACE,
    );
    for job in stages.queue.try_iter() {
        job.responder.reply(Err(RpcError::shutting_down()));
    }
    stages.router.finish(); // replies written (within WRITE_TIMEOUT), connections closed
    ctx.db.watchdog.stop();
    log::info!(
        "stopped: {} requests completed",
        ctx.stats.counters.completed.load(Ordering::Relaxed)
    );
}

/// Raises the soft open-file limit to the hard limit (each client
/// connection holds one descriptor) and warns when even that is below
/// `server.max_clients` plus the pool and a margin.
pub fn raise_fd_limit(config: &Config) {
    let needed = config.server.max_clients + config.db.pool_size * 2 + 64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    if limit.rlim_cur < needed {
        log::warn!(
            "open-file limit is {} but server.max_clients = {} needs about {needed}; \
             connections beyond the limit will fail to be accepted (raise `ulimit -n` or lower max_clients)",
            limit.rlim_cur,
            config.server.max_clients
        );
    }
}

/// How long after the drain deadline workers get to notice their cancelled
/// statements before the server exits without them.
const WORKER_JOIN_GRACE: Duration = Duration::from_secs(10);

fn join_workers(workers: Vec<JoinHandle<()>>, give_up: Instant) {
    while workers.iter().any(|w| !w.is_finished()) {
        if Instant::now() >= give_up {
            log::error!(
                "workers still busy {} s after the drain deadline (database unreachable?); exiting without them",
                WORKER_JOIN_GRACE.as_secs()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for w in workers {
        let _ = w.join();
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
