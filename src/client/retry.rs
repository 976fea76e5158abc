//! The retry discipline's parts: the shared [`RetryBudget`] (gRPC-style
//! retry throttling) and exponential backoff with full jitter. The jitter
//! (like the choice of the first server) draws from `fastrand`'s
//! per-thread generator.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// The tokens a [`RetryBudget::default`] starts with and cannot exceed.
pub const DEFAULT_MAX_TOKENS: f64 = 10.0;

/// The tokens a success earns back in a [`RetryBudget::default`].
pub const DEFAULT_TOKEN_RATIO: f64 = 0.1;

/// A token bucket that stops retries when most recent calls fail, in the
/// manner of gRPC's retry throttling: each attempt that fails with a
/// retryable error costs one token, each successful call earns
/// `token_ratio` tokens back (up to `max_tokens`), and no retry is made
/// while the tokens are at or below half of `max_tokens`. A fleet of
/// overloaded servers thus sees at most about one retry per ten calls
/// instead of `max_attempts` times the load.
///
/// Cloning shares the bucket: give one budget to many clients (threads,
/// connections to several instances) through
/// [`ClientOptions::retry_budget`](super::ClientOptions::retry_budget) and
/// they throttle together. Each [`ClientOptions::default`](super::ClientOptions)
/// gets a bucket of its own.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    bucket: Arc<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    max_tokens: f64,
    token_ratio: f64,
}

impl RetryBudget {
    /// A full bucket of `max_tokens` (at least 1) where a success earns
    /// `token_ratio` tokens (at least 0).
    pub fn new(max_tokens: f64, token_ratio: f64) -> RetryBudget {
        let max_tokens = if max_tokens.is_finite() {
            max_tokens.max(1.0)
        } else {
            DEFAULT_MAX_TOKENS
        };
        let token_ratio = if token_ratio.is_finite() {
            token_ratio.max(0.0)
        } else {
            DEFAULT_TOKEN_RATIO
        };
        RetryBudget {
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: max_tokens,
                max_tokens,
                token_ratio,
            })),
        }
    }

    /// The tokens left now.
    pub fn tokens(&self) -> f64 {
        self.bucket.lock().tokens
    }

    /// Whether a retry may be made now: tokens above half of the maximum.
    pub fn allows_retry(&self) -> bool {
        let b = self.bucket.lock();
        b.tokens > b.max_tokens / 2.0
    }

    /// Counts an attempt that failed with a retryable error: one token less.
    pub fn record_failure(&self) {
        let mut b = self.bucket.lock();
        b.tokens = (b.tokens - 1.0).max(0.0);
    }

    /// Counts a successful call: `token_ratio` tokens more, up to the maximum.
    pub fn record_success(&self) {
        let mut b = self.bucket.lock();
        b.tokens = (b.tokens + b.token_ratio).min(b.max_tokens);
    }
}

impl Default for RetryBudget {
    /// 10 tokens, 0.1 earned per success (gRPC's usual figures).
    fn default() -> RetryBudget {
        RetryBudget::new(DEFAULT_MAX_TOKENS, DEFAULT_TOKEN_RATIO)
    }
}

/// The wait before attempt `failed + 1` after `failed` failures: uniformly
/// random in `[0, min(cap, base × 2^(failed-1))]` ("full jitter"), so that
/// clients refused together do not come back together.
pub(super) fn backoff(failed: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = failed.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1 << doublings).min(cap);
    up_to(ceiling)
}

/// A server's `retry_after` plus up to a fifth more, so that the clients it
/// refused in one burst spread out when they come back.
pub(super) fn jittered(after: Duration) -> Duration {
    after + up_to(after / 5)
}

/// A duration uniformly in `[0, max]`, to the microsecond.
fn up_to(max: Duration) -> Duration {
    let micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(fastrand::u64(0..=micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_stops_retries_at_half_and_successes_refill_it() {
        let budget = RetryBudget::default();
        assert!(budget.allows_retry());
        for _ in 0..4 {
            budget.record_failure();
        }
        assert_eq!(budget.tokens(), 6.0);
        assert!(budget.allows_retry());
        budget.record_failure();
        assert_eq!(budget.tokens(), 5.0);
        assert!(!budget.allows_retry(), "5 of 10 is not above half");
        for _ in 0..20 {
            budget.record_failure();
        }
        assert_eq!(budget.tokens(), 0.0, "never below zero");
        for _ in 0..51 {
            budget.record_success();
        }
        assert!(budget.allows_retry(), "51 successes earn 5.1 tokens");
        for _ in 0..100 {
            budget.record_success();
        }
        assert_eq!(budget.tokens(), 10.0, "never above the maximum");
    }

    #[test]
    fn clones_share_one_bucket_across_threads() {
        let budget = RetryBudget::new(4.0, 0.5);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let b = budget.clone();
                std::thread::spawn(move || b.record_failure())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(budget.tokens(), 2.0);
        assert!(!budget.allows_retry());
    }

    #[test]
    fn odd_budget_figures_are_made_sane() {
        assert_eq!(RetryBudget::new(0.0, -1.0).tokens(), 1.0);
        assert_eq!(RetryBudget::new(f64::NAN, 0.1).tokens(), DEFAULT_MAX_TOKENS);
    }

    #[test]
    fn backoff_grows_to_the_cap_with_full_jitter() {
        let (base, cap) = (Duration::from_millis(50), Duration::from_secs(2));
        let mut seen_small = false;
        for _ in 0..200 {
            assert!(backoff(1, base, cap) <= base);
            assert!(backoff(3, base, cap) <= base * 4);
            let late = backoff(40, base, cap);
            assert!(late <= cap);
            seen_small |= late < cap / 2;
        }
        assert!(seen_small, "full jitter reaches down towards zero");
    }

    #[test]
    fn jitter_adds_at_most_a_fifth() {
        let after = Duration::from_millis(100);
        for _ in 0..100 {
            let wait = jittered(after);
            assert!(wait >= after && wait <= after + after / 5, "{wait:?}");
        }
    }

    #[test]
    fn no_wait_stays_no_wait() {
        assert_eq!(up_to(Duration::ZERO), Duration::ZERO);
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
