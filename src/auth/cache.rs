//! The session cache: which sessions this instance knows to be live, so
//! that an api call need not check its session in PostgreSQL (a probe of
//! `blitz.sessions` and of `blitz.users` in every call's statement).
//!
//! An entry is made when this instance creates a session (`session.login`)
//! or checks one in the database ([`Sessions::verify`]); it holds the user
//! and when the session would expire by time: its lifetime, and its idle
//! timeout counted from the last `last_used` write this instance made
//! ([`SessionCache::written`]), never from a call not yet written, so
//! that the cache never holds a session live that the database, reading
//! its `last_used`, has already let expire.
//!
//! Everything else that ends a session or changes its user (a logout or a
//! purge by any instance, a user disabled or deleted, anything done with
//! `psql`) fires a trigger that sends a notification on
//! [`CHANNEL`] (schema migration 6) naming the user; the housekeeper
//! listens on its connection and hands each to [`SessionListener`], which
//! forgets that user's entries.
//!
//! Failing closed: the cache is *trusted* only while the listening
//! connection has proved, within [`TRUST_FOR`], that it hears: every
//! [`CONFIRM_EVERY`] the listener makes a round trip on it, and once the
//! notifications that arrived before the reply have been handed over, the
//! start of that round trip is the cache's new confirmation. A logout
//! anywhere therefore takes effect here within [`TRUST_FOR`] at most (in
//! practice within milliseconds); an instance that cannot hear (its
//! housekeeping connection lost or stuck) stops trusting the cache and
//! checks every call's session in its statement again until it hears (at
//! once when it sees the connection fail, at the latest when the last
//! confirmation is [`TRUST_FOR`] old). A new
//! listening connection starts with an empty cache (what was sent before
//! it listened is lost).
//!
//! [`Sessions::verify`]: super::sessions::Sessions::verify

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postgres::Client;

use crate::db::Chore;

/// The notification channel of ended sessions and changed users.
pub const CHANNEL: &str = "blitz_sessions";

/// How long a confirmation of the listening connection keeps the cache trusted.
pub const TRUST_FOR: Duration = Duration::from_millis(750);

/// How often the listener confirms that its connection hears.
pub const CONFIRM_EVERY: Duration = Duration::from_millis(200);

/// Shards of the map (a call locks one).
const SHARDS: usize = 16;

/// Most entries per shard; beyond, expired ones are dropped and, if the
/// shard is still full, a new session is not cached (it is checked in its
/// statement).
const SHARD_CAPACITY: usize = 8192;

/// One live session as this instance knows it.
struct Entry {
    user: Arc<str>,
    /// When it expires unless its `last_used` is written again (its idle timeout).
    idle_until: Instant,
    /// When it expires whatever happens (its lifetime), if it has one.
    life_until: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        now < self.idle_until && self.life_until.is_none_or(|t| now < t)
    }
}

/// How long a session has left, as the database said when it was checked.
#[derive(Debug, Clone, Copy)]
pub struct Remaining {
    /// Until its idle timeout.
    pub idle: Duration,
    /// Until the end of its lifetime (`None`: no maximum lifetime).
    pub life: Option<Duration>,
}

/// A check of a session in the database, begun by [`SessionCache::check`].
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// The invalidation count when it began.
    generation: u64,
    /// When it began.
    at: Instant,
}

/// The cache; see the module doc.
pub struct SessionCache {
    shards: [Mutex<HashMap<String, Entry>>; SHARDS],
    idle_timeout: Duration,
    /// Bumped by every invalidation: an entry checked before one is not stored.
    generation: AtomicU64,
    /// µs since `origin` at which the last confirmed round trip started (0: not trusted).
    confirmed_us: AtomicU64,
    origin: Instant,
}

impl SessionCache {
    /// An empty, untrusted cache of sessions with `idle_timeout`.
    pub fn new(idle_timeout: Duration) -> SessionCache {
        SessionCache {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            idle_timeout,
            generation: AtomicU64::new(0),
            confirmed_us: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Entry>> {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        &self.shards[hasher.finish() as usize % SHARDS]
    }

    /// Whether the listening connection has proved, within [`TRUST_FOR`],
    /// that every invalidation reached this cache.
    pub fn trusted(&self) -> bool {
        let confirmed = self.confirmed_us.load(Ordering::Acquire);
        confirmed != 0 && self.micros(Instant::now()).saturating_sub(confirmed) < micros(TRUST_FOR)
    }

    fn micros(&self, at: Instant) -> u64 {
        micros(at.saturating_duration_since(self.origin)).max(1)
    }

    /// The user of session `key` when the cache is trusted and knows it live.
    pub fn user(&self, key: &str) -> Option<Arc<str>> {
        if !self.trusted() {
            return None;
        }
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        let entry = shard.get(key)?;
        if !entry.live(now) {
            shard.remove(key);
            return None;
        }
        Some(entry.user.clone())
    }

    /// The `last_used` of sessions `keys` was written by a statement sent
    /// at `sent` (so the database's `now()` is not earlier): their idle
    /// timeouts run from then.
    pub fn written(&self, keys: &[String], sent: Instant) {
        let idle_until = sent + self.idle_timeout;
        for key in keys {
            if let Some(entry) = self.shard(key).lock().get_mut(key.as_str()) {
                entry.idle_until = entry.idle_until.max(idle_until);
            }
        }
    }

    /// Starts a check of a session in the database: pass the result to
    /// [`SessionCache::insert`] with what the check found.
    pub fn check(&self) -> Check {
        Check {
            generation: self.generation(),
            at: Instant::now(),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers session `key` of `user`, found live with `remaining` time
    /// by `check`, unless an invalidation came since it started (it may
    /// have raced a logout) or the cache is not trusted. The times count
    /// from the check's start, as the database's `now()` is not earlier.
    pub fn insert(&self, key: &str, user: &str, remaining: Remaining, check: Check) {
        let now = Instant::now();
        let entry = Entry {
            user: Arc::from(user),
            idle_until: check.at + remaining.idle,
            life_until: remaining.life.map(|life| check.at + life),
        };
        let mut shard = self.shard(key).lock();
        if shard.len() >= SHARD_CAPACITY {
            shard.retain(|_, e| e.live(now));
            if shard.len() >= SHARD_CAPACITY {
                return;
            }
        }
        // Under the shard's lock: an invalidation bumps the generation
        // before it takes the shards, so it either sees this entry or this
        // sees its generation.
        if self.generation() == check.generation && self.trusted() {
            shard.insert(key.to_string(), entry);
        }
    }

    /// Forgets session `key` (ended here).
    pub fn forget(&self, key: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.shard(key).lock().remove(key);
    }

    /// Forgets every session of `user`; of everyone when `user` is empty.
    pub fn forget_user(&self, user: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for shard in &self.shards {
            let mut shard = shard.lock();
            if user.is_empty() {
                shard.clear();
            } else {
                shard.retain(|_, e| &*e.user != user);
            }
        }
    }

    /// Stops trusting the cache and empties it (the listening connection
    /// is new: what was sent before it listened never reached it).
    pub fn reset(&self) {
        self.confirmed_us.store(0, Ordering::Release);
        self.forget_user("");
    }

    /// Every invalidation sent before `at` has been applied.
    pub fn confirm(&self, at: Instant) {
        self.confirmed_us.store(self.micros(at), Ordering::Release);
    }

    /// Sessions cached now (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether no session is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// The housekeeper's side of the cache: listens on [`CHANNEL`], applies
/// each notification, and confirms the connection every [`CONFIRM_EVERY`]
/// with a round trip (an empty query).
pub struct SessionListener {
    cache: Arc<SessionCache>,
    /// When the last round trip started, until its notifications are handed over.
    pending: Option<Instant>,
}

impl SessionListener {
    /// The listener that keeps `cache`.
    pub fn new(cache: Arc<SessionCache>) -> SessionListener {
        SessionListener {
            cache,
            pending: None,
        }
    }
}

impl Chore for SessionListener {
    fn name(&self) -> &'static str {
        "hearing ended sessions"
    }

    fn every(&self) -> Duration {
        CONFIRM_EVERY
    }

    fn run(&mut self, client: &mut Client) -> Result<(), postgres::Error> {
        let started = Instant::now();
        client.batch_execute("")?;
        self.pending = Some(started);
        Ok(())
    }

    fn finish(&mut self, _client: &mut Client) -> Result<(), postgres::Error> {
        Ok(())
    }

    fn channels(&self) -> &'static [&'static str] {
        &[CHANNEL]
    }

    fn notified(&mut self, _channel: &str, payload: &str) {
        self.cache.forget_user(payload);
    }

    fn listening(&mut self) {
        self.pending = None;
        self.cache.reset();
    }

    fn deaf(&mut self) {
        self.pending = None;
        self.cache.reset();
    }

    fn delivered(&mut self) {
        if let Some(started) = self.pending.take() {
            self.cache.confirm(started);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remaining(idle_ms: u64) -> Remaining {
        Remaining {
            idle: Duration::from_millis(idle_ms),
            life: None,
        }
    }

    #[test]
    fn an_untrusted_cache_knows_no_session() {
        let cache = SessionCache::new(Duration::from_secs(60));
        cache.insert("k", "alice", remaining(60_000), cache.check());
        assert!(cache.user("k").is_none());
        cache.confirm(Instant::now());
        cache.insert("k", "alice", remaining(60_000), cache.check());
        assert_eq!(cache.user("k").as_deref(), Some("alice"));
    }

    #[test]
    fn a_lost_connection_ends_the_trust_at_once() {
        let cache = Arc::new(SessionCache::new(Duration::from_secs(60)));
        let mut listener = SessionListener::new(cache.clone());
        cache.confirm(Instant::now());
        cache.insert("k", "alice", remaining(60_000), cache.check());
        listener.deaf();
        assert!(!cache.trusted() && cache.is_empty());
    }

    #[test]
    fn trust_lapses_without_a_new_confirmation() {
        let cache = SessionCache::new(Duration::from_secs(60));
        cache.confirm(Instant::now());
        assert!(cache.trusted());
        std::thread::sleep(TRUST_FOR + Duration::from_millis(10));
        assert!(!cache.trusted());
        cache.confirm(Instant::now());
        assert!(cache.trusted());
        cache.reset();
        assert!(!cache.trusted());
    }

    #[test]
    fn an_invalidation_during_a_check_keeps_its_result_out() {
        let cache = SessionCache::new(Duration::from_secs(60));
        cache.confirm(Instant::now());
        let before = cache.check();
        cache.forget_user("bob");
        cache.insert("k", "alice", remaining(60_000), before);
        assert!(cache.user("k").is_none());
    }

    #[test]
    fn a_user_notification_forgets_only_that_users_sessions() {
        let cache = SessionCache::new(Duration::from_secs(60));
        cache.confirm(Instant::now());
        for (key, user) in [("a1", "alice"), ("a2", "alice"), ("b1", "bob")] {
            cache.insert(key, user, remaining(60_000), cache.check());
        }
        cache.forget_user("alice");
        assert!(cache.user("a1").is_none() && cache.user("a2").is_none());
        assert_eq!(cache.user("b1").as_deref(), Some("bob"));
        cache.forget_user("");
        assert!(cache.is_empty());
    }

    #[test]
    fn a_session_expires_by_time_unless_its_use_is_written() {
        let cache = SessionCache::new(Duration::from_millis(40));
        cache.confirm(Instant::now());
        cache.insert("k", "alice", remaining(40), cache.check());
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(20));
            cache.confirm(Instant::now());
            assert!(cache.user("k").is_some());
            cache.written(&["k".to_string()], Instant::now());
        }
        cache.written(
            &["k".to_string()],
            Instant::now() - Duration::from_millis(60),
        );
        std::thread::sleep(Duration::from_millis(30));
        cache.confirm(Instant::now());
        assert!(
            cache.user("k").is_some(),
            "an older write does not pull the timeout forward"
        );
        std::thread::sleep(Duration::from_millis(30));
        cache.confirm(Instant::now());
        assert!(
            cache.user("k").is_none(),
            "uses not written do not push the idle timeout back"
        );
        let lifetime = Remaining {
            idle: Duration::from_secs(60),
            life: Some(Duration::from_millis(30)),
        };
        cache.insert("l", "alice", lifetime, cache.check());
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.user("l").is_none(), "used or not, a lifetime ends");
    }
}
