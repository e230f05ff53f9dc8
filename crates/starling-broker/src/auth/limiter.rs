//! The failed-login limiter: slows down password guessing without locking
//! out the clients that know their password.
//!
//! Every attempt that needs a password check is counted *before* the check,
//! per (source address, user name) and per source address (IPv6 by /64), in
//! leaky buckets that drain `auth-failure-limit` attempts a minute (ten times
//! that for an address). A correct password takes its attempt back and empties
//! its (address, user name) bucket.
//!
//! - Below the limit an attempt is checked at once: a wrong password gets
//!   CONNACK 0x86 (3.x: 4), as it would without a limiter.
//! - At or past the limit an attempt waits first, 100 ms doubling with every
//!   attempt past it up to [`MAX_DELAY`], and only one attempt of that
//!   (address, user name) — or, past the address's limit, of that address —
//!   is waiting or being checked at a time. One that comes while another is
//!   is refused at once, unchecked, with 0x9F Connection rate exceeded (3.x:
//!   3): that is a brute-force rate. The right password, sent at a human's
//!   pace, still gets in.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] buckets of each kind, keyed by
//! a keyed hash of the user name (never the name itself, whose length the
//! client chooses).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// The longest an attempt waits before its password is checked.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// The first wait past the limit; each further attempt doubles it.
const BASE_DELAY: Duration = Duration::from_millis(100);
/// How far past its limit a bucket fills: it empties in reasonable time.
const OVERFILL: f64 = 16.0;
/// Most buckets of each kind; past it, stale ones are swept (at most once a
/// second) and new keys go untracked until there is room.
pub const MAX_TRACKED: usize = 100_000;
/// An address's limit, as a multiple of the (address, user name) limit.
const ADDRESS_FACTOR: f64 = 10.0;

/// A source address as the limiter counts it: IPv6 by its /64 prefix, which
/// one host usually holds whole.
type Source = IpAddr;
type PairKey = (Source, u64);

/// One leaky bucket.
#[derive(Debug, Default)]
struct Bucket {
    level: f64,
    at: Option<Instant>,
    /// Attempts admitted and not finished.
    pending: u32,
}

impl Bucket {
    /// Drains what `rate` a minute has drained since the last look.
    fn drain(&mut self, now: Instant, per_minute: f64) {
        if let Some(at) = self.at {
            let minutes = now.saturating_duration_since(at).as_secs_f64() / 60.0;
            self.level = (self.level - minutes * per_minute).max(0.0);
        }
        self.at = Some(now);
    }

    /// How long an attempt waits at this level, if the bucket is over `limit`.
    fn delay(&self, limit: f64) -> Option<Duration> {
        if self.level < limit {
            return None;
        }
        let past = (self.level - limit).min(16.0) as u32;
        Some(BASE_DELAY.saturating_mul(1 << past).min(MAX_DELAY))
    }

    fn idle(&self) -> bool {
        self.pending == 0 && self.level < 0.5
    }
}

#[derive(Debug, Default)]
struct Buckets {
    pairs: HashMap<PairKey, Bucket>,
    sources: HashMap<Source, Bucket>,
    last_sweep: Option<Instant>,
}

/// Counts password attempts and decides whether one may be checked now.
#[derive(Debug)]
pub(crate) struct AuthLimiter {
    /// Attempts per (address, user name) per minute; 0 disables the limiter.
    limit: f64,
    buckets: Mutex<Buckets>,
    keys: std::collections::hash_map::RandomState,
}

/// What the limiter says about an attempt.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Check it after `delay`; report the outcome through the ticket.
    Check {
        /// How long to wait first.
        delay: Duration,
        /// Finishes the attempt (dropping it counts the attempt as failed).
        ticket: Ticket,
    },
    /// Another attempt of this source is being checked at a brute-force
    /// rate: refuse this one unchecked (0x9F).
    Refuse,
}

/// An admitted attempt. Dropped without [`Ticket::succeeded`], it stays
/// counted as a failure.
#[derive(Debug)]
pub(crate) struct Ticket {
    limiter: Option<Arc<AuthLimiter>>,
    pair: PairKey,
    source: Source,
}

impl AuthLimiter {
    /// A limiter allowing `limit` attempts a minute per (address, user name)
    /// before it slows them down; 0 disables it.
    pub(crate) fn new(limit: u32) -> AuthLimiter {
        AuthLimiter {
            limit: f64::from(limit),
            buckets: Mutex::new(Buckets::default()),
            keys: std::collections::hash_map::RandomState::new(),
        }
    }

    fn source(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
            v4 => v4,
        }
    }

    /// Counts an attempt of `user` from `ip` and says whether to check it.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, user: Option<&str>) -> Admission {
        let source = Self::source(ip);
        let pair = (source, self.keys.hash_one(user.unwrap_or("")));
        let untracked = Admission::Check {
            delay: Duration::ZERO,
            ticket: Ticket {
                limiter: None,
                pair,
                source,
            },
        };
        if self.limit == 0.0 {
            return untracked;
        }
        let now = Instant::now();
        let limit = self.limit;
        let source_limit = limit * ADDRESS_FACTOR;
        let mut guard = self.buckets.lock();
        let b = &mut *guard;
        if !room(b, now, pair, source, limit, source_limit) {
            return untracked;
        }
        let p = b.pairs.entry(pair).or_default();
        p.drain(now, limit);
        let s = b.sources.entry(source).or_default();
        s.drain(now, source_limit);
        let (p_delay, s_delay) = (p.delay(limit), s.delay(source_limit));
        if (p_delay.is_some() && p.pending > 0) || (s_delay.is_some() && s.pending > 0) {
            return Admission::Refuse;
        }
        let first_over = p.level < limit && p.level + 1.0 >= limit;
        p.level = (p.level + 1.0).min(limit + OVERFILL);
        p.pending += 1;
        s.level = (s.level + 1.0).min(source_limit + OVERFILL);
        s.pending += 1;
        drop(guard);
        if first_over {
            tracing::warn!(peer = %ip, "failed-authentication limit reached; further attempts of this user from this address are slowed down");
        }
        Admission::Check {
            delay: p_delay.max(s_delay).unwrap_or(Duration::ZERO),
            ticket: Ticket {
                limiter: Some(self.clone()),
                pair,
                source,
            },
        }
    }

    fn finish(&self, ticket: &Ticket, succeeded: bool) {
        let mut b = self.buckets.lock();
        if let Some(p) = b.pairs.get_mut(&ticket.pair) {
            p.pending = p.pending.saturating_sub(1);
            if succeeded {
                p.level = 0.0;
            }
        }
        if let Some(s) = b.sources.get_mut(&ticket.source) {
            s.pending = s.pending.saturating_sub(1);
            if succeeded {
                s.level = (s.level - 1.0).max(0.0);
            }
        }
    }
}

/// Whether both keys have a bucket or room for one, sweeping idle buckets
/// (at most once a second) when a map is full.
fn room(
    b: &mut Buckets,
    now: Instant,
    pair: PairKey,
    source: Source,
    limit: f64,
    source_limit: f64,
) -> bool {
    let fits = |b: &Buckets| {
        (b.pairs.len() < MAX_TRACKED || b.pairs.contains_key(&pair))
            && (b.sources.len() < MAX_TRACKED || b.sources.contains_key(&source))
    };
    if fits(b) {
        return true;
    }
    let due = b
        .last_sweep
        .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
    if due {
        b.last_sweep = Some(now);
        b.pairs.retain(|_, p| {
            p.drain(now, limit);
            !p.idle()
        });
        b.sources.retain(|_, s| {
            s.drain(now, source_limit);
            !s.idle()
        });
    }
    fits(b)
}

impl Ticket {
    /// The password was right: the attempt is taken back and the (address,
    /// user name) bucket emptied.
    pub(crate) fn succeeded(mut self) {
        if let Some(limiter) = self.limiter.take() {
            limiter.finish(&self, true);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(limiter) = self.limiter.take() {
            limiter.finish(self, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(l: &Arc<AuthLimiter>, ip: IpAddr, user: &str) -> Option<(Duration, Ticket)> {
        match l.admit(ip, Some(user)) {
            Admission::Check { delay, ticket } => Some((delay, ticket)),
            Admission::Refuse => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_failures_are_checked_at_once_then_slowed_then_one_at_a_time() {
        let l = Arc::new(AuthLimiter::new(3));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            let (delay, _failed) = check(&l, ip, "bob").unwrap();
            assert_eq!(delay, Duration::ZERO);
        }
        // Past the limit: a wait, doubling, and one attempt at a time.
        let (delay, pending) = check(&l, ip, "bob").unwrap();
        assert_eq!(delay, BASE_DELAY);
        assert!(
            check(&l, ip, "bob").is_none(),
            "a second one at once is refused"
        );
        // Another user at the same address, and the same user elsewhere, are not.
        assert_eq!(check(&l, ip, "alice").unwrap().0, Duration::ZERO);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(check(&l, other, "bob").unwrap().0, Duration::ZERO);
        drop(pending);
        let (delay, right) = check(&l, ip, "bob").unwrap();
        assert_eq!(delay, BASE_DELAY * 2);
        // The right password empties the bucket.
        right.succeeded();
        assert_eq!(check(&l, ip, "bob").unwrap().0, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_drain_and_delays_are_capped() {
        let l = Arc::new(AuthLimiter::new(2));
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            let (delay, _t) = check(&l, ip, "u").unwrap();
            assert!(delay >= last && delay <= MAX_DELAY);
            last = delay;
        }
        assert_eq!(last, MAX_DELAY);
        // The /64 is one source.
        assert_eq!(check(&l, same_64, "u").unwrap().0, MAX_DELAY);
        // Two a minute drain: after ten minutes the bucket is empty.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(check(&l, ip, "u").unwrap().0, Duration::ZERO);
        assert!(matches!(
            Arc::new(AuthLimiter::new(0)).admit(ip, None),
            Admission::Check { delay, .. } if delay.is_zero()
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn spraying_user_names_from_one_address_hits_the_address_limit() {
        let l = Arc::new(AuthLimiter::new(1));
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        // Ten times the limit of distinct names go through at once ...
        let mut held = Vec::new();
        for i in 0..10 {
            let (delay, t) = check(&l, ip, &format!("user{i}")).unwrap();
            assert_eq!(delay, Duration::ZERO);
            held.push(t);
        }
        // ... then the address is slowed, one attempt at a time.
        assert!(check(&l, ip, "fresh").is_none());
        held.clear();
        assert!(check(&l, ip, "fresh").unwrap().0 > Duration::ZERO);
    }

    #[test]
    fn memory_is_bounded() {
        assert!(std::mem::size_of::<Bucket>() <= 32);
    }
}
