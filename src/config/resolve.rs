//! The values 0 stands for, filled in after validation: the pool size from
//! the physical cores ([`PoolSizeOrigin`] says how it was chosen), the
//! router threads from the cores, the workers from the pool sizes.

use super::cpu::physical_cores;
use super::sections::{DbConfig, InvocationConfig, RawConfig, ServerConfig};

/// How the effective pool size was chosen, for the start line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolSizeOrigin {
    /// `db.pool_size` was set to a non-zero value.
    Configured,
    /// `cores × 2 + effective_spindles`.
    Formula {
        /// Cores counted (physical unless `physical` is false).
        cores: u64,
        /// Whether `cores` are physical cores (false: logical fallback).
        physical: bool,
        /// `db.effective_spindles`.
        spindles: u64,
    },
}

/// Fills in every value 0 stands for; returns how the pool size was chosen.
pub(super) fn derived_values(raw: &mut RawConfig) -> PoolSizeOrigin {
    let origin = pool_size(&mut raw.db);
    router_threads(&mut raw.server);
    let pools = 1 + raw.db.replica_urls.len() as u64;
    workers(&mut raw.invocation, raw.db.pool_size * pools);
    origin
}

/// `server.router_threads = 0`: one event loop per core.
fn router_threads(server: &mut ServerConfig) {
    if server.router_threads == 0 {
        server.router_threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    }
}

/// `invocation.workers = 0`: one worker per pooled connection, the
/// standbys' pools (each of `db.pool_size`) counted with the primary's.
fn workers(invocation: &mut InvocationConfig, connections: u64) {
    if invocation.workers == 0 {
        invocation.workers = connections;
    }
}

/// `db.pool_size = 0`: physical cores × 2 + `db.effective_spindles`, from
/// the logical cores (with a warning) when the physical ones cannot be read.
fn pool_size(db: &mut DbConfig) -> PoolSizeOrigin {
    if db.pool_size != 0 {
        return PoolSizeOrigin::Configured;
    }
    let (cores, physical) = match physical_cores() {
        Some(n) => (n, true),
        None => {
            let logical = std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1);
            log::warn!(
                "cannot read the physical core count from /sys or /proc; \
                 sizing the pool from {logical} logical cores (set db.pool_size to choose)"
            );
            (logical, false)
        }
    };
    db.pool_size = super::limit::automatic_pool_size(
        db.active_limit,
        super::limit::formula(cores, db.effective_spindles),
    );
    PoolSizeOrigin::Formula {
        cores,
        physical,
        spindles: db.effective_spindles,
    }
}
