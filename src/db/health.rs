//! Whether the database answers: up/down, logged once per outage (not per
//! request), with an epoch that tells connections opened before an outage.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Whether the database answers, logged once per outage (not per request).
#[derive(Debug, Default)]
pub struct Health {
    epoch: AtomicU64,
    down: AtomicBool,
    since: parking_lot::Mutex<Option<Instant>>,
    /// Whether the owner logs the changes itself (a standby's monitor).
    silent: bool,
}

impl Health {
    /// A health that logs nothing: its owner logs the changes (a
    /// standby's, whose monitor logs its states).
    pub fn silent() -> Health {
        Health {
            silent: true,
            ..Health::default()
        }
    }

    /// Records a failure to reach the database; logs when an outage starts.
    pub fn report_down(&self, detail: &str) {
        if !self.down.swap(true, Ordering::AcqRel) {
            self.epoch.fetch_add(1, Ordering::AcqRel);
            *self.since.lock() = Some(Instant::now());
            if self.silent {
                return;
            }
            log::warn!("database unavailable: {detail}; answering -32004 until it is back");
        }
    }

    /// Records a successful statement; logs when an outage ends.
    pub fn report_up(&self) {
        if self.down.load(Ordering::Acquire) && self.down.swap(false, Ordering::AcqRel) {
            let lasted = self
                .since
                .lock()
                .take()
                .map(|t| t.elapsed().as_secs_f64())
                .unwrap_or(0.0);
            if self.silent {
                return;
            }
            log::info!("database available again after {lasted:.1} s");
        }
    }

    /// Outages seen so far; connections opened before the current value
    /// was reached predate an outage.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether the last attempt failed.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }
}
