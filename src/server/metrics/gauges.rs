//! The gauges of `/metrics`: [`Gauges`], the values read from their
//! sources (queue, workers, pool, concurrency limit, connections, health)
//! at each scrape, and
//! the prometheus-client gauges they are set into.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Gauge values read from their sources when `/metrics` is scraped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// Jobs waiting in the queue.
    pub queue_depth: u64,
    /// The queue's capacity.
    pub queue_capacity: u64,
    /// Worker threads.
    pub workers: u64,
    /// Workers running a job.
    pub workers_busy: u64,
    /// The configured `db.pool_size`.
    pub pool_size: u64,
    /// Connections of the pool this instance may hold now (its share of
    /// the cluster's connection budget).
    pub pool_share: u64,
    /// Pooled connections open and idle.
    pub pool_idle: u64,
    /// Pooled connections lent to a worker.
    pub pool_in_use: u64,
    /// The concurrency limit in force (`db.active_limit`, within the share).
    pub active_limit: u64,
    /// The limit the tuner keeps between its probes (within the share).
    pub active_limit_settled: u64,
    /// The mean connection hold time of the tuner's last window, seconds.
    pub hold_seconds: f64,
    /// The tuner's baseline: the long-run minimum of that mean, seconds.
    pub hold_baseline_seconds: f64,
    /// The tuner's measured noise per window (0.05: 5 %; 0 when fixed or unknown).
    pub tuner_noise_ratio: f64,
    /// Client connections open.
    pub connections_open: u64,
    /// 1 while the database answers, else 0.
    pub database_up: u64,
    /// 1 while the server drains for shutdown, else 0.
    pub draining: u64,
}

/// The gauges, registered once and set at each scrape.
#[derive(Default)]
pub struct GaugeSet {
    queue_depth: Gauge,
    queue_capacity: Gauge,
    workers: Gauge,
    workers_busy: Gauge,
    pool_size: Gauge,
    pool_share: Gauge,
    pool_idle: Gauge,
    pool_in_use: Gauge,
    active_limit: Gauge,
    active_limit_settled: Gauge,
    hold_seconds: Gauge<f64, AtomicU64>,
    hold_baseline_seconds: Gauge<f64, AtomicU64>,
    tuner_noise_ratio: Gauge<f64, AtomicU64>,
    connections_open: Gauge,
    database_up: Gauge,
    draining: Gauge,
}

impl GaugeSet {
    /// Registers every gauge in `r`.
    pub fn register(&self, r: &mut Registry) {
        let g = |r: &mut Registry, name: &str, help: &str, gauge: &Gauge| {
            r.register(name, help, gauge.clone())
        };
        g(
            r,
            "queue_depth",
            "Requests waiting in the queue",
            &self.queue_depth,
        );
        g(
            r,
            "queue_capacity",
            "Capacity of the queue (invocation.queue_capacity)",
            &self.queue_capacity,
        );
        g(r, "workers", "Worker threads", &self.workers);
        g(
            r,
            "workers_busy",
            "Workers running a request",
            &self.workers_busy,
        );
        g(
            r,
            "pool_size",
            "Configured database pool size (db.pool_size)",
            &self.pool_size,
        );
        g(
            r,
            "pool_share",
            "Pooled connections this instance may hold now (its share of the connection budget)",
            &self.pool_share,
        );
        g(
            r,
            "pool_connections_idle",
            "Pooled database connections open and idle",
            &self.pool_idle,
        );
        g(
            r,
            "pool_connections_in_use",
            "Pooled database connections lent to a worker",
            &self.pool_in_use,
        );
        g(
            r,
            "db_active_limit",
            "Calls that may hold a database connection at once (db.active_limit, within the share)",
            &self.active_limit,
        );
        g(
            r,
            "db_active_limit_settled",
            "The limit the concurrency tuner keeps and comes back to after its probes (within the share)",
            &self.active_limit_settled,
        );
        r.register(
            "db_hold_seconds",
            "Mean connection hold time of the concurrency tuner's last window",
            self.hold_seconds.clone(),
        );
        r.register(
            "db_hold_baseline_seconds",
            "The tuner's baseline: long-run minimum of the mean connection hold time",
            self.hold_baseline_seconds.clone(),
        );
        r.register(
            "db_tuner_noise_ratio",
            "The concurrency tuner's measured noise: one window's relative throughput spread (0 when fixed or not yet measured)",
            self.tuner_noise_ratio.clone(),
        );
        g(
            r,
            "connections_open",
            "Client connections open",
            &self.connections_open,
        );
        g(
            r,
            "database_up",
            "1 while the database answers, else 0",
            &self.database_up,
        );
        g(
            r,
            "draining",
            "1 while the server drains for shutdown, else 0",
            &self.draining,
        );
    }

    /// Sets every gauge to its value in `v`.
    pub fn set(&self, v: &Gauges) {
        let set = |g: &Gauge, n: u64| g.set(i64::try_from(n).unwrap_or(i64::MAX));
        set(&self.queue_depth, v.queue_depth);
        set(&self.queue_capacity, v.queue_capacity);
        set(&self.workers, v.workers);
        set(&self.workers_busy, v.workers_busy);
        set(&self.pool_size, v.pool_size);
        set(&self.pool_share, v.pool_share);
        set(&self.pool_idle, v.pool_idle);
        set(&self.pool_in_use, v.pool_in_use);
        set(&self.active_limit, v.active_limit);
        set(&self.active_limit_settled, v.active_limit_settled);
        self.hold_seconds.set(v.hold_seconds);
        self.hold_baseline_seconds.set(v.hold_baseline_seconds);
        self.tuner_noise_ratio.set(v.tuner_noise_ratio);
        set(&self.connections_open, v.connections_open);
        set(&self.database_up, v.database_up);
        set(&self.draining, v.draining);
    }
}
