//! Rates as token buckets refilled at N per second, holding at most N. They
//! never refuse: the caller waits for the tokens it took.
//!
//! - A listener's accept rate (`max-connection-rate`): when it is empty the
//!   accept loop waits and new connections wait in the kernel's backlog (as
//!   EMQX's `max_conn_rate` does): a reconnect storm is spread out.
//! - A client's publish rate (`max-publish-rate`, `max-publish-bytes-rate`):
//!   its connection stops being read until the tokens are back (as EMQX
//!   does), so the client's TCP window closes and nothing is dropped.

use std::time::Duration;

use tokio::time::Instant;

/// The bucket.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    per_second: f64,
    /// Tokens now; below zero while accepts wait for tokens already taken.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `per_second` tokens (at least 1).
    pub(crate) fn new(per_second: u64, now: Instant) -> TokenBucket {
        let per_second = per_second.max(1) as f64;
        TokenBucket {
            per_second,
            tokens: per_second,
            last: now,
        }
    }

    /// Takes a token; how long to wait first (zero when one was there).
    pub(crate) fn take(&mut self, now: Instant) -> Duration {
        self.take_n(1, now)
    }

    /// Takes `n` tokens; how long to wait first (zero when they were there).
    pub(crate) fn take_n(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_rate_then_one_per_interval() {
        let t0 = Instant::now();
        let mut r = TokenBucket::new(4, t0);
        for _ in 0..4 {
            assert_eq!(r.take(t0), Duration::ZERO);
        }
        // The fifth waits a quarter of a second, the sixth half a second.
        assert_eq!(r.take(t0), Duration::from_millis(250));
        assert_eq!(r.take(t0), Duration::from_millis(500));
        // A second later the debt is paid and two tokens are back.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(r.take(t1), Duration::ZERO);
        assert_eq!(r.take(t1), Duration::ZERO);
        assert_eq!(r.take(t1), Duration::from_millis(250));
        // Idle for long: never more than a full bucket.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..4 {
            assert_eq!(r.take(t2), Duration::ZERO);
        }
        assert!(r.take(t2) > Duration::ZERO);
    }
}
