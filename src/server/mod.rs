//! The server: the lifecycle of [`Server`] (bind, join the connection
//! budget shared with the other instances, start the workers, the router
//! and the housekeeper, then on a stop signal drain within
//! `server.drain_timeout_s`, close the pool and leave the registry), and
//! the pipeline's stages as modules:
//!
//! - [`router`]: reads requests from client connections, answers what it can
//!   itself, and hands the rest to the method table;
//! - [`methods`]: the one method table and the methods;
//! - [`admission`]: the bounded FIFO queue and who may enter it;
//! - [`workers`]: the fixed pool of threads that run queued jobs;
//! - [`context`]: what the methods share;
//! - [`failure`]: how a database failure is answered on the wire;
//! - [`stats`], [`shutdown`]: counters and the lifecycle state;
//! - [`tls`]: the listeners' reloadable TLS configuration; [`signals`]:
//!   the thread that turns SIGINT/SIGTERM into a stop and SIGHUP into a reload;
//! - [`metrics`]: the Prometheus metrics and the `metrics.listen`
//!   listener (`/metrics`, `/health/live`, `/health/ready`).

pub mod admission;
pub mod context;
pub mod failure;
pub mod methods;
pub mod metrics;
pub mod router;
pub mod shutdown;
pub mod signals;
pub mod stats;
pub mod tls;
pub mod workers;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::cache::SessionListener;
use crate::auth::sessions::{SessionWriter, Sessions};
use crate::auth::LoginLimiter;
use crate::cluster::{Cluster, Housekeeper, Identity, JoinError, Timing};
use crate::config::Config;
use crate::db::catalog::CatalogCache;
use crate::db::idempotency::Sweep;
use crate::db::replica::monitor::Monitor;
use crate::db::replica::Replicas;
use crate::db::{self, CancelReason, Database, Health};
use crate::protocol::framing::Wire;
use crate::protocol::RpcError;
use admission::{Dispatcher, Job, Limits};
use context::Context;
use router::{RouterHandles, RouterThreads};
use stats::Stats;
use tls::ServerTls;
use workers::Crew;

/// Binds `addr` (the port is taken; connections are refused until
/// [`listen`] is called, once the instance has joined the budget).
fn bind_listener(addr: &SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&(*addr).into())?;
    Ok(socket.into())
}

/// Starts accepting on a bound listener, with the largest accept backlog
/// the kernel allows (it caps it at `net.core.somaxconn`). std's fixed
/// backlog of 128 overflows when hundreds of clients connect at once, also
/// clients beyond `max_clients` that are to get their -32005 line, and an
/// overflowing accept queue can answer a client's first request with a reset.
fn listen(listener: &TcpListener) -> io::Result<()> {
    socket2::SockRef::from(listener).listen(65_535)
}

/// A bound, not yet running server.
pub struct Server {
    ctx: Arc<Context>,
    /// Each listener and the wire its connections speak.
    listeners: Vec<(TcpListener, Wire)>,
    metrics_listener: Option<TcpListener>,
    queue: Receiver<Job>,
    /// Set after the drain: idle workers and the housekeeper stop.
    housekeeping_stop: Arc<AtomicBool>,
    /// Keeps the registry and runs the background chores (started by [`Server::join`]).
    housekeeper: Option<Housekeeper>,
    /// The listeners' TLS configuration (see [`Server::set_tls`]).
    tls: Option<Arc<ServerTls>>,
}

impl Server {
    /// Binds the listen addresses (taken, but not accepting until
    /// [`Server::run`]: a client that can connect finds an instance that
    /// has joined the budget) and builds the pool (without waiting for the
    /// database).
    pub fn bind(config: Config) -> io::Result<Server> {
        let listeners = config
            .listen_addrs
            .iter()
            .map(|addr| bind_listener(addr).map_err(|e| named("server.listen", addr, e)))
            .map(|l| l.map(|l| (l, Wire::Stream)))
            .chain(config.http_listen_addrs.iter().map(|addr| {
                bind_listener(addr)
                    .map(|l| (l, Wire::Http))
                    .map_err(|e| named("server.http_listen", addr, e))
            }))
            .collect::<io::Result<Vec<_>>>()?;
        let metrics_listener = match config.metrics.listen.as_str() {
            "" => None,
            addr => Some(TcpListener::bind(addr).map_err(|e| named("metrics.listen", addr, e))?),
        };
        let port = listeners[0].0.local_addr()?.port();
        let instance = format!("{}:{port}", hostname());
        let cluster = new_cluster(&config, &listeners, port)?;
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
        let share = cluster.share().clone();
        let connector = db::Connector::new(&config);
        let pool = db::build_pool(
            &config,
            connector,
            health.clone(),
            share.clone(),
            cluster.clone(),
        );
        let limiter = db::Limiter::new(
            config.db.active_limit,
            config.active_limit_start() as usize,
            config.db.pool_size as usize,
        );
        share.attach_limiter(limiter.clone());
        let db = Database::new(pool, health, acquire_timeout, share, limiter);
        let replicas = Arc::new(Replicas::new(&config, cluster.clone()));
        cluster.attach_standbys(replicas.standby_shares());
        let ping_result = methods::ping_result(&instance, &config.auth.mode.to_string());
        let ctx = Arc::new(Context {
            ping_result,
            instance,
            db,
            replicas,
            cluster,
            catalog: CatalogCache::new(&config.db.api_schema),
            sessions: Arc::new(Sessions::new(&config.auth)),
            config,
            stats,
            shutdown: Arc::default(),
            dispatcher,
            connections: Arc::default(),
            login_limiter: LoginLimiter::default(),
        });
        let housekeeping_stop = Arc::new(AtomicBool::new(false));
        let housekeeper = Some(housekeeper(&ctx, &housekeeping_stop));
        Ok(Server {
            ctx,
            listeners,
            metrics_listener,
            queue,
            housekeeping_stop,
            housekeeper,
            tls: None,
        })
    }

    /// Joins the connection budget shared by the instances on this
    /// database (schema `blitz` is migrated first). A database that does
    /// not answer is no error: the instance starts with no connections and
    /// joins once it does. `Err`: the budget has no room for this instance
    /// (the message names the figures and who holds the budget).
    pub fn join(&mut self) -> Result<(), String> {
        let housekeeper = self.housekeeper.as_mut().expect("join before run");
        match housekeeper.start() {
            Ok(()) => Ok(()),
            Err(JoinError::NoRoom(message) | JoinError::Refused(message)) => Err(message),
            Err(e) => Err(format!("cannot join the instance registry: {e:?}")),
        }
    }

    /// Makes `server.listen` and `server.http_listen` speak TLS with `tls`
    /// (the configuration SIGHUP reloads); without it they are plaintext.
    pub fn set_tls(&mut self, tls: Option<Arc<ServerTls>>) {
        self.tls = tls;
    }

    /// The addresses of `wire` actually bound (port 0 resolved).
    fn addrs_of(&self, wire: Wire) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|(_, w)| *w == wire)
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// The TCP (`server.listen`) addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs_of(Wire::Stream)
    }

    /// The shared context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Serves until `stop` receives (or disconnects), then drains and closes.
    pub fn run(mut self, stop: &Receiver<()>) -> io::Result<()> {
        for (listener, _) in &self.listeners {
            listen(listener)?;
        }
        let ctx = &self.ctx;
        let workers = self.spawn_workers();
        let monitors = self.spawn_monitors()?;
        let housekeeper = self.housekeeper.take().expect("run once").spawn();
        let addrs = self.local_addrs();
        let http_note = match self.addrs_of(Wire::Http).as_slice() {
            [] => String::new(),
            http => format!("; JSON-RPC over HTTP on {}", join(http)),
        };
        let metrics = self.spawn_metrics();
        let router = Arc::new(self.router());
        let listeners = self.listeners;
        let threads = ctx.config.server.router_threads as usize;
        let router = match router::start(router, listeners, threads) {
            Ok(router) => router,
            Err(e) => {
                log::error!("cannot start the router threads: {e}");
                return Ok(());
            }
        };
        let metrics_note = match &metrics {
            Some(m) => format!("; metrics and health on http://{}/metrics", m.addr()),
            None => String::new(),
        };
        log::info!(
            "blitz-server {} started: pool_size={}, workers={}, router_threads={}, queue_capacity={}, listening on {}{http_note}{metrics_note}",
            env!("CARGO_PKG_VERSION"),
            ctx.config.pool_size_explained(),
            ctx.config.invocation.workers,
            threads,
            ctx.config.invocation.queue_capacity,
            join(&addrs)
        );
        let _ = stop.recv();
        let stages = Stages {
            queue: &self.queue,
            workers,
            router,
            housekeeping_stop: &self.housekeeping_stop,
        };
        drain_and_close(ctx, stages);
        let _ = housekeeper.join(); // it closes the pool and leaves the registry
        for monitor in monitors {
            let _ = monitor.join();
        }
        if let Some(m) = metrics {
            m.stop();
        }
        Ok(())
    }

    /// The metrics/health listener, if `metrics.listen` is set; a failure
    /// to start its thread is logged and the server serves without it.
    fn spawn_metrics(&self) -> Option<metrics::MetricsListener> {
        let listener = self.metrics_listener.as_ref()?.try_clone().ok()?;
        let (gauges, ready, probe) = (self.ctx.clone(), self.ctx.clone(), self.ctx.clone());
        let endpoints = metrics::Endpoints {
            metrics: Box::new(move || {
                let catalog = gauges.catalog.current();
                gauges.stats.metrics.targets.set(target_samples(&gauges));
                (gauges.stats.metrics).render(&gauge_values(&gauges), catalog.as_deref())
            }),
            ready: Box::new(move || readiness(&ready)),
            tick: Box::new(move || probe.db.probe()),
        };
        match metrics::spawn_listener(listener, endpoints) {
            Ok(m) => Some(m),
            Err(e) => {
                log::error!("cannot start the metrics listener ({e}); serving without it");
                None
            }
        }
    }

    /// One monitor thread per standby; after each probe its connection
    /// keeps this instance's part of that standby's budget
    /// ([`Cluster::keep_standby`]: its lock, and the reaping of dead
    /// instances' sessions there).
    fn spawn_monitors(&self) -> io::Result<Vec<JoinHandle<()>>> {
        let ctx = &self.ctx;
        let cluster = ctx.cluster.clone();
        let on_probe: db::replica::monitor::OnProbe =
            Arc::new(move |standby, client| cluster.keep_standby(&standby.name, client));
        (0..ctx.replicas.list().len())
            .map(|index| {
                Monitor {
                    replicas: ctx.replicas.clone(),
                    index,
                    probe_timeout: Duration::from_millis(ctx.config.db.heartbeat_interval_ms),
                    session_idle: Duration::from_secs(ctx.config.auth.session_idle_timeout_s),
                    on_probe: on_probe.clone(),
                    stop: self.housekeeping_stop.clone(),
                }
                .spawn()
            })
            .collect()
    }

    /// The workers, each given the method table's `run_job`.
    fn spawn_workers(&self) -> Vec<JoinHandle<()>> {
        let ctx = self.ctx.clone();
        let crew = Arc::new(Crew {
            queue: self.queue.clone(),
            run: Arc::new(move |job| methods::run_job(&ctx, job)),
            stats: self.ctx.stats.clone(),
            workforce: self.ctx.dispatcher.workforce(),
            limiter: self.ctx.db.limiter().clone(),
            may_exit: self.housekeeping_stop.clone(),
        });
        workers::spawn(&crew, self.ctx.config.invocation.workers as usize)
    }

    /// The router, given the method table's `route`.
    fn router(&self) -> RouterHandles {
        let ctx = self.ctx.clone();
        RouterHandles {
            config: self.ctx.config.server.clone(),
            connections: self.ctx.connections.clone(),
            stats: self.ctx.stats.clone(),
            shutdown: self.ctx.shutdown.clone(),
            route: Box::new(move |request, responder| methods::route(&ctx, request, responder)),
            tls: self.tls.clone(),
        }
    }
}

/// This instance's membership, not joined yet: id `host:port-xxxx`, its
/// listen addresses, its configured pool.
fn new_cluster(
    config: &Config,
    listeners: &[(TcpListener, Wire)],
    port: u16,
) -> io::Result<Arc<Cluster>> {
    let addresses = listeners
        .iter()
        .filter(|(_, wire)| *wire == Wire::Stream)
        .map(|(l, _)| l.local_addr().map(|a| a.to_string()))
        .collect::<io::Result<Vec<_>>>()?
        .join(",");
    let me = Identity {
        id: Cluster::new_id(&hostname(), port),
        addresses,
        pool_size: config.db.pool_size,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let timing = Timing {
        interval: Duration::from_millis(config.db.heartbeat_interval_ms),
        dead_after: Duration::from_millis(config.db.heartbeat_timeout_ms),
    };
    Ok(Cluster::new(me, timing, config.db.reserved_connections))
}

/// The housekeeper of `ctx`: on its own connection (`application_name`
/// `blitz-housekeeping`, counted in the budget), it migrates schema
/// `blitz`, keeps the registry, writes session activity and sweeps expired
/// idempotency records; it stops when `stop` is set (after the drain).
fn housekeeper(ctx: &Arc<Context>, stop: &Arc<AtomicBool>) -> Housekeeper {
    let mut connect = db::Connector::new(&ctx.config);
    connect.settings.application_name("blitz-housekeeping");
    let sessions = ctx.sessions.clone();
    let (pool, share) = (ctx.db.pool.clone(), ctx.db.share().clone());
    let standbys: Vec<_> = (ctx.replicas.list().iter())
        .map(|r| (r.db.pool.clone(), r.db.share().clone()))
        .collect();
    let stop = stop.clone();
    let mut housekeeper = Housekeeper::new(
        ctx.cluster.clone(),
        connect,
        Box::new(move |client| sessions.ensure_schema(client)),
        Box::new(move || {
            db::trim(&pool, &share);
            for (pool, share) in &standbys {
                db::trim(pool, share);
            }
        }),
        Box::new(move || stop.load(Ordering::Acquire)),
    );
    housekeeper.add(Box::new(SessionWriter::new(ctx.sessions.clone())));
    housekeeper.add(Box::new(SessionListener::new(ctx.sessions.cache().clone())));
    housekeeper.add(Box::new(Sweep::new(
        ctx.config.invocation.idempotency_ttl_s,
    )));
    housekeeper
}

/// `a, b, c`.
fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An error binding `addr` of config key `key`, naming both.
fn named(key: &str, addr: impl std::fmt::Display, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{addr} ({key}): {e}"))
}

/// The gauges of `/metrics`, read now.
fn gauge_values(ctx: &Context) -> metrics::Gauges {
    let pool = ctx.db.pool.state();
    let (hold, baseline) = ctx.db.limiter().hold_times();
    let seconds = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64());
    metrics::Gauges {
        queue_depth: ctx.dispatcher.depth() as u64,
        queue_capacity: ctx.dispatcher.capacity() as u64,
        workers: ctx.config.invocation.workers,
        workers_busy: ctx.dispatcher.busy_workers() as u64,
        pool_size: ctx.config.db.pool_size,
        pool_share: ctx.db.share().limit() as u64,
        pool_idle: u64::from(pool.idle_connections),
        pool_in_use: u64::from(pool.connections - pool.idle_connections),
        active_limit: ctx.db.limiter().current() as u64,
        active_limit_settled: ctx.db.limiter().settled() as u64,
        hold_seconds: seconds(hold),
        hold_baseline_seconds: seconds(baseline),
        tuner_noise_ratio: ctx.db.limiter().noise().unwrap_or(0.0),
        connections_open: ctx.connections.len() as u64,
        database_up: u64::from(!ctx.db.health.is_down()),
        draining: u64::from(ctx.shutdown.is_stopping()),
    }
}

/// The calls per database target and the standbys' lag, read now.
fn target_samples(ctx: &Context) -> Vec<metrics::targets::TargetSample> {
    let primary = metrics::targets::TargetSample {
        target: "primary".into(),
        calls: ctx.replicas.primary_calls(),
        replica: None,
    };
    let standbys = ctx
        .replicas
        .list()
        .iter()
        .map(|r| metrics::targets::TargetSample {
            target: r.standby.name.clone(),
            calls: r.calls(),
            replica: Some((
                r.lag_ms() as f64 / 1000.0,
                r.state() == db::replica::State::Up,
            )),
        });
    std::iter::once(primary).chain(standbys).collect()
}

/// `/health/ready`: the database answers and the server is not draining.
fn readiness(ctx: &Context) -> Result<(), String> {
    if ctx.shutdown.is_stopping() {
        return Err("draining: the server is shutting down".into());
    }
    if ctx.db.health.is_down() {
        return Err("database unavailable: the last attempt to reach it failed".into());
    }
    Ok(())
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
        for replica in ctx.replicas.list() {
            replica.db.watchdog.cancel_all(CancelReason::Shutdown);
        }
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
    for replica in ctx.replicas.list() {
        replica.db.watchdog.stop();
    }
    log::info!(
        "stopped: {} requests completed",
        ctx.stats.metrics.completed()
    );
}

/// Raises the soft open-file limit to the hard limit (each client
/// connection holds one descriptor) and warns when even that is below
/// `server.max_clients` plus the pool and a margin.
pub fn raise_fd_limit(config: &Config) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource::RLIMIT_NOFILE};
    let pools = 1 + config.db.replica_urls.len() as u64;
    let needed = config.server.max_clients + config.db.pool_size * 2 * pools + 64;
    let Ok((mut soft, hard)) = getrlimit(RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard && setrlimit(RLIMIT_NOFILE, hard, hard).is_ok() {
        soft = hard;
    }
    if soft < needed {
        log::warn!(
            "open-file limit is {soft} but server.max_clients = {} needs about {needed}; \
             connections beyond the limit will fail to be accepted (raise `ulimit -n` or lower max_clients)",
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
