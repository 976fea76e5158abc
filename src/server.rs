//! The server as a whole: the shared [`Context`] every thread sees, and the
//! lifecycle of [`Server`]: bind, start the workers and accept loops, then
//! on a stop signal drain within `server.drain_timeout_s` and close.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::LoginLimiter;
use crate::config::Config;
use crate::connection::Connection;
use crate::db::{self, Health, Pool};
use crate::dispatch::{self, Dispatcher, Job};
use crate::protocol::RpcError;
use crate::router;
use crate::services::api::CatalogCache;
use crate::sessions::{self, Sessions};
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::watchdog::{CancelReason, Watchdog};

/// Everything the router, the workers and the services share.
pub struct Context {
    /// The effective configuration.
    pub config: Config,
    /// This instance's name (`host:port`), reported in -32001 and `sys.status`.
    pub instance: String,
    /// Counters and latencies.
    pub stats: Stats,
    /// Lifecycle state.
    pub shutdown: Shutdown,
    /// The bounded queue.
    pub dispatcher: Dispatcher,
    /// The database connections.
    pub pool: Pool,
    /// Cancels statements at their deadline.
    pub watchdog: Watchdog,
    /// Database up/down, logged once per outage.
    pub health: Arc<Health>,
    /// The `api.` functions known from pg_proc.
    pub catalog: CatalogCache,
    /// Open client connections.
    pub connections: Registry,
    /// Session state: schema readiness, `last_used` batching.
    pub sessions: Sessions,
    /// Failed logins per user and peer address.
    pub login_limiter: LoginLimiter,
    workers_may_exit: AtomicBool,
}

impl Context {
    /// `retry_after_ms` suggested with -32003: another instance is the
    /// better target, so this only paces a client that has no other.
    pub fn retry_after_shutdown_ms(&self) -> u64 {
        1000
    }

    /// Whether idle workers should stop (after the drain).
    pub fn workers_may_exit(&self) -> bool {
        self.workers_may_exit.load(Ordering::Acquire)
    }
}

/// The open client connections, for `max_clients` and for closing them all
/// at shutdown.
#[derive(Default)]
pub struct Registry {
    open: Mutex<HashMap<u64, Arc<Connection>>>,
}

impl Registry {
    /// Registers `conn` unless `max` are already open.
    pub fn try_add(&self, conn: &Arc<Connection>, max: usize) -> bool {
        let mut open = self.open.lock();
        if open.len() >= max {
            return false;
        }
        open.insert(conn.number, conn.clone());
        true
    }

    /// Forgets a connection whose reader has finished.
    pub fn remove(&self, number: u64) {
        self.open.lock().remove(&number);
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.open.lock().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Unbinds session `key` from every open connection (after a logout).
    pub fn unbind_session(&self, key: &str) {
        let open: Vec<_> = self.open.lock().values().cloned().collect();
        for conn in open {
            conn.unbind_session(key);
        }
    }

    fn close_all(&self) {
        let open: Vec<_> = self.open.lock().values().cloned().collect();
        for conn in open {
            // Each writer at work is bounded by its own write timeout.
            conn.wait_written(Instant::now() + crate::connection::WRITE_TIMEOUT);
            conn.close();
        }
    }
}

/// Binds `addr` with an accept backlog sized for a burst of `max_clients`
/// connections (the kernel caps it at `net.core.somaxconn`). std's fixed
/// backlog of 128 overflows when hundreds of clients connect at once, and an
/// overflowing accept queue can answer a client's first request with a reset.
fn bind_listener(addr: &SocketAddr, max_clients: u64) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&(*addr).into())?;
    socket.listen(max_clients.clamp(128, 65_535) as i32)?;
    Ok(socket.into())
}

/// A bound, not yet running server.
pub struct Server {
    ctx: Arc<Context>,
    listeners: Vec<TcpListener>,
    queue: Receiver<Job>,
}

impl Server {
    /// Binds the listen addresses and builds the pool (without waiting for
    /// the database).
    pub fn bind(config: Config) -> io::Result<Server> {
        let listeners = config
            .listen_addrs
            .iter()
            .map(|addr| bind_listener(addr, config.server.max_clients))
            .collect::<io::Result<Vec<_>>>()?;
        let port = listeners[0].local_addr()?.port();
        let (dispatcher, queue) = Dispatcher::new(config.invocation.queue_capacity as usize);
        let health = Arc::new(Health::default());
        let sessions = Sessions::new(&config.auth);
        let ctx = Arc::new(Context {
            instance: format!("{}:{port}", hostname()),
            pool: db::build_pool(&config, health.clone()),
            catalog: CatalogCache::new(&config.db.api_schema),
            config,
            stats: Stats::new(),
            shutdown: Shutdown::default(),
            dispatcher,
            watchdog: Watchdog::start(),
            health,
            connections: Registry::default(),
            sessions,
            login_limiter: LoginLimiter::default(),
            workers_may_exit: AtomicBool::new(false),
        });
        Ok(Server {
            ctx,
            listeners,
            queue,
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
        let workers =
            dispatch::spawn_workers(ctx, &self.queue, ctx.config.invocation.workers as usize);
        let session_writer = sessions::spawn_session_writer(ctx.clone());
        let addrs = self.local_addrs();
        let acceptors: Vec<JoinHandle<()>> = self
            .listeners
            .into_iter()
            .map(|l| router::spawn_acceptor(ctx.clone(), l))
            .collect();
        log::info!(
            "blitz-server {} started: pool_size={}, workers={}, queue_capacity={}, listening on {}",
            env!("CARGO_PKG_VERSION"),
            ctx.config.pool_size_explained(),
            ctx.config.invocation.workers,
            ctx.config.invocation.queue_capacity,
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = stop.recv();
        drain_and_close(ctx, &self.queue, workers, acceptors, &addrs);
        let _ = session_writer.join();
    }
}

/// The shutdown sequence: refuse new work, let queued and running work
/// finish until the drain deadline, answer what is left -32003, close.
fn drain_and_close(
    ctx: &Arc<Context>,
    queue: &Receiver<Job>,
    workers: Vec<JoinHandle<()>>,
    acceptors: Vec<JoinHandle<()>>,
    addrs: &[SocketAddr],
) {
    let drain = Duration::from_secs(ctx.config.server.drain_timeout_s);
    log::info!(
        "shutting down: draining {} queued and {} running requests (at most {} s)",
        ctx.dispatcher.depth(),
        ctx.dispatcher.busy_workers(),
        drain.as_secs()
    );
    ctx.shutdown.begin(drain);
    for addr in addrs {
        let _ = TcpStream::connect_timeout(addr, Duration::from_millis(200)); // wakes accept()
    }
    for a in acceptors {
        let _ = a.join();
    }
    let deadline = Instant::now() + drain;
    while (ctx.dispatcher.depth() > 0 || ctx.dispatcher.busy_workers() > 0)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    if ctx.dispatcher.busy_workers() > 0 {
        log::warn!("drain timeout reached: cancelling running statements");
        ctx.watchdog.cancel_all(CancelReason::Shutdown);
    }
    ctx.dispatcher.close();
    ctx.workers_may_exit.store(true, Ordering::Release);
    join_workers(workers, Instant::now().max(deadline) + WORKER_JOIN_GRACE);
    for job in queue.try_iter() {
        job.responder
            .reply(Err(RpcError::shutting_down(ctx.retry_after_shutdown_ms())));
    }
    ctx.connections.close_all();
    ctx.watchdog.stop();
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
