//! Rate limits on `Enrol` attempts, per enrolment token and per source address.
//!
//! Each key (a token id, a source address) gets a bucket of `burst` attempts that refills
//! at one attempt per `refill` (the generic cell rate algorithm, as the `governor` crate
//! implements it: one instant per key, the "theoretical arrival time"). Time is an
//! argument, so tests step it by hand. The limits bound online guessing of a token's secret
//! (per token, whatever the source) and the signing work one address can cause (per
//! source, whatever the token); a refusal says which limit and when to try again.
//!
//! An IPv6 source counts by its /64 prefix (one host usually holds a whole /64), an
//! IPv4-mapped IPv6 address as the IPv4 address.
//!
//! Memory is bounded: at most `max_keys` keys per limiter; full buckets are forgotten when
//! that is reached, and while it stays full, attempts from new keys are refused (an attacker
//! with that many addresses slows enrolment down, but cannot exhaust memory).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// `burst` attempts at once, then one per `refill`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub burst: u32,
    pub refill: Duration,
}

/// The limits of `Enrol` attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnrolLimits {
    /// Per enrolment token id, from any source: a genuine agent needs one or two attempts.
    pub per_token: RateLimit,
    /// Per source IP address, with any token: a site enrolling several agents behind one
    /// NAT needs a few.
    pub per_source: RateLimit,
    /// Keys each limiter remembers at most.
    pub max_keys: usize,
}

impl Default for EnrolLimits {
    fn default() -> Self {
        EnrolLimits {
            per_token: RateLimit {
                burst: 5,
                refill: Duration::from_secs(60),
            },
            per_source: RateLimit {
                burst: 20,
                refill: Duration::from_secs(6),
            },
            max_keys: 10_000,
        }
    }
}

/// Which limit refused an attempt.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Limited {
    #[error(
        "too many enrolment attempts with this token (at most {burst}, then one every {refill_s} s); try again in {retry_s} s"
    )]
    Token {
        burst: u32,
        refill_s: u64,
        retry_s: u64,
    },
    #[error(
        "too many enrolment attempts from {address} (at most {burst}, then one every {refill_s} s); try again in {retry_s} s"
    )]
    Source {
        /// The address, or its /64 prefix for IPv6.
        address: String,
        burst: u32,
        refill_s: u64,
        retry_s: u64,
    },
    #[error("too many sources are enrolling at once; try again in a minute")]
    Full,
}

/// The `Enrol` limiter: both limits must allow an attempt.
#[derive(Debug)]
pub struct EnrolLimiter {
    limits: EnrolLimits,
    per_token: Keyed<String>,
    per_source: Keyed<IpAddr>,
}

impl Default for EnrolLimiter {
    fn default() -> Self {
        EnrolLimiter::new(EnrolLimits::default())
    }
}

impl EnrolLimiter {
    pub fn new(limits: EnrolLimits) -> EnrolLimiter {
        EnrolLimiter {
            limits,
            per_token: Keyed::new(limits.per_token, limits.max_keys),
            per_source: Keyed::new(limits.per_source, limits.max_keys),
        }
    }

    /// Counts an attempt with token id `token` (if the token parsed) from `source` (if
    /// known) at `now`. A refused attempt is not counted against the other limit.
    pub fn attempt(
        &mut self,
        token: Option<&str>,
        source: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Limited> {
        if let Some(source) = source.map(source_key) {
            self.per_source
                .check(&source, now)
                .map_err(|wait| match wait {
                    None => Limited::Full,
                    Some(wait) => Limited::Source {
                        address: match source {
                            IpAddr::V4(v4) => v4.to_string(),
                            IpAddr::V6(v6) => format!("{v6}/64"),
                        },
                        burst: self.limits.per_source.burst,
                        refill_s: self.limits.per_source.refill.as_secs(),
                        retry_s: whole_seconds(wait),
                    },
                })?;
        }
        if let Some(token) = token {
            self.per_token
                .check(&token.to_owned(), now)
                .map_err(|wait| match wait {
                    None => Limited::Full,
                    Some(wait) => Limited::Token {
                        burst: self.limits.per_token.burst,
                        refill_s: self.limits.per_token.refill.as_secs(),
                        retry_s: whole_seconds(wait),
                    },
                })?;
        }
        Ok(())
    }
}

/// What a source address counts as: an IPv6 address by its /64 prefix.
fn source_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// One rate limit over many keys.
#[derive(Debug)]
struct Keyed<K> {
    limit: RateLimit,
    max_keys: usize,
    /// Per key, when its bucket is full again (the theoretical arrival time).
    full_at: HashMap<K, Instant>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(limit: RateLimit, max_keys: usize) -> Keyed<K> {
        Keyed {
            limit,
            max_keys,
            full_at: HashMap::new(),
        }
    }

    /// Takes one attempt from `key`'s bucket at `now`. `Err(Some(wait))`: the bucket is
    /// empty for `wait` more; `Err(None)`: too many keys to track a new one.
    fn check(&mut self, key: &K, now: Instant) -> Result<(), Option<Duration>> {
        if !self.full_at.contains_key(key) && self.full_at.len() >= self.max_keys {
            self.full_at.retain(|_, full_at| *full_at > now);
            if self.full_at.len() >= self.max_keys {
                return Err(None);
            }
        }
        // A bucket holds `burst` attempts: it may run at most `burst - 1` refills ahead.
        let headroom = self.limit.refill * self.limit.burst.saturating_sub(1);
        let full_at = self.full_at.get(key).copied().unwrap_or(now).max(now);
        let ahead = full_at - now;
        if ahead > headroom {
            return Err(Some(ahead - headroom));
        }
        self.full_at
            .insert(key.clone(), full_at + self.limit.refill);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        burst: 3,
        refill: Duration::from_secs(10),
    };

    #[test]
    fn a_bucket_allows_its_burst_then_one_per_refill() {
        let mut keyed = Keyed::new(LIMIT, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(keyed.check(&"a", t0), Ok(()));
        }
        assert_eq!(keyed.check(&"a", t0), Err(Some(Duration::from_secs(10))));
        // Other keys have their own bucket.
        assert_eq!(keyed.check(&"b", t0), Ok(()));
        let later = t0 + Duration::from_secs(4);
        assert_eq!(keyed.check(&"a", later), Err(Some(Duration::from_secs(6))));
        let refilled = t0 + Duration::from_secs(10);
        assert_eq!(keyed.check(&"a", refilled), Ok(()));
        assert!(keyed.check(&"a", refilled).is_err());
        // A long pause refills the whole burst, no more.
        let rested = t0 + Duration::from_secs(1000);
        for _ in 0..3 {
            assert_eq!(keyed.check(&"a", rested), Ok(()));
        }
        assert!(keyed.check(&"a", rested).is_err());
    }

    #[test]
    fn memory_is_bounded_and_full_buckets_are_forgotten() {
        let mut keyed = Keyed::new(LIMIT, 2);
        let t0 = Instant::now();
        assert_eq!(keyed.check(&1, t0), Ok(()));
        assert_eq!(keyed.check(&2, t0), Ok(()));
        assert_eq!(keyed.check(&3, t0), Err(None));
        // Once their buckets are full again, old keys make room.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(keyed.check(&3, later), Ok(()));
        assert!(keyed.full_at.len() <= 2);
    }

    #[test]
    fn an_ipv6_source_counts_by_its_prefix() {
        let limits = EnrolLimits {
            per_source: RateLimit {
                burst: 1,
                refill: Duration::from_secs(60),
            },
            ..EnrolLimits::default()
        };
        let mut limiter = EnrolLimiter::new(limits);
        let t0 = Instant::now();
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_prefix: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_prefix: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limiter.attempt(None, Some(one), t0), Ok(()));
        let refused = limiter.attempt(None, Some(same_prefix), t0).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("too many enrolment attempts from 2001:db8:1:2::/64 "),
            "{refused}"
        );
        assert_eq!(limiter.attempt(None, Some(other_prefix), t0), Ok(()));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(limiter.attempt(None, Some(mapped), t0), Ok(()));
        let plain: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(limiter.attempt(None, Some(plain), t0).is_err());
    }

    #[test]
    fn a_refused_source_does_not_count_against_the_token() {
        let limits = EnrolLimits {
            per_token: LIMIT,
            per_source: RateLimit {
                burst: 1,
                refill: Duration::from_secs(60),
            },
            max_keys: 100,
        };
        let mut limiter = EnrolLimiter::new(limits);
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!(limiter.attempt(Some("t"), Some(a), t0), Ok(()));
        assert!(matches!(
            limiter.attempt(Some("t"), Some(a), t0),
            Err(Limited::Source { retry_s: 60, .. })
        ));
        // Two more with the token from elsewhere: its burst of three was not touched above.
        assert_eq!(limiter.attempt(Some("t"), Some(b), t0), Ok(()));
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        assert_eq!(limiter.attempt(Some("t"), Some(c), t0), Ok(()));
        let d: IpAddr = "10.0.0.4".parse().unwrap();
        let refused = limiter.attempt(Some("t"), Some(d), t0).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "too many enrolment attempts with this token (at most 3, then one every 10 s); try again in 10 s"
        );
    }
}
