//! The failed-login limiter: per user name and per peer address.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Failed logins allowed per user name or peer address per [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 5;

/// How long a failed login counts against its user and address.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Counts failed logins per user name and per peer address over the last
/// [`FAILURE_WINDOW`]; at [`MAX_FAILURES`] further attempts are refused
/// without hashing. Per instance: N instances allow N × the limit.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginLimiter {
    /// Whether `user` or `peer` has used up its failed attempts.
    pub fn is_blocked(&self, user: &str, peer: IpAddr) -> bool {
        let mut failures = self.failures.lock();
        [user_key(user), peer_key(peer)].iter().any(|key| {
            failures
                .get_mut(key)
                .is_some_and(|times| recent(times) >= MAX_FAILURES)
        })
    }

    /// Counts one failed login against `user` and `peer`.
    pub fn record_failure(&self, user: &str, peer: IpAddr) {
        let mut failures = self.failures.lock();
        if failures.len() > 100_000 {
            failures.retain(|_, times| recent(times) > 0);
        }
        let now = Instant::now();
        for key in [user_key(user), peer_key(peer)] {
            failures.entry(key).or_default().push_back(now);
        }
    }
}

/// Drops failures older than the window; returns how many are left.
fn recent(times: &mut VecDeque<Instant>) -> usize {
    while times.front().is_some_and(|t| t.elapsed() >= FAILURE_WINDOW) {
        times.pop_front();
    }
    times.len()
}

fn user_key(user: &str) -> String {
    format!("user:{user}")
}

fn peer_key(peer: IpAddr) -> String {
    format!("peer:{peer}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_blocks_after_five_failures_by_user_or_peer() {
        let limiter = LoginLimiter::default();
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(!limiter.is_blocked("alice", peer));
            limiter.record_failure("alice", peer);
        }
        assert!(limiter.is_blocked("alice", other), "by user");
        assert!(limiter.is_blocked("bob", peer), "by peer");
        assert!(!limiter.is_blocked("bob", other));
    }
}
