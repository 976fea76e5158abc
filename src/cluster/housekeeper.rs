//! The housekeeper: one thread per instance on one database connection of
//! its own (the housekeeping connection counted in the budget). It keeps
//! this instance's place in the registry and its shares of the primary's
//! and every standby's budget: a round every `db.heartbeat_interval_ms`,
//! at once when another instance joins, leaves, releases connections or is
//! removed (LISTEN on [`registry::CHANNEL`]), and within a poll when a
//! standby's `max_connections` was learned or a dead instance's sessions on
//! a standby were proven gone. While a smaller share waits to be released it
//! closes idle pool connections every few milliseconds. It also runs the
//! other background [`Chore`]s (session `last_used` writes, the
//! idempotency sweep, the session cache's listener) on the same connection,
//! LISTENing on the channels they name and handing each chore its
//! notifications, and at a clean stop closes the pool and leaves the
//! registry.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

use super::registry::{self, JoinError, Round};
use super::Cluster;
use crate::db::{Chore, Connector};

/// Runs once per new housekeeping connection, before it joins (migrations).
pub type Prepare = Box<dyn FnMut(&mut Client) -> Result<(), postgres::Error> + Send>;

/// The housekeeper's state; see the module doc.
pub struct Housekeeper {
    cluster: Arc<Cluster>,
    connect: Connector,
    client: Option<Client>,
    prepare: Prepare,
    chores: Vec<(Box<dyn Chore>, Instant)>,
    trim: Box<dyn Fn() + Send>,
    stopping: Box<dyn Fn() -> bool + Send>,
    next_round: Instant,
    reconnect_at: Instant,
    notified: bool,
    last_warning: Option<Instant>,
}

/// Longest wait between two looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// How often idle connections are closed while a release waits.
const RELEASE_POLL: Duration = Duration::from_millis(10);

/// How soon a join that found the budget busy is tried again.
const BUSY_RETRY: Duration = Duration::from_millis(50);

/// How long a clean stop waits for the pool to close before leaving anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl Housekeeper {
    /// A housekeeper for `cluster` connecting with `connect`; `trim` closes
    /// idle pool connections beyond the shares (of every pool the
    /// cluster's shares govern: the primary's and each standby's, or a
    /// standby's release waits for its idle connections to be used),
    /// `stopping` says when the workers are done.
    pub fn new(
        cluster: Arc<Cluster>,
        connect: Connector,
        prepare: Prepare,
        trim: Box<dyn Fn() + Send>,
        stopping: Box<dyn Fn() -> bool + Send>,
    ) -> Housekeeper {
        let now = Instant::now();
        Housekeeper {
            cluster,
            connect,
            client: None,
            prepare,
            chores: Vec::new(),
            trim,
            stopping,
            next_round: now,
            reconnect_at: now,
            notified: false,
            last_warning: None,
        }
    }

    /// Adds a chore, first run one period from now.
    pub fn add(&mut self, chore: Box<dyn Chore>) {
        let first = Instant::now() + chore.every();
        self.chores.push((chore, first));
    }

    /// Connects and joins before the server starts serving. A database that
    /// does not answer is logged and retried later from the thread; a
    /// budget without room is the error (the server refuses to start).
    pub fn start(&mut self) -> Result<(), JoinError> {
        let give_up = Instant::now() + 2 * self.cluster.timing().dead_after;
        let mut joined = self.connect_and_join();
        while matches!(joined, Err(JoinError::Busy)) && Instant::now() < give_up {
            std::thread::sleep(BUSY_RETRY);
            joined = self.connect_and_join();
        }
        match joined {
            Err(JoinError::Busy) => {
                log::warn!("the connection budget is still being rebalanced for another joining instance; starting with no connections, joining from the background");
                Ok(())
            }
            Err(JoinError::Db(e)) if self.connect.verification_failure(&e).is_some() => Err(
                JoinError::Refused(self.connect.verification_failure(&e).unwrap_or_default()),
            ),
            Err(JoinError::Db(e)) => {
                log::warn!(
                    "database does not answer yet ({e}); starting anyway with no connections, calls get -32004 until this instance has joined the connection budget"
                );
                self.client = None;
                self.reconnect_at = Instant::now() + self.cluster.timing().interval;
                Ok(())
            }
            other => other,
        }
    }

    /// Runs the housekeeper on a thread of its own until the workers stop,
    /// then closes the pool and leaves the registry.
    pub fn spawn(self) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name("blitz-housekeeper".into())
            .spawn(move || self.run())
            .expect("spawn the housekeeper thread")
    }

    fn run(mut self) {
        while !(self.stopping)() {
            if let Err(e) = self.tick() {
                self.reconnect_at = Instant::now() + self.cluster.timing().interval;
                self.lost(&format!("housekeeping failed: {e}; reconnecting"));
            }
            self.wait();
        }
        self.finish();
    }

    /// Opens the housekeeping connection, prepares it, and joins (or
    /// re-enlists an existing registration).
    fn connect_and_join(&mut self) -> Result<(), JoinError> {
        let mut client = self.connect.connect()?;
        (self.prepare)(&mut client)?;
        client.batch_execute(&format!("LISTEN {}", registry::CHANNEL))?;
        for (chore, _) in &mut self.chores {
            for channel in chore.channels() {
                client.batch_execute(&format!("LISTEN {channel}"))?;
            }
            chore.listening();
        }
        if !self.cluster.enlist(&mut client)? {
            if self.cluster.share().key() != 0 {
                log::error!(
                    "instance {} was taken for dead and removed from the registry; joining again",
                    self.cluster.id()
                );
                self.cluster.lost();
                (self.trim)();
            }
            self.cluster.join(&mut client)?;
        }
        self.client = Some(client);
        self.next_round = Instant::now();
        Ok(())
    }

    fn tick(&mut self) -> Result<(), postgres::Error> {
        if self.client.is_none() {
            if Instant::now() < self.reconnect_at {
                return Ok(());
            }
            match self.connect_and_join() {
                Ok(()) => {}
                Err(JoinError::Db(e)) => return Err(e),
                Err(JoinError::Busy) => {
                    self.reconnect_at = Instant::now() + BUSY_RETRY;
                    return Ok(());
                }
                Err(JoinError::NoRoom(message) | JoinError::Refused(message)) => {
                    self.warn(&format!("cannot rejoin: {message}; retrying"));
                    self.reconnect_at = Instant::now() + self.cluster.timing().interval;
                    return Ok(());
                }
            }
        }
        if self.cluster.releasing() {
            (self.trim)();
        }
        let release_ready = self.cluster.release_ready();
        let due = release_ready || self.cluster.round_due() || Instant::now() >= self.next_round;
        if self.notified || due {
            self.notified = false;
            self.round()?;
        }
        self.run_chores()
    }

    fn round(&mut self) -> Result<(), postgres::Error> {
        let cluster = self.cluster.clone();
        let client = self.client.as_mut().expect("connected");
        self.next_round = Instant::now() + cluster.timing.interval;
        match cluster.round(client)? {
            Round::Removed => {
                log::error!(
                    "instance {} was taken for dead and removed from the registry; joining again",
                    cluster.id()
                );
                cluster.lost();
                (self.trim)();
                match cluster.join(client) {
                    Ok(()) => Ok(()),
                    Err(JoinError::Db(e)) => Err(e),
                    Err(JoinError::Busy) => {
                        self.hang_up(); // its connection would be one too many
                        self.reconnect_at = Instant::now() + BUSY_RETRY;
                        Ok(())
                    }
                    Err(JoinError::NoRoom(message) | JoinError::Refused(message)) => {
                        self.warn(&format!("cannot rejoin: {message}; retrying"));
                        Ok(())
                    }
                }
            }
            Round::Stands(_) => {
                // Each round: idle connections above the shares, or above
                // the concurrency limits when lower, are closed.
                (self.trim)();
                Ok(())
            }
        }
    }

    fn run_chores(&mut self) -> Result<(), postgres::Error> {
        let client = self.client.as_mut().expect("connected");
        let now = Instant::now();
        for (chore, due) in &mut self.chores {
            if now >= *due {
                chore.run(client)?;
                *due = Instant::now() + chore.every();
            }
        }
        self.deliver()
    }

    /// Hands every notification received so far to the chores that hear
    /// its channel (one on the registry's channel starts a round), then
    /// tells every chore they were.
    fn deliver(&mut self) -> Result<(), postgres::Error> {
        let client = self.client.as_mut().expect("connected");
        let mut notifications = client.notifications();
        let mut pending = notifications.iter();
        while let Some(n) = pending.next()? {
            route(
                &mut self.chores,
                &mut self.notified,
                n.channel(),
                n.payload(),
            );
        }
        for (chore, _) in &mut self.chores {
            chore.delivered();
        }
        Ok(())
    }

    /// Waits for a notification until the next thing is due.
    fn wait(&mut self) {
        let mut due = self.next_round;
        for (_, at) in &self.chores {
            due = due.min(*at);
        }
        let cap = if self.cluster.releasing() {
            RELEASE_POLL
        } else {
            STOP_POLL
        };
        let wait = due.saturating_duration_since(Instant::now()).min(cap);
        let Some(client) = self.client.as_mut() else {
            std::thread::sleep(wait);
            return;
        };
        let first = client.notifications().timeout_iter(wait).next();
        match first {
            Ok(Some(n)) => route(
                &mut self.chores,
                &mut self.notified,
                n.channel(),
                n.payload(),
            ),
            Ok(None) => {}
            Err(e) => self.lost(&format!("housekeeping connection lost: {e}; reconnecting")),
        }
    }

    /// Drops the housekeeping connection, which failed.
    fn lost(&mut self, message: &str) {
        self.hang_up();
        self.warn(message);
    }

    /// Closes the housekeeping connection; its chores hear nothing until
    /// the next one listens.
    fn hang_up(&mut self) {
        if self.client.take().is_some() {
            for (chore, _) in &mut self.chores {
                chore.deaf();
            }
        }
    }

    /// The clean stop: pool closed, last chores, registry left.
    fn finish(&mut self) {
        let cluster = self.cluster.clone();
        cluster.close_all();
        let give_up = Instant::now() + CLOSE_WAIT;
        while cluster.open() > 0 && Instant::now() < give_up {
            (self.trim)();
            std::thread::sleep(RELEASE_POLL);
        }
        if cluster.open() > 0 {
            log::warn!(
                "{} pool connections still open after {CLOSE_WAIT:?}; leaving the registry anyway",
                cluster.open()
            );
        }
        if self.client.is_none() {
            let reconnected = self.connect.connect().and_then(|mut c| {
                let registered = self.cluster.enlist(&mut c)?;
                Ok(registered.then_some(c))
            });
            match reconnected {
                Ok(Some(client)) => self.client = Some(client),
                Ok(None) => return,
                Err(e) => {
                    log::warn!("cannot reach the database to leave the registry ({e}); the others will find this instance dead");
                    return;
                }
            }
        }
        let client = self.client.as_mut().expect("connected");
        for (chore, _) in &mut self.chores {
            if let Err(e) = chore.finish(client) {
                log::warn!("{} at stop failed: {e}", chore.name());
            }
        }
        match cluster.leave(client) {
            Ok(()) => log::info!("instance {} left the connection budget", self.cluster.id()),
            Err(e) => log::warn!(
                "cannot leave the registry ({e}); the others will find this instance dead"
            ),
        }
        self.client = None;
    }

    /// A warning, at most one every 30 s.
    fn warn(&mut self, message: &str) {
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            log::warn!("{message} (at most one such line per 30 s)");
            self.last_warning = Some(Instant::now());
        }
    }
}

/// Hands one notification to the chores that hear `channel`; one on the
/// registry's channel sets `round` (a round is due).
fn route(chores: &mut [(Box<dyn Chore>, Instant)], round: &mut bool, channel: &str, payload: &str) {
    if channel == registry::CHANNEL {
        *round = true;
    }
    for (chore, _) in chores.iter_mut() {
        if chore.channels().contains(&channel) {
            chore.notified(channel, payload);
        }
    }
}
