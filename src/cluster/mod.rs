//! Scale-out: the instances that share one database, and the one
//! connection budget they share.
//!
//! - [`registry`]: table `blitz.instances`; join, heartbeat rounds,
//!   removal of dead instances, leave; liveness by advisory locks.
//! - [`budget`]: the split of `max_connections − db.reserved_connections`
//!   among the live instances, in proportion to their configured pools.
//! - this instance's part, the [`Share`], enforced by a gate in front of
//!   the pool and a cap on the connections it opens, is pool plumbing and
//!   lives in `db`; the cluster sets it and enlists the pool's new
//!   connections ([`Registration`]).
//! - [`housekeeper`]: the one thread, on the one housekeeping connection,
//!   that keeps the registry (and runs the other background chores).
//!
//! The invariant: the connections all live instances hold (pools plus one
//! housekeeping connection each) never exceed the budget. Every instance
//! holds at most its registered share plus its housekeeping connection
//! (its share is raised in the registry before it may open more, and
//! lowered only after it closed down to the new figure), and registered
//! shares only grow into room that is free in the registry, under one lock.
//! A dead instance's share is handed on only once PostgreSQL shows that its
//! sessions are gone (see [`registry`]).
//!
//! This module speaks to PostgreSQL through `postgres` clients handed to
//! it; it uses `db` (the [`Share`], the [`Chore`](crate::db::Chore)s its
//! housekeeper runs) and `db` does not know it.

pub mod budget;
pub mod housekeeper;
pub mod registry;

use std::sync::Arc;

use parking_lot::Mutex;
use postgres::Client;
use serde_json::{json, Value};

pub use housekeeper::Housekeeper;
pub use registry::{Identity, JoinError, Standing, Timing};

use crate::db::{Registration, Share};

/// This instance's membership: who it is, its share, and how the budget stood last.
#[derive(Debug)]
pub struct Cluster {
    me: Identity,
    timing: Timing,
    reserved: u64,
    share: Arc<Share>,
    standing: Mutex<Standing>,
}

impl Cluster {
    /// An instance that has not joined yet (share 0).
    pub fn new(me: Identity, timing: Timing, reserved: u64) -> Arc<Cluster> {
        Arc::new(Cluster {
            me,
            timing,
            reserved,
            share: Share::new(),
            standing: Mutex::new(Standing::default()),
        })
    }

    /// A unique id for an instance listening on `port`: `host:port-xxxx`.
    pub fn new_id(host: &str, port: u16) -> String {
        format!("{host}:{port}-{:04x}", fastrand::u16(..))
    }

    /// This instance's id in the registry.
    pub fn id(&self) -> &str {
        &self.me.id
    }

    /// The local allowance the pool and the workers obey.
    pub fn share(&self) -> &Arc<Share> {
        &self.share
    }

    /// The heartbeat interval and dead age.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Joins the registry on `client` (the housekeeping connection).
    pub fn join(&self, client: &mut Client) -> Result<(), JoinError> {
        let (key, standing) = registry::join(client, &self.me, self.reserved, self.timing)?;
        self.share.set_key(key);
        self.adopt(standing.clone());
        log::info!(
            "instance {} joined: share {} of pool {} (fair share {}); budget {} = max_connections {} - db.reserved_connections {}, {} instances",
            self.me.id,
            self.share.limit(),
            self.me.pool_size,
            standing.target,
            standing.budget,
            standing.max_connections,
            self.reserved,
            standing.instances
        );
        Ok(())
    }

    /// Takes this instance's lock on a new connection of its own and
    /// checks it is still registered; `false` when it is not.
    pub fn enlist(&self, client: &mut Client) -> Result<bool, postgres::Error> {
        match self.share.key() {
            0 => Ok(false),
            key => registry::enlist(client, key),
        }
    }

    /// Applies the standing of a join or a round: the limit becomes the
    /// smaller of the fair share and the registered share.
    fn adopt(&self, standing: Standing) {
        let limit = standing.target.min(standing.registered) as usize;
        self.share.set_limit(limit);
        *self.standing.lock() = standing;
    }

    /// Whether the limit was lowered below the registered share and the
    /// release waits for connections to close.
    fn releasing(&self) -> bool {
        self.standing.lock().registered > self.share.limit() as u64
    }

    /// Forgets the registration (the registry no longer has it).
    fn lost(&self) {
        self.share.set_limit(0);
        self.share.set_key(0);
        self.standing.lock().registered = 0;
    }

    /// The `sys.status` member: this instance's share and the budget.
    pub fn status(&self) -> Value {
        let s = self.standing.lock().clone();
        json!({
            "id": self.me.id,
            "registered": self.share.key() != 0,
            "share": self.share.limit(),
            "registered_share": s.registered,
            "fair_share": s.target,
            "open": self.share.open(),
            "in_use": self.share.held(),
            "budget": s.budget,
            "max_connections": s.max_connections,
            "reserved_connections": self.reserved,
            "instances": s.instances,
        })
    }

    /// The live instances (`sys.instances`), read on `client`.
    pub fn instances(
        &self,
        client: &mut impl postgres::GenericClient,
    ) -> Result<Value, postgres::Error> {
        registry::list(client, self.timing.dead_after)
    }
}

impl Registration for Cluster {
    fn enlist(&self, client: &mut Client) -> Result<bool, postgres::Error> {
        Cluster::enlist(self, client)
    }
}
