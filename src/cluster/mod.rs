//! Scale-out: the instances that share one database, and the connection
//! budgets they share: the primary's, and each hot standby's.
//!
//! - [`registry`]: tables `blitz.instances` and `blitz.standby_shares`;
//!   join, heartbeat rounds, removal of dead instances, leave; liveness by
//!   advisory locks.
//! - [`budget`]: the split of `max_connections − db.reserved_connections`
//!   among the live instances, in proportion to their configured pools,
//!   and the steps by which a registered share moves.
//! - this instance's part of a budget, a [`Share`] (one for the primary,
//!   one per [`StandbyShare`]), enforced by a gate in front of the pool and
//!   a cap on the connections it opens, is pool plumbing and lives in
//!   `db`; the cluster sets it and enlists the pool's new connections
//!   ([`Registration`]).
//! - [`housekeeper`]: the one thread, on the one housekeeping connection,
//!   that keeps the registry (and runs the other background chores).
//!
//! The invariant, for the primary and for every standby alike: the
//! connections all live instances hold on that server (pools plus one
//! housekeeping connection each: on the primary the housekeeper's, on a
//! standby the standby monitor's) never exceed its budget. Every instance
//! holds at most its registered share plus its housekeeping connection
//! (its share is raised in the registry before it may open more, and
//! lowered only after it closed down to the new figure), and registered
//! shares only grow into room that is free in the registry, under one lock
//! on the primary. The primary is budget 0 and each standby a further one:
//! one round moves every share by the same steps ([`budget::step`],
//! [`budget::enter`]); a standby's budget is its own `max_connections`
//! (read by the standby monitor into the [`StandbyShare`]; until known,
//! the share there is 0).
//!
//! A dead instance's share is handed on only once the server shows that
//! its sessions are gone. On the primary, whoever removes it from
//! `blitz.instances` proves it (see [`registry`]). On a standby its row
//! in `blitz.standby_shares` outlives it, still counted, as an orphan,
//! until a live instance proves its sessions there gone: every connection
//! an instance has on a standby holds its advisory lock too (pool
//! connections enlist as on the primary; the monitor connection takes it
//! in [`Cluster::keep_standby`]), and advisory locks work on a hot
//! standby. Each instance's monitor, polling its standby, calls
//! [`Cluster::keep_standby`], which for each orphan waits until the standby
//! has replayed the orphan's removal from `blitz.instances` (from then on a
//! new session of it fails to enlist there: enlisting checks the row on the
//! standby), terminates the sessions holding its lock, and takes the lock
//! exclusively: got, none is left, and the next round deletes the row. No
//! connection is opened for it (the monitor's is in the budget already); a
//! standby that does not answer keeps its orphans, which only delays the
//! hand-over. A clean stop closes the standby pools with the primary's
//! and deletes its rows like its instance row.
//!
//! This module speaks to PostgreSQL through `postgres` clients handed to
//! it; it uses `db` (the [`Share`], the [`Chore`](crate::db::Chore)s its
//! housekeeper runs) and `db` does not know it.

pub mod budget;
pub mod housekeeper;
pub mod registry;

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use postgres::Client;
use serde_json::{json, Value};

pub use housekeeper::Housekeeper;
pub use registry::{Identity, JoinError, Round, Standing, Timing};

use crate::db::{Registration, Share, StandbyShare};
use registry::{Report, StandbyReport};

/// This instance's membership: who it is, its share of every budget (the
/// primary's and each standby's), and how each budget stood last.
#[derive(Debug)]
pub struct Cluster {
    me: Identity,
    timing: Timing,
    reserved: u64,
    primary: Part,
    standbys: OnceLock<Vec<StandbyPart>>,
}

/// This instance's part of one budget: the share its pool obeys and the
/// standing the last join or round gave it.
#[derive(Debug)]
struct Part {
    /// `primary`, or the standby's name.
    name: String,
    share: Arc<Share>,
    standing: Mutex<Standing>,
}

/// A standby's part, with what reaping dead instances there needs.
#[derive(Debug)]
struct StandbyPart {
    standby: Arc<StandbyShare>,
    part: Part,
    /// Orphans proven gone on the standby since the last round.
    reaped: Mutex<Vec<i32>>,
}

impl Part {
    fn new(name: &str, share: Arc<Share>) -> Part {
        Part {
            name: name.to_string(),
            share,
            standing: Mutex::new(Standing::default()),
        }
    }

    /// Applies a standing: the limit becomes the smaller of the fair share
    /// and the registered share.
    fn adopt(&self, standing: Standing) {
        let limit = standing.target.min(standing.registered) as usize;
        self.share.set_limit(limit);
        *self.standing.lock() = standing;
    }

    /// [`adopt`](Self::adopt) after a round; a debug line when the share moves.
    fn adopt_round(&self, standing: Standing) {
        let before = self.share.limit();
        self.adopt(standing);
        if self.share.limit() != before {
            log::debug!("{}: share {before} -> {}", self.name, self.share.limit());
        }
    }

    /// Whether the limit is below the registered share and the release
    /// waits for connections to close.
    fn releasing(&self) -> bool {
        self.standing.lock().registered > self.share.limit() as u64
    }

    /// Whether a release waits only for the registry to record it.
    fn release_ready(&self) -> bool {
        self.releasing() && self.share.open() <= self.share.limit()
    }

    /// Forgets the registered share (the registry no longer has it).
    fn lost(&self) {
        self.share.set_limit(0);
        self.standing.lock().registered = 0;
    }
}

impl StandbyPart {
    /// [`Part::adopt_round`], with a line in the log when this instance
    /// gets a share of the standby (info) and when the standby has no room
    /// for it (warn), each once per change.
    fn adopt_round(&self, standing: Standing) {
        let (had, known) = {
            let before = self.part.standing.lock();
            (
                before.budget > 0 && before.registered > 0,
                before.budget > 0,
            )
        };
        let has = standing.budget > 0 && standing.registered > 0;
        let refused = standing.budget > 0 && !has && (had || !known);
        if has && !had {
            log::info!(
                "standby {}: share {} (fair share {}) of its budget {} = max_connections {} minus db.reserved_connections, {} instances",
                self.part.name, standing.target.min(standing.registered), standing.target,
                standing.budget, standing.max_connections, standing.instances
            );
        } else if refused {
            log::warn!(
                "standby {}: no room for this instance in its connection budget yet ({} = max_connections {} minus db.reserved_connections, {} instances); its reads go elsewhere until the others release or there is room",
                self.part.name, standing.budget, standing.max_connections, standing.instances
            );
        }
        self.part.adopt_round(standing);
    }
}

impl Cluster {
    /// An instance that has not joined yet (share 0).
    pub fn new(me: Identity, timing: Timing, reserved: u64) -> Arc<Cluster> {
        Arc::new(Cluster {
            me,
            timing,
            reserved,
            primary: Part::new("primary", Share::new()),
            standbys: OnceLock::new(),
        })
    }

    /// Makes the cluster keep a share of each of `standbys` from the next
    /// round on (called once, at start, before the join; a later call is
    /// ignored). Each share stays 0 until the standby's `max_connections`
    /// is known and the registry has room.
    pub fn attach_standbys(&self, standbys: Vec<Arc<StandbyShare>>) {
        let parts = standbys
            .into_iter()
            .map(|standby| StandbyPart {
                part: Part::new(&standby.name, standby.share.clone()),
                standby,
                reaped: Mutex::new(Vec::new()),
            })
            .collect();
        if self.standbys.set(parts).is_err() {
            log::warn!("standbys were attached to the cluster twice; the first set stays");
        }
    }

    fn standby_parts(&self) -> &[StandbyPart] {
        self.standbys.get().map_or(&[], Vec::as_slice)
    }

    /// Every part: the primary's first, then the standbys'.
    fn parts(&self) -> impl Iterator<Item = &Part> {
        std::iter::once(&self.primary).chain(self.standby_parts().iter().map(|s| &s.part))
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
        &self.primary.share
    }

    /// The heartbeat interval and dead age.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Joins the registry on `client` (the housekeeping connection).
    pub fn join(&self, client: &mut Client) -> Result<(), JoinError> {
        let (key, standing) = registry::join(client, &self.me, self.reserved, self.timing)?;
        self.primary.share.set_key(key);
        self.primary.adopt(standing.clone());
        log::info!(
            "instance {} joined: share {} of pool {} (fair share {}); budget {} = max_connections {} - db.reserved_connections {}, {} instances",
            self.me.id,
            self.primary.share.limit(),
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
        match self.primary.share.key() {
            0 => Ok(false),
            key => registry::enlist(client, key),
        }
    }

    /// One registry round on `client` (the housekeeping connection): the
    /// heartbeat, and a step of every share; the standings are adopted.
    pub fn round(&self, client: &mut Client) -> Result<Round, postgres::Error> {
        let report = self.report();
        let round = registry::round(client, &report, self.reserved, self.timing)?;
        if let Round::Stands(standings) = &round {
            let (primary, standbys) = standings.split_first().expect("the primary's");
            self.primary.adopt_round(primary.clone());
            for (s, standing) in self.standby_parts().iter().zip(standbys) {
                s.adopt_round(standing.clone());
            }
            for (s, sent) in self.standby_parts().iter().zip(&report.standbys) {
                s.reaped.lock().retain(|k| !sent.reaped.contains(k));
            }
        }
        Ok(round)
    }

    /// What this instance brings to a round.
    fn report(&self) -> Report {
        Report {
            key: self.primary.share.key(),
            open: self.primary.share.open() as u64,
            standbys: self
                .standby_parts()
                .iter()
                .map(|s| StandbyReport {
                    name: s.standby.name.clone(),
                    max_connections: s.standby.max_connections(),
                    open: s.part.share.open() as u64,
                    reaped: s.reaped.lock().clone(),
                })
                .collect(),
        }
    }

    /// Whether a round should come before the next heartbeat: a standby's
    /// `max_connections` was learned (or changed) since the last round, or
    /// a dead instance's sessions on one were proven gone.
    fn round_due(&self) -> bool {
        self.standby_parts().iter().any(|s| {
            let known = s.standby.max_connections();
            known.is_some_and(|n| n != s.part.standing.lock().max_connections)
                || !s.reaped.lock().is_empty()
        })
    }

    /// Whether some share was lowered below the registered one and its
    /// release waits for connections to close.
    fn releasing(&self) -> bool {
        self.parts().any(Part::releasing)
    }

    /// Whether some release waits only for the registry to record it.
    fn release_ready(&self) -> bool {
        self.parts().any(Part::release_ready)
    }

    /// Every share down to 0 (the clean stop closes the pools).
    fn close_all(&self) {
        for part in self.parts() {
            part.share.set_limit(0);
        }
    }

    /// Connections open in all the pools.
    fn open(&self) -> usize {
        self.parts().map(|p| p.share.open()).sum()
    }

    /// Forgets the registration (the registry no longer has it).
    fn lost(&self) {
        for part in self.parts() {
            part.lost();
        }
        self.primary.share.set_key(0);
    }

    /// Leaves the registry on `client` (the housekeeping connection), every
    /// budget at once, once the pools are closed ([`registry::leave`]).
    pub fn leave(&self, client: &mut Client) -> Result<(), postgres::Error> {
        registry::leave(client, self.primary.share.key())
    }

    /// Keeps this instance's part on standby `name` through `client`, a
    /// connection of its own to that standby that is not a pool connection
    /// (the standby monitor's, counted as that standby's housekeeping
    /// connection): to be called each time the monitor polls. It takes
    /// this instance's lock on the connection once (so that, should this
    /// instance die, whoever reaps it finds the connection), and reaps
    /// there the instances gone from the registry whose shares of it are
    /// still held ([`registry::reap`]); the next round hands those on.
    pub fn keep_standby(&self, name: &str, client: &mut Client) -> Result<(), postgres::Error> {
        let Some(s) = self.standby_parts().iter().find(|s| s.standby.name == name) else {
            return Ok(());
        };
        let key = self.primary.share.key();
        if key != 0 {
            registry::enlist_once(client, key)?;
        }
        let orphans = s.part.standing.lock().orphans.clone();
        for orphan in orphans {
            if s.reaped.lock().contains(&orphan) {
                continue;
            }
            if registry::reap(client, orphan)? {
                log::info!("standby {name}: the sessions of instance key {orphan}, gone from the registry, are gone");
                s.reaped.lock().push(orphan);
            }
        }
        Ok(())
    }

    /// The `sys.status` member: this instance's share and the budget.
    pub fn status(&self) -> Value {
        let s = self.primary.standing.lock().clone();
        let share = &self.primary.share;
        json!({
            "id": self.me.id,
            "registered": share.key() != 0,
            "share": share.limit(),
            "registered_share": s.registered,
            "fair_share": s.target,
            "open": share.open(),
            "in_use": share.held(),
            "budget": s.budget,
            "max_connections": s.max_connections,
            "reserved_connections": self.reserved,
            "instances": s.instances,
        })
    }

    /// Each standby's budget as this instance saw it at its last round,
    /// for `sys.status`: `[{name, max_connections, budget, instances,
    /// target, registered, share, open, in_use, orphans}]` (`target` this
    /// instance's fair share, `registered` what the registry records for
    /// it, `share` the limit its standby pool obeys, `orphans` the shares
    /// of dead instances not yet reaped there).
    pub fn standby_status(&self) -> Value {
        let standbys: Vec<Value> = self
            .standby_parts()
            .iter()
            .map(|s| {
                let standing = s.part.standing.lock().clone();
                let share = &s.part.share;
                json!({
                    "name": s.standby.name,
                    "max_connections": s.standby.max_connections(),
                    "budget": standing.budget,
                    "instances": standing.instances,
                    "target": standing.target,
                    "registered": standing.registered,
                    "share": share.limit(),
                    "open": share.open(),
                    "in_use": share.held(),
                    "orphans": standing.orphans.len(),
                })
            })
            .collect();
        Value::Array(standbys)
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
