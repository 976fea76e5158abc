//! The open client connections: the registry the acceptor checks
//! `max_clients` against, that a logout unbinds a session from, and whose
//! counts `sys.status` reads.
//!
//! The counts are kept as connections come and go (the number open) and
//! as replies are queued and written (the [`QueuedBytes`] gauge every
//! outbox updates), so reading them costs the same with ten connections
//! or ten thousand and takes no lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::connection::Connection;
use super::outbox::QueuedBytes;

/// The open client connections and their counts.
#[derive(Default)]
pub struct Registry {
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    /// How many are in `open`, readable without its lock.
    count: AtomicUsize,
    /// Reply bytes queued in the outboxes of the server's connections.
    queued_bytes: QueuedBytes,
}

impl Registry {
    /// Registers `conn` unless `max` are already open.
    pub fn try_add(&self, conn: &Arc<Connection>, max: usize) -> bool {
        let mut open = self.open.lock();
        if open.len() >= max {
            return false;
        }
        open.insert(conn.number, conn.clone());
        self.count.store(open.len(), Ordering::Relaxed);
        true
    }

    /// Forgets a connection its loop has closed.
    pub fn remove(&self, number: u64) {
        let mut open = self.open.lock();
        open.remove(&number);
        self.count.store(open.len(), Ordering::Relaxed);
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The gauge the outboxes of the server's connections count their
    /// bytes in (given to each connection with its handles).
    pub fn queued_bytes(&self) -> QueuedBytes {
        self.queued_bytes.clone()
    }

    /// Reply bytes queued in the outboxes of all connections.
    pub fn outbox_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    /// Unbinds session `key` from every open connection (after a logout).
    pub fn unbind_session(&self, key: &str) {
        let open: Vec<_> = self.open.lock().values().cloned().collect();
        for conn in open {
            conn.unbind_session(key);
        }
    }
}
